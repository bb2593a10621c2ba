"""Reference twin, the peer/route table. Mirrors _fastpath/routes.pxi.

A table is immutable once published (but for a peer's MAC learned by ARP):
set_peers() builds a new one from the old and swaps the reference. Per-peer
counters are lists a new table adopts from the old one (shared, as the
compiled twin shares its counter blocks), so counts made through the old
table are kept.
"""

from __future__ import annotations

__all__ = ["Table", "mask"]

# peer entry fields: [ip, port, net, length, mac or None, [tx_p, tx_b, rx_p, rx_b]]
IP, PORT, NET, LEN, MAC, STATS = range(6)


def mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


class Table:
    __slots__ = ("peers", "routes", "by_ip")

    def __init__(self, specs=(), old: "Table | None" = None) -> None:
        """From [(ip, port, net, length, mac or None)] (validated by the
        facade). Peers also in `old` adopt its counters, and its learned
        MAC if the spec names none."""
        prev: dict[tuple, list] = {}
        for p in old.peers if old is not None else ():
            prev.setdefault((p[IP], p[PORT], p[NET], p[LEN]), p)
        peers: list[list] = []
        for ip, port, net, length, mac in specs:
            if mac is not None and len(mac) != 6:
                raise ValueError("vtep mac must be 6 bytes")
            q = prev.pop((ip, port, net, length), None)
            stats = q[STATS] if q else [0, 0, 0, 0]
            # A MAC learned by ARP survives a table swap that does not name one.
            mac = bytes(mac) if mac else (q[MAC] if q else None)
            peers.append([ip, port, net, length, mac, stats])
        by_len: dict[int, dict[int, int]] = {}
        by_ip: dict[int, int] = {}
        for idx, p in enumerate(peers):     # the first peer wins on a duplicate
            by_len.setdefault(p[LEN], {}).setdefault(p[NET], idx)
            by_ip.setdefault(p[IP], idx)
        self.peers = peers
        self.routes = sorted(by_len.items(), reverse=True)   # longest prefix first
        self.by_ip = by_ip

    def lookup(self, addr: int) -> int:
        """Longest-prefix match: peer index or -1."""
        for length, nets in self.routes:
            idx = nets.get(addr & mask(length), -1)
            if idx >= 0:
                return idx
        return -1
