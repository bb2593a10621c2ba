"""Where this host sits on the underlay: the interface, the address to bind
and its MTU.

As flanneld chooses its external interface: each --iface (a name or an
address) in order, then each --iface-regex (matched against the addresses,
then the names), then --iface-can-reach (the interface `ip route get IP`
would use); with none of them, the interface holding the IPv4 default
route. The data socket binds that interface's own address; --public-ip is
only advertised (1:1 NAT clouds). One difference, for laptop usage: with
--public-ip and no selector, an interface holding that address is taken
before the default route. The TUN MTU is the chosen interface's MTU minus
the encapsulation overhead (the caller subtracts it). Call before the event
loop starts (see host/netlink.py).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass

from udpoverlay.config.options import Options
from udpoverlay.errors import TunSetupError
from udpoverlay.host.netlink import attr, netlink

__all__ = ["prepare", "interface_mtu", "interface_network", "default_route_address",
           "choose_underlay", "Underlay"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Underlay:
    """The chosen underlay interface: its name and the IPv4 address to bind."""

    name: str
    address: str


def _holding(ipr, ip: str):
    """The interface address record holding `ip`, or None."""
    for a in ipr.get_addr(family=socket.AF_INET):
        if attr(a, "IFA_LOCAL") == ip or attr(a, "IFA_ADDRESS") == ip:
            return a
    return None


def interface_mtu(ip: str) -> int:
    """MTU of the interface holding address `ip`; TunSetupError if none."""
    with netlink() as ipr:
        a = _holding(ipr, ip)
        if a is not None:
            return int(attr(ipr.get_links(a["index"])[0], "IFLA_MTU"))
    raise TunSetupError(f"no interface holds address {ip}")


def interface_network(ip: str) -> ipaddress.IPv4Network | None:
    """The IPv4 network (address/prefix) of the interface address `ip`;
    None when no interface holds it (e.g. a 1:1 NAT public IP)."""
    with netlink() as ipr:
        a = _holding(ipr, ip)
    return None if a is None else ipaddress.IPv4Network(f"{ip}/{a['prefixlen']}",
                                                         strict=False)


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
    raise TunSetupError("no IPv4 default route to choose the underlay interface by: "
                        "give --iface")


def _addresses(ipr) -> list[tuple[int, str]]:
    """(link index, IPv4 address) of every interface address, in kernel order."""
    out = []
    for a in ipr.get_addr(family=socket.AF_INET):
        addr = attr(a, "IFA_LOCAL") or attr(a, "IFA_ADDRESS")
        if addr:
            out.append((a["index"], addr))
    return out


def _name(ipr, index: int) -> str:
    return str(attr(ipr.get_links(index)[0], "IFLA_IFNAME"))


def _by_iface(ipr, addrs, iface: str) -> Underlay | None:
    """--iface: an address held by an interface, else an interface name."""
    for index, addr in addrs:
        if addr == iface:
            return Underlay(_name(ipr, index), addr)
    found = ipr.link_lookup(ifname=iface)
    for index, addr in addrs:
        if found and index == found[0]:
            return Underlay(iface, addr)
    log.warning("--iface %s: no interface with that name or address has an IPv4 address",
             iface)
    return None


def _by_regex(ipr, addrs, pattern: str) -> Underlay | None:
    """--iface-regex: first address matching, else first interface name."""
    rx = re.compile(pattern)
    for index, addr in addrs:
        if rx.search(addr):
            return Underlay(_name(ipr, index), addr)
    for index, addr in addrs:
        name = _name(ipr, index)
        if rx.search(name):
            return Underlay(name, addr)
    log.warning("--iface-regex %s: no interface address or name matches", pattern)
    return None


def _by_route(ipr, addrs, dst: str) -> Underlay | None:
    """--iface-can-reach: the interface (and source) `ip route get dst` gives."""
    try:
        routes = ipr.route("get", dst=dst)
    except Exception as exc:  # noqa: BLE001 - netlink says "unreachable" as an error
        log.warning("--iface-can-reach %s: no route (%s)", dst, exc)
        return None
    for r in routes:
        oif, src = attr(r, "RTA_OIF"), attr(r, "RTA_PREFSRC")
        for index, addr in addrs:
            if index == oif and (src is None or addr == src):
                return Underlay(_name(ipr, index), addr)
    log.warning("--iface-can-reach %s: the route's interface has no IPv4 address", dst)
    return None


def choose_underlay(ifaces=(), regexes=(), can_reach=None,
                    public_ip: str | None = None) -> Underlay:
    """The underlay interface as flanneld chooses it (see the module doc);
    TunSetupError when the selectors given match nothing."""
    with netlink() as ipr:
        addrs = _addresses(ipr)
        selected = bool(ifaces or regexes or can_reach)
        for iface in ifaces:
            if (found := _by_iface(ipr, addrs, str(iface))) is not None:
                return found
        for pattern in regexes:
            if (found := _by_regex(ipr, addrs, pattern)) is not None:
                return found
        if can_reach and (found := _by_route(ipr, addrs, str(can_reach))) is not None:
            return found
        if selected:
            raise TunSetupError("no interface matches --iface/--iface-regex/"
                                "--iface-can-reach (" + ", ".join(
                                    [*map(str, ifaces), *regexes,
                                     *([str(can_reach)] if can_reach else [])]) + ")")
        if public_ip is not None:
            for index, addr in addrs:
                if addr == str(public_ip):
                    return Underlay(_name(ipr, index), addr)
    address = default_route_address()
    with netlink() as ipr:
        for index, addr in _addresses(ipr):
            if addr == address:
                return Underlay(_name(ipr, index), addr)
    return Underlay("?", address)


def prepare(opts: Options) -> Options:
    """Choose the underlay interface as flanneld does (--iface, --iface-regex,
    --iface-can-reach, else the default route): bind its address, advertise
    --public-ip or that address; re-validated."""
    if opts.bind_ip is None:
        up = choose_underlay(opts.ifaces, opts.iface_regex, opts.iface_can_reach,
                             None if opts.public_ip is None else str(opts.public_ip))
        log.debug("underlay interface %s, address %s", up.name, up.address)
        opts = opts.with_underlay(up.address)
    return opts
