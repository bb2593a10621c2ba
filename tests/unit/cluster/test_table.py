"""LeaseTable: watch results in, a diff out (snapshot after a reconnect or a
compaction turned back into added/removed events)."""

from __future__ import annotations

import ipaddress

from udpoverlay.cluster.codec import ADDED, REMOVED, Lease, LeaseEvent, WatchResult, encode_lease_value
from udpoverlay.cluster.table import LeaseTable

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


def lease(subnet: str, ip: str, raw_extra: str = "") -> Lease:
    return Lease(N(subnet), A(ip), raw=encode_lease_value(ip) + raw_extra)


def kinds(events):
    return sorted((e.kind, str(e.subnet)) for e in events)


def test_table_events_then_snapshot_diff():
    t = LeaseTable()
    a, b, c = lease("198.19.1.0/24", "198.18.0.1"), lease("198.19.2.0/24", "198.18.0.2"), \
        lease("198.19.3.0/24", "198.18.0.3")
    assert kinds(t.apply(WatchResult(5, snapshot=(a, b)))) == [(ADDED, "198.19.1.0/24"),
                                                              (ADDED, "198.19.2.0/24")]
    assert t.revision == 5
    # Renewal with an identical value: no event from a snapshot, table keeps the new copy.
    renewed = Lease(b.subnet, b.public_ip, expires=99.0, raw=b.raw)
    assert t.apply(WatchResult(6, snapshot=(a, renewed))) == []
    assert t.leases[b.subnet].expires == 99.0
    # Missed while disconnected: b removed, c added, a changed owner.
    a2 = lease("198.19.1.0/24", "198.18.0.9")
    assert kinds(t.apply(WatchResult(9, snapshot=(a2, c)))) == [
        (ADDED, "198.19.1.0/24"), (ADDED, "198.19.3.0/24"), (REMOVED, "198.19.2.0/24")]
    assert set(t.leases) == {a2.subnet, c.subnet}


def test_table_incremental_events():
    t = LeaseTable()
    a = lease("198.19.1.0/24", "198.18.0.1")
    out = t.apply(WatchResult(3, events=(LeaseEvent(ADDED, a.subnet, a),
                                         LeaseEvent(REMOVED, N("198.19.7.0/24")))))
    assert kinds(out) == [(ADDED, "198.19.1.0/24")]  # unknown removal dropped
    out = t.apply(WatchResult(4, events=(LeaseEvent(REMOVED, a.subnet),)))
    assert out[0].lease == a and t.leases == {}
    assert WatchResult(1, snapshot=()).is_snapshot and not WatchResult(1).is_snapshot
