"""What splitting and coalescing must do, checked against an independent
oracle (scapy recomputes every checksum) on both implementations: segments
of a TSO/USO super-packet are valid packets that carry the payload in order,
GSO messages are what UDP_SEGMENT expects, and coalescing obeys GRO's rules
and is undone exactly by the kernel's segmentation."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import pktgen as g
from tests.support import twins
from tests.support.requirements import require
from udpoverlay.dataplane import wire
from udpoverlay.dataplane._py import offload as off

BODY = bytes((i * 31 + 7) & 0xFF for i in range(200000))   # 130 full segments
SRC = g.ip("198.18.0.2")


def engine(impl, mode=0, gso=True, uso=True):
    """An engine with offloads on (the pipeline entry points are its core's)."""
    return twins.engine(impl, ("udp", "vxlan")[mode], offload=(True, gso, uso))


def scapy_ip():
    try:
        from scapy.layers.inet import IP
    except ImportError:  # pragma: no cover
        require(False, "needs scapy")
    return IP


def checksums_valid(seg: bytes) -> bool:
    """scapy rebuilds the packet with fresh checksums: equal bytes = valid."""
    IP = scapy_ip()
    p = IP(seg)
    del p.chksum
    del p.payload.chksum
    return bytes(p) == seg


@pytest.mark.parametrize("mode", [0, 1], ids=["udp", "vxlan"])
@pytest.mark.parametrize("n, mss", [(64000, 1448), (1448 * 3, 1448), (1000, 1448), (5000, 536)])
def test_tso_split_gives_valid_segments_carrying_the_payload(impl, mode, n, mss):
    IP = scapy_ip()
    body = BODY[:n]
    pkt = g.tcp("198.19.1.5", "198.19.2.5", 40000, 5201, 2**32 - 3000, body, flags=0x19 | 0x80,
                opts=b"\x01\x01\x08\x0a" + bytes(8), partial=True, ident=65534)
    e = engine(impl, mode)
    msgs, writes = e.t.outbound_batch([g.tun_read(pkt, 1, mss)])
    assert writes == []
    room = 22 if mode else 0
    segs = []
    for sock, ip, port, gso, payload, nseg in msgs:
        assert (sock, ip, port) == (-1, SRC, 8285)
        assert nseg <= 64 and len(payload) <= 65507
        step = gso or len(payload)
        parts = [payload[i:i + step] for i in range(0, len(payload), step)]
        assert len(parts) == nseg and all(len(p) == step for p in parts[:-1])
        segs += [p[room:] for p in parts]
        if mode:
            assert all(p[:8] == b"\x08\0\0\0\0\0\x01\0" and p[8:14] == g.PEER_MAC for p in parts)
    expect = max(1, -(-n // mss))
    assert len(segs) == expect
    assert e.counters()["tx_packets"] == expect
    assert e.counters()["tx_super_packets"] == (1 if expect > 1 else 0)
    data = b""
    for i, seg in enumerate(segs):
        assert checksums_valid(seg), i
        p = IP(seg)
        assert p.ttl == 63 and p.id == (65534 + i) & 0xFFFF and p.len == len(seg)
        assert p.payload.seq == (2**32 - 3000 + i * mss) & 0xFFFFFFFF
        last, first = i == len(segs) - 1, i == 0
        assert bool(p.payload.flags & 0x01) == last      # FIN
        assert bool(p.payload.flags & 0x08) == last      # PSH
        assert bool(p.payload.flags & 0x80) == first     # CWR
        assert len(bytes(p.payload.payload)) <= mss
        data += bytes(p.payload.payload)
    assert data == body


def test_uso_split_and_needs_csum_completion(impl):
    IP = scapy_ip()
    body = BODY[:4800]
    e = engine(impl)
    super_udp = g.tun_read(g.udp("198.19.1.5", "198.19.2.5", 40000, 5201, body, partial=True), 5, 1200)
    plain_tcp = g.tun_read(g.tcp("198.19.1.5", "198.19.3.5", 40000, 5201, 9, b"ack", partial=True))
    msgs, _ = e.t.outbound_batch([super_udp, plain_tcp])
    assert [(m[1], m[3], m[5]) for m in msgs] == [(SRC, 1228, 4), (g.ip("198.18.0.3"), 0, 1)]
    segs = [msgs[0][4][i:i + 1228] for i in range(0, 4912, 1228)] + [msgs[1][4]]
    assert all(checksums_valid(s) for s in segs)
    assert b"".join(bytes(IP(s).payload.payload) for s in segs[:4]) == body
    assert bytes(IP(segs[4]).payload.payload) == b"ack"


def test_gso_packs_small_packets_of_one_peer_and_keeps_order(impl):
    """Separate reads of equal size to one peer share a UDP_SEGMENT message;
    a shorter one closes it; another peer gets its own message."""
    e = engine(impl)
    reads = [g.tun_read(g.udp("198.19.1.5", dst, 40000, 5201, BODY[i:i + size], partial=True))
             for i, (dst, size) in enumerate([("198.19.2.5", 100)] * 3 + [("198.19.3.5", 100)]
                                             + [("198.19.2.5", 50), ("198.19.2.5", 100)])]
    msgs, _ = e.t.outbound_batch(reads)
    assert [(m[1], m[3], m[5]) for m in msgs] == [
        (SRC, 128, 4), (g.ip("198.18.0.3"), 0, 1), (SRC, 0, 1)]
    e_plain = engine(impl, gso=False)
    assert [m[5] for m in e_plain.t.outbound_batch(reads)[0]] == [1] * 6


def test_bad_vnet_headers_are_counted_not_raised(impl):
    e = engine(impl)
    pkt = g.tcp("198.19.1.5", "198.19.2.5", 40000, 5201, 1, BODY[:3000], partial=True)
    bad = [g.tun_read(pkt, 1, 0),                       # gso_size 0
           g.tun_read(pkt, 5, 1000),                    # UDP GSO on a TCP packet
           g.tun_read(pkt, 3, 1000),                    # UFO: never enabled
           g.tun_read(pkt, 1, 5),                       # 600 segments: more than MAX_SPLIT
           g.tun_read(pkt, 0, 0, csum_start=3030, csum_offset=16),  # past the end
           b"\x01\x01"]
    msgs, _ = e.t.outbound_batch(bad)
    assert msgs == []
    c = e.counters()
    assert (c["tx_drop_bad_gso"], c["tx_drop_too_short"], c["tx_packets"]) == (5, 1, 0)


# -- coalescing --------------------------------------------------------------------
def stream(n, mss=1448, seq=1000, **kw):
    out = []
    for i in range(n):
        out.append(bytes(g.tcp("198.19.2.10", "198.19.1.5", 40000, 5201, seq, BODY[i * mss:(i + 1) * mss],
                               opts=b"\x01\x01\x08\x0a" + bytes(8), ident=i, **kw)))
        seq += mss
    return out


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 130), st.sampled_from([1448, 1000, 88]), st.integers(0, 2**32 - 1),
       st.booleans(), st.sampled_from([0, 1]))
def test_coalesce_then_kernel_segmentation_is_identity(impl, n, mss, seq, gro, mode):
    """Adjacent segments of one flow become GSO writes that the kernel's
    segmentation (the reference splitter) turns back into the same packets."""
    e = engine(impl, mode)
    segs = stream(n, mss, seq)
    frames = [g.vxlan(s) if mode else s for s in segs]
    dgrams = ([(d, SRC, gs) for d, gs in g.gro_datagrams(frames)] if gro
              else [(d, SRC, 0) for d in frames])
    writes, replies = e.t.inbound_batch(dgrams)
    assert replies == []
    back = [s for w in writes for s in g.resegment(w)]
    assert back == segs
    # 64 KB per write at most; merges as long as they fit
    per_write = min(64, 65535 // mss if mss * 64 > 65535 else 64)
    assert len(writes) <= -(-n // per_write) + (len(dgrams) // 64) + 1
    c = e.counters()
    assert c["rx_coalesced"] == n - len(writes)
    assert c["rx_packets"] == n and c["rx_csum_bad"] == 0


def coalesce_rules_run(impl, mode):
    """The rule sequence of test_coalesce_rules* through an engine in mode:
    (write kinds, counters, the first three segments written)."""
    e = engine(impl, mode)
    s = stream(8)
    bad = bytearray(s[3])
    bad[-1] ^= 0xFF                                         # checksum no longer verifies
    psh = bytes(g.tcp("198.19.2.10", "198.19.1.5", 40000, 5201, 1000 + 2 * 1448, BODY[2 * 1448:3 * 1448],
                      flags=0x18, opts=b"\x01\x01\x08\x0a" + bytes(8), ident=2))
    ttl = bytes(g.tcp("198.19.2.10", "198.19.1.5", 40000, 5201, 1000 + 5 * 1448, BODY[5 * 1448:6 * 1448],
                      opts=b"\x01\x01\x08\x0a" + bytes(8), ident=5, ttl=9))
    seq = [s[0], s[1], psh, bytes(bad), s[4], ttl, s[6], s[7]]
    wrap = g.vxlan if mode else bytes
    writes, _ = e.t.inbound_batch([(wrap(p), SRC, 0) for p in seq])
    kinds = [(off.parse_vnet(w)[1], len(g.resegment(w))) for w in writes]
    return kinds, e.counters(), [s for w in writes for s in g.resegment(w)][:3], seq


def test_coalesce_rules(impl):
    """vxlan (no outer checksum from kernel peers): every segment verified."""
    kinds, c, first, seq = coalesce_rules_run(impl, 1)
    # [0,1,psh] merge and close; the bad one goes alone (the kernel drops it);
    # s[4] follows a gap-free seq but its item's predecessor was bad: alone;
    # TTL differs: alone; 6 and 7 do not follow the TTL item: new item of 2
    assert kinds == [(1, 3), (0, 1), (0, 1), (0, 1), (1, 2)]
    assert c["rx_csum_bad"] == 1
    assert first == seq[:3]


def test_coalesce_rules_trust_the_outer_checksum_in_udp_mode(impl):
    """udp mode: the kernel verified the outer UDP checksum over the whole
    inner packet, so segments are merged without a second pass: the one with
    a bad inner checksum (which only its sender could have made) is merged
    like the rest and nothing is counted bad."""
    kinds, c, first, seq = coalesce_rules_run(impl, 0)
    assert kinds == [(1, 3), (1, 2), (0, 1), (1, 2)]
    assert c["rx_csum_bad"] == 0 and first == seq[:3]


def test_udp_coalesced_only_when_tun_takes_uso(impl):
    dgrams = [(bytes(g.udp("198.19.2.10", "198.19.1.5", 50000, 5201, BODY[i * 64:(i + 1) * 64], ident=i)),
               SRC, 0) for i in range(40)]
    with_uso, _ = engine(impl, uso=True).t.inbound_batch(dgrams)
    without, _ = engine(impl, uso=False).t.inbound_batch(dgrams)
    assert len(with_uso) == 1 and off.parse_vnet(with_uso[0])[1] == wire.GSO_UDP_L4
    assert [p for w in with_uso for p in g.resegment(w)] == [d for d, _, _ in dgrams]
    assert [w[10:] for w in without] == [d for d, _, _ in dgrams]


def test_spoofed_and_unknown_segments_inside_a_gro_datagram_are_dropped(impl):
    e = engine(impl)
    good = stream(3)
    spoof = bytes(g.tcp("198.19.3.10", "198.19.1.5", 40000, 5201, 1000 + 3 * 1448, BODY[:1448],
                        opts=b"\x01\x01\x08\x0a" + bytes(8)))
    dgram = b"".join(good + [spoof])
    writes, _ = e.t.inbound_batch([(dgram, SRC, len(good[0])),
                                 (dgram, g.ip("198.18.0.9"), len(good[0]))])
    assert [p for w in writes for p in g.resegment(w)] == good
    c = e.counters()
    assert (c["rx_drop_spoofed_src"], c["rx_drop_unknown_peer"], c["rx_packets"]) == (1, 4, 3)
