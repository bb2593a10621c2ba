"""Differential test of the keepalive verdict (issue 13): short datagrams
(0..24 bytes, around the IPv4 header's 20 and VXLAN's 22) mixed with real
packets, from known and unknown addresses and ports, udp and vxlan, plain
and offloaded (GRO tails included). The twins must agree on every verdict,
write, counter and peer status."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import pktgen as g
from tests.support.twins import both, engine

SOURCES = [("198.18.0.2", 8285), ("198.18.0.2", 8286), ("198.18.0.4", 9000),
           ("198.18.0.9", 8285)]
PKT = bytes(g.udp("198.19.2.7", "198.19.1.5", 4000, 5000, b"payload!"))

shorts = st.binary(max_size=24)
datagrams = st.lists(st.tuples(st.sampled_from(SOURCES), st.one_of(shorts, st.just(PKT))),
                     max_size=20)


def frame(mode: int, data: bytes) -> bytes:
    return g.vxlan(data, g.MAC) if mode and data == PKT else data


@settings(max_examples=200, deadline=None)
@given(datagrams, st.sampled_from([0, 1]))
def test_short_datagrams_identical(dgrams, mode):
    py, cy = (engine(t, ("udp", "vxlan")[mode]) for t in both())
    for (ip, port), data in dgrams:
        d = frame(mode, data)
        assert py.t.inbound(d, g.ip(ip), port) == cy.t.inbound(d, g.ip(ip), port)
    assert py.counters() == cy.counters()
    assert py.peer_status() == cy.peer_status()


@settings(max_examples=100, deadline=None)
@given(datagrams, st.sampled_from([0, 1]), st.integers(0, 3))
def test_short_gro_tails_identical(dgrams, mode, segs):
    py, cy = (engine(t, ("udp", "vxlan")[mode], offload=(True, True, True)) for t in both())
    items = []
    for (ip, port), data in dgrams:
        d, tail = frame(mode, PKT), frame(mode, data)
        items.append((d * segs + tail, g.ip(ip), len(d) if segs else 0, port))
    assert py.t.inbound_batch(items) == cy.t.inbound_batch(items)
    assert py.counters() == cy.counters()
    assert py.peer_status() == cy.peer_status()
