"""Cluster membership over a lease store: flannel's subnet manager, for us.

Why it looks like this (design notes):
- Same algorithm and layout as flannel's etcd subnet manager, so udpoverlay
  and flannel nodes can share one etcd. Getting the lease is acquire.py;
  guarding our key and the network config is guard.py; validating and
  turning the other keys into peers is validate.py + feed.py; this module
  runs the lease: renew, watch, take it back.
- Who owns what (collaborators, not a class hierarchy): ClusterMembership
  owns our lease state (ownlease.OwnLease), the network config, the
  previous subnet and the backend data; it holds an Acquirer (acquire.py)
  and a Guard (guard.py), which get the store link, the OwnLease and what
  else they need at construction and keep no copy of each other's state.
  The StoreLink (storelink.py) bounds store calls, makes the backoffs and
  keeps the store's health (status, metrics); the PeerFeed (feed.py) owns
  the other nodes' leases and the calls to apply_peers.
- Renewal keeps the etcd lease alive (keepalive) at expiry minus the
  margin; the margin is clamped to half the TTL so short test TTLs work.
- The peer view is list-then-watch: a snapshot at revision R, then events
  from R + 1. After a disconnect, a server restart or a compacted revision
  we re-list and diff (table.LeaseTable), so no route is lost or left
  stale. While the store is down nothing is withdrawn: the data plane keeps
  the last applied peers and traffic keeps flowing; a WARNING about once a
  minute says so, an INFO line when the store is back. Retries while it is
  down pause at most RECONNECT_MAX (1.5 s) so we are back within ~2 s.
- apply_peers always gets the full desired list (never a delta), only when
  it changes, from one task (feed.PeerFeed); events arriving together are
  batched and bursts coalesced over a few ms. Watches skip etcd's per-lease
  TTL lookups (one RPC each) for other nodes' keys.
- If our own key disappears (deleted, expired, taken over) we re-create
  the same subnet if it is still free (on_lost='reacquire') or stop with
  LeaseLostError (on_lost='exit', flannel's behaviour). A rewritten key is
  restored (guard.py). A changed network config raises
  NetworkConfigChanged from run().
- Time is a parameter (clock); sleeping uses the event loop. Every store
  call is bounded by op_timeout; every retry loop backs off with jitter.

Use: config = await m.load_config(); (set up the device; for vxlan set
m.backend_data = {"VtepMAC": mac}); lease = await m.acquire(); write
subnet.env; then await m.run(apply_peers) until shutdown (cancel it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from typing import Any, Callable

from udpoverlay.cluster.acquire import Acquirer
from udpoverlay.cluster.allocate import own_lease_value
from udpoverlay.cluster.codec import Lease, subnets_prefix
from udpoverlay.cluster.feed import COALESCE, ApplyPeers, PeerFeed, call_back
from udpoverlay.cluster.guard import Guard
from udpoverlay.cluster.network import NetworkConfig
from udpoverlay.cluster.ownlease import OwnLease
from udpoverlay.cluster.policy import Context
from udpoverlay.cluster.store.base import DELETE, KeyValue, LeaseStore, StoreEvent
from udpoverlay.cluster.storelink import StoreLink
from udpoverlay.cluster.validate import REASONS, LeaseValidator
from udpoverlay.config.defaults import BACKENDS, DEFAULT_PREFIX
from udpoverlay.errors import ConfigError, LeaseLostError, LeaseStoreError, StoreCompacted, StoreDisconnected

__all__ = ["ClusterMembership"]

log = logging.getLogger(__name__)

ON_LOST = ("reacquire", "exit")


class ClusterMembership:
    """This node's subnet lease and its view of the other nodes' leases.

    backend_type None means "whatever the network config says"; for vxlan,
    backend_data must hold VtepMAC (VNI defaults to the config's). Both may
    be set after load_config() and before acquire(). underlay_network (our
    underlay's network, when known) lets leases naming its broadcast address
    be rejected. coalesce: seconds to gather a burst of changes into one
    apply_peers call.
    """

    def __init__(self, store: LeaseStore, *, prefix: str = DEFAULT_PREFIX,
                 public_ip: ipaddress.IPv4Address | str, backend_type: str | None = None,
                 backend_data: dict | None = None,
                 previous_subnet: ipaddress.IPv4Network | None = None,
                 lease_ttl: int = 86400, renew_margin: float = 3600,
                 on_lost: str = "reacquire", clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, retry_initial: float = 0.2,
                 retry_max: float = 10.0, op_timeout: float = 15.0,
                 underlay_network: ipaddress.IPv4Network | None = None,
                 coalesce: float = COALESCE) -> None:
        if on_lost not in ON_LOST:
            raise ConfigError(f"on_lost must be one of {', '.join(ON_LOST)}, got {on_lost!r}")
        if backend_type is not None and backend_type not in BACKENDS:
            raise ConfigError(f"backend_type must be one of {', '.join(BACKENDS)}")
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
        self.config: NetworkConfig | None = None
        self.underlay_network = None if underlay_network is None else \
            ipaddress.IPv4Network(underlay_network)
        self.state = OwnLease()
        self.link = StoreLink(store, clock=clock, rng=self.rng, retry_initial=retry_initial,
                              retry_max=retry_max, op_timeout=op_timeout)
        self._validators: dict[NetworkConfig, LeaseValidator] = {}
        self.feed = PeerFeed(self._publish_context, self._validator, clock, retry_max, coalesce)
        self.acquirer = Acquirer(self.link, self.state, self.feed, self._validator,
                                 prefix=prefix, public_ip=self.public_ip,
                                 lease_ttl=self.lease_ttl, clock=clock, rng=self.rng)
        self.guard = Guard(self.link, self.state, self._lost, prefix=prefix,
                           public_ip=self.public_ip, lease_ttl=self.lease_ttl, clock=clock)
        self._on_lease_changed: Callable[[Lease], Any] | None = None
        self._lost_lock = asyncio.Lock()

    @property
    def lease(self) -> Lease | None:
        """Our subnet lease (None before acquire())."""
        return self.state.lease

    # -- getting the lease (the Acquirer) -----------------------------------
    async def load_config(self) -> NetworkConfig:
        """Read `<prefix>/config`, waiting (with logged backoff) while it is
        missing or invalid or the store is down. Never raises for those."""
        self.config = await self.acquirer.load_config()
        return self.config

    async def acquire(self) -> Lease:
        """Get our subnet lease (flannel's algorithm, see acquire.py).

        Retries while the store is down and on lost races; raises
        ConfigError (backend mismatch) or LeaseStoreError(retryable=False)
        when no subnet is free.
        """
        if self.config is None:
            await self.load_config()
        lease = await self._acquire(self.previous_subnet, allow_other=True)
        self.previous_subnet = lease.subnet
        return lease

    async def _acquire(self, previous: ipaddress.IPv4Network | None,
                       allow_other: bool) -> Lease:
        assert self.config is not None
        value = own_lease_value(self.config, self.public_ip, self._backend(),
                                self.backend_data)
        return await self.acquirer.acquire(self.config, value, previous, allow_other)

    def _backend(self) -> str:
        assert self.config is not None
        return self.backend_type or self.config.backend_type

    def _validator(self) -> LeaseValidator:
        """The lease validator for the current network config."""
        assert self.config is not None
        validator = self._validators.get(self.config)
        if validator is None:
            validator = LeaseValidator(self.prefix, self.config, self.underlay_network,
                                       self.clock)
            self._validators = {self.config: validator}
        return validator

    # -- running -----------------------------------------------------------
    async def run(self, apply_peers: ApplyPeers,
                  on_lease_changed: Callable[[Lease], Any] | None = None) -> None:
        """Renew our lease, keep apply_peers fed with the full peer list and
        watch the network config, until cancelled. Raises LeaseLostError when
        the lease is lost and cannot be re-created (on_lost='exit', or the
        subnet was taken and no on_lease_changed callback accepts a new one),
        NetworkConfigChanged when `<prefix>/config` changed (restart needed)."""
        if self.state.lease is None:
            await self.acquire()
        assert self.config is not None
        self.feed.apply, self._on_lease_changed = apply_peers, on_lease_changed
        tasks = [asyncio.create_task(self._watch_loop(), name="udpoverlay-lease-watch"),
                 asyncio.create_task(self._renew_loop(), name="udpoverlay-lease-renew"),
                 asyncio.create_task(self.guard.watch_config(self.config),
                                     name="udpoverlay-config-watch")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            retry = self.feed.cancel()
            await _cancel_all([*tasks, *([retry] if retry else [])])

    def _renew_delay(self) -> float | None:
        lease, ttl = self.state.lease, self.state.granted_ttl
        if lease is None or lease.expires is None or not ttl:
            return None
        margin = min(self.renew_margin, ttl / 2)
        return max(0.0, lease.expires - margin - self.clock())

    async def _renew_loop(self) -> None:
        state, link = self.state, self.link
        backoff = link.store_backoff()
        while True:
            delay = self._renew_delay()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):   # None: until rewoken
                        await state.changed.wait()
                if state.changed.is_set():
                    state.changed.clear()
                    continue  # the lease changed: recompute the deadline
            generation, lease_id = state.generation, state.lease_id
            try:
                ttl = await link.bounded(self.store.refresh(lease_id))
            except LeaseStoreError as e:
                link.set_disconnected(e)
                delay = backoff.next()
                link.warn_down("renewing subnet lease failed (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            link.set_connected()
            if lease_id != state.lease_id:
                continue  # restored or adopted meanwhile: renew the new one
            if ttl is None:
                await self._lost("its etcd lease expired or was revoked", generation)
            elif generation == state.generation and state.lease is not None:
                state.granted_ttl = ttl
                state.extend(ttl, self.clock())
                log.debug("renewed subnet lease %s for %ss", state.lease.subnet, ttl)

    async def _watch_loop(self) -> None:
        prefix = subnets_prefix(self.prefix)
        link = self.link
        backoff = link.store_backoff()
        while True:
            try:
                listing = await link.bounded(self.store.list_prefix(prefix, with_ttl=False))
                link.set_connected()
                backoff.reset()
                await self._absorb_listing(listing.kvs, listing.revision)
                batches = self.store.watch_prefix(prefix, listing.revision + 1, with_ttl=False)
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        link.set_connected()
                        await self._absorb_events(batch)
                raise StoreDisconnected("lease watch ended")
            except StoreCompacted as e:
                log.warning("lease watch fell behind compaction (%s); re-listing", e)
                await asyncio.sleep(backoff.next())
            except LeaseLostError:
                raise
            except LeaseStoreError as e:
                link.set_disconnected(e)
                delay = backoff.next()
                link.warn_down("lease watch failed (%s); keeping %d known peers, retrying in "
                               "%.1fs", e, len(self.feed.view.peers), delay)
                await asyncio.sleep(delay)

    async def _absorb_listing(self, kvs: tuple[KeyValue, ...], revision: int) -> None:
        own_key = self.state.own_key
        own = next((kv for kv in kvs if kv.key == own_key), None)
        self.feed.absorb_listing((kv for kv in kvs if kv.key != own_key), revision)
        if revision >= self.state.own_revision:
            await self.guard.check_own(own, "our lease key is missing from the store")
        await self.feed.publish()

    async def _absorb_events(self, batch: list[StoreEvent]) -> None:
        """In order; our own key's events go to the Guard (which may move
        our key: later events of the old key are then another node's)."""
        chunk: list[StoreEvent] = []
        for event in batch:
            if event.kv.key != self.state.own_key:
                chunk.append(event)
                continue
            if chunk:
                self.feed.absorb_events(chunk)
                chunk = []
            if event.revision > self.state.own_revision:
                await self.guard.check_own(None if event.kind == DELETE else event.kv,
                                           "our lease key was deleted")
        if chunk:
            self.feed.absorb_events(chunk)
        self.feed.schedule()

    async def _lost(self, reason: str, generation: int) -> None:
        """Our key is gone (seen at `generation`): re-acquire it or stop."""
        async with self._lost_lock:
            old = self.state.lease
            if generation != self.state.generation or old is None:
                return  # already replaced by the other loop
            if self.on_lost == "exit":
                raise LeaseLostError(f"subnet lease {old.subnet} lost: {reason} (on_lost=exit)")
            log.error("subnet lease %s lost (%s); re-acquiring it", old.subnet, reason)
            try:
                lease = await self._acquire(old.subnet,
                                            allow_other=self._on_lease_changed is not None)
            except LeaseLostError:
                raise
            except (LeaseStoreError, ConfigError) as e:
                raise LeaseLostError(f"subnet lease {old.subnet} lost ({reason}) and not "
                                     f"re-acquired: {e}") from e
        if lease.subnet != old.subnet:
            log.warning("our subnet changed from %s to %s", old.subnet, lease.subnet)
            assert self._on_lease_changed is not None
            await call_back(self._on_lease_changed, lease)
        await self.feed.publish()

    # -- store health, for metrics (ops/metrics.py) --------------------------
    def _wall(self, at: float | None) -> float | None:
        """A clock() reading as unix time (metrics speak wall time)."""
        return None if at is None else time.time() - (self.clock() - at)

    @property
    def store_connected(self) -> bool:
        return self.link.connected

    @property
    def last_contact(self) -> float | None:
        """Unix time of the last successful store call or watch event."""
        return self._wall(self.link.last_contact)

    @property
    def view_stale(self) -> bool:
        """Connected, but the watches showed no life for longer than the
        store's bound (a member that lost its peers may serve a frozen view)."""
        return self.link.connected and bool(getattr(self.store, "view_stale", False))

    @property
    def view_age(self) -> float | None:
        """Seconds since the watches last showed life (None: not known)."""
        age = getattr(self.store, "view_age", None)
        return age() if callable(age) else None

    @property
    def failovers(self) -> int:
        """Moves to another etcd member so far."""
        return int(getattr(self.store, "failovers", 0))

    @property
    def rejected_counts(self) -> dict[str, int]:
        """Lease keys rejected now, by reason, every reason listed (metrics)."""
        return {reason: 0 for reason in REASONS} | self.feed.rejects.counts

    @property
    def lease_expiry(self) -> float | None:
        """Unix time our subnet lease expires unless renewed (None: no lease)."""
        lease = self.state.lease
        return None if lease is None else self._wall(lease.expires)

    # -- peers and status ---------------------------------------------------
    def _publish_context(self) -> Context:
        assert self.config is not None
        lease = self.state.lease
        own_key = (self.backend_data or {}).get("PublicKey") \
            if self._backend() == "wireguard" else None
        return (self.config, self._backend(), self.public_ip,
                lease.subnet if lease else None, own_key)

    def status(self) -> dict:
        """JSON-serialisable snapshot for `udpoverlay status`."""
        now = self.clock()
        lease = None
        own = self.state.lease
        if own is not None:
            expires = own.expires
            lease = {"subnet": str(own.subnet), "public_ip": str(own.public_ip),
                     "backend_type": self._backend() if self.config else None,
                     "expires_in": None if expires is None else round(expires - now, 1),
                     "etcd_lease": f"{self.state.lease_id:x}"}
        return {
            "lease": lease,
            "network": str(self.config.network) if self.config else None,
            "store": "stale: no watch event or progress answer for "
                     f"{self.view_age or 0:.0f}s" if self.view_stale else self.link.state,
            "store_endpoint": str(getattr(self.store, "endpoint", "")) or None,
            "store_failovers": self.failovers,
            **self.feed.status(now),
        }


async def _cancel_all(tasks: list[asyncio.Task], rounds: int = 50) -> None:
    """Cancel tasks and wait until they are done, cancelling again (bounded)
    if one swallowed the cancellation (a known asyncio race on 3.11)."""
    for _ in range(rounds):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.1)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()       # retrieved: no "exception was never retrieved" noise
