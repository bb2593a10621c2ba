"""Valid leases -> the Peer each becomes (or why it is skipped), per subnet.

Why apart from membership.py: which valid leases become routes is pure
policy — the backend must match ours (flannel's udp leases carry no
BackendType), never a route to ourselves or over our own subnet, vxlan
peers need a VtepMAC and our VNI — plus two bits of memory: since when a
lease has looked the way it does now (a peer's `since`, for status), and
which skips were already logged (one log line per lease value, not one per
update). A lease carrying our own public IP is a WARNING (another host
advertises our address), logged once per value.

Incremental: update() re-evaluates one subnet and says whether the peer set
changed, so a change costs O(1) at any cluster size; the full list is
`peers.values()`. Several subnets may share one public IP (a host with two
leases): each is its own Peer. No I/O, no event loop.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Callable

from udpoverlay.cluster.codec import Lease
from udpoverlay.cluster.network import NetworkConfig
from udpoverlay.peer import Peer

__all__ = ["PeerView", "Context", "incompatibility", "OUR_IP"]

log = logging.getLogger(__name__)

OUR_IP = "carries our own public IP"
# The network config, our backend, our public IP, our own subnet (None before we hold one).
Context = tuple[NetworkConfig, str, ipaddress.IPv4Address, ipaddress.IPv4Network | None]


def incompatibility(lease: Lease, config: NetworkConfig, backend: str,
                    public_ip: ipaddress.IPv4Address,
                    own_subnet: ipaddress.IPv4Network | None) -> str | None:
    """Why a valid `lease` cannot be a peer of this node (None: it can)."""
    theirs = (lease.backend_type or "udp").lower()
    if theirs != backend:
        return f"backend {theirs} (this node runs {backend})"
    if lease.public_ip == public_ip:
        return OUR_IP
    if own_subnet is not None and lease.subnet.overlaps(own_subnet):
        return f"overlaps our subnet {own_subnet}"
    if not lease.subnet.subnet_of(config.network):
        return f"outside the network {config.network}"
    if backend == "vxlan":
        try:
            if lease.vtep_mac() is None:
                return "no VtepMAC in BackendData"
        except ValueError as e:
            return f"bad VtepMAC: {e}"
        if lease.vni() is not None and lease.vni() != config.vni:
            return f"VNI {lease.vni()} (this network uses {config.vni})"
    return None


class PeerView:
    """Peers and skips by subnet; first-seen times; logged skips."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.peers: dict[ipaddress.IPv4Network, Peer] = {}
        self.skipped: dict[ipaddress.IPv4Network, str] = {}
        self._raw: dict[ipaddress.IPv4Network, str] = {}
        self._skip_logged: dict[ipaddress.IPv4Network, str] = {}

    def update(self, subnet: ipaddress.IPv4Network, lease: Lease | None,
               context: Context) -> str | None:
        """Re-evaluate one subnet; 'added', 'removed', 'changed' or None."""
        old = self.peers.get(subnet)
        if lease is None:
            self.skipped.pop(subnet, None)
            self._skip_logged.pop(subnet, None)
        peer = None if lease is None else self._judge(lease, context)
        if peer is None or lease is None:
            self._raw.pop(subnet, None)
            return None if self.peers.pop(subnet, None) is None else "removed"
        self.skipped.pop(subnet, None)
        self._skip_logged.pop(subnet, None)
        if old is not None and self._raw.get(subnet) == lease.raw:
            if old.expires != lease.expires:   # a renewal: not a route change
                self.peers[subnet] = Peer(old.public_ip, old.port, old.subnet, old.vtep_mac,
                                          old.source, old.since, lease.expires)
            return None
        self._raw[subnet] = lease.raw
        self.peers[subnet] = peer
        if old is None:
            return "added"
        return None if old.key() == peer.key() else "changed"

    def _judge(self, lease: Lease, context: Context) -> Peer | None:
        config, backend, public_ip, own = context
        reason = incompatibility(lease, config, backend, public_ip, own)
        if reason is None:
            return Peer(public_ip=lease.public_ip, port=config.backend_port,
                        subnet=lease.subnet,
                        vtep_mac=lease.vtep_mac() if backend == "vxlan" else None,
                        source="etcd", since=self.clock(), expires=lease.expires)
        subnet = lease.subnet
        self.skipped[subnet] = reason
        if self._skip_logged.get(subnet) != lease.raw:
            self._skip_logged[subnet] = lease.raw
            if reason == OUR_IP:
                log.warning("lease %s advertises our public IP %s: another host uses our "
                            "address (two hosts must not share a public IP); not a peer",
                            subnet, public_ip)
            else:
                log.info("skipping lease %s of %s: %s", subnet, lease.public_ip, reason)
        return None

    def subnets(self) -> set[ipaddress.IPv4Network]:
        return set(self.peers) | set(self.skipped)
