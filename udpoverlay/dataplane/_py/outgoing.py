"""Reference twin, outgoing: TUN -> wire. Mirrors _fastpath/outgoing.pxi.

Read a batch from the TUN, give every packet a verdict (route, TTL, ICMP
error back to the TUN), encapsulate, and send the batch per source socket,
in order. With offloads a TUN read is a super-packet behind a
virtio_net_hdr: it is split and its segments are packed into UDP_SEGMENT
messages (offload.py). A plain TUN's packets (one per read) are packed the
same way when the socket takes UDP_SEGMENT: the wire datagrams are the
same, the kernel is entered once per message instead of once per packet.

The send rule both twins keep: a full socket buffer is waited for (WAIT_MS)
at most MAX_WAITS times per batch and socket; a message that still does not
fit, or fails otherwise, is dropped and its segments count as tx_error. A
GSO message the kernel refuses (EIO/EINVAL) goes out segment by segment,
and GSO stays off from then on.

Outgoing is a mixin of Core (dataplane/_py/__init__.py): it uses the
core's configuration and table, and owns the _tx_* counters.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct

from udpoverlay.dataplane._py.checksum import checksum
from udpoverlay.dataplane._py.frames import check_ipv4, flow_hash, vxlan_hdr
from udpoverlay.dataplane._py.offload import Packer, pack_vnet, parse_vnet, split
from udpoverlay.dataplane.wire import (
    BAD_GSO,
    BATCH,
    ICMP_ERRORS,
    ICMP_TTL,
    MAX_ROUNDS,
    MAX_SPLIT,
    MAX_WAITS,
    MODE_UDP,
    MODE_VXLAN,
    NO_ROUTE,
    OK,
    SLOT,
    SOL_UDP,
    TOO_SHORT,
    TTL_EXPIRED,
    TX_ERROR,
    TX_MSGS,
    UDP_SEGMENT,
    UNRESOLVED,
    VNET_HDR_LEN,
    WAIT_MS,
)

# _tx_c fields
PACKETS, BYTES, ICMP_SENT, SUPER_PACKETS, GSO_MESSAGES = range(5)
_ZERO_VNET = pack_vnet()


def socket_for(socks: dict, fd: int) -> socket.socket:
    """A socket object for fd, kept in socks (a non-blocking dup: closing
    it leaves fd open)."""
    s = socks.get(fd)
    if s is None:
        s = socks[fd] = socket.socket(fileno=os.dup(fd))
        s.setblocking(False)
    return s


def retry_send(sock, exc: OSError, waits: list) -> bool:
    """After a failed send: try again? Yes on a full socket buffer once it
    drains (waits of WAIT_MS, at most MAX_WAITS per batch: waits[0] counts).
    (EINTR never gets here: Python retries it.)"""
    if not isinstance(exc, BlockingIOError) or waits[0] >= MAX_WAITS:
        return False
    waits[0] += 1
    return bool(select.select([], [sock], [], WAIT_MS / 1000)[1])


class Outgoing:
    # -- per packet ------------------------------------------------------------
    def _icmp_error(self, pkt, icmp_type: int) -> bytes:
        """ICMP error about pkt for the TUN, or b'' where none may be sent."""
        ihl = (pkt[0] & 0x0F) * 4
        if ((pkt[6] & 0x1F) << 8 | pkt[7]) != 0:     # non-first fragment
            return b""
        if pkt[12] >= 224 or pkt[12] == 0:            # multicast/broadcast/unspecified src
            return b""
        if pkt[9] == 1 and (len(pkt) < ihl + 1 or pkt[ihl] in ICMP_ERRORS):
            return b""
        body = bytes(pkt[:ihl + 8])
        icmp = bytearray(8 + len(body))
        icmp[0] = icmp_type
        icmp[8:] = body
        c = checksum(icmp)
        icmp[2], icmp[3] = c >> 8, c & 0xFF
        total = 20 + len(icmp)
        hdr = bytearray(20)
        hdr[0] = 0x45
        hdr[2], hdr[3] = total >> 8, total & 0xFF
        hdr[8] = ICMP_TTL
        hdr[9] = 1
        hdr[12:16] = self.tun_addr.to_bytes(4, "big")
        hdr[16:20] = pkt[12:16]
        c = checksum(hdr)
        hdr[10], hdr[11] = c >> 8, c & 0xFF
        self._tx_c[ICMP_SENT] += 1
        return bytes(hdr + icmp)

    def _outbound(self, pkt: bytearray):
        """(verdict, peer, reply); on OK pkt is rewritten in place (TTL)."""
        v = check_ipv4(pkt)
        if v != OK:
            return v, -1, b""
        if pkt[8] <= 1:
            return TTL_EXPIRED, -1, self._icmp_error(pkt, 11)
        idx = self._t.lookup(int.from_bytes(pkt[16:20], "big"))
        if idx < 0:
            return NO_ROUTE, -1, self._icmp_error(pkt, 3)
        if self.mode == MODE_VXLAN and self._t.peers[idx][4] is None:
            return UNRESOLVED, -1, b""
        # TTL-1 with an incremental checksum update (RFC 1624, eqn. 3).
        old = (pkt[8] << 8) | pkt[9]
        pkt[8] -= 1
        new = (pkt[8] << 8) | pkt[9]
        s = (~((pkt[10] << 8) | pkt[11]) & 0xFFFF) + (~old & 0xFFFF) + new
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        c = ~s & 0xFFFF
        pkt[10], pkt[11] = c >> 8, c & 0xFF
        return OK, idx, b""

    def _count_out(self, v: int, idx: int, n: int) -> None:
        if v == OK:
            st = self._t.peers[idx][5]
            st[0] += 1
            st[1] += n
            self._tx_c[PACKETS] += 1
            self._tx_c[BYTES] += n
        else:
            self._tx_v[v] += 1

    def _encap(self, pkt, idx: int) -> bytes:
        if self.mode == MODE_UDP:
            return bytes(pkt)
        return vxlan_hdr(self.vni, self.vtep_mac, self._t.peers[idx][4], b"\x08\x00") + pkt

    # -- the loops -------------------------------------------------------------------
    def tun_to_udp(self, tun_fd: int, sock_fd: int) -> int:
        """Drain the TUN (at most MAX_ROUNDS batches); the number of reads."""
        if self._closed:
            return 0
        if self.vnet_hdr:
            return self._tun_to_udp_vnet(tun_fd, sock_fd)
        return self._tun_to_udp_plain(tun_fd, sock_fd)

    def _tun_read(self, tun_fd: int, size: int):
        """One TUN read, or None when the device is empty (or failed)."""
        try:
            return os.read(tun_fd, size)
        except BlockingIOError:
            return None
        except OSError:
            self._tx_v[TX_ERROR] += 1
            return None

    @staticmethod
    def _write_tun(tun_fd: int, data: bytes) -> None:
        try:
            os.write(tun_fd, data)
        except OSError:
            pass        # an ICMP error lost: nothing to count it as

    def _tun_to_udp_plain(self, tun_fd: int, sock_fd: int) -> int:
        done = 0
        for _ in range(MAX_ROUNDS):
            packer = Packer(self._gso)      # gso off: one message per packet
            reads = 0
            data = b""
            while reads < BATCH:
                data = self._tun_read(tun_fd, SLOT)
                if data is None:
                    break
                reads += 1
                self._tx_plain_one(bytearray(data), packer, tun_fd)
            done += reads
            self._tx_send(packer.take(), sock_fd)
            if data is None:
                break
        return done

    def _tx_plain_one(self, pkt: bytearray, packer: Packer, tun_fd: int) -> None:
        """One plain TUN read: verdict, ICMP error back to the TUN (no vnet
        header), encapsulate, add it to the batch as one wire segment."""
        v, idx, reply = self._outbound(pkt)
        self._count_out(v, idx, len(pkt))
        if reply:
            self._write_tun(tun_fd, reply)
        if v == OK:
            p = self._t.peers[idx]
            packer.add(self._tx_index(pkt), (p[0], p[1]), self._encap(pkt, idx))

    def _tx_index(self, pkt) -> int:
        """Which source socket a flow leaves from: an index into the tx
        sockets, -1 for the main socket."""
        return flow_hash(pkt) % len(self._tx_fds) if self._tx_fds else -1

    def _tx_one(self, buf, packer: Packer, write_tun) -> None:
        """One TUN read (vnet header + packet): verdict, split, encapsulate,
        add the segments to the batch."""
        if len(buf) < VNET_HDR_LEN:
            self._tx_v[TOO_SHORT] += 1
            return
        vnet = parse_vnet(buf)
        pkt = bytearray(buf[VNET_HDR_LEN:])
        v, idx, reply = self._outbound(pkt)
        if reply:
            write_tun(_ZERO_VNET + reply)
        segs = None
        if v == OK:
            segs = split(pkt, vnet)
            if segs is None:
                v = BAD_GSO
        if v != OK:
            self._tx_v[v] += 1
            return
        p = self._t.peers[idx]
        sock = self._tx_index(pkt)
        if len(segs) > 1:
            self._tx_c[SUPER_PACKETS] += 1
        for seg in segs:
            self._count_out(OK, idx, len(seg))
            packer.add(sock, (p[0], p[1]), self._encap(seg, idx))

    @staticmethod
    def _tx_room(packer: Packer) -> bool:
        """Room in the batch for one more read's worst split?"""
        return len(packer.messages) + MAX_SPLIT <= TX_MSGS

    def _tun_to_udp_vnet(self, tun_fd: int, sock_fd: int) -> int:
        done = 0
        write_tun = lambda data: self._write_tun(tun_fd, data)  # noqa: E731
        for _ in range(MAX_ROUNDS):
            packer = Packer(self._gso)
            reads = 0
            buf = b""
            while reads < BATCH and self._tx_room(packer):
                buf = self._tun_read(tun_fd, VNET_HDR_LEN + 65535)
                if buf is None:
                    break
                reads += 1
                self._tx_one(buf, packer, write_tun)
            done += reads
            self._tx_send(packer.take(), sock_fd)
            if buf is None:
                break
        return done

    # -- sending ------------------------------------------------------------------------
    def _tx_send(self, msgs: list, sock_fd: int) -> None:
        """Send a batch's messages [(sock, (ip, port), gso, payload, nseg)]:
        per socket, in order."""
        if not self._tx_fds:
            self._send_group(self._sock(sock_fd), msgs)
            return
        for s, fd in enumerate(self._tx_fds):
            group = [m for m in msgs if m[0] == s]
            if group:
                self._send_group(self._sock(fd), group)

    def _send_group(self, sock, msgs: list) -> None:
        sent, lost, refused = send_packed(
            sock, [((str(ipaddress.IPv4Address(ip)), port), gso, payload, nseg)
                   for _s, (ip, port), gso, payload, nseg in msgs])
        self._tx_c[GSO_MESSAGES] += sent
        self._tx_v[TX_ERROR] += lost
        if refused:
            self._gso = False


def send_packed(sock, msgs: list) -> tuple[int, int, bool]:
    """Send one socket's packed messages [((host, port), gso_size, payload,
    n_segments)], in order, by the send rule (module notes; WgIo's too):
    (UDP_SEGMENT messages the kernel took, datagrams lost, whether the
    kernel refused UDP_SEGMENT)."""
    waits = [0]
    sent = lost = 0
    refused = False
    for addr, gso, payload, nseg in msgs:
        anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", gso))] if nseg > 1 else []
        while True:
            try:
                sock.sendmsg([payload], anc, 0, addr)
                if nseg > 1:
                    sent += 1
            except OSError as exc:
                if retry_send(sock, exc, waits):
                    continue
                if nseg > 1 and exc.errno in (errno.EIO, errno.EINVAL):
                    # The kernel refuses UDP_SEGMENT here (no checksum
                    # offload on the route's device): send this one
                    # plainly, stop using it.
                    refused = True
                    lost += _send_plain(sock, addr, payload, gso)
                else:
                    lost += nseg
            break
    return sent, lost, refused


def _send_plain(sock, addr: tuple, payload: bytes, gso: int) -> int:
    """A GSO message's segments one by one (waits: per message); how many
    were lost."""
    waits = [0]
    lost = 0
    for i in range(0, len(payload), gso):
        while True:
            try:
                sock.sendto(payload[i:i + gso], addr)
            except OSError as exc:
                if retry_send(sock, exc, waits):
                    continue
                lost += 1
            break
    return lost
