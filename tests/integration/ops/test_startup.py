"""Start-up as systemd and an operator see it, with real daemon processes in
namespaces: the sd_notify datagrams on a real AF_UNIX socket ($NOTIFY_SOCKET:
STATUS= while waiting, READY=1, WATCHDOG=1 at half of $WATCHDOG_USEC,
STOPPING=1); `udpoverlay status` answering while the daemon waits for an
etcd nobody serves, and a stop during that wait logged; in cluster mode
ip_forward=0 ends the daemon before anything is written to etcd; the unit's
SystemCallFilter, built as systemd builds it, lets the daemon work."""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest

from lab.netns import wait_for
from tests.integration.cluster.conftest import cluster  # noqa: F401 - the fixture
from tests.support import seccomp
from tests.support.cluster import PREFIX, underlay
from tests.support.overlay import ROOT
from tests.support.requirements import require

STATIC_NOTIFY_WAIT = 20.0


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    s.bind(str(path))
    try:
        yield s, str(path)
    finally:
        s.close()


def _messages(sock: socket.socket, until, timeout: float) -> list[tuple[float, str]]:
    """(arrival time, message) until until(messages) or the timeout."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append((time.monotonic(), sock.recv(4096).decode()))
        except socket.timeout:
            break
    return got


def test_static_notify_status_ready_and_watchdog(overlay2, notify_socket):
    ov = overlay2
    sock, path = notify_socket
    d = ov.start(1, peers=[2], wait=False,
                 env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})  # a ping / 0.2 s
    got = _messages(sock, lambda m: any(x.startswith("READY=1") for _, x in m),
                    STATIC_NOTIFY_WAIT)
    texts = [m for _, m in got]
    assert any(m.startswith("READY=1") for m in texts), (texts, d.stderr())
    ready_at = next(t for t, m in got if m.startswith("READY=1"))
    before = texts[:texts.index(next(m for m in texts if m.startswith("READY=1")))]
    statuses = [m for m in before if m.startswith("STATUS=")]
    assert "STATUS=waiting for the data plane" in statuses, texts
    assert ov.status(ov.hosts[1])["phase"] == "ready"      # status answers the daemon's doc
    # after READY: pings at about the interval, nothing else while running
    after = _messages(sock, lambda m: time.monotonic() > ready_at + 1.5, 3.0)
    pings = [t for t, m in after if m == "WATCHDOG=1"]
    assert [m for _, m in after if m != "WATCHDOG=1"] == []
    assert 4 <= len(pings) <= 10, len(pings)
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert 0.15 <= sum(gaps) / len(gaps) <= 0.3 and max(gaps) < 0.6, gaps
    assert ov.stop(d) == 0, d.stderr()
    rest = [m for _, m in _messages(sock, lambda m: any(x.startswith("STOPPING=1")
                                                        for _, x in m), 5.0)]
    assert any(m.startswith("STOPPING=1") for m in rest), rest


def test_status_answers_while_waiting_for_etcd_and_a_stop_is_logged(overlay2, notify_socket):
    """Nobody serves the etcd endpoint (port 9 of our own address: refused)."""
    ov = overlay2
    sock, path = notify_socket
    h1 = ov.hosts[1]
    args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay(1),
            "--etcd-endpoints", f"http://{underlay(1)}:9",
            "--subnet-file", str(ov.tmp / "subnet.env")]
    d = ov.launch(1, args, env={**ov.env(), "NOTIFY_SOCKET": path}, wait=False)
    want = "STATUS=waiting for the network config from etcd"
    got = [m for _, m in _messages(sock, lambda m: any(x == want for _, x in m), 20.0)]
    assert want in got, (got, d.stderr())
    assert not any(m.startswith("READY=1") for m in got)

    assert ov.status(h1, check=False) is None           # not ready: exit 3
    r = ov.run(h1, [sys.executable, "-m", "udpoverlay", "status", "--json", "--timeout", "3"],
               timeout=15)
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    assert doc["phase"] == "starting" and doc["mode"] == "cluster", doc
    assert doc["waiting_for"] == "the network config from etcd", doc
    assert doc["tun"] == "udpov0" and doc["waiting_seconds"] >= 0
    assert doc["cluster"]["store"].startswith("disconnected"), doc
    assert doc["control"]["served"] >= 0
    text = ov.run(h1, [sys.executable, "-m", "udpoverlay", "status", "--timeout", "3"],
                  timeout=15)
    assert text.returncode == 3, text.stderr
    assert "starting, waiting for the network config from etcd" in text.stdout, text.stdout
    assert "etcd: disconnected" in text.stdout, text.stdout

    assert ov.stop(d) == 0, d.stderr()
    log = d.stderr()
    assert "starting: cluster mode, TUN udpov0" in log, log
    assert ("stopping before ready (start-up was waiting for the network config from etcd)"
            in log), log
    assert log.rstrip().endswith("stopped"), log
    rest = [m for _, m in _messages(sock, lambda m: any(x.startswith("STOPPING=1")
                                                        for _, x in m), 5.0)]
    assert any(m.startswith("STOPPING=1") for m in rest), rest
    r = ov.run(h1, [sys.executable, "-m", "udpoverlay", "status", "--timeout", "1"],
               timeout=15)
    assert r.returncode == 1 and "no udpoverlay daemon" in r.stderr, r.stderr   # socket gone


def test_ip_forward_off_fails_before_any_lease_is_written(cluster):  # noqa: F811
    cl = cluster
    cl.add_host(1)
    h1 = cl.ov.hosts[1]
    cl.lab.sysctl(h1.netns, "net.ipv4.ip_forward", "0")
    revision = json.loads(cl.etcd.etcdctl("get", PREFIX, "--prefix", "-w",
                                          "json"))["header"]["revision"]
    d = cl.start(1, wait=False)
    assert d.proc.wait(timeout=30) == 1, d.stderr()
    err = d.stderr().strip().splitlines()
    assert err[-1].startswith("udpoverlay: error: net.ipv4.ip_forward is 0"), err
    keys = cl.etcd.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "--keys-only").split()
    assert keys == [], keys
    after = json.loads(cl.etcd.etcdctl("get", PREFIX, "--prefix", "-w", "json"))
    assert after["header"]["revision"] == revision         # nothing at all was written
    assert not cl.subnet_file(1).exists()
    assert not cl.ov.link_exists(h1)
    # the same node with forwarding on takes its lease (the check is the cause)
    cl.lab.sysctl(h1.netns, "net.ipv4.ip_forward", "1")
    d = cl.start(1)
    assert cl.etcd.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "--keys-only").split()
    assert cl.ov.stop(d) == 0, d.stderr()
    wait_for(lambda: not cl.ov.link_exists(h1), 10, 0.1, "TUN removed")


def test_static_daemon_under_the_units_syscall_filter(overlay2, tmp_path):
    """The unit's SystemCallFilter=@system-service with SystemCallErrorNumber=EPERM,
    built as systemd builds it: the daemon (TUN with offloads, UDP GSO/GRO,
    --ip-masq's iptables, the control socket) comes up and carries traffic."""
    require(seccomp.available(), "needs systemd-analyze and libseccomp")
    unit = (ROOT / "contrib/udpoverlay.service").read_text()
    [groups] = [line.split("=", 1)[1] for line in unit.splitlines()
                if line.startswith("SystemCallFilter=")]
    allowed = tmp_path / "allowed"
    allowed.write_text("\n".join(sorted(seccomp.allowed_syscalls(*groups.split()))))
    ov = overlay2
    probe = ov.run(ov.hosts[1], [sys.executable, "-m", "tests.support.seccomp", str(allowed),
                                 "--", sys.executable, "-c", "import os; os.chroot('/')"],
                   timeout=30, cwd=str(ROOT))
    assert probe.returncode != 0 and "Operation not permitted" in probe.stderr  # it filters
    ov.start(2, peers=[1])
    args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay(1),
            "--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16",
            "--peer", f"{underlay(2)}=198.19.2.0/24", "--ip-masq"]
    d = ov.launch(1, [sys.executable, "-m", "tests.support.seccomp", str(allowed), "--", *args])
    # ip netns exec and the loader both exec: d.proc.pid is the daemon, one filter
    # more than we run under
    assert _filters(d.proc.pid) == _filters(os.getpid()) + 1
    assert ov.ping(1, 2).returncode == 0, d.stderr()
    st = ov.status(ov.hosts[1])
    assert st["node_network"]["firewall"] == "iptables" and st["counters"]["rx_packets"] > 0
    assert ov.stop(d) == 0, d.stderr()
    assert "Operation not permitted" not in d.stderr(), d.stderr()


def _filters(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["Seccomp_filters"])
