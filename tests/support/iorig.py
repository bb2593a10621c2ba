"""The differential I/O rig: both twins' real tun_to_udp and udp_to_tun over
the same real fds (a SEQPACKET socket pair as the TUN, UDP sockets on
127.0.0.1 as the underlay), and the checks that they send, write and count
the same. Used by tests/differential/test_io*.py and the batching and
oversize tests. Loopback only; every fd is closed, every wait bounded."""


from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.support import pktgen as g
from tests.support.requirements import require
from tests.support.twins import both, engine
from udpoverlay.dataplane import wire
from udpoverlay.peer import Peer

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "127.0.0.1"
BUF = 1 << 20           # socket buffers: the kernel caps them (rmem_max/wmem_max)
# plain-gso: a plain TUN (no vnet header) over a socket with UDP GSO/GRO
OFFLOADS = {"plain": None, "vnet": (True, False, False), "gso": (True, True, True),
            "plain-gso": (False, True, False, True)}
BODY = bytes((i * 37 + 11) & 0xFF for i in range(20000))
MARKER = b"end of the test traffic"


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    s.bind((LOCAL, 0))
    return s


def drain_now(s: socket.socket) -> list[bytes]:
    """What s holds now (a unix socket: whatever was written is there)."""
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(s.recv(65536))
    return out


def drain_udp(s: socket.socket, sender: socket.socket, limit: float = 2.0) -> list:
    """Everything s received over loopback, up to a marker sent now from
    `sender` (loopback delivers in order): [(data, source port)]."""
    sender.sendto(MARKER, s.getsockname())
    out: list = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data, addr = s.recvfrom(65536)
        except BlockingIOError:
            time.sleep(0.002)
            continue
        if data == MARKER and addr == sender.getsockname():
            return out
        out.append((data, addr[1]))
    raise AssertionError("the marker never came: loopback lost a datagram")


class Rig:
    """The fds both twins' runs share: TUN pair, the engine's socket, vxlan
    source sockets, and two peers A (198.19.2.0/24) and B (198.19.3.0/24)."""

    def __init__(self, n_tx: int) -> None:
        self.fds: list[socket.socket] = []
        self.tun_app, self.tun_dev = self.keep(*socket.socketpair(socket.AF_UNIX,
                                                                  socket.SOCK_SEQPACKET))
        for s in (self.tun_app, self.tun_dev):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
        self.sock = self.keep(udp_socket())
        self.tx = [self.keep(udp_socket()) for _ in range(n_tx)]
        self.a, self.b = self.keep(udp_socket()), self.keep(udp_socket())
        self.peers = [Peer(ipaddress.IPv4Address(LOCAL), s.getsockname()[1],
                           ipaddress.IPv4Network(net), g.PEER_MAC)
                      for s, net in ((self.a, "198.19.2.0/24"), (self.b, "198.19.3.0/24"))]

    def keep(self, *socks):
        self.fds += socks
        return socks if len(socks) > 1 else socks[0]

    def source(self, port: int) -> int:
        """Which of the engine's sockets a datagram left from: -1 the main one."""
        ports = [s.getsockname()[1] for s in self.tx]
        return ports.index(port) if port in ports else -1

    def close(self) -> None:
        for s in self.fds:
            s.close()


def same(py: tuple, cy: tuple) -> None:
    """Both runs' (calls' result, outputs..., counters, peer status) equal,
    one assertion each for a readable failure."""
    for a, b in zip(py, cy):
        assert a == b


@contextlib.contextmanager
def rig(n_tx: int = 0):
    r = Rig(n_tx)
    try:
        yield r
    finally:
        r.close()


def make(twin, r: Rig, backend: str, offload):
    e = engine(twin, backend, r.peers, offload=offload)
    if r.tx:
        e.set_tx_fds([s.fileno() for s in r.tx])
    return e


def tun_reads(vnet: bool) -> list[bytes]:
    """70 TUN reads (more than one batch): flows to A and B, no route and
    TTL 1 (ICMP back to the TUN), malformed; with vnet also TSO super-packets."""
    out = []
    for i in range(70):
        dst = ("198.19.2.%d" if i % 3 else "198.19.3.%d") % (10 + i % 5)
        if i % 17 == 5:
            pkt = g.udp("198.19.1.5", "198.19.77.1", 4000 + i, 53, BODY[:40])
        elif i % 17 == 9:
            pkt = g.udp("198.19.1.5", dst, 4000, 53, BODY[:40], ttl=1)
        elif i % 23 == 11:
            out.append(bytes(wire.VNET_HDR_LEN * vnet) + b"\x45\x00\x00")     # too short
            continue
        elif vnet and i % 7 == 0:
            pkt = g.tcp("198.19.1.5", dst, 40000 + i % 4, 5201, i * 5000, BODY[i:i + 3000],
                        partial=True)
            out.append(g.tun_read(pkt, wire.GSO_TCPV4, 1200))
            continue
        else:
            pkt = g.udp("198.19.1.5", dst, 40000 + i % 4, 5201, BODY[i:i + 100 + 9 * i],
                        partial=vnet)
        out.append(g.tun_read(pkt) if vnet else bytes(pkt))
    return out


def received(r: Rig, s: socket.socket) -> list:
    """What peer socket s got: [(datagram, the engine's source socket)]."""
    return [(d, r.source(port)) for d, port in drain_udp(s, r.sock)]


def run_tx(twin, r: Rig, backend: str, offload, reads: list[bytes], drain=received):
    """TUN reads through tun_to_udp: (reads, {peer: drain(r, its socket)},
    TUN writes, counters, peer status, UDP GSO still on)."""
    e = make(twin, r, backend, offload)
    try:
        for b in reads:
            r.tun_app.send(b)
        done = e.core.tun_to_udp(r.tun_dev.fileno(), r.sock.fileno())
        got = {name: drain(r, s) for name, s in (("a", r.a), ("b", r.b))}
        writes = drain_now(r.tun_app)
        return done, got, writes, e.counters(), e.peer_status(), e.udp_gso
    finally:
        e.close()


def check_tun_to_udp(backend: str, offload: str) -> None:
    """Both twins' tun_to_udp over the same fds: the same datagrams, counters."""
    reads = tun_reads(offload in ("vnet", "gso"))
    with rig(3 if backend == "vxlan" else 0) as r:
        py, cy = (run_tx(t, r, backend, OFFLOADS[offload], reads) for t in both())
    same(py, cy)
    assert py[0] == len(reads)
    assert py[1]["a"] and py[1]["b"] and py[2], "the traffic did not cross"
    assert py[3]["icmp_sent"] == len(py[2])
    if backend == "vxlan":
        assert {src for d, src in py[1]["a"] + py[1]["b"]} - {-1}, "no tx socket used"


def rx_datagrams(backend: str) -> list[tuple[bytes, int]]:
    """What peer A sends: (datagram, GSO segment size or 0). A TCP stream
    (coalescible), UDP, a spoofed source, a packet not for us, garbage; for
    vxlan also an ARP request for our VTEP (answered) and a wrong VNI."""
    inner = [bytes(g.tcp("198.19.2.10", "198.19.1.5", 40000, 5201, 1000 + i * 1200,
                         BODY[i * 1200:(i + 1) * 1200], ident=i)) for i in range(12)]
    inner += [bytes(g.udp("198.19.2.11", "198.19.1.5", 50000, 5201, BODY[:300])),
              bytes(g.udp("198.19.4.11", "198.19.1.5", 50000, 5201, BODY[:30])),   # spoofed
              bytes(g.udp("198.19.2.11", "198.19.9.5", 50000, 5201, BODY[:30])),   # not local
              b"\x45\x00\x00\x10" + bytes(12)]
    frames = [g.vxlan(p) if backend == "vxlan" else p for p in inner]
    out = [(f, 0) for f in frames]
    # one GSO send of 4 equal segments: arrives as one GRO datagram when the
    # engine's socket has UDP_GRO on, as 4 datagrams otherwise
    out.append((b"".join(frames[:4]), len(frames[0])))
    if backend == "vxlan":
        req = (b"\0\x01\x08\x00\x06\x04\0\x01" + g.PEER_MAC + bytes([198, 19, 2, 0])
               + bytes(6) + bytes([198, 19, 1, 0]))
        out.append((g.vxlan(b"")[:8] + b"\xff" * 6 + g.PEER_MAC + b"\x08\x06" + req, 0))
        out.append((g.vxlan(inner[12], vni=7), 0))
    return out


def send_all(s: socket.socket, dgrams, addr) -> None:
    for data, gso in dgrams:
        anc = [(wire.SOL_UDP, wire.UDP_SEGMENT, struct.pack("=H", gso))] if gso else []
        s.sendmsg([data], anc, 0, addr)


def run_rx(twin, r: Rig, backend: str, offload, dgrams):
    e = make(twin, r, backend, offload)
    try:
        send_all(r.a, dgrams, r.sock.getsockname())
        drain_udp(r.b, r.a)         # the marker behind them came: all delivered
        done = e.core.udp_to_tun(r.sock.fileno(), r.tun_dev.fileno())
        writes = drain_now(r.tun_app)
        replies = [d for d, _ in drain_udp(r.a, r.sock)]
        return done, writes, replies, e.counters(), e.peer_status()
    finally:
        e.close()


def check_udp_to_tun(backend: str, offload: str) -> None:
    """Both twins' udp_to_tun over the same fds: the same writes, counters."""
    dgrams = rx_datagrams(backend)
    with rig() as r:
        if offload != "plain":
            r.sock.setsockopt(wire.SOL_UDP, wire.UDP_GRO, 1)
        py, cy = (run_rx(t, r, backend, OFFLOADS[offload], dgrams) for t in both())
    same(py, cy)
    assert py[0] > 0
    c = py[3]
    assert py[1] and c["rx_drop_spoofed_src"] >= 1 and c["rx_drop_not_local"] >= 1
    if backend == "vxlan":
        assert len(py[2]) == 1 and c["rx_arp"] == 1 and c["rx_drop_bad_vni"] == 1
    if offload == "gso":
        assert c["rx_coalesced"] > 0


# Runs in a private network namespace (unshare: a user namespace is enough),
# where a slow token bucket on lo keeps datagrams queued, so they count
# against the socket's send buffer and the socket reports EAGAIN: on a
# plain loopback the kernel frees them at once and a send never blocks.
FULL_BUFFER = r"""
import json, socket, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "8kbit",
                "burst", "1600", "limit", "1000000"], check=True)
import ipaddress
from tests.support import pktgen as g
from tests.support.twins import engine
from udpoverlay import dataplane
from udpoverlay.peer import Peer
twin, vnet = dataplane.twin(sys.argv[1]), sys.argv[2] == "vnet"
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
tx.bind(("127.0.0.1", 0))
tx.setblocking(False)
tun_app, tun_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
tun_app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
tun_dev.setblocking(False)
peer = Peer(ipaddress.IPv4Address("127.0.0.1"), rx.getsockname()[1],
            ipaddress.IPv4Network("198.19.2.0/24"))
e = engine(twin, "udp", [peer], offload=(True, False, False) if vnet else None)
for _ in range(100):
    p = g.udp("198.19.1.5", "198.19.2.5", 40000, 5201, bytes(1000), partial=vnet)
    tun_app.send(g.tun_read(p) if vnet else bytes(p))
started = time.monotonic()
done = e.core.tun_to_udp(tun_dev.fileno(), tx.fileno())
elapsed = time.monotonic() - started
print(json.dumps({"done": done, "counters": e.counters(), "elapsed": elapsed}))
"""


def full_buffer_run(name: str, offload: str, script: str = FULL_BUFFER) -> dict:
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c",
                        script, name, offload], capture_output=True, text=True, timeout=60,
                       cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if r.returncode != 0 and "unshare" in r.stderr:
        require(False, f"needs network namespaces (unshare): {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def check_full_buffer(offload: str, script: str = FULL_BUFFER) -> None:
    """After the first datagrams every send finds the buffer full. Both
    twins wait MAX_WAITS times WAIT_MS per batch and socket (two batches
    here), drop what still does not fit, and count the same."""
    both()
    py, cy = (full_buffer_run(name, offload, script) for name in ("python", "cython"))
    assert py["done"] == cy["done"] == 100
    assert py["counters"] == cy["counters"]
    c = py["counters"]
    assert c["tx_packets"] == 100 and 50 < c["tx_drop_tx_error"] < 100, c
    waits = 2 * wire.MAX_WAITS * wire.WAIT_MS / 1000       # two batches of reads
    for run in (py, cy):
        assert waits * 0.9 <= run["elapsed"] < waits + 1.0, (py["elapsed"], cy["elapsed"])
