"""What the daemon was asked to do: one frozen, validated Options object for
static and cluster mode, and every default in one place.

Static mode (`--subnet/--network/--peer`) fills in everything up front. In
cluster mode (`--etcd-endpoints`) subnet, network, backend, port and VNI
come from etcd: the cluster wiring completes the object with for_lease(),
which runs the static checks again. Every validation failure is a
ConfigError with a one-line message naming the offending value; the CLI
prints it as `udpoverlay: error: ...` and exits 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer, parse_mac

__all__ = ["Options", "build_config", "build_cluster_options", "parse_peer", "check_vni",
           "DEFAULT_IFACE", "DEFAULT_PORTS", "BACKENDS", "DEFAULT_VNI", "MAX_VNI",
           "DEFAULT_PREFIX", "DEFAULT_SUBNET_FILE", "DEFAULT_LEASE_TTL", "MIN_LEASE_TTL"]

# -- defaults (flannel's where flannel has one) ----------------------------------
DEFAULT_IFACE = "udpov0"                        # the TUN device
DEFAULT_PORTS = {"udp": 8285, "vxlan": 8472}    # flannel's udp port; the kernel's vxlan port
BACKENDS = tuple(DEFAULT_PORTS)
DEFAULT_VNI = 1
MAX_VNI = (1 << 24) - 1
DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_LEASE_TTL = 86400                       # seconds, as flannel's etcd leases
MIN_LEASE_TTL = 5
MTU_RANGE = (576, 65535)


@dataclass(frozen=True)
class Options:
    """Everything the daemon needs. public_ip None = detect it; in cluster
    mode (endpoints given) subnet and network stay None until for_lease()."""

    # both modes
    public_ip: ipaddress.IPv4Address | None = None
    underlay_iface: str | None = None
    iface: str = DEFAULT_IFACE
    mtu: int | None = None
    vtep_mac: bytes | None = None   # vxlan: None = derived, stable across restarts
    offload: bool = True            # TUN TSO/USO + UDP GSO/GRO (--no-offload: off)
    threads: bool = False           # one worker thread per direction (--threads)
    # static mode; in cluster mode these come from etcd
    subnet: ipaddress.IPv4Network | None = None
    network: ipaddress.IPv4Network | None = None
    peers: tuple[Peer, ...] = field(default_factory=tuple)
    backend: str = "udp"
    port: int = DEFAULT_PORTS["udp"]
    vni: int = DEFAULT_VNI
    # cluster mode
    endpoints: tuple[str, ...] = ()
    prefix: str = DEFAULT_PREFIX
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    subnet_file: str = DEFAULT_SUBNET_FILE
    lease_ttl: int = DEFAULT_LEASE_TTL
    ip_masq: bool = False

    @property
    def cluster(self) -> bool:
        """Cluster (etcd) mode."""
        return bool(self.endpoints)

    def with_public_ip(self, ip: str) -> "Options":
        """The same options with a detected public IP, re-validated."""
        return _checked(dataclasses.replace(self, public_ip=_ip(ip, "--public-ip")))

    def for_lease(self, *, public_ip: str, subnet: str, network: str, backend: str,
                  port: int, vni: int, vtep_mac: bytes | None) -> "Options":
        """Cluster mode: the options completed with what etcd decided."""
        return _checked(dataclasses.replace(
            self, public_ip=_ip(public_ip, "--public-ip"), subnet=_net(subnet, "subnet"),
            network=_net(network, "network"), backend=_backend(backend),
            port=_port(port, "port"), vni=check_vni(vni, "VNI"), vtep_mac=vtep_mac))


# -- value checks ----------------------------------------------------------------
def _ip(text, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(text).strip())
    except ValueError:
        raise ConfigError(f"{what}: bad IPv4 address {text!r}") from None


def _net(text, what: str) -> ipaddress.IPv4Network:
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


def _backend(value) -> str:
    backend = (value or "udp").lower()
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (choose from: {', '.join(BACKENDS)})")
    return backend


def _mtu(value) -> int | None:
    if value is None:
        return None
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--mtu: bad value {value!r}") from None
    if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        raise ConfigError(f"--mtu {mtu} out of range ({MTU_RANGE[0]}-{MTU_RANGE[1]})")
    return mtu


def _iface(value) -> str:
    iface = value or DEFAULT_IFACE
    if len(iface) > 15 or not iface.isprintable() or "/" in iface or " " in iface:
        raise ConfigError(f"--iface: bad interface name {iface!r} (at most 15 characters)")
    return iface


def _mac(value, what: str) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return parse_mac(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def check_vni(value, what: str = "--vni") -> int:
    """A VXLAN network identifier, 0..2^24-1 (flag and network config alike)."""
    try:
        vni = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: bad value {value!r}") from None
    if not 0 <= vni <= MAX_VNI:
        raise ConfigError(f"{what} {value} out of range (0-{MAX_VNI})")
    return vni


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
        mac = _mac(val, what)
    return Peer(public_ip=ip, port=port, subnet=subnet, vtep_mac=mac)


# -- whole-object checks -----------------------------------------------------------
def _checked(o: Options) -> Options:
    """Static-mode consistency: subnet in network, peers sane."""
    net, sub, pub = o.network, o.subnet, o.public_ip
    if sub is None:
        raise ConfigError("--subnet is required")
    if net is None:
        raise ConfigError("--network is required")
    if not sub.subnet_of(net):
        raise ConfigError(f"--subnet {sub} is outside --network {net}")
    if sub == net:
        raise ConfigError(f"--subnet {sub} must be smaller than --network {net}")
    seen_ips: dict[ipaddress.IPv4Address, Peer] = {}
    for p in o.peers:
        if pub is not None and p.public_ip == pub:
            raise ConfigError(f"peer {p.public_ip}={p.subnet}: that is our own --public-ip")
        if not p.subnet.subnet_of(net):
            raise ConfigError(f"peer {p.public_ip}={p.subnet}: subnet outside --network {net}")
        if p.subnet.overlaps(sub):
            raise ConfigError(f"peer {p.public_ip}={p.subnet}: overlaps our --subnet {sub}")
        if p.public_ip in seen_ips:
            raise ConfigError(f"peer {p.public_ip} given twice "
                              f"({seen_ips[p.public_ip].subnet} and {p.subnet})")
        seen_ips[p.public_ip] = p
    for i, a in enumerate(o.peers):
        for b in o.peers[i + 1:]:
            if a.subnet.overlaps(b.subnet):
                raise ConfigError(f"peer subnets overlap: {a.public_ip}={a.subnet} "
                                  f"and {b.public_ip}={b.subnet}")
    if o.backend != "vxlan" and any(p.vtep_mac for p in o.peers):
        raise ConfigError("vtep-mac in --peer only applies to --backend vxlan")
    return o


def build_config(*, public_ip: str | None, port: int | str | None, iface: str | None,
                 subnet: str | None, network: str | None, peers=(),
                 mtu: int | str | None = None, backend: str = "udp",
                 underlay_iface: str | None = None, vni=DEFAULT_VNI,
                 vtep_mac: str | bytes | None = None, offload: bool = True,
                 threads: bool = False) -> Options:
    """Static mode: validate CLI values into Options. `peers` holds strings
    in the --peer syntax or Peer objects."""
    backend = _backend(backend)
    port = DEFAULT_PORTS[backend] if port is None else _port(port, "--port")
    iface = _iface(iface)
    if subnet is None:
        raise ConfigError("--subnet is required")
    if network is None:
        raise ConfigError("--network is required")
    net = _net(network, "--network")
    sub = _net(subnet, "--subnet")
    pub = None if public_ip in (None, "") else _ip(public_ip, "--public-ip")
    mtu = _mtu(mtu)
    parsed = tuple(p if isinstance(p, Peer) else parse_peer(p, port) for p in peers or ())
    return _checked(Options(
        public_ip=pub, port=port, iface=iface, subnet=sub, network=net, peers=parsed,
        mtu=mtu, backend=backend, underlay_iface=underlay_iface, vni=check_vni(vni),
        vtep_mac=_mac(vtep_mac, "--vtep-mac"), offload=bool(offload), threads=bool(threads)))


def build_cluster_options(*, endpoints: str, prefix: str | None = None,
                          ca_file=None, cert_file=None, key_file=None,
                          subnet_file: str | None = None, lease_ttl=DEFAULT_LEASE_TTL,
                          ip_masq: bool = False, public_ip: str | None = None,
                          underlay_iface: str | None = None, iface: str | None = None,
                          mtu=None, vtep_mac: str | bytes | None = None, subnet=None,
                          network=None, peers=(), offload: bool = True,
                          threads: bool = False) -> Options:
    """Cluster (etcd) mode: validate the CLI values; subnet, network and
    peers come from etcd and must not be given."""
    if subnet or network or peers:
        raise ConfigError("--subnet, --network and --peer come from etcd; "
                          "do not give them with --etcd-endpoints")
    eps = tuple(e.strip() for e in str(endpoints).split(",") if e.strip())
    if not eps:
        raise ConfigError("--etcd-endpoints: no endpoint given")
    prefix = (prefix or DEFAULT_PREFIX).rstrip("/")
    if not prefix.startswith("/"):
        raise ConfigError(f"--etcd-prefix {prefix!r} must start with '/'")
    try:
        ttl = int(lease_ttl)
    except (TypeError, ValueError):
        raise ConfigError(f"--lease-ttl: bad value {lease_ttl!r}") from None
    if ttl < MIN_LEASE_TTL:
        raise ConfigError(f"--lease-ttl {ttl} too small (at least {MIN_LEASE_TTL} s)")
    if (cert_file is None) != (key_file is None):
        raise ConfigError("--etcd-certfile and --etcd-keyfile go together")
    pub = None if public_ip in (None, "") else _ip(public_ip, "--public-ip")
    return Options(endpoints=eps, prefix=prefix, ca_file=ca_file, cert_file=cert_file,
                   key_file=key_file, subnet_file=subnet_file or DEFAULT_SUBNET_FILE,
                   lease_ttl=ttl, ip_masq=bool(ip_masq), public_ip=pub,
                   underlay_iface=underlay_iface, iface=_iface(iface), mtu=_mtu(mtu),
                   vtep_mac=_mac(vtep_mac, "--vtep-mac"), offload=bool(offload),
                   threads=bool(threads))
