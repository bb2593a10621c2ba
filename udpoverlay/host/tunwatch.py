"""Keeping our TUN as we configured it while we run, like the firewall rules:
the device up, its /32 address, and the route for the whole network through
it. A missing piece is put back with one WARNING and counted; a route for
our network that now points elsewhere is taken back the same way. Without
this, another process (a second instance, an operator's `ip route del`)
could leave the daemon running for hours with no route and /readyz green.

A TUN device that is gone cannot be re-created under the running data plane
(its fd is the device): that is TunGone, and the daemon exits so its
supervisor restarts it.

Also the check before we configure anything: a route overlapping our
network through another overlay device (a TUN, vxlan or wireguard link:
another udpoverlay or flanneld) means a second instance would take over the
first one's traffic, so it is refused (ConfigError, one line).
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from udpoverlay.errors import ConfigError, TunSetupError
from udpoverlay.host.netlink import attr, netlink

__all__ = ["TunWatch", "TunGone", "refuse_foreign_overlay"]

log = logging.getLogger(__name__)

IFF_UP = 0x1
MAIN_TABLE = 254
OVERLAY_KINDS = ("tun", "vxlan", "wireguard")


class TunGone(TunSetupError):
    """Our TUN device no longer exists."""


def _kind(link) -> str | None:
    info = attr(link, "IFLA_LINKINFO")
    return attr(info, "IFLA_INFO_KIND") if info is not None else None


def _network_routes(ipr, network: ipaddress.IPv4Network) -> list[tuple[str, int | None]]:
    """(destination CIDR, output interface index) of every unicast route in
    the main table that overlaps `network`."""
    out = []
    for r in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        dst = attr(r, "RTA_DST")
        if dst is None or r.get("type", 1) != 1:        # default route; blackhole etc.
            continue
        net = ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False)
        if net.overlaps(network):
            out.append((str(net), attr(r, "RTA_OIF")))
    return out


def refuse_foreign_overlay(network: str, own: str) -> None:
    """ConfigError if another overlay device already routes part of `network`."""
    net = ipaddress.IPv4Network(network)
    with netlink() as ipr:
        for dst, oif in _network_routes(ipr, net):
            if oif is None:
                continue
            links = ipr.get_links(oif)
            if not links:
                continue
            name = attr(links[0], "IFLA_IFNAME")
            if name != own and _kind(links[0]) in OVERLAY_KINDS:
                raise ConfigError(
                    f"network {network} is already routed through {name} ({dst}): another "
                    f"udpoverlay or flanneld runs it; refusing to take its route over")


class TunWatch:
    def __init__(self, name: str, addr: str, network: str) -> None:
        self.name, self.addr = name, addr
        self.network = ipaddress.IPv4Network(network)
        self.repairs = 0

    def check(self) -> list[str]:
        """Put back what is missing (sync: netlink; call off the loop);
        what was repaired, also logged. TunGone if the device is gone."""
        fixed: list[str] = []
        with netlink() as ipr:
            found = ipr.link_lookup(ifname=self.name)
            if not found:
                raise TunGone(f"TUN device {self.name} is gone")
            idx = found[0]
            link = ipr.get_links(idx)[0]
            if not link["flags"] & IFF_UP:
                ipr.link("set", index=idx, state="up")
                fixed.append("link was down")
            addrs = {attr(a, "IFA_ADDRESS") for a in ipr.get_addr(index=idx,
                                                                     family=socket.AF_INET)}
            if self.addr not in addrs:
                ipr.addr("replace", index=idx, address=self.addr, prefixlen=32)
                fixed.append(f"address {self.addr}/32 was gone")
            ours = [oif for dst, oif in _network_routes(ipr, self.network)
                    if dst == str(self.network)]
            if idx not in ours:
                ipr.route("replace", dst=str(self.network.network_address),
                          dst_len=self.network.prefixlen, oif=idx)
                fixed.append(f"route {self.network} was gone" if not ours
                             else f"route {self.network} pointed elsewhere")
        if fixed:
            self.repairs += 1
            log.warning("TUN %s not as configured (%s): put back", self.name, "; ".join(fixed))
        return fixed
