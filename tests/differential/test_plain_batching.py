"""Differential tests of a plain TUN (no vnet header: one packet per read
and write) over a batching underlay socket (UDP_SEGMENT on send, UDP_GRO on
receive), through both twins' real I/O loops on real fds (a SEQPACKET pair
as the TUN, UDP sockets on 127.0.0.1).

What must hold, on valid, malformed and random input, udp and vxlan (with
source sockets): the compiled core and the reference send the same
messages (the peers' sockets have UDP_GRO, so each UDP_SEGMENT message
arrives as one buffer with its segment size: the packing is visible), write
the same packets to the TUN and count the same. And batching changes only
the number of kernel calls: the wire datagrams, TUN writes, counters (but
tx_gso_messages) and peer statistics equal those of the fully plain path.

Loopback only; every fd is closed, every wait bounded."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import pktgen as g
from tests.support.iorig import BODY, MARKER, Rig, drain_now, make, rig, udp_socket
from tests.support.iorig import run_tx as io_run_tx
from tests.support.twins import both
from udpoverlay.dataplane import wire

PLAIN_GSO = (False, True, False, True)   # vnet_hdr, udp_gso, tun_uso, udp_gro
PLAIN = None                             # --no-offload --no-udp-offload
CMSG = socket.CMSG_SPACE(4)
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def gro_on(*socks: socket.socket) -> None:
    for s in socks:
        s.setsockopt(wire.SOL_UDP, wire.UDP_GRO, 1)


def gro_of(anc) -> int:
    for level, kind, data in anc:
        if level == wire.SOL_UDP and kind == wire.UDP_GRO:
            return struct.unpack("=i", data[:4])[0]
    return 0


def drain_gro(s: socket.socket, sender: socket.socket, limit: float = 2.0) -> list:
    """What s (UDP_GRO on) received up to a marker sent now from `sender`:
    [(data, GRO segment size or 0, source port)]."""
    sender.sendto(MARKER, s.getsockname())
    out: list = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data, anc, _flags, addr = s.recvmsg(65536, CMSG)
        except BlockingIOError:
            time.sleep(0.002)
            continue
        if data == MARKER and addr == sender.getsockname():
            return out
        out.append((data, gro_of(anc), addr[1]))
    raise AssertionError("the marker never came: loopback lost a datagram")


def segments(got: list) -> list:
    """Received buffers as the wire datagrams they carried: [(data, port)]."""
    out = []
    for data, gro, port in got:
        step = gro if 0 < gro < len(data) else max(len(data), 1)
        out += [(data[i:i + step], port) for i in range(0, max(len(data), 1), step)]
    return out


def without(counters: dict, *names: str) -> dict:
    return {k: v for k, v in counters.items() if k not in names}


# -- TX: TUN reads -> UDP_SEGMENT messages ------------------------------------------------
def tx_reads() -> list[bytes]:
    """Runs of equal-sized packets to peers A and B interleaved (several
    sizes, a shorter packet ending each run, TCP and UDP), a packet larger
    than a GSO message allows, no route and TTL 1 (ICMP back to the TUN),
    too short and not IPv4: more than two batches."""
    out = []
    dsts = ("198.19.2.10", "198.19.3.20", "198.19.2.11")
    at = 0
    for run in range(16):
        size = (1400, 1400, 600, 20, 1400, 900, 1)[run % 7]
        for k in range(10):
            n = size if k < 9 else max(size // 3, 1)
            dst = dsts[(run + k) % 3]
            if run % 2:
                out.append(bytes(g.tcp("198.19.1.5", dst, 40000 + run % 4, 5201, at,
                                       BODY[at % 7000:at % 7000 + n])))
            else:
                out.append(bytes(g.udp("198.19.1.5", dst, 40000 + run % 4, 5201,
                                       BODY[at % 7000:at % 7000 + n])))
            at += 131
        if run % 4 == 1:
            out.append(bytes(g.udp("198.19.1.5", "198.19.77.1", 4000, 53, BODY[:40])))
        if run % 4 == 2:
            out.append(bytes(g.udp("198.19.1.5", dsts[0], 4000, 53, BODY[:40], ttl=1)))
        if run % 4 == 3:
            out += [b"\x45\x00\x00", b"\x60" + bytes(59)]
        if run == 5:
            out.append(bytes(g.udp("198.19.1.5", dsts[1], 4000, 53, bytes(40000))))
    return out


def received_gro(r: Rig, s: socket.socket) -> list:
    """What peer socket s got: [(buffer, GRO size, the engine's source socket)]."""
    return [(d, gro, r.source(port)) for d, gro, port in drain_gro(s, r.sock)]


def run_tx(twin, r: Rig, backend: str, offload, reads: list[bytes]):
    return io_run_tx(twin, r, backend, offload, reads, drain=received_gro)


def tx_all(backend: str, reads: list[bytes]):
    """(reference, compiled, fully plain reference) runs over one rig."""
    with rig(3 if backend == "vxlan" else 0) as r:
        gro_on(r.a, r.b)
        py, cy = (run_tx(t, r, backend, PLAIN_GSO, reads) for t in both())
        plain = run_tx(both()[0], r, backend, PLAIN, reads)
    return py, cy, plain


def check_tx(py, cy, plain, reads) -> None:
    for a, b in zip(py, cy):
        assert a == b
    assert py[0] == plain[0] == len(reads)
    # the same wire datagrams from the same sockets as the fully plain path
    for name in ("a", "b"):
        assert segments(py[1][name]) == segments(plain[1][name])
        assert all(gro == 0 for _d, gro, _s in plain[1][name])
    assert py[2] == plain[2], "ICMP errors: the same plain writes (no vnet header)"
    assert without(py[3], "tx_gso_messages") == without(plain[3], "tx_gso_messages")
    assert plain[3]["tx_gso_messages"] == 0
    assert py[4] == plain[4]
    assert plain[5] is False
    # every multi-segment buffer the peers got was one message, counted
    multi = sum(1 for name in ("a", "b") for _d, gro, _s in py[1][name]
                if gro and len(_d) > gro)
    assert py[3]["tx_gso_messages"] == multi


def test_tx_packs_plain_reads_udp():
    reads = tx_reads()
    py, cy, plain = tx_all("udp", reads)
    check_tx(py, cy, plain, reads)
    c = py[3]
    assert py[5] is True and 0 < c["tx_gso_messages"] < c["tx_packets"] // 4, c
    assert c["icmp_sent"] == len(py[2]) > 0
    assert c["tx_drop_too_short"] > 0 and c["tx_drop_not_ipv4"] > 0


def test_tx_packs_plain_reads_vxlan_with_source_sockets():
    reads = tx_reads()
    py, cy, plain = tx_all("vxlan", reads)
    check_tx(py, cy, plain, reads)
    assert py[3]["tx_gso_messages"] > 0
    assert {src for name in ("a", "b") for _d, _g, src in py[1][name]} - {-1}, \
        "no source socket used"


def test_tx_kernel_refusing_udp_segment_falls_back_alike():
    """SO_NO_CHECK makes the kernel refuse UDP_SEGMENT (EINVAL): both twins
    send that message's datagrams one by one, turn GSO off for good and lose
    nothing; the peers see exactly the fully plain path's datagrams."""
    reads = tx_reads()
    with rig() as r:
        gro_on(r.a, r.b)
        plain = run_tx(both()[0], r, "udp", PLAIN, reads)
        r.sock.setsockopt(socket.SOL_SOCKET, 11, 1)      # SO_NO_CHECK
        py, cy = (run_tx(t, r, "udp", PLAIN_GSO, reads) for t in both())
    for a, b in zip(py, cy):
        assert a == b
    for name in ("a", "b"):
        assert py[1][name] == plain[1][name]
    assert py[3] == plain[3] and py[3]["tx_drop_tx_error"] == 0 and py[3]["tx_gso_messages"] == 0
    assert py[5] is False, "GSO stays off after the kernel refused it"


dst_ip = st.sampled_from(["198.19.2.5", "198.19.3.7", "198.19.2.6", "198.19.200.1"])


@st.composite
def tun_read(draw) -> bytes:
    kind = draw(st.sampled_from(["udp"] * 6 + ["tcp"] * 3 + ["short", "garbage"]))
    if kind == "short":
        return draw(st.binary(max_size=19))
    if kind == "garbage":
        return draw(st.binary(min_size=20, max_size=200))
    n = draw(st.sampled_from([0, 1, 100, 500, 1000, 1400, 1400, 1472 - 28]))
    ttl = draw(st.sampled_from([64, 64, 64, 1]))
    at = draw(st.integers(0, 5000))
    if kind == "tcp":
        return bytes(g.tcp("198.19.1.5", draw(dst_ip), draw(st.integers(1, 4)), 5201, at,
                           BODY[at:at + n], ttl=ttl))
    return bytes(g.udp("198.19.1.5", draw(dst_ip), draw(st.integers(1, 4)), 5201,
                       BODY[at:at + n], ttl=ttl))


@SETTINGS
@given(reads=st.lists(tun_read(), min_size=1, max_size=150),
       backend=st.sampled_from(["udp", "vxlan"]))
def test_tx_random_reads_identical(reads, backend):
    py, cy, plain = tx_all(backend, reads)
    check_tx(py, cy, plain, reads)


# -- RX: GRO buffers -> one plain TUN write per accepted datagram --------------------------
def rx_sends(backend: str) -> list:
    """[(sender, [segments])]: each list goes out as one UDP_SEGMENT send
    (equal sizes, the last may be shorter), so it reaches a GRO socket as
    one buffer. A: a TCP stream with a short last segment, UDP with a
    spoofed, a not-local, a TTL-0 and a non-IPv4 datagram of the same size
    inside, a 10-byte keepalive tail; B: its own flow; C: a host address
    but a port no peer has (bad_port in udp mode, per datagram)."""
    frame = (lambda p: g.vxlan(p)) if backend == "vxlan" else (lambda p: bytes(p))
    tcp = [frame(g.tcp("198.19.2.10", "198.19.1.5", 40000, 5201, 1000 + i * 1200,
                       BODY[i * 1200:(i + 1) * 1200 if i < 9 else i * 1200 + 333], ident=i))
           for i in range(10)]
    body = BODY[:300]
    mixed = [frame(g.udp("198.19.2.11", "198.19.1.5", 50000, 5201, body)),
             frame(g.udp("198.19.4.11", "198.19.1.5", 50000, 5201, body)),     # spoofed
             frame(g.udp("198.19.2.11", "198.19.9.5", 50000, 5201, body)),     # not local
             frame(g.udp("198.19.2.11", "198.19.1.5", 50000, 5201, body, ttl=0)),
             frame(b"\x60" + bytes(327)),                                       # not IPv4
             frame(g.udp("198.19.2.11", "198.19.1.5", 50001, 5201, body))]
    keep = [frame(g.udp("198.19.2.12", "198.19.1.6", 50000, 5201, BODY[:72])),
            frame(g.udp("198.19.2.12", "198.19.1.6", 50000, 5201, BODY[72:144])),
            bytes(10)]
    b = [frame(g.udp("198.19.3.3", "198.19.1.7", 50000, 5201, BODY[:900]))] * 5
    c = [frame(g.udp("198.19.2.13", "198.19.1.8", 50000, 5201, BODY[:200]))] * 4
    out = [("a", tcp), ("b", b), ("a", mixed), ("c", c), ("a", keep), ("a", tcp[:1])]
    if backend == "vxlan":
        out.append(("a", [g.vxlan(g.udp("198.19.2.11", "198.19.1.5", 1, 2, body), vni=7)] * 3))
    return out


class RxRig(Rig):
    """A Rig plus a third sender C on the peers' address, at a port no peer has."""

    def __init__(self) -> None:
        super().__init__(0)
        self.c = self.keep(udp_socket())


def send(r: RxRig, sends: list) -> None:
    for who, segs in sends:
        s = {"a": r.a, "b": r.b, "c": r.c}[who]
        anc = [(wire.SOL_UDP, wire.UDP_SEGMENT, struct.pack("=H", len(segs[0])))] \
            if len(segs) > 1 else []
        s.sendmsg([b"".join(segs)], anc, 0, r.sock.getsockname())


def run_rx(twin, r: RxRig, backend: str, offload, sends: list):
    e = make(twin, r, backend, offload)
    try:
        send(r, sends)
        drain_now(r.tun_app)
        # loopback delivers at send time; what the engine's socket holds first:
        _d, anc, _f, _a = r.sock.recvmsg(65536, CMSG, socket.MSG_PEEK)
        first_gro = gro_of(anc)
        done = e.core.udp_to_tun(r.sock.fileno(), r.tun_dev.fileno())
        writes = drain_now(r.tun_app)
        replies = []
        with contextlib.suppress(BlockingIOError):
            while True:
                replies.append(r.a.recv(65536))
        return first_gro, done, writes, replies, e.counters(), e.peer_status()
    finally:
        e.close()


def rx_all(backend: str, sends: list):
    """(reference, compiled) with UDP_GRO on the engine's socket, then the
    fully plain reference with it off again."""
    with contextlib.closing(RxRig()) as r:
        gro_on(r.sock)
        py, cy = (run_rx(t, r, backend, PLAIN_GSO, sends) for t in both())
        r.sock.setsockopt(wire.SOL_UDP, wire.UDP_GRO, 0)
        plain = run_rx(both()[0], r, backend, PLAIN, sends)
    return py, cy, plain


def check_rx(py, cy, plain, sends) -> None:
    for a, b in zip(py, cy):
        assert a == b
    if len(sends[0][1]) > 1:
        assert py[0] == len(sends[0][1][0]), "no GRO buffer reached the engine"
    assert plain[0] == 0
    assert py[1] == len(sends) and plain[1] == sum(len(s) for _w, s in sends)
    # one plain write per accepted datagram, exactly as the fully plain path
    assert py[2:] == plain[2:]


def test_rx_splits_gro_buffers_udp():
    sends = rx_sends("udp")
    py, cy, plain = rx_all("udp", sends)
    check_rx(py, cy, plain, sends)
    c = py[4]
    assert len(py[2]) == c["rx_packets"] == 10 + 5 + 2 + 2 + 1
    assert (c["rx_drop_spoofed_src"], c["rx_drop_not_local"], c["rx_drop_ttl_expired"],
            c["rx_drop_not_ipv4"], c["rx_drop_bad_port"], c["rx_keepalive"]) == (1, 1, 1, 1, 4, 1)
    assert c["rx_coalesced"] == 0, "a plain TUN takes no GSO writes"
    assert all(w[0] == 0x45 for w in py[2]), "plain writes: no vnet header"


def test_rx_splits_gro_buffers_vxlan():
    sends = rx_sends("vxlan")
    py, cy, plain = rx_all("vxlan", sends)
    check_rx(py, cy, plain, sends)
    c = py[4]
    assert c["rx_drop_bad_vni"] == 3 and c["rx_drop_spoofed_src"] == 1
    assert c["rx_packets"] == len(py[2]) > 0


@st.composite
def rx_send(draw):
    who = draw(st.sampled_from("aabc"))
    src = {"a": "198.19.2.%d", "b": "198.19.3.%d", "c": "198.19.2.%d"}[who]
    n = draw(st.sampled_from([0, 8, 100, 1000, 1372]))
    nseg = draw(st.integers(1, 12))
    segs = []
    for i in range(nseg):
        kind = draw(st.sampled_from(["ok"] * 6 + ["spoofed", "not_local", "garbage"]))
        s = (src if kind != "spoofed" else "198.19.50.%d") % (i + 1)
        d = "198.19.1.5" if kind != "not_local" else "198.19.9.5"
        pkt = bytes(g.udp(s, d, 50000, 5201, BODY[i:i + n]))
        if kind == "garbage":
            pkt = draw(st.binary(min_size=len(pkt), max_size=len(pkt)))
        segs.append(pkt)
    if draw(st.booleans()):
        segs.append(segs[-1][:draw(st.integers(1, len(segs[-1])))])   # a short last one
    return who, segs


@SETTINGS
@given(sends=st.lists(rx_send(), min_size=1, max_size=20),
       backend=st.sampled_from(["udp", "vxlan"]))
def test_rx_random_gro_buffers_identical(sends, backend):
    if backend == "vxlan":
        sends = [(who, [g.vxlan(s) for s in segs]) for who, segs in sends]
    py, cy, plain = rx_all(backend, sends)
    check_rx(py, cy, plain, sends)
