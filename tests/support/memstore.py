"""An in-memory LeaseStore with etcd's semantics, for unit tests.

Why a fake with real semantics: the meaning layer's hard cases (two hosts
racing for a subnet, a lease expiring, a watch that fell behind compaction,
a server that went away) must be reproducible in milliseconds without a
server. So this keeps what matters of etcd: one global revision bumped by
every write, version-guarded creates, leases with a TTL on an injectable
clock (expired on every operation or on `expire_due()`), a history that
`compact()` truncates, and watches that resume from a revision.

Test controls: `disconnect(reason)` / `reconnect()` (every call and every
watch fails with StoreDisconnected meanwhile), `hold_events(True)` (writes
land but watchers are not told: a slow watcher), `compact(rev)` (watchers
still behind `rev` get StoreCompacted, as etcd does), `revoke(lease_id)`,
`lease_ids()`. The TTL is always filled in (with_ttl costs nothing here).
Every operation yields to the loop first, so concurrent callers interleave
the way they would over a network.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field, replace
from typing import AsyncGenerator, Callable

from udpoverlay.cluster.store.base import DELETE, PUT, KeyValue, Listing, StoreEvent, Written
from udpoverlay.errors import StoreCompacted, StoreDisconnected

__all__ = ["MemoryStore"]


@dataclass
class _LeaseRecord:
    ttl: int
    expires: float
    keys: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _Watcher:
    prefix: str
    next_revision: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    error: Exception | None = None


class MemoryStore:
    """A single-process etcd look-alike (see module docstring)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.revision = 1
        self.compact_revision = 0
        self.create_conflicts = 0  # failed version==0 creates, for race tests
        self._kvs: dict[str, KeyValue] = {}
        self._leases: dict[int, _LeaseRecord] = {}
        self._lease_ids = itertools.count(0x1000)
        self._history: list[StoreEvent] = []
        self._watchers: set[_Watcher] = set()
        self._down: str | None = None
        self._hold = False

    # -- test controls -------------------------------------------------
    def disconnect(self, reason: str = "simulated outage") -> None:
        self._down = reason
        self._fail_watchers(StoreDisconnected(f"memory store: {reason}"))

    def reconnect(self) -> None:
        self._down = None

    def hold_events(self, hold: bool) -> None:
        self._hold = hold
        if not hold:
            self._wake_watchers()

    def compact(self, revision: int | None = None) -> int:
        """Drop history before `revision` (default: current); returns it."""
        rev = self.revision if revision is None else revision
        self.compact_revision = max(self.compact_revision, rev)
        self._history = [e for e in self._history if e.revision >= rev]
        for w in self._watchers:
            if w.next_revision < rev and w.error is None:
                w.error = StoreCompacted(f"memory store: revision {w.next_revision} "
                                         f"compacted (at {rev})", rev)
                w.wake.set()
        return rev

    def expire_due(self) -> int:
        """Expire leases whose time has come; how many expired."""
        now = self.clock()
        due = [lid for lid, rec in self._leases.items() if rec.expires <= now]
        for lease_id in due:
            self.revoke(lease_id)
        return len(due)

    def revoke(self, lease_id: int) -> None:
        record = self._leases.pop(lease_id, None)
        for key in sorted(record.keys if record else ()):
            self._remove(key)

    def value(self, key: str) -> bytes | None:
        kv = self._kvs.get(key)
        return kv.value if kv else None

    # -- internals -----------------------------------------------------
    async def _enter(self) -> None:
        await asyncio.sleep(0)
        if self._down is not None:
            raise StoreDisconnected(f"memory store: {self._down}")
        self.expire_due()

    def _record(self, kind: str, kv: KeyValue) -> None:
        self._history.append(StoreEvent(kind, kv, kv.mod_revision))
        self._wake_watchers()

    def _wake_watchers(self) -> None:
        for w in self._watchers:
            w.wake.set()

    def _fail_watchers(self, error: Exception) -> None:
        for w in self._watchers:
            w.error = error
            w.wake.set()

    def _remove(self, key: str) -> None:
        old = self._kvs.pop(key, None)
        if old is None:
            return
        if old.lease_id in self._leases:
            self._leases[old.lease_id].keys.discard(key)
        self.revision += 1
        self._record(DELETE, KeyValue(key, b"", self.revision))

    def _write(self, key: str, value: bytes, ttl: int | None) -> Written:
        lease_id = 0
        if ttl is not None:
            lease_id = next(self._lease_ids)
            self._leases[lease_id] = _LeaseRecord(ttl, self.clock() + ttl)
            self._leases[lease_id].keys.add(key)
        old = self._kvs.get(key)
        if old is not None and old.lease_id in self._leases:
            self._leases[old.lease_id].keys.discard(key)
        self.revision += 1
        created = old.create_revision if old is not None else self.revision
        kv = KeyValue(key, bytes(value), self.revision, lease_id, create_revision=created)
        self._kvs[key] = kv
        self._record(PUT, kv)
        return Written(lease_id, ttl, self.revision)

    def _with_ttl(self, kv: KeyValue) -> KeyValue:
        record = self._leases.get(kv.lease_id)
        return replace(kv, ttl=None if record is None else record.expires - self.clock())

    # -- the LeaseStore protocol ---------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        await self._enter()
        kv = self._kvs.get(key)
        return None if kv is None else self._with_ttl(kv)

    async def list_prefix(self, prefix: str, with_ttl: bool = True) -> Listing:
        await self._enter()
        kvs = tuple(self._with_ttl(kv) for k, kv in sorted(self._kvs.items())
                    if k.startswith(prefix))
        return Listing(kvs, self.revision)

    async def create(self, key: str, value: bytes, ttl: int) -> Written | None:
        await self._enter()
        if key in self._kvs:
            self.create_conflicts += 1
            return None
        return self._write(key, value, ttl)

    async def put(self, key: str, value: bytes, ttl: int | None,
                  expect_mod_revision: int | None = None) -> Written | None:
        await self._enter()
        current = self._kvs.get(key)
        if expect_mod_revision is not None and (
                current is None or current.mod_revision != expect_mod_revision):
            return None
        return self._write(key, value, ttl)

    async def delete(self, key: str) -> bool:
        await self._enter()
        present = key in self._kvs
        self._remove(key)
        return present

    async def refresh(self, lease_id: int) -> int | None:
        await self._enter()
        record = self._leases.get(lease_id)
        if record is None:
            return None
        record.expires = self.clock() + record.ttl
        return record.ttl

    async def revoke_lease(self, lease_id: int) -> None:
        await self._enter()
        self.revoke(lease_id)

    def lease_ids(self) -> set[int]:
        """The leases that exist now (test control: leaked leases show here)."""
        return set(self._leases)

    async def watch_prefix(self, prefix: str, start_revision: int,
                           with_ttl: bool = True) -> AsyncGenerator[list[StoreEvent], None]:
        await self._enter()
        if start_revision < self.compact_revision:
            raise StoreCompacted(f"memory store: revision {start_revision} compacted "
                                 f"(at {self.compact_revision})", self.compact_revision)
        watcher = _Watcher(prefix, start_revision)
        self._watchers.add(watcher)
        try:
            while True:
                if watcher.error is not None:
                    raise watcher.error
                if not self._hold:
                    batch = [e for e in self._history if e.revision >= watcher.next_revision
                             and e.kv.key.startswith(prefix)]
                    watcher.next_revision = max(watcher.next_revision, self.revision + 1)
                    if batch:
                        yield [replace(e, kv=self._with_ttl(e.kv)) for e in batch]
                        continue
                watcher.wake.clear()
                await watcher.wake.wait()
        finally:
            self._watchers.discard(watcher)

    async def close(self) -> None:
        self._fail_watchers(StoreDisconnected("memory store: closed"))
