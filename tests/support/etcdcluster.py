"""A throw-away three-member etcd cluster whose members can be cut off.

Why namespaces: a member "cut off from its peers but still reachable by
clients" needs the peer traffic dropped while client traffic flows. Each
member runs in its own Lab host namespace (e1..e3 on 198.18.0.201-203,
the Lab's bridge between them), so a cut is four iptables DROP rules in the
member's own namespace (to and from the two peers' addresses): real DROP
semantics (no RST, the peers time out), nothing outside our namespaces
touched. Clients live elsewhere on the bridge (a Lab host `cl` on
198.18.0.200 for etcdctl; daemons in their own hosts), so they still reach
the cut member.

The pytest process itself sits in the root namespace: `relay()` gives it a
127.0.0.1 port per member (tests.support.nsrelay), whose upstream sockets
are made inside `cl`. The relay also counts our open connections per
member, which is how a test sees a dropped client really closed.

Every member is stopped by PID (Lab.stop) and the namespaces go with the
Lab, also when a test fails. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from lab.netns import Lab
from tests.support.etcdserver import ETCD, ETCDCTL, require_etcd
from tests.support.nsrelay import NsRelay
from tests.support.requirements import require, require_root_tools

__all__ = ["EtcdCluster", "CLIENT_IP", "member_ip", "require_etcd_cluster"]

CLIENT_IP = "198.18.0.200"
CLIENT_PORT, PEER_PORT = 2379, 2380


def member_ip(i: int) -> str:
    """Member i (0-based) listens on 198.18.0.201 + i."""
    return f"198.18.0.{201 + i}"


def require_etcd_cluster() -> None:
    require_root_tools()
    require_etcd()
    require(os.path.exists("/usr/sbin/iptables") or os.path.exists("/sbin/iptables"),
            "needs iptables to cut an etcd member off")


class EtcdCluster:
    """Three etcd members (m1..m3) in their own namespaces of `lab`."""

    def __init__(self, lab: Lab, tmp: Path, size: int = 3) -> None:
        self.lab, self.tmp, self.size = lab, Path(tmp), size
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.cut_members: set[int] = set()
        self.relays: list[NsRelay] = []
        self.client = lab.add_host("cl", f"{CLIENT_IP}/24")
        self.hosts = [lab.add_host(f"e{i + 1}", f"{member_ip(i)}/24") for i in range(size)]

    # -- addresses -----------------------------------------------------------
    def endpoint(self, i: int) -> str:
        return f"http://{member_ip(i)}:{CLIENT_PORT}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in range(self.size)]

    def log_path(self, i: int) -> Path:
        return self.tmp / f"etcd-m{i + 1}.log"

    # -- life ----------------------------------------------------------------
    def _argv(self, i: int) -> list[str]:
        peers = ",".join(f"m{j + 1}=http://{member_ip(j)}:{PEER_PORT}" for j in range(self.size))
        peer = f"http://{member_ip(i)}:{PEER_PORT}"
        return [ETCD, "--name", f"m{i + 1}", "--data-dir", str(self.tmp / f"etcd-m{i + 1}"),
                "--listen-client-urls", self.endpoint(i),
                "--advertise-client-urls", self.endpoint(i),
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", peers, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.lab.tag,
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]

    def start(self, timeout: float = 30.0) -> None:
        self.restart(*range(self.size), timeout=timeout)

    def restart(self, *members: int, timeout: float = 30.0) -> int:
        """Start the given members (again: a killed member comes back with its
        data dir) and wait until the healthy members agree on a leader whom
        every restarted member follows; that leader's index."""
        for i in members:
            with open(self.log_path(i), "ab") as log:
                self.procs[i] = self.lab.popen(self.hosts[i].netns, self._argv(i), stdout=log,
                                               stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [i for i in members if (p := self.procs[i]) is not None and p.poll() is not None]
            if dead:
                raise RuntimeError(f"etcd m{dead[0] + 1} exited: {self.log_tail(dead[0])}")
            views = [self.status(i) for i in range(self.size)]
            lead = self._agreed_leader(views)
            if lead is not None and all(views[i] is not None for i in members):
                return lead
            time.sleep(0.2)
        raise RuntimeError(f"etcd cluster has no leader after {timeout}s: "
                           f"{self.log_tail(members[0])}")

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Member i dies (SIGKILL: no goodbye to peers or clients); by PID, reaped."""
        proc = self.procs[i]
        assert proc is not None and proc.poll() is None, f"m{i + 1} is not running"
        self.lab.stop(proc, sig, timeout=5)

    def running(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def stop(self) -> None:
        """SIGTERM to every member at once, SIGKILL after 1.5 s (a member left
        without quorum takes ~7 s to give up otherwise); by PID, reaped."""
        for relay in self.relays:
            relay.close()
        self.relays.clear()
        procs = [p for p in self.procs if p is not None]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            self.lab.stop(proc, timeout=1.5)
        self.procs = [None] * self.size

    def log_tail(self, i: int, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(i).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- the partition -------------------------------------------------------
    def _iptables(self, i: int, *rule: str) -> None:
        self.lab.run(self.hosts[i].netns, ["iptables", "-w", "5", *rule], timeout=15)

    def cut(self, i: int) -> None:
        """Drop all traffic between member i and its peers (clients still reach it)."""
        for j in range(self.size):
            if j != i:
                self._iptables(i, "-A", "INPUT", "-s", member_ip(j), "-j", "DROP")
                self._iptables(i, "-A", "OUTPUT", "-d", member_ip(j), "-j", "DROP")
        self.cut_members.add(i)

    def heal(self, i: int) -> None:
        self._iptables(i, "-F", "INPUT")
        self._iptables(i, "-F", "OUTPUT")
        self.cut_members.discard(i)

    # -- asking the cluster --------------------------------------------------
    def etcdctl(self, *args: str, endpoints: list[str] | None = None,
                timeout: float = 10.0) -> str:
        """etcdctl from the client host (default: the members running, not cut off)."""
        if endpoints is None:
            endpoints = [self.endpoint(i) for i in self.running() if i not in self.cut_members]
        argv = [ETCDCTL, f"--endpoints={','.join(endpoints)}", "--dial-timeout=2s",
                "--command-timeout=4s", *args]
        done = subprocess.run(["ip", "netns", "exec", self.client.netns, *argv],
                              env=dict(os.environ, ETCDCTL_API="3"), capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def put(self, key: str, value: str, timeout: float = 20.0) -> float:
        """etcdctl put, tried again (bounded) while the members have no
        leader; the seconds until it was written."""
        t0 = time.monotonic()
        for _ in range(int(timeout / 0.2) + 1):
            try:
                self.etcdctl("put", key, value)
                return time.monotonic() - t0
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() - t0 >= timeout:
                    raise
                time.sleep(0.2)
        raise RuntimeError(f"etcdctl put {key} failed for {timeout}s")

    def status(self, i: int) -> dict | None:
        """One member's own view (leader id 0 while it has none), or None."""
        try:
            out = self.etcdctl("endpoint", "status", "-w", "json", endpoints=[self.endpoint(i)],
                               timeout=8)
        except (RuntimeError, subprocess.TimeoutExpired):
            return None
        header = json.loads(out)[0]["Status"]
        return {"id": header["header"]["member_id"], "leader": header.get("leader", 0)}

    def leader(self) -> int | None:
        """The index of the member the healthy members agree is leader, or None."""
        return self._agreed_leader([self.status(i) for i in range(self.size)])

    def _agreed_leader(self, views: list[dict | None]) -> int | None:
        """From each member's view (None: no answer): the leader every member
        that answers and is not cut off names (none naming "no leader")."""
        named = {v["leader"] for i, v in enumerate(views) if v and i not in self.cut_members}
        if len(named) != 1 or 0 in named:
            return None
        lead = named.pop()
        return next((i for i, v in enumerate(views) if v and v["id"] == lead), None)

    def relay(self) -> NsRelay:
        """127.0.0.1 ports (in our own namespace) for the members, closed in stop()."""
        relay = NsRelay(self.client.netns, [(member_ip(i), CLIENT_PORT)
                                            for i in range(self.size)])
        self.relays.append(relay)
        return relay
