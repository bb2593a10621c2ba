"""Reference twin, the peer/route table. Mirrors _fastpath/routes.pxi.

A table is immutable once published (but for a peer's learned MAC):
set_peers() builds a new one from the old and swaps the reference. Per-peer
counters are lists a new table adopts from the old one (shared, as the
compiled twin shares its counter blocks), so counts made through the old
table are kept.

Sources: one public IP may own several subnets (several leases, several
daemons on one host), so `by_ip` maps an address to ALL its peers, ordered
(port, longest prefix, net, index); the receive path picks the one whose
subnet holds the inner source.
"""

from __future__ import annotations

__all__ = ["Table", "mask", "unpack_specs"]

import struct

from udpoverlay.dataplane.wire import PEER_SPEC_FORMAT

# peer entry fields: [ip, port, net, length, mac or None, [tx_p, tx_b, rx_p, rx_b],
# MAC configured (never learned over)]
IP, PORT, NET, LEN, MAC, STATS, FIXED = range(7)
_SPEC = struct.Struct(PEER_SPEC_FORMAT)


def mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def unpack_specs(buf: bytes) -> list[tuple]:
    """Packed records (wire.PEER_SPEC_FORMAT) -> [(ip, port, net, length, mac or None)];
    ValueError if the buffer is not whole records."""
    if len(buf) % _SPEC.size:
        raise ValueError("peer table: not a whole number of records")
    return [(ip, port, net, length, mac if has else None)
            for ip, net, port, length, has, mac in _SPEC.iter_unpack(buf)]


class Table:
    __slots__ = ("peers", "routes", "by_ip")

    def __init__(self, specs=(), old: "Table | None" = None) -> None:
        """From [(ip, port, net, length, mac or None)] (validated by the
        facade). Peers also in `old` adopt its counters, and its MAC if the
        spec names none (as a learned one)."""
        prev: dict[tuple, list] = {}
        for p in old.peers if old is not None else ():
            prev.setdefault((p[IP], p[PORT], p[NET], p[LEN]), p)
        peers: list[list] = []
        for ip, port, net, length, mac in specs:
            if mac is not None and len(mac) != 6:
                raise ValueError("vtep mac must be 6 bytes")
            if not 0 <= length <= 32:
                raise ValueError(f"bad prefix length {length}")
            q = prev.pop((ip, port, net, length), None)
            stats = q[STATS] if q else [0, 0, 0, 0, 0]   # tx/rx packets/bytes, rx_keepalive
            fixed = mac is not None
            # A MAC learned by ARP survives a table swap that does not name one.
            mac = bytes(mac) if fixed else (q[MAC] if q else None)
            peers.append([ip, port, net, length, mac, stats, fixed])
        by_len: dict[int, dict[int, int]] = {}
        by_ip: dict[int, list[int]] = {}
        for idx, p in enumerate(peers):     # the first peer wins on a duplicate
            by_len.setdefault(p[LEN], {}).setdefault(p[NET], idx)
            by_ip.setdefault(p[IP], []).append(idx)
        self.peers = peers
        self.routes = sorted(by_len.items(), reverse=True)   # longest prefix first
        self.by_ip = {ip: tuple(sorted(ids, key=lambda i: (peers[i][PORT], -peers[i][LEN],
                                                            peers[i][NET], i)))
                      for ip, ids in by_ip.items()}

    def lookup(self, addr: int) -> int:
        """Longest-prefix match: peer index or -1."""
        for length, nets in self.routes:
            idx = nets.get(addr & mask(length), -1)
            if idx >= 0:
                return idx
        return -1
