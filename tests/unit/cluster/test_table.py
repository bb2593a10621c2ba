"""LeaseTable: valid keys in, dirty subnets out (a snapshot after a reconnect
or a compaction turned back into a diff), and the oldest of two keys for
one subnet wins whatever the order of arrival."""

from __future__ import annotations

import ipaddress
import itertools

from udpoverlay.cluster.codec import Lease, encode_lease_value
from udpoverlay.cluster.table import LeaseTable
from udpoverlay.cluster.validate import Entry

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
P = "/p/subnets/"


def entry(subnet: str, ip: str, created: int, key: str | None = None, raw_extra: str = "",
          expires: float | None = None) -> Entry:
    net = N(subnet)
    name = key or f"{net.network_address}-{net.prefixlen}"
    return Entry(P + name, Lease(net, A(ip), raw=encode_lease_value(ip) + raw_extra,
                                 expires=expires), created)


def test_snapshot_diff_and_renewal():
    t = LeaseTable()
    a, b, c = entry("198.19.1.0/24", "198.18.0.1", 5), entry("198.19.2.0/24", "198.18.0.2", 6), \
        entry("198.19.3.0/24", "198.18.0.3", 7)
    assert t.reset([a, b]) == {a.subnet, b.subnet}
    # Renewal with an identical value: nothing dirty, the table keeps the new copy.
    renewed = entry("198.19.2.0/24", "198.18.0.2", 6, expires=99.0)
    assert t.reset([a, renewed]) == set()
    assert t.winner(b.subnet).lease.expires == 99.0
    # Missed while disconnected: b removed, c added, a changed owner.
    a2 = entry("198.19.1.0/24", "198.18.0.9", 5)
    assert t.reset([a2, c]) == {a.subnet, b.subnet, c.subnet}
    assert t.subnets() == {a.subnet, c.subnet} and t.winner(a.subnet) == a2


def test_incremental_put_remove():
    t = LeaseTable()
    a = entry("198.19.1.0/24", "198.18.0.1", 3)
    assert t.put(a) == a.subnet and t.put(a) is None
    assert t.remove(P + "198.19.7.0-24") is None          # unknown key: nothing
    assert t.remove(a.key) == a.subnet and t.winner(a.subnet) is None and t.subnets() == set()


def test_oldest_key_wins_in_any_order():
    old = entry("198.19.1.0/24", "198.18.0.1", 10)
    dup = entry("198.19.1.0/24", "198.18.0.66", 20, key="198.19.1.0-024")
    dual = entry("198.19.1.0/24", "198.18.0.77", 30, key="198.19.1.0-24&fd00::-64")
    for order in itertools.permutations([old, dup, dual]):
        t = LeaseTable()
        for e in order:
            t.put(e)
        assert t.winner(old.subnet) == old
        assert [e.key for e in t.losers(old.subnet)] == sorted([dup.key, dual.key])
    t.remove(old.key)
    assert t.winner(old.subnet) == dup        # the next oldest takes over
