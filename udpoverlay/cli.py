"""Command line: the subcommands and their dispatch. The `run` flags, their
environment and their checks are the config package's (config/flags.py).

  udpoverlay [run] --subnet CIDR --network CIDR --peer HOST=CIDR ... [--peers-file F]
  udpoverlay [run] --etcd-endpoints URL [--iface IFACE] ...     (cluster mode)
  udpoverlay status [--tun X] [--json]      (exit 0 ready, 3 starting/stopping)
  udpoverlay pubkey [--private-key-file PATH]   (or the private key on stdin)
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
from udpoverlay.config.defaults import DEFAULT_TUN, LOG_FORMATS
from udpoverlay.config.parser import PROG, Parser, add_run_args, fields_of, parse_run, run_options
from udpoverlay.errors import ConfigError, ControlError, TunSetupError

__all__ = ["main", "build_parser", "parse_args", "run_options"]

SUBCOMMANDS = ("run", "status", "pubkey")
NOT_READY = 3       # `status` answered, but the daemon is starting or stopping


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
                    "('run'). The daemon's flags (flanneld's, also as FLANNELD_* "
                    "variables): udpoverlay run --help.",
        epilog="examples: static mode: udpoverlay run --public-ip 198.18.0.1 "
               "--subnet 198.19.1.0/24 --network 198.19.0.0/16 --peer 198.18.0.2=198.19.2.0/24; "
               "cluster mode (flannel's etcd layout): udpoverlay run --etcd-endpoints "
               "http://198.18.0.254:2379")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=Parser)
    run = sub.add_parser("run", help="run the daemon in the foreground (default); "
                                     "its flags: udpoverlay run --help",
                         description="Run the data plane until SIGINT/SIGTERM: static mode "
                                     "with --subnet and --network (and --peer or "
                                     "--peers-file), cluster mode with --etcd-endpoints. "
                                     "Every flag can also come from FLANNELD_<FLAG> (upper "
                                     "case, dashes to underscores; repeatable flags "
                                     "comma-separated); the command line wins. A bad "
                                     "setting exits 2.")
    add_run_args(run)
    parser.run_parser = run       # type: ignore[attr-defined]
    st = sub.add_parser("status", help="show the running daemon's routes and counters, or "
                                       "what its start-up waits for",
                        description="Query the daemon in this network namespace "
                                    "(root only), also while it starts: the answer then "
                                    "says what it waits for. Exit 0 when the daemon is "
                                    "ready, 3 while it starts or stops, 1 when no daemon "
                                    "answers. The daemon is named by its TUN device "
                                    "(--tun).")
    st.add_argument("--tun", default=DEFAULT_TUN,
                    help=f"TUN device of the daemon (default {DEFAULT_TUN})")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    parser.status_parser = st     # type: ignore[attr-defined]
    pk = sub.add_parser("pubkey", help="print the WireGuard public key of a private key",
                        description="As `wg pubkey`: the private key (wg genkey format) from "
                                    "standard input or --private-key-file; prints the public "
                                    "key to give peers (--peer ...,public-key=KEY).")
    pk.add_argument("--private-key-file", metavar="PATH",
                    help="read the key from this file (owned by you, mode 0600 or 0400)")
    return parser


def _fail(message: str, code: int = 2, env: dict[str, str] | None = None,
          fmt: str | None = None) -> int:
    """One line for an error that ends the command (ops/logs.fatal: priority
    err under journald, JSON with --log-format json); the exit status."""
    from udpoverlay.ops import logs
    logs.fatal(envflags.annotate(message, env or {}), code, fmt)
    return code


def _peek_format(argv: list[str], environ) -> str:
    """The --log-format a command line asks for, for an error found before
    logging is set up: the command line (either spelling), else
    FLANNELD_LOG_FORMAT, else the --env-file's (best effort: text when
    unknown)."""
    flags = [("-" + t) if t.startswith("-log-format") or t.startswith("-env-file") else t
             for t in argv]
    value = envflags.flag_value(flags, "--log-format") or environ.get("FLANNELD_LOG_FORMAT")
    if value is None:
        path = envflags.flag_value(flags, "--env-file") or environ.get("FLANNELD_ENV_FILE")
        if path:
            try:
                value = envflags.read_env_file(path).get("FLANNELD_LOG_FORMAT")
            except (OSError, ValueError):
                value = None
    value = (value or "").strip().lower()
    return value if value in LOG_FORMATS else "text"


def _run_mode_given(args) -> None:
    """Neither mode asked for: say both ways (ConfigError)."""
    fields = fields_of(args)
    if not fields.get("endpoints") and not fields.get("subnet"):
        raise ConfigError("nothing to run: give --subnet and --network (static mode, with "
                          "--peer or --peers-file) or --etcd-endpoints (cluster mode, "
                          "flannel's etcd layout); see udpoverlay run --help")


def _cmd_run(args, env: dict[str, str]) -> int:

    from udpoverlay.errors import FirewallError, LeaseStoreError
    fmt = args.log_format if args.log_format in LOG_FORMATS else "text"
    try:    # every check before anything is created or written
        _run_mode_given(args)
        opts = run_options(args)
    except ConfigError as exc:
        return _fail(str(exc), 2, env, fmt)
    from udpoverlay.ops import logs
    logs.setup(opts.verbosity, opts.log_format)
    log = logging.getLogger("udpoverlay.cli")
    log.info("udpoverlay %s starting: %s mode, TUN %s", __version__,
             "cluster" if opts.cluster else "static", opts.tun)
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
        log.info("stopped")
        return 0
    except Exception:  # noqa: BLE001 - a bug: one record (journald/JSON keep it on one line)
        log.exception("unexpected error, exiting")
        return 1


def _cmd_status(args) -> int:
    from udpoverlay.control import query_status
    from udpoverlay.status import format_status
    if os.geteuid() != 0:    # the socket is root's; say so, not "permission denied"
        return _fail("status needs root (the daemon's control socket is root-only)", 1)
    try:
        doc = query_status(args.tun, timeout=args.timeout)
    except ControlError as exc:
        return _fail(str(exc), 1)
    ready = doc.get("phase", "ready") == "ready"
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif "waiting_for" in doc or (not ready and "peers" not in doc):
        print(_format_starting(doc))
    else:
        print(format_status(doc))
    return 0 if ready else NOT_READY


def _format_starting(doc: dict) -> str:
    """The start-up document (the daemon is not ready yet) as text."""
    what = doc.get("waiting_for")
    lines = [f"udpoverlay {doc.get('version', '?')} on {doc.get('tun')} "
             f"({doc.get('mode', '?')} mode): {doc.get('phase', '?')}"
             + (f", waiting for {what} ({doc.get('waiting_seconds', 0):.0f}s)" if what else ""),
             f"  uptime {doc.get('uptime', 0):.0f}s"]
    cluster = doc.get("cluster")
    if isinstance(cluster, dict) and cluster.get("store"):
        lines.append(f"  etcd: {cluster['store']}")
    return "\n".join(lines)


def _cmd_pubkey(args) -> int:
    from udpoverlay.wgplane.pubkey import public_key_of
    try:
        public_key_of(args.private_key_file, sys.stdin.buffer, sys.stdout)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    return 0


def parse_args(argv: list[str], environ=None, *,
               raising: bool = False) -> tuple[argparse.Namespace, dict[str, str]]:
    """argv as `main` takes it -> (arguments, {flag: FLANNELD_* variable it
    came from}); `run` flags also from `environ` (default os.environ) and
    from --env-file. Bad arguments exit 2 with one line (argparse's
    SystemExit), or raise ConfigError with `raising` (main, a SIGHUP
    reload)."""
    argv = list(argv)
    # Bare form: `udpoverlay --public-ip ...` means `udpoverlay run --public-ip ...`.
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    parser = build_parser()
    for p in (parser, parser.run_parser, parser.status_parser):  # type: ignore[attr-defined]
        p.raising = raising     # type: ignore[union-attr]
    env: dict[str, str] = {}
    notes: list[str] = []
    if argv and argv[0] == "run":
        run = parser.run_parser     # type: ignore[attr-defined]
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
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, env = parse_args(argv, raising=True)
    except ConfigError as exc:
        return _fail(str(exc), 2, fmt=_peek_format(argv, os.environ))
    if args.command == "run":
        return _cmd_run(args, env)
    if args.command == "status":
        return _cmd_status(args)
    if args.command == "pubkey":
        return _cmd_pubkey(args)
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
