"""JSON the way Go's encoding/json reads and writes it.

Why: flannel (Go) writes and reads the etcd config and lease values, and we
must agree with it byte for byte. Two Go habits matter:

- Reading: an object key matches a struct field case-insensitively (the
  last matching key in the document wins), a JSON `null` leaves the field at
  its default, and NaN/Infinity are not JSON.
- Writing: compact output (no spaces), struct fields in declaration order
  (we pass dicts already in that order), non-ASCII left as UTF-8, and
  `<`, `>`, `&`, U+2028, U+2029 escaped as \\u003c, \\u003e, \\u0026,
  \\u2028, \\u2029 (HTML-safe escaping is on by default in json.Marshal).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

__all__ = ["GoObject", "loads", "dumps", "ip4"]

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
               "\u2028": "\\u2028", "\u2029": "\\u2029"}


class GoObject(dict):
    """A decoded JSON object that also answers Go's case-insensitive lookup."""

    __slots__ = ("_folded",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self._folded = {k.lower(): v for k, v in pairs}  # later keys win, like Go

    def field(self, name: str, default: Any = None) -> Any:
        """The value Go would decode into struct field `name`; null -> default."""
        value = self._folded.get(name.lower())
        return default if value is None else value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """Parse JSON; objects become GoObject. ValueError on anything Go rejects."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")  # Go substitutes U+FFFD
    return json.loads(text, object_pairs_hook=GoObject, parse_constant=_reject_constant)


def dumps(value: Any) -> str:
    """Compact JSON as json.Marshal writes it (dict order is kept as given)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # These characters can only occur inside JSON strings, so a plain replace is exact.
    for char, escaped in _GO_ESCAPES.items():
        if char in text:
            text = text.replace(char, escaped)
    return text


def ip4(value: Any) -> ipaddress.IPv4Address | None:
    """A JSON value as flannel's ip.IP4 decodes it: a dotted-quad string; else None."""
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None
