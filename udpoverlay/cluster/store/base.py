"""The plain storage protocol under the lease meaning layer.

Why so small: flannel splits its subnet manager into a meaning layer
(acquire, renew, watch, diff) over a dumb registry; we do the same so that
an in-memory fake (tests/support/memstore.py) exercises the real meaning layer in
unit tests, and the etcd adapter (store/etcd.py) holds nothing but I/O and
error mapping. Keys and values are etcd's: str keys, bytes values, integer
revisions, leases with a TTL in whole seconds.

Failures are LeaseStoreError (retryable or not). Two subclasses tell the
watcher what to do next: StoreCompacted (the start revision is gone:
re-list) and StoreDisconnected (the server went away: back off, re-list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncGenerator, Protocol

__all__ = ["KeyValue", "Listing", "Written", "StoreEvent", "LeaseStore", "PUT", "DELETE"]

PUT = "put"
DELETE = "delete"


@dataclass(frozen=True)
class KeyValue:
    """One stored key. ttl: the attached lease's remaining seconds at read
    time (None: no lease, not asked for, or unknown). create_revision: the
    revision that created the key (0 for a deletion): a rewrite keeps it, a
    delete and re-create changes it."""

    key: str
    value: bytes
    mod_revision: int
    lease_id: int = 0
    ttl: float | None = None
    create_revision: int = 0


@dataclass(frozen=True)
class Listing:
    kvs: tuple[KeyValue, ...]
    revision: int  # the store revision the listing is consistent with


@dataclass(frozen=True)
class Written:
    """A successful write: the lease it is attached to and the write's revision."""

    lease_id: int
    ttl: int | None
    revision: int


@dataclass(frozen=True)
class StoreEvent:
    """PUT (value set) or DELETE (removed or expired) of `kv.key` at `revision`."""

    kind: str
    kv: KeyValue
    revision: int


class LeaseStore(Protocol):
    async def get(self, key: str) -> KeyValue | None:
        """The key, or None if absent."""

    async def list_prefix(self, prefix: str, with_ttl: bool = True) -> Listing:
        """Every key under prefix plus the revision the list is as of.
        with_ttl=False leaves ttl None (etcd needs one RPC per lease for it)."""

    async def create(self, key: str, value: bytes, ttl: int) -> Written | None:
        """Put with a fresh TTL lease only if the key does not exist
        (transaction guarded by version(key) == 0); None if it exists."""

    async def put(self, key: str, value: bytes, ttl: int | None,
                  expect_mod_revision: int | None = None) -> Written | None:
        """Put with a fresh TTL lease (ttl None: no lease). With
        expect_mod_revision, only if the key is unchanged since (else None)."""

    async def delete(self, key: str) -> bool:
        """Remove the key; False if it was absent."""

    async def refresh(self, lease_id: int) -> int | None:
        """Keep a lease alive; its new TTL, or None if it no longer exists."""

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease (its keys go with it); no error if it is gone."""

    def watch_prefix(self, prefix: str, start_revision: int,
                     with_ttl: bool = True) -> AsyncGenerator[list[StoreEvent], None]:
        """Batches of events from start_revision on. Raises StoreCompacted or
        StoreDisconnected (never ends quietly while the store is up)."""

    async def close(self) -> None:
        """Release connections; further calls may fail."""
