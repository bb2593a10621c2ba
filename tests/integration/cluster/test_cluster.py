"""Cluster mode end to end: real etcd, real daemons in namespaces.

etcd runs inside the Lab's switch namespace on 198.18.0.254 (the bridge),
reachable from every host; it is stopped by PID before the Lab is removed,
also on failure. Every wait is bounded.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys

from lab.netns import wait_for
from tests.support.cluster import ETCD_IP, PREFIX, ClusterLab, underlay


def test_cluster_mode(cluster: ClusterLab):
    c = cluster
    for i in (1, 2, 3):
        c.add_host(i)
    for i in (1, 2, 3):
        c.start(i)
    subnets = {i: c.subnet(i) for i in (1, 2, 3)}
    assert len(set(subnets.values())) == 3, subnets
    for s in subnets.values():
        assert s.subnet_of(ipaddress.IPv4Network("198.19.0.0/16")) and s.prefixlen == 24

    # etcd holds flannel's keys and values, byte for byte
    for i, s in subnets.items():
        key = f"{PREFIX}/subnets/{s.network_address}-{s.prefixlen}"
        value = c.etcd.etcdctl("get", key, "--print-value-only").rstrip("\n")
        assert value == f'{{"PublicIP":"{underlay(i)}","PublicIPv6":null}}'

    # subnet.env as flannel writes it
    st = c.ov.status(c.ov.hosts[1])
    text = c.subnet_file(1).read_text()
    assert text == (f"FLANNEL_NETWORK=198.19.0.0/16\n"
                    f"FLANNEL_SUBNET={subnets[1].network_address + 1}/24\n"
                    f"FLANNEL_MTU={st['mtu']}\nFLANNEL_IPMASQ=false\n")
    assert st["mtu"] == 1500 - 28
    cl = st["cluster"]
    assert cl["lease"]["subnet"] == str(subnets[1])
    assert cl["store"] == "connected"
    assert 590 < cl["lease"]["expires_in"] <= 600
    assert {p["subnet"] for p in cl["peers"]} == {str(subnets[2]), str(subnets[3])}
    assert all(p["age"] is not None for p in cl["peers"])
    text_status = c.ov.run(c.ov.hosts[1], [sys.executable, "-m", "udpoverlay", "status"])
    assert text_status.returncode == 0 and "cluster: store connected" in text_status.stdout

    # all pairs ping, pod to pod
    wait_for(lambda: all(len(c.routes(i)) == 2 for i in (1, 2, 3)), 5, 0.1, "routes")
    for i in (1, 2, 3):
        c.add_pod(i)
    for i in (1, 2, 3):
        for j in (1, 2, 3):
            if i != j:
                r = c.ping(i, j)
                assert r.returncode == 0, (i, j, r.stdout, r.stderr)

    # a fourth host joins: the others route to it within 2 s
    c.add_host(4)
    c.start(4)
    c.add_pod(4)
    s4 = str(c.subnet(4))
    for i in (1, 2, 3):
        c.wait_ping(i, 4, timeout=2)
        assert s4 in c.routes(i)

    # etcd down: traffic between existing hosts keeps flowing
    c.etcd.stop()
    for _ in range(3):
        for i, j in ((1, 2), (2, 3), (3, 1), (4, 1)):
            r = c.ping(i, j, count=1)
            assert r.returncode == 0, (i, j, r.stdout)
    wait_for(lambda: c.ov.status(c.ov.hosts[1])["cluster"]["store"] != "connected",
             20, 0.2, "store marked disconnected")
    assert s4 in c.routes(1)
    c.etcd.start(timeout=20)
    wait_for(lambda: all(c.ov.status(c.ov.hosts[i])["cluster"]["store"] == "connected"
                         for i in (1, 2, 3)), 20, 0.2, "store reconnected")

    # a change after the restart: h4 leaves, its lease key is deleted by hand
    c.ov.stop(c.ov.daemons[3])
    key4 = f"{PREFIX}/subnets/{s4.replace('/', '-')}"
    assert c.etcd.etcdctl("del", key4).strip() == "1"
    wait_for(lambda: all(s4 not in c.routes(i) for i in (1, 2, 3)), 2, 0.05,
             "route to h4 withdrawn everywhere")
    for i, j in ((1, 2), (2, 3)):
        assert c.ping(i, j, count=1).returncode == 0

    # a restarted daemon comes back with the same subnet
    c.ov.stop(c.ov.daemons[0])
    c.start(1)
    assert c.subnet(1) == subnets[1]
    wait_for(lambda: len(c.routes(1)) == 2, 5, 0.1, "h1 routes after restart")
    c.wait_ping(1, 2, timeout=5)
    c.wait_ping(3, 1, timeout=5)
    listing = c.etcd.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "--keys-only").split()
    assert len(listing) == 3, listing


def test_static_flags_rejected_with_etcd(tmp_path):
    r = subprocess.run([sys.executable, "-m", "udpoverlay", "run", "--etcd-endpoints",
                        f"http://{ETCD_IP}:2379", "--network", "198.19.0.0/16"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "come from etcd" in r.stderr
