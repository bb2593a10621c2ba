"""Command line: argument parsing and subcommands only.

  udpoverlay [run] --public-ip IP --subnet CIDR --network CIDR --peer IP=CIDR ...
  udpoverlay status [--iface X] [--json]
  udpoverlay demo
  udpoverlay --version
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from udpoverlay import __version__
from udpoverlay.errors import ConfigError, ControlError, TunSetupError
from udpoverlay.options import (
    BACKENDS,
    DEFAULT_IFACE,
    DEFAULT_LEASE_TTL,
    DEFAULT_PORTS,
    DEFAULT_PREFIX,
    DEFAULT_SUBNET_FILE,
    DEFAULT_VNI,
)

__all__ = ["main", "build_parser"]

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
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{PROG}: error: {message}\n")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--public-ip", metavar="IP",
                   help="underlay address to bind and to be reached at (default: "
                        "address of --underlay-iface, else of the default-route interface)")
    p.add_argument("--underlay-iface", metavar="IFACE",
                   help="take the public IP from this interface")
    p.add_argument("--port", type=str, default=None,
                   help=f"UDP port, the same on every host (default {DEFAULT_PORTS['udp']} for "
                        f"udp, {DEFAULT_PORTS['vxlan']} for vxlan, as flannel)")
    p.add_argument("--iface", default=DEFAULT_IFACE,
                   help=f"TUN device name (default {DEFAULT_IFACE})")
    p.add_argument("--subnet", metavar="CIDR",
                   help="this host's overlay subnet, e.g. 198.19.1.0/24")
    p.add_argument("--network", metavar="CIDR",
                   help="the whole overlay network, e.g. 198.19.0.0/16")
    p.add_argument("--peer", action="append", default=[], metavar="SPEC",
                   help="a remote host: PUBLIC_IP[:PORT]=SUBNET[,vtep-mac=MAC] "
                        "(repeat for each peer)")
    p.add_argument("--mtu", type=str, default=None,
                   help="TUN MTU (default: underlay interface MTU - 28 for udp, - 50 for vxlan)")
    p.add_argument("--backend", default="udp", choices=BACKENDS,
                   help="encapsulation: udp (raw IPv4 in UDP, flannel's udp backend) or "
                        "vxlan (RFC 7348, interoperates with flannel's kernel vxlan hosts)")
    p.add_argument("--vni", default=DEFAULT_VNI,
                   help=f"vxlan: VXLAN network identifier (default {DEFAULT_VNI}, as flannel)")
    p.add_argument("--vtep-mac", metavar="MAC", default=None,
                   help="vxlan: our VTEP MAC (default: a locally administered MAC "
                        "derived from --public-ip and --subnet, stable across restarts)")
    p.add_argument("--no-offload", action="store_true",
                   help="move one packet per TUN read/write: no TSO/USO on the TUN, no "
                        "UDP GSO/GRO (default: offloads on, up to 64 KB per syscall, "
                        "falling back to what the kernel accepts; see `status`)")
    p.add_argument("--threads", action="store_true",
                   help="run each direction (TUN->wire, wire->TUN) on its own worker "
                        "thread instead of the event loop")
    _add_cluster_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster mode (etcd, flannel's layout; replaces "
                             "--subnet/--network/--peer)")
    g.add_argument("--etcd-endpoints", metavar="URL[,URL...]", default=None,
                   help="take the network config, our subnet lease and the peers from etcd")
    g.add_argument("--etcd-prefix", default=DEFAULT_PREFIX,
                   help=f"etcd key prefix (default {DEFAULT_PREFIX})")
    g.add_argument("--etcd-cafile", default=None, help="CA to verify etcd's certificate")
    g.add_argument("--etcd-certfile", default=None, help="client certificate for etcd")
    g.add_argument("--etcd-keyfile", default=None, help="client key for etcd")
    g.add_argument("--subnet-file", default=DEFAULT_SUBNET_FILE,
                   help=f"subnet file to write (default {DEFAULT_SUBNET_FILE})")
    g.add_argument("--lease-ttl", default=DEFAULT_LEASE_TTL,
                   help=f"subnet lease TTL in seconds (default {DEFAULT_LEASE_TTL}, as flannel)")
    g.add_argument("--ip-masq", action="store_true",
                   help="write FLANNEL_IPMASQ=true in the subnet file (default false)")


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
                         description="Run the data plane until SIGINT/SIGTERM.")
    _add_run_args(run)
    st = sub.add_parser("status", help="show the running daemon's routes and counters",
                        description="Query the daemon in this network namespace "
                                    "(root only).")
    st.add_argument("--iface", default=DEFAULT_IFACE,
                    help=f"TUN device of the daemon (default {DEFAULT_IFACE})")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    demo = sub.add_parser("demo", help="three hosts in network namespaces, traffic "
                                      "crossing, counters; cleans up (needs root)")
    demo.add_argument("--keep-going", action="store_true", help=argparse.SUPPRESS)
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _cmd_run(args) -> int:
    from udpoverlay.options import build_config
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s udpoverlay %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.etcd_endpoints:
        return _cmd_run_cluster(args)
    try:
        cfg = build_config(public_ip=args.public_ip, port=args.port, iface=args.iface,
                           subnet=args.subnet, network=args.network, peers=args.peer,
                           mtu=args.mtu, backend=args.backend,
                           underlay_iface=args.underlay_iface, vni=args.vni,
                           vtep_mac=args.vtep_mac, offload=not args.no_offload,
                           threads=args.threads)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    from udpoverlay import daemon
    try:
        return daemon.run(cfg)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except TunSetupError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 0


def _cmd_run_cluster(args) -> int:
    from udpoverlay.cluster import node as cluster
    from udpoverlay.errors import LeaseStoreError
    from udpoverlay.options import build_cluster_options
    try:
        opts = build_cluster_options(
            endpoints=args.etcd_endpoints, prefix=args.etcd_prefix,
            ca_file=args.etcd_cafile, cert_file=args.etcd_certfile,
            key_file=args.etcd_keyfile, subnet_file=args.subnet_file,
            lease_ttl=args.lease_ttl, ip_masq=args.ip_masq, public_ip=args.public_ip,
            underlay_iface=args.underlay_iface, iface=args.iface, mtu=args.mtu,
            vtep_mac=args.vtep_mac, subnet=args.subnet,
            network=args.network, peers=args.peer, offload=not args.no_offload,
            threads=args.threads)
        return cluster.run(opts)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except (TunSetupError, LeaseStoreError) as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 0


def _cmd_status(args) -> int:
    import os

    from udpoverlay.control import query_status
    from udpoverlay.status import format_status
    if os.geteuid() != 0:    # the socket is root's; say so, not "permission denied"
        return _fail("status needs root (the daemon's control socket is root-only)", 1)
    try:
        doc = query_status(args.iface, timeout=args.timeout)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Bare form: `udpoverlay --public-ip ...` means `udpoverlay run --public-ip ...`.
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "status":
        return _cmd_status(args)
    if args.command == "demo":
        return _cmd_demo(args)
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
