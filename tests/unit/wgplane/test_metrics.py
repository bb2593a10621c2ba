"""--backend wireguard on /metrics: the plane's counters under the existing
conventions (drops by direction and reason, packets and bytes, per peer),
the handshake counters as udpoverlay_wireguard_*_total with their help."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from tests.support.wireguard import icmp_echo
from tests.unit.wgplane.test_plane import pair
from udpoverlay.lifecycle import Lifecycle
from udpoverlay.liveness import Liveness
from udpoverlay.ops.metrics import OpsCollector, make_registry, render
from udpoverlay.wgplane import COUNTERS


def test_wireguard_counters_on_metrics():
    clock, ka, kb, a, b = pair()
    ping = icmp_echo("198.19.1.5", "198.19.2.7", 1, 1)
    for data, _addr in a.outgoing(ping, clock.now):
        b.incoming(data, ("198.18.0.1", 51820), clock.now)
    b.incoming(b"\x01" + bytes(147), ("198.18.0.9", 51820), clock.now)     # bad MAC1
    daemon = SimpleNamespace(engine=b, offload_status=lambda: {"wireguard": True},
                             liveness=Liveness(lambda: b, lambda *a: None, sends=False),
                             status_sections={})
    c = OpsCollector(Lifecycle(), lambda: "python", lambda: "asyncio")
    c.daemon = daemon
    text = render(make_registry(c)).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    drops = {(s.labels["direction"], s.labels["reason"]): s.value
             for s in fams["udpoverlay_drops"].samples}
    assert drops[("rx", "bad_mac")] == 1 and drops[("rx", "bad_auth")] == 0
    assert drops[("tx", "no_route")] == 0 and ("rx", "not_local") in drops
    assert fams["udpoverlay_wireguard_tx_response"].samples[0].value == 1
    assert fams["udpoverlay_wireguard_rx_initiation"].documentation.startswith("wireguard: ")
    assert "udpoverlay_rx_keepalives" in fams
    names = {k for k in COUNTERS if k.startswith("wg_")}
    assert {"udpoverlay_wireguard_" + k[3:] for k in names} <= set(fams)
    assert {s.labels["subnet"] for s in fams["udpoverlay_peer_packets"].samples} == {
        str(ipaddress.IPv4Network("198.19.1.0/24"))}
