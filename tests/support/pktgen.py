"""Packet builders for the data-plane tests: IPv4/TCP/UDP with correct (or
deliberately wrong) checksums, TUN super-packets with a virtio_net_hdr, and
the datagrams a peer would send. Checksums come from the reference twin;
tests/unit/dataplane/test_offload.py cross-checks them with scapy."""

from __future__ import annotations

import ipaddress
import struct

from udpoverlay.dataplane import wire
from udpoverlay.dataplane._py import checksum as cs
from udpoverlay.dataplane._py import offload as off
from udpoverlay.peer import Peer

OUR_SUBNET = "198.19.1.0/24"
MAC = bytes.fromhex("02aa00000001")
PEER_MAC = bytes.fromhex("02bb00000002")


def peer(ip: str, port: int, subnet: str, mac: bytes | None = None) -> Peer:
    return Peer(ipaddress.IPv4Address(ip), port, ipaddress.IPv4Network(subnet), mac)


# the peers every offload test engine has
PEERS = [peer("198.18.0.2", 8285, "198.19.2.0/24", PEER_MAC),
         peer("198.18.0.3", 8285, "198.19.3.0/24", PEER_MAC),
         peer("198.18.0.4", 9000, "198.19.128.0/17", PEER_MAC)]


def a(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ip(text: str) -> int:
    """An address as the cores take it."""
    return int(ipaddress.IPv4Address(text))


def raw_ipv4(src: str, dst: str, ttl: int, proto: int, payload: bytes,
             frag: int = 0, ihl: int = 5, tos: int = 0, ident: int = 0) -> bytes:
    """Any IPv4 header (options of 0x01, raw fragment field) before payload."""
    opts = b"\x01" * ((ihl - 5) * 4)
    total = 20 + len(opts) + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, total, ident, frag, ttl,
                      proto, 0, a(src), a(dst)) + opts
    c = cs.checksum(hdr)
    return hdr[:10] + struct.pack("!H", c) + hdr[12:] + payload


def ipv4(src: str, dst: str, proto: int, body: bytes, *, ttl: int = 64, tos: int = 0,
         ident: int = 0, df: bool = True, mf: bool = False,
         ip_opts: bytes = b"") -> bytearray:
    ihl = 5 + len(ip_opts) // 4
    frag = (0x4000 if df else 0) | (0x2000 if mf else 0)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 4 * ihl + len(body), ident,
                                frag, ttl, proto, 0, a(src), a(dst)) + ip_opts)
    cs.ip_header_csum(hdr)
    return hdr + body


def l4_csum(pkt: bytearray, at: int, partial: bool = False) -> None:
    """Fill the L4 checksum at offset `at` (from the IP header): complete,
    or the folded pseudo-header sum a NEEDS_CSUM packet carries."""
    ihl = (pkt[0] & 0x0F) * 4
    pkt[at:at + 2] = b"\0\0"
    ps = cs.pseudo_sum(pkt, pkt[9], len(pkt) - ihl)
    c = cs.fold(ps) if partial else ~cs.fold(ps + cs.sum16(pkt[ihl:])) & 0xFFFF
    if c == 0 and pkt[9] == 17 and not partial:
        c = 0xFFFF
    pkt[at:at + 2] = c.to_bytes(2, "big")


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, payload: bytes, *,
        ack: int = 1, flags: int = 0x10, opts: bytes = b"", window: int = 512,
        partial: bool = False, bad_csum: bool = False, **ip) -> bytearray:
    doff = 5 + len(opts) // 4
    th = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, doff << 4, flags,
                     window, 0, 0) + opts
    pkt = ipv4(src, dst, 6, th + payload, **ip)
    ihl = (pkt[0] & 0x0F) * 4
    l4_csum(pkt, ihl + 16, partial)
    if bad_csum:
        pkt[ihl + 17] ^= 0x5A
    return pkt


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes, *, partial: bool = False,
        no_csum: bool = False, bad_csum: bool = False, **ip) -> bytearray:
    uh = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    pkt = ipv4(src, dst, 17, uh + payload, **ip)
    ihl = (pkt[0] & 0x0F) * 4
    if not no_csum:
        l4_csum(pkt, ihl + 6, partial)
    if bad_csum:
        pkt[ihl + 7] ^= 0x5A
    return pkt


def tun_read(pkt: bytes, gso_type: int = 0, gso_size: int = 0, flags: int | None = None,
             csum_start: int | None = None, csum_offset: int | None = None) -> bytes:
    """What a TUN read with IFF_VNET_HDR returns for pkt (the kernel's way:
    NEEDS_CSUM with the L4 checksum offsets, unless told otherwise)."""
    ihl = (pkt[0] & 0x0F) * 4
    at = 16 if pkt[9] == 6 else 6
    hdr_len = ihl + ((pkt[ihl + 12] >> 4) * 4 if pkt[9] == 6 else 8)
    return off.pack_vnet(wire.F_NEEDS_CSUM if flags is None else flags, gso_type,
                         hdr_len if gso_type else 0, gso_size,
                         ihl if csum_start is None else csum_start,
                         at if csum_offset is None else csum_offset) + bytes(pkt)


def vxlan(inner: bytes, dst_mac: bytes = MAC, vni: int = 1) -> bytes:
    return (b"\x08\0\0\0" + vni.to_bytes(3, "big") + b"\0" + dst_mac + PEER_MAC
            + b"\x08\x00" + bytes(inner))


def gro_datagrams(segments: list[bytes], max_segs: int = 64) -> list[tuple[bytes, int]]:
    """Group wire segments the way UDP GRO would hand them over: runs of
    equal size (a shorter one ends a run), at most one UDP datagram's worth,
    as (data, gro_size)."""
    out, run = [], []
    for seg in segments:
        if run and (len(seg) > len(run[0]) or len(run[-1]) != len(run[0])
                    or len(run) >= max_segs or len(run[0]) * len(run) + len(seg) > 65507):
            out.append(run)
            run = []
        run.append(seg)
    if run:
        out.append(run)
    return [(b"".join(r), len(r[0]) if len(r) > 1 else 0) for r in out]


def resegment(write: bytes) -> list[bytes]:
    """Split a TUN write (vnet header + packet) the way the kernel would
    deliver it: the reference splitter, used as the oracle for coalescing."""
    vnet = off.parse_vnet(write)
    pkt = bytearray(write[wire.VNET_HDR_LEN:])
    if vnet[1] == wire.GSO_NONE:
        return [bytes(pkt)]
    segs = off.split(pkt, vnet)
    assert segs is not None, vnet
    return segs
