"""Cluster membership over a lease store: flannel's subnet manager, for us.

Why it looks like this (design notes):
- Same algorithm and layout as flannel's etcd subnet manager, so udpoverlay
  and flannel nodes can share one etcd: reuse the lease carrying our
  PublicIP, else the previous subnet (from subnet.env) if free, else a
  random free subnet among the first 100 between SubnetMin and SubnetMax
  (subnetalloc.pick_free);
  the key is created in a transaction guarded by version(key) == 0 with a
  TTL lease, so two hosts racing for one subnet cannot both win (the loser
  lists again and retries).
- Renewal keeps the etcd lease alive (keepalive) at expiry minus the
  margin; the margin is clamped to half the TTL so short test TTLs work.
- The peer view is list-then-watch: a snapshot at revision R, then events
  from R + 1. After a disconnect, a server restart or a compacted revision
  we re-list and diff (leasetable.LeaseTable), so no route is lost or left
  stale. While the store is down nothing is withdrawn: the data plane keeps
  the last applied peers and traffic keeps flowing.
- apply_peers always gets the full desired list (never a delta), only when
  it changes, from one task. Leases of another backend type, or unusable
  ones, are skipped with one log line per lease value (peerview.PeerView).
- If our own key disappears (deleted, expired, taken over) we re-create
  the same subnet if it is still free (on_lost='reacquire') or stop with
  LeaseLostError (on_lost='exit', flannel's behaviour).
- Time is a parameter (clock); sleeping uses the event loop. Every store
  call is bounded by op_timeout; every retry loop backs off with jitter.

Use: config = await m.load_config(); (set up the device; for vxlan set
m.backend_data = {"VtepMAC": mac}); lease = await m.acquire(); write
subnet.env; then await m.run(apply_peers) until shutdown (cancel it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import random
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable

from udpoverlay.errors import ConfigError, LeaseStoreError
from udpoverlay.lease import (ADDED, DEFAULT_PREFIX, REMOVED, Lease, LeaseDecodeError,
                              LeaseEvent, WatchResult, config_key, decode_lease_value,
                              parse_subnet_key, subnet_key, subnets_prefix)
from udpoverlay.leasetable import LeaseTable
from udpoverlay.netconfig import SUPPORTED_BACKENDS, NetworkConfig, parse_network_config
from udpoverlay.peers import Peer, format_mac
from udpoverlay.peerview import PeerView
from udpoverlay.subnetalloc import own_lease_value, pick_free
from udpoverlay.stores.base import DELETE, KeyValue, LeaseStore, StoreCompacted, StoreDisconnected

__all__ = ["ClusterMembership", "LeaseLostError", "Backoff"]

log = logging.getLogger("udpoverlay.leases")

RACE_RETRIES = 10        # flannel's raceRetries
ON_LOST = ("reacquire", "exit")
ApplyPeers = Callable[[list[Peer]], Any]


class LeaseLostError(LeaseStoreError):
    """Our subnet lease is gone and was not (or must not be) taken back."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class Backoff:
    """Exponential backoff with jitter: initial, doubling, capped at maximum."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial, self.maximum, self.rng = initial, maximum, rng
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * (0.5 + self.rng.random() / 2)

    def reset(self) -> None:
        self._next = self.initial


class ClusterMembership:
    """This node's subnet lease and its view of the other nodes' leases.

    backend_type None means "whatever the network config says"; for vxlan,
    backend_data must hold VtepMAC (VNI defaults to the config's). Both may
    be set after load_config() and before acquire().
    """

    def __init__(self, store: LeaseStore, *, prefix: str = DEFAULT_PREFIX,
                 public_ip: ipaddress.IPv4Address | str, backend_type: str | None = None,
                 backend_data: dict | None = None,
                 previous_subnet: ipaddress.IPv4Network | None = None,
                 lease_ttl: int = 86400, renew_margin: float = 3600,
                 on_lost: str = "reacquire", clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, retry_initial: float = 0.2,
                 retry_max: float = 10.0, op_timeout: float = 15.0) -> None:
        if on_lost not in ON_LOST:
            raise ConfigError(f"on_lost must be one of {', '.join(ON_LOST)}, got {on_lost!r}")
        if backend_type is not None and backend_type not in SUPPORTED_BACKENDS:
            raise ConfigError(f"backend_type must be one of {', '.join(SUPPORTED_BACKENDS)}")
        if int(lease_ttl) < 1 or renew_margin < 0:
            raise ConfigError("lease_ttl must be >= 1 s and renew_margin >= 0")
        self.store = store
        self.prefix = prefix
        self.public_ip = ipaddress.IPv4Address(public_ip)
        self.backend_type = backend_type
        self.backend_data = backend_data
        self.previous_subnet = None if previous_subnet is None else \
            ipaddress.IPv4Network(previous_subnet)
        self.lease_ttl = int(lease_ttl)
        self.renew_margin = renew_margin
        self.on_lost = on_lost
        self.clock = clock
        self.rng = rng or random.Random()
        self.retry_initial, self.retry_max, self.op_timeout = retry_initial, retry_max, op_timeout
        self.config: NetworkConfig | None = None
        self.lease: Lease | None = None
        self._lease_id = 0
        self._granted_ttl: float | None = None
        self._own_revision = 0
        self._generation = 0
        self._table = LeaseTable()
        self._peers: list[Peer] = []
        self._applied: list[tuple] | None = None
        self._view = PeerView(clock)
        self._bad_logged: dict[str, bytes] = {}
        self._store_state = "disconnected: not contacted yet"
        self._apply: ApplyPeers | None = None
        self._on_lease_changed: Callable[[Lease], Any] | None = None
        self._lost_lock = asyncio.Lock()
        self._rewake = asyncio.Event()
        self._republish: asyncio.Task | None = None

    # -- small helpers ---------------------------------------------------
    def _backoff(self) -> Backoff:
        return Backoff(self.retry_initial, self.retry_max, self.rng)

    async def _bounded(self, call: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(call, self.op_timeout)
        except asyncio.TimeoutError:
            raise StoreDisconnected(f"lease store did not answer within "
                                    f"{self.op_timeout:g}s") from None

    def _set_connected(self) -> None:
        if self._store_state != "connected":
            log.info("lease store reachable again")
        self._store_state = "connected"

    def _set_disconnected(self, error: Exception) -> None:
        self._store_state = f"disconnected: {error}"

    @staticmethod
    async def _call_back(callback: Callable[..., Any], *args: Any) -> None:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result

    # -- network config ----------------------------------------------------
    async def load_config(self) -> NetworkConfig:
        """Read `<prefix>/config`, waiting (with logged backoff) while it is
        missing or invalid or the store is down. Never raises for those."""
        key = config_key(self.prefix)
        backoff = self._backoff()
        last = None
        while True:
            try:
                kv = await self._bounded(self.store.get(key))
                self._set_connected()
                if kv is None:
                    raise ConfigError(f"no network config at {key} yet")
                self.config = parse_network_config(kv.value)
                log.info("network config: %s, subnets /%d in %s..%s, backend %s port %d",
                         self.config.network, self.config.subnet_len, self.config.subnet_min,
                         self.config.subnet_max, self.config.backend_type,
                         self.config.backend_port)
                return self.config
            except LeaseStoreError as e:
                self._set_disconnected(e)
                reason = str(e)
            except ConfigError as e:
                reason = f"{key}: {e}"
            delay = backoff.next()
            log.log(logging.WARNING if reason != last else logging.DEBUG,
                    "waiting for the network config (%s); retrying in %.1fs", reason, delay)
            last = reason
            await asyncio.sleep(delay)

    def _backend(self) -> str:
        assert self.config is not None
        return self.backend_type or self.config.backend_type

    # -- acquiring ---------------------------------------------------------
    async def acquire(self) -> Lease:
        """Get our subnet lease (flannel's algorithm, see module notes).

        Retries while the store is down and on lost races; raises
        ConfigError (backend mismatch) or LeaseStoreError(retryable=False)
        when no subnet is free.
        """
        if self.config is None:
            await self.load_config()
        lease = await self._acquire_loop(self.previous_subnet, allow_other=True)
        self.previous_subnet = lease.subnet
        return lease

    async def _acquire_loop(self, previous: ipaddress.IPv4Network | None,
                            allow_other: bool) -> Lease:
        value = own_lease_value(self.config, self.public_ip, self._backend(),
                                self.backend_data)
        backoff = self._backoff()
        conflicts = 0
        while True:
            try:
                lease = await self._try_acquire(value, previous, allow_other)
            except LeaseStoreError as e:
                if not e.retryable:
                    raise
                self._set_disconnected(e)
                delay = backoff.next()
                log.warning("acquiring a subnet lease failed (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                continue
            if lease is not None:
                return lease
            conflicts += 1
            if conflicts >= RACE_RETRIES:
                raise LeaseStoreError(f"gave up acquiring a subnet after {conflicts} "
                                      f"conflicting attempts", retryable=True)
            log.info("lost a race for a subnet (attempt %d); trying again", conflicts)
            await asyncio.sleep(self.rng.uniform(0, 0.02 * conflicts))

    async def _try_acquire(self, value: str, previous: ipaddress.IPv4Network | None,
                           allow_other: bool) -> Lease | None:
        """One attempt; None if another writer got in between (retry)."""
        config = self.config
        assert config is not None
        listing = await self._bounded(self.store.list_prefix(subnets_prefix(self.prefix)))
        self._set_connected()
        taken: dict[ipaddress.IPv4Network, KeyValue] = {}
        mine = None
        for kv in listing.kvs:
            subnet = parse_subnet_key(kv.key)
            if subnet is None:
                continue
            taken[subnet] = kv
            lease = None if mine is not None else self._decode(subnet, kv, quiet=True)
            if lease is not None and lease.public_ip == self.public_ip:
                mine = subnet
        if mine is not None:
            kv = taken[mine]
            if config.contains_subnet(mine) and (allow_other or mine == previous):
                written = await self._bounded(self.store.put(
                    kv.key, value.encode(), self.lease_ttl, expect_mod_revision=kv.mod_revision))
                return self._own(mine, value, written, "reusing the lease for our public IP")
            if not config.contains_subnet(mine):
                log.info("lease %s for our public IP is outside %s..%s/%d; deleting it", mine,
                         config.subnet_min, config.subnet_max, config.subnet_len)
                await self._bounded(self.store.delete(kv.key))
                del taken[mine]
        subnet = None
        if previous is not None:
            if not config.contains_subnet(previous):
                log.warning("previous subnet %s does not fit the network config; ignoring it",
                            previous)
            elif any(previous.overlaps(t) for t in taken):
                log.info("previous subnet %s is leased by another host", previous)
            else:
                subnet = previous
        if subnet is None:
            if not allow_other:
                raise LeaseLostError(f"subnet {previous} is now leased by another host; "
                                     f"restart to acquire a new subnet")
            subnet = pick_free(self.config, taken, self.rng)
        written = await self._bounded(self.store.create(
            subnet_key(self.prefix, subnet), value.encode(), self.lease_ttl))
        return self._own(subnet, value, written, "acquired subnet lease")

    def _own(self, subnet: ipaddress.IPv4Network, value: str, written: Any,
             how: str) -> Lease | None:
        if written is None:
            return None
        self._granted_ttl = written.ttl
        expires = None if written.ttl is None else self.clock() + written.ttl
        data = decode_lease_value(subnet, value)
        self.lease = replace(data, expires=expires)
        self._lease_id = written.lease_id
        self._own_revision = written.revision
        self._generation += 1
        self._table.discard(subnet)
        self._rewake.set()
        log.info("%s: %s (public IP %s, etcd lease %x, TTL %ss)", how, subnet, self.public_ip,
                 written.lease_id, written.ttl)
        return self.lease

    # -- running -----------------------------------------------------------
    async def run(self, apply_peers: ApplyPeers,
                  on_lease_changed: Callable[[Lease], Any] | None = None) -> None:
        """Renew our lease and keep apply_peers fed with the full peer list,
        until cancelled. Raises LeaseLostError when the lease is lost and
        cannot be re-created (on_lost='exit', or the subnet was taken and no
        on_lease_changed callback accepts a new one)."""
        if self.lease is None:
            await self.acquire()
        self._apply, self._on_lease_changed = apply_peers, on_lease_changed
        tasks = [asyncio.create_task(self._watch_loop(), name="udpoverlay-lease-watch"),
                 asyncio.create_task(self._renew_loop(), name="udpoverlay-lease-renew")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in [*tasks, self._republish]:
                if task is not None:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _renew_delay(self) -> float | None:
        if self.lease is None or self.lease.expires is None or not self._granted_ttl:
            return None
        margin = min(self.renew_margin, self._granted_ttl / 2)
        return max(0.0, self.lease.expires - margin - self.clock())

    async def _renew_loop(self) -> None:
        backoff = self._backoff()
        while True:
            delay = self._renew_delay()
            if delay is None or delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._rewake.wait(), delay)
                if self._rewake.is_set():
                    self._rewake.clear()
                    continue  # the lease changed: recompute the deadline
            generation, lease_id = self._generation, self._lease_id
            try:
                ttl = await self._bounded(self.store.refresh(lease_id))
            except LeaseStoreError as e:
                self._set_disconnected(e)
                delay = backoff.next()
                log.warning("renewing subnet lease failed (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if ttl is None:
                await self._lost("its etcd lease expired or was revoked", generation)
            elif generation == self._generation and self.lease is not None:
                self._granted_ttl = ttl
                self.lease = replace(self.lease, expires=self.clock() + ttl)
                log.debug("renewed subnet lease %s for %ss", self.lease.subnet, ttl)

    async def _watch_loop(self) -> None:
        prefix = subnets_prefix(self.prefix)
        backoff = self._backoff()
        while True:
            try:
                listing = await self._bounded(self.store.list_prefix(prefix))
                self._set_connected()
                backoff.reset()
                await self._absorb_listing(listing.kvs, listing.revision)
                batches = self.store.watch_prefix(prefix, listing.revision + 1)
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        self._set_connected()
                        await self._absorb_events(batch)
                raise StoreDisconnected("lease watch ended")
            except StoreCompacted as e:
                log.warning("lease watch fell behind compaction (%s); re-listing", e)
                await asyncio.sleep(backoff.next())
            except LeaseLostError:
                raise
            except LeaseStoreError as e:
                self._set_disconnected(e)
                delay = backoff.next()
                log.warning("lease watch failed (%s); keeping %d known peers, retrying in "
                            "%.1fs", e, len(self._peers), delay)
                await asyncio.sleep(delay)

    def _decode(self, subnet: ipaddress.IPv4Network, kv: KeyValue,
                quiet: bool = False) -> Lease | None:
        expires = None if kv.ttl is None else self.clock() + kv.ttl
        try:
            return decode_lease_value(subnet, kv.value, expires)
        except LeaseDecodeError as e:
            if not quiet and self._bad_logged.get(kv.key) != kv.value:
                self._bad_logged[kv.key] = kv.value
                log.warning("ignoring %s: %s", kv.key, e)
            return None

    def _is_own(self, subnet: ipaddress.IPv4Network) -> bool:
        return self.lease is not None and subnet == self.lease.subnet

    async def _absorb_listing(self, kvs: tuple[KeyValue, ...], revision: int) -> None:
        leases, own = [], None
        for kv in kvs:
            subnet = parse_subnet_key(kv.key)
            if subnet is None:
                continue
            if self._is_own(subnet):
                own = kv
            elif (lease := self._decode(subnet, kv)) is not None:
                leases.append(lease)
        self._table.apply(WatchResult(revision, snapshot=tuple(leases)))
        present = {kv.key for kv in kvs}
        self._bad_logged = {k: v for k, v in self._bad_logged.items() if k in present}
        if revision >= self._own_revision:
            await self._check_own(own, "our lease key is missing from the store")
        await self._publish()

    async def _absorb_events(self, batch: list) -> None:
        events = []
        for event in batch:
            subnet = parse_subnet_key(event.kv.key)
            if subnet is None:
                continue
            if self._is_own(subnet):
                if event.revision > self._own_revision:
                    await self._check_own(None if event.kind == DELETE else event.kv,
                                          "our lease key was deleted")
                continue
            if event.kind == DELETE:
                self._bad_logged.pop(event.kv.key, None)
                events.append(LeaseEvent(REMOVED, subnet))
            elif (lease := self._decode(subnet, event.kv)) is not None:
                events.append(LeaseEvent(ADDED, subnet, lease))
            else:
                events.append(LeaseEvent(REMOVED, subnet))  # unreadable now: not a peer
        if batch:
            self._table.apply(WatchResult(batch[-1].revision, events=tuple(events)))
        await self._publish()

    async def _check_own(self, kv: KeyValue | None, missing: str) -> None:
        """Our key as the store shows it now: still ours, or lost."""
        generation = self._generation
        if kv is None:
            await self._lost(missing, generation)
            return
        assert self.lease is not None
        lease = self._decode(self.lease.subnet, kv)
        if lease is None or lease.public_ip != self.public_ip:
            owner = lease.public_ip if lease else "an unreadable value"
            await self._lost(f"our subnet key now belongs to {owner}", generation)
        elif kv.ttl is not None:
            self.lease = replace(self.lease, expires=self.clock() + kv.ttl)

    async def _lost(self, reason: str, generation: int) -> None:
        async with self._lost_lock:
            if generation != self._generation or self.lease is None:
                return  # already replaced by the other loop
            old = self.lease
            if self.on_lost == "exit":
                raise LeaseLostError(f"subnet lease {old.subnet} lost: {reason} (on_lost=exit)")
            log.error("subnet lease %s lost (%s); re-acquiring it", old.subnet, reason)
            try:
                lease = await self._acquire_loop(old.subnet,
                                                 allow_other=self._on_lease_changed is not None)
            except LeaseLostError:
                raise
            except (LeaseStoreError, ConfigError) as e:
                raise LeaseLostError(f"subnet lease {old.subnet} lost ({reason}) and not "
                                     f"re-acquired: {e}") from e
        if lease.subnet != old.subnet:
            log.warning("our subnet changed from %s to %s", old.subnet, lease.subnet)
            assert self._on_lease_changed is not None
            await self._call_back(self._on_lease_changed, lease)
        await self._publish()

    # -- peers -------------------------------------------------------------
    async def _publish(self) -> None:
        """Hand the full desired peer list to apply_peers if it changed."""
        if self._apply is None:
            return
        assert self.config is not None
        own = self.lease.subnet if self.lease else None
        self._peers = peers = self._view.build(self._table.leases, self.config, self._backend(),
                                               self.public_ip, own)
        keys = [p.key() for p in peers]
        if keys == self._applied:
            return
        try:
            await self._call_back(self._apply, list(peers))
        except Exception:
            log.exception("apply_peers failed; retrying shortly")
            self._applied = None
            if self._republish is None or self._republish.done():
                self._republish = asyncio.create_task(self._publish_later())
            return
        self._applied = keys
        log.info("peers now %d: %s", len(peers),
                 ", ".join(f"{p.subnet}@{p.public_ip}" for p in peers) or "none")

    async def _publish_later(self) -> None:
        await asyncio.sleep(self.retry_max)
        await self._publish()

    # -- status ------------------------------------------------------------
    def status(self) -> dict:
        """JSON-serialisable snapshot for `udpoverlay status`."""
        now = self.clock()

        def remaining(expires: float | None) -> float | None:
            return None if expires is None else round(expires - now, 1)

        lease = None
        if self.lease is not None:
            lease = {"subnet": str(self.lease.subnet), "public_ip": str(self.lease.public_ip),
                     "backend_type": self._backend() if self.config else None,
                     "expires_in": remaining(self.lease.expires),
                     "etcd_lease": f"{self._lease_id:x}"}
        return {
            "lease": lease,
            "network": str(self.config.network) if self.config else None,
            "store": self._store_state,
            "revision": self._table.revision,
            "peers": [{"subnet": str(p.subnet), "public_ip": str(p.public_ip), "port": p.port,
                       "vtep_mac": format_mac(p.vtep_mac),
                       "age": None if p.since is None else round(now - p.since, 1),
                       "expires_in": remaining(p.expires)} for p in self._peers],
            "skipped": [{"subnet": str(s), "reason": r}
                        for s, r in sorted(self._view.skipped.items())],
        }
