"""The socket group of --queues on real sockets (loopback; no root needed):
the steering program keeps each inner flow on one socket, spreads flows,
chooses exactly the documented hash, sends fragments and malformed
datagrams somewhere predictable, and a second group cannot join the port."""

from __future__ import annotations

import random
import select
import socket
import struct

import pytest

from udpoverlay.dataplane.wire import VXLAN_HDR
from udpoverlay.errors import TunSetupError
from udpoverlay.host import queues

LO = "127.0.0.1"


def inner(src: str, dst: str, proto: int = 6, sport: int = 1000, dport: int = 2000,
          frag: int = 0, ihl: int = 5) -> bytes:
    """An IPv4 header (+ options to ihl) and 8 bytes of L4 header."""
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + 8, 1, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head + bytes(4 * (ihl - 5)) + struct.pack("!HHI", sport, dport, 0)


def expected(pkt: bytes, n: int) -> int:
    """The hash the program is documented to compute (host/queues.py)."""
    src, dst = struct.unpack_from("!II", pkt, 12)
    h = src ^ dst
    if not struct.unpack_from("!H", pkt, 6)[0] & 0x3FFF and pkt[9] in (6, 17):
        h ^= struct.unpack_from("!I", pkt, (pkt[0] & 0x0F) * 4)[0]
    return ((h >> 16) ^ h) % n


@pytest.fixture
def group(request):
    backend, n = request.param
    # port 0 cannot form a group (each bind picks a new port): find a free one
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LO, 0))
    port = probe.getsockname()[1]
    probe.close()
    socks = queues.open_socket_group(LO, port, n, backend)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((LO, 0))
    yield backend, port, socks, sender
    sender.close()
    for s in socks:
        s.close()


def deliver(socks, sender, port, payloads) -> list[int]:
    """Send each payload from one fixed source; the index of the socket
    each one arrived at, in order."""
    where = []
    for p in payloads:
        sender.sendto(p, (LO, port))
        ready, _, _ = select.select(socks, [], [], 2)
        assert len(ready) == 1, "each datagram arrives at exactly one socket"
        assert ready[0].recv(65535) == p
        where.append(socks.index(ready[0]))
    return where


@pytest.mark.parametrize("group", [("udp", 4), ("vxlan", 4), ("udp", 3)], indirect=True)
def test_each_flow_on_one_socket_chosen_by_the_documented_hash(group):
    backend, port, socks, sender = group
    n = len(socks)
    pre = bytes(VXLAN_HDR) if backend == "vxlan" else b""
    rng = random.Random(5)
    flows = [(f"198.19.{rng.randrange(256)}.{rng.randrange(1, 255)}",
              f"198.19.{rng.randrange(256)}.{rng.randrange(1, 255)}",
              rng.choice((6, 17)), rng.randrange(1024, 65536), rng.randrange(1, 65536))
             for _ in range(24)]
    seen: dict[tuple, set[int]] = {}
    for _ in range(3):
        for f in flows:
            pkt = inner(*f)
            [got] = deliver(socks, sender, port, [pre + pkt])
            assert got == expected(pkt, n), f
            seen.setdefault(f, set()).add(got)
    assert all(len(v) == 1 for v in seen.values())
    assert len({next(iter(v)) for v in seen.values()}) == n, "24 flows use every socket"


@pytest.mark.parametrize("group", [("udp", 4)], indirect=True)
def test_both_directions_and_all_fragments_of_a_flow_meet(group):
    backend, port, socks, sender = group
    a, b = "198.19.1.5", "198.19.2.7"
    for sport, dport in ((40000, 5201), (40001, 80), (5, 6)):
        fwd = deliver(socks, sender, port, [inner(a, b, 6, sport, dport)])
        back = deliver(socks, sender, port, [inner(b, a, 6, dport, sport)])
        assert fwd == back
    # fragments: first (MF), middle and last carry different "ports"; all go
    # to the address-only choice, so reassembly sees them in order
    frags = [inner(a, b, 17, 1, 2, frag=0x2000), inner(a, b, 17, 3, 4, frag=0x2000 | 185),
             inner(a, b, 17, 5, 6, frag=370)]
    where = deliver(socks, sender, port, frags)
    assert len(set(where)) == 1 and where[0] == expected(frags[0], 4)
    # IP options move the ports: the program follows the header length
    opt = inner(a, b, 6, 1234, 80, ihl=7)
    assert deliver(socks, sender, port, [opt]) == [expected(opt, 4)]


@pytest.mark.parametrize("group", [("udp", 4)], indirect=True)
def test_malformed_datagrams_go_to_socket_zero(group):
    backend, port, socks, sender = group
    short = [b"", b"\x01", bytes(15), inner("198.19.1.1", "198.19.2.2")[:19]]
    assert deliver(socks, sender, port, short) == [0, 0, 0, 0]
    # a TCP header cut short after the IP header: the port load fails too
    cut = inner("198.19.1.1", "198.19.2.2", 6)[:22]
    assert deliver(socks, sender, port, [cut]) == [0]


@pytest.mark.parametrize("group", [("udp", 2)], indirect=True)
def test_a_second_group_or_instance_cannot_take_the_port(group):
    backend, port, socks, sender = group
    with pytest.raises(TunSetupError, match="cannot bind UDP"):
        queues.open_socket_group(LO, port, 2, backend)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(OSError):
        plain.bind((LO, port))
    plain.close()


def test_program_bounds():
    with pytest.raises(ValueError):
        queues.steering_program("udp", 0)
    with pytest.raises(ValueError):
        queues.steering_program("udp", 17)
    prog = queues.steering_program("vxlan", 2)
    assert prog[0][3] == VXLAN_HDR + 12 and prog[-2] == (0x94, 0, 0, 2)
