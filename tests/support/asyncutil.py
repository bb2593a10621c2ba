"""Running async code from plain pytest functions, always with a deadline.

Why: pytest-asyncio is not a dependency; a sync test calls run(coro). Every
wait is bounded in time, so a broken control plane fails a test instead of
hanging the suite.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from typing import Any, Callable, Coroutine

__all__ = ["run", "use_loop", "LOOPS", "wait_until", "Recorder", "FakeClock"]


LOOPS = ("asyncio", "uvloop")
_loop = os.environ.get("UDPOVERLAY_TEST_LOOP", "asyncio")


def use_loop(kind: str) -> str:
    """Run later run() calls on stock asyncio or uvloop (what the daemon
    uses); returns the previous choice."""
    global _loop
    if kind not in LOOPS:
        raise ValueError(f"unknown event loop {kind!r}")
    previous, _loop = _loop, kind
    return previous


def run(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """asyncio.run (or uvloop.run) with a hard deadline."""
    if _loop == "uvloop":
        import uvloop
        return uvloop.run(asyncio.wait_for(coro, timeout))
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate: Callable[[], Any], timeout: float = 2.0,
                     what: str = "condition", interval: float = 0.01) -> Any:
    """Poll predicate (sync or async) until truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Recorder:
    """An apply_peers callback that remembers every full peer list."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def __call__(self, peers: list) -> None:
        self.calls.append(list(peers))

    @property
    def last(self) -> list | None:
        return self.calls[-1] if self.calls else None

    def subnets(self) -> list[str] | None:
        return None if self.last is None else sorted(str(p.subnet) for p in self.last)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
