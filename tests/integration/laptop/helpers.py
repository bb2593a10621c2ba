"""Helpers of the laptop tests: peers by name, a peers file, NAT keepalives,
address changes.

Names resolve through /etc/netns/<ns>/hosts, which `ip netns exec` (how the
Lab starts every daemon) bind-mounts over /etc/hosts in the daemon's own
mount namespace. A bind mount pins the file's inode, so the tests rewrite
the file in place, never by rename. resolv.conf points at 127.0.0.1 (no
server there): a name missing from hosts fails at once instead of waiting
for an unreachable DNS server. Everything under /etc/netns this fixture
made is removed at the end, also on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

from tests.support.overlay import NETWORK, Overlay, subnet_of
from tests.support.requirements import require

ETC_NETNS = Path("/etc/netns")


class NetnsEtc:
    """/etc/netns/<ns>/{hosts,resolv.conf} for the test's namespaces."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []
        self.made_root = False

    def hosts(self, netns: str, names: dict[str, str]) -> None:
        """Write netns's hosts file in place (running daemons see it)."""
        d = ETC_NETNS / netns
        if d not in self.dirs:
            if not ETC_NETNS.exists():
                ETC_NETNS.mkdir()
                self.made_root = True
            d.mkdir()
            self.dirs.append(d)
            (d / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        text = "127.0.0.1 localhost\n" + "".join(f"{ip} {n}\n" for n, ip in names.items())
        with open(d / "hosts", "r+" if (d / "hosts").exists() else "w") as f:
            f.seek(0)
            f.write(text)
            f.truncate()

    def close(self) -> None:
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()
        if self.made_root:
            try:
                ETC_NETNS.rmdir()
            except OSError:     # someone else's entries: leave them
                pass


def name_of(ov: Overlay, i: int) -> str:
    """A per-run unique DNS name for host i."""
    return f"h{i}.{ov.lab.tag}.test"


def start_static(ov: Overlay, i: int, peers: list[str], extra: list[str] | None = None,
                 wait: bool = True, port: int | None = None):
    """A static-mode daemon on host i with --peer specs as given (names or
    addresses), no --public-ip (so the wildcard bind is used)."""
    args = [sys.executable, "-m", "udpoverlay", "run", "--subnet", subnet_of(i),
            "--network", NETWORK, *(["--port", str(port)] if port else [])]
    for p in peers:
        args += ["--peer", p]
    return ov.launch(i, args + (extra or []), wait=wait)


def default_route(ov: Overlay, i: int) -> None:
    """The default route out of eth0, as a laptop has (the underlay is
    chosen by it when nothing is pinned)."""
    ov.run(ov.hosts[i], ["ip", "route", "replace", "default", "dev", "eth0"], check=True)


def peer_entry(ov: Overlay, i: int, subnet: str) -> dict | None:
    st = ov.status(ov.hosts[i])
    for p in st.get("peers", []):
        if p["subnet"] == subnet:
            return p
    return None


def counters(ov: Overlay, i: int) -> dict:
    return ov.status(ov.hosts[i])["counters"]


def tun_rx_packets(ov: Overlay, i: int, tun: str = "udpov0") -> int:
    """Packets the daemon wrote into its TUN (the kernel's rx side)."""
    r = ov.run(ov.hosts[i], ["cat", f"/sys/class/net/{tun}/statistics/rx_packets"], check=True)
    return int(r.stdout)


_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def reply_times(path: Path) -> list[float]:
    """Wall-clock times of the replies in a `ping -D` output file."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _REPLY.match(line)
        if m:
            out.append(float(m.group(1)))
    return out


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll (bounded in time and count); the truthy result or AssertionError."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def require_conntrack_sysctl() -> None:
    require(os.path.exists("/proc/sys/net/netfilter/nf_conntrack_udp_timeout"),
            "needs nf_conntrack (net.netfilter.nf_conntrack_udp_timeout)")
    require(shutil.which("nft") is not None, "needs nft on PATH")
