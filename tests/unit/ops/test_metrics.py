"""/metrics as Prometheus reads it: parsed back with prometheus_client's own
parser, names by Prometheus conventions, values equal to what the engine
and the membership report, and nothing read before a scrape."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from tests.support import pktgen as g
from tests.support.requirements import require
from udpoverlay import dataplane
from udpoverlay.dataplane import wire
from udpoverlay.lifecycle import Lifecycle
from udpoverlay.liveness import Liveness
from udpoverlay.ops.metrics import METRICS, SCALAR_METRICS, OpsCollector, make_registry, render

OFFLOAD = {"enabled": True, "vnet_hdr_refused": False, "tun": ["csum", "tso4"],
           "udp_gso": True, "udp_gro": False, "tun_uso": False}
PROCESS = {"process_cpu_seconds", "process_open_fds", "process_max_fds",
           "process_resident_memory_bytes", "process_virtual_memory_bytes",
           "process_start_time_seconds"}



def _rejected(**counts: int) -> dict[str, int]:
    """What ClusterMembership.rejected_counts gives: every reason, 0 included."""
    from udpoverlay.cluster.validate import REASONS
    return {reason: 0 for reason in REASONS} | counts

def _families(collector: OpsCollector) -> dict:
    text = render(make_registry(collector)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _collector(daemon=None, cluster=None, per_peer: bool = True) -> OpsCollector:
    c = OpsCollector(Lifecycle(), lambda: "cython", lambda: "uvloop", per_peer=per_peer)
    c.daemon, c.cluster = daemon, cluster
    return c


def _values(family) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def test_names_follow_prometheus_conventions():
    engine = dataplane.Engine("udp", g.OUR_SUBNET.split("/")[0], g.OUR_SUBNET, "198.19.0.0/16")
    engine.set_peers(g.PEERS)
    daemon = SimpleNamespace(engine=engine, offload_status=lambda: OFFLOAD,
                             liveness=Liveness(lambda: engine, lambda *a: None),
                             nodenet=SimpleNamespace(firewall=SimpleNamespace(repairs=0)),
                             tunwatch=SimpleNamespace(repairs=2),
                             status_sections={"static": lambda: {"peers_waiting": 0,
                                                                 "lookup_failures": 0}})
    cluster = SimpleNamespace(store_connected=True, last_contact=time.time(),
                              lease_expiry=time.time() + 60, rejected_counts=_rejected(),
                              view_age=2.5, view_stale=True, failovers=1)
    fams = _families(_collector(daemon, cluster))
    assert _values(fams["udpoverlay_store_view_stale"]) == {(): 1}
    assert _values(fams["udpoverlay_tun_repairs"]) == {(): 2}
    assert _values(fams["udpoverlay_store_failovers"]) == {(): 1}
    assert _values(fams["udpoverlay_store_view_age_seconds"]) == {(): 2.5}
    assert PROCESS <= set(fams)            # prometheus_client's standard process_* families
    assert fams["process_resident_memory_bytes"].samples[0].value > 1 << 20
    assert fams["process_open_fds"].samples[0].value >= 3
    for name, fam in fams.items():
        if name in PROCESS:
            continue
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
        if base == "peers_unresolved":       # vxlan only: test_unresolved_vxlan_peers_...
            continue
        assert "udpoverlay_" + base in fams, name
    assert {s.labels["reason"] for s in fams["udpoverlay_drops"].samples} >= {
        "spoofed_src", "unknown_peer", "bad_port", "no_route", "ttl_expired", "too_short"}


def test_values_equal_engine_and_cluster_state():
    counters = {"tx_packets": 10, "tx_bytes": 1000, "rx_packets": 7, "rx_bytes": 700,
                "icmp_sent": 2, "tx_drop_no_route": 3, "rx_drop_spoofed_src": 5,
                "rx_drop_no_route": 0, "tx_drop_spoofed_src": 0, "rx_drop_brand_new": 1,
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
    cluster = SimpleNamespace(store_connected=False, last_contact=now - 30, lease_expiry=None,
                              rejected_counts=_rejected())
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
    # a verdict a direction never reaches is not exported; an unknown one is
    assert drops == {(("direction", "tx"), ("reason", "no_route")): 3,
                     (("direction", "rx"), ("reason", "spoofed_src")): 5,
                     (("direction", "rx"), ("reason", "brand_new")): 1}
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
                         "udpoverlay_ready", "udpoverlay_http_connections_rejected"} | PROCESS
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


def _peer_entry(ip: str, port: int, subnet: str, rx: int = 0) -> dict:
    return {"public_ip": ip, "port": port, "subnet": subnet, "tx_packets": 0, "tx_bytes": 0,
            "rx_packets": rx, "rx_bytes": 100 * rx}


def _live_daemon():
    """A daemon stand-in with a real Liveness over three peers: 198.19.2.0/24
    active, 198.19.3.0/24 idle (heard from 31 s ago), 198.19.4.0/24 never;
    keepalives every 10 s, those to 198.18.0.4 failing."""
    from tests.support.asyncutil import FakeClock
    entries = [_peer_entry("198.18.0.2", 8285, "198.19.2.0/24"),
               _peer_entry("198.18.0.3", 8285, "198.19.3.0/24"),
               _peer_entry("198.18.0.4", 9000, "198.19.4.0/24")]
    engine = SimpleNamespace(peers=[SimpleNamespace(keepalive=None)] * 3, queues=1,
                             peer_status=lambda: [dict(e) for e in entries],
                             counters=lambda: {"tx_packets": 0, "rx_packets": 1})

    def send(data, addr):
        if addr[0] == "198.18.0.4":
            raise OSError("network unreachable")
    clock = FakeClock()
    live = Liveness(lambda: engine, send, keepalive=10, clock=clock)
    live.sample()                       # keepalives to all three (one fails)
    entries[1]["rx_packets"] = 1
    clock.advance(1)
    live.sample()
    clock.advance(31)
    entries[0]["rx_packets"] = 5
    live.sample()                       # 10 s passed: keepalives again
    return SimpleNamespace(engine=engine, offload_status=lambda: OFFLOAD, liveness=live)


def test_liveness_keepalives_and_peers_by_state():
    d = _live_daemon()
    fams = _families(_collector(d))
    assert _values(fams["udpoverlay_peer_active"]) == {
        (("peer", "198.18.0.2:8285"), ("subnet", "198.19.2.0/24")): 1,
        (("peer", "198.18.0.3:8285"), ("subnet", "198.19.3.0/24")): 0,
        (("peer", "198.18.0.4:9000"), ("subnet", "198.19.4.0/24")): 0}
    assert _values(fams["udpoverlay_peers"]) == {(("state", "active"),): 1,
                                                 (("state", "idle"),): 1,
                                                 (("state", "never"),): 1}
    assert _values(fams["udpoverlay_tx_keepalives"]) == {(): 4}
    assert _values(fams["udpoverlay_tx_keepalive_errors"]) == {(): 2}
    # the status document says the same
    assert d.liveness.tx_keepalive == 4 and d.liveness.tx_keepalive_errors == 2


def test_waiting_peers_rejected_keys_and_firewall_reapplies():
    from udpoverlay.cluster.validate import REASONS
    d = _live_daemon()
    d.nodenet = SimpleNamespace(firewall=SimpleNamespace(repairs=3))
    d.status_sections = {"static": lambda: {"peers_waiting": 2, "lookup_failures": 7}}
    cluster = SimpleNamespace(store_connected=True, last_contact=None, lease_expiry=None,
                              rejected_counts=_rejected(overlap=2, bad_public_ip=1))
    fams = _families(_collector(d, cluster))
    assert _values(fams["udpoverlay_firewall_repairs"]) == {(): 3}
    assert _values(fams["udpoverlay_peers_waiting"]) == {(): 2}
    assert _values(fams["udpoverlay_peer_name_lookup_failures"]) == {(): 7}
    rejected = _values(fams["udpoverlay_lease_keys_rejected"])
    assert rejected == {(("reason", r),): {"overlap": 2, "bad_public_ip": 1}.get(r, 0)
                        for r in REASONS}          # every reason, 0 until one happens
    # absent where they mean nothing: no firewall, no static section, no cluster
    d.nodenet = SimpleNamespace(firewall=None)
    del d.status_sections
    fams = _families(_collector(d))
    assert not {"udpoverlay_firewall_repairs", "udpoverlay_peers_waiting",
                "udpoverlay_lease_keys_rejected"} & set(fams)


def test_per_peer_false_drops_every_per_peer_series():
    peers = [_peer_entry(f"198.18.{i // 250}.{i % 250 + 1}", 8285,
                         f"198.19.{i // 256}.{i % 256}/32", rx=i) for i in range(1000)]
    counters = {"tx_packets": 1, "tx_bytes": 2, "rx_packets": 3, "rx_bytes": 4}
    engine = SimpleNamespace(counters=lambda: counters, peer_status=lambda: peers, queues=1)
    daemon = SimpleNamespace(engine=engine, offload_status=lambda: OFFLOAD)

    def series(fams):
        return sum(len(f.samples) for f in fams.values())
    full = _families(_collector(daemon))
    lean = _families(_collector(daemon, per_peer=False))
    per_peer = {"udpoverlay_peer_packets", "udpoverlay_peer_bytes", "udpoverlay_peer_active"}
    assert per_peer <= set(full) and not per_peer & set(lean)
    assert series(full) - series(lean) == 5 * 1000          # 5 series per peer
    assert series(lean) < 100
    assert _values(lean["udpoverlay_routes"]) == {(): 1000}
    assert _values(lean["udpoverlay_peers"])[(("state", "never"),)] == 1000
    assert _values(lean["udpoverlay_packets"]) == _values(full["udpoverlay_packets"])


def test_exposition_is_valid_for_prometheus_and_promtool(tmp_path):
    """The whole page (every family present) parses with prometheus_client's
    parser, and passes `promtool check metrics` where promtool is installed
    (Debian's `prometheus` package; PROMTOOL=path also works)."""
    import os
    import shutil
    import subprocess

    d = _live_daemon()
    d.nodenet = SimpleNamespace(firewall=SimpleNamespace(repairs=1))
    d.status_sections = {"static": lambda: {"peers_waiting": 1, "lookup_failures": 2}}
    cluster = SimpleNamespace(store_connected=True, last_contact=time.time(),
                              lease_expiry=time.time() + 60,
                              rejected_counts=_rejected(overlap=1))
    text = render(make_registry(_collector(d, cluster))).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"udpoverlay_peer_active", "udpoverlay_lease_keys_rejected",
            "process_cpu_seconds"} <= names
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    require(promtool is not None, "promtool not installed (./dev test unpacks it from "
            "Debian's prometheus package)")
    assert promtool is not None
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        (r.stdout, r.stderr)


def test_unresolved_vxlan_peers_are_counted():
    peers = [g.peer("198.18.0.2", 8472, "198.19.2.0/24", g.PEER_MAC),
             g.peer("198.18.0.3", 8472, "198.19.3.0/24"),            # MAC unknown
             g.peer("198.18.0.4", 8472, "198.19.4.0/24")]
    vx = dataplane.Engine("vxlan", "198.19.1.0", g.OUR_SUBNET, "198.19.0.0/16", vtep_mac=g.MAC)
    vx.set_peers(peers)
    fams = _families(_collector(SimpleNamespace(engine=vx, offload_status=lambda: OFFLOAD)))
    assert _values(fams["udpoverlay_peers_unresolved"]) == {(): 2}
    udp = dataplane.Engine("udp", "198.19.1.0", g.OUR_SUBNET, "198.19.0.0/16")
    udp.set_peers(peers)
    fams = _families(_collector(SimpleNamespace(engine=udp, offload_status=lambda: OFFLOAD)))
    assert "udpoverlay_peers_unresolved" not in fams        # udp mode: no MACs to learn


def test_metrics_per_peer_flag_reaches_the_collector():
    from udpoverlay.config.parser import parse_run_args, run_options
    from udpoverlay.ops.service import Ops
    base = ["--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16"]
    on = Ops(run_options(parse_run_args(base, {})[0]), Lifecycle(), argv=[])
    off = Ops(run_options(parse_run_args(base, {"FLANNELD_METRICS_PER_PEER": "false"})[0]),
              Lifecycle(), argv=[])
    assert on.collector.per_peer is True and off.collector.per_peer is False
