"""Reference twin, incoming: wire -> TUN. Mirrors _fastpath/incoming.pxi.

Receive a batch, accept each datagram only from a known peer and only for
our subnet (source inside the peer's subnet: no spoofing), answer ARP for
our VTEP (vxlan) and write the inner packets to the TUN. With UDP_GRO on
the socket a received datagram may hold several GRO segments: each is
checked alone; accepted ones are coalesced into GSO writes (offload.py)
when the TUN has a vnet header, else each is written on its own.

Incoming is a mixin of Core (dataplane/_py/__init__.py): it uses the
core's configuration and table, and owns the _rx_* counters.
"""

from __future__ import annotations

import os
import socket
import struct

from udpoverlay.dataplane._py.checksum import checksum, fold, l4_ok, pseudo_sum
from udpoverlay.dataplane._py.frames import BROADCAST, arp_body, check_ipv4, vxlan_hdr
from udpoverlay.dataplane._py.offload import oversize_gso, split
from udpoverlay.dataplane._py.routes import FIXED, LEN, MAC, NET, PORT, STATS, mask
from udpoverlay.dataplane.wire import (
    ARP,
    ARP_LEN,
    BAD_HEADER,
    BAD_PORT,
    BAD_VNI,
    BAD_VXLAN,
    BATCH,
    GSO_TCPV4,
    IPV4_MIN,
    KEEPALIVE,
    MAX_ROUNDS,
    MODE_UDP,
    NOT_IPV4,
    NOT_LOCAL,
    OK,
    SLOT,
    SOL_UDP,
    SPOOFED_SRC,
    TOO_SHORT,
    TTL_EXPIRED,
    TX_ERROR,
    UDP_GRO,
    UNKNOWN_PEER,
    VXLAN_HDR,
    WRONG_MAC,
)

# _rx_c fields
PACKETS, BYTES, CSUM_PARTIAL, MAC_CHANGED = range(4)
_CMSG_SPACE = socket.CMSG_SPACE(4)


def _addr_int(addr: tuple) -> int:
    return int.from_bytes(socket.inet_aton(addr[0]), "big")


class Incoming:
    # -- per datagram ---------------------------------------------------------------
    def _learn(self, p: list, mac: bytes) -> None:
        """Take `mac` as peer p's VTEP MAC unless configured or multicast;
        a different known one is replaced and counted (learned MACs keep
        being re-validated: a forged or stale one cannot stick)."""
        if p[FIXED] or mac[0] & 1 or p[MAC] == mac:
            return
        if p[MAC] is not None:
            self._rx_c[MAC_CHANGED] += 1
        p[MAC] = mac

    def _arp(self, d, cands: tuple):
        """Answer ARP requests for our VTEP address; learn a peer's MAC from
        its own ARP, request or reply (sender = that peer's VTEP address
        only: no poisoning others)."""
        if len(d) < VXLAN_HDR + ARP_LEN:
            return TOO_SHORT, b""
        if d[8:14] != self.vtep_mac and d[8:14] != BROADCAST:
            return WRONG_MAC, b""
        a = d[VXLAN_HDR:VXLAN_HDR + ARP_LEN]
        if a[0:6] != b"\0\x01\x08\x00\x06\x04":
            return BAD_HEADER, b""
        sha, spa = bytes(a[8:14]), int.from_bytes(a[14:18], "big")
        for i in cands:
            if self._t.peers[i][NET] == spa:
                self._learn(self._t.peers[i], sha)
                break
        if a[6] == 0 and a[7] == 1 and int.from_bytes(a[24:28], "big") == self.tun_addr:
            return ARP, (vxlan_hdr(self.vni, self.vtep_mac, sha, b"\x08\x06")
                         + arp_body(self.vtep_mac, self.tun_addr, 2, sha, spa))
        return ARP, b""

    def _inbound(self, d, src_ip: int, sport: int):
        """(verdict, peer, offset of the inner packet, reply datagram)."""
        cands = self._t.by_ip.get(src_ip, ())
        if not cands:
            return UNKNOWN_PEER, -1, 0, b""
        if self.mode == MODE_UDP:
            # Peers send from their configured port (flannel's proxy too):
            # anything else from that host is some other process.
            cands = tuple(i for i in cands if self._t.peers[i][PORT] == sport)
            if not cands:
                return BAD_PORT, -1, 0, b""
            if len(d) < IPV4_MIN:
                return KEEPALIVE, cands[0], 0, b""   # a NAT keepalive: counted for it, not written
            v, idx = self._inner(d, cands)
            return v, idx, 0, b""
        if len(d) < IPV4_MIN:
            return KEEPALIVE, cands[0], 0, b""
        if len(d) < VXLAN_HDR:
            return TOO_SHORT, -1, 0, b""
        if not d[0] & 0x08:
            return BAD_VXLAN, -1, 0, b""
        if int.from_bytes(d[4:7], "big") != self.vni:
            return BAD_VNI, -1, 0, b""
        if d[20:22] == b"\x08\x06":
            v, reply = self._arp(d, cands)
            return v, -1, 0, reply
        if d[20:22] != b"\x08\x00":
            return NOT_IPV4, -1, 0, b""
        if d[8:14] != self.vtep_mac:
            return WRONG_MAC, -1, 0, b""
        v, idx = self._inner(memoryview(d)[VXLAN_HDR:], cands)
        if v == OK:
            self._learn(self._t.peers[idx], bytes(d[14:20]))
        return v, idx, VXLAN_HDR, b""

    def _inner(self, dgram, cands: tuple) -> tuple[int, int]:
        """(verdict, peer) for an inner packet from one of the peers `cands`:
        the first whose subnet holds its source."""
        v = check_ipv4(dgram)
        if v != OK:
            return v, -1
        src = int.from_bytes(dgram[12:16], "big")
        for idx in cands:
            p = self._t.peers[idx]
            if (src & mask(p[LEN])) == p[NET]:
                break
        else:
            return SPOOFED_SRC, -1
        if (int.from_bytes(dgram[16:20], "big") & self._local_mask) != self.local_net:
            return NOT_LOCAL, idx
        if dgram[8] == 0:
            return TTL_EXPIRED, idx
        return OK, idx

    def _finish_partial(self, pkt):
        """An accepted inner packet whose TCP/UDP checksum field holds the
        pseudo-header partial sum and does not verify (a kernel sender's
        checksum offload left it unfinished): a finished copy, counted.
        Anything else comes back as it is (the kernel checks it)."""
        ihl = (pkt[0] & 0x0F) * 4
        proto, n = pkt[9], len(pkt)
        at = ihl + (16 if proto == 6 else 6)
        if (proto not in (6, 17) or n < at + 2 or n < ihl + (20 if proto == 6 else 8)
                or ((pkt[6] << 8) | pkt[7]) & 0x3FFF):
            return pkt
        field = (pkt[at] << 8) | pkt[at + 1]
        if (proto == 17 and field == 0) or field != fold(pseudo_sum(pkt, proto, n - ihl)):
            return pkt
        if l4_ok(pkt, ihl, proto):
            return pkt
        c = checksum(pkt[ihl:])      # the field already holds the pseudo-header sum
        if c == 0 and proto == 17:
            c = 0xFFFF
        out = bytearray(pkt)
        out[at], out[at + 1] = c >> 8, c & 0xFF
        self._rx_c[CSUM_PARTIAL] += 1
        return bytes(out)

    def _count_in(self, v: int, idx: int, n: int) -> None:
        if v == OK:
            st = self._t.peers[idx][STATS]
            st[2] += 1
            st[3] += n
            self._rx_c[PACKETS] += 1
            self._rx_c[BYTES] += n
        else:
            if v == KEEPALIVE and idx >= 0:
                self._t.peers[idx][STATS][4] += 1
            self._rx_v[v] += 1

    # -- receiving -------------------------------------------------------------------
    def _recv_batch(self, sock) -> list:
        """Up to BATCH datagrams as (data, addr, UDP_GRO segment size or 0),
        as one recvmmsg gives them: it stops at an empty socket or an error."""
        got = []
        while len(got) < BATCH:
            try:
                data, anc, _flags, addr = sock.recvmsg(SLOT, _CMSG_SPACE if self.udp_gro else 0)
            except OSError:
                break
            gro = 0
            for level, kind, cdata in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(cdata) >= 4:
                    gro = struct.unpack("=i", cdata[:4])[0]
            got.append((data, addr, gro))
        return got

    def _reply(self, sock, data: bytes, addr: tuple) -> None:
        try:
            sock.sendto(data, addr)
        except OSError:
            self._rx_v[TX_ERROR] += 1

    # -- the loops -------------------------------------------------------------------
    def udp_to_tun(self, sock_fd: int, tun_fd: int) -> int:
        """Drain the socket (at most MAX_ROUNDS batches); the number of datagrams."""
        if self._closed:
            return 0
        sock = self._sock(sock_fd)
        done = 0
        for _ in range(MAX_ROUNDS):
            got = self._recv_batch(sock)
            if self.vnet_hdr:
                self._rx_batch_vnet(got, sock, tun_fd)
            else:
                self._rx_batch_plain(got, sock, tun_fd)
            done += len(got)
            if len(got) < BATCH:
                break
        return done

    def _rx_batch_plain(self, got: list, sock, tun_fd: int) -> None:
        """No vnet header: every accepted packet (each GRO segment) is its
        own TUN write."""
        for data, addr, gro in got:
            self._rx_datagram(data, _addr_int(addr), addr[1], gro,
                              lambda r, addr=addr: self._reply(sock, r, addr),
                              lambda pkt: self._write_plain(tun_fd, pkt))

    def _write_plain(self, tun_fd: int, pkt) -> None:
        for p in self._tun_packets(pkt):
            try:
                os.write(tun_fd, p)
            except OSError:
                self._rx_v[TX_ERROR] += 1

    def _tun_packets(self, pkt) -> list:
        """Without a vnet header: an oversized packet (offload.oversize_gso)
        as MTU-sized segments, counted; anything else as it is."""
        gso = oversize_gso(pkt, self._co.mtu)
        if not gso:
            return [pkt]
        self._co.resegmented += 1
        return split(bytearray(pkt), (0, GSO_TCPV4, 0, gso, 0, 0))

    def _rx_batch_vnet(self, got: list, sock, tun_fd: int) -> None:
        if not got:
            return
        for data, addr, gro in got:
            self._rx_datagram(data, _addr_int(addr), addr[1], gro,
                              lambda r, addr=addr: self._reply(sock, r, addr), self._co.add)
        for w, nseg in self._co.take():
            try:
                os.write(tun_fd, w)
            except OSError:
                self._rx_v[TX_ERROR] += nseg

    def _rx_datagram(self, data: bytes, src: int, sport: int, gro: int, reply, accept) -> None:
        """One received datagram (GRO: several segments of `gro` bytes):
        check each segment, answer ARP through reply(), hand accepted
        packets to accept() (the coalescer, or a plain TUN write)."""
        n = len(data)
        step = gro if 0 < gro < n else n
        off = 0
        while True:
            seg = data[off:off + step]
            v, idx, ioff, r = self._inbound(seg, src, sport)
            self._count_in(v, idx, len(seg) - ioff)
            if r:
                reply(r)
            if v == OK:
                accept(self._finish_partial(seg[ioff:]))
            off += step
            if off >= n:
                break
