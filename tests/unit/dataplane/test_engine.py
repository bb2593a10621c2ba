"""The Engine facade, over both twins: Peers become ints once and come back
by table index, counters get today's names, ARP is asked by Peer, close()
is real and idempotent, bad configuration is refused before the core."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from tests.support import pktgen as g
from tests.support.twins import NETWORK, TUN_ADDR, engine
from udpoverlay import dataplane
from udpoverlay.dataplane import wire
from udpoverlay.peer import Peer

A = g.peer("198.18.0.2", 8472, "198.19.2.0/24")
B = g.peer("198.18.0.3", 8472, "198.19.3.0/24", g.PEER_MAC)


def to(dst: str, payload: bytes = b"x") -> bytes:
    return g.raw_ipv4("198.19.1.5", dst, 64, 17, payload)


def test_peers_round_trip_in_table_order(impl):
    e = engine(impl, "udp", [B, A])
    assert e.peers == (B, A)
    st = e.peer_status()
    assert [(s["public_ip"], s["port"], s["subnet"], s["source"]) for s in st] == [
        ("198.18.0.3", 8472, "198.19.3.0/24", "static"),
        ("198.18.0.2", 8472, "198.19.2.0/24", "static")]
    assert list(st[0]) == ["public_ip", "port", "subnet", "tx_packets", "tx_bytes",
                           "rx_packets", "rx_bytes", "vtep_mac", "rx_keepalive", "source"]
    assert st[0]["vtep_mac"] == "02:bb:00:00:00:02" and st[1]["vtep_mac"] is None


def test_peer_status_joins_by_index_and_counters_follow_the_peer(impl):
    e = engine(impl, "udp", [A, B])
    pkt = to("198.19.3.9", b"hello")
    assert e.t.outbound(pkt)[:2] == (wire.OK, 1)
    e.set_peers([B, Peer(A.public_ip, A.port, A.subnet, source="etcd")])
    st = e.peer_status()
    assert (st[0]["subnet"], st[0]["tx_packets"], st[0]["tx_bytes"]) == ("198.19.3.0/24", 1, len(pkt))
    assert (st[1]["subnet"], st[1]["tx_packets"], st[1]["source"]) == ("198.19.2.0/24", 0, "etcd")
    c = e.counters()
    assert (c["tx_packets"], c["tx_bytes"]) == (1, len(pkt))


def test_counter_names_and_values(impl):
    e = engine(impl, "udp", [A])
    e.t.outbound(to("198.19.77.1"))                  # no route: ICMP back
    e.t.outbound(b"\x45")                             # too short
    e.t.inbound(to("198.19.1.9"), g.ip("198.18.0.99"))   # unknown peer
    c = e.counters()
    assert (c["tx_drop_no_route"], c["icmp_sent"], c["tx_drop_too_short"],
            c["rx_drop_unknown_peer"], c["rx_arp"]) == (1, 1, 1, 1, 0)
    assert "tx_drop_arp" not in c and "tx_drop_ok" not in c
    assert sum(c.values()) == 4


def test_vxlan_unresolved_arp_by_peer_and_learned_mac_survives_a_swap(impl):
    e = engine(impl, "vxlan", [A, B], port=8472)
    assert e.unresolved() == [A]
    req = e.arp_request(A)
    assert req[8:14] == b"\xff" * 6 and req[22 + 24:22 + 28] == bytes([198, 19, 2, 0])
    with pytest.raises(KeyError):
        e.arp_request(g.peer("198.18.0.9", 8472, "198.19.9.0/24"))
    reply = (b"\0\x01\x08\x00\x06\x04\0\x02" + bytes.fromhex("02cc00000003")
             + bytes([198, 19, 2, 0]) + g.MAC + bytes([198, 19, 1, 0]))
    v = e.t.inbound(g.vxlan(reply)[:20] + b"\x08\x06" + reply, g.ip("198.18.0.2"))[0]
    assert v == wire.ARP
    assert e.unresolved() == []
    e.set_peers([A, B])                               # names no MAC for A
    assert e.peer_status()[0]["vtep_mac"] == "02:cc:00:00:00:03"
    assert engine(impl, "udp", [A]).unresolved() == []  # udp needs no MAC


def test_offload_flags(impl):
    e = engine(impl, "udp", [A])
    assert (e.vnet_hdr, e.udp_gso, e.tun_uso) == (False, False, False)
    e.set_offload(True, udp_gso=True, tun_uso=False)
    assert (e.vnet_hdr, e.udp_gso, e.tun_uso) == (True, True, False)
    assert e.udp_gro                                  # looked for with the vnet header
    e.set_offload(False, udp_gso=True, tun_uso=True)  # USO writes need the vnet header
    assert (e.vnet_hdr, e.udp_gso, e.tun_uso, e.udp_gro) == (False, True, False, False)
    e.set_offload(False, udp_gso=False, udp_gro=True)  # a plain TUN over a batching socket
    assert (e.vnet_hdr, e.udp_gso, e.tun_uso, e.udp_gro) == (False, False, False, True)


def test_close_is_real_and_idempotent(impl):
    e = engine(impl, "udp", [A])
    tun_app, tun_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tun_dev.setblocking(False)
        sock.setblocking(False)
        assert e.core.tun_to_udp(tun_dev.fileno(), sock.fileno()) == 0
        before = len(os.listdir("/proc/self/fd"))
        e.close()
        e.close()
        assert len(os.listdir("/proc/self/fd")) <= before      # the reference's dups closed
        tun_app.send(to("198.19.2.5"))
        assert e.core.tun_to_udp(tun_dev.fileno(), sock.fileno()) == 0   # does nothing now
        assert e.counters()["tx_packets"] == 0 and len(e.peer_status()) == 1
    finally:
        for s in (tun_app, tun_dev, sock):
            s.close()


@pytest.mark.parametrize("kw, msg", [
    ({"backend": "ipip"}, "backend"),
    ({"vtep_mac": b"\x02"}, "6 bytes"),
    ({"subnet": "198.19.1.1/24"}, "host bits"),
    ({"network": "198.19.0.0/33"}, "netmask"),
])
def test_bad_configuration_is_refused(impl, kw, msg):
    args = dict(backend="udp", tun_addr=TUN_ADDR, subnet=g.OUR_SUBNET, network=NETWORK, twin=impl)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        dataplane.Engine(**args)


def test_addresses_as_objects_or_strings(impl):
    e = dataplane.Engine("udp", ipaddress.IPv4Address(TUN_ADDR), ipaddress.IPv4Network(g.OUR_SUBNET),
                         NETWORK, twin=impl)
    assert e.implementation == impl.IMPLEMENTATION
    e.set_peers([A])
    assert e.core.lookup(g.ip("198.19.2.77")) == 0
    bad = Peer(B.public_ip, B.port, "198.19.3.1/24")     # host bits set
    with pytest.raises(ValueError):
        e.set_peers([A, bad])
    assert e.peers == (A,) and len(e.peer_status()) == 1      # nothing swapped


def test_the_switch():
    assert dataplane.IMPLEMENTATION in ("python", "cython")
    assert dataplane.twin("python").IMPLEMENTATION == "python"
    with pytest.raises(ValueError):
        dataplane.twin("rust")
    e = dataplane.Engine("udp", TUN_ADDR, g.OUR_SUBNET, NETWORK)
    assert e.implementation == dataplane.IMPLEMENTATION


def test_set_peers_cache_follows_every_change(impl):
    """set_peers caches each peer's conversion by its address objects: a
    change of any field (port, subnet, MAC) still reaches the core, and a
    list of new Peer objects over the same addresses gives the same table."""
    ip, net = ipaddress.IPv4Address("198.18.0.2"), ipaddress.IPv4Network("198.19.2.0/24")
    other = ipaddress.IPv4Network("198.19.4.0/24")
    e = engine(impl, "vxlan", [Peer(ip, 8472, net)])
    steps = [[Peer(ip, 8472, net, g.PEER_MAC)], [Peer(ip, 9000, net, g.PEER_MAC)],
             [Peer(ip, 9000, other, bytearray(g.PEER_MAC))], [Peer(ip, 8472, other)],
             [Peer(ip, 9000, other), Peer(ip, 9000, net, g.MAC)], []]
    for peers in steps:
        e.set_peers(peers)
        fresh = engine(impl, "vxlan", peers)
        assert e.peer_status() == fresh.peer_status()
        for a in ("198.19.2.9", "198.19.4.9"):
            assert e.core.lookup(g.ip(a)) == fresh.core.lookup(g.ip(a))
    e.set_peers([Peer(ip, 8472, net)])
    bad = Peer(ip, 8472, other)
    object.__setattr__(bad, "vtep_mac", b"\x02")      # past Peer's own check
    with pytest.raises(ValueError, match="6 bytes"):
        e.set_peers([Peer(ip, 8472, net), bad])
    assert len(e.peer_status()) == 1                  # nothing swapped
