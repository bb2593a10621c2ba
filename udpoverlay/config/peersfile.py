"""The peers file (--peers-file): static peers in TOML, read with the
standard library's tomllib, merged with the --peer flags, re-read on SIGHUP.

    keepalive = 25                 # optional: the default for this file's peers

    [[peer]]
    host = "bob.example.net"       # a DNS name or an IPv4 address
    port = 8285                    # optional: --port
    subnet = "198.19.2.0/24"
    vtep-mac = "02:00:00:00:00:02" # optional, --backend vxlan only
    keepalive = 25                 # optional: seconds, 0 = off
    public-key = "BASE64"          # --backend wireguard: required (the peer's `wg pubkey`)
    preshared-key-file = "PATH"    # --backend wireguard: optional

Every problem is one ConfigError line naming the file, the line of the
peer's `[[peer]]` header (tomllib gives no line per value) and the peer:
the caller fails at start, and on a reload logs it and keeps the running
table. Unknown keys are errors, so a typo never silently drops a setting.
"""

from __future__ import annotations

import re
import tomllib

from udpoverlay.config.peerspec import (
    check_host,
    check_keepalive,
    check_key_path,
    check_public_key,
    parse_peer_spec,
)
from udpoverlay.config.textfile import read_text
from udpoverlay.errors import ConfigError
from udpoverlay.peer import PeerSpec

__all__ = ["load", "parse"]

_KEYS = {"host", "port", "subnet", "vtep-mac", "keepalive", "public-key", "preshared-key-file"}
_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*peer[ \t]*\]\]", re.MULTILINE)
MAX_BYTES = 1 << 20       # a peers file, not a data set


def load(path: str, default_port: int) -> list[PeerSpec]:
    """Read and parse `path`; ConfigError (one line) if unreadable or bad."""
    try:
        text = read_text(path, MAX_BYTES)
    except ValueError as exc:
        raise ConfigError(f"--peers-file {path}: {exc}") from None
    return parse(text, path, default_port)


def parse(text: str, path: str, default_port: int) -> list[PeerSpec]:
    """The PeerSpecs the TOML `text` lists (origin "PATH:LINE")."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    extra = set(doc) - {"peer", "keepalive"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level key {sorted(extra)[0]!r} "
                          f"(expected [[peer]] tables and keepalive)")
    default_keepalive = None
    if "keepalive" in doc:
        default_keepalive = _keepalive(doc["keepalive"], f"{path}: keepalive")
    entries = doc.get("peer", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: 'peer' must be [[peer]] tables")
    lines = [text.count("\n", 0, m.start()) + 1 for m in _HEADER.finditer(text)]
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}:{lines[i]}" if i < len(lines) else path
        out.append(_entry(entry, where, i + 1, default_port, default_keepalive))
    return out


def _keepalive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what}: expected whole seconds, got {value!r}")
    return check_keepalive(value, what)


def _entry(entry: dict, where: str, n: int, default_port: int,
           default_keepalive: int | None) -> PeerSpec:
    name = entry.get("host")
    what = f"{where}: peer {n}" + (f" ({name})" if isinstance(name, str) else "")
    unknown = set(entry) - _KEYS
    if unknown:
        raise ConfigError(f"{what}: unknown key {sorted(unknown)[0]!r} "
                          f"(expected {', '.join(sorted(_KEYS))})")
    for key in ("host", "subnet"):
        if not isinstance(entry.get(key), str):
            raise ConfigError(f"{what}: {key} is required (a string)")
    port = entry.get("port", default_port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise ConfigError(f"{what}: port must be a number, got {port!r}")
    host = check_host(entry["host"], what)
    text = f"{host}:{port}={entry['subnet']}"
    if "vtep-mac" in entry:
        if not isinstance(entry["vtep-mac"], str):
            raise ConfigError(f"{what}: vtep-mac must be a string")
        text += f",vtep-mac={entry['vtep-mac']}"
    try:
        spec = parse_peer_spec(text, default_port)
    except ConfigError as exc:      # the message names the synthetic --peer: rename
        raise ConfigError(f"{what}: " + str(exc).split(": ", 1)[-1]) from None
    keepalive = (_keepalive(entry["keepalive"], f"{what}: keepalive") if "keepalive" in entry
                 else default_keepalive)
    public_key = (check_public_key(entry["public-key"], what) if "public-key" in entry
                  else None)
    psk_file = (check_key_path(entry["preshared-key-file"], what)
                if "preshared-key-file" in entry else None)
    return PeerSpec(spec.host, spec.port, spec.subnet, spec.vtep_mac, keepalive, origin=where,
                    public_key=public_key, preshared_key_file=psk_file)
