"""Cluster mode with flanneld's flags and environment, against a real etcd in
namespaces: a daemon configured only through FLANNELD_* variables, the
backend's MTU honoured, and bad or etcd-decided flags refused with exit 2
before anything is created or written (etcd's revision does not move)."""

from __future__ import annotations

import base64
import json
import sys

import pytest

from lab.netns import wait_for
from tests.support.cluster import PREFIX, ClusterLab, underlay

NAT_IP = "198.18.9.1"


def _revision(c: ClusterLab) -> int:
    return json.loads(c.etcd.etcdctl("get", PREFIX, "--prefix", "-w", "json"))["header"]["revision"]


def test_configured_from_the_environment_with_backend_mtu(cluster: ClusterLab):
    c = cluster
    c.etcd.etcdctl("put", f"{PREFIX}/config",
                   '{"Network": "198.19.0.0/16", "Backend": {"Type": "udp", "MTU": 1300}}')
    c.add_host(1)
    env = {**c.ov.env(), "FLANNELD_ETCD_ENDPOINTS": c.etcd.endpoint,
           "FLANNELD_IFACE": "nosuch0,eth0", "FLANNELD_PUBLIC_IP": NAT_IP,
           "FLANNELD_SUBNET_FILE": str(c.subnet_file(1)), "FLANNELD_LEASE_TTL": "600",
           "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "5", "FLANNELD_IP_MASQ": "false",
           "FLANNELD_TUN": "flannel0"}
    c.ov.launch(1, [sys.executable, "-m", "udpoverlay", "run"], env=env, wait=False)
    d = c.ov.daemons[-1]
    found: list[dict] = []

    def ready() -> bool:
        assert d.proc.poll() is None, d.stderr()
        r = c.ov.run(c.ov.hosts[1], [sys.executable, "-m", "udpoverlay", "status", "--json",
                                      "--tun", "flannel0", "--timeout", "1"], timeout=15)
        if r.returncode == 0:
            found.append(json.loads(r.stdout))
        return bool(found)
    wait_for(ready, 20, 0.1, "daemon configured from FLANNELD_*")
    st = found[0]
    assert st is not None, d.stderr()
    assert (st["public_ip"], st["bind_ip"], st["tun"], st["mtu"]) == \
        (NAT_IP, underlay(1), "flannel0", 1300)
    kvs = json.loads(c.etcd.etcdctl("get", f"{PREFIX}/subnets", "--prefix", "-w", "json"))["kvs"]
    [value] = [json.loads(base64.b64decode(kv["value"])) for kv in kvs]
    assert value["PublicIP"] == NAT_IP          # advertised, not bound
    assert "FLANNEL_MTU=1300" in c.subnet_file(1).read_text()


@pytest.mark.parametrize("extra, env", [
    (["--backend", "udp"], {}),
    (["--vni", "1"], {}),
    (["--port", "8285"], {}),
    (["--subnet", "198.19.5.0/24"], {}),
    ([], {"FLANNELD_NETWORK": "198.19.0.0/16"}),
    ([], {"FLANNELD_IP_MASQ": "sometimes"}),
    ([], {"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "1440"}),
    (["--mtu", "100"], {}),
    (["--direct-routing"], {}),          # the network config says udp
    (["-v=x"], {}),
])
def test_refused_before_anything_is_written(cluster: ClusterLab, extra, env):
    c = cluster
    c.add_host(1)
    before = _revision(c)
    d = c.ov.launch(1, [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay(1),
                        "--etcd-endpoints", c.etcd.endpoint, "--subnet-file",
                        str(c.subnet_file(1)), "--tun", "uoflags0", *extra],
                    env={**c.ov.env(), **env}, wait=False)
    assert d.proc.wait(timeout=30) == 2, d.stderr()
    err = d.stderr().strip().splitlines()
    # one error line (a check against the network config follows its INFO line)
    assert err[-1].startswith("udpoverlay: error: "), err
    assert all(" udpoverlay INFO " in line for line in err[:-1]), err
    assert _revision(c) == before
    assert not c.subnet_file(1).exists()
    assert not c.ov.link_exists(c.ov.hosts[1], "uoflags0")
