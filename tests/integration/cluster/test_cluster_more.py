"""More cluster-mode checks with a real etcd and real daemons in namespaces.

Uses the `cluster` fixture (conftest.py) (etcd inside the Lab's switch
namespace on 198.18.0.254, stopped by PID and the Lab removed also on
failure). Each test overwrites the network config before any daemon starts.
Every wait is bounded.
"""

from __future__ import annotations

import ipaddress
import time

from lab.netns import wait_for
from tests.support.cluster import PREFIX, ClusterLab, underlay
from tests.support.overlay import Daemon

SUBNETS = f"{PREFIX}/subnets/"


def _lease_of(c: ClusterLab, d: Daemon) -> ipaddress.IPv4Network | None:
    """The daemon's leased subnet from `status --json`, None while it has none."""
    if d.proc.poll() is not None:
        raise AssertionError(f"daemon on {d.host.name} exited {d.proc.returncode}:\n"
                             f"{d.stderr()}")
    st = c.ov.status(d.host, check=False)
    lease = ((st or {}).get("cluster") or {}).get("lease")
    return ipaddress.IPv4Network(lease["subnet"]) if lease else None


def _keys(c: ClusterLab) -> list[str]:
    return c.etcd.etcdctl("get", SUBNETS, "--prefix", "--keys-only").split()


def test_simultaneous_start_never_shares_a_subnet(cluster: ClusterLab):
    c = cluster
    # /22 with SubnetLen 24: SubnetMin..SubnetMax is 198.19.1.0 .. 198.19.3.0
    c.etcd.etcdctl("put", f"{PREFIX}/config",
                   '{"Network":"198.19.0.0/22","SubnetLen":24,"Backend":{"Type":"udp"}}')
    for i in (1, 2):
        c.add_host(i)
    allowed = {ipaddress.IPv4Network(f"198.19.{n}.0/24") for n in (1, 2, 3)}
    deadline = time.monotonic() + 60
    for rnd in range(5):
        assert time.monotonic() < deadline, f"rounds took too long (round {rnd})"
        # fresh subnet files: no previous subnet to prefer
        d1 = c.start(1, c.tmp / f"r{rnd}-h1.env", wait=False)
        d2 = c.start(2, c.tmp / f"r{rnd}-h2.env", wait=False)
        leases: dict[int, ipaddress.IPv4Network] = {}

        def both_leased():
            for i, d in ((1, d1), (2, d2)):
                if i not in leases:
                    s = _lease_of(c, d)
                    if s is not None:
                        leases[i] = s
            return len(leases) == 2
        wait_for(both_leased, 20, 0.1, f"round {rnd}: both daemons leased")
        assert leases[1] != leases[2], (rnd, leases)
        assert {leases[1], leases[2]} <= allowed, (rnd, leases)
        keys = _keys(c)
        assert sorted(keys) == sorted(
            f"{SUBNETS}{s.network_address}-{s.prefixlen}" for s in leases.values()), \
            (rnd, keys)
        assert c.ov.stop(d1) is not None and c.ov.stop(d2) is not None
        c.etcd.etcdctl("del", SUBNETS, "--prefix")
        assert _keys(c) == []


def test_vxlan_backend_cluster(cluster: ClusterLab):
    c = cluster
    c.etcd.etcdctl("put", f"{PREFIX}/config",
                   '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}')
    for i in (1, 2):
        c.add_host(i)
    for i in (1, 2):
        c.start(i)
    subnets = {i: c.subnet(i) for i in (1, 2)}
    assert subnets[1] != subnets[2], subnets

    for i, s in subnets.items():
        st = c.ov.status(c.ov.hosts[i])
        assert st["cluster"]["lease"]["subnet"] == str(s)
        mac = st["vtep_mac"]
        assert mac and mac == mac.lower(), st
        key = f"{SUBNETS}{s.network_address}-{s.prefixlen}"
        value = c.etcd.etcdctl("get", key, "--print-value-only").rstrip("\n")
        assert value == (f'{{"PublicIP":"{underlay(i)}","PublicIPv6":null,'
                         f'"BackendType":"vxlan","BackendData":{{"VNI":1,'
                         f'"VtepMAC":"{mac}"}}}}'), (i, value)
        assert st["mtu"] == 1450
        text = c.subnet_file(i).read_text()
        assert "FLANNEL_MTU=1450\n" in text, text
        assert f"FLANNEL_SUBNET={s.network_address + 1}/24\n" in text, text

    wait_for(lambda: all(len(c.routes(i)) == 1 for i in (1, 2)), 5, 0.1, "routes")
    for i in (1, 2):
        c.add_pod(i)
    c.wait_ping(1, 2, timeout=5)
    c.wait_ping(2, 1, timeout=5)
    for i, j in ((1, 2), (2, 1)):
        r = c.ping(i, j)
        assert r.returncode == 0, (i, j, r.stdout, r.stderr)
