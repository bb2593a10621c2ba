"""Known leases -> the Peer list the data plane gets.

Why apart from membership.py: which leases become routes is pure policy — the
backend must match ours (flannel's udp leases carry no BackendType), never
a route to ourselves or over our own subnet, vxlan peers need a VtepMAC and
our VNI — plus two bits of memory: since when a lease has looked the way it
does now (a peer's `since`, for status), and which skips were already
logged (one log line per lease value, not one per update). No I/O, no
event loop: tested directly and through the meaning layer.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Callable, Mapping

from udpoverlay.cluster.codec import Lease
from udpoverlay.cluster.network import NetworkConfig
from udpoverlay.peer import Peer

__all__ = ["PeerView", "incompatibility"]

log = logging.getLogger(__name__)


def incompatibility(lease: Lease, config: NetworkConfig, backend: str,
                    public_ip: ipaddress.IPv4Address,
                    own_subnet: ipaddress.IPv4Network | None) -> str | None:
    """Why `lease` cannot be a peer of this node (None: it can)."""
    theirs = (lease.backend_type or "udp").lower()
    if theirs != backend:
        return f"backend {theirs} (this node runs {backend})"
    if lease.public_ip == public_ip:
        return "carries our own public IP"
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
    """Builds full peer lists; remembers first-seen times and logged skips."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.skipped: dict[ipaddress.IPv4Network, str] = {}
        self._first_seen: dict[ipaddress.IPv4Network, tuple[str, float]] = {}
        self._skip_logged: dict[ipaddress.IPv4Network, str] = {}

    def build(self, leases: Mapping[ipaddress.IPv4Network, Lease], config: NetworkConfig,
              backend: str, public_ip: ipaddress.IPv4Address,
              own_subnet: ipaddress.IPv4Network | None) -> list[Peer]:
        """The desired peers, sorted by subnet; updates `skipped`."""
        now = self.clock()
        peers, skipped = [], {}
        for subnet, lease in sorted(leases.items()):
            reason = incompatibility(lease, config, backend, public_ip, own_subnet)
            if reason is not None:
                skipped[subnet] = reason
                if self._skip_logged.get(subnet) != lease.raw:
                    self._skip_logged[subnet] = lease.raw
                    log.info("skipping lease %s of %s: %s", subnet, lease.public_ip, reason)
                continue
            seen = self._first_seen.get(subnet)
            if seen is None or seen[0] != lease.raw:
                self._first_seen[subnet] = seen = (lease.raw, now)
            peers.append(Peer(public_ip=lease.public_ip, port=config.backend_port, subnet=subnet,
                              vtep_mac=lease.vtep_mac() if backend == "vxlan" else None,
                              source="etcd", since=seen[1], expires=lease.expires))
        for gone in set(self._first_seen) - {p.subnet for p in peers}:
            del self._first_seen[gone]
        for gone in set(self._skip_logged) - set(skipped):
            del self._skip_logged[gone]
        self.skipped = skipped
        return peers
