"""Lifecycle: where the daemon is between start and exit, for everything
that reports it to the outside (the /readyz endpoint, systemd's
$NOTIFY_SOCKET, status) without reaching into the daemon.

    starting --(data plane up; cluster mode: lease held, subnet.env written)--> ready
    starting | ready --(shutdown)--> stopping

`waiting_for` says in words what start-up is waiting for ("etcd", "the
network config", "a subnet lease", ...), so a 503, `udpoverlay status` and
systemd's STATUS= line explain themselves; `waiting_since` is when that
started (monotonic). The
mode runners (static/mode.py, cluster/mode.py) create one Lifecycle at the
very start, before anything can block, and hand it to the Daemon.
Listeners hear every phase change and, while starting, every change of
what start-up waits for (called with STARTING). They run on the event
loop's thread, in order; one that raises is logged and skipped, never
allowed to stop the daemon.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

__all__ = ["Lifecycle", "STARTING", "READY", "STOPPING"]

log = logging.getLogger(__name__)

STARTING, READY, STOPPING = "starting", "ready", "stopping"


class Lifecycle:
    """The phase, since when, and who wants to hear about changes."""

    def __init__(self) -> None:
        self.phase = STARTING
        self.started = time.monotonic()
        self.changed = self.started
        self.waiting_for = "start-up"
        self.waiting_since = self.started
        self._listeners: list[Callable[[str], None]] = []

    @property
    def ready(self) -> bool:
        return self.phase == READY

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call listener(phase) on every change, and now."""
        self._listeners.append(listener)
        self._call(listener)

    def waiting(self, what: str) -> None:
        """Start-up is blocked on `what` (shown by /readyz, status and
        systemd's STATUS=); listeners hear it when it changes."""
        if self.phase == STARTING and what != self.waiting_for:
            self.waiting_for = what
            self.waiting_since = time.monotonic()
            for listener in list(self._listeners):
                self._call(listener)

    def set_ready(self) -> None:
        if self.phase == STARTING:
            self._move(READY)
            self.waiting_for = ""

    def set_stopping(self) -> None:
        if self.phase != STOPPING:
            self._move(STOPPING)

    def _move(self, phase: str) -> None:
        self.phase = phase
        self.changed = time.monotonic()
        for listener in list(self._listeners):
            self._call(listener)

    def _call(self, listener: Callable[[str], None]) -> None:
        try:
            listener(self.phase)
        except Exception:  # noqa: BLE001 - a reporter must not stop the daemon
            log.exception("lifecycle listener failed")
