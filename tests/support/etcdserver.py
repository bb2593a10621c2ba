"""A throw-away etcd for integration tests.

Why a helper and not a shared daemon: each test gets its own data dir and
free ports chosen at runtime, so tests cannot see each other's keys and two
runs on one machine cannot collide. The server listens on 127.0.0.1 only.
It is stopped by PID (never by name) at teardown, even when the test fails,
and can be stopped and started again on the same data dir and ports to
simulate a server restart.

Optional TLS: `make_tls_files(dir)` creates a CA, a server and a client
certificate with openssl; `EtcdServer(..., tls=files)` then serves https and
demands client certificates (like a production etcd behind flannel's
--etcd-cafile/--etcd-certfile/--etcd-keyfile).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.requirements import require

ETCD = "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
HOST = "127.0.0.1"

__all__ = ["EtcdServer", "TlsFiles", "etcd_server", "shared_etcd", "make_tls_files",
           "free_port", "require_etcd"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_tls_files(directory: Path) -> TlsFiles:
    """A private CA plus server (SAN IP:127.0.0.1) and client certificates."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=udpoverlay-test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n"
                               "extendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
                 "-out", f"{name}.crt", cwd=d)
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key",
                    d / "client.crt", d / "client.key")


class _PortTaken(RuntimeError):
    """etcd could not bind a port chosen a moment earlier."""


class EtcdServer:
    """One single-member etcd on 127.0.0.1 with runtime-chosen ports."""

    def __init__(self, data_dir: Path, *, tls: TlsFiles | None = None,
                 binary: str = ETCD) -> None:
        self.data_dir = Path(data_dir)
        self.tls = tls
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._proc: subprocess.Popen | None = None
        self._started = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{HOST}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _argv(self) -> list[str]:
        peer = f"http://{HOST}:{self.peer_port}"
        argv = [
            self.binary, "--name", "n1", "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"n1={peer}", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
            "--auto-compaction-retention", "0",
        ]
        if self.tls:
            argv += ["--cert-file", str(self.tls.server_cert),
                     "--key-file", str(self.tls.server_key),
                     "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]
        return argv

    def start(self, timeout: float = 15.0) -> None:
        """Start (or restart on the same data dir and ports) and wait until healthy.

        On a first start whose free ports were grabbed by someone else in the
        meantime, pick new ports and try again (at most three times)."""
        if self.running():
            return
        for attempt in range(3):
            try:
                self._start_once(timeout)
                self._started = True
                return
            except _PortTaken:
                if self._started or attempt == 2:
                    raise
                self.client_port, self.peer_port = free_port(), free_port()

    def _start_once(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                tail = self.log_path.read_bytes()[log_start:].decode(errors="replace")
                error = _PortTaken if "address already in use" in tail else RuntimeError
                raise error(f"etcd exited with {code}: {tail[-2000:]}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy after {timeout}s: {self.log_tail()}")

    def healthy(self) -> bool:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1,
                                        context=context) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, then SIGKILL after `timeout`; always reaps."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL by PID: a crash, not a clean shutdown."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def etcdctl(self, *args: str, timeout: float = 10.0) -> str:
        argv = [ETCDCTL, f"--endpoints={self.endpoint}", "--dial-timeout=3s",
                "--command-timeout=5s"]
        if self.tls:
            argv += [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}",
                     f"--key={self.tls.client_key}"]
        env = dict(os.environ, ETCDCTL_API="3")
        done = subprocess.run(argv + list(args), env=env, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def revision(self) -> int:
        out = self.etcdctl("endpoint", "status", "-w", "json")
        return int(json.loads(out)[0]["Status"]["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """etcdctl compact at `revision` (default: the current one)."""
        rev = self.revision() if revision is None else revision
        self.etcdctl("compact", str(rev), "--physical")
        return rev


def require_etcd(tls: bool = False) -> None:
    """Skip (or fail under UDPOVERLAY_REQUIRE_ALL=1) without etcd / openssl."""
    require(os.path.exists(ETCD), f"needs {ETCD} (Debian etcd-server)")
    require(os.path.exists(ETCDCTL), "needs etcdctl")
    if tls:
        require(shutil.which("openssl") is not None, "needs openssl to make certificates")


def _serve(data_dir: Path):
    require_etcd()
    server = EtcdServer(data_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_server(tmp_path):
    """A running EtcdServer of one's own (restart/stop it freely); stopped by PID."""
    yield from _serve(tmp_path / "etcd")


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory):
    """One EtcdServer for a test module; tests keep apart by key prefix."""
    yield from _serve(tmp_path_factory.mktemp("etcd") / "etcd")
