"""Reference twin, offloads: splitting TUN super-packets (TSO/USO) into wire
segments, packing segments into UDP GSO messages, and coalescing received
segments into GSO writes to the TUN (GRO).

Mirrors _fastpath/offload.pxi (the compiled twin);
tests/differential/test_offload.py proves both byte-identical. A change to
one lands in the other in the same commit.

Design notes (the rules both implementations follow exactly):

- A TUN opened with IFF_VNET_HDR prefixes every packet with a 10-byte
  virtio_net_hdr in host byte order (flags, gso_type, hdr_len, gso_size,
  csum_start, csum_offset). With TUNSETOFFLOAD the kernel hands us TCP (and
  UDP, with USO) super-packets of up to 64 KB and leaves checksums to us
  (flags & NEEDS_CSUM).
- split(): a TCPV4 super-packet becomes ceil(payload / gso_size) segments:
  IP total length, IP ID (+1 per segment) and IP checksum rewritten; TCP
  sequence advanced; FIN/PSH only on the last segment, CWR only on the
  first; TCP checksum computed in full. UDP_L4 likewise with UDP length and
  checksum (0 sent as 0xFFFF). A non-GSO packet with NEEDS_CSUM gets its
  checksum completed at csum_start/csum_offset. The vnet header's hdr_len
  and csum fields of GSO packets are not trusted: headers are parsed.
- Packing (TX): consecutive segments for the same (socket, peer) share one
  UDP_SEGMENT message while it holds < 64 segments and <= 65507 bytes and
  each segment has the first one's size (a shorter one closes the message).
  The message open for a (socket, peer) is looked for among the last
  SCAN_DEPTH messages only; the newest one for that pair is the candidate.
- Coalescing (RX): segments of one TCP flow merge under GRO's conditions:
  no IP options, not fragmented, same TOS/TTL/DF, same TCP header length,
  options and ACK number, flags ACK or ACK|PSH (PSH closes the item),
  adjacent sequence numbers, payload <= the first segment's and every
  earlier one full-sized, checksum verified before merging, at most 64
  segments and 65535 bytes. UDP merges alike (same size, checksum present
  and verified) when the TUN takes UDP GSO writes. The newest item of the
  same flow among the last SCAN_DEPTH items is the only merge candidate, so
  per-flow order is kept; items are written in the order they were opened.
- Oversized (RX): an accepted inner TCP packet longer than the TUN MTU (a
  kernel vxlan sender's super-frame: DF set, no IP options, checksum
  verified) cannot be forwarded as it is. oversize_gso() gives the segment
  size MTU - 20 - TCP header; the coalescer writes it as a one-segment GSO
  item of that size (closed: nothing merges into it), without a vnet
  header it is split() into MTU-sized packets. UDP is left alone: its
  datagram boundaries are the sender's, which an MTU split would change.
"""

from __future__ import annotations

import struct

from udpoverlay.dataplane._py.checksum import checksum, fold, ip_header_csum, l4_ok, pseudo_sum, sum16
from udpoverlay.dataplane.wire import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_UDP_L4,
    MAX_COALESCE,
    MAX_GSO_SEGS,
    MAX_ITEMS,
    MAX_SPLIT,
    MAX_UDP_PAYLOAD,
    SCAN_DEPTH,
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
)

_VNET = struct.Struct("=BBHHHH")      # virtio_net_hdr, host byte order


# -- split (TX) ----------------------------------------------------------------
def parse_vnet(buf) -> tuple:
    """(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)."""
    return _VNET.unpack_from(buf, 0)


def pack_vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0,
              csum_offset=0) -> bytes:
    return _VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def complete_csum(pkt: bytearray, start: int, offset: int) -> bool:
    """Finish a NEEDS_CSUM packet in place; False if the offsets are bad."""
    at = start + offset
    if at + 2 > len(pkt):
        return False
    c = checksum(pkt[start:]) or 0xFFFF
    pkt[at], pkt[at + 1] = c >> 8, c & 0xFF
    return True


def split(pkt: bytearray, vnet: tuple):
    """Segments (bytes) of a valid IPv4 packet read with vnet header `vnet`,
    or None if the vnet header does not fit the packet (BAD_GSO; also a GSO
    packet whose IHL is below 5, which only WgIo, checking no more than the
    version, can hand over)."""
    flags, gso_type, _hl, gso_size, cstart, coff = vnet
    gt = gso_type & ~GSO_ECN
    if gt == GSO_NONE:
        if flags & F_NEEDS_CSUM and not complete_csum(pkt, cstart, coff):
            return None
        return [bytes(pkt)]
    n = len(pkt)
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20:
        return None
    if gt == GSO_TCPV4:
        if pkt[9] != 6 or n < ihl + 20:
            return None
        l4 = ((pkt[ihl + 12] >> 4) & 0x0F) * 4
        if l4 < 20 or ihl + l4 > n:
            return None
    elif gt == GSO_UDP_L4:
        if pkt[9] != 17 or n < ihl + 8:
            return None
        l4 = 8
    else:
        return None
    if gso_size == 0:
        return None
    hlen = ihl + l4
    payload = n - hlen
    nseg = max(1, -(-payload // gso_size))
    if nseg > MAX_SPLIT:
        return None
    ident = (pkt[4] << 8) | pkt[5]
    seq = int.from_bytes(pkt[ihl + 4:ihl + 8], "big")
    out = []
    for i in range(nseg):
        chunk = pkt[hlen + i * gso_size:hlen + min(payload, (i + 1) * gso_size)]
        seg = bytearray(pkt[:hlen]) + chunk
        total = hlen + len(chunk)
        seg[2], seg[3] = total >> 8, total & 0xFF
        iid = (ident + i) & 0xFFFF
        seg[4], seg[5] = iid >> 8, iid & 0xFF
        hdr = seg[:ihl]
        ip_header_csum(hdr)
        seg[:ihl] = hdr
        if gt == GSO_TCPV4:
            seg[ihl + 4:ihl + 8] = ((seq + i * gso_size) & 0xFFFFFFFF).to_bytes(4, "big")
            fl = seg[ihl + 13]
            if i != nseg - 1:
                fl &= ~(TCP_FIN | TCP_PSH) & 0xFF
            if i != 0:
                fl &= ~TCP_CWR & 0xFF
            seg[ihl + 13] = fl
            at = ihl + 16
        else:
            ulen = 8 + len(chunk)
            seg[ihl + 4], seg[ihl + 5] = ulen >> 8, ulen & 0xFF
            at = ihl + 6
        seg[at] = seg[at + 1] = 0
        c = ~fold(pseudo_sum(seg, pkt[9], total - ihl) + sum16(seg[ihl:])) & 0xFFFF
        if c == 0 and gt == GSO_UDP_L4:
            c = 0xFFFF
        seg[at], seg[at + 1] = c >> 8, c & 0xFF
        out.append(bytes(seg))
    return out


def oversize_gso(pkt, mtu: int) -> int:
    """The MTU-derived segment size for an accepted inner packet that must
    be resegmented (see the design notes), else 0."""
    n = len(pkt)
    if not mtu or n <= mtu or pkt[0] != 0x45 or pkt[9] != 6 or n < 40:
        return 0
    if ((pkt[6] << 8) | pkt[7]) & 0x7FFF != 0x4000:
        return 0                # DF clear or a fragment: the kernel fragments it
    l4 = (pkt[32] >> 4) * 4
    gso = mtu - 20 - l4
    if l4 < 20 or 20 + l4 >= n or gso <= 0 or -(-(n - 20 - l4) // gso) > MAX_SPLIT:
        return 0
    if not l4_ok(pkt, 20, 6):
        return 0
    return gso


class Packer:
    """Packs wire segments into UDP messages (UDP_SEGMENT when gso is on).

    messages: [sock, dst, seg_size, [segments]] in creation order; sock is
    an index into the engine's tx sockets (-1: the main socket), dst the
    (ip, port) the message goes to."""

    def __init__(self, gso: bool) -> None:
        self.gso = gso
        self.messages: list[list] = []

    def add(self, sock: int, dst: tuple, seg: bytes) -> None:
        n = len(seg)
        if self.gso:
            for m in reversed(self.messages[-SCAN_DEPTH:]):
                if m[0] == sock and m[1] == dst:
                    segs = m[3]
                    if (len(segs) < MAX_GSO_SEGS and n <= m[2]
                            and len(segs[-1]) == m[2]
                            and m[2] * len(segs) + n <= MAX_UDP_PAYLOAD):
                        segs.append(seg)
                        return
                    break
        self.messages.append([sock, dst, n, [seg]])

    def take(self) -> list[tuple]:
        """[(sock, dst, gso_size or 0, payload, n_segments)], and reset."""
        out = [(m[0], m[1], m[2] if len(m[3]) > 1 else 0, b"".join(m[3]), len(m[3]))
               for m in self.messages]
        self.messages = []
        return out


# -- coalesce (RX) ---------------------------------------------------------------
class _Item:
    __slots__ = ("key", "proto", "pkts", "open", "gso", "last", "total", "next_seq", "big")


def _flow_key(pkt):
    """(proto, addresses, ports) of an unfragmented TCP/UDP packet, else None."""
    ihl = (pkt[0] & 0x0F) * 4
    if pkt[9] not in (6, 17) or ((pkt[6] << 8) | pkt[7]) & 0x3FFF or len(pkt) < ihl + 4:
        return None
    return bytes(pkt[9:10]) + bytes(pkt[12:20]) + bytes(pkt[ihl:ihl + 4])


class Coalescer:
    """GRO for TUN writes: add() accepted inner packets (borrowed: the
    caller keeps them alive until take()), take() the writes in order, each
    (vnet header + packet as bytes, number of segments in it)."""

    def __init__(self, udp: bool, trusted: bool = False) -> None:
        self.udp = udp
        # udp mode: the outer UDP checksum, verified by the kernel, covered
        # the inner packet, so merged segments are not verified again
        # (vxlan: kernel peers send no outer checksum, keep verifying)
        self.trusted = trusted
        self.mtu = 0            # the TUN's; 0 = unknown
        self.items: list[_Item] = []
        self.writes: list[tuple[bytes, int]] = []
        self.merged = 0
        self.csum_bad = 0
        self.resegmented = 0

    def _mergeable(self, pkt) -> bool:
        """Could pkt start or extend a GSO item? (checksum verified here
        unless trusted)"""
        n = len(pkt)
        if pkt[0] != 0x45 or ((pkt[6] << 8) | pkt[7]) & 0x3FFF:
            return False
        proto = pkt[9]
        if proto == 6:
            if n < 40:
                return False
            l4 = (pkt[32] >> 4) * 4
            if l4 < 20 or 20 + l4 >= n or pkt[33] not in (TCP_ACK, TCP_ACK | TCP_PSH):
                return False
        elif proto == 17 and self.udp:
            if n <= 28 or ((pkt[24] << 8) | pkt[25]) != n - 20:
                return False
        else:
            return False
        if proto == 17 and pkt[26] == 0 and pkt[27] == 0:
            return False        # no checksum to verify: not merged, not counted
        if not self.trusted and not l4_ok(pkt, 20, proto):
            self.csum_bad += 1
            return False
        return True

    def _fits(self, it: _Item, pkt) -> bool:
        first = it.pkts[0]
        if not it.open or pkt[1] != first[1] or pkt[8] != first[8] or pkt[6] != first[6]:
            return False
        if it.proto == 6:
            l4 = (pkt[32] >> 4) * 4
            if pkt[32] != first[32] or pkt[28:32] != first[28:32] \
                    or pkt[40:20 + l4] != first[40:20 + l4] \
                    or int.from_bytes(pkt[24:28], "big") != it.next_seq:
                return False
            payload = len(pkt) - 20 - l4
        else:
            payload = len(pkt) - 28
        return (payload <= it.gso and it.last == it.gso and len(it.pkts) < MAX_COALESCE
                and it.total + payload <= 65535)

    def add(self, pkt) -> None:
        key = _flow_key(pkt)
        big = oversize_gso(pkt, self.mtu)
        ok = not big and key is not None and self._mergeable(pkt)
        if key is not None and not big:
            for it in reversed(self.items[-SCAN_DEPTH:]):
                if it.key == key:
                    if ok and self._fits(it, pkt):
                        self._append(it, pkt)
                        return
                    break
        if len(self.items) >= MAX_ITEMS:
            self.flush()
        it = _Item()
        it.key = key
        it.proto = pkt[9]
        it.pkts = [pkt]
        it.open = ok
        it.total = len(pkt)
        it.big = big > 0
        if big:
            it.gso = it.last = big      # one segment, closed: the kernel splits it
            self.resegmented += 1
        elif ok:
            hl = 20 + ((pkt[32] >> 4) * 4 if it.proto == 6 else 8)
            it.gso = it.last = len(pkt) - hl
            if it.proto == 6:
                it.next_seq = (int.from_bytes(pkt[24:28], "big") + it.gso) & 0xFFFFFFFF
                it.open = pkt[33] == TCP_ACK
        self.items.append(it)

    def _append(self, it: _Item, pkt) -> None:
        first = it.pkts[0]
        hl = 20 + ((first[32] >> 4) * 4 if it.proto == 6 else 8)
        payload = len(pkt) - hl
        it.pkts.append(pkt)
        it.total += payload
        it.last = payload
        self.merged += 1
        if it.proto == 6:
            it.next_seq = (it.next_seq + payload) & 0xFFFFFFFF
            if pkt[33] & TCP_PSH:
                it.open = False

    def flush(self) -> None:
        for it in self.items:
            self.writes.append((self._render(it), len(it.pkts)))
        self.items = []

    def _render(self, it: _Item) -> bytes:
        first = it.pkts[0]
        if len(it.pkts) == 1 and not it.big:
            return pack_vnet() + bytes(first)
        hdr = bytearray(first[:20])
        total = it.total
        hdr[2], hdr[3] = total >> 8, total & 0xFF
        ip_header_csum(hdr)
        if it.proto == 6:
            l4 = (first[32] >> 4) * 4
            l4h = bytearray(first[20:20 + l4])
            l4h[13] = it.pkts[-1][33]         # PSH from the last segment
            at, gt = 16, GSO_TCPV4
        else:
            l4 = 8
            l4h = bytearray(first[20:28])
            l4h[4], l4h[5] = (total - 20) >> 8, (total - 20) & 0xFF
            at, gt = 6, GSO_UDP_L4
        # NEEDS_CSUM: the field holds the folded pseudo-header sum.
        c = fold(pseudo_sum(hdr, it.proto, total - 20))
        l4h[at], l4h[at + 1] = c >> 8, c & 0xFF
        out = [pack_vnet(F_NEEDS_CSUM, gt, 20 + l4, it.gso, 20, at), bytes(hdr),
               bytes(l4h), bytes(first[20 + l4:])]
        out += [bytes(p[20 + l4:]) for p in it.pkts[1:]]
        return b"".join(out)

    def take(self) -> list[tuple[bytes, int]]:
        self.flush()
        out, self.writes = self.writes, []
        return out
