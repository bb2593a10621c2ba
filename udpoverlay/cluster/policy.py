"""Valid leases -> the Peer each becomes (or why it is skipped), per subnet.

Why apart from membership.py: which valid leases become routes is pure
policy — the backend must match ours (flannel's udp leases carry no
BackendType), never a route to ourselves or over our own subnet, vxlan
peers need a VtepMAC and our VNI — plus two bits of memory: since when a
lease has looked the way it does now (a peer's `since`, for status), and
which skips were already logged (one log line per lease value, not one per
update). A lease carrying our own public IP is a WARNING (another host
advertises our address), logged once per value.

wireguard (flannel's pkg/backend/wireguard): each lease is a peer with its
BackendData.PublicKey, endpoint PublicIP:ListenPort (ours: the lease has
no port), the config's PersistentKeepaliveInterval (the PSK is the
plane's, for every peer). A WireGuard peer is its key, so after the
per-subnet pass settle() decides across leases, in creation order (etcd's
create revision, then the subnet), the same on every node:
- a lease carrying our own public key, or a key an older lease already
  carries, is refused (`duplicate_key`: the feed rejects and counts it);
- of the leases of one PublicIP with different keys the newest wins and the
  others are skipped (flannel removes the old key's peer when a node comes
  back with a new key before its old lease expired).
settle() is one pass over the wireguard peers per publish (not per event).

Incremental: update() re-evaluates one subnet and says whether the peer set
changed, so a change costs O(1) at any cluster size; the full list is
`peers.values()`. Several subnets may share one public IP (a host with two
leases): each is its own Peer. No I/O, no event loop.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from typing import Callable

from udpoverlay.cluster.codec import Lease
from udpoverlay.cluster.network import NetworkConfig
from udpoverlay.peer import Peer
from udpoverlay.wireguard.keys import BadKeyError, parse_public_key

__all__ = ["PeerView", "Context", "incompatibility", "OUR_IP", "Held"]

log = logging.getLogger(__name__)

OUR_IP = "carries our own public IP"
# The network config, our backend, our public IP, our own subnet (None before
# we hold one), our WireGuard public key (base64; None for udp/vxlan).
Context = tuple[NetworkConfig, str, ipaddress.IPv4Address, ipaddress.IPv4Network | None,
                str | None]
# A wireguard peer settle() keeps out: the Peer, a reason code, one line.
Held = tuple[Peer, str, str]


def _wg_key(lease: Lease) -> str | None:
    """The lease's PublicKey, canonical base64 (None: unusable)."""
    text = lease.wg_public_key()
    try:
        return None if text is None else parse_public_key(text).to_base64()
    except BadKeyError:
        return None


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
    if backend == "wireguard" and _wg_key(lease) is None:
        return "no usable PublicKey in BackendData"
    return None


class PeerView:
    """Peers and skips by subnet; first-seen times; logged skips."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.peers: dict[ipaddress.IPv4Network, Peer] = {}
        self.skipped: dict[ipaddress.IPv4Network, str] = {}
        self._raw: dict[ipaddress.IPv4Network, str] = {}
        self._skip_logged: dict[ipaddress.IPv4Network, str] = {}
        self.held: dict[ipaddress.IPv4Network, Held] = {}        # wireguard: settle()
        self._rev: dict[ipaddress.IPv4Network, int] = {}

    def update(self, subnet: ipaddress.IPv4Network, lease: Lease | None,
               context: Context, revision: int = 0) -> str | None:
        """Re-evaluate one subnet; 'added', 'removed', 'changed' or None.
        revision: the lease key's create revision (settle()'s order)."""
        if self.held.pop(subnet, None) is not None:
            self.skipped.pop(subnet, None)
            self._raw.pop(subnet, None)
        self._rev.pop(subnet, None)
        if lease is not None:
            self._rev[subnet] = revision
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
                self.peers[subnet] = dataclasses.replace(old, expires=lease.expires)
            return None
        self._raw[subnet] = lease.raw
        self.peers[subnet] = peer
        if old is None:
            return "added"
        return None if old.key() == peer.key() else "changed"

    def _judge(self, lease: Lease, context: Context) -> Peer | None:
        config, backend, public_ip, own, _ = context
        reason = incompatibility(lease, config, backend, public_ip, own)
        if reason is None:
            wg = backend == "wireguard"
            return Peer(public_ip=lease.public_ip, port=config.backend_port,
                        subnet=lease.subnet,
                        vtep_mac=lease.vtep_mac() if backend == "vxlan" else None,
                        source="etcd", since=self.clock(), expires=lease.expires,
                        public_key=_wg_key(lease) if wg else None,
                        keepalive=config.wg_keepalive if wg else None)
        subnet = lease.subnet
        self.skipped[subnet] = reason
        if self._skip_logged.get(subnet) != lease.raw:
            self._skip_logged[subnet] = lease.raw
            if reason == OUR_IP:
                log.warning("lease %s advertises our public IP %s: another host uses our "
                            "address (two hosts must not share a public IP); not a peer",
                            subnet, public_ip)
            elif backend == "wireguard" and reason.startswith("backend "):
                # flanneld's wireguard backend warns: a node of another backend
                # on this network cannot reach us (nor we it)
                log.warning("ignoring lease %s of %s: %s", subnet, lease.public_ip, reason)
            else:
                log.info("skipping lease %s of %s: %s", subnet, lease.public_ip, reason)
        return None

    def subnets(self) -> set[ipaddress.IPv4Network]:
        return set(self.peers) | set(self.skipped) | set(self.held)

    def settle(self, context: Context) -> list[tuple[str, ipaddress.IPv4Network]]:
        """wireguard: decide across leases (see the module notes); the
        subnets that left or rejoined the peers, as (kind, subnet)."""
        if context[1] != "wireguard":
            return []
        own_key = context[4]
        pool = {s: h[0] for s, h in self.held.items()}
        pool.update(self.peers)
        order = sorted(pool, key=lambda s: (self._rev.get(s, 0), int(s.network_address)))
        held: dict[ipaddress.IPv4Network, Held] = {}
        owner: dict[str, ipaddress.IPv4Network] = {}
        for s in order:
            p = pool[s]
            key = p.public_key or ""
            if own_key is not None and key == own_key:
                held[s] = (p, "duplicate_key", f"PublicKey {key} is this node's own key")
            elif key in owner:
                held[s] = (p, "duplicate_key", f"PublicKey {key} is already the key of the "
                           f"older lease {owner[key]} ({pool[owner[key]].public_ip})")
            else:
                owner[key] = s
        newest: dict[ipaddress.IPv4Address, str] = {}
        for s in order:
            if s not in held:
                newest[pool[s].public_ip] = pool[s].public_key or ""
        for s in order:
            p = pool[s]
            if s not in held and p.public_key != newest[p.public_ip]:
                held[s] = (p, "replaced", f"{p.public_ip} has a newer lease with another "
                           f"PublicKey")
        changes: list[tuple[str, ipaddress.IPv4Network]] = []
        for s, h in held.items():
            if s in self.peers:
                del self.peers[s]
                changes.append(("removed", s))
            self.skipped[s] = h[2]
            if self.held.get(s, (None, None, None))[2] != h[2] and h[1] == "replaced":
                log.info("skipping lease %s of %s: %s", s, h[0].public_ip, h[2])
        for s, h in self.held.items():
            if s not in held:
                self.peers[s] = h[0]
                self.skipped.pop(s, None)
                changes.append(("added", s))
        self.held = held
        return changes
