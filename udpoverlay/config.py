"""Run configuration: a frozen RunConfig built and validated from CLI values.

Every validation failure is a ConfigError with a one-line message naming the
offending value; the CLI prints it as `udpoverlay: error: ...` and exits 2.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from udpoverlay.errors import ConfigError
from udpoverlay.peers import Peer, parse_mac

__all__ = ["RunConfig", "parse_peer", "build_config", "DEFAULT_PORTS",
           "DEFAULT_IFACE", "BACKENDS"]

DEFAULT_IFACE = "udpov0"
DEFAULT_PORTS = {"udp": 8285, "vxlan": 8472}
BACKENDS = ("udp", "vxlan")


@dataclass(frozen=True)
class RunConfig:
    """Everything the daemon needs; public_ip may be None (= detect it)."""

    public_ip: ipaddress.IPv4Address | None
    port: int
    iface: str
    subnet: ipaddress.IPv4Network
    network: ipaddress.IPv4Network
    peers: tuple[Peer, ...] = field(default_factory=tuple)
    mtu: int | None = None
    backend: str = "udp"
    underlay_iface: str | None = None
    vni: int = 1
    vtep_mac: bytes | None = None   # vxlan: None = derived from public IP + subnet
    offload: bool = True            # TUN TSO/USO + UDP GSO/GRO (--no-offload: off)
    threads: bool = False           # one worker thread per direction (--threads)

    def with_public_ip(self, ip: str) -> "RunConfig":
        """The same config with a detected public IP, re-validated."""
        return build_config(public_ip=ip, port=self.port, iface=self.iface,
                            subnet=str(self.subnet), network=str(self.network),
                            peers=self.peers, mtu=self.mtu, backend=self.backend,
                            underlay_iface=self.underlay_iface, vni=self.vni,
                            vtep_mac=self.vtep_mac, offload=self.offload,
                            threads=self.threads)


def _ip(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(text).strip())
    except ValueError:
        raise ConfigError(f"{what}: bad IPv4 address {text!r}") from None


def _net(text: str, what: str) -> ipaddress.IPv4Network:
    text = str(text).strip()
    if "/" not in text:
        raise ConfigError(f"{what}: bad CIDR {text!r} (expected ADDRESS/PREFIX)")
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ConfigError(f"{what}: {text!r} has host bits set "
                              f"(did you mean {ipaddress.IPv4Network(text, strict=False)}?)") from None
        raise ConfigError(f"{what}: bad CIDR {text!r}") from None


def _port(value, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: bad port {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{what}: bad port {value!r} (1-65535)")
    return port


def parse_peer(text: str, default_port: int) -> Peer:
    """`PUBLIC_IP[:PORT]=SUBNET[,vtep-mac=MAC]` -> Peer; ConfigError if bad."""
    what = f"--peer {text!r}"
    if "=" not in text:
        raise ConfigError(f"{what}: expected PUBLIC_IP[:PORT]=SUBNET")
    left, right = text.split("=", 1)
    left = left.strip()
    if ":" in left:
        host, port_text = left.rsplit(":", 1)
        port = _port(port_text, what)
    else:
        host, port = left, default_port
    ip = _ip(host, what)
    parts = right.split(",")
    subnet = _net(parts[0], what)
    mac = None
    for opt in parts[1:]:
        key, _, val = opt.partition("=")
        if key.strip() != "vtep-mac" or not val:
            raise ConfigError(f"{what}: unknown option {opt!r} (only vtep-mac=MAC)")
        try:
            mac = parse_mac(val)
        except ValueError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    return Peer(public_ip=ip, port=port, subnet=subnet, vtep_mac=mac)


def build_config(*, public_ip: str | None, port: int | None, iface: str | None,
                 subnet: str | None, network: str | None, peers=(),
                 mtu: int | None = None, backend: str = "udp",
                 underlay_iface: str | None = None, vni=1,
                 vtep_mac: str | bytes | None = None, offload: bool = True,
                 threads: bool = False) -> RunConfig:
    """Validate CLI values into a RunConfig. `peers` holds strings in the
    --peer syntax or Peer objects."""
    backend = (backend or "udp").lower()
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (choose from: {', '.join(BACKENDS)})")
    port = DEFAULT_PORTS[backend] if port is None else _port(port, "--port")
    iface = iface or DEFAULT_IFACE
    if len(iface) > 15 or not iface.isprintable() or "/" in iface or " " in iface:
        raise ConfigError(f"--iface: bad interface name {iface!r} (at most 15 characters)")
    if subnet is None:
        raise ConfigError("--subnet is required")
    if network is None:
        raise ConfigError("--network is required")
    net = _net(network, "--network")
    sub = _net(subnet, "--subnet")
    if not sub.subnet_of(net):
        raise ConfigError(f"--subnet {sub} is outside --network {net}")
    if sub == net:
        raise ConfigError(f"--subnet {sub} must be smaller than --network {net}")
    pub = None if public_ip in (None, "") else _ip(public_ip, "--public-ip")
    if mtu is not None:
        try:
            mtu = int(mtu)
        except (TypeError, ValueError):
            raise ConfigError(f"--mtu: bad value {mtu!r}") from None
        if not 576 <= mtu <= 65535:
            raise ConfigError(f"--mtu {mtu} out of range (576-65535)")
    parsed: list[Peer] = []
    for p in peers or ():
        parsed.append(p if isinstance(p, Peer) else parse_peer(p, port))
    seen_ips: dict[str, Peer] = {}
    for p in parsed:
        if pub is not None and p.public_ip == pub:
            raise ConfigError(f"peer {p.public_ip}={p.subnet}: that is our own --public-ip")
        if not p.subnet.subnet_of(net):
            raise ConfigError(f"peer {p.public_ip}={p.subnet}: subnet outside --network {net}")
        if p.subnet.overlaps(sub):
            raise ConfigError(f"peer {p.public_ip}={p.subnet}: overlaps our --subnet {sub}")
        key = str(p.public_ip)
        if key in seen_ips:
            raise ConfigError(f"peer {p.public_ip} given twice "
                              f"({seen_ips[key].subnet} and {p.subnet})")
        seen_ips[key] = p
    for i, a in enumerate(parsed):
        for b in parsed[i + 1:]:
            if a.subnet.overlaps(b.subnet):
                raise ConfigError(f"peer subnets overlap: {a.public_ip}={a.subnet} "
                                  f"and {b.public_ip}={b.subnet}")
    try:
        vni = int(vni)
    except (TypeError, ValueError):
        raise ConfigError(f"--vni: bad value {vni!r}") from None
    if not 0 <= vni < 1 << 24:
        raise ConfigError(f"--vni {vni} out of range (0-16777215)")
    if isinstance(vtep_mac, str):
        try:
            vtep_mac = parse_mac(vtep_mac)
        except ValueError as exc:
            raise ConfigError(f"--vtep-mac: {exc}") from None
    if backend != "vxlan" and any(p.vtep_mac for p in parsed):
        raise ConfigError("vtep-mac in --peer only applies to --backend vxlan")
    return RunConfig(public_ip=pub, port=port, iface=iface, subnet=sub,
                     network=net, peers=tuple(parsed), mtu=mtu, backend=backend,
                     underlay_iface=underlay_iface, vni=vni, vtep_mac=vtep_mac,
                     offload=bool(offload), threads=bool(threads))
