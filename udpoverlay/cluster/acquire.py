"""Getting our subnet lease: the network config, then flannel's algorithm.

Why like flannel: udpoverlay and flannel nodes share one etcd, so they must
choose subnets the same way: the previous subnet (from subnet.env) if its
key carries our PublicIP or is free, else the lease carrying our PublicIP,
else a random free subnet among the first 100 between SubnetMin and
SubnetMax (allocate.pick_free). flannel tries "our PublicIP" first; we put
the subnet file first because any writer can put our address into a second
key (issue 11: a restarted host then moved to the forged subnet). The key is
created in a transaction guarded by version(key) == 0 with a TTL lease, so
two hosts racing for one subnet cannot both win (the loser lists again and
retries, up to RACE_RETRIES times).

Only flannel's exact key for a subnet can be ours (never a nested key or a
second spelling). We never hold two keys: at start, another key with our
own value byte for byte is a leftover of an earlier run and is deleted
(while running, such a key is another instance's: it is warned about,
never deleted, so two instances cannot fight). No etcd lease
is left behind: reusing our key re-attaches it to a fresh lease (a guarded
put) and revokes the one it had (the previous run's, alive for up to 24 h
otherwise) rather than adopting it, so a stale lease never outlives its use
and our TTL is the one we asked for.

LeaseAcquisition is the acquiring half of ClusterMembership (membership.py
holds the state and the running half); every store call is bounded by
op_timeout and every retry loop backs off with jitter.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from dataclasses import replace
from typing import Any, Awaitable, Callable

from udpoverlay.cluster.allocate import own_lease_value, pick_free
from udpoverlay.cluster.codec import (
    Lease,
    config_key,
    decode_lease_value,
    parse_subnet_key,
    subnet_key,
    subnets_prefix,
)
from udpoverlay.cluster.feed import PeerFeed
from udpoverlay.cluster.network import NetworkConfig, parse_network_config
from udpoverlay.cluster.store.base import KeyValue, LeaseStore, Written
from udpoverlay.cluster.validate import LeaseValidator, Rejection
from udpoverlay.errors import (
    ConfigError,
    LeaseDecodeError,
    LeaseLostError,
    LeaseStoreError,
    StoreDisconnected,
)

__all__ = ["LeaseAcquisition", "Backoff", "RACE_RETRIES", "DOWN_LOG_INTERVAL", "RECONNECT_MAX"]

log = logging.getLogger(__name__)

RACE_RETRIES = 10        # flannel's raceRetries
DOWN_LOG_INTERVAL = 60.0  # s between "store down" WARNINGs
RECONNECT_MAX = 1.5      # s: longest retry pause while the store is down (back within 2 s)


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


class LeaseAcquisition:
    """Loading the network config and acquiring our lease (see module notes).
    The attributes are ClusterMembership's, set in its __init__."""

    store: LeaseStore
    prefix: str
    public_ip: ipaddress.IPv4Address
    backend_type: str | None
    backend_data: dict | None
    previous_subnet: ipaddress.IPv4Network | None
    lease_ttl: int
    clock: Callable[[], float]
    rng: random.Random
    retry_initial: float
    retry_max: float
    op_timeout: float
    config: NetworkConfig | None
    lease: Lease | None
    feed: PeerFeed
    _lease_id: int
    _granted_ttl: float | None
    _own_revision: int
    _own_key: str | None
    _own_create_revision: int
    _value: str | None
    _down_logged: float | None
    underlay_network: ipaddress.IPv4Network | None
    _validators: dict[NetworkConfig, LeaseValidator]
    _generation: int
    _store_state: str
    _rewake: asyncio.Event

    # -- small helpers ---------------------------------------------------
    def _backoff(self) -> Backoff:
        return Backoff(self.retry_initial, self.retry_max, self.rng)

    def _store_backoff(self) -> Backoff:
        """Retries while the store is down: capped so we are back within ~2 s."""
        return Backoff(self.retry_initial, min(self.retry_max, RECONNECT_MAX), self.rng)

    async def _bounded(self, call: Awaitable[Any]) -> Any:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow
            # a cancellation that races with the call's completion, and a
            # cancelled membership task would then run on forever.
            async with asyncio.timeout(self.op_timeout):
                return await call
        except TimeoutError:
            raise StoreDisconnected(f"lease store did not answer within "
                                    f"{self.op_timeout:g}s") from None

    def _validator(self) -> LeaseValidator:
        """The lease validator for the current network config."""
        assert self.config is not None
        validator = self._validators.get(self.config)
        if validator is None:
            validator = LeaseValidator(self.prefix, self.config, self.underlay_network,
                                       self.clock)
            self._validators = {self.config: validator}
        return validator

    def _set_connected(self) -> None:
        if self._store_state != "connected" and self._down_logged is not None:
            log.info("lease store reachable again")
        self._down_logged = None
        self._store_state = "connected"

    def _warn_down(self, message: str, *args: Any) -> None:
        """A store-down WARNING about once a minute; DEBUG in between."""
        now = self.clock()
        quiet = self._down_logged is not None and now - self._down_logged < DOWN_LOG_INTERVAL
        if not quiet:
            self._down_logged = now
        log.log(logging.DEBUG if quiet else logging.WARNING, message, *args)

    def _set_disconnected(self, error: Exception) -> None:
        self._store_state = f"disconnected: {error}"

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
            except LeaseStoreError as e:     # store down: a WARNING about once a minute
                self._set_disconnected(e)
                delay = backoff.next()
                self._warn_down("waiting for the network config (%s); retrying in %.1fs",
                                e, delay)
                await asyncio.sleep(delay)
                continue
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
        assert self.config is not None
        value = own_lease_value(self.config, self.public_ip, self._backend(),
                                self.backend_data)
        backoff = self._store_backoff()
        conflicts = 0
        while True:
            try:
                lease = await self._try_acquire(value, previous, allow_other)
            except LeaseStoreError as e:
                if not e.retryable:
                    raise
                self._set_disconnected(e)
                delay = backoff.next()
                self._warn_down("acquiring a subnet lease failed (%s); retrying in %.1fs", e,
                                delay)
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
        starting = self.lease is None
        listing = await self._bounded(self.store.list_prefix(subnets_prefix(self.prefix),
                                                             with_ttl=False))
        self._set_connected()
        taken, ours = await self._survey(listing.kvs, value)
        if previous is not None and not config.contains_subnet(previous):
            log.warning("previous subnet %s does not fit the network config; ignoring it",
                        previous)
            previous = None
        reuse: KeyValue | None = None
        subnet = None
        if previous is not None:
            if previous in ours:
                reuse = ours[previous]
            elif any(previous.overlaps(t) for t in taken):
                log.info("previous subnet %s is leased by another host", previous)
            else:
                subnet = previous
        if reuse is None and subnet is None and ours and allow_other:
            reuse = min(ours.values(), key=lambda kv: (kv.create_revision, kv.key))
        if reuse is not None:
            subnet = parse_subnet_key(reuse.key)
            assert subnet is not None
            written = await self._bounded(self.store.put(
                reuse.key, value.encode(), self.lease_ttl, expect_mod_revision=reuse.mod_revision))
            how, created = "reusing our lease key", reuse.create_revision
        else:
            if subnet is None:
                if not allow_other:
                    raise LeaseLostError(f"subnet {previous} is now leased by another host; "
                                         f"restart to acquire a new subnet")
                subnet = pick_free(config, taken, self.rng)
            written = await self._bounded(self.store.create(
                subnet_key(self.prefix, subnet), value.encode(), self.lease_ttl))
            how, created = "acquired subnet lease", 0 if written is None else written.revision
        if written is None:
            return None
        retired = self._own(subnet, value, written, created, how)
        if reuse is not None and reuse.lease_id:
            retired.add(reuse.lease_id)   # the previous run's etcd lease, now unused
        for other, kv in ours.items():
            # Only at start: while running, a second key with our value belongs to
            # another instance with our address (deleting it would start a war).
            if starting and other != subnet and kv.value == value.encode():
                log.info("deleting %s: a second key with our own value (a leftover of an "
                         "earlier run); we hold %s", kv.key, subnet)
                await self._bounded(self.store.delete(kv.key))
                retired.add(kv.lease_id)
        await self._revoke(retired - {0, written.lease_id})
        return self.lease

    async def _survey(self, kvs: tuple[KeyValue, ...], value: str) -> tuple[
            set[ipaddress.IPv4Network], dict[ipaddress.IPv4Network, KeyValue]]:
        """The subnets other keys occupy, and the valid keys carrying our
        public IP (only flannel's exact key for a subnet can be ours). Our
        own keys outside the configured range are deleted."""
        validator = self._validator()
        taken: set[ipaddress.IPv4Network] = set()
        ours: dict[ipaddress.IPv4Network, KeyValue] = {}
        for kv in kvs:
            verdict = validator.subnet_of(kv.key)
            subnet = verdict.subnet if isinstance(verdict, Rejection) else verdict
            if subnet is None or kv.key != subnet_key(self.prefix, subnet):
                if subnet is not None:
                    taken.add(subnet)   # a second key still blocks its subnet
                continue
            try:
                carries_ours = decode_lease_value(subnet, kv.value).public_ip == self.public_ip
            except LeaseDecodeError:
                carries_ours = False
            if carries_ours and isinstance(verdict, Rejection) \
                    and verdict.reason in ("outside_range", "outside_network", "subnet_len"):
                log.info("lease %s for our public IP does not fit the network config (%s); "
                         "deleting it", subnet, verdict.detail)
                await self._bounded(self.store.delete(kv.key))
                await self._revoke({kv.lease_id})
                continue
            taken.add(subnet)
            if carries_ours and not isinstance(verdict, Rejection):
                ours[subnet] = kv
        return taken, ours

    async def _revoke(self, lease_ids: set[int]) -> None:
        """Revoke etcd leases we no longer use (best effort: they expire anyway)."""
        for lease_id in sorted(lease_ids - {0}):
            try:
                await self._bounded(self.store.revoke_lease(lease_id))
                log.info("revoked unused etcd lease %x", lease_id)
            except LeaseStoreError as e:
                log.warning("revoking unused etcd lease %x failed (%s); it expires on its own",
                            lease_id, e)

    def _own(self, subnet: ipaddress.IPv4Network, value: str, written: Written,
             create_revision: int, how: str) -> set[int]:
        """Record our key after a write; the etcd lease ids it made unused."""
        self._granted_ttl = written.ttl
        expires = None if written.ttl is None else self.clock() + written.ttl
        data = decode_lease_value(subnet, value)
        self.lease = replace(data, expires=expires)
        retired = {self._lease_id} if self._lease_id != written.lease_id else set()
        self._lease_id = written.lease_id
        self._own_revision = written.revision
        self._own_key = subnet_key(self.prefix, subnet)
        self._own_create_revision = create_revision
        self._value = value
        self._generation += 1
        self.feed.forget(self._own_key)
        self._rewake.set()
        log.info("%s: %s (public IP %s, etcd lease %x, TTL %ss)", how, subnet, self.public_ip,
                 written.lease_id, written.ttl)
        return retired
