"""The shared two-host topology and the data paths measured on it.

Two Lab hosts on one bridge (underlay 198.18.0.0/24), each with a "pod"
address on a port-less bridge (198.19.1.1/24, 198.19.2.1/24). A scenario
adds only the path between the pods and removes it again, so every scenario
of one run crosses the same namespaces, veths and bridge:

- host-routing: a plain route to the other pod subnet via its underlay IP;
- kernel-vxlan: flannel.1 configured the way flannel's vxlan backend does;
- udpoverlay-*: the udpoverlay daemon on each host (udp or vxlan backend,
  with or without offloads; vxlan with DirectRouting; wireguard in static
  mode);
- wireguard-go: Debian's wireguard-go on each host, configured with `wg set`
  (what udpoverlay-wireguard is compared with);
- fastd-null: fastd's null method (what --no-offload is compared with).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.measure import Endpoints, tail_lines
from lab import kernel_vxlan
from lab.netns import Host, Lab
from udpoverlay.wireguard import generate

NETWORK = "198.19.0.0/16"
READY_TIMEOUT = 10.0
REPO_ROOT = Path(__file__).resolve().parents[1]


class ScenarioError(RuntimeError):
    pass


@dataclass(frozen=True)
class Node:
    name: str
    underlay_ip: str
    subnet: str
    pod_ip: str


NODES = (Node("h1", "198.18.0.1", "198.19.1.0/24", "198.19.1.1"),
         Node("h2", "198.18.0.2", "198.19.2.0/24", "198.19.2.1"))


class Topology:
    """Two hosts with pods; traffic always goes h1's pod -> h2's pod."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.hosts: list[tuple[Node, Host]] = []
        for node in NODES:
            host = lab.add_host(node.name, f"{node.underlay_ip}/24")
            prefix = node.subnet.split("/")[1]
            lab.add_pod_address(host, f"{node.pod_ip}/{prefix}")
            self.hosts.append((node, host))

    def pairs(self):
        """(node, host, remote node) for each direction."""
        (n1, h1), (n2, h2) = self.hosts
        return [(n1, h1, n2), (n2, h2, n1)]

    def ping(self, wait: int = 1) -> bool:
        (n1, h1), (n2, _) = self.hosts
        proc = self.lab.run(h1.netns, ["ping", "-n", "-q", "-c", "1", "-W",
                                       str(wait), "-I", n1.pod_ip, n2.pod_ip],
                            check=False, timeout=wait + 10)
        return proc.returncode == 0

    def endpoints(self, logdir: Path) -> Endpoints:
        (n1, h1), (n2, h2) = self.hosts
        return Endpoints(self.lab, h1.netns, h2.netns, n1.pod_ip, n2.pod_ip,
                         logdir, REPO_ROOT)


class Scenario:
    """A data path between the pods: set up, checked alive, torn down."""

    name = "?"

    def setup(self, topo: Topology, logdir: Path) -> None:
        raise NotImplementedError

    def teardown(self, topo: Topology) -> None:
        raise NotImplementedError

    def daemon_pids(self) -> list[int]:
        return []

    def check_alive(self) -> None:
        """Raise ScenarioError if a process of the data path has died."""

    def log_tails(self) -> str:
        """The last log lines of the scenario's processes ("" if none)."""
        return ""


class HostRouting(Scenario):
    name = "host-routing"

    def setup(self, topo: Topology, logdir: Path) -> None:
        for _, host, remote in topo.pairs():
            topo.lab.run(host.netns, ["ip", "route", "replace", remote.subnet,
                                      "via", remote.underlay_ip, "dev", "eth0"])

    def teardown(self, topo: Topology) -> None:
        for _, host, remote in topo.pairs():
            topo.lab.run(host.netns, ["ip", "route", "del", remote.subnet],
                         check=False)


class KernelVxlan(Scenario):
    name = "kernel-vxlan"

    def setup(self, topo: Topology, logdir: Path) -> None:
        macs = {node.name: kernel_vxlan.setup_flannel_vxlan(
                    topo.lab, host, node.subnet, underlay_mtu=topo.lab.mtu)
                for node, host, _ in topo.pairs()}
        for _, host, remote in topo.pairs():
            kernel_vxlan.add_flannel_vxlan_peer(
                topo.lab, host, remote.subnet, macs[remote.name],
                remote.underlay_ip)

    def teardown(self, topo: Topology) -> None:
        for _, host, _ in topo.pairs():
            kernel_vxlan.teardown_flannel_vxlan(topo.lab, host)


class TunnelDaemons(Scenario):
    """A user-space tunnel daemon on each host, started by PID, its output in
    logdir; subclasses say how (command) and which TUN it leaves (IFACE)."""

    IFACE = "?"

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def command(self, node: Node, remote: Node, logdir: Path) -> list[str]:
        raise NotImplementedError

    def setup(self, topo: Topology, logdir: Path) -> None:
        for node, host, remote in topo.pairs():
            log = logdir / f"{self.name}-{node.name}-daemon.log"
            cmd = self.command(node, remote, logdir)
            with open(log, "w") as out:
                proc = topo.lab.popen(host.netns, cmd, cwd=REPO_ROOT, stdout=out,
                                      stderr=subprocess.STDOUT)
            self.procs.append((node.name, proc, log))

    def daemon_pids(self) -> list[int]:
        return [proc.pid for _, proc, _ in self.procs]

    def log_tails(self, lines: int = 3) -> str:
        return "; ".join(f"{name}: {_tail(log, lines)}"
                         for name, _, log in self.procs)

    def check_alive(self) -> None:
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                raise ScenarioError(f"daemon on {name} exited with rc "
                                    f"{proc.returncode}: {_tail(log)}")

    def teardown(self, topo: Topology) -> None:
        for _, proc, _ in self.procs:
            topo.lab.stop(proc)
        self.procs.clear()
        for _, host, _ in topo.pairs():  # a crashed daemon may leave it behind
            topo.lab.run(host.netns, ["ip", "link", "del", self.IFACE],
                         check=False)


class Udpoverlay(TunnelDaemons):
    """`python -m udpoverlay run ...` on each host, cwd = repository root."""

    IFACE = "uo0"

    def __init__(self, backend: str, offload: bool, threads: bool = False,
                 io: str | None = None, udp_offload: bool = True, queues: int = 1,
                 busy_poll_us: int = 0) -> None:
        super().__init__()
        self.backend, self.offload, self.threads, self.io = backend, offload, threads, io
        self.udp_offload, self.queues, self.busy_poll_us = udp_offload, queues, busy_poll_us
        # --no-offload --no-udp-offload: the fully plain path, one kernel
        # send and receive per packet ("-plain")
        self.name = (f"udpoverlay-{backend}"
                     + ("" if offload else "-nooffload" if udp_offload else "-plain")
                     + ("-threads" if threads else "")
                     + (f"-queues{queues}" if queues > 1 else "")
                     + (f"-busypoll{busy_poll_us}" if busy_poll_us else ""))

    def command(self, node: Node, remote: Node, logdir: Path | None = None) -> list[str]:
        cmd = [sys.executable, "-m", "udpoverlay", "run", "--tun", self.IFACE,
               "--public-ip", node.underlay_ip, "--subnet", node.subnet,
               "--network", NETWORK,
               "--peer", f"{remote.underlay_ip}={remote.subnet}"]
        if self.backend != "udp":
            cmd += ["--backend", self.backend]
        if not self.offload:
            cmd.append("--no-offload")
        if not self.udp_offload:
            cmd.append("--no-udp-offload")
        if self.threads:
            cmd.append("--threads")
        if self.queues > 1:
            cmd += ["--queues", str(self.queues)]
        if self.busy_poll_us:
            cmd += ["--busy-poll-us", str(self.busy_poll_us)]
        if self.io:
            cmd += ["--io", self.io]
        return cmd


class UdpoverlayDirect(Udpoverlay):
    """udpoverlay-vxlan with --direct-routing: the hosts share a link, so each
    daemon installs a plain route to the other pod subnet (what host-routing
    measures) and pod traffic bypasses the TUN."""

    NAME = "udpoverlay-vxlan-direct"

    def __init__(self, io: str | None = None) -> None:
        super().__init__("vxlan", offload=True, io=io)
        self.name = self.NAME

    def command(self, node: Node, remote: Node, logdir: Path | None = None) -> list[str]:
        return [*super().command(node, remote, logdir), "--direct-routing"]


WG_PORT = 51820


def write_secret(path: Path, text: str) -> str:
    """text in a new file of mode 0600 (what wg and udpoverlay accept for a
    key); an existing file is replaced."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return str(path)


def wg_keys(logdir: Path, prefix: str) -> dict[str, tuple[str, str]]:
    """A new WireGuard key per node: {name: (private key file, public key
    base64)}, the files (mode 0600) in logdir."""
    keys = {}
    for node in NODES:
        key = generate()
        path = write_secret(logdir / f"{prefix}-{node.name}.key", key.secret_base64())
        keys[node.name] = (path, key.public.to_base64())
    return keys


class UdpoverlayWireguard(Udpoverlay):
    """`udpoverlay run --backend wireguard` (static mode) on each host, each
    the other's one peer (its public key in --peer). Its data path has one
    read mode: --io is not passed."""

    NAME = "udpoverlay-wireguard"

    def __init__(self) -> None:
        super().__init__("wireguard", offload=True)
        self.name = self.NAME
        self.keys: dict[str, tuple[str, str]] = {}

    def setup(self, topo: Topology, logdir: Path) -> None:
        self.keys = wg_keys(logdir, self.name)
        super().setup(topo, logdir)

    def command(self, node: Node, remote: Node, logdir: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "udpoverlay", "run", "--backend", "wireguard",
                "--tun", self.IFACE, "--private-key-file", self.keys[node.name][0],
                "--public-ip", node.underlay_ip, "--subnet", node.subnet,
                "--network", NETWORK, "--port", str(WG_PORT),
                "--peer", f"{remote.underlay_ip}={remote.subnet},"
                          f"public-key={self.keys[remote.name][1]}"]


WG_UAPI_DIR = Path("/var/run/wireguard")


def wg_go_device(tag: str, node: Node) -> str:
    """wireguard-go's device name on node: unique per Lab and node, because
    its control socket (/var/run/wireguard/DEV.sock) is a file, shared by
    every namespace."""
    return f"wg{tag}{node.name}"[:15]


def wg_go_config(node: Node, remote: Node, dev: str, key_file: str,
                 remote_public: str) -> list[list[str]]:
    """The commands (run in node's namespace, wireguard-go running) that
    make dev the tunnel to remote, as for a flannel wireguard node: our key
    and port, the peer with AllowedIPs = its subnet and its endpoint, the
    subnet's address /32 on the device, and a route to the remote subnet."""
    return [["wg", "set", dev, "private-key", key_file, "listen-port", str(WG_PORT),
             "peer", remote_public, "allowed-ips", remote.subnet,
             "endpoint", f"{remote.underlay_ip}:{WG_PORT}"],
            ["ip", "addr", "add", node.subnet.split("/")[0] + "/32", "dev", dev],
            ["ip", "link", "set", dev, "up"],
            ["ip", "route", "replace", remote.subnet, "dev", dev]]


class WireguardGo(TunnelDaemons):
    """Debian's wireguard-go (user space, TUN) on each host, configured with
    `wg set` (wireguard-tools): the user-space WireGuard that
    udpoverlay-wireguard is compared with, in the same run. Its MTU is its
    default, 1420 (underlay 1500 - 80, as ours)."""

    name = "wireguard-go"
    IFACE = "?"   # per node: wg_go_device()

    def __init__(self) -> None:
        super().__init__()
        self.devs: dict[str, str] = {}

    def command(self, node: Node, remote: Node, logdir: Path | None = None) -> list[str]:
        return ["wireguard-go", "-f", self.devs[node.name]]

    def setup(self, topo: Topology, logdir: Path) -> None:
        for tool in ("wireguard-go", "wg"):
            if shutil.which(tool) is None:
                raise ScenarioError(f"{tool} is not installed (apt-get install "
                                    "--no-install-recommends wireguard-go wireguard-tools)")
        keys = wg_keys(logdir, self.name)
        self.devs = {node.name: wg_go_device(topo.lab.tag, node) for node in NODES}
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1"}
        for node, host, remote in topo.pairs():
            log = logdir / f"{self.name}-{node.name}-daemon.log"
            with open(log, "w") as out:
                proc = topo.lab.popen(host.netns, self.command(node, remote), stdout=out,
                                      stderr=subprocess.STDOUT, env=env)
            self.procs.append((node.name, proc, log))
        for node, host, remote in topo.pairs():
            sock = WG_UAPI_DIR / f"{self.devs[node.name]}.sock"
            deadline = time.monotonic() + READY_TIMEOUT
            for _ in range(int(READY_TIMEOUT / 0.05) + 1):
                self.check_alive()
                if sock.exists() or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            if not sock.exists():
                raise ScenarioError(f"wireguard-go on {node.name}: no {sock} "
                                    f"within {READY_TIMEOUT:.0f} s")
            for cmd in wg_go_config(node, remote, self.devs[node.name], keys[node.name][0],
                                    keys[remote.name][1]):
                topo.lab.run(host.netns, cmd, timeout=15)

    def teardown(self, topo: Topology) -> None:
        for _, proc, _ in self.procs:
            topo.lab.stop(proc)        # SIGTERM: it removes its device and socket
        self.procs.clear()
        for node, host, _ in topo.pairs():
            dev = self.devs.get(node.name)
            if dev:                    # left behind only if it had to be killed
                topo.lab.run(host.netns, ["ip", "link", "del", dev], check=False)
                (WG_UAPI_DIR / f"{dev}.sock").unlink(missing_ok=True)


FASTD_PORT = 10000
FASTD_MTU = 1471          # underlay 1500 - IP 20 - UDP 8 - fastd packet type 1


def fastd_keypair() -> tuple[str, str]:
    """(secret, public) from `fastd --generate-key`."""
    proc = subprocess.run(["fastd", "--generate-key"], capture_output=True, text=True,
                          timeout=30, check=True)
    found = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    return found["Secret"].strip(), found["Public"].strip()


def fastd_config(node: Node, remote: Node, secret: str, remote_public: str,
                 iface: str) -> str:
    """fastd in TUN mode with the null method (no encryption): the same job
    as udpoverlay's udp backend, done by an established user-space tunnel."""
    tun_addr = node.subnet.split("/")[0]
    up = (f"ip addr add {tun_addr}/32 dev $INTERFACE && ip link set $INTERFACE up && "
          f"ip route replace {remote.subnet} dev $INTERFACE")
    return "\n".join([
        "log level warn;",
        f'interface "{iface}";',
        "mode tun;",
        'method "null";',
        f"bind {node.underlay_ip}:{FASTD_PORT};",
        f'secret "{secret}";',
        f"mtu {FASTD_MTU};",
        f'on up "{up}";',
        f'peer "{remote.name}" {{',
        f'    key "{remote_public}";',
        f"    remote {remote.underlay_ip}:{FASTD_PORT};",
        "}",
        ""])


class FastdNull(TunnelDaemons):
    """fastd (Debian's package), null method, TUN mode: the user-space
    tunnel that --no-offload is compared with, measured in the same run."""

    name = "fastd-null"
    IFACE = "fd0"

    def setup(self, topo: Topology, logdir: Path) -> None:
        if shutil.which("fastd") is None:
            raise ScenarioError("fastd is not installed (apt-get install fastd)")
        self.keys = {node.name: fastd_keypair() for node, _, _ in topo.pairs()}
        super().setup(topo, logdir)

    def command(self, node: Node, remote: Node, logdir: Path) -> list[str]:
        conf = logdir / f"fastd-{node.name}.conf"
        conf.write_text(fastd_config(node, remote, self.keys[node.name][0],
                                     self.keys[remote.name][1], self.IFACE))
        return ["fastd", "--config", str(conf)]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return tail_lines(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


def make_scenario(name: str, io: str | None = None) -> Scenario:
    """The scenario called name; io: the udpoverlay daemons' --io (None:
    their default)."""
    if name == HostRouting.name:
        return HostRouting()
    if name == KernelVxlan.name:
        return KernelVxlan()
    if name == FastdNull.name:
        return FastdNull()
    if name == UdpoverlayDirect.NAME:
        return UdpoverlayDirect(io)
    if name == UdpoverlayWireguard.NAME:
        return UdpoverlayWireguard()
    if name == WireguardGo.name:
        return WireguardGo()
    for backend in ("udp", "vxlan"):
        for offload in (True, False):
            for threads in (False, True):
                for udp_offload in (True, False) if not offload else (True,):
                    scenario = Udpoverlay(backend, offload, threads, io, udp_offload)
                    if scenario.name == name:
                        return scenario
        if name == f"udpoverlay-{backend}-queues2":     # --queues implies threads
            return Udpoverlay(backend, True, False, io, queues=2)
        if name == f"udpoverlay-{backend}-busypoll50":
            return Udpoverlay(backend, True, False, io, busy_poll_us=50)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


SCENARIOS = ("host-routing", "kernel-vxlan", "udpoverlay-udp",
             "udpoverlay-vxlan", "udpoverlay-udp-nooffload",
             "udpoverlay-vxlan-nooffload", "udpoverlay-udp-threads",
             "udpoverlay-vxlan-threads", "udpoverlay-udp-queues2", "udpoverlay-vxlan-queues2",
             "udpoverlay-vxlan-direct", "udpoverlay-udp-plain", "udpoverlay-udp-busypoll50",
             "fastd-null", "udpoverlay-wireguard", "wireguard-go")


def clear_overlay_routes(topo: Topology) -> None:
    """Remove any route a scenario may have left for the remote subnet or the
    whole overlay network (a crashed daemon, a failed teardown)."""
    for _, host, remote in topo.pairs():
        for prefix in (remote.subnet, NETWORK):
            topo.lab.run(host.netns, ["ip", "route", "flush", "exact", prefix],
                         check=False)


def bring_up(scenario: Scenario, topo: Topology, logdir: Path,
             timeout: float = READY_TIMEOUT) -> None:
    """Set the scenario up and wait (bounded) until pod pings pod through it."""
    if topo.ping():
        raise ScenarioError("pods already reach each other before setup: "
                            "a previous scenario left a path behind")
    scenario.setup(topo, logdir)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout * 4) + 1):
        scenario.check_alive()
        if topo.ping(wait=1):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    scenario.check_alive()
    tails = scenario.log_tails()
    raise ScenarioError(f"no pod-to-pod ping within {timeout:.0f} s"
                        + (f"; {tails}" if tails else ""))
