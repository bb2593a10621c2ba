"""What the daemon was asked to do: one frozen, validated Options object for
static and cluster mode, and every default in one place.

Static mode (`--subnet/--network/--peer`) fills in everything up front. In
cluster mode (`--etcd-endpoints`) subnet, network, backend, port, VNI (and
MTU, DirectRouting, EnableNFTables) come from etcd: giving those flags is an
error, and the cluster wiring completes the object with for_lease(), which
runs the static checks again. Flag meanings follow flanneld: `iface`
(`--iface`) is the UNDERLAY interface, the TUN has its own `tun`; the data
socket binds `bind_ip` (the chosen interface's address) while `public_ip` is
only what is advertised (1:1 NAT). Every validation failure is a ConfigError
with a one-line message naming the offending value; the CLI prints it as
`udpoverlay: error: ...` and exits 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from udpoverlay import values
from udpoverlay.dataplane.wire import IO_MODES, MAX_QUEUES
from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer, PeerSpec
from udpoverlay.static.checks import check_host, check_peer_addresses, check_peer_specs

__all__ = ["Options", "build_config", "build_cluster_options", "parse_peer", "parse_peer_spec",
           "check_keepalive", "check_vni",
           "check_mtu", "DEFAULT_TUN", "DEFAULT_PORTS", "BACKENDS", "DEFAULT_VNI", "MAX_VNI",
           "DEFAULT_PREFIX", "DEFAULT_SUBNET_FILE", "DEFAULT_LEASE_TTL", "MIN_LEASE_TTL",
           "DEFAULT_RENEW_MARGIN_MIN", "DEFAULT_IPTABLES_RESYNC", "DEFAULT_HEALTHZ_IP",
           "LOG_FORMATS", "IO_MODES", "DEFAULT_IO_MODE", "DEFAULT_RESOLVE_INTERVAL",
           "MAX_KEEPALIVE", "MAX_QUEUES"]

# -- defaults (flannel's where flannel has one) ----------------------------------
DEFAULT_TUN = "udpov0"                          # the TUN device
DEFAULT_PORTS = {"udp": 8285, "vxlan": 8472}    # flannel's udp port; the kernel's vxlan port
BACKENDS = tuple(DEFAULT_PORTS)
DEFAULT_VNI = 1
MAX_VNI = (1 << 24) - 1
DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_LEASE_TTL = 86400                       # seconds, as flannel's etcd leases
MIN_LEASE_TTL = 5
DEFAULT_RENEW_MARGIN_MIN = 60                   # minutes, flanneld's --subnet-lease-renew-margin
RENEW_MARGIN_RANGE = (1, 1439)                  # minutes, as flanneld checks it
DEFAULT_IPTABLES_RESYNC = 5                     # seconds
DEFAULT_HEALTHZ_IP = "0.0.0.0"
LOG_FORMATS = ("text", "json")
DEFAULT_IO_MODE = "auto"
DEFAULT_RESOLVE_INTERVAL = 60.0
MAX_KEEPALIVE = 3600
MAX_BUSY_POLL_US = 10000
MTU_RANGE = (576, 65535)


@dataclass(frozen=True)
class Options:
    """Everything the daemon needs. public_ip/bind_ip None = detect them
    (host/interfaces.choose_underlay); in cluster mode (endpoints given)
    subnet and network stay None until for_lease()."""

    # both modes: the underlay (flanneld's --iface/--iface-regex/--iface-can-reach)
    public_ip: ipaddress.IPv4Address | None = None   # advertised (lease, peers' view)
    bind_ip: ipaddress.IPv4Address | None = None     # the chosen interface's own address
    ifaces: tuple[str, ...] = ()                     # names or IPv4 addresses, in order
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: ipaddress.IPv4Address | None = None
    tun: str = DEFAULT_TUN
    mtu: int | None = None
    vtep_mac: bytes | None = None   # vxlan: None = derived, stable across restarts
    offload: bool = True            # TUN vnet header + TSO/USO (--no-offload: off)
    udp_offload: bool = True        # underlay UDP GSO/GRO (--no-udp-offload: off)
    threads: bool = False           # one worker thread per direction (--threads)
    queues: int = 1                 # TUN queues, a worker pair each (--queues; > 1: threads)
    direct_routing: bool = False    # vxlan: plain routes to directly connected peers
    # node rules (flanneld's): masquerade, FORWARD accepts, their resync period
    ip_masq: bool = False
    iptables_forward_rules: bool = True
    iptables_resync: int = DEFAULT_IPTABLES_RESYNC
    ip_masq_fully_random_disable: bool = False
    ip_blackhole_route: bool = False
    healthz_ip: str = DEFAULT_HEALTHZ_IP
    healthz_port: int = 0           # 0 = off
    verbosity: int = 0              # -v N
    log_format: str = "text"        # text | json (--log-format)
    env_file: str | None = None     # FLANNELD_* settings re-read on SIGHUP (--env-file)
    io_mode: str = DEFAULT_IO_MODE  # TUN I/O: auto | io_uring | epoll (--io)
    busy_poll_us: int = 0           # poll this long after a drain before sleeping; 0 = off
    # static peers (laptops): a TOML peers file, name resolution, NAT keepalives
    peers_file: str | None = None
    resolve_interval: float = DEFAULT_RESOLVE_INTERVAL   # seconds
    strict_peers: bool = False      # a peer name that does not resolve at start: error
    keepalive: int = 0              # seconds; 0 = off
    # static mode, laptops: bind 0.0.0.0 (nothing pinned the address), so the
    # kernel picks the source per packet and an address change needs no rebind
    bind_any: bool = False
    # static mode; in cluster mode these come from etcd
    subnet: ipaddress.IPv4Network | None = None
    network: ipaddress.IPv4Network | None = None
    peers: tuple[Peer, ...] = field(default_factory=tuple)   # resolved: what the engine gets
    # every --peer as given (names and literals); static mode resolves the
    # names (static/names.py) and merges the peers file
    peer_specs: tuple[PeerSpec, ...] = field(default_factory=tuple)
    backend: str = "udp"
    port: int = DEFAULT_PORTS["udp"]
    vni: int = DEFAULT_VNI
    enable_nftables: bool = False
    # cluster mode
    endpoints: tuple[str, ...] = ()
    prefix: str = DEFAULT_PREFIX
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    etcd_username: str | None = None
    etcd_password: str | None = None
    subnet_file: str = DEFAULT_SUBNET_FILE
    lease_ttl: int = DEFAULT_LEASE_TTL
    renew_margin: int = DEFAULT_RENEW_MARGIN_MIN * 60   # seconds

    @property
    def cluster(self) -> bool:
        """Cluster (etcd) mode."""
        return bool(self.endpoints)

    def with_underlay(self, bind_ip: str, public_ip: str | None = None) -> "Options":
        """The same options with the detected underlay: the address to bind
        and, unless --public-ip was given, the address to advertise."""
        pub = self.public_ip if public_ip is None else values.ip(public_ip, "--public-ip")
        bind = values.ip(bind_ip, "underlay address")
        changed = dataclasses.replace(self, bind_ip=bind, public_ip=pub or bind)
        return changed if self.cluster and self.subnet is None else _checked(changed)

    def for_lease(self, *, public_ip: str, subnet: str, network: str, backend: str,
                  port: int, vni: int, vtep_mac: bytes | None) -> "Options":
        """Cluster mode: the options completed with what etcd decided."""
        return _checked(dataclasses.replace(
            self, public_ip=values.ip(public_ip, "--public-ip"),
            subnet=values.net(subnet, "subnet"),
            network=values.net(network, "network"), backend=_backend(backend),
            port=values.port(port, "port"), vni=check_vni(vni, "VNI"), vtep_mac=vtep_mac))


# -- value checks ----------------------------------------------------------------
def _backend(value) -> str:
    backend = (value or "udp").lower()
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (choose from: {', '.join(BACKENDS)})")
    return backend


def check_mtu(value, what: str = "--mtu") -> int | None:
    """A TUN MTU (flag or Backend.MTU); None = from the underlay."""
    if value is None:
        return None
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: bad value {value!r}") from None
    if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        raise ConfigError(f"{what} {mtu} out of range ({MTU_RANGE[0]}-{MTU_RANGE[1]})")
    return mtu


def _tun(value) -> str:
    tun = value or DEFAULT_TUN
    if len(tun) > 15 or not tun.isprintable() or "/" in tun or " " in tun:
        raise ConfigError(f"--tun: bad interface name {tun!r} (at most 15 characters)")
    return tun


def _common(*, public_ip=None, tun=None, iface=(), iface_regex=(), iface_can_reach=None,
            mtu=None, vtep_mac=None, offload=True, udp_offload=True, threads=False, queues=1,
            direct_routing=False, ip_masq=False, iptables_forward_rules=True,
            iptables_resync=DEFAULT_IPTABLES_RESYNC, ip_masq_fully_random_disable=False,
            ip_blackhole_route=False, healthz_ip=DEFAULT_HEALTHZ_IP, healthz_port=0,
            verbosity=0, log_format="text", env_file=None, io_mode=DEFAULT_IO_MODE,
            peers_file=None, resolve_interval=DEFAULT_RESOLVE_INTERVAL, strict_peers=False,
            keepalive=0, busy_poll_us=0) -> dict:
    """The flags both modes share, validated into Options fields."""
    if isinstance(iface, str):
        iface = [iface]
    return dict(
        public_ip=None if public_ip in (None, "") else values.ip(public_ip, "--public-ip"),
        tun=_tun(tun), ifaces=values.ifaces(iface), iface_regex=values.regexes(iface_regex),
        iface_can_reach=None if iface_can_reach in (None, "")
        else values.ip(iface_can_reach, "--iface-can-reach"),
        mtu=check_mtu(mtu), vtep_mac=values.mac(vtep_mac, "--vtep-mac"), offload=bool(offload),
        udp_offload=bool(udp_offload),
        threads=bool(threads) or values.integer(queues or 1, "--queues", 1, MAX_QUEUES) > 1,
        queues=values.integer(queues or 1, "--queues", 1, MAX_QUEUES),
        direct_routing=bool(direct_routing), ip_masq=bool(ip_masq),
        iptables_forward_rules=bool(iptables_forward_rules),
        iptables_resync=values.integer(iptables_resync, "--iptables-resync", 1, 86400),
        ip_masq_fully_random_disable=bool(ip_masq_fully_random_disable),
        ip_blackhole_route=bool(ip_blackhole_route),
        healthz_ip=str(values.ip(healthz_ip or DEFAULT_HEALTHZ_IP, "--healthz-ip")),
        healthz_port=values.integer(healthz_port or 0, "--healthz-port", 0, 65535),
        verbosity=values.integer(verbosity or 0, "-v", 0, 10),
        log_format=values.choice(log_format or "text", "--log-format", LOG_FORMATS),
        env_file=env_file or None,
        io_mode=values.choice(io_mode or DEFAULT_IO_MODE, "--io", IO_MODES),
        peers_file=peers_file or None,
        resolve_interval=_seconds(resolve_interval, "--resolve-interval", 1, 86400),
        strict_peers=bool(strict_peers),
        keepalive=values.integer(keepalive or 0, "--keepalive", 0, MAX_KEEPALIVE),
        busy_poll_us=values.integer(busy_poll_us or 0, "--busy-poll-us", 0, MAX_BUSY_POLL_US))


def _seconds(value, what: str, low: float, high: float) -> float:
    if value is None or value == "":
        return DEFAULT_RESOLVE_INTERVAL
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{what}: bad number of seconds {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{what} {number:g} out of range ({low:g}-{high:g} s)")
    return number


def check_vni(value, what: str = "--vni") -> int:
    """A VXLAN network identifier, 0..2^24-1 (flag and network config alike)."""
    try:
        vni = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: bad value {value!r}") from None
    if not 0 <= vni <= MAX_VNI:
        raise ConfigError(f"{what} {value} out of range (0-{MAX_VNI})")
    return vni


def check_keepalive(value, what: str) -> int:
    return values.integer(value, what, 0, MAX_KEEPALIVE)


def parse_peer_spec(text: str, default_port: int) -> PeerSpec:
    """`HOST[:PORT]=SUBNET[,vtep-mac=MAC][,keepalive=N]` -> PeerSpec (HOST:
    a DNS name or an IPv4 address); ConfigError if bad."""
    what = f"--peer {text!r}"
    if "=" not in text:
        raise ConfigError(f"{what}: expected HOST[:PORT]=SUBNET (e.g. PUBLIC_IP=SUBNET)")
    left, right = text.split("=", 1)
    left = left.strip()
    if ":" in left:
        host, port_text = left.rsplit(":", 1)
        port = values.port(port_text, what)
    else:
        host, port = left, default_port
    host = check_host(host, what)
    parts = right.split(",")
    subnet = values.net(parts[0], what)
    mac, keepalive = None, None
    for opt in parts[1:]:
        key, _, val = opt.partition("=")
        key = key.strip()
        if key == "vtep-mac" and val:
            mac = values.mac(val, what)
        elif key == "keepalive" and val:
            keepalive = check_keepalive(val, what + " keepalive")
        else:
            raise ConfigError(f"{what}: unknown option {opt!r} (vtep-mac=MAC, keepalive=SECONDS)")
    return PeerSpec(host=host, port=port, subnet=subnet, vtep_mac=mac, keepalive=keepalive)


def parse_peer(text: str, default_port: int) -> Peer:
    """`PUBLIC_IP[:PORT]=SUBNET[,...]` -> Peer; ConfigError if bad or a name."""
    spec = parse_peer_spec(text, default_port)
    if spec.literal is None:
        raise ConfigError(f"--peer {text!r}: {spec.host!r} is a name; resolve it first")
    return spec.resolved(spec.literal)


def _spec_of(p: Peer | PeerSpec | str, port: int) -> PeerSpec:
    if isinstance(p, PeerSpec):
        return p
    if isinstance(p, Peer):
        return PeerSpec(str(p.public_ip), p.port, p.subnet, p.vtep_mac, p.keepalive)
    return parse_peer_spec(p, port)


# -- whole-object checks -----------------------------------------------------------
def _checked(o: Options) -> Options:
    """Static-mode consistency: subnet in network, peers sane."""
    net, sub = o.network, o.subnet
    if sub is None:
        raise ConfigError("--subnet is required")
    if net is None:
        raise ConfigError("--network is required")
    if not sub.subnet_of(net):
        raise ConfigError(f"--subnet {sub} is outside --network {net}")
    if sub == net:
        raise ConfigError(f"--subnet {sub} must be smaller than --network {net}")
    check_peer_specs(o.peer_specs or [_spec_of(p, o.port) for p in o.peers], sub, net, o.backend)
    check_peer_addresses(o.peers, o.public_ip, o.backend)
    return o


def build_config(*, subnet: str | None, network: str | None, peers=(),
                 port: int | str | None = None, backend: str | None = None, vni=None,
                 enable_nftables: bool = False, **common) -> Options:
    """Static mode: validate CLI values into Options. `peers` holds strings
    in the --peer syntax or Peer objects; `common` the flags of both modes
    (see _common: public_ip, tun, iface, mtu, ...)."""
    backend = _backend(backend)
    port = DEFAULT_PORTS[backend] if port is None else values.port(port, "--port")
    shared = _common(**common)
    if subnet is None:
        raise ConfigError("--subnet is required")
    if network is None:
        raise ConfigError("--network is required")
    net = values.net(network, "--network")
    sub = values.net(subnet, "--subnet")
    if shared["direct_routing"] and backend != "vxlan":
        raise ConfigError("--direct-routing only applies to --backend vxlan")
    given = [(p, _spec_of(p, port)) for p in peers or ()]
    specs = tuple(s for _, s in given)
    resolved = tuple(p if isinstance(p, Peer) else s.resolved(s.literal)
                     for p, s in given if s.literal is not None)
    return _checked(Options(subnet=sub, network=net, peers=resolved, peer_specs=specs,
                            port=port, backend=backend,
                            vni=check_vni(DEFAULT_VNI if vni is None else vni),
                            enable_nftables=bool(enable_nftables), **shared))


# Flags whose value etcd's network config decides in cluster mode.
_FROM_ETCD = (("subnet", "--subnet"), ("network", "--network"), ("peers", "--peer"),
              ("backend", "--backend"), ("port", "--port"), ("vni", "--vni"),
              ("enable_nftables", "--enable-nftables"))


def build_cluster_options(*, endpoints: str, prefix: str | None = None,
                          ca_file=None, cert_file=None, key_file=None,
                          etcd_username: str | None = None, etcd_password: str | None = None,
                          subnet_file: str | None = None, lease_ttl=DEFAULT_LEASE_TTL,
                          renew_margin=DEFAULT_RENEW_MARGIN_MIN, subnet=None, network=None,
                          peers=(), backend=None, port=None, vni=None, enable_nftables=None,
                          **common) -> Options:
    """Cluster (etcd) mode: validate the CLI values (renew_margin in
    minutes, as the flag); what etcd decides must not be given."""
    given = dict(subnet=subnet, network=network, peers=peers, backend=backend, port=port,
                 vni=vni, enable_nftables=enable_nftables)
    named = [flag for key, flag in _FROM_ETCD if given[key] not in (None, "", (), [], False)]
    named += [flag for key, flag in (("peers_file", "--peers-file"),
                                     ("strict_peers", "--strict-peers")) if common.get(key)]
    if named:
        raise ConfigError(f"{', '.join(named)}: in cluster mode these come from etcd (the "
                          f"network config and our lease); do not give them with "
                          f"--etcd-endpoints")
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
    margin = values.integer(renew_margin, "--subnet-lease-renew-margin", *RENEW_MARGIN_RANGE)
    if (cert_file is None) != (key_file is None):
        raise ConfigError("--etcd-certfile and --etcd-keyfile go together")
    if bool(etcd_username) != bool(etcd_password):
        raise ConfigError("--etcd-username and --etcd-password go together")
    return Options(endpoints=eps, prefix=prefix, ca_file=ca_file, cert_file=cert_file,
                   key_file=key_file, etcd_username=etcd_username or None,
                   etcd_password=etcd_password or None,
                   subnet_file=subnet_file or DEFAULT_SUBNET_FILE, lease_ttl=ttl,
                   renew_margin=margin * 60, **_common(**common))
