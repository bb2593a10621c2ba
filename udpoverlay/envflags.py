"""flanneld's way of reading flags, for `udpoverlay run`.

flanneld (Go's flag package plus flagutil.SetFlagsFromEnv) reads every flag
also from `FLANNELD_<FLAG>` (upper case, dashes to underscores) when it is
not on the command line, accepts `-flag` as well as `--flag`, and takes
booleans as `--flag`, `--flag=true|false|1|0`. Deployments (systemd units,
DaemonSets) rely on all three, so a drop-in must too.

How: the environment is turned into `--flag=value` arguments placed before
the command line's, for flags the command line does not name, so argparse
checks them exactly as typed flags and the command line wins. Repeatable
flags take comma-separated lists (`FLANNELD_IFACE=eth0,eth1`); a --peer
item's `,vtep-mac=MAC` option stays with its peer and a comma inside a
regex's `{m,n}` stays in the regex. Empty variables are ignored, as
flanneld does. Errors about a flag that came from the environment name the
variable, so the one-line message points at what to fix.
"""

from __future__ import annotations

import argparse
import re
from typing import Iterable, Mapping

__all__ = ["ENV_PREFIX", "env_name", "from_environment", "go_spelling", "parse_bool",
           "parse_level", "split_list", "annotate"]

ENV_PREFIX = "FLANNELD_"
_TRUE = ("1", "t", "true")          # Go's strconv.ParseBool, case-insensitive
_FALSE = ("0", "f", "false")


def parse_bool(text: str) -> bool:
    """A flag's boolean value; argparse reports a bad one in one line."""
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"bad boolean {text!r} (true, false, 1 or 0)")


def parse_level(text: str) -> int:
    """-v N: a log level 0..10."""
    try:
        level = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad level {text!r} (a number, 0-10)") from None
    if not 0 <= level <= 10:
        raise argparse.ArgumentTypeError(f"level {level} out of range (0-10)")
    return level


def env_name(flag: str) -> str:
    """`--iface-can-reach` -> `FLANNELD_IFACE_CAN_REACH`."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def split_list(flag: str, text: str) -> list[str]:
    """A repeatable flag's comma-separated environment value, split."""
    items: list[str] = []
    depth = 0
    current = ""
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth <= 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    items = [i.strip() for i in items if i.strip()]
    if flag == "--peer":        # `IP=SUBNET,vtep-mac=MAC`: the option belongs to its peer
        merged: list[str] = []
        for item in items:
            if merged and item.startswith("vtep-mac="):
                merged[-1] += "," + item
            else:
                merged.append(item)
        items = merged
    return items


def _long_flags(action: argparse.Action) -> list[str]:
    return [o for o in action.option_strings if o.startswith("--")]


def _named(action: argparse.Action, argv: Iterable[str]) -> bool:
    """Does the command line give this flag (`--x`, `--x=v`, `-v2`)?"""
    for token in argv:
        name = token.split("=", 1)[0]
        for opt in action.option_strings:
            if name == opt or (len(opt) == 2 and not token.startswith("--")
                               and token.startswith(opt)):
                return True
    return False


def go_spelling(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Go's `-flag[=value]` spelling of our long flags -> `--flag[=value]`."""
    known = {o for a in parser._actions for o in _long_flags(a)}
    out = []
    for token in argv:
        name = token.split("=", 1)[0]
        if token.startswith("-") and not token.startswith("--") and "-" + name in known:
            token = "-" + token
        out.append(token)
    return out


def from_environment(parser: argparse.ArgumentParser, argv: list[str],
                     environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Arguments for the FLANNELD_* variables of flags argv does not name,
    and which flag came from which variable."""
    injected: list[str] = []
    sources: dict[str, str] = {}
    for action in parser._actions:
        flags = _long_flags(action)
        if not flags or isinstance(action, argparse._HelpAction) or _named(action, argv):
            continue
        for flag in flags:      # the flag's own name first, then its aliases
            value = environ.get(env_name(flag), "")
            if not value.strip():
                continue
            if isinstance(action, argparse._AppendAction):
                injected += [f"{flags[0]}={item}" for item in split_list(flags[0], value)]
            else:
                injected.append(f"{flags[0]}={value}")
            for opt in action.option_strings:
                sources[opt] = env_name(flag)
            break
    return injected, sources


def annotate(message: str, sources: Mapping[str, str]) -> str:
    """Name the variable behind a flag the message mentions (one line)."""
    for flag, var in sources.items():
        if re.search(re.escape(flag) + r"(?![\w-])", message):
            return f"{message} (from {var})"
    return message
