"""Reference twin, checksums: the RFC 1071 Internet checksum and the sums
TCP/UDP checksums are made of. Mirrors _fastpath/checksum.pxi (which sums a
word at a time; the results are the same numbers)."""

from __future__ import annotations

import array
import sys

_LE = sys.byteorder == "little"


def sum16(data) -> int:
    """Unfolded one's complement sum of data as big-endian 16-bit words
    (odd length padded with a zero byte)."""
    b = bytes(data)
    if len(b) & 1:
        b += b"\0"
    a = array.array("H", b)
    if _LE:
        a.byteswap()
    return sum(a)


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data) -> int:
    """RFC 1071 Internet checksum of data (odd length padded with zero)."""
    return ~fold(sum16(data)) & 0xFFFF


def pseudo_sum(pkt, proto: int, length: int) -> int:
    """Sum of the IPv4 pseudo-header of pkt (addresses from its header)."""
    return sum16(bytes(pkt[12:20]) + bytes((0, proto, length >> 8, length & 0xFF)))


def l4_ok(pkt, ihl: int, proto: int) -> bool:
    """The TCP/UDP checksum of pkt verifies."""
    n = len(pkt)
    return fold(pseudo_sum(pkt, proto, n - ihl) + sum16(pkt[ihl:])) == 0xFFFF


def ip_header_csum(hdr: bytearray) -> None:
    hdr[10] = hdr[11] = 0
    c = checksum(hdr)
    hdr[10], hdr[11] = c >> 8, c & 0xFF
