"""Our TUN kept as configured while we run (as the firewall rules are):
a deleted network route, a removed address or a link set down are put back
within a resync period with one WARNING each and counted (status
tun_repairs); a route hijacked to another device is taken back; a deleted
TUN device stops the daemon with exit 1 and one ERROR line. And a second
instance whose --network overlaps a running one's refuses to start, with
one line, leaving the first one's route alone."""

from __future__ import annotations

import signal
import subprocess
import sys

from lab.netns import wait_for
from tests.support.overlay import NETWORK, subnet_of, underlay_of

RESYNC = ["--iptables-resync", "1"]


def _route_dev(ov, host) -> str | None:
    r = ov.run(host, ["ip", "-4", "route", "show", NETWORK], timeout=10)
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == NETWORK and "dev" in parts:
            return parts[parts.index("dev") + 1]
    return None


def _warnings(d) -> list[str]:
    return [line for line in d.stderr().splitlines()
            if "WARNING" in line and "not as configured" in line]


def test_route_address_and_link_are_put_back_and_counted(overlay2):
    ov = overlay2
    h1 = ov.hosts[1]
    d = ov.start(1, extra=RESYNC)
    ov.start(2)
    assert _route_dev(ov, h1) == "udpov0"
    breakages = [["ip", "route", "del", NETWORK, "dev", "udpov0"],
                 ["ip", "addr", "del", f"{subnet_of(1).split('/')[0]}/32", "dev", "udpov0"],
                 ["ip", "link", "set", "udpov0", "down"]]
    for n, cmd in enumerate(breakages, 1):
        assert ov.run(h1, cmd, timeout=10).returncode == 0
        wait_for(lambda: ov.status(h1)["tun_repairs"] == n, 10, 0.2, f"repair {n}")
        assert len(_warnings(d)) == n
    assert _route_dev(ov, h1) == "udpov0"
    r = ov.ping(1, 2, count=2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert d.proc.poll() is None


def test_a_second_instance_over_the_same_network_refuses(overlay2):
    ov = overlay2
    h1 = ov.hosts[1]
    first = ov.start(1, extra=RESYNC)
    args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay_of(1),
            "--subnet", "198.19.200.0/24", "--network", "198.19.128.0/17", "--tun", "udpov9",
            "--port", "9285"]
    r = ov.run(h1, args, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "already routed through udpov0" in lines[0], r.stderr
    assert ov.run(h1, ["ip", "link", "show", "udpov9"], timeout=10).returncode != 0
    assert _route_dev(ov, h1) == "udpov0" and first.proc.poll() is None
    assert ov.status(h1)["tun_repairs"] == 0


def test_a_hijacked_route_is_taken_back_and_a_deleted_tun_stops_the_daemon(overlay2):
    ov = overlay2
    h1 = ov.hosts[1]
    d = ov.start(1, extra=RESYNC)
    # what a careless second instance did: our network's route onto its own device
    for cmd in (["ip", "link", "add", "uohijack0", "type", "bridge"],
                ["ip", "link", "set", "uohijack0", "up"],
                ["ip", "route", "replace", NETWORK, "dev", "uohijack0"]):
        assert ov.run(h1, cmd, timeout=10).returncode == 0
    wait_for(lambda: _route_dev(ov, h1) == "udpov0", 10, 0.2, "route taken back")
    assert any("pointed elsewhere" in w for w in _warnings(d))
    assert ov.run(h1, ["ip", "link", "del", "udpov0"], timeout=10).returncode == 0
    try:
        code = d.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        ov.stop(d, signal.SIGKILL)
        raise AssertionError("the daemon kept running without its TUN") from None
    assert code == 1, d.stderr()
    errors = [line for line in d.stderr().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "udpov0 is gone" in errors[0], d.stderr()
