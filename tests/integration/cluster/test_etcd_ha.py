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
import re
import sys
import time

import pytest

from tests.support.asyncutil import Recorder, run, wait_until
from tests.support.cluster import UDP_CONFIG, new_prefix
from tests.support.etcdcluster import EtcdCluster, require_etcd_cluster
from tests.support.overlay import Overlay
from udpoverlay.cluster.codec import config_key, subnet_key
from udpoverlay.cluster.membership import ClusterMembership
from udpoverlay.cluster.store.etcd import EtcdStore
from udpoverlay.lab.netns import Lab, wait_for

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


def _victim(ha: EtcdCluster) -> tuple[int, list[int]]:
    leader = ha.leader()
    assert leader is not None
    victim = next(i for i in range(ha.size) if i != leader)
    return victim, [i for i in range(ha.size) if i != victim]


def test_store_and_membership_through_a_member_cut_off(ha, capsys):
    victim, healthy = _victim(ha)
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
            subnet, lease_id = m.lease.subnet, m._lease_id
            peer = _peer_subnet(str(subnet))
            # A quiet watch stays fresh on progress answers (asked every 1 s here).
            await asyncio.sleep(2.5)
            assert store.view_age() is not None and store.view_age() < 2.0
            assert not store.view_stale
            assert relay.open_connections(victim) == 1 and store.failovers == 0

            t0 = time.monotonic()
            await asyncio.to_thread(ha.cut, victim)
            await asyncio.to_thread(ha.etcdctl, "put", f"{prefix}/subnets/{peer.replace('/', '-')}",
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
            assert (m.lease.subnet, m._lease_id) == (subnet, lease_id)      # never lost
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

    run(main(), 60)
    with capsys.disabled():
        print("\ncut of a follower: " + ", ".join(f"{k} {v:.1f}s" for k, v in figures.items()))


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
        ha.etcdctl("put", f"/coreos.com/network/subnets/{peer.replace('/', '-')}", PEER_VALUE)

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
