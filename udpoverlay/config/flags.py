"""Every `run` flag, declared once.

A row names the flag (and its aliases), the Options field it fills, how its
value is checked, its default, its help, which modes accept it and so its
FLANNELD_* variable. Everything else is derived from this table:
- the argparse `run` parser (config/parser.py: groups, help, metavars,
  booleans in flanneld's `--x=true|false` form),
- the environment (FLANNELD_<FLAG>, envflags.py reads the parser),
- the Options builders (options.py: each field is `row.check(value)`; a
  static-only flag given with --etcd-endpoints is refused, naming it),
- the reload's flag names and the flanneld-flags test.
Adding a flag is one row here (plus its Options field and its tests).

`check` takes the value in the field's own sense (the builders' keyword
arguments, e.g. `offload=False`), never argparse's: the two `--no-*` flags
are `invert`ed on the way from the parser (parser.fields_of).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from udpoverlay.config import defaults as d
from udpoverlay.config import values
from udpoverlay.config.envflags import env_name
from udpoverlay.errors import ConfigError

__all__ = ["Flag", "FLAGS", "GROUPS", "BOTH", "STATIC", "CLUSTER", "by_field", "by_name"]

BOTH = frozenset({"static", "cluster"})
STATIC = frozenset({"static"})       # in cluster mode etcd decides: refused there
CLUSTER = frozenset({"cluster"})     # ignored in static mode, as flanneld's would be

# argparse groups, in --help order: (key, title)
GROUPS = (("underlay", "underlay (flanneld's meanings)"), ("overlay", "overlay"),
          ("node", "node rules (as flanneld)"),
          ("static", "static peers (no etcd: laptops, small setups)"),
          ("cluster", "cluster mode (etcd, flannel's layout; replaces "
                      "--subnet/--network/--peer/--backend/--port/--vni)"),
          ("process", "process"))


@dataclass(frozen=True)
class Flag:
    name: str                                  # the flag, e.g. "--iface"
    field: str                                 # the Options field (builder keyword)
    group: str
    help: str
    check: Callable[[Any], Any] = bool         # field-sense value -> Options value
    default: Any = None                        # argparse's default (the flag's sense)
    kind: str = "value"                        # value | bool | append
    modes: frozenset = BOTH
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    invert: bool = False                       # --no-x sets field x to not value
    parse: dict = dataclasses.field(default_factory=dict)  # extra argparse keywords (-v's nargs, ...)

    @property
    def env(self) -> str:
        """flanneld's variable for this flag: FLANNELD_<FLAG>."""
        return env_name(self.name)

    @property
    def field_default(self) -> Any:
        """The builders' value when the keyword is not given."""
        return (not self.default) if self.invert else self.default


def _opt(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """None or "" stays None (not given), else check."""
    return lambda v: None if v in (None, "") else check(v)


def _tun(value) -> str:
    tun = value or d.DEFAULT_TUN
    if len(tun) > 15 or not tun.isprintable() or "/" in tun or " " in tun:
        raise ConfigError(f"--tun: bad interface name {tun!r} (at most 15 characters)")
    return tun


def _listed(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A repeatable flag: a bare string counts as a list of one."""
    return lambda v: check([v] if isinstance(v, str) else v)


def _seconds(value, what: str, low: float, high: float) -> float:
    if value is None or value == "":
        return d.DEFAULT_RESOLVE_INTERVAL
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{what}: bad number of seconds {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{what} {number:g} out of range ({low:g}-{high:g} s)")
    return number


def _endpoints(value) -> tuple[str, ...]:
    eps = tuple(e.strip() for e in str(value).split(",") if e.strip())
    if not eps:
        raise ConfigError("--etcd-endpoints: no endpoint given")
    return eps


def _prefix(value) -> str:
    prefix = (value or d.DEFAULT_PREFIX).rstrip("/")
    if not prefix.startswith("/"):
        raise ConfigError(f"--etcd-prefix {prefix!r} must start with '/'")
    return prefix


def _lease_ttl(value) -> int:
    try:
        ttl = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--lease-ttl: bad value {value!r}") from None
    if ttl < d.MIN_LEASE_TTL:
        raise ConfigError(f"--lease-ttl {ttl} too small (at least {d.MIN_LEASE_TTL} s)")
    return ttl


def _int(what: str, low: int, high: int, absent: int = 0) -> Callable[[Any], int]:
    return lambda v: values.integer(v or absent, what, low, high)


def _identity(value):
    return value


def _or_none(value):
    return value or None


FLAGS: tuple[Flag, ...] = (
    # -- underlay ------------------------------------------------------------------
    Flag("--iface", "ifaces", "underlay", kind="append", aliases=("--underlay-iface",),
         metavar="NAME_OR_IP", check=_listed(values.ifaces),
         help="the interface used between hosts, by name or address; repeat to try several "
              "in order (default: the default-route interface). --underlay-iface is an alias"),
    Flag("--iface-regex", "iface_regex", "underlay", kind="append", metavar="REGEX",
         check=_listed(values.regexes),
         help="repeatable; tried after --iface: the first interface address, then name, the "
              "expression matches"),
    Flag("--iface-can-reach", "iface_can_reach", "underlay", metavar="IP",
         check=_opt(lambda v: values.ip(v, "--iface-can-reach")),
         help="the interface `ip route get IP` would use (tried last)"),
    Flag("--public-ip", "public_ip", "underlay", metavar="IP",
         check=_opt(lambda v: values.ip(v, "--public-ip")),
         help="the address advertised to peers (the lease's PublicIP); default: the chosen "
              "interface's address. The socket always binds the interface's own address, so "
              "a 1:1 NAT address works here"),
    Flag("--port", "port", "underlay", modes=STATIC, metavar="UDP_PORT",
         check=_opt(lambda v: values.port(v, "--port")),
         help=f"UDP port, the same on every host (default {d.DEFAULT_PORTS['udp']} for udp, "
              f"{d.DEFAULT_PORTS['vxlan']} for vxlan, {d.DEFAULT_PORTS['wireguard']} for "
              f"wireguard, as flannel)"),
    # -- overlay -------------------------------------------------------------------
    Flag("--tun", "tun", "overlay", metavar="NAME", check=_tun,
         help=f"TUN device name (default {d.DEFAULT_TUN})"),
    Flag("--subnet", "subnet", "overlay", modes=STATIC, metavar="CIDR",
         check=_opt(lambda v: values.net(v, "--subnet")),
         help="this host's overlay subnet, e.g. 198.19.1.0/24"),
    Flag("--network", "network", "overlay", modes=STATIC, metavar="CIDR",
         check=_opt(lambda v: values.net(v, "--network")),
         help="the whole overlay network, e.g. 198.19.0.0/16"),
    Flag("--peer", "peers", "overlay", kind="append", modes=STATIC, metavar="SPEC",
         check=_identity,     # parsed against --port and --backend by options.build_config
         help="a remote host: HOST[:PORT]=SUBNET[,vtep-mac=MAC][,keepalive=SECONDS]"
              "[,public-key=BASE64][,preshared-key-file=PATH], HOST a DNS name or an IPv4 "
              "address (repeat for each peer); public-key (the peer's `wg pubkey`) is "
              "required with --backend wireguard"),
    Flag("--mtu", "mtu", "overlay", metavar="BYTES", check=lambda v: values.mtu(v),
         help="TUN MTU (default: Backend.MTU in cluster mode, else the underlay interface's "
              "MTU - 28 for udp, - 50 for vxlan, - 80 for wireguard)"),
    Flag("--backend", "backend", "overlay", modes=STATIC, choices=d.STATIC_BACKENDS,
         check=lambda v: values.backend(v, d.STATIC_BACKENDS),
         help="encapsulation: udp (raw IPv4 in UDP, flannel's udp backend, the default), "
              "vxlan (RFC 7348, interoperates with flannel's kernel vxlan hosts) or wireguard "
              "(encrypted and authenticated, speaks WireGuard to wg/wireguard-go peers; static "
              "mode, needs --private-key-file and each peer's public-key)"),
    Flag("--private-key-file", "private_key_file", "overlay", modes=STATIC, metavar="PATH",
         check=_or_none,
         help="wireguard: our private key, `wg genkey` format; created (mode 0600) when "
              "missing; refused when group or others may read it or root does not own it. "
              "`udpoverlay pubkey --private-key-file PATH` prints the public key to give peers"),
    Flag("--vni", "vni", "overlay", modes=STATIC, metavar="NUMBER",
         check=lambda v: values.vni(d.DEFAULT_VNI if v is None else v),
         help=f"vxlan: VXLAN network identifier (default {d.DEFAULT_VNI}, as flannel)"),
    Flag("--vtep-mac", "vtep_mac", "overlay", metavar="MAC",
         check=lambda v: values.mac(v, "--vtep-mac"),
         help="vxlan: our VTEP MAC (default: a locally administered MAC derived from "
              "--public-ip and --subnet, stable across restarts)"),
    Flag("--direct-routing", "direct_routing", "overlay", kind="bool", default=False,
         help="vxlan: plain underlay routes to directly connected peers (cluster mode: also "
              "Backend.DirectRouting)"),
    Flag("--no-offload", "offload", "overlay", kind="bool", default=False, invert=True,
         help="move one packet per TUN read/write (no virtio_net_hdr, no TSO/USO on the TUN, "
              "as flannel's udp backend); the underlay socket still batches datagrams with UDP "
              "GSO/GRO where the kernel has them (default: offloads on, up to 64 KB per "
              "syscall, falling back to what the kernel accepts; see `status`)"),
    Flag("--no-udp-offload", "udp_offload", "overlay", kind="bool", default=False, invert=True,
         help="no UDP GSO/GRO on the underlay socket: one kernel send and receive per "
              "datagram; with --no-offload the fully plain path"),
    Flag("--threads", "threads", "overlay", kind="bool", default=False,
         help="run each direction (TUN->wire, wire->TUN) on its own worker thread instead of "
              "the event loop"),
    Flag("--queues", "queues", "overlay", metavar="N", default=1,
         check=_int("--queues", 1, d.MAX_QUEUES, absent=1),
         help=f"multi-queue TUN: N TUN queues and N underlay sockets on the port, each with its "
              f"own pair of worker threads (implies --threads; 1 to {d.MAX_QUEUES}; default 1). "
              f"Flows are spread by hash, each flow stays on one queue: for hosts with cores "
              f"to spare"),
    # -- node rules ----------------------------------------------------------------
    Flag("--ip-masq", "ip_masq", "node", kind="bool", default=False,
         help="masquerade traffic leaving the network; FLANNEL_IPMASQ=true in the subnet file "
              "(default false)"),
    Flag("--iptables-forward-rules", "iptables_forward_rules", "node", kind="bool", default=True,
         help="accept the network's traffic in FORWARD (default true)"),
    Flag("--iptables-resync", "iptables_resync", "node", metavar="SECONDS",
         default=d.DEFAULT_IPTABLES_RESYNC,
         check=lambda v: values.integer(v, "--iptables-resync", 1, 86400),
         help=f"re-assert the rules this often (default {d.DEFAULT_IPTABLES_RESYNC})"),
    Flag("--ip-masq-fully-random-disable", "ip_masq_fully_random_disable", "node", kind="bool",
         default=False, help="masquerade without fully-random port mapping"),
    Flag("--enable-nftables", "enable_nftables", "node", kind="bool", default=False,
         modes=STATIC,
         help="static mode: flanneld's nftables rules instead of iptables (cluster mode: "
              "EnableNFTables in the network config)"),
    Flag("--ip-blackhole-route", "ip_blackhole_route", "node", kind="bool", default=False,
         help="a blackhole route for the whole network (metric 1000, below the TUN's route), "
              "so overlay traffic is dropped locally while the TUN is gone instead of leaking "
              "to the default route; removed on exit"),
    Flag("--healthz-ip", "healthz_ip", "node", metavar="IP", default=d.DEFAULT_HEALTHZ_IP,
         check=lambda v: str(values.ip(v or d.DEFAULT_HEALTHZ_IP, "--healthz-ip")),
         help=f"address of the /healthz, /readyz and /metrics endpoint (default "
              f"{d.DEFAULT_HEALTHZ_IP})"),
    Flag("--healthz-port", "healthz_port", "node", metavar="PORT", default=0,
         check=_int("--healthz-port", 0, 65535),
         help="port of that endpoint (default 0 = off)"),
    Flag("--metrics-per-peer", "metrics_per_peer", "node", kind="bool", default=True,
         help="per-peer series (packets, bytes, liveness) on /metrics (default true); false "
              "keeps the totals only: 5 series per peer add up on large clusters"),
    # -- static peers --------------------------------------------------------------
    Flag("--peers-file", "peers_file", "static", modes=STATIC, metavar="FILE",
         check=_or_none, help="a TOML file of peers, merged with --peer; re-read on SIGHUP"),
    Flag("--resolve-interval", "resolve_interval", "static", metavar="SECONDS",
         check=lambda v: _seconds(v, "--resolve-interval", 1, 86400),
         help=f"re-resolve peer names this often (default {d.DEFAULT_RESOLVE_INTERVAL:g})"),
    Flag("--strict-peers", "strict_peers", "static", kind="bool", default=False, modes=STATIC,
         help="a peer name that does not resolve at start is an error (default: the peer "
              "waits and is retried)"),
    Flag("--keepalive", "keepalive", "static", metavar="SECONDS", default=0,
         check=_int("--keepalive", 0, d.MAX_KEEPALIVE),
         help="send a keepalive to each peer after this long without traffic, to hold NAT "
              "mappings open (default 0 = off)"),
    # -- cluster mode --------------------------------------------------------------
    Flag("--etcd-endpoints", "endpoints", "cluster", modes=CLUSTER, metavar="URL[,URL...]",
         check=_endpoints,
         help="take the network config, our subnet lease and the peers from etcd"),
    Flag("--etcd-prefix", "prefix", "cluster", modes=CLUSTER, default=d.DEFAULT_PREFIX,
         metavar="PREFIX",
         check=_prefix, help=f"etcd key prefix (default {d.DEFAULT_PREFIX})"),
    Flag("--etcd-cafile", "ca_file", "cluster", modes=CLUSTER, metavar="FILE", check=_identity,
         help="CA to verify etcd's certificate"),
    Flag("--etcd-certfile", "cert_file", "cluster", modes=CLUSTER, metavar="FILE",
         check=_identity,
         help="client certificate for etcd"),
    Flag("--etcd-keyfile", "key_file", "cluster", modes=CLUSTER, metavar="FILE", check=_identity,
         help="client key for etcd"),
    Flag("--etcd-username", "etcd_username", "cluster", modes=CLUSTER, metavar="USER",
         check=_or_none,
         help="etcd user (with --etcd-password)"),
    Flag("--etcd-password", "etcd_password", "cluster", modes=CLUSTER, metavar="PASSWORD",
         check=_or_none,
         help="etcd password"),
    Flag("--subnet-file", "subnet_file", "cluster", modes=CLUSTER, default=d.DEFAULT_SUBNET_FILE,
         metavar="FILE",
         check=lambda v: v or d.DEFAULT_SUBNET_FILE,
         help=f"subnet file to write (default {d.DEFAULT_SUBNET_FILE})"),
    Flag("--lease-ttl", "lease_ttl", "cluster", modes=CLUSTER, default=d.DEFAULT_LEASE_TTL,
         metavar="SECONDS",
         check=_lease_ttl,
         help=f"subnet lease TTL in seconds (default {d.DEFAULT_LEASE_TTL}, as flannel)"),
    Flag("--subnet-lease-renew-margin", "renew_margin", "cluster", modes=CLUSTER,
         metavar="MINUTES", default=d.DEFAULT_RENEW_MARGIN_MIN,
         check=lambda v: 60 * values.integer(v, "--subnet-lease-renew-margin",
                                             *d.RENEW_MARGIN_RANGE),
         help=f"renew the lease this long before it expires (1-1439, default "
              f"{d.DEFAULT_RENEW_MARGIN_MIN})"),
    # -- process -------------------------------------------------------------------
    Flag("--v", "verbosity", "process", aliases=("--verbose",), metavar="N", default=0,
         check=_int("-v", 0, 10),
         parse=dict(short="-v", nargs="?", const=2, type="level"),
         help="log detail as flanneld's -v: 0 (default) info, 1 our debug messages, 2 or more "
              "everything (bare -v = 2)"),
    Flag("--log-format", "log_format", "process", default="text", choices=d.LOG_FORMATS,
         check=lambda v: values.choice(v or "text", "--log-format", d.LOG_FORMATS),
         help="text (default; no timestamp when stderr is journald) or json, one object per "
              "line"),
    Flag("--env-file", "env_file", "process", metavar="FILE", check=_or_none,
         help="FLANNELD_* settings in a file (systemd EnvironmentFile syntax), below the "
              "command line and the environment; read at start and again on SIGHUP, where -v "
              "and --log-format apply live and other changes are logged as needing a restart"),
    Flag("--io", "io_mode", "process", default=d.DEFAULT_IO_MODE, choices=d.IO_MODES,
         check=lambda v: values.choice(v or d.DEFAULT_IO_MODE, "--io", d.IO_MODES),
         help="TUN reads: epoll (one read() per packet, on the loop's epoll), io_uring (a "
              "round of reads per kernel entry; opt-in, an error at start if io_uring is "
              "blocked) or auto (default: epoll)"),
    Flag("--require-fast-path", "require_fast_path", "process", kind="bool", default=False,
         help="refuse to start (exit 2) unless the compiled fast path loaded; without it a "
              "failed import runs the pure-Python reference with a WARNING naming the error"),
    Flag("--busy-poll-us", "busy_poll_us", "process", metavar="MICROSECONDS", default=0,
         check=_int("--busy-poll-us", 0, d.MAX_BUSY_POLL_US),
         help="after draining, keep polling the TUN and the socket this long before sleeping: "
              "lower median latency for more CPU (default 0 = off; see the README's "
              "Performance section)"),
)

_BY_FIELD = {f.field: f for f in FLAGS}
_BY_NAME = {n: f for f in FLAGS for n in (f.name, *f.aliases)}


def by_field(name: str) -> Flag:
    return _BY_FIELD[name]


def by_name(flag: str) -> Flag:
    """The row of `--flag` or one of its aliases (KeyError if none)."""
    return _BY_NAME[flag]
