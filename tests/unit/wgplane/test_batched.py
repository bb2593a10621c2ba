"""The batch path (wgplane/batched.py over dataplane.wgio.WgIo) between two
planes: real UDP sockets on 127.0.0.1, and a datagram socketpair standing
in for each TUN (one read = one packet, as a plain TUN gives them). Each
twin of WgIo that is built; the wire is read in the middle, so what is
asserted is what really crossed: nothing plain, counters in a run,
replays and forgeries dropped and counted, cryptokey routing kept."""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct

import pytest

from tests.support.wireguard import icmp_echo, parse_icmp_echo
from udpoverlay.dataplane import twins, wgio
from udpoverlay.peer import Peer
from udpoverlay.wgplane import WgPlane
from udpoverlay.wgplane.batched import Batches
from udpoverlay.wireguard import generate

A_NET, B_NET = ipaddress.IPv4Network("198.19.1.0/24"), ipaddress.IPv4Network("198.19.2.0/24")
MARK = b"batched-payload-marker"
TWINS = ["python"] + (["cython"] if twins.IMPLEMENTATION == "cython" else [])


class Side:
    """One plane with its socket, its stand-in TUN and its batch path."""

    def __init__(self, name: str, twin: str, net, key) -> None:
        self.name, self.net, self.key = name, net, key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        self.tun, self.app = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tun.setblocking(False)
        self.app.setblocking(False)
        self.plane = WgPlane(key, net)
        self.plane.set_mtu(1420)
        self.plane.io = wgio.wgio_class(twin)(False, False, False, False, 1420)
        self.batches = Batches(self.plane, self.plane.io)

    def peer_of(self, other: "Side", subnet=None) -> Peer:
        return Peer(ipaddress.IPv4Address(other.addr[0]), other.addr[1], subnet or other.net,
                    public_key=other.key.public.to_base64())

    def send(self, datagrams) -> None:
        for data, addr in datagrams:
            self.sock.sendto(data, addr)

    def delivered(self) -> list[bytes]:
        out = []
        for _ in range(10000):
            try:
                out.append(self.app.recv(65535))
            except BlockingIOError:
                return out
        raise AssertionError("more packets than expected")

    def close(self) -> None:
        self.plane.close()
        for s in (self.sock, self.tun, self.app):
            s.close()


def wire(side: Side, timeout: float = 1.0) -> list[bytes]:
    """Datagrams waiting on side's socket, read raw (not delivered)."""
    out: list[bytes] = []
    while select.select([side.sock], [], [], timeout if not out else 0.05)[0]:
        out.append(side.sock.recv(65535))
        if len(out) > 10000:
            raise AssertionError("a flood")
    return out


@pytest.fixture(params=TWINS)
def pair(request):
    a = Side("a", request.param, A_NET, generate())
    b = Side("b", request.param, B_NET, generate())
    try:
        a.plane.set_peers([a.peer_of(b, ipaddress.IPv4Network("198.19.2.0/23"))], strict=True)
        b.plane.set_peers([b.peer_of(a)], strict=True)
        yield a, b
    finally:
        a.close()
        b.close()


def pump(a: Side, b: Side, rounds: int = 20) -> None:
    """Run both batch paths until nothing moves (bounded)."""
    for _ in range(rounds):
        select.select([a.sock, b.sock, a.tun, b.tun], [], [], 0.2)
        moved = False
        for s in (a, b):
            now = s.plane.clock()
            for out in (s.batches.from_tun(s.tun.fileno(), s.sock.fileno(), now),
                        s.batches.from_wire(s.sock.fileno(), s.tun.fileno(), now)):
                s.send(out)
                moved = moved or bool(out)
        if not moved and not select.select([a.sock, b.sock, a.tun, b.tun], [], [], 0.1)[0]:
            return


def pings(n: int, src="198.19.1.5", dst="198.19.2.7") -> list[bytes]:
    return [icmp_echo(src, dst, 7, i, MARK + bytes(i % 16)) for i in range(n)]


def test_waiting_packets_then_a_run_sealed_in_counter_order(pair):
    a, b = pair
    first = pings(3)
    for p in first:
        a.app.send(p)
    pump(a, b)
    assert b.delivered() == first           # waited for the handshake, then arrived
    c = a.plane.counters()
    assert c["tx_packets"] == 3 and c["wg_tx_initiation"] == 1

    run = pings(50)
    for p in run:
        a.app.send(p)
    a.send(a.batches.from_tun(a.tun.fileno(), a.sock.fileno(), a.plane.clock()))
    seen = wire(b)
    assert len(seen) == 50
    receivers = {struct.unpack_from("<I", d, 4)[0] for d in seen}
    counters = [struct.unpack_from("<Q", d, 8)[0] for d in seen]
    assert len(receivers) == 1 and counters == list(range(counters[0], counters[0] + 50))
    for d, p in zip(seen, run):
        assert d[:4] == b"\x04\x00\x00\x00" and MARK not in d and bytes([198, 19, 2, 7]) not in d
        assert len(d) == 32 + -(-len(p) // 16) * 16        # padded to 16

    # Delivered from A's own address: in order, all of them.
    a.send((d, b.addr) for d in seen)
    b.send(b.batches.from_wire(b.sock.fileno(), b.tun.fileno(), b.plane.clock()))
    assert b.delivered() == run
    rx = b.plane.counters()["rx_packets"]

    # The same datagrams again: replays, each dropped and counted, nothing written.
    a.send((d, b.addr) for d in seen)
    b.batches.from_wire(b.sock.fileno(), b.tun.fileno(), b.plane.clock())
    assert b.delivered() == []
    cb = b.plane.counters()
    assert cb["rx_drop_replay"] == 50 and cb["rx_packets"] == rx


def test_forgeries_and_cryptokey_routing(pair):
    a, b = pair
    a.app.send(pings(1)[0])
    pump(a, b)
    assert len(b.delivered()) == 1
    base = b.plane.counters()

    # One bit flipped in a captured datagram; an unknown receiver index.
    a.app.send(pings(1)[0])
    a.send(a.batches.from_tun(a.tun.fileno(), a.sock.fileno(), a.plane.clock()))
    [d] = wire(b)
    flipped = bytearray(d)
    flipped[40] ^= 1
    stranger = b"\x04\x00\x00\x00" + os.urandom(4) + bytes(8) + os.urandom(48)
    a.send([(bytes(flipped), b.addr), (stranger, b.addr)])
    b.batches.from_wire(b.sock.fileno(), b.tun.fileno(), b.plane.clock())
    assert b.delivered() == []
    c = b.plane.counters()
    assert c["rx_drop_bad_auth"] == base["rx_drop_bad_auth"] + 1
    assert c["rx_drop_unknown_index"] == base["rx_drop_unknown_index"] + 1

    # Authenticated, but from outside A's subnet; and for beyond B's own
    # subnet (A routes 198.19.2.0/23 to B): both dropped by B, counted.
    a.app.send(icmp_echo("198.19.9.9", "198.19.2.7", 7, 1, MARK))
    a.app.send(icmp_echo("198.19.1.5", "198.19.3.7", 7, 2, MARK))
    ok = icmp_echo("198.19.1.5", "198.19.2.8", 7, 3, MARK)
    a.app.send(ok)
    pump(a, b)
    got = [parse_icmp_echo(p) for p in b.delivered()]
    assert [(g["src"], g["dst"]) for g in got] == [("198.19.1.5", "198.19.2.8")]
    c2 = b.plane.counters()
    assert c2["rx_drop_wrong_inner_source"] == c["rx_drop_wrong_inner_source"] + 1
    assert c2["rx_drop_not_local"] == c["rx_drop_not_local"] + 1
    assert a.plane.counters()["tx_drop_no_route"] == 0


def test_no_route_and_not_ipv4_never_leave(pair):
    a, b = pair
    a.app.send(icmp_echo("198.19.1.5", "198.19.200.1", 7, 1, MARK))   # nobody's subnet
    a.app.send(b"\x60" + bytes(47))                                     # IPv6
    a.app.send(b"\x45" + bytes(5))                                      # too short
    out = a.batches.from_tun(a.tun.fileno(), a.sock.fileno(), a.plane.clock())
    assert out == [] and wire(b, 0.3) == []
    c = a.plane.counters()
    assert (c["tx_drop_no_route"], c["tx_drop_not_ipv4"], c["tx_drop_too_short"]) == (1, 1, 1)


def test_a_new_mtu_reaches_the_batch_path(pair):
    a, _b = pair
    a.plane.set_mtu(1280)
    assert a.plane.engine.mtu == a.plane.io.mtu == 1280
    a.app.send(icmp_echo("198.19.1.5", "198.19.2.7", 7, 1, bytes(1300)))   # 1328 bytes: too big now
    a.batches.from_tun(a.tun.fileno(), a.sock.fileno(), a.plane.clock())
    assert a.plane.counters()["tx_drop_too_big"] == 1
