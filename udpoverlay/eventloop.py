"""The process's event loop: which one runs (uvloop unless
UDPOVERLAY_LOOP=asyncio), its name for status and metrics, and the signal
set-up before the loop owns the signals. Shared by both modes' runners."""

from __future__ import annotations

import asyncio
import os
import signal

from udpoverlay.errors import ConfigError

__all__ = ["run_loop", "loop_name", "interrupt_on_sigterm"]


def run_loop(coro) -> int:
    """Run coro on uvloop when installed, unless UDPOVERLAY_LOOP=asyncio asks
    for the stock loop. uvloop.run(), never a uvloop policy: pyroute2 breaks
    under one."""
    choice = os.environ.get("UDPOVERLAY_LOOP", "").strip().lower()
    if choice not in ("", "uvloop", "asyncio"):
        raise ConfigError(f"UDPOVERLAY_LOOP={choice!r}: choose uvloop or asyncio")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("UDPOVERLAY_LOOP=uvloop but uvloop is not installed") from None
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def loop_name() -> str:
    """'uvloop' or 'asyncio': the running event loop, for status."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "none"
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def interrupt_on_sigterm() -> None:
    """Until the loop installs its handlers, SIGTERM unwinds like Ctrl-C, so
    set-up is undone (and the exit is clean) even during start-up."""
    def _interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _interrupt)
    # SIGHUP means "reload" (systemctl reload), never "exit": ignored until
    # serve() installs the reload handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

