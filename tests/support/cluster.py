"""Cluster test helpers.

- NsEtcd / ClusterLab: an etcd server and udpoverlay daemons in etcd mode
  inside one Lab. etcd runs inside the Lab's switch namespace on
  198.18.0.254 (the bridge), reachable from every host; the fixture stops it
  by PID before the Lab is removed, also on failure.
- Cluster: ClusterMembership members over EtcdStore against an EtcdServer on
  loopback, each test under its own key prefix; every store and run() task
  is closed on exit.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import random
import subprocess
import sys

from lab.netns import Lab, wait_for
from tests.support.asyncutil import Recorder, wait_until
from tests.support.etcdserver import ETCDCTL, EtcdServer
from tests.support.overlay import Overlay
from udpoverlay.cluster.codec import config_key, subnet_key
from udpoverlay.cluster.membership import ClusterMembership
from udpoverlay.cluster.store.etcd import EtcdStore

N = ipaddress.IPv4Network

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


# What an operator writes for flannel: etcdctl put /coreos.com/network/config '<this>'.
UDP_CONFIG = '{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}}'
VXLAN_CONFIG = '{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}'
_prefixes = itertools.count(1)


def ip(n: int) -> str:
    return f"198.18.0.{n}"


def new_prefix() -> str:
    return f"/udpoverlay-test/{next(_prefixes)}/network"


class Cluster:
    """Members on one etcd; closes every store and run() task on exit."""

    def __init__(self, server: EtcdServer, prefix: str | None = None) -> None:
        self.server, self.prefix = server, prefix or new_prefix()
        self.stores: list[EtcdStore] = []
        self.tasks: list[asyncio.Task] = []

    def store(self, **kw) -> EtcdStore:
        kw.setdefault("timeout", 2.0)
        store = EtcdStore([self.server.endpoint], **kw)
        self.stores.append(store)
        return store

    async def write_config(self, text: str = UDP_CONFIG) -> None:
        await asyncio.to_thread(self.server.etcdctl, "put", config_key(self.prefix), text)

    def member(self, n: int, store: EtcdStore | None = None, **kw) -> ClusterMembership:
        kw.setdefault("retry_initial", 0.05)
        kw.setdefault("retry_max", 0.3)
        kw.setdefault("rng", random.Random(n))
        return ClusterMembership(store or self.store(), prefix=self.prefix, public_ip=ip(n), **kw)

    async def start(self, m: ClusterMembership) -> Recorder:
        rec = Recorder()
        self.tasks.append(asyncio.create_task(m.run(rec)))
        await wait_until(lambda: rec.calls or self.tasks[-1].done(), 5, "first apply_peers")
        if self.tasks[-1].done():
            self.tasks[-1].result()
        return rec

    async def raw(self, subnet: N) -> str:
        out = await asyncio.to_thread(self.server.etcdctl, "get", subnet_key(self.prefix, subnet),
                                      "--print-value-only")
        return out.rstrip("\n")

    async def delete(self, subnet: N) -> None:
        await asyncio.to_thread(self.server.etcdctl, "del", subnet_key(self.prefix, subnet))

    async def etcdctl(self, *args: str) -> str:
        """etcdctl as a broken or hostile writer would use it."""
        return await asyncio.to_thread(self.server.etcdctl, *args)

    async def put_raw(self, name: str, value: str, *extra: str) -> None:
        """Write `<prefix>/subnets/<name>` (no etcd lease unless --lease= is given)."""
        await self.etcdctl("put", f"{self.prefix}/subnets/{name}", value, *extra)

    async def lease_ids(self) -> set[int]:
        """Every etcd lease object in the server (hex ids as etcdctl prints them)."""
        out = await self.etcdctl("lease", "list")
        return {int(word, 16) for line in out.splitlines()[1:] for word in line.split()[:1]}

    async def __aenter__(self) -> "Cluster":
        return self

    async def __aexit__(self, *exc) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for store in self.stores:
            with contextlib.suppress(Exception):
                await store.close()


async def peers_become(rec: Recorder, subnets, timeout: float = 2.0) -> None:
    want = sorted(str(s) for s in subnets)
    await wait_until(lambda: rec.subnets() == want, timeout, f"peers {want}, have {rec.subnets()}")
