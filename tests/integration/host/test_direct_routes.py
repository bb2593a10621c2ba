"""DirectRoutes (DirectRouting's kernel routes) alone, in a real namespace:
which peers get `SUBNET via PUBLIC_IP`, which stay in the tunnel, how the
routes follow peer updates, and that routes we did not install survive
everything we do.

Host a (198.18.0.1/24) on the lab switch; b (198.18.0.2) is its neighbour.
A port-less bridge `tun0` stands in for the TUN: it holds the route for the
whole overlay 198.19.0.0/16, as the daemon's TUN does. "Behind a gateway" is
a host route via b (198.18.0.200/32 via 198.18.0.2).
"""

from __future__ import annotations

import ipaddress

import pytest

from udpoverlay.host.routes import ROUTE_PROTO, DirectRoutes
from udpoverlay.peer import Peer

BEHIND_GW = "198.18.0.200"


def peer(ip: str, subnet: str) -> Peer:
    return Peer(ipaddress.IPv4Address(ip), 8472, ipaddress.IPv4Network(subnet))


def table(lab, host) -> list[str]:
    """The main IPv4 routing table, one line a route, sorted."""
    out = lab.run(host.netns, ["ip", "-o", "-4", "route", "show", "table", "main"]).stdout
    return sorted(" ".join(line.split()) for line in out.splitlines())


def ours(lab, host) -> list[str]:
    return [r for r in table(lab, host) if f"proto {ROUTE_PROTO}" in r]


def route_to(lab, host, dst: str) -> str:
    return " ".join(lab.run(host.netns, ["ip", "-o", "route", "get", dst]).stdout.split())


@pytest.fixture
def node(lab):
    a = lab.add_host("a", "198.18.0.1/24")
    lab.add_host("b", "198.18.0.2/24")
    lab.add_pod_address(a, "198.19.1.0/32", dev="tun0")
    lab.run(a.netns, ["ip", "route", "add", "198.19.0.0/16", "dev", "tun0"])
    lab.run(a.netns, ["ip", "route", "add", f"{BEHIND_GW}/32", "via", "198.18.0.2"])
    return a


def direct_routes(node, **kw) -> DirectRoutes:
    from pyroute2 import IPRoute
    return DirectRoutes("tun0", netlink=lambda: IPRoute(netns=node.netns), **kw)


def test_direct_peers_routed_the_rest_tunnelled(lab, node):
    before = table(lab, node)
    dr = direct_routes(node)
    p2, p3 = peer("198.18.0.2", "198.19.2.0/24"), peer("198.18.0.3", "198.19.3.0/24")
    rest = [peer(BEHIND_GW, "198.19.4.0/24"),        # behind a gateway
            peer("198.19.9.9", "198.19.5.0/24"),     # reached through our TUN
            peer("198.18.0.1", "198.19.6.0/24"),     # our own address
            peer("198.18.77.1", "198.19.7.0/24"),    # no route at all
            peer("198.18.0.4", "198.19.2.0/24")]     # a second claim on p2's subnet
    peers = [p2, rest[0], rest[1], p3, *rest[2:]]
    assert dr.update(peers) == rest
    assert ours(lab, node) == [
        f"198.19.2.0/24 via 198.18.0.2 dev eth0 proto {ROUTE_PROTO}",
        f"198.19.3.0/24 via 198.18.0.3 dev eth0 proto {ROUTE_PROTO}"]
    assert dr.installed() == {"198.19.2.0/24": "198.18.0.2", "198.19.3.0/24": "198.18.0.3"}
    # more specific than the TUN's network route: the kernel forwards directly
    assert route_to(lab, node, "198.19.2.7").startswith("198.19.2.7 via 198.18.0.2 dev eth0")
    assert route_to(lab, node, "198.19.4.7").startswith("198.19.4.7 dev tun0")
    assert dr.update(peers) == rest                  # idempotent
    dr.remove_all()
    assert table(lab, node) == before
    dr.remove_all()                                  # and again: nothing to do
    assert table(lab, node) == before


def test_routes_follow_updates(lab, node):
    before = table(lab, node)
    now = [0.0]
    dr = direct_routes(node, recheck=30.0, clock=lambda: now[0])
    p2, p3 = peer("198.18.0.2", "198.19.2.0/24"), peer("198.18.0.3", "198.19.3.0/24")
    assert dr.update([p2, p3]) == []
    # p2 moved to another address, p3 left, p8 joined
    p2b, p8 = peer("198.18.0.4", "198.19.2.0/24"), peer("198.18.0.8", "198.19.8.0/24")
    assert dr.update([p2b, p8]) == []
    assert dr.installed() == {"198.19.2.0/24": "198.18.0.4", "198.19.8.0/24": "198.18.0.8"}
    assert len(ours(lab, node)) == 2
    # p2 moves behind a gateway: its route goes, it is a tunnel peer
    p2c = peer(BEHIND_GW, "198.19.2.0/24")
    assert dr.update([p2c, p8]) == [p2c]
    assert dr.installed() == {"198.19.8.0/24": "198.18.0.8"}
    assert route_to(lab, node, "198.19.2.1").startswith("198.19.2.1 dev tun0")
    # the underlay changes under p8: seen once `recheck` seconds have passed
    lab.run(node.netns, ["ip", "route", "add", "198.18.0.8/32", "via", "198.18.0.2"])
    assert dr.update([p2c, p8]) == [p2c]
    now[0] = 31.0
    assert dr.update([p2c, p8]) == [p2c, p8]
    assert ours(lab, node) == []
    lab.run(node.netns, ["ip", "route", "del", "198.18.0.8/32"])
    now[0] = 62.0
    assert dr.update([p8]) == []
    assert dr.update([]) == []
    assert table(lab, node) == before


def test_routes_we_did_not_install_are_never_touched(lab, node):
    lab.add_pod_address(node, "198.19.1.1/24", dev="cni0")   # our own pods' route
    run = lambda *a: lab.run(node.netns, ["ip", "route", *a])   # noqa: E731
    run("add", "198.19.2.0/24", "via", "198.18.0.9", "dev", "eth0")
    run("add", "198.19.3.0/24", "via", "198.18.0.9", "dev", "eth0", "metric", "50")
    before = table(lab, node)
    dr = direct_routes(node)
    hostile = peer("198.18.0.2", "198.19.1.0/24")    # claims our pods' subnet
    p2, p3 = peer("198.18.0.2", "198.19.2.0/24"), peer("198.18.0.3", "198.19.3.0/24")
    p4 = peer("198.18.0.4", "198.19.4.0/24")
    assert dr.update([hostile, p2, p3, p4]) == [hostile, p2]
    assert dr.installed() == {"198.19.3.0/24": "198.18.0.3", "198.19.4.0/24": "198.18.0.4"}
    assert sorted(set(table(lab, node)) - set(before)) == [
        f"198.19.3.0/24 via 198.18.0.3 dev eth0 proto {ROUTE_PROTO}",
        f"198.19.4.0/24 via 198.18.0.4 dev eth0 proto {ROUTE_PROTO}"]
    assert set(before) <= set(table(lab, node))
    # an administrator replaces our route for p4: it is theirs now
    run("replace", "198.19.4.0/24", "via", "198.18.0.9", "dev", "eth0")
    theirs = "198.19.4.0/24 via 198.18.0.9 dev eth0"
    assert dr.update([hostile, p2, p3]) == [hostile, p2]     # p4 left: its route is not ours
    assert theirs in table(lab, node)
    dr.remove_all()
    assert table(lab, node) == sorted([*before, theirs])
    # the foreign route for p2 goes away: now ours can be installed
    run("del", "198.19.2.0/24")
    assert dr.update([p2]) == []
    dr.remove_all()
    assert table(lab, node) == sorted([r for r in before if not r.startswith("198.19.2.0/24")]
                                      + [theirs])
