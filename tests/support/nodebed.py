"""A node-shaped test bed: hosts shaped like Kubernetes/Docker nodes, on one
Lab underlay (198.18.0.0/24).

Each node namespace has eth0 on the underlay switch, its iptables FORWARD
policy set to DROP (as Docker does) and, once its pod subnet is known, what
the flannel CNI plugin builds from subnet.env: a `cni0` bridge holding the
gateway (the first address of FLANNEL_SUBNET, with the subnet's prefix)
with MTU = FLANNEL_MTU, and pods, each in its own namespace behind a veth
on cni0, addressed from the subnet with a default route via the gateway.
An "outside" host sits on the same switch at an address outside the
overlay network, to check egress and masquerade.

Pod namespaces are made through the Lab, so Lab.close() removes them (and
the processes in them) with everything else, also on failure.

in_netns(netns, fn) runs fn on a fresh thread that entered netns: tests of
udpoverlay.host.firewall drive a Firewall object across calls in a node
namespace, as the daemon does from asyncio.to_thread.

vxlan nodes: start_vxlan() runs the daemon with `--backend vxlan` and each
peer's VtepMAC; kernel_vxlan_node() makes a node that runs no udpoverlay,
only flannel.1 configured as flannel's vxlan backend does (its underlay
keeps tx checksumming on, as veths and virtio-net do: inner checksums leave
partial), plus flanneld's firewall rules applied in its namespace with
udpoverlay.host.firewall, as flanneld would on that node.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lab import kernel_vxlan
from lab.netns import Host, Lab, wait_for
from tests.support.overlay import ROOT, TCPXFER, Overlay
from tests.support.probes import SENDER, start_listener
from tests.support.requirements import require
from udpoverlay.cluster.subnetenv import read_subnet_env
from udpoverlay.host.firewall import Firewall

NETWORK = ipaddress.IPv4Network("198.19.0.0/16")
OUTSIDE_IP = "198.18.0.200"          # on the underlay switch, outside NETWORK
UDP_OVERHEAD = 28                   # the udp backend: FLANNEL_MTU = underlay MTU - 28
VXLAN_OVERHEAD = kernel_vxlan.VXLAN_OVERHEAD   # vxlan: FLANNEL_MTU = underlay MTU - 50
CLONE_NEWNET = 0x40000000
FIREWALL_TOOLS = ("iptables", "iptables-save", "iptables-restore", "nft")


def require_firewall_tools() -> None:
    """iptables (its save/restore) and nft: what the firewall tests drive."""
    for tool in FIREWALL_TOOLS:
        require(shutil.which(tool) is not None,
                f"needs {tool} on PATH (Debian packages iptables, nftables)")


def in_netns(netns: str, fn, *args, timeout: float = 120.0):
    """fn(*args) on a new thread inside netns (setns affects that thread
    only, and the commands it starts); its result, or its exception."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"in-{netns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} in {netns} took over {timeout}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def bed_fixture(lab: Lab, tmp_path: Path, request):
    """A `bed` fixture's body: a NodeBed; the daemons' logs printed if the
    test failed."""
    b = NodeBed(lab, tmp_path)
    yield b
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(b.ov.dump_logs())


@dataclass(frozen=True)
class CniConfig:
    """What the flannel CNI plugin hands the bridge plugin, from subnet.env."""

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    mtu: int
    ip_masq: bool            # the bridge plugin's own masquerade: !FLANNEL_IPMASQ

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "CniConfig":
        iface = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"])   # 198.19.1.1/24
        return cls(iface.network, iface.ip, int(env["FLANNEL_MTU"]),
                   env.get("FLANNEL_IPMASQ", "false") != "true")


def static_env(subnet, mtu: int, ip_masq: bool, network=NETWORK) -> dict[str, str]:
    """subnet.env's values as flanneld would write them for `subnet`: static
    mode writes no file, so the test, knowing what it gave --subnet, uses these."""
    subnet = ipaddress.IPv4Network(subnet)
    return {"FLANNEL_NETWORK": str(network),
            "FLANNEL_SUBNET": f"{subnet.network_address + 1}/{subnet.prefixlen}",
            "FLANNEL_MTU": str(mtu), "FLANNEL_IPMASQ": "true" if ip_masq else "false"}


@dataclass
class Pod:
    name: str
    netns: str
    address: str


@dataclass
class Node:
    index: int
    host: Host
    subnet: ipaddress.IPv4Network
    cni: CniConfig | None = None
    pods: list[Pod] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return self.host.netns

    @property
    def public_ip(self) -> str:
        return self.host.underlay_ip


class NodeBed:
    """Nodes n1..nN (198.18.0.i, pod subnet 198.19.i.0/24) and an outside
    host, in one Lab; `ov` is an Overlay over the same hosts for the daemon
    helpers (launch, wait_ready, status, dump_logs)."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        require_firewall_tools()
        self.lab = lab
        self.tmp = tmp_path
        self.ov = Overlay(lab, tmp_path, 0)
        self.nodes: dict[int, Node] = {}
        self.outside: Host | None = None

    def add_node(self, i: int, forward_policy: str = "DROP") -> Node:
        host = self.lab.add_host(f"n{i}", f"198.18.0.{i}/24")
        self.lab.run(host.netns, ["iptables", "-P", "FORWARD", forward_policy])
        node = Node(i, host, ipaddress.IPv4Network(f"198.19.{i}.0/24"))
        self.nodes[i] = node
        self.ov.hosts[i] = host
        return node

    def add_outside(self) -> Host:
        """A host on the underlay switch with no route to the overlay: it can
        answer a pod only if the pod's node masqueraded the pod's address."""
        self.outside = self.lab.add_host("out", f"{OUTSIDE_IP}/24", forward=False)
        return self.outside

    def wire_pods(self, node: Node, env: dict[str, str], count: int = 2,
                  bridge: str = "cni0") -> list[Pod]:
        """As the flannel CNI plugin (bridge plugin + host-local IPAM) would:
        cni0 = gateway/prefix, MTU from env; pods .2, .3, ... behind veths.
        `bridge`: another name for a second network's pods on the node."""
        cni = CniConfig.from_env(env)
        node.cni = cni
        ns, prefix = node.netns, cni.subnet.prefixlen
        self.lab.run(ns, ["ip", "link", "add", bridge, "mtu", str(cni.mtu), "type", "bridge"])
        self.lab.run(ns, ["ip", "addr", "add", f"{cni.gateway}/{prefix}", "dev", bridge])
        self.lab.run(ns, ["ip", "link", "set", bridge, "up"])
        pods = []
        for k in range(count):
            name = f"n{node.index}{'' if bridge == 'cni0' else bridge}p{k + 1}"
            pod_ns = f"{self.lab.tag}-{name}"
            self.lab._add_netns(pod_ns)       # the Lab deletes it in close()
            self.lab.sysctl(pod_ns, "net.ipv6.conf.all.disable_ipv6", "1")
            addr = str(cni.gateway + 1 + k)
            veth = f"veth{name}"[:15]
            self.lab.run(ns, ["ip", "link", "add", veth, "mtu", str(cni.mtu), "type", "veth",
                              "peer", "name", "eth0", "mtu", str(cni.mtu), "netns", pod_ns])
            self.lab.run(ns, ["ip", "link", "set", veth, "master", bridge, "up"])
            self.lab.run(pod_ns, ["ip", "addr", "add", f"{addr}/{prefix}", "dev", "eth0"])
            self.lab.run(pod_ns, ["ip", "link", "set", "eth0", "up"])
            self.lab.run(pod_ns, ["ip", "route", "add", "default", "via", str(cni.gateway)])
            pods.append(Pod(name, pod_ns, addr))
        node.pods += pods
        return pods

    def vtep_mac(self, i: int) -> str:
        """Node i's fixed VtepMAC (locally administered unicast)."""
        return f"02:00:5e:00:0a:{i:02x}"

    def start_vxlan(self, i: int, extra: list[str], peers: list[int] | None = None):
        """The daemon on node i with `--backend vxlan`, its VtepMAC and each
        peer's (`--peer IP=SUBNET,vtep-mac=MAC`); ready."""
        node = self.nodes[i]
        args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", node.public_ip,
                "--subnet", str(node.subnet), "--network", str(NETWORK),
                "--backend", "vxlan", "--vtep-mac", self.vtep_mac(i)]
        for j in (peers if peers is not None else [j for j in self.nodes if j != i]):
            peer = self.nodes[j]
            args += ["--peer", f"{peer.public_ip}={peer.subnet},vtep-mac={self.vtep_mac(j)}"]
        return self.ov.launch(i, [*args, *extra])

    def kernel_vxlan_node(self, i: int, peers: list[int]) -> Node:
        """Node i runs no udpoverlay: flannel.1 as flannel's vxlan backend
        sets it up, with entries for each peer; its underlay's tx
        checksumming stays on (no ethtool), as on kind/Docker nodes and VMs."""
        node = self.nodes[i]
        kernel_vxlan.setup_flannel_vxlan(self.lab, node.host, str(node.subnet),
                                         mac=self.vtep_mac(i), underlay_mtu=self.lab.mtu)
        for j in peers:
            kernel_vxlan.add_flannel_vxlan_peer(self.lab, node.host, str(self.nodes[j].subnet),
                                                self.vtep_mac(j), self.nodes[j].public_ip)
        return node

    def node_firewall(self, node: Node) -> Firewall:
        """flanneld's masquerade + FORWARD rules (iptables mode) applied in
        node's namespace, as flanneld does on a kernel flannel.1 node; the
        caller removes them with in_netns(node.netns, fw.remove)."""
        fw = Firewall(NETWORK, node.subnet, masquerade=True)
        in_netns(node.netns, fw.apply)
        return fw

    def node_env(self, node: Node, subnet_file: Path | None, mtu: int,
                 ip_masq: bool) -> dict[str, str]:
        """subnet.env as the daemon wrote it, or (static mode writes none)
        the values for the subnet the test gave it."""
        if subnet_file is not None and subnet_file.exists():
            env = read_subnet_env(subnet_file)
            assert env is not None, f"garbled {subnet_file}"
            return env
        return static_env(node.subnet, mtu, ip_masq)

    def start_static(self, i: int, extra: list[str], peers: list[int] | None = None):
        """The daemon on node i in static mode (udp backend) with the other
        nodes as peers, started as `python -m udpoverlay run ...`; ready."""
        node = self.nodes[i]
        args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", node.public_ip,
                "--subnet", str(node.subnet), "--network", str(NETWORK)]
        for j in (peers if peers is not None else [j for j in self.nodes if j != i]):
            args += ["--peer", f"{self.nodes[j].public_ip}={self.nodes[j].subnet}"]
        return self.ov.launch(i, [*args, *extra])

    # -- probes -------------------------------------------------------------------------
    def run(self, netns: str, cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return self.lab.run(netns, cmd, check=False, timeout=timeout, env=env)

    def ping(self, netns: str, dst: str, count: int = 3) -> subprocess.CompletedProcess:
        return self.run(netns, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", dst],
                        timeout=30)

    def udp_source(self, src_ns: str, src_ip: str, dst, dst_ip: str, port: int) -> str:
        """Send one datagram src -> dst_ip:port; the source address the
        listener in dst (a Host or a Pod: a name and a netns) saw."""
        proc, out = start_listener(self.ov, dst, dst_ip, port)
        r = self.run(src_ns, [sys.executable, "-c", SENDER, src_ip, "0", dst_ip, str(port),
                              b"legit".hex()])
        assert r.returncode == 0, r.stderr
        proc.wait(timeout=20)
        words = out.read_text().split()
        assert words[-1:] == ["legit"], f"nothing arrived at {dst_ip}:{port}: {words}"
        return words[-2]

    def transfer(self, src: Pod, dst: Pod, nbytes: int, port: int,
                 timeout: float = 90) -> None:
        """TCP src pod -> dst pod (lab.tcpxfer): every byte arrives,
        sha256 matches, within timeout seconds."""
        out = self.tmp / f"server-{dst.name}-{port}.out"
        with open(out, "wb") as f:
            server = self.lab.popen(dst.netns, [*TCPXFER, "server", dst.address, str(port),
                                                "--timeout", str(timeout)],
                                    stdout=f, stderr=subprocess.STDOUT, env=self.ov.env())
        wait_for(lambda: b"listening" in out.read_bytes() or server.poll() is not None,
                 10, 0.05, "tcpxfer server")
        cl = self.run(src.netns, [*TCPXFER, "client", dst.address, str(port), str(nbytes),
                                  "--src", src.address, "--timeout", str(timeout)],
                      timeout=timeout + 30)
        assert cl.returncode == 0, f"client failed: {cl.stdout}{cl.stderr}\n{self.ov.dump_logs()}"
        server.wait(timeout=30)
        assert server.returncode == 0, out.read_text()
        sent, got = cl.stdout.split(), out.read_text().split()
        assert sent[0] == str(nbytes) and got[-2:] == sent[-2:], f"sent {sent} got {got}"

    def rules(self, netns: str) -> str:
        """Every iptables rule and nftables table in netns, as text without
        iptables-save's timestamps and counters (so equal rules compare equal)."""
        ipt = self.lab.run(netns, ["iptables-save"]).stdout
        ipt = "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in ipt.splitlines()
                        if not line.startswith("#"))
        return ipt + "\n" + self.lab.run(netns, ["nft", "list", "ruleset"]).stdout
