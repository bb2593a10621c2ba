"""Differential tests of oversized received packets: a kernel vxlan sender's
super-frame (one inner TCP packet longer than our TUN's MTU, DF set,
checksum finished or left partial) must reach the TUN in a form the kernel
can forward: a GSO write with a vnet header, MTU-sized segments without.
Both twins must write the same bytes and count the same; re-segmenting a
GSO write (the kernel's job, pktgen.resegment) must give valid MTU-sized
segments carrying the original payload. Oversized UDP, DF-clear packets and
ones with a bad checksum stay as they were.

The plain path runs the real udp_to_tun over loopback UDP and a SEQPACKET
pair standing in for the TUN (test_io's rig)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import pktgen as g
from tests.support.iorig import drain_now, drain_udp, make, rig, send_all
from tests.support.twins import both, engine
from udpoverlay.dataplane import wire
from udpoverlay.dataplane._py import checksum as cs

PATTERN = bytes((i * 131 + 7) & 0xFF for i in range(70000))
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MTUS = [576, 1280, 1450, 1500, 9000]
SRC = g.ip("198.18.0.2")


def tcp_parts(pkt: bytes) -> tuple[int, bytes]:
    """(sequence number, payload) of an option-less-IP TCP packet."""
    l4 = (pkt[32] >> 4) * 4
    return struct.unpack_from("!I", pkt, 24)[0], pkt[20 + l4:]


def valid(pkt: bytes) -> bool:
    """IP header and L4 checksums of pkt verify."""
    ihl = (pkt[0] & 0x0F) * 4
    return cs.checksum(pkt[:ihl]) == 0 and cs.l4_ok(pkt, ihl, pkt[9])


@st.composite
def oversized(draw):
    """(mtu, inner packets): oversized TCP (finished or partial checksum,
    with or without TCP options, any flags), mixed with oversized UDP,
    DF-clear and bad-checksum packets and ordinary segments; one flow each,
    so nothing coalesces and every packet makes one write."""
    mtu = draw(st.sampled_from(MTUS))
    out = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["big"] * 4 + ["small", "udp", "nodf", "bad"]))
        n = draw(st.integers(1, 2 * mtu)) if kind == "small" else draw(st.integers(mtu, 20000))
        body = PATTERN[i * 97:i * 97 + n]
        seq = draw(st.integers(0, 2**32 - 1))
        partial = draw(st.booleans())
        if kind == "udp":
            pkt = g.udp("198.19.2.10", "198.19.1.5", 50000 + i, 5201, body, partial=partial)
        else:
            pkt = g.tcp("198.19.2.10", "198.19.1.5", 40000 + i, 5201, seq, body, ident=i,
                        flags=draw(st.sampled_from([0x10, 0x18, 0x19, 0x90, 0x11])),
                        opts=draw(st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)])),
                        partial=partial, bad_csum=kind == "bad", df=kind != "nodf")
        out.append(bytes(pkt))
    return mtu, out


def expected_big(pkt: bytes, mtu: int) -> bool:
    """The rule the twins implement, stated independently."""
    flags = (pkt[6] << 8) | pkt[7]
    return (len(pkt) > mtu and pkt[9] == 6 and pkt[0] == 0x45 and flags & 0x7FFF == 0x4000
            and (cs.l4_ok(pkt, 20, 6) or partial(pkt)))


def partial(pkt: bytes) -> bool:
    """The L4 checksum field holds the folded pseudo-header sum."""
    at = 36 if pkt[9] == 6 else 26
    return (struct.unpack_from("!H", pkt, at)[0]
            == cs.fold(cs.pseudo_sum(pkt, pkt[9], len(pkt) - 20)))


def finished(pkt: bytes) -> bytes:
    """pkt with its L4 checksum computed in full."""
    out = bytearray(pkt)
    g.l4_csum(out, 36 if pkt[9] == 6 else 26)
    return bytes(out)


def check_segments(segs: list[bytes], original: bytes, mtu: int) -> None:
    """Valid, MTU-sized, consecutive sequence numbers, the original payload."""
    assert len(segs) > 1
    seq0, payload = tcp_parts(finished(original))
    assert all(len(s) <= mtu and valid(s) for s in segs)
    assert [tcp_parts(s)[0] for s in segs] == [
        (seq0 + sum(len(tcp_parts(x)[1]) for x in segs[:i])) & 0xFFFFFFFF for i in range(len(segs))]
    assert b"".join(tcp_parts(s)[1] for s in segs) == payload
    assert [struct.unpack_from("!H", s, 4)[0] for s in segs] == [
        (struct.unpack_from("!H", original, 4)[0] + i) & 0xFFFF for i in range(len(segs))]


@SETTINGS
@given(oversized(), st.sampled_from([0, 1]), st.booleans())
def test_oversized_gso_writes_identical_and_resegment_to_mtu(case, mode, uso):
    mtu, inner = case
    py, cy = (engine(t, ("udp", "vxlan")[mode], offload=(True, False, uso)) for t in both())
    for e in (py, cy):
        e.set_tun_mtu(mtu)
    dgrams = [(g.vxlan(p) if mode else p, SRC, 0) for p in inner]
    got_py, got_cy = py.t.inbound_batch(dgrams), cy.t.inbound_batch(dgrams)
    assert got_py == got_cy
    assert py.counters() == cy.counters()
    writes = got_py[0]
    big = [expected_big(p, mtu) for p in inner]
    assert py.counters()["rx_resegmented"] == sum(big)
    assert len(writes) == len(inner)
    for w, p, b in zip(writes, inner, big):
        vnet = struct.unpack_from("=BBHHHH", w)
        if not b:
            assert vnet == (0, 0, 0, 0, 0, 0)
            assert w[10:] == p or w[10:] == finished(p)
            continue
        l4 = (p[32] >> 4) * 4
        assert vnet == (wire.F_NEEDS_CSUM, wire.GSO_TCPV4, 20 + l4, mtu - 20 - l4, 20, 16)
        check_segments(g.resegment(w), p, mtu)


def test_oversized_without_mtu_is_written_as_before():
    """set_tun_mtu never called (0): today's behaviour, nothing counted."""
    p = bytes(g.tcp("198.19.2.10", "198.19.1.5", 40000, 5201, 1, PATTERN[:7000], partial=True))
    py, cy = (engine(t, "udp", offload=(True, False, False)) for t in both())
    got_py, got_cy = py.t.inbound_batch([(p, SRC, 0)]), cy.t.inbound_batch([(p, SRC, 0)])
    assert got_py == got_cy and got_py[0] == [bytes(10) + finished(p)]
    assert py.counters() == cy.counters() and py.counters()["rx_resegmented"] == 0


def run_rx(twin, r, offload, mtu: int, dgrams):
    e = make(twin, r, "udp", offload)
    e.set_tun_mtu(mtu)
    try:
        send_all(r.a, dgrams, r.sock.getsockname())
        drain_udp(r.b, r.a)
        done = e.core.udp_to_tun(r.sock.fileno(), r.tun_dev.fileno())
        return done, drain_now(r.tun_app), e.counters()
    finally:
        e.close()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(oversized(), st.sampled_from(["plain", "vnet"]))
def test_oversized_real_udp_to_tun_identical(case, offload):
    """The real receive loops, plain (user-space split) and vnet (GSO write)."""
    mtu, inner = case
    with rig() as r:
        py, cy = (run_rx(t, r, None if offload == "plain" else (True, False, False), mtu,
                         [(p, 0) for p in inner]) for t in both())
    assert py == cy
    assert py[2]["rx_resegmented"] == sum(expected_big(p, mtu) for p in inner)
    if offload == "plain":
        writes = py[1]
        at = 0
        for p in inner:
            if expected_big(p, mtu):
                n = -(-(len(p) - 20 - (p[32] >> 4) * 4) // (mtu - 20 - (p[32] >> 4) * 4))
                check_segments(writes[at:at + n], p, mtu)
                at += n
            else:
                assert writes[at] in (p, finished(p))
                at += 1
        assert at == len(writes)
