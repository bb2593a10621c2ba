"""The REAL kernel vxlan device, configured in a Lab host the way flannel does.

Test and benchmark scaffolding (it shells out to iproute2 through Lab.run);
the daemon itself uses netlink.

Design notes (what flannel's vxlan backend does):
- One device `flannel.<VNI>`: `nolearning`, the given dstport (8472 is the
  kernel's default and flannel's), `local` = the node's public IP, `dev` = the
  underlay interface, MTU = underlay MTU - 50, a random locally administered
  unicast MAC (flannel's VtepMAC), the network address of the node's subnet
  as a /32 (so no broadcast or prefix route appears), then link up.
- No route for the whole overlay network. Each remote lease gets, in this
  order: a permanent neighbour entry (remote subnet address -> remote VtepMAC)
  on flannel.<VNI>; a permanent fdb entry (VtepMAC -> remote public IP); then
  `<remote subnet> via <remote subnet address> dev flannel.<VNI> onlink`.
  The route comes last, so the kernel never has to ARP for the gateway.
- Removing a lease deletes all three in the same order and goes on past a
  failed step (flannel logs and continues); here the failures are collected
  and raised together at the end.
"""

from __future__ import annotations

import ipaddress
import secrets

from lab.netns import Host, Lab, LabError
from udpoverlay.peer import format_mac, parse_mac

__all__ = [
    "VXLAN_OVERHEAD",
    "vtep_device",
    "subnet_address",
    "random_vtep_mac",
    "setup_flannel_vxlan",
    "add_flannel_vxlan_peer",
    "remove_flannel_vxlan_peer",
    "teardown_flannel_vxlan",
]

# outer IPv4 (20) + UDP (8) + VXLAN header (8) + inner Ethernet (14)
VXLAN_OVERHEAD = 50


def vtep_device(vni: int = 1) -> str:
    """flannel's device name for a VNI: `flannel.<VNI>`."""
    return f"flannel.{vni}"


def subnet_address(subnet: str) -> str:
    """The network address of a lease's subnet (its VTEP address)."""
    return str(ipaddress.IPv4Network(subnet, strict=True).network_address)


def random_vtep_mac() -> str:
    """A random unicast, locally administered MAC, like flannel's VtepMAC."""
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return format_mac(bytes(raw))


def _normalize_mac(mac: str) -> str:
    return format_mac(parse_mac(mac))


def setup_flannel_vxlan(lab: Lab, host: Host, subnet: str, vni: int = 1,
                        port: int = 8472, mac: str | None = None,
                        underlay_dev: str = "eth0",
                        underlay_mtu: int = 1500) -> str:
    """Create and bring up flannel.<VNI> in host; returns its (Vtep)MAC."""
    dev = vtep_device(vni)
    vtep_mac = _normalize_mac(mac) if mac else random_vtep_mac()
    vtep_ip = subnet_address(subnet)
    lab.run(host.netns, [
        "ip", "link", "add", dev, "address", vtep_mac,
        "mtu", str(underlay_mtu - VXLAN_OVERHEAD),
        "type", "vxlan", "id", str(vni), "local", host.underlay_ip,
        "dev", underlay_dev, "dstport", str(port), "nolearning",
    ])
    lab.run(host.netns, ["ip", "addr", "add", f"{vtep_ip}/32", "dev", dev])
    lab.run(host.netns, ["ip", "link", "set", dev, "up"])
    return vtep_mac


def _peer(remote_subnet: str, remote_mac: str, remote_public_ip: str,
          vni: int) -> tuple[str, str, str, str, str]:
    """Validated (device, subnet, gateway, mac, public_ip) of one lease."""
    subnet = str(ipaddress.IPv4Network(remote_subnet, strict=True))
    return (vtep_device(vni), subnet, subnet_address(subnet),
            _normalize_mac(remote_mac),
            str(ipaddress.IPv4Address(remote_public_ip)))


def add_flannel_vxlan_peer(lab: Lab, host: Host, remote_subnet: str,
                           remote_mac: str, remote_public_ip: str,
                           vni: int = 1) -> None:
    """flannel's per-lease entries, in its order: neighbour, fdb, route."""
    dev, subnet, gw, mac, public_ip = _peer(remote_subnet, remote_mac,
                                            remote_public_ip, vni)
    lab.run(host.netns, ["ip", "neigh", "replace", gw, "lladdr", mac,
                         "dev", dev, "nud", "permanent"])
    lab.run(host.netns, ["bridge", "fdb", "replace", mac, "dev", dev,
                         "dst", public_ip, "self", "permanent"])
    lab.run(host.netns, ["ip", "route", "replace", subnet, "via", gw,
                         "dev", dev, "onlink"])


def remove_flannel_vxlan_peer(lab: Lab, host: Host, remote_subnet: str,
                              remote_mac: str, remote_public_ip: str,
                              vni: int = 1) -> None:
    """Delete the neighbour, fdb and route entries; try all three, then raise."""
    dev, subnet, gw, mac, public_ip = _peer(remote_subnet, remote_mac,
                                            remote_public_ip, vni)
    steps = (
        ["ip", "neigh", "del", gw, "dev", dev],
        ["bridge", "fdb", "del", mac, "dev", dev, "dst", public_ip, "self"],
        ["ip", "route", "del", subnet, "via", gw, "dev", dev],
    )
    errors = []
    for cmd in steps:
        proc = lab.run(host.netns, cmd, check=False)
        if proc.returncode != 0:
            errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    if errors:
        raise LabError("; ".join(errors))


def teardown_flannel_vxlan(lab: Lab, host: Host, vni: int = 1) -> None:
    """Delete flannel.<VNI> (its neighbours, fdb entries and routes go too)."""
    lab.run(host.netns, ["ip", "link", "del", vtep_device(vni)], check=False)
