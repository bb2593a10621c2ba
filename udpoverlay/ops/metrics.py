"""/metrics: a prometheus_client custom Collector over what the daemon
already counts.

Why a collector and not Counter objects: the fast path keeps plain uint64
counters in the engine's core (both twins) and must pay nothing per packet;
this collector reads one snapshot of them (engine.counters(),
engine.peer_status()) when Prometheus scrapes, on the event loop's thread,
as `udpoverlay status` does. Rendering the text (prometheus_client, ~35 ms
for 1000 peers) is the costly part, so Ops renders a snapshot in a worker
thread and at most once per RENDER_INTERVAL (ops/__init__.py). Nothing is
registered in prometheus_client's global registry.

Names follow Prometheus conventions: the `udpoverlay_` prefix, `_total`
for counters, base units (bytes, seconds), `direction` = "tx" (TUN -> wire)
or "rx" (wire -> TUN). METRICS lists every family with its help text; the
README's table is made from it. Plus prometheus_client's standard
`process_*` families (CPU, memory, fds, start time), read from /proc in
the snapshot.

Series count: per peer 5 (packets and bytes by direction, liveness), so
per_peer=False (--metrics-per-peer=false) drops them all for big clusters;
the totals and the peers-by-state gauge stay. Drop series: only the
(direction, reason) pairs a data-plane twin can count (DROP_REASONS); the
others (NEVER_COUNTED: e.g. a TUN packet is never "spoofed", a received
one never has "no_route") stay at 0 in `udpoverlay status` but are not
exported, so 20 drop series instead of 30.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from udpoverlay import __version__
from udpoverlay.host.tun import TUN_F
from udpoverlay.lifecycle import Lifecycle
from udpoverlay.wgplane import COUNTERS as WG_COUNTERS

__all__ = ["OpsCollector", "METRICS", "SCALAR_METRICS", "WG_SCALAR_METRICS", "DROP_REASONS",
           "NEVER_COUNTED", "PEER_STATES", "render", "render_snapshot", "make_registry", "families"]

P = "udpoverlay_"
# Engine counters other than packets/bytes and drops: counter name -> metric
# family (without _total), help. A counter not listed is exported as
# udpoverlay_<name>_total, so a new engine counter is never silently lost.
SCALAR_METRICS = {
    "icmp_sent": ("icmp_errors_sent", "ICMP errors (unreachable, TTL exceeded) written "
                                      "back into the TUN"),
    "tx_super_packets": ("tx_super_packets", "TUN reads that carried a GSO super-packet"),
    "rx_coalesced": ("rx_coalesced", "received datagrams coalesced into one TUN write"),
    "rx_csum_bad": ("rx_checksum_bad", "received inner packets with a bad checksum"),
    "rx_csum_partial": ("rx_checksum_partial", "received inner checksums finished by us "
                                               "(a kernel vxlan sender's partial sum)"),
    "arp_mac_changed": ("vtep_mac_changes", "vxlan: learned VTEP MACs replaced by another"),
    "rx_resegmented": ("rx_resegmented", "received inner TCP packets longer than the TUN "
                                         "MTU, written as GSO or split"),
    "tx_gso_messages": ("tx_gso_messages", "UDP_SEGMENT messages sent, each carrying several "
                                           "wire datagrams in one kernel send"),
    "rx_arp": ("rx_arp", "vxlan: ARP frames consumed by the engine (not drops)"),
    "rx_keepalive": ("rx_keepalives", "NAT keepalives received from peers (not drops)"),
}
# --backend wireguard's own counters (wgplane.COUNTERS): handshakes, cookies,
# timers, as udpoverlay_wireguard_<name>_total
WG_SCALAR_METRICS = {k: ("wireguard_" + k[3:], "wireguard: " + doc)
                     for k, doc in WG_COUNTERS.items() if k.startswith("wg_")}
# Which drop verdicts each direction's code can count, in both twins
# (dataplane/_py/outgoing.py + _fastpath/outgoing.pxi for tx, incoming.* for
# rx, frames.* for both; tests/unit/ops/test_drop_series.py holds them to
# this). tx_error: a failed TUN read or send (tx), TUN write or ARP reply (rx).
DROP_REASONS = {
    "tx": ("too_short", "not_ipv4", "bad_header", "no_route", "ttl_expired", "unresolved",
           "bad_gso", "tx_error"),
    "rx": ("too_short", "not_ipv4", "bad_header", "unknown_peer", "bad_port", "spoofed_src",
           "not_local", "ttl_expired", "bad_vxlan", "bad_vni", "wrong_mac", "tx_error"),
}
# Verdicts a direction never reaches: the engine has the counter (one array
# per direction), nothing can move it. A verdict in neither table is
# exported, so a new one is never silently lost.
NEVER_COUNTED = {
    "tx": ("unknown_peer", "spoofed_src", "not_local", "bad_vxlan", "bad_vni", "wrong_mac",
           "bad_port"),
    "rx": ("no_route", "unresolved", "bad_gso"),
}
PEER_STATES = ("active", "idle", "never")      # liveness.py's
METRICS = {
    "build_info": ("gauge", "version, fast path and event loop; always 1"),
    "uptime_seconds": ("gauge", "seconds since the process started"),
    "ready": ("gauge", "1 once ready (lease held, data plane up, subnet.env written)"),
    "packets_total": ("counter", "packets forwarded, by direction"),
    "bytes_total": ("counter", "bytes forwarded (inner IP packets), by direction"),
    "peer_packets_total": ("counter", "packets per peer, by direction"),
    "peer_bytes_total": ("counter", "bytes per peer, by direction"),
    "peer_active": ("gauge", "1 while a peer is heard from (a packet or keepalive within 30 s, "
                             "or three keepalive periods), else 0 (idle, or never heard from)"),
    "peers": ("gauge", "peers in the data plane by liveness state (active, idle, never)"),
    "tx_keepalives_total": ("counter", "NAT keepalives sent to peers"),
    "tx_keepalive_errors_total": ("counter", "NAT keepalives that could not be sent"),
    "drops_total": ("counter", "packets dropped, by direction and reason"),
    "queue_packets_total": ("counter", "--queues > 1: packets per queue's workers, by "
                                       "direction (to see the spread)"),
    "queue_bytes_total": ("counter", "--queues > 1: bytes per queue's workers, by direction"),
    "routes": ("gauge", "peer subnets in the data plane's route table"),
    "offload_enabled": ("gauge", "offloads in use (1) or not (0), by feature"),
    "lease_expiry_timestamp_seconds": ("gauge", "cluster mode: when our subnet lease "
                                                "expires unless renewed (unix time)"),
    "store_connected": ("gauge", "cluster mode: 1 while the lease store (etcd) answers"),
    "store_last_contact_timestamp_seconds": ("gauge", "cluster mode: last successful call "
                                                      "or watch event from the store "
                                                      "(unix time)"),
    "store_view_age_seconds": ("gauge", "cluster mode: seconds since the etcd watches last "
                                        "showed life (an event or a progress answer)"),
    "store_view_stale": ("gauge", "cluster mode: 1 while connected but the watched view "
                                  "may be out of date (no life for longer than the bound)"),
    "store_failovers_total": ("counter", "cluster mode: moves to another etcd member"),
    "http_connections_rejected_total": ("counter", "connections to this endpoint closed "
                                                   "unanswered (no room, evicted or too slow)"),
    "peers_unresolved": ("gauge", "vxlan: peers whose VTEP MAC is not known yet (ARP "
                                  "unanswered): traffic to them drops as tx unresolved"),
    "peers_waiting": ("gauge", "static mode: configured peers not in the data plane (name "
                               "does not resolve, our own address, duplicate)"),
    "peer_name_lookup_failures_total": ("counter", "static mode: peer name lookups that "
                                                   "failed"),
    "lease_keys_rejected_total": ("counter", "cluster mode: lease keys ignored as invalid, "
                                             "by reason (each key and value counted once)"),
    "tun_repairs_total": ("counter", "resyncs that found our TUN's route, address or link "
                                     "state changed and put them back"),
    "firewall_repairs_total": ("counter", "resyncs that found our masquerade/forward rules "
                                          "changed and put them back"),
}
_OFFLOAD_FEATURES = ("vnet_hdr", *(f"tun_{n}" for n in TUN_F), "udp_gso", "udp_gro")


def _gauge(name: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, METRICS[name][1], labels=list(labels))


def _counter(name: str, labels: Iterable[str] = (), doc: str | None = None,
             value: float | None = None) -> CounterMetricFamily:
    if value is not None:
        return CounterMetricFamily(P + name, doc or METRICS[name + "_total"][1], value=value)
    return CounterMetricFamily(P + name, doc or METRICS[name + "_total"][1],
                               labels=list(labels))


class OpsCollector:
    """Reads the daemon's state at scrape time. daemon / cluster may be None
    (not created yet); `rejected` gives the HTTP server's refusals.

    snapshot() copies everything into plain data (on the loop's thread: the
    engine is read there, as status does; ~1 ms for 1000 peers); families()
    turns a snapshot into metric families anywhere, so the costly text
    rendering can run off the loop (render_snapshot)."""

    def __init__(self, lifecycle: Lifecycle, implementation: Callable[[], str],
                 loop: Callable[[], str], per_peer: bool = True) -> None:
        self.lifecycle = lifecycle
        self.implementation, self.loop = implementation, loop
        self.per_peer = per_peer
        self.daemon: Any = None
        self.cluster: Any = None
        self.rejected: Callable[[], int] = lambda: 0
        self._process = ProcessCollector(registry=None)

    def snapshot(self) -> dict:
        snap: dict = {"info": [__version__, self.implementation(), self.loop()],
                      "uptime": round(time.monotonic() - self.lifecycle.started, 3),
                      "ready": int(self.lifecycle.ready), "rejected": self.rejected(),
                      "per_peer": self.per_peer, "process": list(self._process.collect())}
        d = self.daemon
        engine = getattr(d, "engine", None)
        if engine is not None:
            snap["engine"] = (engine.counters(), engine.peer_status(),
                              d.offload_status(),
                              engine.queue_counters() if engine.queues > 1 else [])
            snap["liveness"] = _liveness(d)
            if getattr(engine, "backend", None) == "vxlan":
                snap["unresolved"] = len(engine.unresolved())
        tunwatch = getattr(d, "tunwatch", None)
        if tunwatch is not None:
            snap["tun_repairs"] = tunwatch.repairs
        nodenet = getattr(d, "nodenet", None)
        if nodenet is not None and getattr(nodenet, "firewall", None) is not None:
            snap["firewall_repairs"] = nodenet.firewall.repairs
        static = getattr(d, "status_sections", {}).get("static")
        if static is not None:
            st = static()
            snap["static"] = (st["peers_waiting"], st["lookup_failures"])
        if self.cluster is not None:
            c = self.cluster
            snap["cluster"] = (c.store_connected, c.last_contact, c.lease_expiry,
                               dict(c.rejected_counts), getattr(c, "view_age", None),
                               bool(getattr(c, "view_stale", False)),
                               int(getattr(c, "failovers", 0)))
        return snap

    def collect(self) -> Iterable[Metric]:
        return families(self.snapshot())


def _liveness(d: Any) -> tuple[dict, int, int]:
    """({(address, port, subnet): state}, keepalives sent, failed) from the
    daemon's Liveness (empty when it has none)."""
    live = getattr(d, "liveness", None)
    if live is None:
        return {}, 0, 0
    return ({k: v["state"] for k, v in live.details().items()}, live.tx_keepalive,
            live.tx_keepalive_errors)


def families(snap: dict) -> Iterable[Metric]:
    """The metric families of one snapshot."""
    yield from snap.get("process", ())
    info = _gauge("build_info", ("version", "fastpath", "loop"))
    info.add_metric(snap["info"], 1)
    yield info
    yield GaugeMetricFamily(P + "uptime_seconds", METRICS["uptime_seconds"][1],
                            value=snap["uptime"])
    yield GaugeMetricFamily(P + "ready", METRICS["ready"][1], value=snap["ready"])
    yield CounterMetricFamily(P + "http_connections_rejected",
                              METRICS["http_connections_rejected_total"][1],
                              value=snap["rejected"])
    if "engine" in snap:
        counters, peers, offload, queues = snap["engine"]
        states, sent, failed = snap.get("liveness", ({}, 0, 0))
        yield from _engine_metrics(counters, peers, states, snap.get("per_peer", True))
        yield _counter("tx_keepalives", value=sent)
        yield _counter("tx_keepalive_errors", value=failed)
        yield _offload(offload)
        yield from _queue_metrics(queues)       # no samples with one queue
        if "unresolved" in snap:
            yield GaugeMetricFamily(P + "peers_unresolved", METRICS["peers_unresolved"][1],
                                    value=snap["unresolved"])
    if "tun_repairs" in snap:
        yield _counter("tun_repairs", value=snap["tun_repairs"])
    if "firewall_repairs" in snap:
        yield _counter("firewall_repairs", value=snap["firewall_repairs"])
    if "static" in snap:
        waiting, failures = snap["static"]
        yield GaugeMetricFamily(P + "peers_waiting", METRICS["peers_waiting"][1], value=waiting)
        yield _counter("peer_name_lookup_failures", value=failures)
    if "cluster" in snap:
        yield from _cluster_metrics(*snap["cluster"])


class _Fixed:
    """A collector over one snapshot (rendered in a worker thread)."""

    def __init__(self, snap: dict) -> None:
        self.snap = snap

    def collect(self) -> Iterable[Metric]:
        return families(self.snap)


def _engine_metrics(counters: dict, peers: list[dict], states: dict,
                    per_peer: bool) -> Iterable[Metric]:
    for what in ("packets", "bytes"):
        fam = _counter(what, ["direction"])
        for d in ("tx", "rx"):
            fam.add_metric([d], counters.get(f"{d}_{what}", 0))
        yield fam
    drops = _counter("drops", ["direction", "reason"])
    for key, value in sorted(counters.items()):
        direction, _, reason = key.partition("_drop_")
        if reason and reason not in NEVER_COUNTED.get(direction, ()):
            drops.add_metric([direction, reason], value)
    yield drops
    for key, value in sorted(counters.items()):
        if "_drop_" in key or key in ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes"):
            continue
        name, doc = (SCALAR_METRICS.get(key) or WG_SCALAR_METRICS.get(key)
                     or (key, f"engine counter {key}"))
        yield CounterMetricFamily(P + name, doc, value=value)
    by_state = dict.fromkeys(PEER_STATES, 0)
    for p in peers:
        state = states.get((p["public_ip"], p["port"], p["subnet"]), "never")
        by_state[state] = by_state.get(state, 0) + 1
    counts = _gauge("peers", ["state"])
    for state, n in by_state.items():
        counts.add_metric([state], n)
    yield counts
    yield GaugeMetricFamily(P + "routes", METRICS["routes"][1], value=len(peers))
    if not per_peer:
        return
    for what in ("packets", "bytes"):
        fam = _counter("peer_" + what, ["subnet", "peer", "direction"])
        for p in peers:
            where = f"{p['public_ip']}:{p['port']}"
            for d in ("tx", "rx"):
                fam.add_metric([p["subnet"], where, d], p[f"{d}_{what}"])
        yield fam
    alive = _gauge("peer_active", ["subnet", "peer"])
    for p in peers:
        state = states.get((p["public_ip"], p["port"], p["subnet"]), "never")
        alive.add_metric([p["subnet"], f"{p['public_ip']}:{p['port']}"],
                         int(state == "active"))
    yield alive


def _queue_metrics(queues: list[dict]) -> Iterable[Metric]:
    for what in ("packets", "bytes"):
        fam = _counter("queue_" + what, ["queue", "direction"])
        for i, q in enumerate(queues):
            for d in ("tx", "rx"):
                fam.add_metric([str(i), d], q[f"{d}_{what}"])
        yield fam


def _offload(status: dict) -> Metric:
    fam = _gauge("offload_enabled", ["feature"])
    tun = set(status.get("tun", ()))
    for feature in _OFFLOAD_FEATURES:
        if feature == "vnet_hdr":
            on = status.get("enabled", False)
        elif feature.startswith("tun_"):
            on = feature[4:] in tun
        else:
            on = status.get(feature, False)
        fam.add_metric([feature], int(bool(on)))
    return fam


def _cluster_metrics(connected: bool, last: float | None, expiry: float | None,
                     rejected: dict[str, int], view_age: float | None, stale: bool,
                     failovers: int) -> Iterable[Metric]:
    yield GaugeMetricFamily(P + "store_connected", METRICS["store_connected"][1],
                            value=int(bool(connected)))
    yield GaugeMetricFamily(P + "store_view_stale", METRICS["store_view_stale"][1],
                            value=int(stale))
    yield _counter("store_failovers", value=failovers)
    if view_age is not None:
        yield GaugeMetricFamily(P + "store_view_age_seconds",
                                METRICS["store_view_age_seconds"][1], value=round(view_age, 3))
    fam = _counter("lease_keys_rejected", ["reason"])
    for reason in sorted(rejected):
        fam.add_metric([reason], rejected.get(reason, 0))
    yield fam
    if last is not None:
        yield GaugeMetricFamily(P + "store_last_contact_timestamp_seconds",
                                METRICS["store_last_contact_timestamp_seconds"][1],
                                value=round(last, 3))
    if expiry is not None:
        yield GaugeMetricFamily(P + "lease_expiry_timestamp_seconds",
                                METRICS["lease_expiry_timestamp_seconds"][1],
                                value=round(expiry, 3))


def make_registry(collector: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (version 0.0.4)."""
    return generate_latest(registry)


def render_snapshot(snap: dict) -> bytes:
    """One snapshot as the text format; pure, safe in a worker thread."""
    return render(make_registry(_Fixed(snap)))
