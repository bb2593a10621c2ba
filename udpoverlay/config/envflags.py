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
item's options (`,vtep-mac=MAC`, `,keepalive=N`, `,public-key=KEY`, ...)
stay with its peer and a comma inside a regex's `{m,n}` stays in the regex. Empty variables are ignored, as
flanneld does. Errors about a flag that came from the environment name the
variable, so the one-line message points at what to fix.

--env-file FILE reads FLANNELD_* settings from a file in systemd's
EnvironmentFile syntax (KEY=VALUE lines, '#' or ';' comments, single or
double quotes, a trailing backslash continues a line). Precedence: the
command line, then the real environment, then the file. Other keys in the
file are ignored (it may be shared with other units), a malformed line is
an error naming FILE:LINE. The file is read as config/textfile.py reads
the peers file: root's, not writable by others, a regular file (never a
FIFO), or refused in one line.
"""

from __future__ import annotations

import argparse
import re
from typing import Iterable, Mapping

from udpoverlay.config.textfile import read_text

__all__ = ["ENV_PREFIX", "env_name", "from_environment", "go_spelling", "parse_bool",
           "parse_level", "split_list", "annotate", "parse_env_file", "flag_names", "flag_value",
           "read_env_file", "ENV_FILE_LIMIT"]

ENV_PREFIX = "FLANNELD_"
ENV_FILE_LIMIT = 1 << 20       # bytes: an env file is a few lines, never megabytes
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
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
            if merged and item.startswith(_PEER_OPTIONS):
                merged[-1] += "," + item
            else:
                merged.append(item)
        items = merged
    return items


# a --peer item's options (config/peerspec.py): they stay with the peer before them
_PEER_OPTIONS = ("vtep-mac=", "keepalive=", "public-key=", "preshared-key-file=")


def _long_flags(action: argparse.Action) -> list[str]:
    return [o for o in action.option_strings if o.startswith("--")]


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """argparse dest -> the flag's first long name (`v` -> `--v`)."""
    return {a.dest: longs[0] for a in parser._actions if (longs := _long_flags(a))}


def _named(action: argparse.Action, argv: Iterable[str]) -> bool:
    """Does the command line give this flag (`--x`, `--x=v`, `-v2`)?"""
    for token in argv:
        name = token.split("=", 1)[0]
        for opt in action.option_strings:
            if name == opt or (len(opt) == 2 and not token.startswith("--")
                               and token.startswith(opt)):
                return True
    return False


def flag_value(argv: list[str], flag: str) -> str | None:
    """The last value given to `flag` in argv (`--f V` or `--f=V`), or None."""
    value = None
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(flag + "="):
            value = token[len(flag) + 1:]
    return value


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


def _unquote(value: str, where: str) -> str:
    """A value as systemd reads it: quotes removed, escapes in "..." resolved."""
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1) if quote == "'" else _closing(value)
        if end < 0 or value[end + 1:].strip():
            raise ValueError(f"{where}: unterminated or trailing text after a quoted value")
        inner = value[1:end]
        return inner if quote == "'" else re.sub(r'\\([\\"$`])', r"\1", inner)
    return value


def _closing(value: str) -> int:
    i = 1
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == '"':
            return i
        i += 1
    return -1


def parse_env_file(text: str, name: str = "env file") -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile syntax) -> {KEY: VALUE};
    ValueError naming name:line for a malformed line."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        start = n
        line = lines[n]
        n += 1
        while line.endswith("\\") and n < len(lines):   # continuation
            line = line[:-1] + lines[n]
            n += 1
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{name}:{start + 1}"
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not _ENV_KEY.match(key):
            raise ValueError(f"{where}: not KEY=VALUE")
        out[key] = _unquote(value.strip(), where)
    return out


def read_env_file(path: str) -> dict[str, str]:
    """The FLANNELD_* settings of an env file; ValueError in one line."""
    try:
        text = read_text(path, ENV_FILE_LIMIT)
    except ValueError as exc:
        raise ValueError(f"env file {path}: {exc}") from None
    return {k: v for k, v in parse_env_file(text, path).items() if k.startswith(ENV_PREFIX)}
