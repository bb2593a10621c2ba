"""SIGHUP: re-read --env-file and apply what can change without a restart.

Why re-parse the whole command line: the settings a reload sees must be
exactly the ones a restart would see (command line > environment > env
file, the same checks), so the reload runs the same intake again
(config.parser: parse_run_args + run_options, raising instead of exiting) with the
same argv and environment, and compares the result with the settings at
start, flag by flag:
- live: -v (FLANNELD_V) and --log-format (FLANNELD_LOG_FORMAT) are applied
  at once, one INFO line each;
- everything else that differs is logged as "FLANNELD_X changed in FILE,
  needs a restart", one WARNING per setting, on every SIGHUP until the
  daemon is restarted (the running value stays);
- a file that cannot be read or holds a bad value: one ERROR line, the
  running settings stay (Daemon.reload logs the ConfigError). That covers
  a file that is not root's (or writable by others), a FIFO or anything
  but a regular file (config/textfile.py).
The re-read and re-parse run off the event loop on a daemon thread,
bounded in time (textfile.off_loop): a read that blocks stalls neither the
traffic nor /healthz, and never holds up a stop.
Without --env-file there is nothing of ours to re-read (other reloaders,
such as static mode's --peers-file, still run).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Mapping

from udpoverlay.config import envflags
from udpoverlay.config.parser import flag_of_dest, parse_run_args, run_options
from udpoverlay.config.textfile import off_loop
from udpoverlay.errors import ConfigError
from udpoverlay.ops import logs

__all__ = ["EnvReload", "LIVE"]

log = logging.getLogger(__name__)

LIVE = ("v", "log_format")      # argparse dests applied without a restart


def _parse(argv: list[str], environ: Mapping[str, str], *, announce: bool = True,
           ) -> tuple[argparse.Namespace, dict[str, str], Any]:
    """(arguments, their FLANNELD_* sources, Options): the start's own parse;
    variables that are not ours are WARNINGs again (not at the baseline: the
    start already said them)."""
    notes: list[str] = []
    args, sources = parse_run_args(argv, environ, raising=True, notes=notes)
    for note in notes if announce else ():
        log.warning("SIGHUP: %s", note)
    return args, sources, run_options(args)   # the same checks as at start


class EnvReload:
    """Holds the settings at start; reload() applies the live changes."""

    def __init__(self, env_file: str | None, argv: list[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.env_file = env_file
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.environ = os.environ if environ is None else environ
        self.start: dict[str, Any] | None = None
        self.live: dict[str, Any] = {}

    def baseline(self, expected: Any = None) -> None:
        """Parse once at start. `expected` (the running Options): if the
        parse does not give them, argv is not ours and reloads are off."""
        if self.env_file is None:
            return
        try:
            args, _, opts = _parse(self.argv, self.environ, announce=False)
            if expected is not None and opts != expected:
                raise ConfigError("the command line seen now differs from the one at start")
        except (ConfigError, SystemExit) as exc:
            log.warning("SIGHUP will not re-read %s: %s", self.env_file, exc)
            return
        self.start = vars(args)
        self.live = {k: self.start[k] for k in LIVE}

    async def reload(self) -> None:
        if self.env_file is None:
            log.debug("SIGHUP: no --env-file, no settings to re-read")
            return
        if self.start is None:
            log.warning("SIGHUP: not re-reading %s (see the warning at start)", self.env_file)
            return
        args, sources, _ = await off_loop(_parse, self.argv, self.environ,
                                          what=f"--env-file {self.env_file}")
        new = vars(args)
        flags = flag_of_dest()
        for dest in sorted(new):
            if dest in LIVE or new[dest] == self.start.get(dest):
                continue
            flag = flags.get(dest, dest)
            var = sources.get(flag, envflags.env_name(flag)).split(" in ")[0]
            log.warning("%s changed in %s, needs a restart (running with %s=%s)", var,
                        self.env_file, flag, _shown(dest, self.start.get(dest)))
        if new["v"] != self.live["v"]:
            logs.set_verbosity(new["v"])
            log.info("SIGHUP: log verbosity -v %d (was %d)", new["v"], self.live["v"])
        if new["log_format"] != self.live["log_format"]:
            logs.set_format(new["log_format"])
            log.info("SIGHUP: log format %s (was %s)", new["log_format"],
                     self.live["log_format"])
        self.live = {k: new[k] for k in LIVE}


def _shown(dest: str, value: Any) -> str:
    """A running value for a log line; secrets are not printed."""
    return "(hidden)" if "password" in dest else str(value)
