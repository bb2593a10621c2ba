"""How old the watched view may be: "connected" is not "current".

Why: a watch on a member that lost its peers stays open and quiet, so a
daemon that only knows "the store answers" says connected while its peer
list is frozen (issue 22). Every response on a watch stream (an event, a
created watch, a progress answer) is a sign of life; the store asks for a
progress answer every `stale_after / 3` seconds on each stream with
watches, so on a healthy member the age stays below that. Older than
`stale_after`: stale (that also covers "no watch established any more":
nothing marks it then).

Sans-I/O: the clock is a parameter; store/etcd.py marks and asks.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["ViewFreshness", "STALE_AFTER"]

STALE_AFTER = 15.0      # s without a sign of life from the watches: stale


class ViewFreshness:
    def __init__(self, stale_after: float = STALE_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if stale_after <= 0:
            raise ValueError("stale_after must be > 0")
        self.stale_after, self.clock = stale_after, clock
        self.last: float | None = None          # clock() of the last sign of life
        self.watches = 0                         # watches currently established

    @property
    def progress_interval(self) -> float:
        return self.stale_after / 3

    def mark(self) -> None:
        self.last = self.clock()

    def age(self) -> float | None:
        """Seconds since the last sign of life (None: no watch ever answered)."""
        return None if self.last is None else max(0.0, self.clock() - self.last)

    def stale(self) -> bool:
        """True when the watches answered once but not for stale_after
        seconds (False before the first answer: not watching yet)."""
        age = self.age()
        return age is not None and age > self.stale_after
