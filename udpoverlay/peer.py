"""Peer: one remote host of the overlay, as the control plane hands it to the
data plane. Lease stores (static flags, etcd) produce lists of these; the
daemon pushes the whole list into the fast path, which swaps its route table
in one step (see dataplane.Engine.set_peers).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

__all__ = ["Peer", "PeerSpec", "format_mac", "parse_mac", "derive_vtep_mac"]


def parse_mac(text: str) -> bytes:
    """'c6:d2:32:6f:8f:44' -> 6 bytes; ValueError with the reason otherwise."""
    parts = text.strip().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"bad MAC address {text!r}")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"bad MAC address {text!r}") from None
    if mac[0] & 1:
        raise ValueError(f"MAC address {text!r} is multicast")
    return mac


def format_mac(mac: bytes | None) -> str | None:
    return None if mac is None else ":".join(f"{b:02x}" for b in mac)


@dataclass(frozen=True)
class Peer:
    """A remote host: where to send (public_ip, port) packets for `subnet`.

    vtep_mac is the remote VTEP's MAC for the vxlan backend (None: unknown,
    to be learned by ARP). `since` is when the control plane first saw this
    peer's current lease (clock seconds), for status only. `host` is the
    name the address was resolved from (static mode; None for a literal or
    a lease) and `keepalive` the peer's own NAT keepalive period in seconds
    (None: --keepalive); the data plane reads neither. --backend wireguard:
    `public_key` is the peer's WireGuard public key (base64, as `wg pubkey`
    prints it; not secret) and `preshared_key_file` the path of an optional
    preshared key (the key itself is read by the WireGuard plane, never kept
    here); `keepalive` is then its persistent keepalive.
    """

    public_ip: ipaddress.IPv4Address
    port: int
    subnet: ipaddress.IPv4Network
    vtep_mac: bytes | None = None
    source: str = "static"
    since: float | None = None
    expires: float | None = None
    host: str | None = None
    keepalive: int | None = None
    public_key: str | None = None
    preshared_key_file: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"bad port {self.port}")
        if self.vtep_mac is not None and len(self.vtep_mac) != 6:
            raise ValueError("vtep_mac must be 6 bytes")

    @property
    def vtep_ip(self) -> ipaddress.IPv4Address:
        """What flannel puts on the remote flannel.1 / flannel0: the subnet's
        network address."""
        return self.subnet.network_address

    def key(self) -> tuple:
        """Identity for diffs: a changed key is a different route (for a
        WireGuard peer also its keys and its persistent keepalive)."""
        base = (str(self.public_ip), self.port, str(self.subnet), self.vtep_mac)
        if self.public_key is None:
            return base
        return (*base, self.public_key, self.preshared_key_file, self.keepalive)


def derive_vtep_mac(*parts: str) -> bytes:
    """A locally administered unicast MAC derived from `parts` (e.g. public
    IP and subnet): the same on every start of the same host, since kernel
    peers keep our MAC in permanent neighbour/fdb entries."""
    seed = "udpoverlay-vtep " + " ".join(parts)
    digest = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return bytes(digest)


@dataclass(frozen=True)
class PeerSpec:
    """A peer as configured (a --peer flag or a peers-file entry): `host` is
    a DNS name or an IPv4 literal. A name becomes a Peer only once resolved
    (static/names.py); `origin` says where it was given, for messages."""

    host: str
    port: int
    subnet: ipaddress.IPv4Network
    vtep_mac: bytes | None = None
    keepalive: int | None = None
    origin: str = "--peer"
    public_key: str | None = None            # --backend wireguard (base64)
    preshared_key_file: str | None = None    # --backend wireguard, optional

    @property
    def literal(self) -> ipaddress.IPv4Address | None:
        """The address if `host` is an IPv4 literal, else None (a name)."""
        try:
            return ipaddress.IPv4Address(self.host)
        except ValueError:
            return None

    def resolved(self, ip: ipaddress.IPv4Address) -> Peer:
        """The Peer the data plane gets once `host` stands for `ip`."""
        return Peer(public_ip=ip, port=self.port, subnet=self.subnet, vtep_mac=self.vtep_mac,
                    host=None if self.literal is not None else self.host,
                    keepalive=self.keepalive, public_key=self.public_key,
                    preshared_key_file=self.preshared_key_file)

    def label(self) -> str:
        return f"{self.host}:{self.port}={self.subnet}"
