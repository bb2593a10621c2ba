"""Oversized received packets, both twins (`impl`): a kernel vxlan node's
super-frame (one inner TCP packet longer than our TUN's MTU, DF set, its
checksum left partial) is written as a GSO packet the kernel segments when
forwarding (vnet header) or split into MTU-sized packets (no vnet header),
and counted as rx_resegmented. Known answers: a 7000-byte payload at MTU
1450 is 4 x 1410 + 1360 bytes of payload."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import time

import pytest

from tests.support import pktgen as g
from tests.support.twins import engine
from udpoverlay.dataplane import wire
from udpoverlay.dataplane._py import checksum as cs
from udpoverlay.peer import Peer

MTU = 1450
BODY = bytes((i * 7 + 3) & 0xFF for i in range(7000))
SRC = g.ip("198.18.0.2")


def super_frame(**kw) -> bytearray:
    kw.setdefault("partial", True)
    kw.setdefault("flags", 0x19)
    return g.tcp("198.19.2.7", "198.19.1.5", 40000, 5201, 0xFFFFF000, BODY, ident=0xFFFE, **kw)


def test_gso_write_has_the_mtu_derived_vnet_header(impl):
    e = engine(impl, "udp", offload=(True, False, False))
    e.set_tun_mtu(MTU)
    writes, _ = e.t.inbound_batch([(bytes(super_frame()), SRC, 0)])
    assert len(writes) == 1
    w = writes[0]
    assert struct.unpack_from("=BBHHHH", w) == (wire.F_NEEDS_CSUM, wire.GSO_TCPV4, 40, 1410, 20, 16)
    pkt = w[wire.VNET_HDR_LEN:]
    assert len(pkt) == 7040 and struct.unpack_from("!H", pkt, 2)[0] == 7040
    assert cs.checksum(pkt[:20]) == 0 and pkt[6] & 0x40          # DF kept
    assert struct.unpack_from("!H", pkt, 36)[0] == cs.fold(cs.pseudo_sum(pkt, 6, 7020))
    assert pkt[40:] == BODY and pkt[33] == 0x19
    c = e.counters()
    assert c["rx_resegmented"] == 1 and c["rx_csum_partial"] == 1 and c["rx_coalesced"] == 0
    segs = g.resegment(w)
    assert [len(s) for s in segs] == [1450] * 4 + [1400]


def test_packet_after_an_oversized_one_does_not_merge_into_it(impl):
    """The oversized item is closed: the next segment of the flow opens its own."""
    e = engine(impl, "udp", offload=(True, False, False))
    e.set_tun_mtu(MTU)
    big = super_frame(partial=False, flags=0x10)
    nxt = g.tcp("198.19.2.7", "198.19.1.5", 40000, 5201, (0xFFFFF000 + 7000) & 0xFFFFFFFF,
                BODY[:1410])
    writes, _ = e.t.inbound_batch([(bytes(big), SRC, 0), (bytes(nxt), SRC, 0)])
    assert [w[1] for w in writes] == [wire.GSO_TCPV4, wire.GSO_NONE]
    assert writes[1][wire.VNET_HDR_LEN:] == bytes(nxt)
    assert e.counters()["rx_resegmented"] == 1


@pytest.mark.parametrize("case", ["no_df", "udp", "bad_csum", "fits", "no_mtu"])
def test_left_as_today(impl, case):
    e = engine(impl, "udp", offload=(True, False, True))
    if case != "no_mtu":
        e.set_tun_mtu(7040 if case == "fits" else MTU)
    pkt = {"no_df": lambda: super_frame(df=False),
           "udp": lambda: g.udp("198.19.2.7", "198.19.1.5", 1, 2, BODY, partial=True),
           "bad_csum": lambda: super_frame(partial=False, bad_csum=True)}.get(case, super_frame)()
    writes, _ = e.t.inbound_batch([(bytes(pkt), SRC, 0)])
    assert len(writes) == 1 and writes[0][:wire.VNET_HDR_LEN] == bytes(10)
    assert len(writes[0]) == wire.VNET_HDR_LEN + len(pkt)
    assert e.counters()["rx_resegmented"] == 0


def test_set_tun_mtu_rejects_nonsense(impl):
    e = engine(impl, "udp")
    for bad in (-1, 65536):
        with pytest.raises(ValueError, match="TUN MTU"):
            e.set_tun_mtu(bad)


@contextlib.contextmanager
def plain_rig():
    """Loopback UDP socket pair (engine, peer) and a SEQPACKET pair as the TUN."""
    socks = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        app, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        socks += [app, dev]
        app.setblocking(False)
        yield socks
    finally:
        for s in socks:
            s.close()


def test_plain_path_splits_into_mtu_sized_segments(impl):
    with plain_rig() as (sock, peer_sock, app, dev):
        peer = Peer(ipaddress.IPv4Address("127.0.0.1"), peer_sock.getsockname()[1],
                    ipaddress.IPv4Network("198.19.2.0/24"))
        e = engine(impl, "udp", [peer])
        e.set_tun_mtu(MTU)
        try:
            peer_sock.sendto(bytes(super_frame()), sock.getsockname())
            done = 0
            for _ in range(200):        # loopback: there at once, bounded anyway
                done = e.core.udp_to_tun(sock.fileno(), dev.fileno())
                if done:
                    break
                time.sleep(0.005)
            segs = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    segs.append(app.recv(65536))
        finally:
            e.close()
    assert done == 1
    assert [len(s) for s in segs] == [1450] * 4 + [1400]
    for i, s in enumerate(segs):
        assert cs.checksum(s[:20]) == 0 and cs.l4_ok(s, 20, 6)
        assert struct.unpack_from("!HH", s, 2) == (len(s), (0xFFFE + i) & 0xFFFF)
        assert struct.unpack_from("!I", s, 24)[0] == (0xFFFFF000 + 1410 * i) & 0xFFFFFFFF
        assert s[33] == (0x19 if i == 4 else 0x10)      # FIN/PSH on the last only
        assert s[6] & 0x40
    assert b"".join(s[40:] for s in segs) == BODY
    c = e.counters()
    assert c["rx_resegmented"] == 1 and c["rx_packets"] == 1 and c["rx_csum_partial"] == 1
