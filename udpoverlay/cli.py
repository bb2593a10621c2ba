"""Command line: the subcommands and their dispatch. The `run` flags, their
environment and their checks are the config package's (config/flags.py).

  udpoverlay [run] --subnet CIDR --network CIDR --peer HOST=CIDR ... [--peers-file F]
  udpoverlay [run] --etcd-endpoints URL [--iface IFACE] ...     (cluster mode)
  udpoverlay status [--tun X] [--json]
  udpoverlay --version

`run` takes flanneld's flags with flanneld's meanings, also from FLANNELD_*
variables, from an --env-file (the command line wins, then the environment,
then the file) and in Go's `-flag=value` spelling (see config/envflags.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from udpoverlay import __version__
from udpoverlay.config import envflags
from udpoverlay.config.defaults import DEFAULT_TUN
from udpoverlay.config.parser import PROG, Parser, add_run_args, parse_run, run_options
from udpoverlay.errors import ConfigError, ControlError, TunSetupError

__all__ = ["main", "build_parser", "parse_args", "run_options"]

SUBCOMMANDS = ("run", "status")


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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="User-space overlay data plane (TUN <-> UDP), a drop-in for "
                    "flannel's udp backend. Without a subcommand, runs the daemon "
                    "('run').",
        epilog="example: udpoverlay --public-ip 198.18.0.1 --subnet 198.19.1.0/24 "
               "--network 198.19.0.0/16 --peer 198.18.0.2=198.19.2.0/24")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=Parser)
    run = sub.add_parser("run", help="run the daemon in the foreground (default)",
                         description="Run the data plane until SIGINT/SIGTERM. Every flag "
                                     "can also come from FLANNELD_<FLAG> (upper case, dashes "
                                     "to underscores; repeatable flags comma-separated); "
                                     "the command line wins.")
    add_run_args(run)
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
    return parser


def _fail(message: str, code: int = 2, env: dict[str, str] | None = None) -> int:
    print(f"{PROG}: error: {envflags.annotate(message, env or {})}", file=sys.stderr)
    return code


def _cmd_run(args, env: dict[str, str]) -> int:
    from udpoverlay.errors import FirewallError, LeaseStoreError
    try:    # every check before anything is created or written
        opts = run_options(args)
    except ConfigError as exc:
        return _fail(str(exc), 2, env)
    from udpoverlay.ops import logs
    logs.setup(opts.verbosity, opts.log_format)
    for note in getattr(args, "variable_notes", ()):
        logging.getLogger("udpoverlay.config").warning("%s", note)
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
    notes: list[str] = []
    if argv and argv[0] == "run":
        run = parser.run_parser     # type: ignore[attr-defined]
        run.raising = raising
        flags, env = parse_run(run, argv[1:], environ)
        notes = run.notes
        argv = ["run", *flags]
    args = parser.parse_args(argv)
    args.variable_notes = notes     # logged once logging is set up
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
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
