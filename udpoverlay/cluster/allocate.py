"""Choosing a free subnet and encoding our own lease value: pure functions.

Why apart from membership.py: both are decisions, not I/O. pick_free is
flannel's allocateSubnet (a random pick among the first 100 free subnets
between SubnetMin and SubnetMax, so racing hosts rarely collide and a
collision only costs a retry); own_lease_value checks that this node's
backend settings fit the cluster's network config before anything is
written, and produces flannel's exact bytes.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Iterable

from udpoverlay.cluster.codec import encode_lease_value, vxlan_backend_data, wireguard_backend_data
from udpoverlay.cluster.network import NetworkConfig
from udpoverlay.errors import ConfigError, LeaseStoreError
from udpoverlay.peer import format_mac, parse_mac
from udpoverlay.wireguard.keys import BadKeyError, parse_public_key

__all__ = ["MAX_CANDIDATES", "pick_free", "own_lease_value"]

MAX_CANDIDATES = 100     # flannel picks among the first 100 free subnets


def pick_free(config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network],
              rng: random.Random) -> ipaddress.IPv4Network:
    """A random free subnet; LeaseStoreError(retryable=False) if none is left."""
    taken = set(taken)
    odd = [t for t in taken if t.prefixlen != config.subnet_len]
    free = []
    for subnet in config.subnets():
        if subnet in taken or any(subnet.overlaps(t) for t in odd):
            continue
        free.append(subnet)
        if len(free) >= MAX_CANDIDATES:
            break
    if not free:
        raise LeaseStoreError(f"out of subnets: all {config.subnet_count()} subnets "
                              f"{config.subnet_min}..{config.subnet_max}/{config.subnet_len}"
                              f" are leased", retryable=False)
    return rng.choice(free)


def own_lease_value(config: NetworkConfig, public_ip: ipaddress.IPv4Address, backend: str,
                    backend_data: dict | None) -> str:
    """Our lease value in flannel's encoding; ConfigError if the backend
    settings do not fit the network config."""
    if backend != config.backend_type:
        raise ConfigError(f"this node runs the {backend} backend but the network config "
                          f"says {config.backend_type}")
    if backend == "udp":
        if backend_data:
            raise ConfigError("udp leases carry no BackendData")
        return encode_lease_value(public_ip)
    if backend == "wireguard":
        key = (backend_data or {}).get("PublicKey")
        if set(backend_data or {}) != {"PublicKey"} or not isinstance(key, str):
            raise ConfigError("wireguard backend_data is exactly our PublicKey")
        try:
            key = parse_public_key(key, "wireguard backend_data PublicKey").to_base64()
        except BadKeyError as e:
            raise ConfigError(str(e)) from None
        return encode_lease_value(public_ip, "wireguard", wireguard_backend_data(key))
    data = dict(backend_data or {})
    mac = data.pop("VtepMAC", None)
    try:
        mac = format_mac(parse_mac(mac)) if isinstance(mac, str) else None
    except ValueError as e:
        raise ConfigError(f"vxlan backend_data: {e}") from None
    if mac is None:
        raise ConfigError("vxlan backend_data needs a VtepMAC")
    vni = data.pop("VNI", config.vni)
    if vni != config.vni:
        raise ConfigError(f"vxlan backend_data VNI {vni} differs from the config's "
                          f"VNI {config.vni}")
    return encode_lease_value(public_ip, "vxlan", {**vxlan_backend_data(vni, mac), **data})
