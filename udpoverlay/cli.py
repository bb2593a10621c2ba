"""Command line: argument parsing and subcommands only.

  udpoverlay [run] --subnet CIDR --network CIDR --peer HOST=CIDR ... [--peers-file F]
  udpoverlay [run] --etcd-endpoints URL [--iface IFACE] ...     (cluster mode)
  udpoverlay status [--tun X] [--json]
  udpoverlay demo
  udpoverlay --version

`run` takes flanneld's flags with flanneld's meanings, also from FLANNELD_*
variables, from an --env-file (the command line wins, then the environment,
then the file) and in Go's `-flag=value` spelling (see envflags.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from udpoverlay import __version__, envflags
from udpoverlay.errors import ConfigError, ControlError, TunSetupError
from udpoverlay.options import (
    BACKENDS,
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
    IO_MODES,
    LOG_FORMATS,
    MAX_QUEUES,
    Options,
)

__all__ = ["main", "build_parser", "parse_args", "run_options"]

PROG = "udpoverlay"
SUBCOMMANDS = ("run", "status", "demo")


def _implementation() -> str:
    try:
        from udpoverlay import dataplane
        return dataplane.IMPLEMENTATION
    except Exception as exc:  # noqa: BLE001 - version must always print
        return f"unavailable: {exc}"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kw):
        super().__init__(option_strings, dest=dest, nargs=0,
                         help="print version and active fast path, then exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{PROG} {__version__} (fast path: {_implementation()})")
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    env_sources: dict[str, str] = {}     # flag -> FLANNELD_* variable it came from
    raising = False                      # raise ConfigError instead of exiting (a reload)

    def error(self, message):  # one line, exit 2
        message = envflags.annotate(message, self.env_sources)
        if self.raising:
            raise ConfigError(message)
        self.exit(2, f"{PROG}: error: {message}\n")


def _bool_flag(g, *names: str, default: bool, help: str) -> None:
    """A boolean as flanneld's: `--x`, `--x=true|false|1|0` (and FLANNELD_X)."""
    g.add_argument(*names, nargs="?", const=True, default=default, type=envflags.parse_bool,
                   metavar="BOOL", help=help)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    u = p.add_argument_group("underlay (flanneld's meanings)")
    u.add_argument("--iface", "--underlay-iface", action="append", default=None,
                   metavar="NAME_OR_IP",
                   help="the interface used between hosts, by name or address; repeat to "
                        "try several in order (default: the default-route interface). "
                        "--underlay-iface is an alias")
    u.add_argument("--iface-regex", action="append", default=None, metavar="REGEX",
                   help="repeatable; tried after --iface: the first interface address, then "
                        "name, the expression matches")
    u.add_argument("--iface-can-reach", metavar="IP", default=None,
                   help="the interface `ip route get IP` would use (tried last)")
    u.add_argument("--public-ip", metavar="IP",
                   help="the address advertised to peers (the lease's PublicIP); default: "
                        "the chosen interface's address. The socket always binds the "
                        "interface's own address, so a 1:1 NAT address works here")
    u.add_argument("--port", type=str, default=None,
                   help=f"UDP port, the same on every host (default {DEFAULT_PORTS['udp']} for "
                        f"udp, {DEFAULT_PORTS['vxlan']} for vxlan, as flannel)")
    o = p.add_argument_group("overlay")
    o.add_argument("--tun", default=None,
                   help=f"TUN device name (default {DEFAULT_TUN})")
    o.add_argument("--subnet", metavar="CIDR",
                   help="this host's overlay subnet, e.g. 198.19.1.0/24")
    o.add_argument("--network", metavar="CIDR",
                   help="the whole overlay network, e.g. 198.19.0.0/16")
    o.add_argument("--peer", action="append", default=None, metavar="SPEC",
                   help="a remote host: HOST[:PORT]=SUBNET[,vtep-mac=MAC][,keepalive=SECONDS], "
                        "HOST a DNS name or an IPv4 address (repeat for each peer)")
    o.add_argument("--mtu", type=str, default=None,
                   help="TUN MTU (default: Backend.MTU in cluster mode, else the underlay "
                        "interface's MTU - 28 for udp, - 50 for vxlan)")
    o.add_argument("--backend", default=None, choices=BACKENDS,
                   help="encapsulation: udp (raw IPv4 in UDP, flannel's udp backend, the "
                        "default) or vxlan (RFC 7348, interoperates with flannel's kernel "
                        "vxlan hosts)")
    o.add_argument("--vni", default=None,
                   help=f"vxlan: VXLAN network identifier (default {DEFAULT_VNI}, as flannel)")
    o.add_argument("--vtep-mac", metavar="MAC", default=None,
                   help="vxlan: our VTEP MAC (default: a locally administered MAC "
                        "derived from --public-ip and --subnet, stable across restarts)")
    _bool_flag(o, "--direct-routing", default=False,
               help="vxlan: plain underlay routes to directly connected peers (cluster "
                    "mode: also Backend.DirectRouting)")
    _bool_flag(o, "--no-offload", default=False,
               help="move one packet per TUN read/write (no virtio_net_hdr, no TSO/USO "
                    "on the TUN, as flannel's udp backend); the underlay socket still "
                    "batches datagrams with UDP GSO/GRO where the kernel has them "
                    "(default: offloads on, up to 64 KB per syscall, falling back to "
                    "what the kernel accepts; see `status`)")
    _bool_flag(o, "--no-udp-offload", default=False,
               help="no UDP GSO/GRO on the underlay socket: one kernel send and "
                    "receive per datagram; with --no-offload the fully plain path")
    _bool_flag(o, "--threads", default=False,
               help="run each direction (TUN->wire, wire->TUN) on its own worker "
                    "thread instead of the event loop")
    o.add_argument("--queues", metavar="N", default=1,
                   help="multi-queue TUN: N TUN queues and N underlay sockets on the "
                        "port, each with its own pair of worker threads (implies "
                        f"--threads; 1 to {MAX_QUEUES}; default 1). Flows are spread by "
                        "hash, each flow stays on one queue: for hosts with cores to spare")
    n = p.add_argument_group("node rules (as flanneld)")
    _bool_flag(n, "--ip-masq", default=False,
               help="masquerade traffic leaving the network; FLANNEL_IPMASQ=true in the "
                    "subnet file (default false)")
    _bool_flag(n, "--iptables-forward-rules", default=True,
               help="accept the network's traffic in FORWARD (default true)")
    n.add_argument("--iptables-resync", default=DEFAULT_IPTABLES_RESYNC, metavar="SECONDS",
                   help=f"re-assert the rules this often (default {DEFAULT_IPTABLES_RESYNC})")
    _bool_flag(n, "--ip-masq-fully-random-disable", default=False,
               help="masquerade without fully-random port mapping")
    _bool_flag(n, "--enable-nftables", default=False,
               help="static mode: flanneld's nftables rules instead of iptables (cluster "
                    "mode: EnableNFTables in the network config)")
    _bool_flag(n, "--ip-blackhole-route", default=False,
               help="a blackhole route for the whole network (metric 1000, below the "
                    "TUN's route), so overlay traffic is dropped locally while the TUN is "
                    "gone instead of leaking to the default route; removed on exit")
    n.add_argument("--healthz-ip", default=DEFAULT_HEALTHZ_IP, metavar="IP",
                   help=f"address of the /healthz, /readyz and /metrics endpoint "
                        f"(default {DEFAULT_HEALTHZ_IP})")
    n.add_argument("--healthz-port", default=0, metavar="PORT",
                   help="port of that endpoint (default 0 = off)")
    s = p.add_argument_group("static peers (no etcd: laptops, small setups)")
    s.add_argument("--peers-file", metavar="FILE", default=None,
                   help="a TOML file of peers, merged with --peer; re-read on SIGHUP")
    s.add_argument("--resolve-interval", metavar="SECONDS", default=None,
                   help=f"re-resolve peer names this often (default "
                        f"{DEFAULT_RESOLVE_INTERVAL:g})")
    _bool_flag(s, "--strict-peers", default=False,
               help="a peer name that does not resolve at start is an error (default: "
                    "the peer waits and is retried)")
    s.add_argument("--keepalive", metavar="SECONDS", default=0,
                   help="send a keepalive to each peer after this long without traffic, "
                        "to hold NAT mappings open (default 0 = off)")
    _add_cluster_args(p)
    g = p.add_argument_group("process")
    g.add_argument("-v", "--v", "--verbose", dest="v", nargs="?", const=2, default=0,
                   type=envflags.parse_level, metavar="N",
                   help="log detail as flanneld's -v: 0 (default) info, 1 our debug "
                        "messages, 2 or more everything (bare -v = 2)")
    g.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text (default; no timestamp when stderr is journald) or json, "
                        "one object per line")
    g.add_argument("--env-file", metavar="FILE", default=None,
                   help="FLANNELD_* settings in a file (systemd EnvironmentFile syntax), "
                        "below the command line and the environment; read at start and "
                        "again on SIGHUP, where -v and --log-format apply live and other "
                        "changes are logged as needing a restart")
    g.add_argument("--io", dest="io_mode", default=DEFAULT_IO_MODE, choices=IO_MODES,
                   help="TUN reads: epoll (one read() per packet, on the loop's epoll), "
                        "io_uring (a round of reads per kernel entry; measured slower than "
                        "read() on this kernel, so opt-in; an error at start if io_uring is "
                        "blocked) or auto (default: epoll)")
    g.add_argument("--busy-poll-us", metavar="MICROSECONDS", default=0,
                   help="after draining, keep polling the TUN and the socket this long "
                        "before sleeping: lower median latency for more CPU (default 0 = "
                        "off; see the README's Performance section)")


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster mode (etcd, flannel's layout; replaces "
                             "--subnet/--network/--peer/--backend/--port/--vni)")
    g.add_argument("--etcd-endpoints", metavar="URL[,URL...]", default=None,
                   help="take the network config, our subnet lease and the peers from etcd")
    g.add_argument("--etcd-prefix", default=DEFAULT_PREFIX,
                   help=f"etcd key prefix (default {DEFAULT_PREFIX})")
    g.add_argument("--etcd-cafile", default=None, help="CA to verify etcd's certificate")
    g.add_argument("--etcd-certfile", default=None, help="client certificate for etcd")
    g.add_argument("--etcd-keyfile", default=None, help="client key for etcd")
    g.add_argument("--etcd-username", default=None, help="etcd user (with --etcd-password)")
    g.add_argument("--etcd-password", default=None, help="etcd password")
    g.add_argument("--subnet-file", default=DEFAULT_SUBNET_FILE,
                   help=f"subnet file to write (default {DEFAULT_SUBNET_FILE})")
    g.add_argument("--lease-ttl", default=DEFAULT_LEASE_TTL,
                   help=f"subnet lease TTL in seconds (default {DEFAULT_LEASE_TTL}, as flannel)")
    g.add_argument("--subnet-lease-renew-margin", default=DEFAULT_RENEW_MARGIN_MIN,
                   metavar="MINUTES",
                   help=f"renew the lease this long before it expires (1-1439, default "
                        f"{DEFAULT_RENEW_MARGIN_MIN})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="User-space overlay data plane (TUN <-> UDP), a drop-in for "
                    "flannel's udp backend. Without a subcommand, runs the daemon "
                    "('run').",
        epilog="example: udpoverlay --public-ip 198.18.0.1 --subnet 198.19.1.0/24 "
               "--network 198.19.0.0/16 --peer 198.18.0.2=198.19.2.0/24")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=_Parser)
    run = sub.add_parser("run", help="run the daemon in the foreground (default)",
                         description="Run the data plane until SIGINT/SIGTERM. Every flag "
                                     "can also come from FLANNELD_<FLAG> (upper case, dashes "
                                     "to underscores; repeatable flags comma-separated); "
                                     "the command line wins.")
    _add_run_args(run)
    parser.run_parser = run       # type: ignore[attr-defined]
    st = sub.add_parser("status", help="show the running daemon's routes and counters",
                        description="Query the daemon in this network namespace "
                                    "(root only). The daemon is named by its TUN device "
                                    "(--tun); --iface is not accepted here, since it "
                                    "names the underlay interface now, as in flanneld.")
    st.add_argument("--tun", default=DEFAULT_TUN,
                    help=f"TUN device of the daemon (default {DEFAULT_TUN})")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    demo = sub.add_parser("demo", help="three hosts in network namespaces, traffic "
                                      "crossing, counters; cleans up (needs root)")
    demo.add_argument("--keep-going", action="store_true", help=argparse.SUPPRESS)
    return parser


def _fail(message: str, code: int = 2, env: dict[str, str] | None = None) -> int:
    print(f"{PROG}: error: {envflags.annotate(message, env or {})}", file=sys.stderr)
    return code


def _common(args) -> dict:
    """The flags both modes share, as build_config/build_cluster_options take them."""
    return dict(public_ip=args.public_ip, tun=args.tun, iface=args.iface or (),
                iface_regex=args.iface_regex or (), iface_can_reach=args.iface_can_reach,
                mtu=args.mtu, vtep_mac=args.vtep_mac, offload=not args.no_offload,
                udp_offload=not args.no_udp_offload,
                threads=args.threads, queues=args.queues,
                direct_routing=args.direct_routing,
                ip_masq=args.ip_masq, iptables_forward_rules=args.iptables_forward_rules,
                iptables_resync=args.iptables_resync,
                ip_masq_fully_random_disable=args.ip_masq_fully_random_disable,
                ip_blackhole_route=args.ip_blackhole_route, healthz_ip=args.healthz_ip,
                healthz_port=args.healthz_port, verbosity=args.v,
                log_format=args.log_format, env_file=args.env_file, io_mode=args.io_mode,
                peers_file=args.peers_file, resolve_interval=args.resolve_interval,
                strict_peers=args.strict_peers, keepalive=args.keepalive,
                busy_poll_us=args.busy_poll_us)


def run_options(args) -> Options:
    """The parsed `run` arguments validated into Options (ConfigError if bad)."""
    from udpoverlay.options import build_cluster_options, build_config
    if args.etcd_endpoints:
        return build_cluster_options(
            endpoints=args.etcd_endpoints, prefix=args.etcd_prefix, ca_file=args.etcd_cafile,
            cert_file=args.etcd_certfile, key_file=args.etcd_keyfile,
            etcd_username=args.etcd_username, etcd_password=args.etcd_password,
            subnet_file=args.subnet_file, lease_ttl=args.lease_ttl,
            renew_margin=args.subnet_lease_renew_margin, subnet=args.subnet,
            network=args.network, peers=args.peer or (), backend=args.backend, port=args.port,
            vni=args.vni, enable_nftables=args.enable_nftables or None, **_common(args))
    return build_config(subnet=args.subnet, network=args.network, peers=args.peer or (),
                        port=args.port, backend=args.backend, vni=args.vni,
                        enable_nftables=args.enable_nftables, **_common(args))


def _cmd_run(args, env: dict[str, str]) -> int:
    from udpoverlay.errors import FirewallError, LeaseStoreError
    try:    # every check before anything is created or written
        opts = run_options(args)
    except ConfigError as exc:
        return _fail(str(exc), 2, env)
    from udpoverlay.ops import logs
    logs.setup(opts.verbosity, opts.log_format)
    try:
        if opts.cluster:
            from udpoverlay.cluster import mode as cluster
            return cluster.run(opts)
        from udpoverlay.static import mode as static
        return static.run(opts)
    except ConfigError as exc:
        return _fail(str(exc), 2, env)
    except (TunSetupError, LeaseStoreError, FirewallError) as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 0


def _cmd_status(args) -> int:
    from udpoverlay.control import query_status
    from udpoverlay.status import format_status
    if os.geteuid() != 0:    # the socket is root's; say so, not "permission denied"
        return _fail("status needs root (the daemon's control socket is root-only)", 1)
    try:
        doc = query_status(args.tun, timeout=args.timeout)
    except ControlError as exc:
        return _fail(str(exc), 1)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(format_status(doc))
    return 0


def _cmd_demo(args) -> int:
    try:
        from udpoverlay.lab import demo
    except ImportError:
        return _fail("the demo is part of the source checkout (udpoverlay/lab is not "
                     "installed): run `./dev demo` there", 1)
    return demo.main()


def _env_file_settings(run: argparse.ArgumentParser, flags: list[str],
                       environ) -> tuple[str | None, dict[str, str]]:
    """--env-file's path (command line, else FLANNELD_ENV_FILE) and its
    FLANNELD_* settings (not FLANNELD_ENV_FILE itself: no chaining)."""
    path = envflags.flag_value(flags, "--env-file") or environ.get("FLANNELD_ENV_FILE") or None
    if path is None:
        return None, {}
    try:
        settings = envflags.read_env_file(path)
    except ValueError as exc:
        run.error(str(exc))
    settings.pop("FLANNELD_ENV_FILE", None)
    return path, settings


def parse_args(argv: list[str], environ=None, *,
               raising: bool = False) -> tuple[argparse.Namespace, dict[str, str]]:
    """argv as `main` takes it -> (arguments, {flag: FLANNELD_* variable it
    came from}); `run` flags also from `environ` (default os.environ) and
    from --env-file. Bad arguments exit 2 with one line (argparse's
    SystemExit), or raise ConfigError with `raising` (a SIGHUP reload)."""
    argv = list(argv)
    # Bare form: `udpoverlay --public-ip ...` means `udpoverlay run --public-ip ...`.
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    parser = build_parser()
    env: dict[str, str] = {}
    if argv and argv[0] == "run":
        run = parser.run_parser     # type: ignore[attr-defined]
        run.raising = raising
        environ = os.environ if environ is None else environ
        flags = envflags.go_spelling(run, argv[1:])
        path, settings = _env_file_settings(run, flags, environ)
        injected, env = envflags.from_environment(run, flags, {**settings, **environ})
        env = {flag: var if var in environ else f"{var} in {path}"
               for flag, var in env.items()}
        argv = ["run", *injected, *flags]
        run.env_sources = env
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        parser.exit(2)
    return args, env


def main(argv: list[str] | None = None) -> int:
    args, env = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "run":
        return _cmd_run(args, env)
    if args.command == "status":
        return _cmd_status(args)
    if args.command == "demo":
        return _cmd_demo(args)
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
