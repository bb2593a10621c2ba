"""Differential tests of the offload pipeline: the compiled engine and the
pure-Python reference split TUN super-packets, pack UDP GSO messages and
coalesce received segments into TUN writes byte for byte the same, counters
included, on valid, random and malformed input."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import pktgen as g
from tests.support.twins import both, engine
from udpoverlay.dataplane._py import checksum as cs
from udpoverlay.dataplane._py import offload as off

PATTERN = bytes(random.Random(7).getrandbits(8) for _ in range(70000))
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def engines(mode: int, gso: bool, uso: bool, tx_fds: int = 0):
    out = []
    for t in both():
        e = engine(t, ("udp", "vxlan")[mode], offload=(True, gso, uso))
        if tx_fds:      # never written to: the pipeline entry points do no I/O
            e.set_tx_fds(list(range(100, 100 + tx_fds)))
        out.append(e)
    return out


def data(n: int, at: int) -> bytes:
    return PATTERN[at:at + n]


def assert_same(py, cy, got_py, got_cy):
    assert got_py == got_cy
    assert py.counters() == cy.counters()
    assert py.peer_status() == cy.peer_status()


config = st.fixed_dictionaries({
    "mode": st.sampled_from([0, 1]), "gso": st.booleans(), "uso": st.booleans(),
    "tx_fds": st.sampled_from([0, 0, 3])})
dst_ip = st.sampled_from(["198.19.2.5", "198.19.3.7", "198.19.200.1", "198.19.9.9"])
ip_opts = st.sampled_from([b"", b"", b"\x01\x01\x01\x00"])
tcp_opts = st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8)), b"\x01" * 40])
size = st.one_of(st.integers(0, 9000), st.sampled_from([60000, 65400]))


@st.composite
def tcp_super(draw):
    ipo, opts = draw(ip_opts), draw(tcp_opts)
    n = min(draw(size), 65535 - 40 - len(ipo) - len(opts))
    pkt = g.tcp("198.19.1.5", draw(dst_ip), draw(st.integers(1, 65535)), 5201,
                draw(st.integers(0, 2**32 - 1)), data(n, draw(st.integers(0, 999))),
                flags=draw(st.sampled_from([0x10, 0x18, 0x19, 0x11, 0x90, 0x98, 0x02])),
                opts=opts, partial=True, ttl=draw(st.sampled_from([64, 64, 2, 1])),
                ident=draw(st.integers(0, 65535)), ip_opts=ipo)
    gso = draw(st.one_of(st.integers(1, 1460), st.sampled_from([1448, 1420, 1400])))
    return g.tun_read(pkt, draw(st.sampled_from([1, 1, 0x81])), gso)


@st.composite
def udp_super(draw):
    n = min(draw(size), 65535 - 28)
    pkt = g.udp("198.19.1.5", draw(dst_ip), draw(st.integers(1, 65535)), 5201,
                data(n, draw(st.integers(0, 999))), partial=True,
                ident=draw(st.integers(0, 65535)), ip_opts=draw(ip_opts))
    return g.tun_read(pkt, 5, draw(st.integers(1, 1472)))


@st.composite
def single(draw):
    """A plain packet as the TUN gives it: NEEDS_CSUM (offsets right or
    wrong) or a finished checksum; TCP, UDP or ICMP."""
    kind = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    body = data(draw(st.integers(0, 1400)), draw(st.integers(0, 999)))
    dst = draw(dst_ip)
    if kind == "tcp":
        pkt = g.tcp("198.19.1.5", dst, 40000, 5201, 1, body, partial=True)
    elif kind == "udp":
        pkt = g.udp("198.19.1.5", dst, 40000, 5201, body, partial=True)
    else:
        pkt = g.ipv4("198.19.1.5", dst, 1, b"\x08\0\0\0\0\0\0\0" + body)
    flags = draw(st.sampled_from([0, 1]))
    start = draw(st.one_of(st.none(), st.integers(0, 1600)))
    offset = draw(st.one_of(st.none(), st.integers(0, 40)))
    if kind == "icmp" and start is None:
        start, offset = 20, 2
    return g.tun_read(pkt, 0, 0, flags=flags, csum_start=start, csum_offset=offset)


@st.composite
def malformed(draw):
    """Valid packets behind a random vnet header, random bytes, short reads."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        base = bytes(draw(st.one_of(tcp_super(), udp_super())))[10:]
        hdr = off.pack_vnet(draw(st.integers(0, 255)), draw(st.integers(0, 255)),
                            draw(st.integers(0, 65535)), draw(st.integers(0, 2000)),
                            draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))
        cut = draw(st.integers(0, len(base)))
        return hdr + base[:cut] if draw(st.booleans()) else hdr + base
    if choice == 1:
        return draw(st.binary(max_size=200))
    return draw(st.binary(max_size=9))


reads = st.lists(st.one_of(tcp_super(), udp_super(), single(), malformed()), min_size=1,
                 max_size=10)


@SETTINGS
@given(config, reads)
def test_tx_pipeline_identical(cfg, bufs):
    py, cy = engines(**cfg)
    assert_same(py, cy, py.t.outbound_batch(bufs), cy.t.outbound_batch(bufs))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([0, 1]), st.booleans(), st.integers(1, 3))
def test_tx_batches_cut_identically(mode, gso, per_read):
    """Many reads: batches end after BATCH reads or when the message slots
    run short (small gso_size, no GSO), the same way in both."""
    bufs = [g.tun_read(g.tcp("198.19.1.5", "198.19.2.5", 40000 + i % per_read, 5201,
                             i * 9000, data(9000, i), partial=True), 1, 100 if i % 2 else 1400)
            for i in range(150)]
    py, cy = engines(mode, gso, False)
    assert_same(py, cy, py.t.outbound_batch(bufs), cy.t.outbound_batch(bufs))


# -- RX -----------------------------------------------------------------------
@st.composite
def flow_segments(draw):
    """Inner packets from peer 198.18.0.2's subnet: a few TCP and UDP flows
    with mostly adjacent segments, plus gaps, pushes, pure ACKs, bad
    checksums, changed TTL/TOS/options, fragments and ICMP."""
    n = draw(st.integers(1, 90))
    seqs = {f: draw(st.integers(0, 2**32 - 1)) for f in range(3)}
    out = []
    mss = draw(st.sampled_from([1448, 1420, 536, 100]))
    for i in range(n):
        kind = draw(st.sampled_from(["tcp"] * 6 + ["udp"] * 2 + ["icmp", "frag"]))
        f = draw(st.integers(0, 2))
        src = "198.19.2.%d" % (10 + f)
        variant = draw(st.integers(0, 30))
        if kind == "tcp":
            plen = mss if variant < 20 else draw(st.integers(0, mss))
            flags = {20: 0x18, 21: 0x19, 22: 0x12, 23: 0x10}.get(variant, 0x10)
            if variant == 24:
                seqs[f] += 7        # a gap
            pkt = g.tcp(src, "198.19.1.5", 40000 + f, 5201, seqs[f], data(plen, i * 13),
                        flags=flags, ack=1 + (variant == 25),
                        opts=b"\x01\x01\x08\x0a" + (b"\0" * 7 + bytes([variant == 26])),
                        bad_csum=variant == 27, ttl=63 - (variant == 28),
                        tos=4 * (variant == 29), ident=i, ip_opts=b"\x01" * 4 * (variant == 30))
            seqs[f] = (seqs[f] + plen) & 0xFFFFFFFF
        elif kind == "udp":
            plen = mss if variant < 22 else draw(st.integers(0, mss))
            pkt = g.udp(src, "198.19.1.5", 50000 + f, 5201, data(plen, i * 7),
                        no_csum=variant == 23, bad_csum=variant == 24,
                        ttl=63 - (variant == 25), ident=i)
        elif kind == "icmp":
            pkt = g.ipv4(src, "198.19.1.5", 1, b"\x08\0\xf7\xff\0\0\0\0")
        else:
            pkt = g.ipv4(src, "198.19.1.5", 17, data(64, i), df=False, mf=True)
        out.append(bytes(pkt))
    return out


@st.composite
def rx_batch(draw):
    mode = draw(st.sampled_from([0, 1]))
    inner = draw(flow_segments())
    wire = [g.vxlan(p) if mode else p for p in inner]
    src = g.ip("198.18.0.2")
    if draw(st.booleans()):
        dgrams = [(d, src, gro) for d, gro in g.gro_datagrams(wire)]
    else:
        dgrams = [(d, src, 0) for d in wire]
    extra = draw(st.lists(st.tuples(st.integers(0, len(dgrams)), st.sampled_from([
        (b"", src, 0), (b"\x45" + bytes(30), src, 0), (wire[0], g.ip("198.18.0.9"), 0),
        (wire[0], g.ip("198.18.0.3"), 0), (wire[0][:-3], src, 0),
        (b"".join(wire[:3]), src, len(wire[0]) + 5)])), max_size=4))
    for at, d in extra:
        dgrams.insert(at, d)
    return mode, dgrams


@SETTINGS
@given(rx_batch(), st.booleans())
def test_rx_pipeline_identical(batch, uso):
    mode, dgrams = batch
    py, cy = engines(mode, True, uso)
    assert_same(py, cy, py.t.inbound_batch(dgrams), cy.t.inbound_batch(dgrams))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.sampled_from([g.ip("198.18.0.2"), g.ip("198.18.0.9")]),
                          st.integers(0, 80)), max_size=6), st.sampled_from([0, 1]))
def test_rx_random_bytes_identical(dgrams, mode):
    py, cy = engines(mode, True, True)
    assert_same(py, cy, py.t.inbound_batch(dgrams), cy.t.inbound_batch(dgrams))


def test_rx_more_than_max_items_flushes_in_order():
    """300 unmergeable packets (more than MAX_ITEMS open items) and 130
    datagrams (more than one recvmmsg batch) come out identical and in order."""
    inner = [bytes(g.ipv4("198.19.2.9", "198.19.1.5", 1, b"\x08\0\xf7\xff" + i.to_bytes(4, "big")))
             for i in range(300)]
    dgrams = [(b"".join(inner[i:i + 3]), g.ip("198.18.0.2"), len(inner[0])) for i in range(0, 300, 3)]
    dgrams += [(inner[0], g.ip("198.18.0.2"), 0)] * 30
    py, cy = engines(0, True, True)
    got_py, got_cy = py.t.inbound_batch(dgrams), cy.t.inbound_batch(dgrams)
    assert_same(py, cy, got_py, got_cy)
    writes = got_cy[0]
    assert [w[10:] for w in writes[:300]] == inner
    assert len(writes) == 330


def test_checksum_matches_rfc1071_on_odd_and_long_input():
    ref, comp = both()
    for n in (0, 1, 2, 3, 5, 7, 8, 9, 63, 64, 65, 1499, 65535):
        d = data(n, n % 900) if n < 69000 else b""
        assert comp.testing.checksum(d) == ref.testing.checksum(d) == cs.checksum(d)
    assert cs.checksum(bytes.fromhex("450000730000400040110000c0a80001c0a800c7")) == 0xB861


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=9000), st.integers(0, 300))
def test_checksum_identical_around_the_long_buffer_path(data, extra):
    """Buffers from 256 bytes take csum.h's -O3/AVX2 loop: same sums as the
    reference on either side of that length, at any length mod 4."""
    ref, comp = both()
    for d in (data, data[:256 + extra % 8], data[:255], bytes(extra) + data):
        assert comp.testing.checksum(d) == ref.testing.checksum(d)
