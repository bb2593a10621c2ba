"""/metrics as Prometheus reads it: parsed back with prometheus_client's own
parser, names by Prometheus conventions, values equal to what the engine
and the membership report, and nothing read before a scrape."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from tests.support import pktgen as g
from udpoverlay import dataplane
from udpoverlay.dataplane import wire
from udpoverlay.lifecycle import Lifecycle
from udpoverlay.ops.metrics import METRICS, SCALAR_METRICS, OpsCollector, make_registry, render

OFFLOAD = {"enabled": True, "vnet_hdr_refused": False, "tun": ["csum", "tso4"],
           "udp_gso": True, "udp_gro": False, "tun_uso": False}


def _families(collector: OpsCollector) -> dict:
    text = render(make_registry(collector)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _collector(daemon=None, cluster=None) -> OpsCollector:
    c = OpsCollector(Lifecycle(), lambda: "cython", lambda: "uvloop")
    c.daemon, c.cluster = daemon, cluster
    return c


def _values(family) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def test_names_follow_prometheus_conventions():
    engine = dataplane.Engine("udp", g.OUR_SUBNET.split("/")[0], g.OUR_SUBNET, "198.19.0.0/16")
    engine.set_peers(g.PEERS)
    daemon = SimpleNamespace(engine=engine, offload_status=lambda: OFFLOAD)
    cluster = SimpleNamespace(store_connected=True, last_contact=time.time(),
                              lease_expiry=time.time() + 60)
    fams = _families(_collector(daemon, cluster))
    for name, fam in fams.items():
        assert re.fullmatch(r"udpoverlay_[a-z0-9_]+", name), name
        for s in fam.samples:
            if fam.type == "counter":
                assert s.name == name + "_total", s.name
            assert not re.search(r"(milli|micro|kilo|mega)|_ms$|_kb$", s.name), s.name
        assert fam.documentation, name
    # every engine counter has a chosen name (none falls back to its raw key)
    assert not [f for f in fams.values() if f.documentation.startswith("engine counter")]
    assert set(SCALAR_METRICS) == set(wire.SCALAR_COUNTERS[4:]) | {"rx_arp", "rx_keepalive"}
    for name, (kind, _) in METRICS.items():
        base = name[:-len("_total")] if kind == "counter" else name
        assert "udpoverlay_" + base in fams, name
    assert {s.labels["reason"] for s in fams["udpoverlay_drops"].samples} >= {
        "spoofed_src", "unknown_peer", "bad_port", "no_route", "ttl_expired", "too_short"}


def test_values_equal_engine_and_cluster_state():
    counters = {"tx_packets": 10, "tx_bytes": 1000, "rx_packets": 7, "rx_bytes": 700,
                "icmp_sent": 2, "tx_drop_no_route": 3, "rx_drop_spoofed_src": 5,
                "rx_keepalive": 4, "brand_new": 9}
    peers = [{"public_ip": "198.18.0.2", "port": 8285, "subnet": "198.19.2.0/24",
              "tx_packets": 6, "tx_bytes": 600, "rx_packets": 5, "rx_bytes": 500},
             {"public_ip": "198.18.0.2", "port": 9000, "subnet": "198.19.3.0/24",
              "tx_packets": 4, "tx_bytes": 400, "rx_packets": 2, "rx_bytes": 200}]
    reads = []

    def snapshot():
        reads.append(1)
        return counters
    engine = SimpleNamespace(counters=snapshot, peer_status=lambda: peers, queues=1)
    daemon = SimpleNamespace(engine=engine, offload_status=lambda: OFFLOAD)
    now = time.time()
    cluster = SimpleNamespace(store_connected=False, last_contact=now - 30, lease_expiry=None)
    collector = _collector(daemon, cluster)
    assert reads == []                     # nothing is read until a scrape
    fams = _families(collector)
    assert reads == [1]
    pk = _values(fams["udpoverlay_peer_packets"])
    assert pk[(("direction", "tx"), ("peer", "198.18.0.2:8285"), ("subnet", "198.19.2.0/24"))] == 6
    assert pk[(("direction", "rx"), ("peer", "198.18.0.2:9000"), ("subnet", "198.19.3.0/24"))] == 2
    by = _values(fams["udpoverlay_peer_bytes"])
    assert sum(by.values()) == 600 + 500 + 400 + 200
    assert _values(fams["udpoverlay_packets"]) == {(("direction", "tx"),): 10,
                                                   (("direction", "rx"),): 7}
    drops = _values(fams["udpoverlay_drops"])
    assert drops == {(("direction", "tx"), ("reason", "no_route")): 3,
                     (("direction", "rx"), ("reason", "spoofed_src")): 5}
    assert _values(fams["udpoverlay_icmp_errors_sent"]) == {(): 2}
    assert _values(fams["udpoverlay_rx_keepalives"]) == {(): 4}
    assert _values(fams["udpoverlay_brand_new"]) == {(): 9}     # a new counter is not lost
    assert _values(fams["udpoverlay_routes"]) == {(): 2}
    off = _values(fams["udpoverlay_offload_enabled"])
    assert off[(("feature", "tun_tso4"),)] == 1 and off[(("feature", "tun_uso4"),)] == 0
    assert off[(("feature", "udp_gso"),)] == 1 and off[(("feature", "udp_gro"),)] == 0
    assert _values(fams["udpoverlay_store_connected"]) == {(): 0}
    assert abs(_values(fams["udpoverlay_store_last_contact_timestamp_seconds"])[()]
               - (now - 30)) < 1
    assert "udpoverlay_lease_expiry_timestamp_seconds" not in fams     # no lease: absent
    [info] = fams["udpoverlay_build_info"].samples
    assert info.value == 1 and info.labels["fastpath"] == "cython" and \
        info.labels["loop"] == "uvloop"


def test_before_the_daemon_exists_and_after_ready():
    c = _collector()
    fams = _families(c)
    assert set(fams) == {"udpoverlay_build_info", "udpoverlay_uptime_seconds",
                         "udpoverlay_ready", "udpoverlay_http_connections_rejected"}
    assert _values(fams["udpoverlay_ready"]) == {(): 0}
    c.lifecycle.set_ready()
    c.daemon = SimpleNamespace(engine=None)           # created, not set up yet
    assert _values(_families(c)["udpoverlay_ready"]) == {(): 1}


def test_ops_renders_off_the_loop_at_most_once_per_interval(monkeypatch):
    """A scrape flood costs one snapshot + render per RENDER_INTERVAL; the
    page is rendered in a worker thread, not on the loop's."""
    import asyncio
    import threading

    import udpoverlay.ops.service as ops_mod
    from tests.support.asyncutil import run
    from udpoverlay.config.options import build_config

    opts = build_config(subnet="198.19.1.0/24", network="198.19.0.0/16", peers=())
    ops = ops_mod.Ops(opts, Lifecycle(), argv=[])
    snaps, threads = [], []
    real_snapshot, real_render = ops.collector.snapshot, ops_mod.render_snapshot
    monkeypatch.setattr(ops.collector, "snapshot", lambda: snaps.append(1) or real_snapshot())
    monkeypatch.setattr(ops_mod, "render_snapshot",
                        lambda s: threads.append(threading.get_ident()) or real_render(s))
    monkeypatch.setattr(ops_mod, "RENDER_INTERVAL", 0.2)

    async def main():
        pages = await asyncio.gather(*(ops.metrics() for _ in range(20)))
        assert len({p[2] for p in pages}) == 1 and pages[0][0] == 200
        assert len(snaps) == 1
        await asyncio.sleep(0.25)
        await ops.metrics()
        assert len(snaps) == 2
        return threading.get_ident()
    loop_thread = run(main())
    assert threads and loop_thread not in threads


def test_queue_counters_appear_only_with_queues():
    engine = dataplane.Engine("udp", g.OUR_SUBNET.split("/")[0], g.OUR_SUBNET, "198.19.0.0/16")
    engine.set_peers(g.PEERS)
    daemon = SimpleNamespace(engine=engine, offload_status=lambda: OFFLOAD)
    assert not _families(_collector(daemon))["udpoverlay_queue_packets"].samples
    queues = [{"tx_packets": 5, "tx_bytes": 500, "rx_packets": 7, "rx_bytes": 700},
              {"tx_packets": 1, "tx_bytes": 100, "rx_packets": 0, "rx_bytes": 0}]
    daemon.engine = SimpleNamespace(counters=engine.counters, peer_status=engine.peer_status,
                                    queues=2, queue_counters=lambda: queues)
    fams = _families(_collector(daemon))
    assert _values(fams["udpoverlay_queue_packets"]) == {
        (("direction", "tx"), ("queue", "0")): 5, (("direction", "rx"), ("queue", "0")): 7,
        (("direction", "tx"), ("queue", "1")): 1, (("direction", "rx"), ("queue", "1")): 0}
    assert _values(fams["udpoverlay_queue_bytes"])[(("direction", "rx"), ("queue", "0"))] == 700
