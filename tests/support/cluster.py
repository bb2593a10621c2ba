"""An etcd server and udpoverlay daemons in etcd mode inside one Lab, for the
cluster integration tests.

etcd runs inside the Lab's switch namespace on 198.18.0.254 (the bridge),
reachable from every host; the fixture stops it by PID before the Lab is
removed, also on failure. Every wait is bounded.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

from tests.support.etcdserver import ETCDCTL, EtcdServer
from tests.support.overlay import Overlay
from udpoverlay.lab.netns import Lab, wait_for

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"198.19.0.0/16","Backend":{"Type":"udp"}}'
ETCD_IP = "198.18.0.254"


class NsEtcd(EtcdServer):
    """EtcdServer listening on ETCD_IP inside a network namespace."""

    def __init__(self, data_dir, netns: str) -> None:
        super().__init__(data_dir)
        self.netns = netns

    @property
    def endpoint(self) -> str:
        return f"http://{ETCD_IP}:{self.client_port}"

    def _argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super()._argv()]

    def healthy(self) -> bool:
        try:
            self.etcdctl("endpoint", "health", timeout=5)
            return True
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def etcdctl(self, *args: str, timeout: float = 10.0) -> str:
        argv = ["ip", "netns", "exec", self.netns, ETCDCTL, f"--endpoints={self.endpoint}",
                "--dial-timeout=1s", "--command-timeout=3s", *args]
        done = subprocess.run(argv, env=dict(os.environ, ETCDCTL_API="3"),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout


def underlay(i: int) -> str:
    return f"198.18.0.{i}"


class ClusterLab:
    def __init__(self, lab: Lab, tmp_path, etcd: NsEtcd) -> None:
        self.ov = Overlay(lab, tmp_path, 0)
        self.lab, self.tmp, self.etcd = lab, tmp_path, etcd
        self.pods: dict[int, str] = {}

    def add_host(self, i: int) -> None:
        self.ov.hosts[i] = self.lab.add_host(f"h{i}", f"{underlay(i)}/24")

    def subnet_file(self, i: int):
        return self.tmp / f"h{i}" / "subnet.env"

    def start(self, i: int, subnet_file=None, wait: bool = True):
        """The etcd-mode daemon on host i (subnet file: default per host)."""
        args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay(i),
                "--etcd-endpoints", self.etcd.endpoint, "--subnet-file",
                str(subnet_file or self.subnet_file(i)), "--lease-ttl", "600"]
        return self.ov.launch(i, args, wait=wait, timeout=20)

    def subnet(self, i: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.ov.status(self.ov.hosts[i])["subnet"])

    def add_pod(self, i: int) -> None:
        if i in self.pods:
            return
        pod = str(self.subnet(i).network_address + 1)
        self.lab.add_pod_address(self.ov.hosts[i], f"{pod}/{self.subnet(i).prefixlen}")
        self.pods[i] = pod

    def ping(self, i: int, j: int, count: int = 2, wait: str = "1"):
        return self.ov.run(self.ov.hosts[i], ["ping", "-n", "-c", str(count), "-i", "0.2",
                                               "-W", wait, "-I", self.pods[i], self.pods[j]],
                           timeout=30)

    def routes(self, i: int) -> set[str]:
        return {r["subnet"] for r in self.ov.status(self.ov.hosts[i])["routes"]}

    def wait_ping(self, i: int, j: int, timeout: float) -> None:
        wait_for(lambda: self.ping(i, j, count=1).returncode == 0, timeout, 0.05,
                 f"ping h{i} -> h{j}")
