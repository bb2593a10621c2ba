"""Which etcd member we talk to, and the one rule for leaving it.

Why a place of its own (issue 22): every task using the store (lease
watch, config watch, renewals, the ops) used to move a shared endpoint
index on each failure it saw, so one broken connection moved it twice (the
failure itself, then the watches ending when the dropped client closed),
daemons skipped a healthy member and once failed over from a member back to
the same member. Here:
- each connection belongs to a generation; a failure is reported with the
  generation the caller used, and only a report for the current generation
  moves (however many tasks saw that failure, it is one move);
- the next member is the one that failed least recently (never-failed ones
  first, in the configured order after the current one), so we never go
  back to the member that just failed while another one is untried;
- with a single endpoint a move still starts a new generation: the caller
  drops its channel and opens a fresh one (no gRPC reconnect backoff).

Sans-I/O: no sockets, the clock is a parameter; store/etcd.py does the
connecting and closing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

__all__ = ["EndpointPool", "Move"]

E = TypeVar("E")
HISTORY = 32        # moves remembered for status and tests


@dataclass(frozen=True)
class Move(Generic[E]):
    at: float
    generation: int          # the generation that failed
    source: E
    target: E
    reason: str


class EndpointPool(Generic[E]):
    def __init__(self, endpoints: Sequence[E], clock: Callable[[], float] = time.monotonic) -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = list(endpoints)
        self.clock = clock
        self.index = 0
        self.generation = 0
        self.moves = 0                    # fail-overs made (a counter for metrics)
        self.stale_reports = 0            # failures reported for an older generation
        self.history: deque[Move[E]] = deque(maxlen=HISTORY)
        self._failed_at: dict[int, float] = {}

    @property
    def current(self) -> E:
        return self.endpoints[self.index]

    def report(self, generation: int, reason: str = "") -> bool:
        """The connection of `generation` failed. Moves (and returns True)
        only if that is still the current generation."""
        if generation != self.generation:
            self.stale_reports += 1
            return False
        now = self.clock()
        source = self.current
        self._failed_at[self.index] = now
        self.index = self._next()
        self.generation += 1
        self.moves += 1
        self.history.append(Move(now, generation, source, self.current, reason))
        return True

    def _next(self) -> int:
        """The member after the current one that failed least recently."""
        n = len(self.endpoints)
        if n == 1:
            return self.index
        order = [(self.index + k) % n for k in range(1, n)]
        return min(order, key=lambda i: (self._failed_at.get(i, float("-inf")), order.index(i)))
