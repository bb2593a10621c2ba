"""Pure-Python reference of the fast path (_fastpath/fastpath.pyx).

Everything the compiled extension exports is here with the same names,
verdicts, counters and output bytes; tests/unit/test_fastpath_diff.py proves
it. A change to one lands in the other in the same commit.

The engine never raises or logs per packet: each packet gets a verdict,
which is counted. Buffers passed in are borrowed for the call only.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct

from udpoverlay._offload_py import (MAX_SPLIT, SOL_UDP, UDP_GRO, UDP_SEGMENT, VNET_HDR_LEN,
                                    Coalescer, Packer, checksum, pack_vnet, parse_vnet,
                                    split)

IMPLEMENTATION = "python"

MODE_UDP = 0
MODE_VXLAN = 1

# Verdicts: index into VERDICT_NAMES. Order is part of the API (both impls).
OK = 0
TOO_SHORT = 1
NOT_IPV4 = 2
BAD_HEADER = 3
NO_ROUTE = 4
TTL_EXPIRED = 5
UNKNOWN_PEER = 6
SPOOFED_SRC = 7
NOT_LOCAL = 8
TX_ERROR = 9
BAD_VXLAN = 10
BAD_VNI = 11
WRONG_MAC = 12
UNRESOLVED = 13
ARP = 14            # an ARP frame consumed by the engine (not a drop)
BAD_GSO = 15        # a TUN super-packet whose vnet header does not fit it
VERDICT_NAMES = ("ok", "too_short", "not_ipv4", "bad_header", "no_route",
                 "ttl_expired", "unknown_peer", "spoofed_src", "not_local",
                 "tx_error", "bad_vxlan", "bad_vni", "wrong_mac", "unresolved",
                 "arp", "bad_gso")
N_VERDICTS = len(VERDICT_NAMES)

BATCH = 64          # packets per syscall batch
MAX_ROUNDS = 16     # batches per readable callback, so one side cannot starve the other
SLOT = 65536        # one buffer slot: any IPv4 packet fits
ICMP_TTL = 64
VXLAN_HDR = 8 + 14   # VXLAN header + inner Ethernet header (RFC 7348)
BROADCAST = b"\xff" * 6
TX_MSGS = 1024      # UDP messages per TX batch (sendmmsg's limit)
MAX_WAITS = 5       # waits of 20 ms for a full socket buffer, per batch
# ICMP types that are errors: never answer those with another error (RFC 1812).
_ICMP_ERRORS = frozenset((3, 4, 5, 11, 12))


def _ip_to_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _net(cidr: str) -> tuple[int, int]:
    n = ipaddress.IPv4Network(cidr, strict=True)
    return int(n.network_address), n.prefixlen


def _mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def flow_hash(pkt) -> int:
    """FNV-1a (32 bit) of the inner flow: addresses, protocol and, for an
    unfragmented TCP/UDP/SCTP packet, the ports. Picks the VXLAN source
    port (RFC 7348 section 5) so that one flow keeps one underlay path.
    Caller guarantees a valid IPv4 header."""
    ihl = (pkt[0] & 0x0F) * 4
    h = 0x811C9DC5
    data = bytes(pkt[12:20]) + bytes(pkt[9:10])
    if pkt[9] in (6, 17, 132) and ((pkt[6] << 8) | pkt[7]) & 0x3FFF == 0 and len(pkt) >= ihl + 4:
        data += bytes(pkt[ihl:ihl + 4])
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def _check_ipv4(pkt) -> int:
    """Verdict for a buffer that should hold exactly one IPv4 packet."""
    n = len(pkt)
    if n < 20:
        return TOO_SHORT
    if pkt[0] >> 4 != 4:
        return NOT_IPV4
    ihl = (pkt[0] & 0x0F) * 4
    total = (pkt[2] << 8) | pkt[3]
    if ihl < 20 or total != n or ihl > total:
        return BAD_HEADER
    return OK


class Engine:
    """Route table + per-packet logic + batched I/O (reference version)."""

    implementation = IMPLEMENTATION

    def __init__(self, mode: int, tun_addr: str, local_subnet: str, network: str,
                 vni: int = 1, vtep_mac: bytes = b"\x02\0\0\0\0\x01",
                 local_port: int = 8285) -> None:
        if mode not in (MODE_UDP, MODE_VXLAN):
            raise ValueError(f"unknown mode {mode}")
        if len(vtep_mac) != 6:
            raise ValueError("vtep mac must be 6 bytes")
        self.mode = mode
        self.tun_addr = _ip_to_int(tun_addr)
        self.local_net, self.local_len = _net(local_subnet)
        self.network, self.network_len = _net(network)
        self.vni = vni
        self.vtep_mac = bytes(vtep_mac)
        self.local_port = local_port
        # [ip, port, net, len, mac, stats]; stats = [tx_p, tx_b, rx_p, rx_b] is
        # adopted (shared) by the next table, as the compiled engine does.
        self._peers: list[list] = []
        self._routes: list[tuple[int, dict[int, int]]] = []   # (len, {net: peer})
        self._by_ip: dict[int, int] = {}
        self._c = {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
                   "icmp_sent": 0, "tx_super_packets": 0}
        self._out = [0] * N_VERDICTS
        self._in = [0] * N_VERDICTS
        self._socks: dict[int, socket.socket] = {}
        self._tx_fds: list[int] = []
        self.vnet_hdr = False
        self.tun_uso = False
        self._gso = False
        self._co = Coalescer(udp=False)

    # -- control plane -------------------------------------------------
    def set_peers(self, peers) -> None:
        """Replace the whole peer/route table; counters of kept peers stay."""
        old: dict[tuple, list] = {}
        for p in self._peers:
            old.setdefault((p[0], p[1], p[2], p[3]), p)
        new: list[list] = []
        for ip, port, subnet, mac in peers:
            net, length = _net(subnet)
            key = (_ip_to_int(ip), int(port), net, length)
            if mac is not None and len(mac) != 6:
                raise ValueError("vtep mac must be 6 bytes")
            prev = old.pop(key, None)
            stats = prev[5] if prev else [0, 0, 0, 0]
            # A MAC learned by ARP survives a table swap that does not name one.
            mac = bytes(mac) if mac else (prev[4] if prev else None)
            new.append([key[0], key[1], net, length, mac, stats])
        by_len: dict[int, dict[int, int]] = {}
        by_ip: dict[int, int] = {}
        for idx, p in enumerate(new):
            by_len.setdefault(p[3], {}).setdefault(p[2], idx)
            by_ip.setdefault(p[0], idx)
        # One assignment each: lookups see the old table or the new one.
        self._peers = new
        self._routes = sorted(by_len.items(), reverse=True)
        self._by_ip = by_ip

    def lookup(self, addr: int) -> int:
        """Longest-prefix match: peer index or -1."""
        for length, nets in self._routes:
            idx = nets.get(addr & _mask(length), -1)
            if idx >= 0:
                return idx
        return -1

    def counters(self) -> dict:
        out = dict(self._c)
        out["rx_coalesced"] = self._co.merged
        out["rx_csum_bad"] = self._co.csum_bad
        for i in range(1, N_VERDICTS):
            if i == ARP:
                continue
            out["tx_drop_" + VERDICT_NAMES[i]] = self._out[i]
            out["rx_drop_" + VERDICT_NAMES[i]] = self._in[i]
        out["rx_arp"] = self._in[ARP]
        return out

    def peer_counters(self) -> list[dict]:
        return [{"public_ip": str(ipaddress.IPv4Address(p[0])), "port": p[1],
                 "subnet": f"{ipaddress.IPv4Address(p[2])}/{p[3]}",
                 "tx_packets": p[5][0], "tx_bytes": p[5][1],
                 "rx_packets": p[5][2], "rx_bytes": p[5][3],
                 "vtep_mac": None if p[4] is None else ":".join(f"{b:02x}" for b in p[4])}
                for p in self._peers]

    # -- per packet ------------------------------------------------------
    def _icmp_error(self, pkt, icmp_type: int) -> bytes:
        """ICMP error about pkt for the TUN, or b'' where none may be sent."""
        ihl = (pkt[0] & 0x0F) * 4
        if ((pkt[6] & 0x1F) << 8 | pkt[7]) != 0:     # non-first fragment
            return b""
        if pkt[12] >= 224 or pkt[12] == 0:            # multicast/broadcast/unspecified src
            return b""
        if pkt[9] == 1 and (len(pkt) < ihl + 1 or pkt[ihl] in _ICMP_ERRORS):
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
        self._c["icmp_sent"] += 1
        return bytes(hdr + icmp)

    def _outbound(self, pkt: bytearray):
        """(verdict, peer, reply); on OK pkt is rewritten in place (TTL)."""
        v = _check_ipv4(pkt)
        if v != OK:
            return v, -1, b""
        if pkt[8] <= 1:
            return TTL_EXPIRED, -1, self._icmp_error(pkt, 11)
        idx = self.lookup(int.from_bytes(pkt[16:20], "big"))
        if idx < 0:
            return NO_ROUTE, -1, self._icmp_error(pkt, 3)
        if self.mode == MODE_VXLAN and self._peers[idx][4] is None:
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
            st = self._peers[idx][5]
            st[0] += 1
            st[1] += n
            self._c["tx_packets"] += 1
            self._c["tx_bytes"] += n
        else:
            self._out[v] += 1

    def outbound(self, packet: bytes):
        """TUN -> wire for one packet: (verdict, peer index, payload, reply to TUN)."""
        pkt = bytearray(packet)
        v, idx, reply = self._outbound(pkt)
        self._count_out(v, idx, len(pkt))
        return v, idx, self._encap(pkt, idx) if v == OK else b"", reply

    def _vxlan_hdr(self, dst_mac: bytes, ethertype: bytes) -> bytes:
        return (b"\x08\0\0\0" + self.vni.to_bytes(3, "big") + b"\0"
                + dst_mac + self.vtep_mac + ethertype)

    def _encap(self, pkt, idx: int) -> bytes:
        if self.mode == MODE_UDP:
            return bytes(pkt)
        return self._vxlan_hdr(self._peers[idx][4], b"\x08\x00") + pkt

    def arp_request(self, idx: int) -> bytes:
        """VXLAN datagram asking peer idx for the MAC of its VTEP address."""
        p = self._peers[idx]
        arp = (b"\0\x01\x08\x00\x06\x04\0\x01" + self.vtep_mac
               + self.tun_addr.to_bytes(4, "big") + bytes(6) + p[2].to_bytes(4, "big"))
        return self._vxlan_hdr(BROADCAST, b"\x08\x06") + arp

    def _arp(self, d, idx: int):
        """Answer ARP requests for our VTEP address; learn the peer's MAC from
        its own ARP (sender = its VTEP address only: no poisoning others)."""
        if len(d) < VXLAN_HDR + 28:
            return TOO_SHORT, b""
        if d[8:14] != self.vtep_mac and d[8:14] != BROADCAST:
            return WRONG_MAC, b""
        a = d[VXLAN_HDR:VXLAN_HDR + 28]
        if a[0:6] != b"\0\x01\x08\x00\x06\x04":
            return BAD_HEADER, b""
        op = a[7]
        sha, spa, tpa = a[8:14], int.from_bytes(a[14:18], "big"), int.from_bytes(a[24:28], "big")
        p = self._peers[idx]
        if spa == p[2] and not sha[0] & 1 and p[4] is None:
            p[4] = bytes(sha)
        if a[6] == 0 and op == 1 and tpa == self.tun_addr:
            body = (b"\0\x01\x08\x00\x06\x04\0\x02" + self.vtep_mac
                    + self.tun_addr.to_bytes(4, "big") + sha + spa.to_bytes(4, "big"))
            return ARP, self._vxlan_hdr(bytes(sha), b"\x08\x06") + body
        return ARP, b""

    def _inbound(self, d, src_ip: int):
        """(verdict, peer, offset of the inner packet, reply datagram)."""
        idx = self._by_ip.get(src_ip, -1)
        if idx < 0:
            return UNKNOWN_PEER, -1, 0, b""
        if self.mode == MODE_UDP:
            return self._inner(d, idx), idx, 0, b""
        if len(d) < VXLAN_HDR:
            return TOO_SHORT, idx, 0, b""
        if not d[0] & 0x08:
            return BAD_VXLAN, idx, 0, b""
        if int.from_bytes(d[4:7], "big") != self.vni:
            return BAD_VNI, idx, 0, b""
        if d[20:22] == b"\x08\x06":
            v, reply = self._arp(d, idx)
            return v, idx, 0, reply
        if d[20:22] != b"\x08\x00":
            return NOT_IPV4, idx, 0, b""
        if d[8:14] != self.vtep_mac:
            return WRONG_MAC, idx, 0, b""
        return self._inner(memoryview(d)[VXLAN_HDR:], idx), idx, VXLAN_HDR, b""

    def _inner(self, dgram, idx: int) -> int:
        v = _check_ipv4(dgram)
        if v != OK:
            return v
        p = self._peers[idx]
        if (int.from_bytes(dgram[12:16], "big") & _mask(p[3])) != p[2]:
            return SPOOFED_SRC
        if (int.from_bytes(dgram[16:20], "big") & _mask(self.local_len)) != self.local_net:
            return NOT_LOCAL
        if dgram[8] == 0:
            return TTL_EXPIRED
        return OK

    def _count_in(self, v: int, idx: int, n: int) -> None:
        if v == OK:
            st = self._peers[idx][5]
            st[2] += 1
            st[3] += n
            self._c["rx_packets"] += 1
            self._c["rx_bytes"] += n
        else:
            self._in[v] += 1

    def inbound(self, datagram: bytes, src_ip: str):
        """Wire -> TUN for one datagram:
        (verdict, peer index, packet for TUN, reply datagram to the sender)."""
        datagram = bytes(datagram)
        v, idx, off, reply = self._inbound(datagram, _ip_to_int(src_ip))
        self._count_in(v, idx, len(datagram) - off)
        return v, idx, datagram[off:] if v == OK else b"", reply

    # -- batched I/O -------------------------------------------------------
    def _sock(self, fd: int) -> socket.socket:
        s = self._socks.get(fd)
        if s is None:
            s = self._socks[fd] = socket.socket(fileno=os.dup(fd))
            s.setblocking(False)
        return s

    def _recv(self, sock: socket.socket):
        """One datagram as (data, addr, UDP_GRO segment size or 0), or None
        when the socket is empty or failed."""
        for _ in range(BATCH):
            try:
                data, anc, _flags, addr = sock.recvmsg(SLOT, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                    continue    # an ICMP error queued on the socket: skip it
                return None
            gro = 0
            for level, kind, cdata in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(cdata) >= 4:
                    gro = struct.unpack("=i", cdata[:4])[0]
            return data, addr, gro
        return None

    def set_tx_fds(self, fds) -> None:
        """vxlan: send through these sockets (bound to different source
        ports), chosen per inner flow by flow_hash; empty = sock_fd only."""
        self._tx_fds = [int(fd) for fd in fds][:64]

    def set_offload(self, vnet_hdr: bool, udp_gso: bool = False, tun_uso: bool = False) -> None:
        """Declare what the devices were set up with: the TUN fd carries a
        virtio_net_hdr (IFF_VNET_HDR, TSO on), the socket takes UDP_SEGMENT,
        the TUN takes UDP GSO writes (USO). Call before any I/O."""
        self.vnet_hdr = bool(vnet_hdr)
        self._gso = bool(vnet_hdr and udp_gso)
        self.tun_uso = bool(vnet_hdr and tun_uso)
        self._co.udp = self.tun_uso

    @property
    def udp_gso(self) -> bool:
        """UDP_SEGMENT in use (turned off for good if the kernel refuses it)."""
        return self._gso

    def _addr(self, ip: int, port: int) -> tuple:
        return (str(ipaddress.IPv4Address(ip)), port)

    def tun_to_udp(self, tun_fd: int, sock_fd: int) -> int:
        """Drain the TUN: read, route, encapsulate, send per batch."""
        if self.vnet_hdr:
            return self._tun_to_udp_vnet(tun_fd, sock_fd)
        sock = self._sock(sock_fd)
        done = 0
        for data in self._tun_reads(tun_fd, SLOT):
            done += 1
            pkt = bytearray(data)
            v, idx, reply = self._outbound(pkt)
            self._count_out(v, idx, len(pkt))
            if reply:
                try:
                    os.write(tun_fd, reply)
                except OSError:
                    pass
            if v == OK:
                p = self._peers[idx]
                tx = sock
                if self._tx_fds:
                    tx = self._sock(self._tx_fds[flow_hash(pkt) % len(self._tx_fds)])
                try:
                    tx.sendto(self._encap(pkt, idx), self._addr(p[0], p[1]))
                except OSError:
                    self._out[TX_ERROR] += 1
        return done

    def udp_to_tun(self, sock_fd: int, tun_fd: int) -> int:
        """Drain the socket: receive, check the peer, decapsulate, write to TUN."""
        if self.vnet_hdr:
            return self._udp_to_tun_vnet(sock_fd, tun_fd)
        sock = self._sock(sock_fd)
        done = 0
        for _ in range(BATCH * MAX_ROUNDS):
            got = self._recv(sock)
            if got is None:
                break
            data, addr, _gro = got
            done += 1
            v, idx, off, reply = self._inbound(data, _ip_to_int(addr[0]))
            self._count_in(v, idx, len(data) - off)
            if reply:
                try:
                    sock.sendto(reply, addr)
                except OSError:
                    self._in[TX_ERROR] += 1
            if v == OK:
                try:
                    os.write(tun_fd, data[off:])
                except OSError:
                    self._in[TX_ERROR] += 1
        return done

    # -- worker threads ----------------------------------------------------
    # The reference keeps the GIL (no parallelism), but runs the same thread
    # bodies; tables are garbage collected, so retiring one is free.
    threaded = False
    _stopping = False

    def set_threaded(self, on: bool) -> None:
        """Declare that run_tx/run_rx threads are about to run (True) or have
        been joined (False); route tables are then freed only when safe."""
        self.threaded = bool(on)
        self._stopping = False

    def reclaim(self) -> int:
        """Free retired tables no worker can still hold; how many are left."""
        return 0

    def stop_workers(self) -> None:
        """Make run_tx/run_rx return (within 100 ms; at once if the stop fd
        they poll becomes readable)."""
        self._stopping = True

    def run_tx(self, tun_fd: int, sock_fd: int, stop_fd: int) -> None:
        """Worker thread body: TUN -> wire until stop_workers()."""
        self._worker(tun_fd, stop_fd, lambda: self.tun_to_udp(tun_fd, sock_fd))

    def run_rx(self, sock_fd: int, tun_fd: int, stop_fd: int) -> None:
        """Worker thread body: wire -> TUN until stop_workers()."""
        self._worker(sock_fd, stop_fd, lambda: self.udp_to_tun(sock_fd, tun_fd))

    def _worker(self, in_fd: int, stop_fd: int, drain) -> None:
        while not self._stopping:
            ready, _, _ = select.select([in_fd, stop_fd], [], [], 0.1)
            if self._stopping or stop_fd in ready:
                return
            if in_fd in ready:
                drain()

    # -- TX with offloads ----------------------------------------------------
    def _tx_one(self, buf, packer: Packer, tun_writes: list) -> None:
        """One TUN read (vnet header + packet): verdict, split, encapsulate,
        add the segments to the batch."""
        vnet = parse_vnet(buf)
        pkt = bytearray(buf[VNET_HDR_LEN:])
        v, idx, reply = self._outbound(pkt)
        if reply:
            tun_writes.append(pack_vnet() + reply)
        segs = None
        if v == OK:
            segs = split(pkt, vnet)
            if segs is None:
                v = BAD_GSO
        if v != OK:
            self._out[v] += 1
            return
        p = self._peers[idx]
        sock = flow_hash(pkt) % len(self._tx_fds) if self._tx_fds else -1
        if len(segs) > 1:
            self._c["tx_super_packets"] += 1
        for seg in segs:
            self._count_out(OK, idx, len(seg))
            packer.add(sock, (p[0], p[1]), self._encap(seg, idx))

    def _tx_batches(self, reads):
        """Run reads (an iterator of TUN reads) through the TX pipeline in
        batches as the compiled loop cuts them: yields (messages, tun_writes)."""
        reads = iter(reads)
        while True:
            packer = Packer(self._gso)
            tun_writes: list = []
            n = 0
            exhausted = True
            for buf in reads:
                n += 1
                if len(buf) < VNET_HDR_LEN:
                    self._out[TOO_SHORT] += 1
                else:
                    self._tx_one(buf, packer, tun_writes)
                if n >= BATCH or len(packer.messages) + MAX_SPLIT > TX_MSGS:
                    exhausted = False
                    break
            yield packer.take(), tun_writes
            if exhausted:
                return

    def outbound_batch(self, bufs):
        """TUN reads (vnet header + packet each) through the TX pipeline, in
        batches as the I/O loop makes them: ([(sock, ip, port, gso_size,
        payload, n_segments)], [TUN writes])."""
        if not self.vnet_hdr:
            raise RuntimeError("outbound_batch needs set_offload(True)")
        messages, writes = [], []
        bufs = [bytes(b)[:VNET_HDR_LEN + 65535] for b in bufs]
        for msgs, tw in self._tx_batches(bufs):
            messages += [(sock, str(ipaddress.IPv4Address(dst[0])), dst[1], gso, payload, nseg)
                         for sock, dst, gso, payload, nseg in msgs]
            writes += tw
        return messages, writes

    def _tun_reads(self, tun_fd: int, size: int):
        """TUN reads until the device is empty (at most BATCH * MAX_ROUNDS)."""
        for _ in range(BATCH * MAX_ROUNDS):
            try:
                yield os.read(tun_fd, size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._out[TX_ERROR] += 1
                return

    def _tun_to_udp_vnet(self, tun_fd: int, sock_fd: int) -> int:
        done = 0
        for msgs, tun_writes in self._tx_batches(self._tun_reads(tun_fd, VNET_HDR_LEN + 65535)):
            for w in tun_writes:
                try:
                    os.write(tun_fd, w)
                except OSError:
                    pass
            for sock, dst, gso, payload, nseg in msgs:
                fd = sock_fd if sock < 0 else self._tx_fds[sock]
                self._send_msg(self._sock(fd), self._addr(*dst), gso, payload, nseg)
                done += nseg
        return done

    def _send_msg(self, s: socket.socket, addr, gso: int, payload: bytes, nseg: int) -> None:
        anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", gso))] if gso else []
        for _ in range(MAX_WAITS + 1):
            try:
                s.sendmsg([payload], anc, 0, addr)
                return
            except BlockingIOError:
                select.select([], [s], [], 0.02)
            except OSError as exc:
                if gso and exc.errno in (errno.EIO, errno.EINVAL):
                    # The kernel refuses UDP_SEGMENT here (no checksum offload
                    # on the route's device): send plainly, stop using it.
                    self._gso = False
                    for i in range(0, len(payload), gso):
                        self._send_msg(s, addr, 0, payload[i:i + gso], 1)
                    return
                break
        self._out[TX_ERROR] += nseg

    # -- RX with offloads ----------------------------------------------------
    def _rx_datagram(self, data: bytes, src: int, gro: int, replies: list) -> None:
        """One received datagram (GRO: several segments of `gro` bytes):
        check each segment, answer ARP, hand accepted packets to the
        coalescer."""
        n = len(data)
        step = gro if 0 < gro < n else n
        off = 0
        while True:
            seg = data[off:off + step]
            v, idx, ioff, reply = self._inbound(seg, src)
            self._count_in(v, idx, len(seg) - ioff)
            if reply:
                replies.append(reply)
            if v == OK:
                self._co.add(seg[ioff:])
            off += step
            if off >= n:
                break

    def inbound_batch(self, datagrams):
        """Received datagrams [(data, src_ip, gro_size)] through the RX
        pipeline, BATCH at a time as recvmmsg gives them: ([TUN writes],
        [(reply datagram, src_ip)])."""
        if not self.vnet_hdr:
            raise RuntimeError("inbound_batch needs set_offload(True)")
        items = [(bytes(d)[:SLOT], s, int(g)) for d, s, g in datagrams]
        writes, replies = [], []
        for k in range(0, len(items), BATCH):
            for data, src, gro in items[k:k + BATCH]:
                out: list = []
                self._rx_datagram(data, _ip_to_int(src), gro, out)
                replies += [(r, src) for r in out]
            writes += self._co.take()
        return writes, replies

    def _udp_to_tun_vnet(self, sock_fd: int, tun_fd: int) -> int:
        sock = self._sock(sock_fd)
        done = 0
        for _ in range(MAX_ROUNDS):
            got = []
            while len(got) < BATCH:
                one = self._recv(sock)
                if one is None:
                    break
                got.append(one)
            for data, addr, gro in got:
                replies: list = []
                self._rx_datagram(data, _ip_to_int(addr[0]), gro, replies)
                for r in replies:
                    try:
                        sock.sendto(r, addr)
                    except OSError:
                        self._in[TX_ERROR] += 1
            for w in self._co.take():
                try:
                    os.write(tun_fd, w)
                except OSError:
                    self._in[TX_ERROR] += 1
            done += len(got)
            if len(got) < BATCH:
                break
        return done

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
