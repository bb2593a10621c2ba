"""The set of valid lease keys, fed by watch events and listings, answering
with the subnets that changed.

Why separate: this is flannel's LeaseWatcher (Reset/Update) without any
I/O, so the hard part of staying in sync — turning a fresh snapshot after a
reconnect or a compacted watch back into a diff, so no route is lost or left
stale — is tested without a store or a clock. Why by key and not by subnet:
two keys can name one subnet (`10.244.1.0-24` and `10.244.1.0-024`, or a
dual-stack suffix); both are kept and the key created first (lowest create
revision, then the key itself as tie-break) wins, whatever order the events
came in, so every node picks the same one.

Every operation costs O(changed keys): the caller gets the set of subnets
whose winner may have changed ("dirty") and re-evaluates only those.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from udpoverlay.cluster.validate import Entry

__all__ = ["LeaseTable"]

Net = ipaddress.IPv4Network


class LeaseTable:
    """Valid lease keys, grouped by subnet. Only the owning task mutates it."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.claims: dict[Net, set[str]] = {}
        self.revision = 0

    def put(self, entry: Entry) -> Net | None:
        """Add or replace one key; its subnet if that may change a route.
        A renewal (same value, same creation) only refreshes `expires`."""
        old = self.entries.get(entry.key)
        self.entries[entry.key] = entry
        if old is not None and old.lease.raw == entry.lease.raw \
                and old.create_revision == entry.create_revision and old.subnet == entry.subnet:
            return None
        if old is not None and old.subnet != entry.subnet:  # cannot happen: subnet is the key's
            self._unclaim(old)
        self.claims.setdefault(entry.subnet, set()).add(entry.key)
        return entry.subnet

    def remove(self, key: str) -> Net | None:
        """Drop one key; its subnet if it was known."""
        old = self.entries.pop(key, None)
        if old is None:
            return None
        self._unclaim(old)
        return old.subnet

    def _unclaim(self, entry: Entry) -> None:
        keys = self.claims.get(entry.subnet)
        if keys is not None:
            keys.discard(entry.key)
            if not keys:
                del self.claims[entry.subnet]

    def reset(self, snapshot: Iterable[Entry]) -> set[Net]:
        """Replace everything with `snapshot`; the subnets that may have changed."""
        fresh = {e.key: e for e in snapshot}
        dirty = {s for k in list(self.entries) if k not in fresh
                 if (s := self.remove(k)) is not None}
        dirty.update(s for e in fresh.values() if (s := self.put(e)) is not None)
        return dirty

    def winner(self, subnet: Net) -> Entry | None:
        """The oldest key for `subnet` (None: no valid key)."""
        keys = self.claims.get(subnet)
        if not keys:
            return None
        return min((self.entries[k] for k in keys), key=lambda e: (e.create_revision, e.key))

    def losers(self, subnet: Net) -> list[Entry]:
        win = self.winner(subnet)
        return [self.entries[k] for k in sorted(self.claims.get(subnet, ())) if win is None
                or k != win.key]

    def subnets(self) -> set[Net]:
        return set(self.claims)
