"""Guarding what we depend on while running: our own lease key and the
network config.

Who owns what: the Guard is a collaborator of ClusterMembership
(membership.py), which owns the lease state (ownlease.OwnLease), runs the
lease watch and the renewal, and hands the Guard each sighting of our key
(check_own) and the running network config (watch_config). The Guard
restores or adopts our key in the OwnLease; when the key is lost it calls
back the membership's `lost` (which re-acquires or stops). It owns only
its "logged once" memory and the config watch.

Why these rules (any writer could take a node down by rewriting
its key, and a changed Network went unnoticed):
- Our key rewritten in place (same creation revision, another value): we
  put our value back (guarded by the key's mod revision, on a fresh etcd
  lease; the one it replaces is revoked) and log it once per foreign value.
  We do not exit: the key is still ours by flannel's rules.
- Our key deleted: re-created as before (the membership's lost()). Deleted and
  created again by another writer (a new creation revision, another
  value): it is theirs now, by flannel's version == 0 rule; lost() decides.
- Our exact value moved to another etcd lease: another instance with our
  public IP re-attached it (it revokes ours). We keep running on that
  lease and WARN once: fighting back would make two instances rewrite the
  key forever. A key with our value and no lease at all is re-attached.
- `<prefix>/config` is watched; a change of Network, SubnetLen, SubnetMin,
  SubnetMax, backend type, port, VNI (wireguard: PSK, keepalive) raises
  NetworkConfigChanged, so the daemon exits non-zero and its supervisor
  restarts it under the new config (re-leasing in place would leave subnet.env, the TUN address and
  every pod on the old network). A deleted or unparsable config is a
  WARNING (once per value): the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Any, Awaitable, Callable

from udpoverlay.cluster.codec import config_key, decode_lease_value
from udpoverlay.cluster.network import NetworkConfig, parse_network_config
from udpoverlay.cluster.ownlease import OwnLease
from udpoverlay.cluster.store.base import DELETE, KeyValue
from udpoverlay.cluster.storelink import StoreLink
from udpoverlay.errors import (
    ConfigError,
    LeaseDecodeError,
    LeaseStoreError,
    NetworkConfigChanged,
    StoreDisconnected,
)

__all__ = ["Guard", "CONFIG_FIELDS", "config_changes"]

log = logging.getLogger(__name__)

CONFIG_FIELDS = (("Network", "network"), ("SubnetLen", "subnet_len"),
                 ("SubnetMin", "subnet_min"), ("SubnetMax", "subnet_max"),
                 ("Backend.Type", "backend_type"), ("Backend.Port", "backend_port"),
                 ("Backend.VNI", "vni"),
                 # wireguard (Backend.ListenPort is backend_port); the PSK prints as <hidden>
                 ("Backend.PSK", "wg_psk"),
                 ("Backend.PersistentKeepaliveInterval", "wg_keepalive"))


def config_changes(old: NetworkConfig, new: NetworkConfig) -> list[str]:
    """'Network 198.19.0.0/16 -> 198.20.0.0/16' for each field that differs."""
    return [f"{name} {getattr(old, attr)} -> {getattr(new, attr)}"
            for name, attr in CONFIG_FIELDS if getattr(old, attr) != getattr(new, attr)]


class Guard:
    """Own-key and config guarding (see the module notes).

    link: the shared StoreLink; state: the membership's OwnLease; lost:
    the membership's "our key is gone" handler, called with the reason and
    the OwnLease generation the loss was seen at.
    """

    def __init__(self, link: StoreLink, state: OwnLease,
                 lost: Callable[[str, int], Awaitable[None]], *, prefix: str,
                 public_ip: ipaddress.IPv4Address, lease_ttl: int,
                 clock: Callable[[], float]) -> None:
        self.store, self.link, self.state, self.lost = link.store, link, state, lost
        self.prefix, self.public_ip, self.lease_ttl, self.clock = \
            prefix, public_ip, lease_ttl, clock
        self._logged: dict[str, Any] = {}

    # -- our own key ---------------------------------------------------------
    async def check_own(self, kv: KeyValue | None, missing: str) -> None:
        """Our key as the store shows it now: keep, restore, adopt or lost."""
        state = self.state
        generation = state.generation
        if kv is None:
            await self.lost(missing, generation)
            return
        assert state.lease is not None and state.value is not None
        ours = kv.value == state.value.encode()
        recreated = bool(kv.create_revision and state.own_create_revision
                         and kv.create_revision != state.own_create_revision)
        if recreated and not ours:
            await self.lost(f"our subnet key was deleted and re-created by "
                            f"{_owner(state.lease.subnet, kv)}", generation)
        elif not ours:
            self._once("rewrite", kv.value, logging.WARNING,
                       "our lease key %s was rewritten by another writer (now %s); "
                       "restoring our value", kv.key, _owner(state.lease.subnet, kv))
            await self._restore(kv)
        elif kv.lease_id == 0:
            self._once("detached", kv.lease_id, logging.WARNING,
                       "our lease key %s was re-written without an etcd lease; re-attaching "
                       "it to ours", kv.key)
            await self._restore(kv)
        elif kv.lease_id != state.lease_id:
            self._once("adopted", kv.lease_id, logging.WARNING,
                       "our lease key %s was moved to etcd lease %x by another writer with our "
                       "own value: is another host or instance using public IP %s? keeping "
                       "the key on that lease", kv.key, kv.lease_id, self.public_ip)
            state.lease_id, state.own_create_revision = kv.lease_id, kv.create_revision
            state.granted_ttl = kv.ttl or state.granted_ttl
            state.changed.set()
        if kv.ttl is not None and kv.lease_id == state.lease_id and ours:
            state.extend(kv.ttl, self.clock())

    async def _restore(self, kv: KeyValue) -> None:
        """Put our value back into our key (only if unchanged since `kv`)."""
        state = self.state
        assert state.value is not None and state.lease is not None
        written = await self.link.bounded(self.store.put(
            kv.key, state.value.encode(), self.lease_ttl, expect_mod_revision=kv.mod_revision))
        if written is None:
            return   # changed again meanwhile: the next event decides
        retired = {state.lease_id} - {0, written.lease_id}
        state.lease_id, state.own_revision = written.lease_id, written.revision
        state.granted_ttl = written.ttl
        if written.ttl is not None:
            state.extend(written.ttl, self.clock())
        state.changed.set()
        log.info("restored our lease key %s (etcd lease %x)", kv.key, written.lease_id)
        await self.link.revoke(retired)

    def _once(self, what: str, value: Any, level: int, message: str, *args: Any) -> None:
        """Log `message` once per (what, value); DEBUG on repeats."""
        quiet = self._logged.get(what) == value
        self._logged[what] = value
        log.log(logging.DEBUG if quiet else level, message, *args)

    # -- the network config --------------------------------------------------
    async def watch_config(self, config: NetworkConfig) -> None:
        """Watch `<prefix>/config` until cancelled; raise NetworkConfigChanged
        when it differs from `config` (the one we run under)."""
        key = config_key(self.prefix)
        backoff = self.link.store_backoff()
        while True:
            try:
                listing = await self.link.bounded(self.store.list_prefix(key, with_ttl=False))
                self._check_config(next((kv for kv in listing.kvs if kv.key == key), None),
                                   config)
                batches = self.store.watch_prefix(key, listing.revision + 1, with_ttl=False)
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        backoff.reset()
                        for event in batch:
                            if event.kv.key == key:
                                self._check_config(None if event.kind == DELETE else event.kv,
                                                   config)
                raise StoreDisconnected("config watch ended")
            except LeaseStoreError as e:   # the lease watch reports outages
                log.debug("network config watch: %s", e)
                await asyncio.sleep(backoff.next())

    def _check_config(self, kv: KeyValue | None, config: NetworkConfig) -> None:
        key = config_key(self.prefix)
        if kv is None:
            self._once("config", None, logging.WARNING, "network config %s was deleted; "
                       "keeping the running config", key)
            return
        try:
            new = parse_network_config(kv.value)
        except ConfigError as e:
            self._once("config", kv.value, logging.WARNING, "network config %s is now invalid "
                       "(%s); keeping the running config", key, e)
            return
        self._logged.pop("config", None)
        changes = config_changes(config, new)
        if changes:
            raise NetworkConfigChanged(
                f"network config {key} changed while running ({'; '.join(changes)}); "
                f"exiting so that udpoverlay restarts under the new config")


def _owner(subnet: Any, kv: KeyValue) -> str:
    try:
        return f"PublicIP {decode_lease_value(subnet, kv.value).public_ip}"
    except LeaseDecodeError:
        return "an unreadable value"
