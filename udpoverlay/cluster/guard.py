"""Guarding what we depend on while running: our own lease key and the
network config. The guarding half of ClusterMembership (membership.py holds
the state, the watch and the renewal).

Why these rules (issue 11: any writer could take a node down by rewriting
its key, and a changed Network went unnoticed):
- Our key rewritten in place (same creation revision, another value): we
  put our value back (guarded by the key's mod revision, on a fresh etcd
  lease; the one it replaces is revoked) and log it once per foreign value.
  We do not exit: the key is still ours by flannel's rules.
- Our key deleted: re-created as before (membership._lost). Deleted and
  created again by another writer (a new creation revision, another
  value): it is theirs now, by flannel's version == 0 rule; _lost decides.
- Our exact value moved to another etcd lease: another instance with our
  public IP re-attached it (it revokes ours). We keep running on that
  lease and WARN once: fighting back would make two instances rewrite the
  key forever. A key with our value and no lease at all is re-attached.
- `<prefix>/config` is watched; a change of Network, SubnetLen, SubnetMin,
  SubnetMax, backend type, port or VNI raises NetworkConfigChanged, so the
  daemon exits non-zero and its supervisor restarts it under the new
  config (re-leasing in place would leave subnet.env, the TUN address and
  every pod on the old network). A deleted or unparsable config is a
  WARNING (once per value): the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any

from udpoverlay.cluster.acquire import LeaseAcquisition
from udpoverlay.cluster.codec import config_key, decode_lease_value
from udpoverlay.cluster.network import NetworkConfig, parse_network_config
from udpoverlay.cluster.store.base import DELETE, KeyValue
from udpoverlay.errors import (
    ConfigError,
    LeaseDecodeError,
    LeaseStoreError,
    NetworkConfigChanged,
    StoreDisconnected,
)

__all__ = ["LeaseGuard", "CONFIG_FIELDS", "config_changes"]

log = logging.getLogger(__name__)

CONFIG_FIELDS = (("Network", "network"), ("SubnetLen", "subnet_len"),
                 ("SubnetMin", "subnet_min"), ("SubnetMax", "subnet_max"),
                 ("Backend.Type", "backend_type"), ("Backend.Port", "backend_port"),
                 ("Backend.VNI", "vni"))


def config_changes(old: NetworkConfig, new: NetworkConfig) -> list[str]:
    """'Network 198.19.0.0/16 -> 198.20.0.0/16' for each field that differs."""
    return [f"{name} {getattr(old, attr)} -> {getattr(new, attr)}"
            for name, attr in CONFIG_FIELDS if getattr(old, attr) != getattr(new, attr)]


class LeaseGuard(LeaseAcquisition):
    """Own-key and config guarding; attributes are ClusterMembership's."""

    _guard_logged: dict[str, Any]

    async def _lost(self, reason: str, generation: int) -> None:
        raise NotImplementedError   # ClusterMembership's

    # -- our own key ---------------------------------------------------------
    async def _check_own(self, kv: KeyValue | None, missing: str) -> None:
        """Our key as the store shows it now: keep, restore, adopt or lost."""
        generation = self._generation
        if kv is None:
            await self._lost(missing, generation)
            return
        assert self.lease is not None and self._value is not None
        ours = kv.value == self._value.encode()
        recreated = bool(kv.create_revision and self._own_create_revision
                         and kv.create_revision != self._own_create_revision)
        if recreated and not ours:
            await self._lost(f"our subnet key was deleted and re-created by "
                             f"{_owner(self.lease.subnet, kv)}", generation)
        elif not ours:
            self._once("rewrite", kv.value, logging.WARNING,
                       "our lease key %s was rewritten by another writer (now %s); "
                       "restoring our value", kv.key, _owner(self.lease.subnet, kv))
            await self._restore(kv)
        elif kv.lease_id == 0:
            self._once("detached", kv.lease_id, logging.WARNING,
                       "our lease key %s was re-written without an etcd lease; re-attaching "
                       "it to ours", kv.key)
            await self._restore(kv)
        elif kv.lease_id != self._lease_id:
            self._once("adopted", kv.lease_id, logging.WARNING,
                       "our lease key %s was moved to etcd lease %x by another writer with our "
                       "own value: is another host or instance using public IP %s? keeping "
                       "the key on that lease", kv.key, kv.lease_id, self.public_ip)
            self._lease_id, self._own_create_revision = kv.lease_id, kv.create_revision
            self._granted_ttl = kv.ttl or self._granted_ttl
            self._rewake.set()
        if kv.ttl is not None and kv.lease_id == self._lease_id and ours:
            self.lease = replace(self.lease, expires=self.clock() + kv.ttl)

    async def _restore(self, kv: KeyValue) -> None:
        """Put our value back into our key (only if unchanged since `kv`)."""
        assert self._value is not None and self.lease is not None
        written = await self._bounded(self.store.put(
            kv.key, self._value.encode(), self.lease_ttl, expect_mod_revision=kv.mod_revision))
        if written is None:
            return   # changed again meanwhile: the next event decides
        retired = {self._lease_id} - {0, written.lease_id}
        self._lease_id, self._own_revision = written.lease_id, written.revision
        self._granted_ttl = written.ttl
        if written.ttl is not None:
            self.lease = replace(self.lease, expires=self.clock() + written.ttl)
        self._rewake.set()
        log.info("restored our lease key %s (etcd lease %x)", kv.key, written.lease_id)
        await self._revoke(retired)

    def _once(self, what: str, value: Any, level: int, message: str, *args: Any) -> None:
        """Log `message` once per (what, value); DEBUG on repeats."""
        quiet = self._guard_logged.get(what) == value
        self._guard_logged[what] = value
        log.log(logging.DEBUG if quiet else level, message, *args)

    # -- the network config --------------------------------------------------
    async def _config_loop(self) -> None:
        """Watch `<prefix>/config`; raise NetworkConfigChanged on a change."""
        key = config_key(self.prefix)
        backoff = self._store_backoff()
        while True:
            try:
                listing = await self._bounded(self.store.list_prefix(key, with_ttl=False))
                self._check_config(next((kv for kv in listing.kvs if kv.key == key), None))
                batches = self.store.watch_prefix(key, listing.revision + 1, with_ttl=False)
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        backoff.reset()
                        for event in batch:
                            if event.kv.key == key:
                                self._check_config(None if event.kind == DELETE else event.kv)
                raise StoreDisconnected("config watch ended")
            except LeaseStoreError as e:   # the lease watch reports outages
                log.debug("network config watch: %s", e)
                await asyncio.sleep(backoff.next())

    def _check_config(self, kv: KeyValue | None) -> None:
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
        self._guard_logged.pop("config", None)
        assert self.config is not None
        changes = config_changes(self.config, new)
        if changes:
            raise NetworkConfigChanged(
                f"network config {key} changed while running ({'; '.join(changes)}); "
                f"exiting so that udpoverlay restarts under the new config")


def _owner(subnet: Any, kv: KeyValue) -> str:
    try:
        return f"PublicIP {decode_lease_value(subnet, kv.value).public_ip}"
    except LeaseDecodeError:
        return "an unreadable value"
