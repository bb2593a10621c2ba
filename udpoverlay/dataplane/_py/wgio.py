"""Reference twin, the WireGuard plane's batched I/O (WgIo): TUN reads split
into wire segments, sealed and sent as UDP GSO messages; socket reads (GRO
buffers split) opened, checked and coalesced back into TUN writes.

Mirrors _fastpath/wgio.pxi; tests/differential/test_wgio.py holds both to
the same groups, verdicts, counters and bytes. A change to one lands in the
other in the same commit.

The protocol decisions stay with the caller (wgplane/, on the wireguard
engine): which peer and keypair, which counters, the replay window. WgIo
does what is per packet and byte-heavy, in batches:

    TX  groups = io.read_tun(tun_fd)   [(dst, first, count, nbytes)]: runs of
                                        segments for one inner destination
        io.packet(i)                    segment i, plain (for a peer's queue)
        io.seal_send(first, count, key, receiver, counter, mtu, sock_fd, addr)
                                        -> datagram bytes sent
    RX  groups = io.recv(sock_fd)      [(kind, first, count, addr, receiver)]:
                                        kind 4 = a run of transport datagrams
                                        of one source and receiver index,
                                        kind 0 = one other datagram
        io.datagram(i)                  its bytes (handshakes, malformed)
        io.open(first, count, key)      [counter, or OPEN_BAD_TAG / OPEN_MALFORMED]
        io.drop(i)                      (a replay) never written
        io.accept(first, count, allowed, local_net, local_mask) -> ACCEPT_FIELDS
        io.write_tun(tun_fd)            what accept() took, in order

Rules both twins keep:
- TUN reads stop at EAGAIN, after BATCH reads, or when fewer than
  MAX_SPLIT free segments are left; `more` says whether to call again.
  With a vnet header a super-packet is split as udp mode splits it
  (offload.split); a packet with a bad vnet header is dropped
  (tx_bad_gso). A segment shorter than an IPv4 header, not IPv4, or longer
  than the MTU plus headroom allows is dropped and counted.
- Sending: consecutive datagrams of one seal_send share a UDP_SEGMENT
  message under offload.Packer's rule (same size as the first, a shorter
  one closes it, < MAX_GSO_SEGS, <= MAX_UDP_PAYLOAD); without UDP GSO (or
  once the kernel refused it: EIO/EINVAL, never again) one send each. A
  full socket buffer is waited for as udp mode does (retry_send);
  what still fails is counted (tx_send_error, per datagram).
- Receiving: up to BATCH messages (until EAGAIN); a UDP_GRO buffer is split
  at its segment size. A datagram is "transport" when it is at least
  WG_OVERHEAD bytes and starts 04 00 00 00 (messages.message_type's rule);
  a run is cut at any other datagram, source or receiver index.
- accept(): per opened, not dropped datagram: empty -> keepalive; not a
  whole IPv4/IPv6 packet by its own length -> malformed; IPv6, or an IPv4
  source in none of `allowed` [(net, mask)] -> wrong_source; an IPv4
  destination outside local -> not_local; else taken (truncated to its IP
  length) for the TUN. Counts: see ACCEPT_FIELDS.
- write_tun(): with a vnet header taken packets go through udp mode's
  Coalescer, trusted as udp mode trusts the outer UDP checksum (the
  Poly1305 tag authenticated every byte: nothing changed in transit, which
  is what a second pass verifying TCP/UDP checksums would look for), else
  one write each; a
  failed write counts its packets (rx_write_error).
- Buffers are the twin's and work in place (the compiled twin seals and
  opens in its slots, no copy), so each use spends them: seal_send spends
  its segments (packet(i) of a sealed one, or sealing it again, raises
  ValueError); open() spends its datagrams, whatever the verdict
  (datagram(i) or another open() of one raises ValueError); accept()
  takes an opened datagram once (a second accept() counts it no more than
  a dropped one). read_tun starts the segments afresh, recv the
  datagrams (and drops what accept() took and write_tun did not write).
- Arguments are checked once per call, before anything is sealed, opened
  or sent, by wgwire.py's checks (the same exceptions and words in both
  twins): ranges and indexes (IndexError, no negative indexes), the
  destination (host, port) (OSError where socket.inet_aton refuses the
  host), the receiver, counters and MTU of a seal, the allowed nets and
  local network of accept() (ints in 0..2**32-1).
"""

from __future__ import annotations

import os
import socket
import struct

from udpoverlay.dataplane._py.offload import Coalescer, Packer, parse_vnet, split
from udpoverlay.dataplane._py.outgoing import send_packed, socket_for
from udpoverlay.dataplane.wgwire import (
    WG_BAD_TAG,
    WG_HEADER,
    WG_MALFORMED,
    WG_OK,
    WG_OVERHEAD,
    check_addr,
    check_counters,
    check_index,
    check_mtu,
    check_nets,
    check_range,
    check_receiver,
    check_tun_mtu,
    check_u32,
)
from udpoverlay.dataplane.wire import (
    BATCH,
    GSO_ECN,
    GSO_NONE,
    MAX_SPLIT,
    SLOT,
    SOL_UDP,
    UDP_GRO,
    VNET_HDR_LEN,
)

__all__ = ["WgIo", "WGIO_COUNTERS", "ACCEPT_FIELDS", "OPEN_BAD_TAG", "OPEN_MALFORMED",
           "KIND_TRANSPORT", "KIND_OTHER", "TX_SEGMENTS"]

# counters(): one tuple, this order (wgplane names them)
WGIO_COUNTERS = ("tx_too_short", "tx_not_ipv4", "tx_bad_gso", "tx_too_big", "tx_read_error",
                 "tx_send_error", "tx_super_packets", "tx_gso_messages", "rx_recv_error",
                 "rx_write_error", "rx_merged", "rx_csum_bad")
# accept()'s tuple
ACCEPT_FIELDS = ("data", "data_bytes", "keepalive", "malformed", "wrong_source", "not_local",
                 "wire_bytes", "nonempty")
OPEN_BAD_TAG = -1
OPEN_MALFORMED = -2
KIND_OTHER = 0
KIND_TRANSPORT = 4
TX_SEGMENTS = 2 * MAX_SPLIT      # segments one read_tun round holds

_TRANSPORT = b"\x04\x00\x00\x00"
_CMSG_SPACE = socket.CMSG_SPACE(4)
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class WgIo:
    """The batched I/O of one WireGuard plane (see the module notes)."""

    def __init__(self, vnet_hdr: bool, udp_gso: bool, udp_gro: bool, tun_uso: bool,
                 mtu: int) -> None:
        self.vnet_hdr, self.udp_gso, self.udp_gro = bool(vnet_hdr), bool(udp_gso), bool(udp_gro)
        self.tun_uso = bool(tun_uso)
        self.mtu = check_tun_mtu(mtu)
        self.more = False
        self._tx: list[bytearray] = []      # plain segments (a WG_HEADER hole in front)
        self._sealed = bytearray()          # per segment: spent by seal_send
        self._rx: list[bytes] = []          # received datagrams
        self._opened = bytearray()          # per datagram: spent by open()
        self._rx_out: list[bytearray | None] = []   # opened plaintexts, None = not opened/dropped/taken
        self._taken: list[bytes] = []       # accepted packets for the TUN, in order
        self._c = [0] * len(WGIO_COUNTERS)
        self._socks: dict[int, socket.socket] = {}

    def set_mtu(self, mtu: int) -> None:
        """The TUN's MTU: the longest plain segment taken (0: 1500)."""
        self.mtu = check_tun_mtu(mtu)

    def counters(self) -> tuple:
        return tuple(self._c)

    def _sock(self, fd: int) -> socket.socket:
        return socket_for(self._socks, fd)

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks = {}
        self._tx, self._rx, self._rx_out, self._taken = [], [], [], []
        self._sealed, self._opened = bytearray(), bytearray()

    # -- TX ------------------------------------------------------------------------
    def read_tun(self, tun_fd: int) -> list[tuple[int, int, int, int]]:
        c = self._c
        self._tx = []
        self.more = False
        reads = 0
        while True:
            if reads >= BATCH or TX_SEGMENTS - len(self._tx) < MAX_SPLIT:
                self.more = True
                break
            try:
                buf = os.read(tun_fd, SLOT + VNET_HDR_LEN)
            except BlockingIOError:
                break
            except OSError:
                c[4] += 1
                break
            reads += 1
            if self.vnet_hdr:
                if len(buf) < VNET_HDR_LEN:
                    c[0] += 1
                    continue
                pkt = bytearray(buf[VNET_HDR_LEN:])
                if len(pkt) < 20:
                    c[0] += 1
                    continue
                if pkt[0] >> 4 != 4:
                    c[1] += 1
                    continue
                vnet = parse_vnet(buf)
                segs = split(pkt, vnet)
                if segs is None:
                    c[2] += 1
                    continue
                if vnet[1] & ~GSO_ECN != GSO_NONE:
                    c[6] += 1
            else:
                segs = [buf]
            for seg in segs:
                if len(seg) < 20:
                    c[0] += 1
                elif seg[0] >> 4 != 4:
                    c[1] += 1
                elif len(seg) > self.mtu:
                    c[3] += 1
                else:
                    self._tx.append(bytearray(WG_HEADER) + seg)
        self._sealed = bytearray(len(self._tx))
        return self._groups()

    def _groups(self) -> list[tuple[int, int, int, int]]:
        groups: list[list[int]] = []
        for i, s in enumerate(self._tx):
            dst = int.from_bytes(s[WG_HEADER + 16:WG_HEADER + 20], "big")
            size = len(s) - WG_HEADER
            if groups and groups[-1][0] == dst:
                groups[-1][2] += 1
                groups[-1][3] += size
            else:
                groups.append([dst, i, 1, size])
        return [tuple(g) for g in groups]   # type: ignore[misc]

    def packet(self, i: int) -> bytes:
        check_index(i, len(self._tx), "segment")
        if self._sealed[i]:
            raise ValueError(f"segment {i} was sealed")
        return bytes(self._tx[i][WG_HEADER:])

    def seal_send(self, first: int, count: int, key, receiver: int, counter: int, mtu: int,
                  sock_fd: int, addr: tuple) -> int:
        check_range(first, count, len(self._tx), "segments")
        for i in range(first, first + count):
            if self._sealed[i]:
                raise ValueError(f"segment {i} was already sealed")
        ip, port = check_addr(addr)
        check_receiver(receiver)
        check_mtu(mtu)
        check_counters(counter, count)
        sock = self._sock(sock_fd)
        datagrams = []
        for j in range(count):
            seg = self._tx[first + j]
            size = len(seg) - WG_HEADER
            buf = seg + bytes(WG_OVERHEAD)      # room for padding and the tag
            lengths = memoryview(bytearray(_U32.pack(size))).cast("I")
            key.seal_slots(buf, lengths, 1, len(buf), receiver, counter + j, mtu)
            self._sealed[first + j] = 1         # spent (the compiled twin seals in place)
            datagrams.append(bytes(buf[:lengths[0]]))
        self._send(sock, (socket.inet_ntoa(ip.to_bytes(4, "big")), port),
                   datagrams)
        return sum(len(d) for d in datagrams)

    def _send(self, sock, addr: tuple, datagrams: list[bytes]) -> None:
        """Packed as udp mode packs (Packer), sent by its send rule."""
        packer = Packer(self.udp_gso)
        for d in datagrams:
            packer.add(0, addr, d)
        sent, lost, refused = send_packed(sock, [(addr, gso, payload, nseg)
                                                 for _s, _a, gso, payload, nseg in packer.take()])
        self._c[7] += sent
        self._c[5] += lost
        if refused:
            self.udp_gso = False        # plain sends from now on

    # -- RX ------------------------------------------------------------------------
    def recv(self, sock_fd: int) -> list[tuple]:
        sock = self._sock(sock_fd)
        self._rx, self._rx_out, self._taken = [], [], []
        sources: list[tuple] = []
        self.more = False
        msgs = 0
        while True:
            if msgs >= BATCH:
                self.more = True
                break
            try:
                data, anc, _flags, addr = sock.recvmsg(SLOT, _CMSG_SPACE if self.udp_gro else 0)
            except BlockingIOError:
                break
            except OSError:             # e.g. an ICMP error queued on the socket
                self._c[8] += 1
                break
            msgs += 1
            gro = 0
            for level, kind, cdata in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(cdata) >= 4:
                    gro = struct.unpack("=i", cdata[:4])[0]
            step = gro if 0 < gro < len(data) else len(data) or 1
            for k in range(0, max(len(data), 1), step):
                self._rx.append(data[k:k + step])
                sources.append((addr[0], addr[1]))
        self._rx_out = [None] * len(self._rx)
        self._opened = bytearray(len(self._rx))
        return self._rx_groups(sources)

    def _rx_groups(self, sources: list[tuple]) -> list[tuple]:
        groups: list[list] = []
        for i, d in enumerate(self._rx):
            if len(d) >= WG_OVERHEAD and d[:4] == _TRANSPORT:
                receiver = _U32.unpack_from(d, 4)[0]
                g = groups[-1] if groups else None
                if (g is not None and g[0] == KIND_TRANSPORT and g[3] == sources[i]
                        and g[4] == receiver):
                    g[2] += 1
                    continue
                groups.append([KIND_TRANSPORT, i, 1, sources[i], receiver])
            else:
                groups.append([KIND_OTHER, i, 1, sources[i], 0])
        return [tuple(g) for g in groups]

    def datagram(self, i: int) -> bytes:
        check_index(i, len(self._rx), "datagram")
        if self._opened[i]:
            raise ValueError(f"datagram {i} was opened")
        return bytes(self._rx[i])

    def open(self, first: int, count: int, key) -> list[int]:
        check_range(first, count, len(self._rx), "datagrams")
        for i in range(first, first + count):
            if self._opened[i]:
                raise ValueError(f"datagram {i} was already opened")
        out = []
        for j in range(count):
            d = self._rx[first + j]
            buf = bytearray(d) + bytes(WG_OVERHEAD - min(len(d), WG_OVERHEAD))  # a slot's least
            lengths = memoryview(bytearray(_U32.pack(len(d)))).cast("I")
            verdicts = bytearray(1)
            key.open_slots(buf, lengths, verdicts, 1, len(buf))
            self._opened[first + j] = 1
            if verdicts[0] == WG_OK:
                self._rx_out[first + j] = buf[WG_HEADER:WG_HEADER + lengths[0]]
                out.append(_U64.unpack_from(d, 8)[0])
            else:
                out.append(OPEN_BAD_TAG if verdicts[0] == WG_BAD_TAG else OPEN_MALFORMED)
                assert verdicts[0] in (WG_BAD_TAG, WG_MALFORMED)
        return out

    def drop(self, i: int) -> None:
        check_index(i, len(self._rx), "datagram")
        self._rx_out[i] = None

    def accept(self, first: int, count: int, allowed, local_net: int,
               local_mask: int) -> tuple:
        check_range(first, count, len(self._rx), "datagrams")
        nets = check_nets(allowed)
        check_u32(local_net, "local_net")
        check_u32(local_mask, "local_mask")
        data = data_bytes = keepalive = malformed = wrong = not_local = wire = nonempty = 0
        for j in range(count):
            p = self._rx_out[first + j]
            if p is None:
                continue
            self._rx_out[first + j] = None          # taken once
            wire += len(self._rx[first + j])
            if not p:
                keepalive += 1
                continue
            nonempty += 1
            size = _inner_length(p)
            if size < 0:
                malformed += 1
                continue
            if p[0] >> 4 != 4:
                wrong += 1
                continue
            src = int.from_bytes(p[12:16], "big")
            if not any(src & m == n for n, m in nets):
                wrong += 1
                continue
            if int.from_bytes(p[16:20], "big") & local_mask != local_net:
                not_local += 1
                continue
            data += 1
            data_bytes += size
            self._taken.append(bytes(p[:size]))
        return (data, data_bytes, keepalive, malformed, wrong, not_local, wire, nonempty)

    def write_tun(self, tun_fd: int) -> int:
        """Write what accept() took; the number of TUN writes made."""
        taken, self._taken = self._taken, []
        if not taken:
            return 0
        if not self.vnet_hdr:
            writes = [(p, 1) for p in taken]
        else:
            co = Coalescer(self.tun_uso, trusted=True)
            co.mtu = self.mtu
            for p in taken:
                co.add(p)
            writes = co.take()
            self._c[10] += co.merged
            self._c[11] += co.csum_bad
        for w, nseg in writes:
            try:
                os.write(tun_fd, w)
            except OSError:
                self._c[9] += nseg
        return len(writes)


def _inner_length(p) -> int:
    """wireguard.transport.inner_length's rule, on a buffer."""
    version = p[0] >> 4
    if version == 4 and len(p) >= 20:
        size = (p[2] << 8) | p[3]
        return size if 20 <= size <= len(p) else -1
    if version == 6 and len(p) >= 40:
        size = 40 + ((p[4] << 8) | p[5])
        return size if size <= len(p) else -1
    return -1
