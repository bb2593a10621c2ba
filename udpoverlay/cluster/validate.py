"""Which stored keys are leases at all: validation of what another writer put
under `<prefix>/subnets/`, before anything becomes a route.

Why a module of its own: the store is shared with every other node, with
flannel, and with anyone holding etcd credentials, so a broken or hostile
writer must not be able to cut a host off (a more-specific /25 over its /24),
redirect traffic (a lease naming 127.0.0.1 or the underlay broadcast
address) or make us write into a key that is not a lease (a nested
`subnets/evil/198.19.88.0-24`). The rules, each with a reason code that
status counts:

- `nested_key`: only keys directly below `<prefix>/subnets/` are leases;
- `not_a_subnet`: the key's name must be flannel's `A.B.C.D-LEN` (host bits
  clear, LEN <= 32; the dual-stack `&v6-len` suffix is allowed);
- `subnet_len`: LEN must be the configured SubnetLen (so no lease is ever
  more specific than another: overlapping leases are then equal subnets);
- `outside_network` / `outside_range`: inside Network, and between
  SubnetMin and SubnetMax (flannel's isSubnetConfigCompat);
- `bad_value`: the value must decode as flannel's LeaseAttrs;
- `bad_public_ip`: PublicIP must be unicast: not 0.0.0.0, loopback,
  multicast, class E / 255.255.255.255, nor our underlay's broadcast;
- `bad_public_key`: a wireguard lease's BackendData.PublicKey must be a
  usable WireGuard public key (44 base64 characters, 32 bytes, not zero);
  the detail never repeats the value;
- `duplicate_key` (decided by the feed, across leases): a wireguard lease
  whose PublicKey is ours or another subnet's older lease's;
- `overlap`: two keys for one subnet (`-24` and `-024`, or a dual-stack
  suffix): the older creation revision wins, the other is rejected.

RejectLog logs each offending key/value once (not once per update) and
counts it; it also remembers which keys are rejected now, for status.
Pure: no I/O, no event loop.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Callable

from udpoverlay.cluster.codec import Lease, decode_lease_value, parse_subnet_key, subnets_prefix
from udpoverlay.cluster.network import NetworkConfig
from udpoverlay.cluster.store.base import KeyValue
from udpoverlay.config.peerspec import bad_peer_address
from udpoverlay.errors import LeaseDecodeError
from udpoverlay.wireguard.keys import BadKeyError, parse_public_key

__all__ = ["Entry", "Rejection", "LeaseValidator", "RejectLog", "REASONS", "bad_public_ip",
           "wg_key_problem"]

log = logging.getLogger(__name__)

REASONS = ("nested_key", "not_a_subnet", "subnet_len", "outside_network", "outside_range",
           "bad_value", "bad_public_ip", "bad_public_key", "duplicate_key", "overlap")


@dataclass(frozen=True)
class Entry:
    """A key that passed validation: a candidate lease for `subnet`."""

    key: str
    lease: Lease
    create_revision: int

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.lease.subnet


@dataclass(frozen=True)
class Rejection:
    key: str
    reason: str        # one of REASONS
    detail: str        # one line, for the log and status
    subnet: ipaddress.IPv4Network | None = None


def bad_public_ip(addr: ipaddress.IPv4Address,
                  underlay: ipaddress.IPv4Network | None) -> str | None:
    """Why `addr` cannot be a peer's underlay address (None: it can): the
    one check both modes share (config/peerspec.bad_peer_address)."""
    return bad_peer_address(addr, underlay)


class LeaseValidator:
    """Stored key/value -> Entry or Rejection, under one network config."""

    def __init__(self, prefix: str, config: NetworkConfig,
                 underlay: ipaddress.IPv4Network | None,
                 clock: Callable[[], float]) -> None:
        self.base = subnets_prefix(prefix)
        self.config, self.underlay, self.clock = config, underlay, clock

    def subnet_of(self, key: str) -> ipaddress.IPv4Network | Rejection:
        """The subnet a key names, judged by the key alone."""
        name = key[len(self.base):] if key.startswith(self.base) else key
        if "/" in name or not key.startswith(self.base):
            return Rejection(key, "nested_key", "not directly below the subnets prefix")
        subnet = parse_subnet_key(key)
        if subnet is None:
            return Rejection(key, "not_a_subnet", "the key does not name a subnet")
        c = self.config
        if subnet.prefixlen != c.subnet_len:
            return Rejection(key, "subnet_len", f"/{subnet.prefixlen} is not the configured "
                             f"SubnetLen /{c.subnet_len}", subnet)
        if not subnet.subnet_of(c.network):
            return Rejection(key, "outside_network", f"outside the network {c.network}", subnet)
        if not c.subnet_min <= subnet.network_address <= c.subnet_max:
            return Rejection(key, "outside_range", f"outside SubnetMin..SubnetMax "
                             f"{c.subnet_min}..{c.subnet_max}", subnet)
        return subnet

    def check(self, kv: KeyValue) -> Entry | Rejection:
        subnet = self.subnet_of(kv.key)
        if isinstance(subnet, Rejection):
            return subnet
        expires = None if kv.ttl is None else self.clock() + kv.ttl
        try:
            lease = decode_lease_value(subnet, kv.value, expires)
        except LeaseDecodeError as e:
            return Rejection(kv.key, "bad_value", str(e), subnet)
        why = bad_public_ip(lease.public_ip, self.underlay)
        if why is not None:
            return Rejection(kv.key, "bad_public_ip", f"PublicIP {lease.public_ip} {why}", subnet)
        if lease.backend_type.lower() == "wireguard":
            why = wg_key_problem(lease)
            if why is not None:
                return Rejection(kv.key, "bad_public_key", why, subnet)
        return Entry(kv.key, lease, kv.create_revision)


def wg_key_problem(lease: Lease) -> str | None:
    """Why a wireguard lease's PublicKey is unusable (None: it is usable)."""
    key = lease.wg_public_key()
    if key is None:
        return "wireguard lease without a BackendData.PublicKey string"
    try:
        parse_public_key(key, "BackendData.PublicKey")
    except BadKeyError as e:      # the message never repeats the value
        return str(e)
    return None


class RejectLog:
    """Rejected keys: logged and counted once per key/value; listed while present."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.current: dict[str, Rejection] = {}
        self._logged: dict[str, tuple[str, bytes]] = {}

    def reject(self, rejection: Rejection, value: bytes) -> None:
        key = rejection.key
        self.current[key] = rejection
        if self._logged.get(key) != (rejection.reason, value):
            self._logged[key] = (rejection.reason, value)
            self.counts[rejection.reason] = self.counts.get(rejection.reason, 0) + 1
            log.warning("ignoring lease key %s: %s", key, rejection.detail)

    def clear(self, key: str, keep_overlap: bool = False) -> None:
        """The key is gone or valid now: a later offence is logged again.
        keep_overlap: keep an `overlap` rejection (the table decides that)."""
        current = self.current.get(key)
        if current is None or (keep_overlap and current.reason == "overlap"):
            return
        del self.current[key]
        self._logged.pop(key, None)

    def keep_only(self, present: set[str]) -> None:
        for key in [k for k in self.current if k not in present]:
            self.clear(key)

    def status(self) -> tuple[dict[str, int], list[dict]]:
        listed = [{"key": r.key, "subnet": None if r.subnet is None else str(r.subnet),
                   "reason": r.reason, "detail": r.detail}
                  for r in sorted(self.current.values(), key=lambda r: r.key)]
        return dict(self.counts), listed
