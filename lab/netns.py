"""Network-namespace topologies on one machine: the demo, tests and benchmarks.

A Lab owns everything it creates (namespaces, the processes it starts) and
removes all of it in close(), also after a failure: namespaces are deleted
(taking their veths and bridges with them) and processes are ended by PID.
Names carry a per-run random tag so parallel or crashed runs never collide.

Topology: one "switch" namespace holding a port bridge; each host namespace
has `eth0`, a veth whose other end is a bridge port in the switch namespace.
This is scaffolding, so it shells out to iproute2; the daemon itself uses
netlink.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field

__all__ = ["Lab", "Host", "LabError"]


class LabError(RuntimeError):
    pass


@dataclass
class Host:
    name: str
    netns: str
    underlay_ip: str
    underlay_prefix: int
    extra: dict = field(default_factory=dict)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=30
    )
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class Lab:
    """A throw-away topology of network namespaces joined by one bridge."""

    def __init__(self, tag: str | None = None, mtu: int = 1500) -> None:
        self.tag = tag or "uo" + secrets.token_hex(3)
        self.mtu = mtu
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._switch_up = False

    # -- lifecycle -----------------------------------------------------
    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _ensure_switch(self) -> None:
        if self._switch_up:
            return
        self._add_netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "mtu", str(self.mtu), "up")
        self._switch_up = True

    def add_host(self, name: str, underlay_cidr: str, forward: bool = True) -> Host:
        """A namespace `<tag>-<name>` with eth0 = underlay_cidr on the bridge."""
        if name in self.hosts:
            raise LabError(f"host {name} exists")
        self._ensure_switch()
        netns = f"{self.tag}-{name}"
        self._add_netns(netns)
        port = f"p-{name}"[:15]
        _ip("-n", self.switch, "link", "add", port, "mtu", str(self.mtu),
            "type", "veth", "peer", "name", "eth0", "mtu", str(self.mtu),
            "netns", netns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", netns, "addr", "add", underlay_cidr, "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        self.sysctl(netns, "net.ipv6.conf.all.disable_ipv6", "1")
        if forward:
            self.sysctl(netns, "net.ipv4.ip_forward", "1")
        addr, prefix = underlay_cidr.split("/")
        host = Host(name, netns, addr, int(prefix))
        self.hosts[name] = host
        return host

    def add_pod_address(self, host: Host, cidr: str, dev: str = "pod0") -> None:
        """Hold a "pod" address on a port-less bridge (no dummy link here)."""
        _ip("-n", host.netns, "link", "add", dev, "type", "bridge")
        _ip("-n", host.netns, "addr", "add", cidr, "dev", dev)
        _ip("-n", host.netns, "link", "set", dev, "up")

    def sysctl(self, netns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(netns, ["sh", "-c", f"echo {value} > {path}"])

    # -- commands --------------------------------------------------------
    def run(self, netns: str, cmd: list[str], check: bool = True,
            timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ip", "netns", "exec", netns, *cmd],
                              capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise LabError(f"[{netns}] {' '.join(cmd)} -> {proc.returncode}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def popen(self, netns: str, cmd: list[str], **kw) -> subprocess.Popen:
        """Start a process in netns; the Lab ends it (by PID) on close()."""
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *cmd],
                                start_new_session=True, **kw)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM,
             timeout: float = 10) -> int | None:
        """Signal one of our processes and wait (bounded) for it to exit."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        return proc.returncode

    def namespaces(self) -> list[str]:
        """The network namespaces this Lab created (and will delete)."""
        return list(self._namespaces)

    def close(self) -> None:
        for proc in reversed(self._procs):
            try:
                self.stop(proc, signal.SIGTERM, timeout=5)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
            # `ip netns exec` execs the command, so proc.pid is the command;
            # its session may hold helpers (e.g. a shell pipeline): end them.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._procs.clear()
        for netns in reversed(self._namespaces):
            _ip("netns", "del", netns, check=False)
        self._namespaces.clear()
        self.hosts.clear()
        self._switch_up = False


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition"):
    """Poll predicate() until truthy or timeout (bounded in time and count)."""
    deadline = time.monotonic() + timeout
    tries = max(1, int(timeout / interval) + 1)
    last = None
    for _ in range(tries):
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
