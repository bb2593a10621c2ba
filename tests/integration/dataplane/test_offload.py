"""Offloads across implementations and settings: hosts with and without
offloads, and the pure-Python reference's offload I/O (GSO sends through
sendmsg, GRO receives through recvmsg, coalesced TUN writes), exchange
checked TCP transfers: the wire stays flannel's one-packet-per-datagram
format whatever each end does internally (worker threads, TUN reads through
io_uring with --io io_uring)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.support.overlay import ROOT
from tests.support.requirements import require_io_uring


@pytest.mark.parametrize("h1, h2", [
    (["--no-offload"], []),
    ([], ["--no-offload"]),
], ids=["off-to-on", "on-to-off"])
def test_offload_and_no_offload_hosts_interoperate(overlay2, h1, h2):
    ov = overlay2
    ov.start(1, extra=h1)
    ov.start(2, extra=h2)
    ov.transfer(1, 2, 16 * 1024 * 1024, 5401)
    ov.transfer(2, 1, 16 * 1024 * 1024, 5402)


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_python_reference_offload_path_talks_to_compiled(overlay2, backend):
    ov = overlay2
    extra = ["--backend", "vxlan"] if backend == "vxlan" else []
    ov.start(1, python_ref=True, extra=extra)
    ov.start(2, extra=extra)
    st = ov.status(ov.hosts[1])
    assert st["implementation"] == "python" and st["offload"]["enabled"]
    nbytes = 6 * 1024 * 1024
    ov.transfer(1, 2, nbytes, 5403)
    ov.transfer(2, 1, nbytes, 5404)
    c = ov.status(ov.hosts[1])["counters"]
    assert c["tx_super_packets"] > 0 and c["rx_coalesced"] > 0, c
    assert c["rx_csum_bad"] == 0


@pytest.mark.parametrize("extra", [["--threads"], ["--threads", "--no-offload"]],
                         ids=["threads", "threads-no-offload"])
def test_worker_threads_carry_traffic_and_stop_cleanly(overlay2, extra):
    """Host 1 on worker threads, host 2 on the loop with its TUN read
    through io_uring: TCP both ways, status says so."""
    require_io_uring()
    ov = overlay2
    d1 = ov.start(1, extra=extra)
    ov.start(2, extra=["--io", "io_uring"])
    assert ov.status(ov.hosts[1])["dataplane"] == "threads+epoll"
    assert ov.status(ov.hosts[2])["dataplane"] == "loop+io_uring"
    ov.transfer(1, 2, 16 * 1024 * 1024, 5405)
    ov.transfer(2, 1, 16 * 1024 * 1024, 5406)
    # the ring read a real TUN all along (a failure would add "(io_uring failed ...)")
    assert ov.status(ov.hosts[2])["dataplane"] == "loop+io_uring"
    started = time.monotonic()
    assert ov.stop(d1) == 0, d1.stderr()
    assert time.monotonic() - started < 5
    assert not ov.link_exists(ov.hosts[1])


GSO_REFUSED = r"""
import socket, sys
from tests.support import pktgen as g
from tests.support.twins import engine
from udpoverlay import dataplane
impl = dataplane.twin(sys.argv[1])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("198.18.0.1", 0))
rx.settimeout(5)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.setsockopt(socket.SOL_SOCKET, 11, 1)      # SO_NO_CHECK: the kernel refuses UDP_SEGMENT
tx.bind(("198.18.0.1", 0))
tx.setblocking(False)
peers = [g.peer("198.18.0.1", rx.getsockname()[1], "198.19.2.0/24")]
e, plain = (engine(impl, peers=peers, offload=(True, gso)) for gso in (True, False))
# a SEQPACKET socket pair stands in for the TUN: one read, one packet
tun_app, tun_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
tun_dev.setblocking(False)
reads = [g.tun_read(g.tcp("198.19.1.5", "198.19.2.5", 40000, 5201, 1, bytes(5000), partial=True),
                    1, 1400) for _ in range(2)]
for r in reads:
    tun_app.send(r)
assert e.udp_gso is True
e.core.tun_to_udp(tun_dev.fileno(), tx.fileno())
want = [m[4][i:i + (m[3] or len(m[4]))] for m in plain.t.outbound_batch(reads)[0]
        for i in range(0, len(m[4]), m[3] or len(m[4]))]
got = [rx.recv(65535) for _ in want]
assert got == want, (len(got), len(want))
c = e.counters()
assert e.udp_gso is False and c["tx_drop_tx_error"] == 0 and c["tx_packets"] == 8, c
print("ok", len(got))
"""


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_udp_gso_refused_by_the_kernel_falls_back_to_plain_sends(lab, impl):
    """A kernel that refuses a UDP_SEGMENT send (EIO: no checksum offload on
    the route's device, on older kernels; EINVAL: a socket without UDP
    checksums, used here to provoke it): those segments go out one by one,
    GSO stays off (status shows udp_gso false), nothing is lost."""
    host = lab.add_host("h1", "198.18.0.1/24")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = lab.run(host.netns, [sys.executable, "-c", GSO_REFUSED, impl], check=False,
                env=env, cwd=str(ROOT), timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok 8"), r.stdout + r.stderr
