"""Differential tests of WgIo, the WireGuard plane's batched I/O: the
compiled twin (_fastpath/wgio.pxi) and the reference
(dataplane/_py/wgio.py) run one after the other over the same real fds and
inputs and must return the same groups, `more`, packets, datagrams, open()
and accept() results and counters, send the same datagrams and write the
same packets to the TUN.

The bed is one network namespace made here (removed at the end, also on a
failure), with addresses from 198.18.0.0/15 only:

- lo holds the underlay: WgIo's socket on 198.18.0.1, peers A (.2) and B
  (.3), each a socket with UDP_GRO off that captures what WgIo sends
  (then opened with the other side's key: the reference WgKey).
- Three real TUNs: wv0 (IFF_VNET_HDR, TSO/USO on) and wg0 (plain) are
  WgIo's; inj0 (vnet) is the test's. A packet the test writes into inj0 is
  forwarded by the kernel to wv0 (peer subnets 198.19.2-3.0/24) or wg0
  (198.19.4-5.0/24): WgIo then reads what a kernel makes of it (TSO/USO
  super-packets, NEEDS_CSUM, software-segmented ones on the plain TUN).
  What WgIo writes to wv0/wg0 for our subnet 198.19.1.0/24 is forwarded to
  inj0, where it is read back (GSO writes come out as the kernel took them).
- Input no kernel makes (a bad vnet header, short reads, not IPv4) and the
  exact bytes of TUN writes go through a SEQPACKET socket pair standing in
  for the TUN, as tests/support/iorig.py does, with Hypothesis' random
  packets there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.differential.test_offload import malformed, single, tcp_super, udp_super
from tests.support import pktgen as g
from tests.support.nodebed import in_netns
from tests.support.requirements import require_root_tools
from tests.support.twins import both
from udpoverlay.dataplane import wgwire, wire
from udpoverlay.dataplane._py import checksum as cs
from udpoverlay.dataplane._py import wgio as ref
from udpoverlay.dataplane._py.wgcrypto import WgKey as RefKey
from udpoverlay.host.tun import create_tun, set_offloads

KEY_A, KEY_B, KEY_X = bytes(range(32)), bytes(range(32, 64)), bytes(32)
RECV_A, RECV_B = 0x0A0A0A01, 0x0B0B0B02          # our receiver index per peer
WG_PORT = 51820
ME, PEER_A, PEER_B = "198.18.0.1", "198.18.0.2", "198.18.0.3"
LOCAL_NET, LOCAL_MASK = g.ip("198.19.1.0"), 0xFFFFFF00
NETS = {"wv0": ("198.19.2", "198.19.3"), "wg0": ("198.19.4", "198.19.5")}
ALLOWED = {PEER_A: [(g.ip("198.19.2.0"), 0xFFFFFF00), (g.ip("198.19.4.0"), 0xFFFFFF00)],
           PEER_B: [(g.ip("198.19.3.0"), 0xFFFFFF00), (g.ip("198.19.5.0"), 0xFFFFFF00)]}
MARKER = b"end of the test traffic"
BODY = bytes((i * 37 + 11) & 0xFF for i in range(70000))
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the bed ---------------------------------------------------------------------------
def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, timeout=30)


class Bed:
    """The namespace, its TUNs and sockets (see the module notes)."""

    def __init__(self) -> None:
        self.netns = "uowgio-" + secrets.token_hex(3)
        self.closers: list = []
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=30)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        ns = self.netns
        for key in ("all", "default"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            f"net.ipv6.conf.{key}.disable_ipv6=1",
                            f"net.ipv4.conf.{key}.rp_filter=0"], check=True, timeout=30)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                       check=True, timeout=30)
        ip(ns, "link", "set", "lo", "up")
        for a in (ME, PEER_A, PEER_B):
            ip(ns, "addr", "add", f"{a}/32", "dev", "lo")
        self.tuns = {}
        for name, vnet in (("wv0", True), ("wg0", False), ("inj0", True)):
            tun = in_netns(ns, create_tun, name, vnet)
            self.closers.append(tun.close)
            offloads = set_offloads(tun.fd) if vnet else ()
            os.set_blocking(tun.fd, False)
            ip(ns, "link", "set", name, "mtu", "1500", "txqueuelen", "10000", "up")
            self.tuns[name] = (tun.fd, offloads)
        assert "uso4" in self.tuns["inj0"][1] and "tso4" in self.tuns["wv0"][1]
        ip(ns, "route", "add", "198.19.1.0/24", "dev", "inj0")
        for name, nets in NETS.items():
            for net in nets:
                ip(ns, "route", "add", f"{net}.0/24", "dev", name)
        self.me = self.udp(ME, WG_PORT)
        self.a = self.udp(PEER_A, WG_PORT)
        self.b = self.udp(PEER_B, WG_PORT + 1)
        self.addr = {PEER_A: self.a.getsockname(), PEER_B: self.b.getsockname()}

    def udp(self, host: str, port: int = 0) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            s.bind((host, port))
            s.setblocking(False)
            return s
        s = in_netns(self.netns, make)
        self.closers.append(s.close)
        return s

    def fd(self, name: str) -> int:
        return self.tuns[name][0]

    def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(OSError):
                close()
        subprocess.run(["ip", "netns", "del", self.netns], check=False, timeout=30)


@pytest.fixture(scope="module")
def bed():
    require_root_tools()
    both()
    b = Bed()
    try:
        yield b
    finally:
        b.close()


def drain(fd: int) -> list[bytes]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(os.read(fd, 1 << 17))
    return out


def drain_socket(s: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while True:
            s.recv(1 << 17)


def captured(s: socket.socket, sender: socket.socket) -> list[bytes]:
    """Everything s got, up to a marker sent now from `sender` (loopback
    keeps one sender's order)."""
    sender.sendto(MARKER, s.getsockname())
    out: list[bytes] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            data, addr = s.recvfrom(1 << 17)
        except BlockingIOError:
            time.sleep(0.002)
            continue
        if data == MARKER and addr == sender.getsockname():
            return out
        out.append(data)
    raise AssertionError("the marker never came")


@contextlib.contextmanager
def pair_tun():
    """A SEQPACKET socket pair standing in for a TUN: (app side, WgIo side)."""
    app, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for s in (app, dev):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        yield app, dev
    finally:
        app.close()
        dev.close()


def same(py, cy) -> None:
    """One assertion per part, for a readable failure."""
    assert len(py) == len(cy)
    for a, b in zip(py, cy):
        assert a == b


# -- TX ------------------------------------------------------------------------------------
def peer_of(dst: int) -> str:
    """Peer A for the first subnet of a TUN's pair, B for the second."""
    return PEER_A if (dst >> 8) & 0xFF in (2, 4) else PEER_B


def tx_run(twin, bed: Bed, tun_fd: int, feed, vnet: bool, gso: bool, mtu: int,
           seal_mtu: int, sock: socket.socket | None = None):
    """feed() fills the TUN; then read_tun rounds until `more` is off, each
    group sealed and sent to its peer (every third queued: packet(i) only).
    Everything observable, and what the peers got."""
    sock = sock or bed.me
    for s in (bed.a, bed.b):
        drain_socket(s)
    drain(tun_fd)
    feed()
    io = twin.WgIo(vnet, gso, False, False, mtu)
    key = twin.WgKey(KEY_A)
    rounds, sealed = [], {}
    counter = 5
    while True:
        groups = io.read_tun(tun_fd)
        n = sum(gr[2] for gr in groups)
        plain = [io.packet(i) for i in range(n)]
        sent, spent = [], []
        for k, (dst, first, count, _nbytes) in enumerate(groups):
            if k % 3 == 2:
                continue
            peer = peer_of(dst)
            sent.append(io.seal_send(first, count, key, RECV_A, counter, seal_mtu,
                                     sock.fileno(), (peer, bed.addr[peer][1])))
            for j in range(count):
                sealed[counter + j] = plain[first + j]
            counter += count
            for call in (lambda: io.packet(first), lambda: io.seal_send(
                    first, 1, key, RECV_A, 0, 0, sock.fileno(), (peer, 1))):
                with pytest.raises(ValueError) as e:
                    call()
                spent.append(str(e.value))
        rounds.append((groups, io.more, plain, sent, spent))
        if not io.more:
            break
    wire_ = {p: captured(s, sock) for p, s in ((PEER_A, bed.a), (PEER_B, bed.b))}
    return rounds, wire_, io.counters(), io.udp_gso, sealed


def check_wire(result, seal_mtu: int) -> None:
    """Every captured datagram opens with the peer's key (the reference
    WgKey) to the segment sealed under its counter, padded."""
    _rounds, wire_, _c, _gso, sealed = result
    key = RefKey(KEY_A)
    got = 0
    for datagrams in wire_.values():
        for (verdict, plain), d in zip(key.open_batch(datagrams), datagrams):
            assert verdict == wgwire.WG_OK
            counter = int.from_bytes(d[8:16], "little")
            pkt = sealed[counter]
            assert plain == pkt + bytes(wgwire.padded_length(len(pkt), seal_mtu) - len(pkt))
            got += 1
    assert got == len(sealed)


def both_tx(bed: Bed, tun: str, feed, vnet: bool, gso: bool, mtu: int, seal_mtu: int = 0):
    py, cy = both()
    res = [tx_run(t, bed, bed.fd(tun) if isinstance(tun, str) else tun, feed, vnet, gso, mtu,
                  seal_mtu) for t in (py, cy)]
    same(res[0], res[1])
    check_wire(res[0], seal_mtu)
    return res[0]


def inject(bed: Bed, reads: list[bytes]):
    """A feed: reads (vnet header + packet) written into inj0, forwarded by
    the kernel to wv0 or wg0 before each write returns."""
    def feed() -> None:
        for r in reads:
            os.write(bed.fd("inj0"), r)
    return feed


def kernel_traffic(tun: str) -> list[bytes]:
    """Writes into inj0 for a TUN's peer subnets: TCP super-packets (one
    with segments over an MTU of 1400), a USO one, UDP and ICMP of varied
    sizes, destinations interleaved so that groups are cut."""
    a, b = NETS[tun]
    out = []
    for i in range(12):
        dst = f"{a if i % 3 else b}.{10 + i % 2}"
        if i % 4 == 0:
            n = (20000, 9000, 60000)[i % 3]
            gso = (1448, 1300, 1448)[i % 3]
            pkt = g.tcp("198.19.1.5", dst, 40000 + i, 5201, i * 100000, BODY[i:i + n],
                        partial=True, ident=i)
            out.append(g.tun_read(pkt, wire.GSO_TCPV4, gso))
        elif i % 4 == 1:
            pkt = g.udp("198.19.1.5", dst, 41000, 5201, BODY[:5000], partial=True, ident=i)
            out.append(g.tun_read(pkt, wire.GSO_UDP_L4, 1200))
        elif i % 4 == 2:
            size = (60, 1420, 1450, 1472)[i % 4]
            pkt = g.udp("198.19.1.5", dst, 42000, 5201, BODY[i:i + size], partial=True, ident=i)
            out.append(g.tun_read(pkt))
        else:
            pkt = g.ipv4("198.19.1.5", dst, 1, b"\x08\0\xf7\xff" + bytes(4) + BODY[:200 + i])
            out.append(g.tun_read(pkt, flags=0))
    return out


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
@pytest.mark.parametrize("mtu", [1500, 1400])
@pytest.mark.parametrize("tun", ["wv0", "wg0"])
def test_tx_kernel_traffic_identical(bed, tun, mtu, gso):
    """What a kernel hands a vnet TUN (TSO/USO super-packets, NEEDS_CSUM)
    and a plain one (software-segmented): the same groups, packets,
    datagrams on the wire and counters; at MTU 1400 full 1448-byte
    segments are too big, their last, shorter one is taken."""
    res = both_tx(bed, tun, inject(bed, kernel_traffic(tun)), tun == "wv0", gso, mtu, 1420)
    rounds, wire_, c, udp_gso, sealed = res
    c = dict(zip(ref.WGIO_COUNTERS, c))
    assert sealed and wire_[PEER_A] and wire_[PEER_B]
    assert len(rounds[0][0]) > 4, "groups were not cut by destination"
    assert (c["tx_super_packets"] > 0) == (tun == "wv0")
    assert (c["tx_too_big"] > 0) == (mtu == 1400)
    assert (c["tx_gso_messages"] > 0) == gso and udp_gso == gso
    assert c["tx_send_error"] == c["tx_too_short"] == c["tx_bad_gso"] == 0
    for pkt in (p for r in rounds for p in r[2]):      # split and finished right
        if pkt[9] in (6, 17):
            assert cs.l4_ok(pkt, 20, pkt[9]), pkt[:40].hex()


def test_tx_more_when_segments_run_short(bed):
    """Big super-packets fill TX_SEGMENTS - MAX_SPLIT segments before BATCH
    reads: `more` and a second round, alike."""
    reads = [g.tun_read(g.tcp("198.19.1.5", f"198.19.{2 + i % 2}.9", 40000, 5201, i * 60000,
                              BODY[i:i + 60000], partial=True, ident=i), wire.GSO_TCPV4, 1000)
             for i in range(12)]
    rounds = both_tx(bed, "wv0", inject(bed, reads), True, True, 1500)[0]
    assert len(rounds) == 2 and rounds[0][1] and len(rounds[0][2]) == 9 * 60


def test_tx_more_after_batch_reads(bed):
    reads = [g.tun_read(g.udp("198.19.1.5", "198.19.2.9", 40000, 5201, BODY[i:i + 100],
                              partial=True, ident=i)) for i in range(wire.BATCH + 6)]
    rounds = both_tx(bed, "wv0", inject(bed, reads), True, True, 1500)[0]
    assert len(rounds) == 2 and rounds[0][1] and len(rounds[0][2]) == wire.BATCH


def crafted(reads: list[bytes], vnet: bool):
    """TUN reads no kernel makes, through the socket-pair stand-in."""
    def run(bed: Bed):
        with pair_tun() as (app, dev):
            def feed() -> None:
                for r in reads:
                    app.send(r if vnet else r[wire.VNET_HDR_LEN:] or b"")
            return both_tx(bed, dev.fileno(), feed, vnet, True, 1500, 0)
    return run


def odd_reads() -> list[bytes]:
    tcp = g.tcp("198.19.1.5", "198.19.2.5", 40000, 5201, 1, BODY[:5000], partial=True)
    udp = g.udp("198.19.1.5", "198.19.3.5", 40000, 5201, BODY[:300], partial=True)
    low_ihl = bytearray(tcp)
    low_ihl[0] = 0x44
    v6 = bytes([0x60]) + bytes(39) + BODY[:100]
    return [
        g.tun_read(tcp, wire.GSO_TCPV4, 1000),
        bytes(5),                                               # shorter than a vnet header
        bytes(10) + b"\x45\x00\x00",                            # shorter than IPv4
        bytes(10) + v6,                                         # not IPv4
        g.tun_read(tcp, wire.GSO_UDP_L4, 1000),                 # vnet type does not fit
        g.tun_read(tcp, 7, 1000),                               # unknown GSO type
        g.tun_read(tcp, wire.GSO_TCPV4, 0),                     # gso_size 0
        g.tun_read(udp, 0, 0, csum_start=400, csum_offset=6),   # NEEDS_CSUM past the end
        g.tun_read(bytes(low_ihl), wire.GSO_TCPV4, 1000),       # IHL 4
        g.tun_read(tcp, wire.GSO_TCPV4 | wire.GSO_ECN, 1400),
        g.tun_read(g.tcp("198.19.1.5", "198.19.2.5", 40000, 5201, 1, BODY[:9000],
                         partial=True), wire.GSO_TCPV4, 1480),  # full segments > MTU
        g.tun_read(udp),
        g.tun_read(bytes(low_ihl)[:1400]),                      # plain, IHL 4: taken
    ]


@pytest.mark.parametrize("vnet", [True, False], ids=["vnet", "plain"])
def test_tx_malformed_reads_identical(bed, vnet):
    rounds, _w, c, _g, _s = crafted(odd_reads(), vnet)(bed)
    c = dict(zip(ref.WGIO_COUNTERS, c))
    if vnet:
        assert c["tx_bad_gso"] == 5 and c["tx_too_short"] == 2 and c["tx_not_ipv4"] == 1
        assert c["tx_too_big"] == 6
    else:
        assert c["tx_too_short"] == 2 and c["tx_not_ipv4"] == 1 and c["tx_too_big"] == 7


tun_reads = st.lists(st.one_of(tcp_super(), udp_super(), single(), malformed()), min_size=1,
                     max_size=8)


@SETTINGS
@given(tun_reads, st.booleans(), st.sampled_from([1500, 1400, 576, 9000]))
def test_tx_random_reads_identical(bed, reads, vnet, mtu):
    with pair_tun() as (app, dev):
        def feed() -> None:
            for r in reads:
                with contextlib.suppress(OSError):      # an empty plain read cannot be sent
                    app.send(r if vnet else r[wire.VNET_HDR_LEN:])
        both_tx(bed, dev.fileno(), feed, vnet, mtu % 3 == 0, mtu, mtu // 2)


def test_tx_gso_refused_falls_back_to_plain_sends(bed):
    """SO_NO_CHECK: the kernel refuses UDP_SEGMENT (EINVAL); both twins send
    the refused messages' datagrams one by one and leave GSO off."""
    nocheck = bed.udp(ME)
    nocheck.setsockopt(socket.SOL_SOCKET, 11, 1)        # SO_NO_CHECK
    py, cy = both()
    feed = inject(bed, kernel_traffic("wv0"))
    res = [tx_run(t, bed, bed.fd("wv0"), feed, True, True, 1500, 0, nocheck) for t in (py, cy)]
    same(res[0], res[1])
    check_wire(res[0], 0)
    c = dict(zip(ref.WGIO_COUNTERS, res[0][2]))
    assert res[0][3] is False and c["tx_gso_messages"] == 0 and c["tx_send_error"] == 0


def full_buffer_run(twin) -> tuple:
    """In a namespace of its own whose lo drains at 8 kbit/s (a token
    bucket) behind a small send buffer: 60 segments sealed and sent."""
    netns = "uowgio-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    try:
        ip(netns, "link", "set", "lo", "up")
        ip(netns, "addr", "add", f"{ME}/32", "dev", "lo")
        subprocess.run(["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root",
                        "tbf", "rate", "8kbit", "burst", "1600", "limit", "1000000"],
                       check=True, timeout=30)

        def sockets() -> tuple[socket.socket, socket.socket]:
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind((ME, 0))
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            tx.bind((ME, 0))
            tx.setblocking(False)
            return rx, tx
        rx, tx = in_netns(netns, sockets)
        try:
            with pair_tun() as (app, dev):
                for i in range(60):
                    app.send(bytes(g.udp("198.19.1.5", "198.19.2.5", 1, 2, BODY[i:i + 1000])))
                io = twin.WgIo(False, False, False, False, 1500)
                n = sum(gr[2] for gr in io.read_tun(dev.fileno()))
                started = time.monotonic()
                sent = io.seal_send(0, n, twin.WgKey(KEY_A), RECV_A, 0, 0, tx.fileno(),
                                    rx.getsockname())
                return n, sent, io.counters(), time.monotonic() - started
        finally:
            rx.close()
            tx.close()
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, timeout=30)


def test_tx_full_socket_buffer_same_waits_and_drops(bed):
    """After the first datagrams every send finds the buffer full: both
    twins wait MAX_WAITS times WAIT_MS in a seal_send, then count the rest
    as tx_send_error, alike."""
    py, cy = (full_buffer_run(t) for t in both())
    assert py[:3] == cy[:3]
    c = dict(zip(ref.WGIO_COUNTERS, py[2]))
    assert py[0] == 60 and 30 < c["tx_send_error"] < 60, c
    waits = wire.MAX_WAITS * wire.WAIT_MS / 1000
    for run in (py, cy):
        assert waits * 0.9 <= run[3] < waits + 1.0, (py, cy)


def test_seal_send_argument_errors_identical(bed):
    """A caller's mistakes raise the same exceptions, before anything is
    sealed (the segments stay unspent)."""
    py, cy = both()
    out = []
    for t in (py, cy):
        io = t.WgIo(True, True, False, False, 1500)
        inject(bed, kernel_traffic("wv0")[:3])()
        n = sum(gr[2] for gr in io.read_tun(bed.fd("wv0")))
        key, fd = t.WgKey(KEY_A), bed.me.fileno()
        errors = []
        for args in [(0, n + 1, key, 1, 0, 0, fd, (PEER_A, 1)),
                     (-1, 1, key, 1, 0, 0, fd, (PEER_A, 1)),
                     (0, 1, key, 1, 0, 0, fd, ("198.18.0.300", 1)),
                     (0, 1, key, 1, 0, 0, fd, ("localhost", 1)),
                     (0, 1, key, 1, 0, 0, fd, (PEER_A, 70000)),
                     (0, 1, key, 1, 0, 0, fd, (PEER_A,)),
                     (0, 1, key, 2**32, 0, 0, fd, (PEER_A, 1)),
                     (0, 2, key, 1, 2**64 - 1, 0, fd, (PEER_A, 1)),
                     (0, 1, key, 1, 0, 70000, fd, (PEER_A, 1)),
                     (0.5, 1, key, 1, 0, 0, fd, (PEER_A, 1))]:
            with pytest.raises(Exception) as e:
                io.seal_send(*args)
            errors.append((type(e.value), str(e.value)))
        for i in (n, -1, "0"):
            with pytest.raises(Exception) as e:
                io.packet(i)
            errors.append((type(e.value), str(e.value)))
        for bad in (-1, 65504, 1.5):
            with pytest.raises(Exception) as e:
                io.set_mtu(bad)
            errors.append((type(e.value), str(e.value)))
        closed = t.WgKey(KEY_A)
        closed.close()
        with pytest.raises(ValueError):
            io.seal_send(0, 1, closed, 1, 0, 0, fd, (PEER_A, 1))
        out.append((errors, [io.packet(i) for i in range(n)], io.counters()))
    same(out[0], out[1])


def test_set_mtu_keeps_the_segments_read(bed):
    """A larger MTU between read_tun and seal_send (the compiled twin's
    slots grow): the same packets and datagrams; closed and used again."""
    py, cy = both()
    out = []
    for t in (py, cy):
        io = t.WgIo(True, False, False, False, 1400)
        inject(bed, kernel_traffic("wv0"))()
        groups = io.read_tun(bed.fd("wv0"))
        n = sum(gr[2] for gr in groups)
        before = [io.packet(i) for i in range(n)]
        io.set_mtu(9000)
        res = (groups, before == [io.packet(i) for i in range(n)], io.mtu,
               io.seal_send(0, n, t.WgKey(KEY_A), RECV_A, 0, 0, bed.me.fileno(),
                            (PEER_A, bed.addr[PEER_A][1])),
               captured(bed.a, bed.me))
        io.close()
        inject(bed, kernel_traffic("wv0")[:4])()
        out.append((res, io.read_tun(bed.fd("wv0")), io.counters()))
    same(out[0], out[1])
    assert out[0][0][1] and out[0][0][4]


def test_compiled_twin_takes_only_a_compiled_key(bed):
    cy = both()[1]
    io = cy.WgIo(False, False, False, False, 0)
    with pytest.raises(TypeError):
        io.seal_send(0, 0, RefKey(KEY_A), 1, 0, 0, bed.me.fileno(), (PEER_A, 1))
    with pytest.raises(TypeError):
        io.open(0, 0, RefKey(KEY_A))
    assert io.mtu == 1500 and io.more is False


# -- RX -----------------------------------------------------------------------------------
def inner_packets(tun: str, peer: str) -> list[bytes]:
    """What a peer tunnels to us: a TCP stream the coalescer merges (with a
    push and a gap), UDP, a keepalive, IPv6, a packet longer than its
    plaintext says (malformed), a source the peer may not use, one not for
    our subnet."""
    net = NETS[tun][0 if peer == PEER_A else 1]
    src = f"{net}.10"
    out = [bytes(g.tcp(src, "198.19.1.5", 40000, 5201, 1000 + i * 1300,
                       BODY[i * 1300:(i + 1) * 1300], flags=0x18 if i == 9 else 0x10,
                       ident=i)) for i in range(12) if i != 6]
    out += [bytes(g.udp(src, "198.19.1.7", 50000, 5201, BODY[:900], ident=k)) for k in range(3)]
    out += [b"", bytes([0x60]) + bytes(3) + (60).to_bytes(2, "big") + bytes(34) + BODY[:60],
            bytes(g.udp(src, "198.19.1.7", 50000, 5201, BODY[:90]))[:60],
            bytes(g.udp("198.19.9.9", "198.19.1.7", 50000, 5201, BODY[:90])),
            bytes(g.udp(src, "198.19.8.7", 50000, 5201, BODY[:90]))]
    return out


def rx_sends(tun: str) -> list[tuple[str, bytes, int]]:
    """What the peers send us: (peer, payload, GSO size or 0). Transport
    datagrams sealed with the peer's key (runs of equal size as one GSO
    send), a run under another receiver index, one under a key we do not
    hold (bad tags), a tampered one, handshake-sized and short datagrams."""
    out = []
    for peer, key, recv in ((PEER_A, KEY_A, RECV_A), (PEER_B, KEY_B, RECV_B)):
        dgrams = RefKey(key).seal_batch(recv, 100, inner_packets(tun, peer), 1420)
        out += [(peer, b"".join(run), len(run[0]) if len(run) > 1 else 0)
                for run in gro_runs(dgrams[:11])]
        out += [(peer, d, 0) for d in dgrams[11:]]
    tampered = bytearray(RefKey(KEY_A).seal_batch(RECV_A, 7, [BODY[:500]])[0])
    tampered[40] ^= 1
    out += [(PEER_A, bytes(tampered), 0),
            (PEER_A, b"".join(RefKey(KEY_X).seal_batch(RECV_A, 1, [BODY[:100]] * 3)), 144),
            (PEER_B, b"".join(RefKey(KEY_B).seal_batch(0x99, 1, [BODY[:100]] * 2)), 144),
            (PEER_A, b"\x01" + bytes(147), 0), (PEER_B, b"\x04\0\0\0" + bytes(20), 0),
            (PEER_B, b"", 0)]
    return out


def gro_runs(dgrams: list[bytes]) -> list[list[bytes]]:
    return [[d for d in dgrams if len(d) == size] for size in sorted({len(d) for d in dgrams})]


def send(bed: Bed, sends) -> None:
    socks = {PEER_A: bed.a, PEER_B: bed.b}
    for peer, data, gso in sends:
        anc = [(wire.SOL_UDP, wire.UDP_SEGMENT, struct.pack("=H", gso))] if gso else []
        socks[peer].sendmsg([data], anc, 0, (ME, WG_PORT))
    # loopback delivers in order: a marker each peer sends the other came
    # after its datagrams to us
    captured(bed.b, bed.a)
    captured(bed.a, bed.b)


def rx_run(twin, bed: Bed, sock: socket.socket, tun_fd: int, readback, sends,
           vnet: bool, gro: bool, uso: bool):
    """Send, then recv rounds: transport runs opened with the key of their
    receiver index (another one's with peer A's: bad tags), a replay
    dropped, accepted with the source's allowed nets; other datagrams read
    and opened (malformed); written to the TUN. Everything observable."""
    drain_socket(sock)
    readback()
    send(bed, sends)
    io = twin.WgIo(vnet, False, gro, uso, 1500)
    keys = {RECV_A: twin.WgKey(KEY_A), RECV_B: twin.WgKey(KEY_B)}
    rounds = []
    while True:
        groups = io.recv(sock.fileno())
        got = []
        for kind, first, count, src, receiver in groups:
            if kind == ref.KIND_OTHER:
                d = io.datagram(first)
                opened = io.open(first, count, keys[RECV_A])
                with pytest.raises(ValueError):
                    io.datagram(first)
                got.append((d, opened))
                continue
            opened = io.open(first, count, keys.get(receiver, keys[RECV_A]))
            for j, c in enumerate(opened):
                if c >= 0 and c % 10 == 3:
                    io.drop(first + j)
            allowed = ALLOWED.get(src[0], [])
            accepted = io.accept(first, count, allowed, LOCAL_NET, LOCAL_MASK)
            again = io.accept(first, count, allowed, LOCAL_NET, LOCAL_MASK)
            with pytest.raises(ValueError):
                io.open(first, count, keys[RECV_A])
            got.append((opened, accepted, again))
        writes = io.write_tun(tun_fd)
        rounds.append((groups, io.more, got, writes))
        if not io.more:
            break
    return rounds, readback(), io.counters()


def both_rx(bed: Bed, sock: socket.socket, tun_fd: int, readback, sends, vnet, gro, uso):
    py, cy = both()
    res = [rx_run(t, bed, sock, tun_fd, readback, sends, vnet, gro, uso) for t in (py, cy)]
    same(res[0], res[1])
    return res[0]


@contextlib.contextmanager
def gro_socket(bed: Bed, gro: bool):
    """WgIo's socket, UDP_GRO on or off."""
    bed.me.setsockopt(wire.SOL_UDP, wire.UDP_GRO, int(gro))
    try:
        yield bed.me
    finally:
        bed.me.setsockopt(wire.SOL_UDP, wire.UDP_GRO, 0)


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "no-gro"])
@pytest.mark.parametrize("tun, uso", [("wv0", False), ("wv0", True), ("wg0", False)],
                         ids=["vnet", "vnet-uso", "plain"])
def test_rx_identical_into_real_tuns(bed, tun, uso, gro):
    """Received, opened, checked, written to a real TUN: what the kernel
    forwards from it is read back on inj0 and compared too."""
    with gro_socket(bed, gro) as sock:
        rounds, back, c = both_rx(bed, sock, bed.fd(tun), lambda: drain(bed.fd("inj0")),
                                  rx_sends(tun), tun == "wv0", gro, uso)
    c = dict(zip(ref.WGIO_COUNTERS, c))
    groups = [gr for r in rounds for gr in r[0]]
    accepted = [a for r in rounds for x in r[2] if len(x) == 3 for a in [x[1]]]
    total = [sum(a[k] for a in accepted) for k in range(len(ref.ACCEPT_FIELDS))]
    fields = dict(zip(ref.ACCEPT_FIELDS, total))
    assert back, "nothing reached inj0"
    assert {gr[3][0] for gr in groups} == {PEER_A, PEER_B}
    assert fields["keepalive"] == 2 and fields["malformed"] == 2 and fields["not_local"] == 2
    assert fields["wrong_source"] == 4 and fields["data"] > 20
    assert c["rx_write_error"] == c["rx_recv_error"] == 0 and c["rx_csum_bad"] == 0
    assert (c["rx_merged"] > 0) == (tun == "wv0")
    if gro:
        assert any(gr[2] > 2 for gr in groups)


@SETTINGS
@given(st.data())
def test_rx_random_datagrams_identical(bed, data):
    """Random inner packets and datagrams, GRO runs, bad tags, junk: the
    exact TUN writes (socket pair) compared too."""
    vnet, gro, uso = (data.draw(st.booleans()) for _ in range(3))
    sends = data.draw(random_sends())
    with gro_socket(bed, gro) as sock, pair_tun() as (app, dev):
        both_rx(bed, sock, dev.fileno(), lambda: drain(app.fileno()), sends, vnet, gro, uso)


@st.composite
def random_inner(draw) -> bytes:
    kind = draw(st.sampled_from(["tcp", "tcp", "udp", "empty", "v6", "junk", "cut"]))
    src = draw(st.sampled_from(["198.19.2.10", "198.19.2.11", "198.19.3.10", "198.19.9.1"]))
    dst = draw(st.sampled_from(["198.19.1.5", "198.19.1.6", "198.19.7.1"]))
    n = draw(st.sampled_from([0, 1, 100, 1300, 1300, 1400]))
    if kind == "tcp":
        return bytes(g.tcp(src, dst, 40000, 5201, draw(st.integers(0, 2**32 - 1)), BODY[:n],
                           flags=draw(st.sampled_from([0x10, 0x10, 0x18, 0x11])),
                           bad_csum=draw(st.booleans()), ident=draw(st.integers(0, 9))))
    if kind == "udp":
        return bytes(g.udp(src, dst, 40000, 5201, BODY[:n], bad_csum=draw(st.booleans())))
    if kind == "empty":
        return b""
    if kind == "v6":
        return bytes([0x60]) + bytes(3) + n.to_bytes(2, "big") + bytes(34) + BODY[:n]
    if kind == "cut":
        return bytes(g.udp(src, dst, 40000, 5201, BODY[:n]))[:draw(st.integers(0, 40))]
    return draw(st.binary(max_size=80))


@st.composite
def random_sends(draw) -> list:
    out = []
    counter = draw(st.integers(0, 2**64 - 200))
    for _ in range(draw(st.integers(1, 8))):
        peer = draw(st.sampled_from([PEER_A, PEER_B]))
        key, recv = draw(st.sampled_from([(KEY_A, RECV_A), (KEY_B, RECV_B), (KEY_X, RECV_A),
                                          (KEY_A, 0x55)]))
        kind = draw(st.sampled_from(["run", "run", "one", "junk"]))
        if kind == "junk":
            out.append((peer, draw(st.binary(max_size=200)), 0))
            continue
        inner = draw(st.lists(random_inner(), min_size=1, max_size=6 if kind == "run" else 1))
        dgrams = RefKey(key).seal_batch(recv, counter, inner, draw(st.sampled_from([0, 1420])))
        counter += len(dgrams)
        for run in gro_runs(dgrams):
            out.append((peer, b"".join(run), len(run[0]) if len(run) > 1 else 0))
    return out


def test_rx_more_after_batch_messages(bed):
    """More than BATCH messages: `more`, and the rest in a second round."""
    dgrams = RefKey(KEY_A).seal_batch(RECV_A, 1, [bytes(g.udp("198.19.2.10", "198.19.1.5", 1, 2,
                                                                BODY[:i]))
                                                  for i in range(wire.BATCH + 10)])
    sends = [(PEER_A, d, 0) for d in dgrams]
    with gro_socket(bed, True) as sock, pair_tun() as (app, dev):
        rounds = both_rx(bed, sock, dev.fileno(), lambda: drain(app.fileno()), sends, False,
                         True, False)[0]
    assert len(rounds) == 2 and rounds[0][1] and not rounds[1][1]


def test_rx_argument_errors_identical(bed):
    py, cy = both()
    out = []
    sends = rx_sends("wv0")[:3]
    for t in (py, cy):
        io = t.WgIo(True, False, False, False, 1500)
        send(bed, sends)
        n = sum(gr[2] for gr in io.recv(bed.me.fileno()))
        key = t.WgKey(KEY_A)
        errors = []
        calls = [lambda: io.open(0, n + 1, key), lambda: io.open(-1, 1, key),
                 lambda: io.datagram(n), lambda: io.datagram(-1), lambda: io.drop(n),
                 lambda: io.accept(0, n + 1, [], 0, 0), lambda: io.accept(0, 1, [(-1, 0)], 0, 0),
                 lambda: io.accept(0, 1, [(0, 2**32)], 0, 0), lambda: io.accept(0, 1, [1], 0, 0),
                 lambda: io.accept(0, 1, [], 2**32, 0), lambda: io.accept(0, 1, [], 0, -1),
                 lambda: io.accept(0, 1, [], 0.5, 0)]
        for call in calls:
            with pytest.raises(Exception) as e:
                call()
            errors.append((type(e.value), str(e.value)))
        out.append((errors, io.open(0, 0, key), io.accept(0, n, [], 0, 0), io.write_tun(-1),
                    io.counters()))
    same(out[0], out[1])


def test_constants_match_the_reference():
    py, cy = both()
    assert cy.testing.WGIO == py.testing.WGIO
    assert len(cy.WgIo(False, False, False, False, 0).counters()) == len(ref.WGIO_COUNTERS)
