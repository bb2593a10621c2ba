"""A udpoverlay wireguard daemon and a real WireGuard peer (Debian's
wireguard-go, configured with `wg`) on an Overlay's two hosts, and the
tools the tests around them share:

    h1: eth0 198.18.0.1, pod 198.19.1.1: `udpoverlay run --backend wireguard`
    h2: eth0 198.18.0.2, pod 198.19.2.1: wireguard-go (device wg<tag>,
        address 198.19.2.0/32, route 198.19.1.0/24 via it), its peer = us:
        AllowedIPs 198.19.1.0/24, Endpoint 198.18.0.1:51820

- WgGo: wireguard-go on h2 (start, `wg set`, restart, logs, close);
- our_key / start_ours: our key file and daemon;
- PacedTransfer: a checked TCP transfer at a fixed rate in the background;
- Pinger: a background `ping -D` whose replies have wall-clock times;
- pcap_udp: the UDP datagrams of a tcpdump capture; udp_socket_in: a UDP
  socket inside a namespace, in this process.

Everything is started through the Overlay's Lab (processes by PID,
namespaces), so the `lab` fixture removes it, also on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab.netns import wait_for
from tests.support.overlay import NETWORK, Overlay, pod_of, subnet_of, underlay_of
from udpoverlay.wireguard import generate

PORT = 51820
UAPI_DIR = "/var/run/wireguard"
PACED = [sys.executable, "-m", "tests.support.pacedxfer"]
CLONE_NEWNET = 0x40000000


def secret_file(path: Path, text: str) -> str:
    """text in a new file of mode 0600 (what wg and udpoverlay accept)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return str(path)


class WgGo:
    """wireguard-go on host 2, configured with `wg set`; restart() ends it
    and starts it again with the same key and peers."""

    def __init__(self, ov: Overlay) -> None:
        self.ov, self.lab = ov, ov.lab
        self.host = ov.hosts[2]
        self.dev = ("wg" + self.lab.tag)[:15]
        self.key = generate()
        self.key_file = secret_file(ov.tmp / "wggo.key", self.key.secret_base64())
        self.peers: list[list[str]] = []       # the `wg set ... peer ...` of each add_peer
        self.starts = 0
        self.proc: subprocess.Popen | None = None
        self.log = open(ov.tmp / "wireguard-go.log", "w")
        self._up()

    def _up(self) -> None:
        self.starts += 1
        self.log.write(f"--- start {self.starts} ---\n")
        self.log.flush()
        self.proc = self.lab.popen(self.host.netns, ["wireguard-go", "-f", self.dev],
                                   stdout=self.log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "WG_PROCESS_FOREGROUND": "1",
                                        "LOG_LEVEL": "debug"})
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or os.path.exists(self.uapi), 10, 0.05,
                 "wireguard-go's device")
        assert proc.poll() is None, self.logs()
        self.run("wg", "set", self.dev, "private-key", self.key_file, "listen-port", str(PORT))
        self.run("ip", "addr", "add", "198.19.2.0/32", "dev", self.dev)
        self.run("ip", "link", "set", self.dev, "up")
        self.run("ip", "route", "add", subnet_of(1), "dev", self.dev)
        for cmd in self.peers:
            self.run(*cmd)

    @property
    def uapi(self) -> str:
        return f"{UAPI_DIR}/{self.dev}.sock"

    def run(self, *cmd: str) -> str:
        return self.lab.run(self.host.netns, list(cmd), timeout=15).stdout

    def add_peer(self, public_b64: str, psk_file: str | None = None) -> None:
        cmd = ["wg", "set", self.dev, "peer", public_b64, "allowed-ips", subnet_of(1),
               "endpoint", f"{underlay_of(1)}:{PORT}"]
        if psk_file is not None:
            cmd += ["preshared-key", psk_file]
        self.run(*cmd)
        self.peers.append(cmd)

    def stop(self) -> None:
        """End it (SIGTERM: it removes its device and control socket)."""
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uapi)      # left behind only if it had to be killed
        self.lab.run(self.host.netns, ["ip", "link", "del", self.dev], check=False)

    def restart(self) -> None:
        """A new wireguard-go process: same key, port, address, route, peers;
        no session."""
        self.stop()
        self._up()

    def latest_handshake(self) -> int:
        out = self.run("wg", "show", self.dev, "latest-handshakes")
        return max((int(line.split("\t")[1]) for line in out.splitlines() if "\t" in line),
                   default=0)

    def logs(self) -> str:
        self.log.flush()
        return (self.ov.tmp / "wireguard-go.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.log.close()


def our_key(ov: Overlay) -> tuple[str, str]:
    """Our key file (created by hand here; the daemon's own creation is a
    unit test) and its public key, through `udpoverlay pubkey`."""
    path = ov.tmp / "ours.key"
    if not path.exists():
        secret_file(path, generate().secret_base64())
    r = ov.run(ov.hosts[1], [sys.executable, "-m", "udpoverlay", "pubkey",
                             "--private-key-file", str(path)], check=True)
    return str(path), r.stdout.strip()


def start_ours(ov: Overlay, wg: WgGo, key_file: str, spec: str = "", extra=()):
    """Our daemon on h1, wireguard-go (h2) its one peer; spec: more
    `,key=value` for the --peer."""
    args = [sys.executable, "-m", "udpoverlay", "run", "--backend", "wireguard", "-v", "2",
            "--private-key-file", key_file, "--public-ip", underlay_of(1),
            "--subnet", subnet_of(1), "--network", NETWORK,
            "--peer", f"{underlay_of(2)}={subnet_of(2)},public-key={wg.key.public.to_base64()}"
                      + spec, *extra]
    return ov.launch(1, args)


class PacedTransfer:
    """pacedxfer from pod src to pod dst in the background; result() waits
    (bounded) and checks every byte arrived with the same sha256."""

    def __init__(self, ov: Overlay, src: int, dst: int, rate: float, seconds: float,
                 port: int) -> None:
        self.ov, self.seconds = ov, seconds
        timeout = str(seconds * 2 + 60)
        self.out = ov.tmp / f"paced-server-{port}.out"
        self.cl_out = ov.tmp / f"paced-client-{port}.out"
        with open(self.out, "wb") as f:
            self.server = ov.lab.popen(ov.hosts[dst].netns,
                                       [*PACED, "server", pod_of(dst), str(port),
                                        "--timeout", timeout],
                                       stdout=f, stderr=subprocess.STDOUT, env=ov.env())
        wait_for(lambda: b"listening" in self.out.read_bytes() or self.server.poll() is not None,
                 10, 0.05, "pacedxfer server")
        with open(self.cl_out, "wb") as f:
            self.client = ov.lab.popen(ov.hosts[src].netns,
                                       [*PACED, "client", pod_of(dst), str(port),
                                        "--rate", str(rate), "--seconds", str(seconds),
                                        "--src", pod_of(src), "--timeout", timeout],
                                       stdout=f, stderr=subprocess.STDOUT, env=ov.env())

    def running(self) -> bool:
        return self.client.poll() is None

    def result(self) -> dict:
        """The server's report (bytes, sha256, max_gap, gaps) once both
        ends are done and agree."""
        self.client.wait(timeout=self.seconds * 2 + 90)
        self.server.wait(timeout=30)
        sent_text, got_text = self.cl_out.read_text(), self.out.read_text()
        assert self.client.returncode == 0, f"client: {sent_text}\n{self.ov.dump_logs()}"
        assert self.server.returncode == 0, f"server: {got_text}"
        sent = json.loads(sent_text.strip().splitlines()[-1])
        got = json.loads(got_text.strip().splitlines()[-1])
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"]), (sent, got)
        return got


_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


class Pinger:
    """`ping -D` from pod src to pod dst in the background, every
    `interval` s; replies() gives the wall-clock times of the replies."""

    def __init__(self, ov: Overlay, src: int, dst: int, interval: float, seconds: float) -> None:
        self.path = ov.tmp / f"ping-{src}-{dst}-{len(ov.daemons)}-{time.monotonic_ns()}.out"
        with open(self.path, "wb") as f:
            self.proc = ov.lab.popen(ov.hosts[src].netns,
                                     ["ping", "-n", "-D", "-i", str(interval), "-W", "1",
                                      "-w", str(int(seconds)), "-I", pod_of(src), pod_of(dst)],
                                     stdout=f, stderr=subprocess.STDOUT)
        self.ov = ov

    def replies(self) -> list[float]:
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            m = _REPLY.match(line)
            if m:
                out.append(float(m.group(1)))
        return out

    def stop(self) -> None:
        self.ov.lab.stop(self.proc, timeout=5)


def pcap_udp(path: Path):
    """(time, src, dst, sport, dport, udp payload) of each IPv4/UDP frame in a
    pcap file (Ethernet link type, as tcpdump writes it for a veth)."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    off, out = 24, []
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) < 42 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
        out.append((sec + frac / (1e9 if nano else 1e6), src, dst, sport, dport, ip[ihl + 8:]))
    return out


class Capture:
    """tcpdump on a host's eth0 (UDP only), to a pcap file; frames() stops
    it and parses the file (pcap_udp)."""

    def __init__(self, ov: Overlay, i: int, name: str) -> None:
        self.ov, self.path = ov, ov.tmp / f"{name}.pcap"
        self.proc = ov.lab.popen(ov.hosts[i].netns, ["tcpdump", "-i", "eth0", "-n", "-U",
                                                     "-s", "0", "-w", str(self.path), "udp"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.path.exists() and self.path.stat().st_size >= 24, 10, 0.05,
                 "tcpdump")
        time.sleep(0.3)     # the file exists before the capture is attached

    def frames(self):
        time.sleep(0.3)     # -U: what was captured is written; give it a moment
        self.ov.lab.stop(self.proc, timeout=5)
        return pcap_udp(self.path)


def udp_socket_in(netns: str, addr: tuple[str, int]) -> socket.socket:
    """A UDP socket bound inside netns (made on a thread that entered it;
    the socket stays in that namespace after the thread is gone)."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns})")
            finally:
                os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(addr)
            s.setblocking(False)
            box["sock"] = s
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    if "error" in box:
        raise box["error"]
    return box["sock"]
