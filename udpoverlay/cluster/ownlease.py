"""Our own subnet lease as the membership knows it: one small state object.

Why a separate object (design notes):
- ClusterMembership owns it; its two collaborators write to it: the
  Acquirer (acquire.py) when it writes our key (take()), the Guard
  (guard.py) when it restores or adopts it. The membership's renew loop
  reads it and extends the expiry. No one else keeps a copy, so there is
  one answer to "which etcd lease do we renew, which key is ours".
- generation counts the times our key was (re-)written by us: a loop that
  saw the lease lost at generation G does nothing if someone already
  replaced it meanwhile (G changed).
- changed wakes the renew loop when the etcd lease or its TTL changed
  outside it, so it recomputes its deadline instead of sleeping on.
- own_revision: the store revision of our last write; events and listings
  older than it say nothing about our key. own_create_revision: the key's
  creation revision, to tell "rewritten in place" from "deleted and
  created again by someone else" (guard.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field, replace

from udpoverlay.cluster.codec import Lease, decode_lease_value, subnet_key
from udpoverlay.cluster.store.base import Written

__all__ = ["OwnLease"]


@dataclass
class OwnLease:
    """Our lease, the etcd lease carrying it and our key's revisions."""

    lease: Lease | None = None          # decoded, with expires (clock time)
    lease_id: int = 0                   # the etcd lease our key is attached to
    granted_ttl: float | None = None    # the TTL etcd granted that lease
    own_revision: int = 0               # revision of our last write of the key
    own_key: str | None = None
    own_create_revision: int = 0
    value: str | None = None            # the lease value we wrote (JSON text)
    generation: int = 0                 # +1 at every take()
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def take(self, prefix: str, subnet: ipaddress.IPv4Network, value: str, written: Written,
             create_revision: int, now: float) -> set[int]:
        """Record our key after we wrote it; the etcd lease ids it made unused."""
        self.granted_ttl = written.ttl
        expires = None if written.ttl is None else now + written.ttl
        self.lease = replace(decode_lease_value(subnet, value), expires=expires)
        retired = {self.lease_id} if self.lease_id != written.lease_id else set()
        self.lease_id = written.lease_id
        self.own_revision = written.revision
        self.own_key = subnet_key(prefix, subnet)
        self.own_create_revision = create_revision
        self.value = value
        self.generation += 1
        self.changed.set()
        return retired

    def extend(self, ttl: float, now: float) -> None:
        """Our etcd lease is alive for ttl more seconds from now."""
        assert self.lease is not None
        self.lease = replace(self.lease, expires=now + ttl)
