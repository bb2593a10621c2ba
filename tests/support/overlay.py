"""Hosts in network namespaces running real udpoverlay daemons, for the
integration tests: an Overlay is a Lab of N hosts (h1..hN) with pod
addresses, plus helpers to start daemons, query status, ping and move
checked TCP transfers between pods.

Each daemon's stderr goes to a file under the test's tmp_path and is shown
when a test fails. Everything (daemons by PID, namespaces) is removed by
Lab.close(), also on failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import Host, Lab, wait_for

ROOT = Path(__file__).resolve().parents[2]
TCPXFER = [sys.executable, "-m", "lab.tcpxfer"]
NETWORK = "198.19.0.0/16"
PORT = 8285


def subnet_of(i: int) -> str:
    return f"198.19.{i}.0/24"


def pod_of(i: int) -> str:
    return f"198.19.{i}.1"


def underlay_of(i: int) -> str:
    return f"198.18.0.{i}"


@dataclass
class Daemon:
    host: Host
    proc: subprocess.Popen
    log: Path
    args: list = field(default_factory=list)

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Overlay:
    """A Lab of N hosts (h1..hN) with pod addresses, and daemon helpers."""

    def __init__(self, lab: Lab, tmp_path: Path, n: int) -> None:
        self.lab = lab
        self.tmp = tmp_path
        self.hosts: dict[int, Host] = {}
        self.daemons: list[Daemon] = []
        for i in range(1, n + 1):
            h = lab.add_host(f"h{i}", f"{underlay_of(i)}/24")
            lab.add_pod_address(h, f"{pod_of(i)}/24")
            self.hosts[i] = h

    def env(self, python_ref: bool = False) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if python_ref:
            env["UDPOVERLAY_NO_EXTENSIONS"] = "1"
        # otherwise inherit: UDPOVERLAY_NO_EXTENSIONS=1 on the test run makes
        # every daemon use the reference implementation
        return env

    def start(self, i: int, peers: list[int] | None = None, python_ref: bool = False,
              extra: list[str] | None = None, wait: bool = True,
              bare: bool = False, public_ip: bool = True,
              env: dict[str, str] | None = None) -> Daemon:
        """Start the daemon on host i with the given peer hosts (default: all
        others) and wait (bounded) until it answers on its control socket.
        bare=True uses the form without the `run` subcommand; env: extra
        environment variables (FLANNELD_*)."""
        if peers is None:
            peers = [j for j in self.hosts if j != i]
        args = [sys.executable, "-m", "udpoverlay", *([] if bare else ["run"]),
                *(["--public-ip", underlay_of(i)] if public_ip else []),
                "--subnet", subnet_of(i), "--network", NETWORK]
        for j in peers:
            args += ["--peer", f"{underlay_of(j)}={subnet_of(j)}"]
        args += extra or []
        return self.launch(i, args, env={**self.env(python_ref), **(env or {})}, wait=wait)

    def launch(self, i: int, args: list[str], env: dict | None = None,
               wait: bool = True, timeout: float = 15.0) -> Daemon:
        """Run args (a daemon command line) on host i, its output in a log
        file, tracked for stop/cleanup; optionally wait until it is ready."""
        log = self.tmp / f"daemon-h{i}-{len(self.daemons)}.log"
        with open(log, "wb") as f:
            proc = self.lab.popen(self.hosts[i].netns, args, stdin=subprocess.DEVNULL,
                                  stdout=f, stderr=f, env=env or self.env(),
                                  cwd=str(ROOT))
        d = Daemon(self.hosts[i], proc, log, args)
        self.daemons.append(d)
        if wait:
            self.wait_ready(d, timeout)
        return d

    def wait_ready(self, d: Daemon, timeout: float = 15.0) -> None:
        def ready():
            if d.proc.poll() is not None:
                raise AssertionError(f"daemon on {d.host.name} exited "
                                     f"{d.proc.returncode}:\n{d.stderr()}")
            return self.status(d.host, check=False) is not None
        wait_for(ready, timeout, 0.1, f"daemon on {d.host.name}")

    def stop(self, d: Daemon, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        return self.lab.stop(d.proc, sig, timeout)

    def run(self, host: Host, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env())
        kw.setdefault("timeout", 60)
        kw.setdefault("check", False)
        return self.lab.run(host.netns, cmd, **kw)

    def status(self, host: Host, check: bool = True) -> dict | None:
        r = self.run(host, [sys.executable, "-m", "udpoverlay", "status", "--json",
                            "--timeout", "3"], timeout=15)
        if r.returncode != 0:
            if check:
                raise AssertionError(f"status on {host.name} failed: {r.stderr}")
            return None
        return json.loads(r.stdout)

    def ping(self, i: int, j: int, count: int = 3) -> subprocess.CompletedProcess:
        return self.run(self.hosts[i], ["ping", "-n", "-c", str(count), "-i", "0.2",
                                        "-W", "2", "-I", pod_of(i), pod_of(j)], timeout=30)

    def transfer(self, src: int, dst: int, nbytes: int, port: int) -> None:
        """TCP from pod src to pod dst (lab.tcpxfer): all bytes
        arrive and their sha256 matches."""
        out = self.tmp / f"server-{src}-{dst}-{port}.out"
        with open(out, "wb") as f:
            server = self.lab.popen(self.hosts[dst].netns,
                                    [*TCPXFER, "server", pod_of(dst), str(port),
                                     "--timeout", "90"],
                                    stdout=f, stderr=subprocess.STDOUT, env=self.env())
        wait_for(lambda: b"listening" in out.read_bytes() or server.poll() is not None,
                 10, 0.05, "tcpxfer server")
        cl = self.run(self.hosts[src], [*TCPXFER, "client", pod_of(dst), str(port),
                                        str(nbytes), "--src", pod_of(src), "--timeout", "90"],
                      timeout=120)
        assert cl.returncode == 0, f"client failed: {cl.stdout}{cl.stderr}\n{self.dump_logs()}"
        server.wait(timeout=30)
        assert server.returncode == 0, out.read_text()
        sent, got = cl.stdout.split(), out.read_text().split()
        assert sent[0] == str(nbytes) and got[-2:] == sent[-2:], f"sent {sent} got {got}"

    def link_exists(self, host: Host, name: str = "udpov0") -> bool:
        return self.run(host, ["ip", "link", "show", name], timeout=10).returncode == 0

    def dump_logs(self) -> str:
        return "\n".join(f"--- {d.host.name} {d.log.name} (rc={d.proc.poll()}) ---\n"
                         f"{d.stderr()}" for d in self.daemons)
