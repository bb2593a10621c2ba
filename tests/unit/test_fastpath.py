"""Fast path behaviour, run against both implementations (reference, compiled)."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings, strategies as st

from udpoverlay import _fastpath_py
from tests.unit.test_fastpath_diff import ipv4

try:
    from udpoverlay import _fastpath_c
except ImportError:
    _fastpath_c = None

IMPLS = [pytest.param(_fastpath_py, id="python"),
         pytest.param(_fastpath_c, id="cython",
                      marks=pytest.mark.skipif(_fastpath_c is None, reason="not built"))]


@pytest.fixture(params=IMPLS)
def mod(request):
    return request.param


def make(mod, peers=(("198.18.0.2", 8285, "198.19.2.0/24", None),)):
    e = mod.Engine(mod.MODE_UDP, "198.19.1.0", "198.19.1.0/24", "198.19.0.0/16")
    e.set_peers(list(peers))
    return e


def naive_lookup(peers, addr):
    """The oracle: scan every route, keep the longest match (first on ties)."""
    best, best_len = -1, -1
    for i, (_ip, _port, subnet, _mac) in enumerate(peers):
        n = ipaddress.IPv4Network(subnet)
        if int(n.network_address) == addr & int(n.netmask) and n.prefixlen > best_len:
            best, best_len = i, n.prefixlen
    return best


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.data())
def test_lookup_matches_naive_oracle(seed, data):
    rnd = random.Random(seed)
    peers = []
    for i in range(rnd.randint(0, 40)):
        length = rnd.choice([0, 8, 12, 16, 20, 24, 24, 24, 28, 32])
        base = (198 << 24) | (rnd.getrandbits(24) if rnd.random() < 0.8 else 0)
        net = ipaddress.IPv4Network((base, length), strict=False)
        peers.append((f"198.18.{i // 200}.{i % 200 + 1}", 8285, str(net), None))
    for impl in (m for m in (_fastpath_py, _fastpath_c) if m is not None):
        e = make(impl, peers)
        for _ in range(50):
            addr = (198 << 24) | rnd.getrandbits(24) if rnd.random() < 0.9 else rnd.getrandbits(32)
            assert e.lookup(addr) == naive_lookup(peers, addr)


def test_forward_decrements_ttl_and_keeps_checksum_valid(mod):
    e = make(mod)
    pkt = ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"hello")
    v, idx, payload, reply = e.outbound(pkt)
    assert (v, idx, reply) == (mod.OK, 0, b"")
    assert payload[8] == 63
    assert _fastpath_py.checksum(payload[:20]) == 0        # header checksum still valid
    assert payload[:8] == pkt[:8] and payload[12:] == pkt[12:]   # nothing else changed
    c = e.counters()
    assert (c["tx_packets"], c["tx_bytes"]) == (1, len(pkt))
    assert e.peer_counters()[0]["tx_packets"] == 1


def test_no_route_answers_icmp_net_unreachable(mod):
    e = make(mod)
    pkt = ipv4("198.19.1.5", "198.19.77.1", 64, 17, b"abcdefghij")
    v, idx, payload, reply = e.outbound(pkt)
    assert (v, idx, payload) == (mod.NO_ROUTE, -1, b"")
    assert reply[9] == 1 and reply[12:16] == bytes([198, 19, 1, 0]) and reply[16:20] == pkt[12:16]
    assert (reply[20], reply[21]) == (3, 0)
    assert reply[28:] == pkt[:28]                          # offending header + 8 bytes
    assert _fastpath_py.checksum(reply[:20]) == 0 and _fastpath_py.checksum(reply[20:]) == 0
    assert e.counters()["tx_drop_no_route"] == 1 and e.counters()["icmp_sent"] == 1


def test_no_icmp_about_icmp_errors_or_fragments(mod):
    e = make(mod)
    err = ipv4("198.19.1.5", "198.19.77.1", 64, 1, b"\x03\x01\0\0\0\0\0\0")
    assert e.outbound(err)[3] == b""
    frag = ipv4("198.19.1.5", "198.19.77.1", 64, 17, b"x" * 16, frag=0x0010)
    assert e.outbound(frag)[3] == b""
    echo = ipv4("198.19.1.5", "198.19.77.1", 64, 1, b"\x08\0\0\0\0\0\0\0")
    assert e.outbound(echo)[3] != b""                       # echo requests do get one


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_expired_dropped_with_time_exceeded(mod, ttl):
    e = make(mod)
    v, _, payload, reply = e.outbound(ipv4("198.19.1.5", "198.19.2.7", ttl, 17, b"x"))
    assert v == mod.TTL_EXPIRED and payload == b"" and reply[20] == 11
    assert e.counters()["tx_drop_ttl_expired"] == 1


@pytest.mark.parametrize("data,verdict", [
    (b"", "TOO_SHORT"), (b"\x45" * 19, "TOO_SHORT"),
    (bytes([0x60]) + bytes(39), "NOT_IPV4"),
    (bytes([0x44]) + bytes(19), "BAD_HEADER"),
])
def test_malformed_outbound(mod, data, verdict):
    e = make(mod)
    assert e.outbound(data)[0] == getattr(mod, verdict)


def test_bad_total_length(mod):
    e = make(mod)
    pkt = bytearray(ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"xyz"))
    assert e.outbound(bytes(pkt[:-1]))[0] == mod.BAD_HEADER


def test_inbound_checks(mod):
    e = make(mod)
    good = ipv4("198.19.2.7", "198.19.1.5", 63, 17, b"data")
    assert e.inbound(good, "198.18.0.2") == (mod.OK, 0, good, b"")
    assert e.inbound(good, "198.18.0.99")[0] == mod.UNKNOWN_PEER
    spoof = ipv4("198.19.3.7", "198.19.1.5", 63, 17, b"data")
    assert e.inbound(spoof, "198.18.0.2")[0] == mod.SPOOFED_SRC
    elsewhere = ipv4("198.19.2.7", "198.19.9.5", 63, 17, b"data")
    assert e.inbound(elsewhere, "198.18.0.2")[0] == mod.NOT_LOCAL
    assert e.inbound(b"\x45\0", "198.18.0.2")[0] == mod.TOO_SHORT
    c = e.counters()
    assert (c["rx_packets"], c["rx_drop_unknown_peer"], c["rx_drop_spoofed_src"],
            c["rx_drop_not_local"], c["rx_drop_too_short"]) == (1, 1, 1, 1, 1)


def test_set_peers_swaps_routes_and_keeps_counters(mod):
    e = make(mod)
    pkt = ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"x")
    e.outbound(pkt)
    e.set_peers([("198.18.0.2", 8285, "198.19.2.0/24", None),
                 ("198.18.0.3", 8285, "198.19.3.0/24", None)])
    assert e.peer_counters()[0]["tx_packets"] == 1
    assert e.outbound(ipv4("198.19.1.5", "198.19.3.1", 64, 17, b"x"))[1] == 1
    e.set_peers([])
    assert e.outbound(pkt)[0] == mod.NO_ROUTE


def test_counter_keys_identical():
    if _fastpath_c is None:
        pytest.skip("not built")
    a = make(_fastpath_py).counters()
    b = make(_fastpath_c).counters()
    assert list(a) == list(b)


MAC_A = bytes.fromhex("02aa00000001")
MAC_B = bytes.fromhex("02bb00000002")


def make_vx(mod, mac=MAC_B, vni=1):
    e = mod.Engine(mod.MODE_VXLAN, "198.19.1.0", "198.19.1.0/24", "198.19.0.0/16",
                   vni=vni, vtep_mac=MAC_A, local_port=8472)
    e.set_peers([("198.18.0.2", 8472, "198.19.2.0/24", mac)])
    return e


def vx(inner: bytes, dst=MAC_A, src=MAC_B, vni=1, ethertype=b"\x08\x00", flags=0x08) -> bytes:
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0" + dst + src + ethertype + inner


def test_vxlan_encap_framing(mod):
    e = make_vx(mod)
    pkt = ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"hello")
    v, idx, payload, _ = e.outbound(pkt)
    assert v == mod.OK
    assert payload[:8] == b"\x08\0\0\0\0\0\x01\0"
    assert payload[8:14] == MAC_B and payload[14:20] == MAC_A and payload[20:22] == b"\x08\x00"
    assert payload[22:31] == pkt[:8] + bytes([63])


def test_vxlan_decap_checks(mod):
    e = make_vx(mod)
    inner = ipv4("198.19.2.7", "198.19.1.5", 63, 17, b"data")
    assert e.inbound(vx(inner), "198.18.0.2") == (mod.OK, 0, inner, b"")
    assert e.inbound(vx(inner, vni=2), "198.18.0.2")[0] == mod.BAD_VNI
    assert e.inbound(vx(inner, flags=0), "198.18.0.2")[0] == mod.BAD_VXLAN
    assert e.inbound(vx(inner, dst=bytes.fromhex("02cc00000003")), "198.18.0.2")[0] == mod.WRONG_MAC
    assert e.inbound(vx(inner, ethertype=b"\x86\xdd"), "198.18.0.2")[0] == mod.NOT_IPV4
    assert e.inbound(vx(inner), "198.18.0.9")[0] == mod.UNKNOWN_PEER
    assert e.inbound(vx(inner)[:21], "198.18.0.2")[0] == mod.TOO_SHORT
    c = e.counters()
    assert (c["rx_drop_bad_vni"], c["rx_drop_wrong_mac"], c["rx_drop_bad_vxlan"]) == (1, 1, 1)


def test_vxlan_unresolved_then_learned_by_arp(mod):
    e = make_vx(mod, mac=None)
    pkt = ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"x")
    assert e.outbound(pkt)[0] == mod.UNRESOLVED
    req = e.arp_request(0)
    assert req[8:14] == b"\xff" * 6 and req[20:22] == b"\x08\x06"
    assert req[22 + 7] == 1 and req[22 + 24:22 + 28] == bytes([198, 19, 2, 0])
    # The peer's reply: sender = its VTEP address 198.19.2.0 with MAC_B.
    arp = (b"\0\x01\x08\x00\x06\x04\0\x02" + MAC_B + bytes([198, 19, 2, 0])
           + MAC_A + bytes([198, 19, 1, 0]))
    assert e.inbound(vx(arp, ethertype=b"\x08\x06"), "198.18.0.2")[0] == mod.ARP
    assert e.peer_counters()[0]["vtep_mac"] == "02:bb:00:00:00:02"
    assert e.outbound(pkt)[0] == mod.OK
    assert e.counters()["tx_drop_unresolved"] == 1 and e.counters()["rx_arp"] == 1


def test_vxlan_answers_arp_for_our_vtep(mod):
    e = make_vx(mod)
    arp = (b"\0\x01\x08\x00\x06\x04\0\x01" + MAC_B + bytes([198, 19, 2, 0])
           + bytes(6) + bytes([198, 19, 1, 0]))
    v, _, to_tun, reply = e.inbound(vx(arp, dst=b"\xff" * 6, ethertype=b"\x08\x06"), "198.18.0.2")
    assert v == mod.ARP and to_tun == b""
    assert reply[8:14] == MAC_B and reply[14:20] == MAC_A
    a = reply[22:]
    assert a[7] == 2 and a[8:14] == MAC_A and a[14:18] == bytes([198, 19, 1, 0])
    assert a[18:24] == MAC_B and a[24:28] == bytes([198, 19, 2, 0])


def test_vxlan_arp_cannot_poison_other_addresses(mod):
    e = make_vx(mod, mac=None)
    evil = (b"\0\x01\x08\x00\x06\x04\0\x02" + bytes.fromhex("02eeeeeeeeee")
            + bytes([198, 19, 9, 9]) + MAC_A + bytes([198, 19, 1, 0]))
    e.inbound(vx(evil, ethertype=b"\x08\x06"), "198.18.0.2")
    assert e.peer_counters()[0]["vtep_mac"] is None
