"""Reading a small configuration file (env file, peers file) whole, with a
size cap: a file that someone pointed at /dev/zero or a log must give a
one-line error, not eat the daemon's memory on every SIGHUP."""

from __future__ import annotations

__all__ = ["read_text"]


def read_text(path: str, limit: int) -> str:
    """The UTF-8 text of `path`; ValueError with the reason (without the
    path: callers say which file it was and what it is for)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
