"""What the daemon was asked to do: one frozen, validated Options object for
static and cluster mode, built from the flag table (flags.py).

Static mode (`--subnet/--network/--peer`) fills in everything up front. In
cluster mode (`--etcd-endpoints`) subnet, network, backend, port, VNI (and
MTU, DirectRouting, EnableNFTables) come from etcd: giving those flags is an
error, and the cluster wiring completes the object with for_lease(), which
runs the static checks again. Flag meanings follow flanneld: `ifaces`
(`--iface`) is the UNDERLAY interface, the TUN has its own `tun`; the data
socket binds `bind_ip` (the chosen interface's address) while `public_ip` is
only what is advertised (1:1 NAT). Every validation failure is a ConfigError
with a one-line message naming the offending value; the CLI prints it as
`udpoverlay: error: ...` and exits 2.

The builders take the Options fields as keywords (`peers` as --peer strings
or Peer objects, `renew_margin` in minutes as the flag): each is checked by
its flag's row; what is not given takes the row's default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from udpoverlay.config import values
from udpoverlay.config.defaults import (
    DEFAULT_HEALTHZ_IP,
    DEFAULT_IO_MODE,
    DEFAULT_IPTABLES_RESYNC,
    DEFAULT_LEASE_TTL,
    DEFAULT_PORTS,
    DEFAULT_PREFIX,
    DEFAULT_RENEW_MARGIN_MIN,
    DEFAULT_RESOLVE_INTERVAL,
    DEFAULT_SUBNET_FILE,
    DEFAULT_TUN,
    DEFAULT_VNI,
    STATIC_BACKENDS,
)
from udpoverlay.config.flags import FLAGS, STATIC
from udpoverlay.config.peerspec import check_literal, check_peer_addresses, check_peer_specs, spec_of
from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer, PeerSpec

__all__ = ["Options", "build_config", "build_cluster_options", "build_options"]


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
    metrics_per_peer: bool = True   # per-peer series on /metrics (--metrics-per-peer)
    verbosity: int = 0              # -v N
    log_format: str = "text"        # text | json (--log-format)
    env_file: str | None = None     # FLANNELD_* settings re-read on SIGHUP (--env-file)
    io_mode: str = DEFAULT_IO_MODE  # TUN I/O: auto | io_uring | epoll (--io)
    busy_poll_us: int = 0           # poll this long after a drain before sleeping; 0 = off
    require_fast_path: bool = False  # the compiled twin or exit 2 (--require-fast-path)
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
    private_key_file: str | None = None   # --backend wireguard: our key (wg genkey format)
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
            network=values.net(network, "network"),
            backend=values.backend(backend, STATIC_BACKENDS),
            port=values.port(port, "port"), vni=values.vni(vni, "VNI"), vtep_mac=vtep_mac))


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
    check_peer_specs(o.peer_specs or [spec_of(p, o.port) for p in o.peers], sub, net, o.backend)
    check_peer_addresses(o.peers, o.public_ip, o.backend)
    for spec in o.peer_specs:
        check_literal(spec, own=(o.public_ip, o.bind_ip))
    # the masquerade rule matches sources inside --network: it would rewrite
    # our own datagrams' source port (8285 -> random), and peers drop them
    for addr, flag in ((o.bind_ip, "underlay address"), (o.public_ip, "--public-ip")):
        if o.ip_masq and addr is not None and addr in net:
            raise ConfigError(f"--network {net} contains our {flag} {addr}: with --ip-masq the "
                              f"masquerade rule would rewrite the tunnel's own datagrams "
                              f"(choose a --network apart from the underlay)")
    return o


def _check_wireguard(o: dict[str, Any]) -> None:
    """--backend wireguard: our key file is required; the data path is its
    own (one packet per TUN read, on the event loop), so the flags that
    shape the udp/vxlan fast path do not apply and are refused."""
    if o["backend"] != "wireguard":
        if o["private_key_file"]:
            raise ConfigError("--private-key-file only applies to --backend wireguard")
        return
    if not o["private_key_file"]:
        raise ConfigError("--backend wireguard needs --private-key-file PATH (our private key, "
                          "`wg genkey` format; created with mode 0600 when missing)")
    for flag, given in (("--queues", o["queues"] > 1), ("--threads", o["threads"]),
                        ("--io io_uring", o["io_mode"] == "io_uring"),
                        ("--busy-poll-us", o["busy_poll_us"] > 0),
                        ("--vtep-mac", o["vtep_mac"] is not None)):
        if given:
            raise ConfigError(f"{flag} does not apply to --backend wireguard (its data path "
                              f"runs on the event loop, one packet per TUN read)")


def _known(given: dict[str, Any]) -> None:
    unknown = set(given) - {f.field for f in FLAGS}
    if unknown:
        raise TypeError(f"not an option: {', '.join(sorted(unknown))}")


def _fields(given: dict[str, Any], mode: str) -> dict[str, Any]:
    """Each flag of `mode` checked by its row (the row's default if not given)."""
    _known(given)
    out = {f.field: f.check(given.get(f.field, f.field_default))
           for f in FLAGS if mode in f.modes}
    if "queues" in out:     # several queues run on worker threads
        out["threads"] = out["threads"] or out["queues"] > 1
    return out


def build_config(**given: Any) -> Options:
    """Static mode: validate flag values into Options (cluster-only keywords
    are ignored, as the command line ignores those flags without
    --etcd-endpoints)."""
    shared = _fields(given, "static")
    backend, port = shared["backend"], shared["port"]
    port = DEFAULT_PORTS[backend] if port is None else port
    if shared["subnet"] is None:
        raise ConfigError("--subnet is required")
    if shared["network"] is None:
        raise ConfigError("--network is required")
    if shared["direct_routing"] and backend != "vxlan":
        raise ConfigError("--direct-routing only applies to --backend vxlan")
    _check_wireguard(shared)
    peers = [(p, spec_of(p, port)) for p in shared["peers"] or ()]
    specs = tuple(s for _, s in peers)
    resolved = tuple(p if isinstance(p, Peer) else s.resolved(s.literal)
                     for p, s in peers if s.literal is not None)
    shared.update(port=port, peers=resolved, peer_specs=specs)
    return _checked(Options(**shared))


def build_cluster_options(**given: Any) -> Options:
    """Cluster (etcd) mode: validate the flag values; what etcd decides
    (the static-only flags) must not be given."""
    _known(given)
    named = [f.name for f in FLAGS
             if f.modes == STATIC and given.get(f.field) not in (None, "", (), [], False)]
    if named:
        raise ConfigError(f"{', '.join(named)}: in cluster mode these come from etcd (the "
                          f"network config and our lease); do not give them with "
                          f"--etcd-endpoints")
    shared = _fields(given, "cluster")
    if (shared["cert_file"] is None) != (shared["key_file"] is None):
        raise ConfigError("--etcd-certfile and --etcd-keyfile go together")
    if bool(shared["etcd_username"]) != bool(shared["etcd_password"]):
        raise ConfigError("--etcd-username and --etcd-password go together")
    return Options(**shared)


def build_options(given: dict[str, Any]) -> Options:
    """Either mode, as the command line chooses: cluster with endpoints."""
    return build_cluster_options(**given) if given.get("endpoints") else build_config(**given)
