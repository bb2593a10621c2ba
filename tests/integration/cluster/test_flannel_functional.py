"""flannel's own functional test (dist/functional-test.sh) invocations, as
written, in namespaces: two nodes per backend (udp and vxlan) started with
flanneld's Go-style flags (`--etcd-endpoints=URL -v 10`, `-subnet-file F`,
`-etcd-prefix=P`), no --iface or --public-ip (the default-route interface is
taken, as flanneld does), and the etcd TLS files given with an http://
endpoint, which flanneld accepts (the files apply to https endpoints only):
both start, write subnet.env and reach each other's pod address."""

from __future__ import annotations

import sys

import pytest

from tests.support.cluster import ETCD_IP, PREFIX, ClusterLab
from tests.support.etcdserver import make_tls_files


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_functional_test_invocations_start_and_ping(cluster: ClusterLab, tmp_path, backend):
    c = cluster
    prefix = f"/{backend}/network"
    c.etcd.etcdctl("put", f"{prefix}/config",
                   '{"Network": "198.19.0.0/16", "Backend": {"Type": "%s"}}' % backend)
    tls = make_tls_files(tmp_path / "tls")
    for i in (1, 2):
        c.add_host(i)
        # the flanneld test's hosts have a default route: the underlay is found by it
        c.ov.run(c.ov.hosts[i], ["ip", "route", "add", "default", "via", ETCD_IP])
        argv = [sys.executable, "-m", "udpoverlay", "-v", "10",
                "-subnet-file", str(c.subnet_file(i)), f"-etcd-prefix={prefix}",
                f"--etcd-endpoints={c.etcd.endpoint}",
                "-etcd-cafile", str(tls.ca), "-etcd-certfile", str(tls.client_cert),
                "-etcd-keyfile", str(tls.client_key)]
        c.ov.launch(i, argv, timeout=30)
    for i in (1, 2):
        env = c.subnet_file(i).read_text()
        assert "FLANNEL_NETWORK=198.19.0.0/16" in env and "FLANNEL_SUBNET=" in env
        c.add_pod(i)
    c.wait_ping(2, 1, 15)
    c.wait_ping(1, 2, 15)
    logs = [d.log.read_text() for d in c.ov.daemons]
    for text in logs:
        assert text.count("https:// endpoints only") == 1, text[-2000:]
    # the default prefix was not touched: both leases live under the test's own
    assert "subnets" not in c.etcd.etcdctl("get", f"{PREFIX}/subnets", "--prefix", "--keys-only")
    assert c.etcd.etcdctl("get", f"{prefix}/subnets", "--prefix", "--keys-only").count("subnets") == 2
