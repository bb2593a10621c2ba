"""Who may send what (both twins, `impl`): udp mode accepts a peer's
datagrams only from its configured port (issue 11 item 3); one public IP may
own several subnets, the source check accepts any of them and counts the
packet for the peer whose subnet matched (issue 11 item 5)."""

from __future__ import annotations

from tests.support import pktgen as g
from tests.support.twins import engine
from udpoverlay.dataplane import wire

A = g.peer("198.18.0.2", 8285, "198.19.2.0/24")
A2 = g.peer("198.18.0.2", 8285, "198.19.20.0/24")      # a second lease, same host
OTHER_PORT = g.peer("198.18.0.2", 9000, "198.19.30.0/24")   # a second daemon there


def udp_from(src: str) -> bytes:
    return bytes(g.udp(src, "198.19.1.5", 4000, 5000, b"payload"))


def rx(e) -> list[int]:
    return [p["rx_packets"] for p in e.peer_status()]


def test_udp_mode_only_from_the_configured_port(impl):
    e = engine(impl, "udp", [A])
    pkt = udp_from("198.19.2.7")
    assert e.t.inbound(pkt, g.ip("198.18.0.2"), 8285)[:3] == (wire.OK, 0, pkt)
    for port in (8286, 1, 65535, 8472):
        assert e.t.inbound(pkt, g.ip("198.18.0.2"), port) == (wire.BAD_PORT, -1, b"", b"")
    c = e.counters()
    assert c["rx_drop_bad_port"] == 4 and c["rx_packets"] == 1 and rx(e) == [1]
    # an unknown address stays unknown, whatever its port
    assert e.t.inbound(pkt, g.ip("198.18.0.9"), 8285)[0] == wire.UNKNOWN_PEER


def test_verdict_list_only_grew_at_the_end():
    assert wire.VERDICT_NAMES[:16] == (
        "ok", "too_short", "not_ipv4", "bad_header", "no_route", "ttl_expired",
        "unknown_peer", "spoofed_src", "not_local", "tx_error", "bad_vxlan", "bad_vni",
        "wrong_mac", "unresolved", "arp", "bad_gso")
    assert wire.VERDICT_NAMES[wire.BAD_PORT] == "bad_port"
    assert wire.VERDICT_NAMES[wire.KEEPALIVE] == "keepalive" == wire.VERDICT_NAMES[-1]


def test_vxlan_mode_takes_any_source_port(impl):
    mac = g.PEER_MAC
    e = engine(impl, "vxlan", [g.peer("198.18.0.2", 8472, "198.19.2.0/24", mac)])
    pkt = udp_from("198.19.2.7")
    for port in (8472, 40001, 1):
        assert e.t.inbound(g.vxlan(pkt), g.ip("198.18.0.2"), port)[0] == wire.OK
    assert e.counters()["rx_drop_bad_port"] == 0


def test_one_ip_several_subnets_in_either_order(impl):
    for peers in ([A, A2], [A2, A]):
        e = engine(impl, "udp", peers)
        i_a, i_a2 = peers.index(A), peers.index(A2)
        assert e.t.inbound(udp_from("198.19.2.7"), g.ip("198.18.0.2"))[:2] == (wire.OK, i_a)
        assert e.t.inbound(udp_from("198.19.20.7"), g.ip("198.18.0.2"))[:2] == (wire.OK, i_a2)
        assert e.t.inbound(udp_from("198.19.3.7"), g.ip("198.18.0.2"))[0] == wire.SPOOFED_SRC
        got = rx(e)
        assert got[i_a] == 1 and got[i_a2] == 1
        assert e.counters()["rx_drop_spoofed_src"] == 1


def test_udp_port_selects_the_subnets_of_that_daemon(impl):
    e = engine(impl, "udp", [A, OTHER_PORT])
    # A's subnet from the other daemon's port: not that daemon's to send
    assert e.t.inbound(udp_from("198.19.2.7"), g.ip("198.18.0.2"), 9000)[0] == wire.SPOOFED_SRC
    assert e.t.inbound(udp_from("198.19.30.7"), g.ip("198.18.0.2"), 9000)[:2] == (wire.OK, 1)
    assert e.t.inbound(udp_from("198.19.30.7"), g.ip("198.18.0.2"), 8285)[0] == wire.SPOOFED_SRC
    assert e.t.inbound(udp_from("198.19.2.7"), g.ip("198.18.0.2"), 7000)[0] == wire.BAD_PORT


def test_more_specific_subnet_of_the_same_ip_gets_the_count(impl):
    wide = g.peer("198.18.0.2", 8285, "198.19.64.0/18")
    narrow = g.peer("198.18.0.2", 8285, "198.19.65.0/24")
    e = engine(impl, "udp", [wide, narrow])
    assert e.t.inbound(udp_from("198.19.65.1"), g.ip("198.18.0.2"))[:2] == (wire.OK, 1)
    assert e.t.inbound(udp_from("198.19.66.1"), g.ip("198.18.0.2"))[:2] == (wire.OK, 0)
