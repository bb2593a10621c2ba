"""flannel's network config (`<prefix>/config` in etcd), parsed and checked.

Why a copy of flannel's rules: udpoverlay nodes share the etcd store with
flannel nodes, so they must read the same JSON the same way and derive the
same defaults, or two nodes would disagree about the subnet range. The rules
are flannel's ParseConfig + CheckNetworkConfig (pkg/subnet/config.go):

- No `Backend` -> backend type "udp". EnableIPv4 defaults to true.
- SubnetLen unset: Network /22 or shorter -> 24; longer -> prefix + 2;
  longer than /28 is rejected. SubnetLen set: <= 30 and >= prefix + 2.
- SubnetMin unset -> Network + one subnet (the first subnet is skipped);
  SubnetMax unset -> the last subnet. Both must lie in Network and sit on a
  SubnetLen boundary.
- Backend.Port: udp 8285, vxlan 8472 (the kernel's default) when unset or 0.
  Backend.VNI: 1 when unset. Backend.MTU (0/unset: from the underlay) sets
  the TUN MTU unless --mtu is given; Backend.DirectRouting (vxlan) and the
  top-level EnableNFTables are booleans, false when unset.

- wireguard (flannel's pkg/backend/wireguard): Backend.ListenPort (51820)
  is our port and every peer's (the lease has none), ListenPortV6 (51821)
  is read and checked only, PSK (none) a base64 `wg genpsk` key mixed into
  every handshake, PersistentKeepaliveInterval (0, seconds), Mode
  (separate). separate and ipv4 run the IPv4 overlay; auto is ipv4 while
  the overlay is IPv4-only; ipv6 and EnableIPv6 are refused (no IPv6
  overlay here). A malformed PSK is one error that never repeats it; the
  key itself lives in a PresharedKey, which prints nothing secret.

Beyond flannel: IPv6-only configs and backends other than udp/vxlan/
wireguard are rejected with a clear ConfigError (udpoverlay is IPv4), and
SubnetMin > SubnetMax is rejected up front instead of failing at allocation.
Every error is one line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from udpoverlay.cluster import gojson
from udpoverlay.config import values
from udpoverlay.config.defaults import BACKENDS, DEFAULT_PORTS, DEFAULT_VNI, MAX_KEEPALIVE
from udpoverlay.errors import ConfigError
from udpoverlay.wireguard.keys import BadKeyError, PresharedKey, parse_preshared_key

__all__ = ["NetworkConfig", "parse_network_config", "CLUSTER_BACKENDS", "WG_MODES",
           "WG_LISTEN_PORT_V6"]

CLUSTER_BACKENDS = (*BACKENDS, "wireguard")
WG_MODES = ("separate", "auto", "ipv4", "ipv6")
WG_LISTEN_PORT_V6 = 51821


@dataclass(frozen=True)
class NetworkConfig:
    """The cluster-wide overlay settings, with flannel's defaults filled in."""

    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend_type: str = "udp"
    backend_port: int = DEFAULT_PORTS["udp"]
    vni: int = DEFAULT_VNI
    enable_ipv6: bool = False
    ipv6_network: ipaddress.IPv6Network | None = None
    mtu: int | None = None          # Backend.MTU; None = from the underlay interface
    direct_routing: bool = False    # Backend.DirectRouting (vxlan)
    enable_nftables: bool = False   # EnableNFTables: flanneld's nftables rules
    # wireguard: Backend.ListenPort is backend_port; these are the rest
    wg_listen_port_v6: int = WG_LISTEN_PORT_V6
    wg_keepalive: int = 0           # Backend.PersistentKeepaliveInterval, seconds
    wg_mode: str = "separate"
    wg_psk: PresharedKey | None = field(default=None, repr=False, hash=False)

    @classmethod
    def parse(cls, text: str | bytes) -> "NetworkConfig":
        return parse_network_config(text)

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    def contains_subnet(self, subnet: ipaddress.IPv4Network) -> bool:
        """flannel's isSubnetConfigCompat: right length, between min and max."""
        return (subnet.prefixlen == self.subnet_len
                and self.subnet_min <= subnet.network_address <= self.subnet_max)

    def subnets(self) -> Iterator[ipaddress.IPv4Network]:
        """Every allocatable subnet, SubnetMin .. SubnetMax in order."""
        first, last = int(self.subnet_min), int(self.subnet_max)
        for addr in range(first, last + 1, self.subnet_size):
            yield ipaddress.IPv4Network((addr, self.subnet_len))

    def subnet_count(self) -> int:
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1


def _get(obj: gojson.GoObject, name: str, ok: Callable[[Any], bool], want: str,
         where: str = "") -> Any:
    """The field's value (None if unset/null), or ConfigError if not `want`."""
    value = obj.field(name)
    if value is not None and not ok(value):
        raise ConfigError(f"{where}{name} must be {want}, got {value!r}")
    return value


def _uint(obj: gojson.GoObject, name: str, where: str = "") -> int | None:
    return _get(obj, name, lambda v: type(v) is int and v >= 0, "a non-negative integer", where)


def _bool(obj: gojson.GoObject, name: str, default: bool) -> bool:
    value = _get(obj, name, lambda v: isinstance(v, bool), "true or false")
    return default if value is None else value


def _cidr(obj: gojson.GoObject, name: str, version: int) -> Any:
    """Go's net.ParseCIDR: needs a '/', masks host bits."""
    value = _get(obj, name, lambda v: isinstance(v, str) and "/" in v,
                 'a CIDR string like "10.244.0.0/16"')
    if value is None:
        return None
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(f"{name} is not a valid CIDR: {value!r}") from None
    if net.version != version:
        raise ConfigError(f"{name} must be an IPv{version} network, got {value!r}")
    return net


def _ip4(obj: gojson.GoObject, name: str) -> ipaddress.IPv4Address | None:
    value = obj.field(name)
    addr = gojson.ip4(value)
    if value is not None and addr is None:
        raise ConfigError(f"{name} must be an IPv4 address string, got {value!r}")
    return None if addr is None or int(addr) == 0 else addr  # Go's zero value means "unset"


def _subnet_len(network: ipaddress.IPv4Network, given: int | None) -> int:
    if given:  # 0 means unset, as in Go
        if given > 30:
            raise ConfigError(f"SubnetLen must be at most 30, got {given}")
        if given < network.prefixlen + 2:
            raise ConfigError(f"SubnetLen {given} too short: Network {network} must hold at "
                              f"least four subnets (SubnetLen >= {network.prefixlen + 2})")
        return given
    if network.prefixlen > 28:
        raise ConfigError(f"Network {network} is too small: the minimum useful prefix is /28")
    return 24 if network.prefixlen <= 22 else network.prefixlen + 2


def _bound(network: ipaddress.IPv4Network, subnet_len: int, name: str,
           given: ipaddress.IPv4Address | None,
           default: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    if given is None:
        return default
    if given not in network:
        raise ConfigError(f"{name} {given} is not in the range of Network {network}")
    if int(given) % (1 << (32 - subnet_len)):
        raise ConfigError(f"{name} {given} is not on a SubnetLen (/{subnet_len}) boundary")
    return given


@dataclass(frozen=True)
class _Backend:
    kind: str = "udp"
    port: int = DEFAULT_PORTS["udp"]
    vni: int = DEFAULT_VNI
    mtu: int | None = None
    direct: bool = False
    port_v6: int = WG_LISTEN_PORT_V6
    keepalive: int = 0
    mode: str = "separate"
    psk: PresharedKey | None = field(default=None, repr=False)


def _port(backend: gojson.GoObject, name: str, default: int) -> int:
    port = _uint(backend, name, "Backend.") or default
    if port > 65535:
        raise ConfigError(f"Backend.{name} must be 1..65535, got {port}")
    return port


def _wireguard(backend: gojson.GoObject, enable_ipv6: bool) -> dict:
    """flannel's wireguard fields; ConfigError for what udpoverlay cannot do."""
    mode = _get(backend, "Mode", lambda v: isinstance(v, str), "a string", "Backend.") or "separate"
    if mode not in WG_MODES:
        raise ConfigError(f"Backend.Mode must be one of {', '.join(WG_MODES)}, got {mode!r}")
    if mode == "ipv6":
        raise ConfigError("Backend.Mode \"ipv6\" needs an IPv6 overlay, which udpoverlay does "
                          "not have (use \"separate\", \"ipv4\" or \"auto\")")
    if enable_ipv6:
        raise ConfigError("EnableIPv6 with the wireguard backend needs an IPv6 overlay, which "
                          "udpoverlay does not have (set EnableIPv6 to false)")
    keepalive = _uint(backend, "PersistentKeepaliveInterval", "Backend.") or 0
    if keepalive > MAX_KEEPALIVE:
        raise ConfigError(f"Backend.PersistentKeepaliveInterval must be 0..{MAX_KEEPALIVE} "
                          f"seconds, got {keepalive}")
    text = backend.field("PSK")
    psk = None
    if text is not None and text != "":
        if not isinstance(text, str):
            raise ConfigError("Backend.PSK must be a base64 key string (`wg genpsk`)")
        try:
            psk = parse_preshared_key(text, "Backend.PSK")
        except BadKeyError as exc:       # the message never repeats the key
            raise ConfigError(f"{exc} (expected `wg genpsk` output)") from None
    return {"port": _port(backend, "ListenPort", DEFAULT_PORTS["wireguard"]),
            "port_v6": _port(backend, "ListenPortV6", WG_LISTEN_PORT_V6),
            "keepalive": keepalive, "mode": mode, "psk": psk}


def _backend(obj: gojson.GoObject, enable_ipv6: bool) -> _Backend:
    backend = obj.field("Backend")
    if backend is None:
        return _Backend()
    if not isinstance(backend, gojson.GoObject):
        raise ConfigError(f"Backend must be a JSON object, got {backend!r}")
    kind = backend.field("Type")
    if not kind:
        raise ConfigError("Backend.Type is missing (e.g. \"udp\" or \"vxlan\")")
    if kind not in CLUSTER_BACKENDS:
        raise ConfigError(f"Backend.Type {kind!r} is not supported by udpoverlay "
                          f"(supported: {', '.join(CLUSTER_BACKENDS)})")
    mtu = _uint(backend, "MTU", "Backend.") or None      # 0 means unset, as in Go
    if kind == "wireguard":
        return _Backend(kind, mtu=values.mtu(mtu, "Backend.MTU"),
                        **_wireguard(backend, enable_ipv6))
    port = _port(backend, "Port", DEFAULT_PORTS[kind])
    vni = _uint(backend, "VNI", "Backend.")
    vni = DEFAULT_VNI if vni is None else values.vni(vni, "Backend.VNI")
    direct = _get(backend, "DirectRouting", lambda v: isinstance(v, bool), "true or false",
                  "Backend.")
    return _Backend(kind, port, vni, values.mtu(mtu, "Backend.MTU"), bool(direct))


def parse_network_config(text: str | bytes) -> NetworkConfig:
    """Parse `<prefix>/config` JSON; ConfigError with a one-line reason."""
    try:
        obj = gojson.loads(text)
    except ValueError as e:
        raise ConfigError(f"network config is not valid JSON: {e}") from None
    if not isinstance(obj, gojson.GoObject):
        raise ConfigError("network config must be a JSON object")
    enable_ipv4 = _bool(obj, "EnableIPv4", True)
    enable_ipv6 = _bool(obj, "EnableIPv6", False)
    if not enable_ipv4:
        raise ConfigError("EnableIPv4 is false: IPv6-only networks are not supported "
                          "(udpoverlay is IPv4 only)")
    ipv6_network = _cidr(obj, "IPv6Network", 6)
    network = _cidr(obj, "Network", 4)
    if network is None or network.prefixlen == 0:
        raise ConfigError("Network is missing: define e.g. \"Network\": \"10.244.0.0/16\"")
    if enable_ipv6 and ipv6_network is None:
        raise ConfigError("EnableIPv6 is true but IPv6Network is missing")
    subnet_len = _subnet_len(network, _uint(obj, "SubnetLen"))
    size = 1 << (32 - subnet_len)
    subnet_min = _bound(network, subnet_len, "SubnetMin", _ip4(obj, "SubnetMin"),
                        network.network_address + size)
    subnet_max = _bound(network, subnet_len, "SubnetMax", _ip4(obj, "SubnetMax"),
                        ipaddress.IPv4Address(int(network.broadcast_address) + 1 - size))
    if subnet_min > subnet_max:
        raise ConfigError(f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}")
    b = _backend(obj, enable_ipv6)
    return NetworkConfig(network=network, subnet_len=subnet_len, subnet_min=subnet_min,
                         subnet_max=subnet_max, backend_type=b.kind, backend_port=b.port,
                         vni=b.vni, enable_ipv6=enable_ipv6, ipv6_network=ipv6_network,
                         mtu=b.mtu, direct_routing=b.direct,
                         enable_nftables=_bool(obj, "EnableNFTables", False),
                         wg_listen_port_v6=b.port_v6, wg_keepalive=b.keepalive,
                         wg_mode=b.mode, wg_psk=b.psk)
