"""Differential tests: the compiled twin and the pure-Python reference give
byte-identical outputs, verdicts and counters on random and malformed input,
one packet at a time (the I/O loops: test_io.py; offloads: test_offload.py)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import pktgen as g
from tests.support.pktgen import raw_ipv4 as ipv4
from tests.support.twins import both, engine

PEERS = [g.peer("198.18.0.2", 8285, "198.19.2.0/24"),
         g.peer("198.18.0.3", 8285, "198.19.3.0/24"),
         g.peer("198.18.0.4", 9000, "198.19.128.0/17"),
         g.peer("198.18.0.5", 8285, "198.19.128.0/25")]
MAC = bytes.fromhex("02aa00000001")
PEER_MAC = bytes.fromhex("02bb00000002")
SOURCES = [str(p.public_ip) for p in PEERS] + ["198.18.0.9"]
PORTS = [8285, 9000, 8472, 40000]


def engines(mode: int = 0):
    """One engine per twin; mode 1 = VXLAN (one peer's MAC unknown)."""
    peers = [g.peer(str(p.public_ip), p.port, str(p.subnet), PEER_MAC if mode and i else None)
             for i, p in enumerate(PEERS)]
    return [engine(t, ("udp", "vxlan")[mode], peers, mac=MAC) for t in both()]


def same_state(py, cy) -> None:
    assert py.counters() == cy.counters()
    assert py.peer_status() == cy.peer_status()


def vxlan_wrap(inner: bytes, sel: int) -> bytes:
    """Mostly-valid VXLAN frames around inner, with chosen header faults."""
    flags = 0 if sel == 1 else 0x08
    vni = 2 if sel == 2 else 1
    dst = {3: b"\xff" * 6, 4: PEER_MAC}.get(sel, MAC)
    etype = {5: b"\x08\x06", 6: b"\x86\xdd"}.get(sel, b"\x08\x00")
    if sel == 7:      # an ARP request for our VTEP address / a reply from a peer
        inner = (b"\0\x01\x08\x00\x06\x04\0" + bytes([1 + (len(inner) & 1)]) + PEER_MAC
                 + bytes([198, 19, 2, 0]) + bytes(6) + bytes([198, 19, 1, 0]) + inner[:4])
        etype = b"\x08\x06"
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0" + dst + PEER_MAC + etype + inner


overlay_ip = st.builds(lambda a, b: f"198.19.{a}.{b}", st.integers(0, 255), st.integers(0, 255))
any_ip = st.one_of(overlay_ip, st.ip_addresses(v=4).map(str))
packets = st.builds(
    ipv4, src=any_ip, dst=any_ip, ttl=st.integers(0, 255),
    proto=st.sampled_from([1, 6, 17, 47]),
    payload=st.one_of(st.binary(max_size=64),
                      st.sampled_from([b"\x08\0\0\0\0\0\0\0", b"\x03\x01\0\0\0\0\0\0",
                                       b"\x0b", b""])),
    frag=st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x00FF]),
    ihl=st.integers(5, 15), tos=st.integers(0, 255), ident=st.integers(0, 65535))


def mangle(data: bytes, cut: int, flip: int) -> bytes:
    """Truncate and/or corrupt one byte: the malformed-input cases."""
    b = bytearray(data[:cut] if cut < len(data) else data)
    if b and flip >= 0:
        b[flip % len(b)] ^= 0xA5
    return bytes(b)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(packets, st.integers(0, 200), st.integers(-3, 100)), max_size=12),
       st.sampled_from([0, 1]))
def test_outbound_identical(batch, mode):
    py, cy = engines(mode)
    for pkt, cut, flip in batch:
        if cut > 150:
            cut = len(pkt)          # most packets intact
        data = mangle(pkt, cut, flip if flip < 0 or cut < len(pkt) else -1)
        assert py.t.outbound(data) == cy.t.outbound(data)
    same_state(py, cy)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(packets, st.sampled_from(SOURCES), st.sampled_from(PORTS),
                          st.integers(0, 200), st.integers(-3, 100)), max_size=12))
def test_inbound_identical(batch):
    py, cy = engines()
    for pkt, src, sport, cut, flip in batch:
        if cut > 150:
            cut = len(pkt)
        data = mangle(pkt, cut, flip if flip < 0 or cut < len(pkt) else -1)
        assert py.t.inbound(data, g.ip(src), sport) == cy.t.inbound(data, g.ip(src), sport)
    same_state(py, cy)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(packets, st.sampled_from(SOURCES), st.sampled_from(PORTS),
                          st.integers(0, 8), st.integers(0, 200), st.integers(-3, 100)),
                max_size=12))
def test_vxlan_inbound_identical(batch):
    py, cy = engines(1)
    for pkt, src, sport, sel, cut, flip in batch:
        frame = vxlan_wrap(pkt, sel)
        if cut > 150:
            cut = len(frame)
        data = mangle(frame, cut, flip if flip < 0 or cut < len(frame) else -1)
        assert py.t.inbound(data, g.ip(src), sport) == cy.t.inbound(data, g.ip(src), sport)
    for p in py.peers:
        assert py.arp_request(p) == cy.arp_request(p)
    same_state(py, cy)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(["198.18.0.2", "198.18.0.9"]))
def test_random_bytes_identical(data, src):
    for mode in (0, 1):
        py, cy = engines(mode)
        assert py.t.outbound(data) == cy.t.outbound(data)
        assert py.t.inbound(data, g.ip(src)) == cy.t.inbound(data, g.ip(src))
        assert py.counters() == cy.counters()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFF), st.integers(8, 30)), max_size=20),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30))
def test_route_tables_identical(routes, addrs):
    peers = []
    for i, (net, length) in enumerate(routes):
        n = ipaddress.IPv4Network(((198 << 24) | net) & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
        n = ipaddress.IPv4Network(f"{n.network_address}/{length}", strict=False)
        peers.append(g.peer(f"198.18.{i // 256}.{i % 256}", 8285, str(n)))
    py, cy = engines()
    py.set_peers(peers)
    cy.set_peers(peers)
    for a in addrs:
        assert py.core.lookup(a) == cy.core.lookup(a)


@settings(max_examples=300, deadline=None)
@given(packets)
def test_flow_hash_identical(pkt):
    ref, comp = both()
    assert ref.testing.flow_hash(pkt) == comp.testing.flow_hash(pkt)


def test_flow_hash_follows_the_flow():
    ref = both()[0]
    a = ipv4("198.19.1.5", "198.19.2.7", 64, 6, b"\x10\x00\x00\x50" + b"x" * 16)
    b = ipv4("198.19.1.5", "198.19.2.7", 30, 6, b"\x10\x00\x00\x50" + b"y" * 40)
    c = ipv4("198.19.1.5", "198.19.2.7", 64, 6, b"\x10\x01\x00\x50" + b"x" * 16)
    assert ref.testing.flow_hash(a) == ref.testing.flow_hash(b)        # same 5-tuple, other payload/TTL
    assert ref.testing.flow_hash(a) != ref.testing.flow_hash(c)        # another source port
