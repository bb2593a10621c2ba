"""Getting our subnet lease: the network config, then flannel's algorithm.

Why like flannel: udpoverlay and flannel nodes share one etcd, so they must
choose subnets the same way: the previous subnet (from subnet.env) if its
key carries our PublicIP or is free, else the lease carrying our PublicIP,
else a random free subnet among the first 100 between SubnetMin and
SubnetMax (allocate.pick_free). flannel tries "our PublicIP" first; we put
the subnet file first because any writer can put our address into a second
key (a restarted host would then move to the forged subnet). The key is
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

Who owns what: the Acquirer is a collaborator of ClusterMembership
(membership.py), which owns the lease state (ownlease.OwnLease), the
network config and the previous subnet, and passes them in. The Acquirer
writes our key and records it in the OwnLease (take()); it keeps no state
of its own between calls. Store calls go through the shared StoreLink
(storelink.py): every one is bounded by op_timeout and every retry loop
backs off with jitter.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from typing import Callable

from udpoverlay.cluster.allocate import pick_free
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
from udpoverlay.cluster.ownlease import OwnLease
from udpoverlay.cluster.store.base import KeyValue, Written
from udpoverlay.cluster.storelink import StoreLink
from udpoverlay.cluster.validate import LeaseValidator, Rejection
from udpoverlay.errors import ConfigError, LeaseDecodeError, LeaseLostError, LeaseStoreError

__all__ = ["Acquirer", "RACE_RETRIES"]

log = logging.getLogger(__name__)

RACE_RETRIES = 10        # flannel's raceRetries


class Acquirer:
    """Loading the network config and acquiring our lease (see module notes).

    link: the shared StoreLink; state: the membership's OwnLease, written
    when we write our key; feed: told to forget a key once it is ours;
    validator: the lease validator for the current network config.
    """

    def __init__(self, link: StoreLink, state: OwnLease, feed: PeerFeed,
                 validator: Callable[[], LeaseValidator], *, prefix: str,
                 public_ip: ipaddress.IPv4Address, lease_ttl: int,
                 clock: Callable[[], float], rng: random.Random) -> None:
        self.store, self.link, self.state, self.feed = link.store, link, state, feed
        self.validator = validator
        self.prefix, self.public_ip, self.lease_ttl = prefix, public_ip, lease_ttl
        self.clock, self.rng = clock, rng

    # -- network config ----------------------------------------------------
    async def load_config(self) -> NetworkConfig:
        """Read `<prefix>/config`, waiting (with logged backoff) while it is
        missing or invalid or the store is down. Never raises for those."""
        key = config_key(self.prefix)
        backoff = self.link.backoff()
        last = None
        while True:
            try:
                kv = await self.link.bounded(self.store.get(key))
                self.link.set_connected()
                if kv is None:
                    raise ConfigError(f"no network config at {key} yet")
                config = parse_network_config(kv.value)
                log.info("network config: %s, subnets /%d in %s..%s, backend %s port %d",
                         config.network, config.subnet_len, config.subnet_min,
                         config.subnet_max, config.backend_type, config.backend_port)
                return config
            except LeaseStoreError as e:     # store down: a WARNING about once a minute
                self.link.set_disconnected(e)
                delay = backoff.next()
                self.link.warn_down("waiting for the network config (%s); retrying in %.1fs",
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

    # -- acquiring ---------------------------------------------------------
    async def acquire(self, config: NetworkConfig, value: str,
                      previous: ipaddress.IPv4Network | None, allow_other: bool) -> Lease:
        """Get a subnet lease carrying `value` (flannel's algorithm, see the
        module notes). Retries while the store is down and on lost races;
        raises LeaseStoreError(retryable=False) when no subnet is free,
        LeaseLostError when `previous` is taken and not allow_other."""
        backoff = self.link.store_backoff()
        conflicts = 0
        while True:
            try:
                lease = await self._try_acquire(config, value, previous, allow_other)
            except LeaseStoreError as e:
                if not e.retryable:
                    raise
                self.link.set_disconnected(e)
                delay = backoff.next()
                self.link.warn_down("acquiring a subnet lease failed (%s); retrying in %.1fs",
                                    e, delay)
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

    async def _try_acquire(self, config: NetworkConfig, value: str,
                           previous: ipaddress.IPv4Network | None,
                           allow_other: bool) -> Lease | None:
        """One attempt; None if another writer got in between (retry)."""
        starting = self.state.lease is None
        listing = await self.link.bounded(self.store.list_prefix(subnets_prefix(self.prefix),
                                                                 with_ttl=False))
        self.link.set_connected()
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
            written = await self.link.bounded(self.store.put(
                reuse.key, value.encode(), self.lease_ttl, expect_mod_revision=reuse.mod_revision))
            how, created = "reusing our lease key", reuse.create_revision
        else:
            if subnet is None:
                if not allow_other:
                    raise LeaseLostError(f"subnet {previous} is now leased by another host; "
                                         f"restart to acquire a new subnet")
                subnet = pick_free(config, taken, self.rng)
            written = await self.link.bounded(self.store.create(
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
                await self.link.bounded(self.store.delete(kv.key))
                retired.add(kv.lease_id)
        await self.link.revoke(retired - {0, written.lease_id})
        return self.state.lease

    async def _survey(self, kvs: tuple[KeyValue, ...], value: str) -> tuple[
            set[ipaddress.IPv4Network], dict[ipaddress.IPv4Network, KeyValue]]:
        """The subnets other keys occupy, and the valid keys carrying our
        public IP (only flannel's exact key for a subnet can be ours). Our
        own keys outside the configured range are deleted."""
        validator = self.validator()
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
                await self.link.bounded(self.store.delete(kv.key))
                await self.link.revoke({kv.lease_id})
                continue
            taken.add(subnet)
            if carries_ours and not isinstance(verdict, Rejection):
                ours[subnet] = kv
        return taken, ours

    def _own(self, subnet: ipaddress.IPv4Network, value: str, written: Written,
             create_revision: int, how: str) -> set[int]:
        """Record our key after a write; the etcd lease ids it made unused."""
        retired = self.state.take(self.prefix, subnet, value, written, create_revision,
                                  self.clock())
        assert self.state.own_key is not None
        self.feed.forget(self.state.own_key)
        log.info("%s: %s (public IP %s, etcd lease %x, TTL %ss)", how, subnet, self.public_ip,
                 written.lease_id, written.ttl)
        return retired
