"""The set of known leases, fed by watch results, answering with a diff.

Why separate: this is flannel's LeaseWatcher (Reset/Update) without any
I/O, so the hard part of staying in sync — turning a fresh snapshot after a
reconnect or a compacted watch back into "added"/"removed" events, so no
route is lost or left stale — is tested without a store or a clock.
"""

from __future__ import annotations

import ipaddress

from udpoverlay.cluster.codec import ADDED, REMOVED, Lease, LeaseEvent, WatchResult

__all__ = ["LeaseTable"]


class LeaseTable:
    """Leases by subnet. Only the owning task mutates it."""

    def __init__(self) -> None:
        self.leases: dict[ipaddress.IPv4Network, Lease] = {}
        self.revision = 0

    def apply(self, result: WatchResult) -> list[LeaseEvent]:
        """Absorb one watch result; return what changed, in a stable order."""
        if result.snapshot is not None:
            events = self.reset(result.snapshot)
        else:
            events = self.update(result.events)
        self.revision = max(self.revision, result.revision)
        return events

    def reset(self, snapshot: tuple[Lease, ...] | list[Lease]) -> list[LeaseEvent]:
        """Replace everything with `snapshot`; the diff against what we had."""
        fresh = {lease.subnet: lease for lease in snapshot}
        events = [LeaseEvent(REMOVED, subnet, old) for subnet, old in self.leases.items()
                  if subnet not in fresh]
        events += [LeaseEvent(ADDED, subnet, lease) for subnet, lease in fresh.items()
                   if subnet not in self.leases or self.leases[subnet].raw != lease.raw]
        self.leases = fresh
        return events

    def update(self, events: tuple[LeaseEvent, ...] | list[LeaseEvent]) -> list[LeaseEvent]:
        """Apply incremental events; removals of unknown subnets are dropped."""
        out = []
        for event in events:
            if event.kind == ADDED and event.lease is not None:
                self.leases[event.subnet] = event.lease
                out.append(event)
            elif event.kind == REMOVED and event.subnet in self.leases:
                out.append(LeaseEvent(REMOVED, event.subnet, self.leases.pop(event.subnet)))
        return out

    def discard(self, subnet: ipaddress.IPv4Network) -> None:
        self.leases.pop(subnet, None)
