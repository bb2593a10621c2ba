"""Cluster fixtures: `cluster` (etcd plus daemons in etcd mode, see
tests.support.cluster), `etcd_server` and `shared_etcd` (a bare etcd on
loopback, tests.support.etcdserver)."""

from __future__ import annotations

import pytest

from lab.netns import Lab
from tests.support.cluster import CONFIG, ETCD_IP, PREFIX, ClusterLab, NsEtcd
from tests.support.etcdserver import etcd_server, require_etcd, shared_etcd  # noqa: F401 - fixtures
from tests.support.requirements import require_root_tools


@pytest.fixture
def cluster(tmp_path, request):
    require_root_tools()
    require_etcd()
    lab = Lab()
    etcd = None
    cl = None
    try:
        lab._ensure_switch()
        lab.run(lab.switch, ["ip", "addr", "add", f"{ETCD_IP}/24", "dev", "br0"])
        etcd = NsEtcd(tmp_path / "etcd", lab.switch)
        etcd.start(timeout=20)
        etcd.etcdctl("put", f"{PREFIX}/config", CONFIG)
        cl = ClusterLab(lab, tmp_path, etcd)
        yield cl
    finally:
        rep = getattr(request.node, "rep_call", None)
        if cl is not None and rep is not None and rep.failed:
            print(cl.ov.dump_logs())
            print("--- etcd ---\n" + etcd.log_tail(40))
        if etcd is not None:
            etcd.stop()
        lab.close()
