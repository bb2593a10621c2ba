"""Choosing the underlay interface as flanneld does, over a fake netlink
(host/interfaces.py reads plain dicts the same way as netlink messages):
the order --iface, --iface-regex, --iface-can-reach, then --public-ip's
interface, then the default route; and what happens when nothing matches."""

from __future__ import annotations

import pytest

from udpoverlay.errors import TunSetupError
from udpoverlay.host import interfaces

LINKS = {1: "lo", 2: "eth0", 3: "eth1", 4: "pod0", 5: "wg0"}   # wg0: no IPv4 address
ADDRS = [(1, "127.0.0.1"), (2, "198.18.0.1"), (3, "198.18.1.1"), (4, "198.19.1.1")]


class FakeIPRoute:
    def __init__(self, default_oif: int | None = 3, reach: dict | None = None) -> None:
        self.default_oif = default_oif
        self.reach = reach or {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_addr(self, family=None, index=None):
        return [{"index": i, "IFA_LOCAL": a, "prefixlen": 24} for i, a in ADDRS
                if index is None or i == index]

    def get_links(self, index):
        return [{"IFLA_IFNAME": LINKS[index], "IFLA_MTU": 1500}]

    def link_lookup(self, ifname):
        return [i for i, n in LINKS.items() if n == ifname]

    def get_routes(self, family=None):
        if self.default_oif is None:
            return []
        return [{"dst_len": 0, "table": 254, "RTA_OIF": self.default_oif}]

    def route(self, cmd, dst):
        if dst not in self.reach:
            raise OSError(101, "Network is unreachable")
        return [{"RTA_OIF": self.reach[dst], "RTA_PREFSRC": None}]


@pytest.fixture
def fake(monkeypatch):
    ipr = FakeIPRoute(reach={"198.18.0.254": 2})
    monkeypatch.setattr(interfaces, "netlink", lambda: ipr)
    return ipr


@pytest.mark.parametrize("kw, name, address", [
    (dict(), "eth1", "198.18.1.1"),                                    # default route
    (dict(public_ip="198.18.0.1"), "eth0", "198.18.0.1"),              # holds --public-ip
    (dict(public_ip="198.18.9.9"), "eth1", "198.18.1.1"),              # NAT: default route
    (dict(ifaces=("eth0",)), "eth0", "198.18.0.1"),
    (dict(ifaces=("198.18.0.1",)), "eth0", "198.18.0.1"),              # by address
    (dict(ifaces=("wg0", "nosuch", "eth0", "eth1")), "eth0", "198.18.0.1"),   # in order
    (dict(iface_regex=("^eth",)), "eth0", "198.18.0.1"),
    (dict(iface_regex=(r"pod0|^198\.18\.1\.",)), "eth1", "198.18.1.1"),  # addresses first
    (dict(ifaces=("nosuch",), iface_regex=("^pod",)), "pod0", "198.19.1.1"),
    (dict(iface_regex=("^zz",), can_reach="198.18.0.254"), "eth0", "198.18.0.1"),
    (dict(ifaces=("eth1",), can_reach="198.18.0.254"), "eth1", "198.18.1.1"),  # --iface first
])
def test_choice_order(fake, kw, name, address):
    regex = kw.pop("iface_regex", ())
    up = interfaces.choose_underlay(kw.pop("ifaces", ()), regex, kw.pop("can_reach", None),
                                    kw.pop("public_ip", None))
    assert (up.name, up.address) == (name, address)


@pytest.mark.parametrize("kw", [
    dict(ifaces=("wg0",)), dict(ifaces=("nosuch",)), dict(iface_regex=("^zz",)),
    dict(can_reach="203.0.113.1"),
])
def test_selectors_matching_nothing_fail_in_one_line(fake, kw):
    with pytest.raises(TunSetupError) as ei:
        interfaces.choose_underlay(kw.get("ifaces", ()), kw.get("iface_regex", ()),
                                   kw.get("can_reach"))
    assert str(ei.value).startswith("no interface matches") and "\n" not in str(ei.value)


def test_no_default_route_asks_for_iface(monkeypatch):
    monkeypatch.setattr(interfaces, "netlink", lambda: FakeIPRoute(default_oif=None))
    with pytest.raises(TunSetupError, match="give --iface"):
        interfaces.choose_underlay(public_ip="198.18.9.9")
