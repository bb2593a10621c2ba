"""A real daemon with 1001 peers (a status document far above a unix
socket's buffer, so a client that does not read pins whatever the daemon
gives it) and 2000 connections that never read: the daemon's file
descriptors and memory stay bounded, and root's status still answers while
every one of those connections is still open."""

from __future__ import annotations

import json
import os
import resource
import socket
import time

from benchmarks.statusflood import fake_peer_args
from tests.integration.control.conftest import daemon_socket
from tests.support.overlay import underlay_of
from udpoverlay.control import MAX_CLIENTS, SEND_TIMEOUT

PEERS = 1000                   # besides h2
CONNECTIONS = 2000
BATCH = 100


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _connect_idle(path: str) -> socket.socket:
    """Connect and never read; wait (bounded) while the listen backlog is full."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    for _ in range(2000):
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            time.sleep(0.005)
    s.close()
    raise AssertionError("listen backlog stayed full for 10 s")


def test_idle_connections_leave_fds_and_memory_bounded(ov):
    h1 = ov.hosts[1]
    d = ov.start(1, peers=[2], extra=fake_peer_args(PEERS), wait=False)
    ov.wait_ready(d, 60)
    doc = ov.status(h1)
    assert len(doc["peers"]) == PEERS + 1
    assert len(json.dumps(doc, sort_keys=True)) > 220_000    # above the socket buffer
    pid = d.proc.pid
    assert b"udpoverlay" in open(f"/proc/{pid}/cmdline", "rb").read()
    base_rss, base_fds = _rss_kb(pid), _fds(pid)
    peak = {"fds": base_fds, "rss": base_rss}

    def sample() -> None:
        peak["fds"] = max(peak["fds"], _fds(pid))
        peak["rss"] = max(peak["rss"], _rss_kb(pid))

    path = daemon_socket(h1)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = CONNECTIONS + 512
    if limits[0] < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, limits[1])))
    conns: list[socket.socket] = []
    try:
        for _ in range(CONNECTIONS // BATCH):
            conns += [_connect_idle(path) for _ in range(BATCH)]
            sample()
            time.sleep(0.02)
        deadline = time.monotonic() + SEND_TIMEOUT + 2       # the held ones time out
        while time.monotonic() < deadline:
            sample()
            time.sleep(0.2)
        after = ov.status(h1)                 # every idle connection still open
        sample()
    finally:
        for c in conns:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    assert len(conns) == CONNECTIONS
    assert peak["fds"] < 200, peak
    assert peak["rss"] - base_rss < 50 * 1024, (base_rss, peak)
    assert after["public_ip"] == underlay_of(1) and len(after["peers"]) == PEERS + 1
    ctl = after["control"]
    assert ctl["rejected_busy"] >= CONNECTIONS - 10 * MAX_CLIENTS, ctl
    assert 1 <= ctl["timed_out"] <= CONNECTIONS, ctl
    assert d.proc.poll() is None
