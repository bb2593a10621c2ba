"""NAT keepalives (issue 13): a datagram shorter than an IPv4 header from a
known peer (udp mode: its configured address and port; vxlan: a known peer
address) is counted as `keepalive`, never written and never a drop; from
anyone else a short datagram stays unknown_peer / bad_port / too_short.
Both twins (`impl`), through the per-datagram entry and the real plain loop."""

from __future__ import annotations

import contextlib
import socket

from tests.support import pktgen as g
from tests.support.twins import engine
from udpoverlay.dataplane import wire

KNOWN = g.ip("198.18.0.2")          # g.PEERS[0]: port 8285, 198.19.2.0/24
STRANGER = g.ip("198.18.0.9")


def drops(e) -> int:
    return sum(v for k, v in e.counters().items() if "_drop_" in k)


def test_short_from_the_configured_peer_is_a_keepalive_in_udp_mode(impl):
    e = engine(impl, "udp")
    for n in (0, 1, 4, 19):
        # attributed to the peer (its liveness), nothing to write
        assert e.t.inbound(b"\xff" * n, KNOWN, 8285) == (wire.KEEPALIVE, 0, b"", b"")
    c = e.counters()
    assert c["rx_keepalive"] == 4 and drops(e) == 0
    assert c["rx_packets"] == 0 and e.peer_status()[0]["rx_packets"] == 0
    assert [p["rx_keepalive"] for p in e.peer_status()] == [4, 0, 0]
    assert wire.VERDICT_NAMES[-1] == "keepalive" and "rx_drop_keepalive" not in c


def test_short_from_anyone_else_stays_what_it_was_in_udp_mode(impl):
    e = engine(impl, "udp")
    assert e.t.inbound(b"\0", STRANGER, 8285)[0] == wire.UNKNOWN_PEER
    assert e.t.inbound(b"\0", KNOWN, 8286)[0] == wire.BAD_PORT
    # 20 bytes is an IPv4 header's length: checked as a packet, not a keepalive
    assert e.t.inbound(bytes(20), KNOWN, 8285)[0] == wire.NOT_IPV4
    c = e.counters()
    assert c["rx_keepalive"] == 0
    assert (c["rx_drop_unknown_peer"], c["rx_drop_bad_port"], c["rx_drop_not_ipv4"]) == (1, 1, 1)


def test_vxlan_keepalive_from_any_port_of_a_known_address(impl):
    e = engine(impl, "vxlan")
    for n, port in ((0, 8472), (1, 40000), (19, 1)):
        assert e.t.inbound(b"\x08" * n, KNOWN, port)[0] == wire.KEEPALIVE
    # 20 and 21 bytes: no IPv4 header shortfall, but no room for VXLAN + Ethernet
    for n in (20, 21):
        assert e.t.inbound(bytes(n), KNOWN, 8472)[0] == wire.TOO_SHORT
    assert e.t.inbound(b"\x08", STRANGER, 8472)[0] == wire.UNKNOWN_PEER
    c = e.counters()
    assert c["rx_keepalive"] == 3 and c["rx_drop_too_short"] == 2
    assert e.peer_status()[0]["rx_keepalive"] == 3
    assert c["rx_drop_unknown_peer"] == 1 and c["rx_packets"] == 0


def test_gro_tail_shorter_than_a_header_is_a_keepalive(impl):
    """A keepalive GRO merged behind data segments is counted alone."""
    e = engine(impl, "udp", offload=(True, False, False))
    pkt = bytes(g.udp("198.19.2.7", "198.19.1.5", 4000, 5000, b"x" * 100))
    writes, replies = e.t.inbound_batch([(pkt * 2 + b"\0", KNOWN, len(pkt), 8285)])
    assert replies == [] and len(writes) == 2 and all(w.endswith(pkt) for w in writes)
    c = e.counters()
    assert c["rx_keepalive"] == 1 and c["rx_packets"] == 2 and drops(e) == 0


def test_plain_loop_writes_nothing_for_a_keepalive(impl):
    """The real udp_to_tun over loopback: keepalives counted, not written;
    the data packet behind them is."""
    with contextlib.ExitStack() as stack:
        rx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        tx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        app, dev = (stack.enter_context(s) for s in
                    socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        rx.bind(("127.0.0.1", 0))
        tx.bind(("127.0.0.1", 0))
        e = engine(impl, "udp", [g.peer("127.0.0.1", tx.getsockname()[1], "198.19.2.0/24")])
        pkt = bytes(g.udp("198.19.2.7", "198.19.1.5", 4000, 5000, b"data"))
        for d in (b"", b"\xff", b"k" * 19, pkt):
            tx.sendto(d, rx.getsockname())
        app.setblocking(False)
        done = 0
        for _ in range(50):         # loopback delivers at once; bounded anyway
            done += e.core.udp_to_tun(rx.fileno(), dev.fileno())
            if done >= 4:
                break
        assert done == 4
        assert app.recv(65536) == pkt
        with contextlib.suppress(BlockingIOError):
            raise AssertionError(f"a keepalive reached the TUN: {app.recv(65536)!r}")
    c = e.counters()
    assert c["rx_keepalive"] == 3 and c["rx_packets"] == 1 and drops(e) == 0
