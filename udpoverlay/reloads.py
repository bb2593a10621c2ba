"""SIGHUP: the registered reloaders run in order on the loop, one reload at a
time. SIGHUPs during a reload make one more run after it, so the last change
of a file is never missed; a failing reloader is logged, the others still
run, and traffic is never touched (the running state stays)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine

__all__ = ["Reloads"]

log = logging.getLogger(__name__)

Reloader = Callable[[], Coroutine[Any, Any, None]]


class Reloads:
    def __init__(self) -> None:
        self.reloaders: list[Reloader] = []
        self.task: asyncio.Task | None = None
        self._again = False

    def request(self) -> None:
        """Start a reload (from the loop's SIGHUP handler)."""
        if self.task is not None and not self.task.done():
            log.info("SIGHUP: a reload is running; another follows it")
            self._again = True
            return
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            log.info("SIGHUP: reloading")
            for reloader in list(self.reloaders):
                try:
                    await reloader()
                except Exception as exc:  # noqa: BLE001 - keep the running state
                    log.error("reload failed, running state kept: %s", exc)
            if not self._again:
                return
