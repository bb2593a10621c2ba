"""Netlink access (pyroute2, sync) for the host modules.

pyroute2's sync IPRoute must run before the event loop starts or through
asyncio.to_thread: inside a running loop it fails, and a uvloop event-loop
policy breaks it entirely (pyroute2 0.9 under uvloop 0.23).
"""

from __future__ import annotations

from typing import Any

from udpoverlay.errors import TunSetupError

__all__ = ["netlink", "attr"]


def netlink() -> Any:
    """A fresh IPRoute (use as a context manager); TunSetupError without pyroute2."""
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise TunSetupError(f"pyroute2 is required: {exc}") from None
    return IPRoute()


def attr(msg: Any, name: str) -> Any:
    """An attribute of a netlink message (or of a plain dict in tests)."""
    return msg.get_attr(name) if hasattr(msg, "get_attr") else msg.get(name)
