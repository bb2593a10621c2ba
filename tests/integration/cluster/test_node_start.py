"""Cluster-mode start order: the underlay port is bound and the TUN created
before anything is written to etcd, so a second instance with the same
public IP on the same host fails cleanly and leaves the first one's lease
(key, value and etcd lease) exactly as it was."""

from __future__ import annotations

import json
import sys

from tests.support.cluster import PREFIX, ClusterLab, underlay


def _key_record(c: ClusterLab, key: str) -> dict:
    out = c.etcd.etcdctl("get", key, "-w", "json")
    kvs = json.loads(out).get("kvs") or []
    assert len(kvs) == 1, out
    return kvs[0]


def test_second_instance_same_public_ip_fails_before_touching_etcd(cluster: ClusterLab):
    c = cluster
    c.add_host(1)
    first = c.start(1)
    subnet = c.subnet(1)
    key = f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}"
    before = _key_record(c, key)
    revision_before = json.loads(c.etcd.etcdctl("get", PREFIX, "--prefix", "-w",
                                                "json"))["header"]["revision"]
    second = c.ov.launch(1, [sys.executable, "-m", "udpoverlay", "run", "--public-ip",
                             underlay(1), "--etcd-endpoints", c.etcd.endpoint,
                             "--subnet-file", str(c.tmp / "second.env"), "--tun", "udpov1",
                             "--lease-ttl", "600"], wait=False)
    # the same network is already routed through the first one's TUN: refused
    # (exit 2) before the port, the TUN or etcd are touched
    assert second.proc.wait(timeout=30) == 2, second.stderr()
    err = second.stderr().strip().splitlines()
    assert err[-1].startswith("udpoverlay: error: network 198.19.0.0/16 is already routed "
                              "through udpov0"), err
    after = _key_record(c, key)
    assert (after["value"], after["lease"], after["mod_revision"]) == \
        (before["value"], before["lease"], before["mod_revision"])
    revision_after = json.loads(c.etcd.etcdctl("get", PREFIX, "--prefix", "-w",
                                               "json"))["header"]["revision"]
    assert revision_after == revision_before          # nothing at all was written
    assert not (c.tmp / "second.env").exists()
    assert first.proc.poll() is None and c.subnet(1) == subnet
