"""Getting our subnet lease: the network config, then flannel's algorithm.

Why like flannel: udpoverlay and flannel nodes share one etcd, so they must
choose subnets the same way. Reuse the lease carrying our PublicIP, else
the previous subnet (from subnet.env) if free, else a random free subnet
among the first 100 between SubnetMin and SubnetMax (allocate.pick_free).
The key is created in a transaction guarded by version(key) == 0 with a TTL
lease, so two hosts racing for one subnet cannot both win (the loser lists
again and retries, up to RACE_RETRIES times).

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
from udpoverlay.cluster.store.base import KeyValue, LeaseStore
from udpoverlay.errors import ConfigError, LeaseLostError, LeaseStoreError, StoreDisconnected

__all__ = ["LeaseAcquisition", "Backoff", "RACE_RETRIES"]

log = logging.getLogger(__name__)

RACE_RETRIES = 10        # flannel's raceRetries


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
    _generation: int
    _store_state: str
    _rewake: asyncio.Event

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
        assert self.config is not None
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
            lease = None if mine is not None else self.feed.decode(subnet, kv, quiet=True)
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
            subnet = pick_free(config, taken, self.rng)
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
        self.feed.table.discard(subnet)
        self._rewake.set()
        log.info("%s: %s (public IP %s, etcd lease %x, TTL %ss)", how, subnet, self.public_ip,
                 written.lease_id, written.ttl)
        return self.lease

