"""Where this host sits on the underlay: the address to use and its MTU.

As flannel: the public IP is the address of the chosen underlay interface,
else of the interface holding the IPv4 default route; the TUN MTU is that
interface's MTU minus the encapsulation overhead (the caller subtracts it).
Call before the event loop starts (see host/netlink.py).
"""

from __future__ import annotations

import ipaddress
import socket

from udpoverlay.errors import TunSetupError
from udpoverlay.host.netlink import attr, netlink

__all__ = ["interface_mtu", "interface_network", "interface_address",
           "default_route_address", "detect_public_ip"]


def interface_mtu(ip: str) -> int:
    """MTU of the interface holding address `ip`; TunSetupError if none."""
    with netlink() as ipr:
        for a in ipr.get_addr(family=socket.AF_INET):
            if attr(a, "IFA_ADDRESS") == ip or attr(a, "IFA_LOCAL") == ip:
                link = ipr.get_links(a["index"])[0]
                return int(attr(link, "IFLA_MTU"))
    raise TunSetupError(f"no interface holds address {ip}")


def interface_network(ip: str) -> ipaddress.IPv4Network | None:
    """The IPv4 network (address/prefix) of the interface address `ip`;
    None when no interface holds it (e.g. a 1:1 NAT public IP)."""
    with netlink() as ipr:
        for a in ipr.get_addr(family=socket.AF_INET):
            if attr(a, "IFA_LOCAL") == ip or attr(a, "IFA_ADDRESS") == ip:
                return ipaddress.IPv4Network(f"{ip}/{a['prefixlen']}", strict=False)
    return None


def interface_address(ifname: str) -> str:
    """First IPv4 address of interface `ifname`."""
    with netlink() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise TunSetupError(f"no interface named {ifname!r}")
        for a in ipr.get_addr(family=socket.AF_INET, index=found[0]):
            addr = attr(a, "IFA_LOCAL") or attr(a, "IFA_ADDRESS")
            if addr:
                return addr
    raise TunSetupError(f"interface {ifname!r} has no IPv4 address")


def default_route_address() -> str:
    """Address of the interface holding the IPv4 default route (as flannel
    picks its public IP when none is given)."""
    with netlink() as ipr:
        for r in ipr.get_routes(family=socket.AF_INET):
            if r["dst_len"] != 0 or r.get("table", 254) not in (254,):
                continue
            oif = attr(r, "RTA_OIF")
            if oif is None:
                continue
            pref = attr(r, "RTA_PREFSRC")
            if pref:
                return pref
            for a in ipr.get_addr(family=socket.AF_INET, index=oif):
                addr = attr(a, "IFA_LOCAL") or attr(a, "IFA_ADDRESS")
                if addr:
                    return addr
    raise TunSetupError("no default route: give --public-ip or --underlay-iface")


def detect_public_ip(underlay_iface: str | None) -> str:
    """As flannel: the address of --underlay-iface, else of the interface
    holding the default route."""
    if underlay_iface:
        return interface_address(underlay_iface)
    return default_route_address()
