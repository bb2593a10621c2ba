"""Lease values and flannel's etcd encoding of them.

Why byte-for-byte: flannel nodes read our leases and we read theirs, and an
operator diffing `etcdctl get` output should not be able to tell a
udpoverlay node from a flannel one. flannel writes the value with Go's
json.Marshal of its LeaseAttrs (pkg/lease/lease.go):

    type LeaseAttrs struct {
        PublicIP      ip.IP4
        PublicIPv6    *ip.IP6                       // nil -> null
        BackendType   string          `json:",omitempty"`
        BackendData   json.RawMessage `json:",omitempty"`
        BackendV6Data json.RawMessage `json:",omitempty"`
    }

so a udp node (which sets only PublicIP) writes
`{"PublicIP":"10.0.0.1","PublicIPv6":null}` and a vxlan node writes
`{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"vxlan",
"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}` (compact); a
wireguard node (pkg/backend/wireguard's wireguardLeaseAttrs) writes
`...,"BackendType":"wireguard","BackendData":{"PublicKey":"<base64>"}}`.
The key is `<prefix>/subnets/10.244.1.0-24` (dual-stack flannel appends
`&<v6>-<len>`; we read the IPv4 part of such keys).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from udpoverlay.cluster import gojson
from udpoverlay.errors import LeaseDecodeError
from udpoverlay.peer import parse_mac

__all__ = [
    "Lease",
    "normalize_prefix", "config_key", "subnets_prefix", "subnet_key",
    "parse_subnet_key", "encode_lease_value", "decode_lease_value", "vxlan_backend_data",
    "wireguard_backend_data",
]

_KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([0-9a-fA-F:]+)-(\d+))?")


@dataclass(frozen=True)
class Lease:
    """One subnet lease as stored under `<prefix>/subnets/`.

    backend_type is "" for udp leases (flannel's udp backend sets none).
    expires is in the owner's clock seconds (None: no TTL known). raw is the
    value exactly as stored, for byte comparisons and change detection.
    """

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    backend_type: str = ""
    backend_data: dict | None = None
    expires: float | None = None
    raw: str = ""

    def vtep_mac(self) -> bytes | None:
        """BackendData.VtepMAC as 6 bytes; None if absent; ValueError if bad."""
        if not self.backend_data:
            return None
        text = _field(self.backend_data, "VtepMAC")
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValueError(f"VtepMAC is not a string: {text!r}")
        return parse_mac(text)

    def wg_public_key(self) -> str | None:
        """BackendData.PublicKey as stored (None if absent or not a string);
        validate.py checks that it is a usable key."""
        value = _field(self.backend_data, "PublicKey") if self.backend_data else None
        return value if isinstance(value, str) else None

    def vni(self) -> int | None:
        value = _field(self.backend_data, "VNI") if self.backend_data else None
        return value if type(value) is int else None


def _field(obj: dict, name: str) -> Any:
    return obj.field(name) if isinstance(obj, gojson.GoObject) else obj.get(name)


def normalize_prefix(prefix: str) -> str:
    """'/coreos.com/network/' -> '/coreos.com/network' (like Go's path.Join)."""
    cleaned = "/" + "/".join(p for p in prefix.split("/") if p)
    return cleaned


def config_key(prefix: str) -> str:
    return f"{normalize_prefix(prefix)}/config"


def subnets_prefix(prefix: str) -> str:
    return f"{normalize_prefix(prefix)}/subnets/"


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network) -> str:
    """flannel's MakeSubnetKey: 10.244.1.0/24 -> <prefix>/subnets/10.244.1.0-24."""
    return f"{subnets_prefix(prefix)}{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> ipaddress.IPv4Network | None:
    """The IPv4 subnet named by a lease key's last element; None if not one."""
    m = _KEY_RE.fullmatch(key.rsplit("/", 1)[-1])
    if m is None:
        return None
    try:
        addr = ipaddress.IPv4Address(m.group(1))
        prefixlen = int(m.group(2))
        return ipaddress.IPv4Network((addr, prefixlen))  # strict: host bits must be 0
    except ValueError:
        return None


def vxlan_backend_data(vni: int, vtep_mac: str) -> dict:
    """flannel's vxlanLeaseAttrs in Go field order: VNI, then VtepMAC."""
    return {"VNI": vni, "VtepMAC": vtep_mac.lower()}


def wireguard_backend_data(public_key: str) -> dict:
    """flannel's wireguardLeaseAttrs: {"PublicKey": base64}."""
    return {"PublicKey": public_key}


def encode_lease_value(public_ip: ipaddress.IPv4Address | str, backend_type: str = "",
                       backend_data: dict | None = None) -> str:
    """json.Marshal(LeaseAttrs) exactly: compact, Go field order, omitempty."""
    parts = [f'"PublicIP":{gojson.dumps(str(ipaddress.IPv4Address(public_ip)))}',
             '"PublicIPv6":null']
    if backend_type:
        parts.append(f'"BackendType":{gojson.dumps(backend_type)}')
    if backend_data:  # RawMessage omitempty: absent when nil/empty
        parts.append(f'"BackendData":{gojson.dumps(backend_data)}')
    return "{" + ",".join(parts) + "}"


def decode_lease_value(subnet: ipaddress.IPv4Network, raw: str | bytes,
                       expires: float | None = None) -> Lease:
    """Parse a stored value the way flannel does; LeaseDecodeError if unusable."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
    try:
        obj = gojson.loads(text)
    except ValueError as e:
        raise LeaseDecodeError(f"lease {subnet}: value is not JSON: {e}") from None
    if not isinstance(obj, gojson.GoObject):
        raise LeaseDecodeError(f"lease {subnet}: value is not a JSON object")
    public_ip = obj.field("PublicIP")
    addr = gojson.ip4(public_ip)
    if addr is None:
        raise LeaseDecodeError(f"lease {subnet}: bad or missing PublicIP {public_ip!r}")
    backend_type = obj.field("BackendType", "")
    if not isinstance(backend_type, str):
        raise LeaseDecodeError(f"lease {subnet}: BackendType is not a string")
    backend_data = obj.field("BackendData")
    if backend_data is not None and not isinstance(backend_data, dict):
        raise LeaseDecodeError(f"lease {subnet}: BackendData is not a JSON object")
    return Lease(subnet=subnet, public_ip=addr, backend_type=backend_type,
                 backend_data=backend_data, expires=expires, raw=text)
