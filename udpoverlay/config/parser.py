"""The `run` command line, generated from the flag table (flags.py), and the
whole intake: command line > FLANNELD_* environment > --env-file, in Go's
`-flag=value` spelling too (envflags.py). The CLI (cli.py) and the SIGHUP
reload (ops/reload.py) both parse through here, so a reload sees exactly
what a restart would.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from udpoverlay.config import envflags
from udpoverlay.config.flags import FLAGS, GROUPS, Flag
from udpoverlay.config.options import Options, build_options
from udpoverlay.config.variables import check_variables
from udpoverlay.errors import ConfigError

__all__ = ["Parser", "PROG", "add_run_args", "run_parser", "parse_run", "parse_run_args",
           "fields_of", "run_options", "flag_of_dest"]

PROG = "udpoverlay"


class Parser(argparse.ArgumentParser):
    env_sources: dict[str, str] = {}     # flag -> FLANNELD_* variable it came from
    raising = False                      # raise ConfigError instead of exiting (a reload)
    notes: list[str] = []                # WARNINGs to log once logging is set up

    def error(self, message):  # one line, exit 2
        message = envflags.annotate(message, self.env_sources)
        if self.raising:
            raise ConfigError(message)
        self.exit(2, f"{PROG}: error: {message}\n")


def _dest(row: Flag) -> str:
    return row.name.lstrip("-").replace("-", "_")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Every row of the table as an argparse argument, in its group."""
    groups = {key: p.add_argument_group(title) for key, title in GROUPS}
    for row in FLAGS:
        names = [*([row.parse["short"]] if "short" in row.parse else []), row.name,
                 *row.aliases]
        kw: dict[str, Any] = dict(default=row.default, help=row.help, dest=_dest(row))
        if row.metavar:
            kw["metavar"] = row.metavar
        if row.choices:
            kw["choices"] = row.choices
        if row.kind == "bool":        # flanneld's `--x`, `--x=true|false|1|0`
            kw.update(nargs="?", const=True, type=envflags.parse_bool, metavar="BOOL")
        elif row.kind == "append":
            kw["action"] = "append"
        if row.parse.get("type") == "level":
            kw.update(nargs=row.parse["nargs"], const=row.parse["const"],
                      type=envflags.parse_level)
        groups[row.group].add_argument(*names, **kw)


def run_parser() -> Parser:
    p = Parser(prog=f"{PROG} run")
    add_run_args(p)
    return p


def flag_of_dest() -> dict[str, str]:
    """argparse dest -> the flag's name (for messages about a setting)."""
    return {_dest(row): row.name for row in FLAGS}


def fields_of(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed `run` arguments as the Options builders take them."""
    out = {}
    for row in FLAGS:
        value = getattr(args, _dest(row))
        out[row.field] = (not value) if row.invert else value
    return out


def run_options(args: argparse.Namespace) -> Options:
    """The parsed `run` arguments validated into Options (ConfigError if bad)."""
    return build_options(fields_of(args))


def _env_file_settings(run: Parser, flags: list[str],
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


def parse_run(run: Parser, argv: list[str], environ: Mapping[str, str] | None = None,
              ) -> tuple[list[str], dict[str, str]]:
    """`run`'s own arguments with the environment and the env file folded
    in (as `--flag=value` before the command line's, so the command line
    wins) -> (arguments for argparse, {flag: FLANNELD_* variable it came
    from}). `run` reports errors naming that variable."""
    environ = os.environ if environ is None else environ
    flags = envflags.go_spelling(run, argv)
    path, settings = _env_file_settings(run, flags, environ)
    try:
        run.notes = check_variables(environ, settings, path)
    except ConfigError as exc:
        run.error(str(exc))
    injected, env = envflags.from_environment(run, flags, {**settings, **environ})
    env = {flag: var if var in environ else f"{var} in {path}" for flag, var in env.items()}
    run.env_sources = env
    return [*injected, *flags], env


def parse_run_args(argv: list[str], environ: Mapping[str, str] | None = None, *,
                   raising: bool = False, notes: list[str] | None = None,
                   ) -> tuple[argparse.Namespace, dict[str, str]]:
    """`[run] FLAGS...` as the daemon was started -> (arguments, sources);
    bad arguments exit 2 in one line, or raise ConfigError with `raising`.
    `notes` receives the WARNINGs about variables that are not ours."""
    argv = list(argv)
    if argv[:1] == ["run"]:
        argv = argv[1:]
    run = run_parser()
    run.raising = raising
    args, env = parse_run(run, argv, environ)
    if notes is not None:
        notes.extend(run.notes)
    return run.parse_args(args), env
