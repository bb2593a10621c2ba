"""--ip-blackhole-route (flanneld's flag): a blackhole route for the whole
network, below the TUN's route, so traffic for the overlay never leaks to
the default route while the TUN is gone; removed on a clean exit."""

from __future__ import annotations

from tests.support.overlay import NETWORK
from udpoverlay.host.nodenet import BLACKHOLE_METRIC
from udpoverlay.host.routes import ROUTE_PROTO


def _blackholes(ov, host) -> list[str]:
    r = ov.run(host, ["ip", "-4", "route", "show", "type", "blackhole"], timeout=10)
    assert r.returncode == 0, r.stderr
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]


def test_blackhole_route_installed_below_the_tun_route_and_removed(overlay2):
    ov = overlay2
    h1 = ov.hosts[1]
    d = ov.start(1, extra=["--ip-blackhole-route"])
    ov.start(2)
    assert _blackholes(ov, h1) == [f"blackhole {NETWORK} proto {ROUTE_PROTO} "
                                   f"metric {BLACKHOLE_METRIC}"]
    assert ov.status(h1)["node_network"]["blackhole"] is True
    r = ov.ping(1, 2, count=2)                  # the TUN's route still wins
    assert r.returncode == 0, r.stdout + r.stderr
    assert ov.stop(d) == 0, d.stderr()
    assert _blackholes(ov, h1) == []


def test_no_blackhole_route_unless_asked(overlay2):
    ov = overlay2
    ov.start(1)
    assert _blackholes(ov, ov.hosts[1]) == []
    assert ov.status(ov.hosts[1])["node_network"] == {"firewall": None, "firewall_repairs": 0,
                                                      "direct_routes": {}, "blackhole": False}
