"""Core behaviour through the Engine facade, run against both twins
(the `impl` fixture): routing, TTL, ICMP errors, checks, VXLAN and ARP."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import pktgen as g
from tests.support.pktgen import raw_ipv4 as ipv4
from tests.support.twins import engine
from udpoverlay.dataplane import wire
from udpoverlay.dataplane._py.checksum import checksum

PEER = g.peer("198.18.0.2", 8285, "198.19.2.0/24")


def make(impl, peers=(PEER,)):
    return engine(impl, "udp", list(peers))


def naive_lookup(peers, addr):
    """The oracle: scan every route, keep the longest match (first on ties)."""
    best, best_len = -1, -1
    for i, p in enumerate(peers):
        n = p.subnet
        if int(n.network_address) == addr & int(n.netmask) and n.prefixlen > best_len:
            best, best_len = i, n.prefixlen
    return best


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1))
def test_lookup_matches_naive_oracle(impl, seed):
    rnd = random.Random(seed)
    peers = []
    for i in range(rnd.randint(0, 40)):
        length = rnd.choice([0, 8, 12, 16, 20, 24, 24, 24, 28, 32])
        base = (198 << 24) | (rnd.getrandbits(24) if rnd.random() < 0.8 else 0)
        net = ipaddress.IPv4Network((base, length), strict=False)
        peers.append(g.peer(f"198.18.{i // 200}.{i % 200 + 1}", 8285, str(net)))
    e = make(impl, peers)
    for _ in range(50):
        addr = (198 << 24) | rnd.getrandbits(24) if rnd.random() < 0.9 else rnd.getrandbits(32)
        assert e.core.lookup(addr) == naive_lookup(peers, addr)


def test_forward_decrements_ttl_and_keeps_checksum_valid(impl):
    e = make(impl)
    pkt = ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"hello")
    v, idx, payload, reply = e.t.outbound(pkt)
    assert (v, idx, reply) == (wire.OK, 0, b"")
    assert payload[8] == 63
    assert checksum(payload[:20]) == 0        # header checksum still valid
    assert payload[:8] == pkt[:8] and payload[12:] == pkt[12:]   # nothing else changed
    c = e.counters()
    assert (c["tx_packets"], c["tx_bytes"]) == (1, len(pkt))
    assert e.peer_status()[0]["tx_packets"] == 1


def test_no_route_answers_icmp_net_unreachable(impl):
    e = make(impl)
    pkt = ipv4("198.19.1.5", "198.19.77.1", 64, 17, b"abcdefghij")
    v, idx, payload, reply = e.t.outbound(pkt)
    assert (v, idx, payload) == (wire.NO_ROUTE, -1, b"")
    assert reply[9] == 1 and reply[12:16] == bytes([198, 19, 1, 0]) and reply[16:20] == pkt[12:16]
    assert (reply[20], reply[21]) == (3, 0)
    assert reply[28:] == pkt[:28]                          # offending header + 8 bytes
    assert checksum(reply[:20]) == 0 and checksum(reply[20:]) == 0
    assert e.counters()["tx_drop_no_route"] == 1 and e.counters()["icmp_sent"] == 1


def test_no_icmp_about_icmp_errors_or_fragments(impl):
    e = make(impl)
    err = ipv4("198.19.1.5", "198.19.77.1", 64, 1, b"\x03\x01\0\0\0\0\0\0")
    assert e.t.outbound(err)[3] == b""
    frag = ipv4("198.19.1.5", "198.19.77.1", 64, 17, b"x" * 16, frag=0x0010)
    assert e.t.outbound(frag)[3] == b""
    echo = ipv4("198.19.1.5", "198.19.77.1", 64, 1, b"\x08\0\0\0\0\0\0\0")
    assert e.t.outbound(echo)[3] != b""                       # echo requests do get one


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_expired_dropped_with_time_exceeded(impl, ttl):
    e = make(impl)
    v, _, payload, reply = e.t.outbound(ipv4("198.19.1.5", "198.19.2.7", ttl, 17, b"x"))
    assert v == wire.TTL_EXPIRED and payload == b"" and reply[20] == 11
    assert e.counters()["tx_drop_ttl_expired"] == 1


@pytest.mark.parametrize("data,verdict", [
    (b"", "TOO_SHORT"), (b"\x45" * 19, "TOO_SHORT"),
    (bytes([0x60]) + bytes(39), "NOT_IPV4"),
    (bytes([0x44]) + bytes(19), "BAD_HEADER"),
])
def test_malformed_outbound(impl, data, verdict):
    e = make(impl)
    assert e.t.outbound(data)[0] == getattr(wire, verdict)


def test_bad_total_length(impl):
    e = make(impl)
    pkt = bytearray(ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"xyz"))
    assert e.t.outbound(bytes(pkt[:-1]))[0] == wire.BAD_HEADER


def test_inbound_checks(impl):
    e = make(impl)
    good = ipv4("198.19.2.7", "198.19.1.5", 63, 17, b"data")
    assert e.t.inbound(good, g.ip("198.18.0.2")) == (wire.OK, 0, good, b"")
    assert e.t.inbound(good, g.ip("198.18.0.99"))[0] == wire.UNKNOWN_PEER
    spoof = ipv4("198.19.3.7", "198.19.1.5", 63, 17, b"data")
    assert e.t.inbound(spoof, g.ip("198.18.0.2"))[0] == wire.SPOOFED_SRC
    elsewhere = ipv4("198.19.2.7", "198.19.9.5", 63, 17, b"data")
    assert e.t.inbound(elsewhere, g.ip("198.18.0.2"))[0] == wire.NOT_LOCAL
    # shorter than an IPv4 header from a known peer: a NAT keepalive (issue 13)
    assert e.t.inbound(b"\x45\0", g.ip("198.18.0.2"))[0] == wire.KEEPALIVE
    c = e.counters()
    assert (c["rx_packets"], c["rx_drop_unknown_peer"], c["rx_drop_spoofed_src"],
            c["rx_drop_not_local"], c["rx_keepalive"]) == (1, 1, 1, 1, 1)


def test_set_peers_swaps_routes_and_keeps_counters(impl):
    e = make(impl)
    pkt = ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"x")
    e.t.outbound(pkt)
    e.set_peers([PEER, g.peer("198.18.0.3", 8285, "198.19.3.0/24")])
    assert e.peer_status()[0]["tx_packets"] == 1
    assert e.t.outbound(ipv4("198.19.1.5", "198.19.3.1", 64, 17, b"x"))[1] == 1
    e.set_peers([])
    assert e.t.outbound(pkt)[0] == wire.NO_ROUTE


def test_counter_keys_are_todays(impl):
    c = make(impl).counters()
    names = [n for n in wire.VERDICT_NAMES[1:] if n not in ("arp", "keepalive")]
    assert list(c) == (list(wire.SCALAR_COUNTERS)
                       + [f"{d}_drop_{n}" for n in names for d in ("tx", "rx")]
                       + ["rx_arp", "rx_keepalive"])
    assert all(v == 0 for v in c.values())


MAC_A = bytes.fromhex("02aa00000001")
MAC_B = bytes.fromhex("02bb00000002")


def make_vx(impl, mac=MAC_B, vni=1):
    return engine(impl, "vxlan", [g.peer("198.18.0.2", 8472, "198.19.2.0/24", mac)],
                  vni=vni, mac=MAC_A, port=8472)


def vx(inner: bytes, dst=MAC_A, src=MAC_B, vni=1, ethertype=b"\x08\x00", flags=0x08) -> bytes:
    return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0" + dst + src + ethertype + inner


def test_vxlan_encap_framing(impl):
    e = make_vx(impl)
    pkt = ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"hello")
    v, idx, payload, _ = e.t.outbound(pkt)
    assert v == wire.OK
    assert payload[:8] == b"\x08\0\0\0\0\0\x01\0"
    assert payload[8:14] == MAC_B and payload[14:20] == MAC_A and payload[20:22] == b"\x08\x00"
    assert payload[22:31] == pkt[:8] + bytes([63])


def test_vxlan_decap_checks(impl):
    e = make_vx(impl)
    inner = ipv4("198.19.2.7", "198.19.1.5", 63, 17, b"data")
    assert e.t.inbound(vx(inner), g.ip("198.18.0.2")) == (wire.OK, 0, inner, b"")
    assert e.t.inbound(vx(inner, vni=2), g.ip("198.18.0.2"))[0] == wire.BAD_VNI
    assert e.t.inbound(vx(inner, flags=0), g.ip("198.18.0.2"))[0] == wire.BAD_VXLAN
    assert e.t.inbound(vx(inner, dst=bytes.fromhex("02cc00000003")), g.ip("198.18.0.2"))[0] == wire.WRONG_MAC
    assert e.t.inbound(vx(inner, ethertype=b"\x86\xdd"), g.ip("198.18.0.2"))[0] == wire.NOT_IPV4
    assert e.t.inbound(vx(inner), g.ip("198.18.0.9"))[0] == wire.UNKNOWN_PEER
    assert e.t.inbound(vx(inner)[:21], g.ip("198.18.0.2"))[0] == wire.TOO_SHORT
    c = e.counters()
    assert (c["rx_drop_bad_vni"], c["rx_drop_wrong_mac"], c["rx_drop_bad_vxlan"]) == (1, 1, 1)


def test_vxlan_unresolved_then_learned_by_arp(impl):
    e = make_vx(impl, mac=None)
    pkt = ipv4("198.19.1.5", "198.19.2.7", 64, 17, b"x")
    assert e.t.outbound(pkt)[0] == wire.UNRESOLVED
    req = e.arp_request(e.peers[0])
    assert req[8:14] == b"\xff" * 6 and req[20:22] == b"\x08\x06"
    assert req[22 + 7] == 1 and req[22 + 24:22 + 28] == bytes([198, 19, 2, 0])
    # The peer's reply: sender = its VTEP address 198.19.2.0 with MAC_B.
    arp = (b"\0\x01\x08\x00\x06\x04\0\x02" + MAC_B + bytes([198, 19, 2, 0])
           + MAC_A + bytes([198, 19, 1, 0]))
    assert e.t.inbound(vx(arp, ethertype=b"\x08\x06"), g.ip("198.18.0.2"))[0] == wire.ARP
    assert e.peer_status()[0]["vtep_mac"] == "02:bb:00:00:00:02"
    assert e.t.outbound(pkt)[0] == wire.OK
    assert e.counters()["tx_drop_unresolved"] == 1 and e.counters()["rx_arp"] == 1


def test_vxlan_answers_arp_for_our_vtep(impl):
    e = make_vx(impl)
    arp = (b"\0\x01\x08\x00\x06\x04\0\x01" + MAC_B + bytes([198, 19, 2, 0])
           + bytes(6) + bytes([198, 19, 1, 0]))
    v, _, to_tun, reply = e.t.inbound(vx(arp, dst=b"\xff" * 6, ethertype=b"\x08\x06"), g.ip("198.18.0.2"))
    assert v == wire.ARP and to_tun == b""
    assert reply[8:14] == MAC_B and reply[14:20] == MAC_A
    a = reply[22:]
    assert a[7] == 2 and a[8:14] == MAC_A and a[14:18] == bytes([198, 19, 1, 0])
    assert a[18:24] == MAC_B and a[24:28] == bytes([198, 19, 2, 0])


def test_vxlan_arp_cannot_poison_other_addresses(impl):
    e = make_vx(impl, mac=None)
    evil = (b"\0\x01\x08\x00\x06\x04\0\x02" + bytes.fromhex("02eeeeeeeeee")
            + bytes([198, 19, 9, 9]) + MAC_A + bytes([198, 19, 1, 0]))
    e.t.inbound(vx(evil, ethertype=b"\x08\x06"), g.ip("198.18.0.2"))
    assert e.peer_status()[0]["vtep_mac"] is None
