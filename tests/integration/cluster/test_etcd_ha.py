"""Cluster mode on a three-member etcd with one member cut off (issue 22).

The members (Debian's etcd 3.4) run in their own namespaces; a cut drops
all traffic between one member and its peers while clients still reach it
(tests/support/etcdcluster.py). The cut member is a follower, and first in
the clients' endpoint list: the member they start on. Cuts last CUT
seconds (production cuts last longer; the behaviour is settled within a few
seconds). Every namespace and process goes at the end, also on failure;
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.netns import Lab, wait_for
from tests.support.asyncutil import Recorder, run, wait_until
from tests.support.cluster import UDP_CONFIG, new_prefix
from tests.support.etcdcluster import EtcdCluster, require_etcd_cluster
from tests.support.etcdserver import EtcdServer
from tests.support.overlay import Overlay
from udpoverlay.cluster.codec import config_key, subnet_key
from udpoverlay.cluster.membership import ClusterMembership
from udpoverlay.cluster.store.etcd import EtcdStore

ROOT = Path(__file__).resolve().parents[3]
CUT = 15.0           # s the member stays cut off
TTL = 15             # s: our lease must survive the cut on renewals alone
NOTICE = 8.0         # s: bound for "notices within a few seconds"
PEER_VALUE = '{"PublicIP":"198.18.0.77","PublicIPv6":null}'
# gRPC C-core's own line format (absl): "E1206 17:25:48.760270   21603 file.cc:1435] ..."
GRPC_LINE = re.compile(r"^[EWIF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.M)


@pytest.fixture
def ha(tmp_path, request):
    require_etcd_cluster()
    lab = Lab()
    cluster = None
    try:
        cluster = EtcdCluster(lab, tmp_path)
        cluster.start()
        yield cluster
    finally:
        rep = getattr(request.node, "rep_call", None)
        if cluster is not None:
            if rep is not None and rep.failed:
                for i in range(cluster.size):
                    print(f"--- etcd m{i + 1} ---\n{cluster.log_tail(i)}")
            cluster.stop()
        lab.close()


def _peer_subnet(ours: str) -> str:
    """A subnet for a peer lease written during the cut: not ours."""
    return "198.19.77.0/24" if ours != "198.19.77.0/24" else "198.19.78.0/24"


def _put(ha: EtcdCluster, key: str, value: str, tries: int = 4) -> None:
    """etcdctl put on the healthy members; retried (bounded) while they
    elect a new leader after the old one was cut off."""
    for attempt in range(tries):
        try:
            ha.etcdctl("put", key, value)
            return
        except RuntimeError:
            if attempt == tries - 1:
                raise


def _victim(ha: EtcdCluster, which: str = "follower") -> tuple[int, list[int]]:
    leader = ha.leader()
    assert leader is not None
    victim = leader if which == "leader" else next(i for i in range(ha.size) if i != leader)
    return victim, [i for i in range(ha.size) if i != victim]


@pytest.mark.parametrize("which", ["follower", "leader"])
def test_store_and_membership_through_a_member_cut_off(ha, capsys, caplog, which):
    victim, healthy = _victim(ha, which)
    relay = ha.relay()
    prefix = new_prefix()
    ha.etcdctl("put", config_key(prefix), UDP_CONFIG)
    figures = {}

    async def main():
        store = EtcdStore([relay.endpoint(victim), *(relay.endpoint(i) for i in healthy)],
                          stale_after=3.0)
        m = ClusterMembership(store, prefix=prefix, public_ip="198.18.0.1", lease_ttl=TTL,
                              retry_initial=0.05, retry_max=0.3)
        rec = Recorder()
        task = asyncio.create_task(m.run(rec))
        try:
            await wait_until(lambda: rec.calls or task.done(), 10, "first apply_peers")
            assert not task.done(), task.result()
            subnet, lease_id = m.lease.subnet, m.state.lease_id
            peer = _peer_subnet(str(subnet))
            assert relay.open_connections(victim) == 1 and store.failovers == 0

            t0 = time.monotonic()
            await asyncio.to_thread(ha.cut, victim)
            await asyncio.to_thread(_put, ha, f"{prefix}/subnets/{peer.replace('/', '-')}",
                                    PEER_VALUE)
            figures["written"] = time.monotonic() - t0
            await wait_until(lambda: rec.subnets() == [peer], NOTICE,
                             "the peer written during the cut")
            figures["seen"] = time.monotonic() - t0
            assert store.failovers == 1
            move = store.pool.history[0]
            figures["moved"] = move.at - t0
            assert str(move.source) == relay.endpoint(victim)
            assert str(move.target) in [relay.endpoint(i) for i in healthy]
            # The dropped connection is closed at once, not after etcd tires of it.
            await wait_until(lambda: relay.open_connections(victim) == 0, 2.0,
                             "the connection to the cut member closed")
            figures["closed"] = time.monotonic() - t0

            await asyncio.sleep(max(0.0, t0 + CUT - time.monotonic()))
            assert not task.done(), task.result()
            assert (m.lease.subnet, m.state.lease_id) == (subnet, lease_id)      # never lost
            out = await asyncio.to_thread(ha.etcdctl, "lease", "timetolive", f"{lease_id:x}")
            assert "remaining(" in out and "already expired" not in out, out
            got = await asyncio.to_thread(ha.etcdctl, "get", subnet_key(prefix, subnet),
                                          "--print-value-only")
            assert got.strip() == '{"PublicIP":"198.18.0.1","PublicIPv6":null}'
            # One broken connection, exactly one fail-over, never back to the cut member.
            assert store.failovers == 1 and store.endpoint == move.target
            assert relay.open_connections(victim) == 0
            assert not store.view_stale and m.status()["store"] == "connected"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()

    with caplog.at_level(logging.INFO, "udpoverlay.cluster"):
        run(main(), 60)
    # The watches moved with the connection; the meaning layer saw no outage.
    assert "resumes at revision" in caplog.text
    assert "lease watch failed" not in caplog.text and "renewing subnet lease failed" \
        not in caplog.text, caplog.text
    with capsys.disabled():
        print(f"\ncut of the {which}: " + ", ".join(f"{k} {v:.1f}s" for k, v in figures.items()))


def test_daemon_through_a_member_cut_off(ha, tmp_path):
    victim, healthy = _victim(ha)
    ov = Overlay(ha.lab, tmp_path, 0)
    ov.hosts[1] = ha.lab.add_host("h1", "198.18.0.1/24")
    ha.etcdctl("put", "/coreos.com/network/config", UDP_CONFIG)
    endpoints = ",".join([ha.endpoint(victim), *(ha.endpoint(i) for i in healthy)])
    daemon = ov.launch(1, [sys.executable, "-m", "udpoverlay", "run", "--public-ip", "198.18.0.1",
                           "--etcd-endpoints", endpoints, "--subnet-file",
                           str(tmp_path / "subnet.env"), "--lease-ttl", str(TTL)], timeout=20)
    try:
        st = ov.status(ov.hosts[1])["cluster"]
        subnet = st["lease"]["subnet"]
        peer = _peer_subnet(subnet)
        t0 = time.monotonic()
        ha.cut(victim)
        _put(ha, f"/coreos.com/network/subnets/{peer.replace('/', '-')}", PEER_VALUE)

        def sees_peer():
            cl = ov.status(ov.hosts[1])["cluster"]
            return {p["subnet"] for p in cl["peers"]} == {peer}
        wait_for(sees_peer, NOTICE + 4, 0.2, "the daemon seeing the peer written during the cut")
        seen = time.monotonic() - t0
        time.sleep(max(0.0, t0 + CUT - time.monotonic()))
        cl = ov.status(ov.hosts[1])["cluster"]
        assert cl["lease"]["subnet"] == subnet and cl["store"] == "connected"
        key = f"/coreos.com/network/subnets/{subnet.replace('/', '-')}"
        assert ha.etcdctl("get", key, "--print-value-only").strip() == \
            '{"PublicIP":"198.18.0.1","PublicIPv6":null}'
        assert daemon.proc.poll() is None
    finally:
        ov.stop(daemon)
    log = daemon.stderr()
    assert not GRPC_LINE.search(log), f"gRPC's own lines in the daemon log:\n{log}"
    assert log.count("switching to etcd endpoint") == 1, log
    assert f"switching to etcd endpoint {ha.endpoint(victim)}" not in log
    assert "lost" not in log, log
    print(f"\ndaemon saw the peer {seen:.1f}s after the cut")


def test_progress_answers_keep_a_quiet_watch_fresh(etcd_server: EtcdServer):
    async def main():
        store = EtcdStore([etcd_server.endpoint], stale_after=0.9)     # asks every 0.3 s
        prefix = new_prefix()
        try:
            assert store.view_age() is None and not store.view_stale
            batches = store.watch_prefix(prefix, 1)
            first = asyncio.ensure_future(batches.__anext__())
            await asyncio.sleep(2.0)                  # nothing written: only progress answers
            assert not first.done()
            assert store.view_age() is not None and store.view_age() < 0.6
            assert not store.view_stale
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await batches.aclose()
            await asyncio.sleep(1.2)                  # nobody watches: the view ages
            assert store.view_stale and store.view_age() > 0.9
        finally:
            await store.close()
    run(main(), 15)


_CHILD = """
import asyncio, sys
import udpoverlay.cluster.store.etcd   # the daemon's import order: the store before grpc
import grpc
from aetcd import rpc

async def main(port):
    # Pings every second with no call open: etcd answers GOAWAY too_many_pings.
    options = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.max_pings_without_data", 0)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    await rpc.KVStub(channel).Range(rpc.RangeRequest(key=b"/x"), timeout=3)
    await asyncio.sleep(6)
    await channel.close()

asyncio.run(main(int(sys.argv[1])))
"""


def test_grpc_core_lines_stay_out_of_our_stderr(etcd_server: EtcdServer):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-c", _CHILD, str(etcd_server.client_port)]
    quiet = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    loud = subprocess.Popen(argv, env={**env, "GRPC_VERBOSITY": "ERROR"}, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)    # an operator's explicit choice is kept
    try:
        quiet_err, loud_err = quiet.communicate(timeout=30)[1], loud.communicate(timeout=30)[1]
    finally:
        for p in (quiet, loud):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
    assert quiet.returncode == 0 and loud.returncode == 0, (quiet_err, loud_err)
    assert "too_many_pings" in loud_err and GRPC_LINE.search(loud_err)   # the line exists
    assert quiet_err == "", quiet_err
