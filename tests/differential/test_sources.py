"""Differential tests of the hardening rules: peer tables where public IPs
and ports repeat (several subnets per IP, several daemons per host), the
udp-mode port rule, MAC learning and re-learning from ARP and data frames,
partial inner checksums (with and without offloads) and table rebuilds
(counter adoption, learned MACs across swaps). The twins must agree on every
verdict, byte, counter and peer status."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import pktgen as g
from tests.support.twins import both, engine

IPS = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
PORTS = [8285, 8472, 9000]
NETS = ["198.19.2.0/24", "198.19.3.0/24", "198.19.2.0/25", "198.19.4.0/24",
        "198.19.0.0/16", "198.19.2.128/25"]
MACS = [None, bytes.fromhex("02bb00000002"), bytes.fromhex("02bb00000003")]
SRC_MACS = [bytes.fromhex(h) for h in ("02bb00000002", "02cc00000003", "03cc00000003",
                                        "02dd00000004")]
INNER_SRCS = ["198.19.2.7", "198.19.2.200", "198.19.3.1", "198.19.4.4", "198.19.9.9"]

peer_specs = st.lists(st.tuples(st.sampled_from(IPS), st.sampled_from(PORTS),
                                st.sampled_from(NETS), st.sampled_from(MACS)),
                      min_size=1, max_size=8)


def peers_of(specs):
    return [g.peer(ip, port, net, mac) for ip, port, net, mac in specs]


def inner(src: str, proto: int, how: str, n: int) -> bytes:
    body = bytes((i * 7 + n) & 0xFF for i in range(n))
    kw = {"partial": how == "partial", "bad_csum": how == "bad"}
    if proto == 6:
        return bytes(g.tcp(src, "198.19.1.5", 40000, 5201, 1, body, **kw))
    return bytes(g.udp(src, "198.19.1.5", 40000, 5201, body, **kw))


def arp(sha: bytes, spa_net: str, op: int) -> bytes:
    spa = bytes(int(x) for x in spa_net.split("/")[0].split("."))
    body = (b"\0\x01\x08\x00\x06\x04\0" + bytes([op]) + sha + spa + bytes(6)
            + bytes([198, 19, 1, 0]))
    return g.vxlan(b"")[:8] + b"\xff" * 6 + sha + b"\x08\x06" + body


def frame(mode: int, kind: int, src_mac: bytes, inner_pkt: bytes, net: str) -> bytes:
    if mode == 0:
        return inner_pkt
    if kind == 0:
        return arp(src_mac, net, 1 + (len(inner_pkt) & 1))
    return g.vxlan(inner_pkt)[:14] + src_mac + g.vxlan(inner_pkt)[20:]


datagrams = st.lists(st.tuples(
    st.sampled_from(IPS + ["198.18.0.9"]), st.sampled_from(PORTS + [40000]),
    st.integers(0, 3), st.sampled_from(SRC_MACS), st.sampled_from(INNER_SRCS),
    st.sampled_from([6, 17]), st.sampled_from(["good", "partial", "bad"]),
    st.integers(0, 300), st.sampled_from(NETS)), max_size=16)


def same(py, cy) -> None:
    assert py.counters() == cy.counters()
    assert py.peer_status() == cy.peer_status()


@settings(max_examples=300, deadline=None)
@given(peer_specs, datagrams, st.sampled_from([0, 1]))
def test_inbound_with_shared_ips_identical(specs, dgrams, mode):
    py, cy = (engine(t, ("udp", "vxlan")[mode], peers_of(specs)) for t in both())
    for ip, port, kind, mac, src, proto, how, n, net in dgrams:
        data = frame(mode, kind, mac, inner(src, proto, how, n), net)
        assert py.t.inbound(data, g.ip(ip), port) == cy.t.inbound(data, g.ip(ip), port)
    same(py, cy)


@settings(max_examples=150, deadline=None)
@given(peer_specs, datagrams, st.sampled_from([0, 1]), st.booleans(), st.integers(0, 4))
def test_offload_rx_with_shared_ips_identical(specs, dgrams, mode, uso, gro):
    offload = (True, uso, uso)
    py, cy = (engine(t, ("udp", "vxlan")[mode], peers_of(specs), offload=offload)
              for t in both())
    items = []
    for ip, port, kind, mac, src, proto, how, n, net in dgrams:
        data = frame(mode, kind, mac, inner(src, proto, how, n), net)
        # sometimes a GRO datagram of equal segments
        items.append((data * gro if gro > 1 else data, g.ip(ip), len(data) if gro > 1 else 0,
                      port))
    assert py.t.inbound_batch(items) == cy.t.inbound_batch(items)
    same(py, cy)


@settings(max_examples=200, deadline=None)
@given(st.lists(peer_specs, min_size=1, max_size=5), datagrams,
       st.lists(st.integers(0, 2**32 - 1), max_size=10))
def test_table_rebuilds_identical(tables, dgrams, addrs):
    """Swaps keep counters and learned MACs alike; lookups agree."""
    py, cy = (engine(t, "vxlan", peers_of(tables[0])) for t in both())
    for specs in tables:
        py.set_peers(peers_of(specs))
        cy.set_peers(peers_of(specs))
        for ip, port, kind, mac, src, proto, how, n, net in dgrams[:4]:
            data = frame(1, kind, mac, inner(src, proto, how, n), net)
            py.t.inbound(data, g.ip(ip), port)
            cy.t.inbound(data, g.ip(ip), port)
        pkt = bytes(g.udp("198.19.1.5", "198.19.2.9", 1, 2, b"x"))
        assert py.t.outbound(pkt) == cy.t.outbound(pkt)
        same(py, cy)
        for a in addrs:
            assert py.core.lookup(a) == cy.core.lookup(a)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535),
                          st.integers(0, 2**32 - 1), st.integers(0, 40),
                          st.one_of(st.none(), st.binary(min_size=5, max_size=7))),
                max_size=6))
def test_bad_specs_same_errors(specs):
    """The cores' own checks (the facade validates first) fail alike."""
    errs = []
    for t in both():
        e = engine(t, "vxlan", [])
        try:
            e.core.set_peers(specs)
            errs.append(None)
        except ValueError as exc:
            errs.append(str(exc))
    assert errs[0] == errs[1]


def test_packed_table_of_partial_records_same_error():
    errs = []
    for t in both():
        e = engine(t, "vxlan", [])
        try:
            e.core.set_peers_packed(bytes(17))
        except ValueError as exc:
            errs.append(str(exc))
    assert errs == ["peer table: not a whole number of records"] * 2
