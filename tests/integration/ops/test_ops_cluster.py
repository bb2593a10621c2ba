"""Readiness in etcd mode, as kubelet's probes see it: /readyz is 503 (and
says why) while etcd is down at start, 200 once etcd is back and the lease
is taken (subnet.env written by then); /healthz is 200 throughout. The
store and lease metrics follow (and a rejected lease key is counted), and the outage is logged as an operator
needs it: a WARNING, then one INFO line when the store is back."""

from __future__ import annotations

import signal
import socket
import sys
import time

from lab.netns import wait_for
from tests.integration.cluster.conftest import cluster  # noqa: F401 - the fixture
from tests.integration.ops.httpget import HEALTHZ_PORT, get, sample, scrape
from tests.support.cluster import PREFIX, underlay


def test_readyz_waits_for_etcd_and_the_lease(cluster):  # noqa: F811 - the fixture
    cl = cluster
    cl.add_host(1)
    h1 = cl.ov.hosts[1]
    cl.etcd.stop()
    args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay(1),
            "--etcd-endpoints", cl.etcd.endpoint, "--subnet-file", str(cl.subnet_file(1)),
            "--lease-ttl", "600", "--healthz-ip", underlay(1),
            "--healthz-port", str(HEALTHZ_PORT)]
    d = cl.ov.launch(1, args, wait=False)
    addr = underlay(1)

    def answered(path):
        status, body = get(cl.ov, h1, path, addr)
        return (status, body) if status else None
    wait_for(lambda: answered("/healthz"), 15, 0.1, "/healthz answering")
    # start-up passes "the underlay interface" first, then blocks on etcd
    wait_for(lambda: "etcd" in get(cl.ov, h1, "/readyz", addr)[1], 10, 0.1,
             "/readyz naming etcd")
    status, body = get(cl.ov, h1, "/readyz", addr)
    assert status == 503 and "waiting for" in body and "etcd" in body, (status, body)
    assert get(cl.ov, h1, "/healthz", addr) == (200, "ok\n")
    m = scrape(cl.ov, h1, addr)
    assert sample(m, "udpoverlay_ready") == 0
    assert sample(m, "udpoverlay_store_connected") == 0
    assert not cl.subnet_file(1).exists()
    wait_for(lambda: "waiting for the network config" in d.stderr(), 10, 0.1,
             "the outage logged")
    assert d.proc.poll() is None

    cl.etcd.start(timeout=20)
    t0 = time.time()
    wait_for(lambda: get(cl.ov, h1, "/readyz", addr)[0] == 200, 20, 0.1, "/readyz 200")
    assert cl.subnet_file(1).exists()       # ready means subnet.env is written
    assert get(cl.ov, h1, "/healthz", addr) == (200, "ok\n")
    # /metrics may serve a page up to 1 s old (one render per second at most)
    wait_for(lambda: sample(scrape(cl.ov, h1, addr), "udpoverlay_ready") == 1, 5, 0.2,
             "udpoverlay_ready 1")
    m = scrape(cl.ov, h1, addr)
    assert sample(m, "udpoverlay_store_connected") == 1
    assert t0 - 5 <= sample(m, "udpoverlay_store_last_contact_timestamp_seconds") <= \
        time.time() + 1
    expiry = sample(m, "udpoverlay_lease_expiry_timestamp_seconds")
    assert time.time() + 500 < expiry < time.time() + 601      # --lease-ttl 600
    assert sample(m, "udpoverlay_routes") == 0
    assert sample(m, "udpoverlay_lease_keys_rejected_total", reason="not_a_subnet") == 0
    # a key no subnet can be read from: ignored, and counted by reason
    cl.etcd.etcdctl("put", f"{PREFIX}/subnets/not-a-subnet", "{}")
    wait_for(lambda: sample(scrape(cl.ov, h1, addr), "udpoverlay_lease_keys_rejected_total",
                            reason="not_a_subnet") == 1, 10, 0.3, "the rejected key counted")
    m = scrape(cl.ov, h1, addr)
    assert sample(m, "udpoverlay_lease_keys_rejected_total", reason="overlap") == 0
    assert sample(m, "udpoverlay_routes") == 0
    log = d.stderr()
    assert "WARNING waiting for the network config" in log, log
    assert log.count("lease store reachable again") == 1, log
    assert cl.ov.stop(d) == 0


def test_sighup_is_ignored_and_sigterm_clean_while_waiting_for_etcd(cluster, tmp_path):  # noqa: F811
    """Start-up blocked on etcd: `systemctl reload` (SIGHUP) must not kill
    the daemon; `systemctl stop` (SIGTERM) ends it cleanly (exit 0, STOPPING=1
    after the STATUS= lines of the wait, no TUN left behind)."""
    cl = cluster
    cl.add_host(1)
    h1 = cl.ov.hosts[1]
    cl.etcd.stop()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(15)
    try:
        args = [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay(1),
                "--etcd-endpoints", cl.etcd.endpoint, "--subnet-file", str(cl.subnet_file(1)),
                "--healthz-ip", underlay(1), "--healthz-port", str(HEALTHZ_PORT)]
        d = cl.ov.launch(1, args, wait=False,
                         env={**cl.ov.env(), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        wait_for(lambda: "waiting for the network config" in d.stderr(), 15, 0.1, "waiting")
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert d.proc.poll() is None, d.stderr()
        assert get(cl.ov, h1, "/readyz", underlay(1))[0] == 503
        assert cl.ov.stop(d) == 0, d.stderr()
        got = []
        for _ in range(20):         # STATUS= lines while waiting, then STOPPING=1
            got.append(notify.recv(4096).decode())
            if got[-1].startswith("STOPPING=1"):
                break
        assert got[-1].splitlines()[0] == "STOPPING=1", got
        assert "STATUS=waiting for the network config from etcd" in got, got
        assert not any(m.startswith("READY=1") for m in got), got
        assert not cl.ov.link_exists(h1)
    finally:
        notify.close()
