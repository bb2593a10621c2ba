"""The membership's line to the lease store: bounded calls, backoff, health.

Why this is one small object (design notes):
- The acquirer, the guard and the membership's loops all talk to the same
  store and must agree on what "the store is down" means, so they share one
  StoreLink instead of each keeping its own copy of the bookkeeping.
- Every store call is bounded by op_timeout (a hung etcd is a disconnected
  one); every retry loop backs off with jitter (Backoff). Retries while the
  store is down pause at most RECONNECT_MAX (1.5 s) so we are back within
  ~2 s once it answers again.
- Store health is what the status document ("store": "connected" or
  "disconnected: <why>") and the metrics (ops/metrics.py: connected, last
  contact) show. While the store is down a WARNING about once a minute
  (DOWN_LOG_INTERVAL) says so, DEBUG in between; an INFO line says when it
  is back.
- Revoking etcd leases we no longer use lives here too: it is a best-effort
  store call both the acquirer and the guard make.
- Time is a parameter (clock); the rng is the membership's, so a seeded
  member draws the same jitter as before.

StoreLink owns: the store-health state (state, last_contact, the time of
the last down WARNING). It does not own the store (the membership's caller
closes it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Awaitable, Callable

from udpoverlay.cluster.store.base import LeaseStore
from udpoverlay.errors import LeaseStoreError, StoreDisconnected

__all__ = ["Backoff", "StoreLink", "DOWN_LOG_INTERVAL", "RECONNECT_MAX"]

log = logging.getLogger(__name__)

DOWN_LOG_INTERVAL = 60.0  # s between "store down" WARNINGs
RECONNECT_MAX = 1.5      # s: longest retry pause while the store is down (back within 2 s)


class Backoff:
    """Exponential backoff with jitter: initial, doubling, capped at maximum."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial, self.maximum, self.rng = initial, maximum, rng
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * (0.5 + self.rng.random() / 2)

    def reset(self) -> None:
        self._next = self.initial


class StoreLink:
    """Bounded calls to one lease store, the backoffs, and its health."""

    def __init__(self, store: LeaseStore, *, clock: Callable[[], float], rng: random.Random,
                 retry_initial: float, retry_max: float, op_timeout: float) -> None:
        self.store = store
        self.clock, self.rng = clock, rng
        self.retry_initial, self.retry_max, self.op_timeout = retry_initial, retry_max, op_timeout
        self.state = "disconnected: not contacted yet"
        self.last_contact: float | None = None   # clock() of the last store success
        self._down_logged: float | None = None

    # -- backoff -------------------------------------------------------------
    def backoff(self) -> Backoff:
        return Backoff(self.retry_initial, self.retry_max, self.rng)

    def store_backoff(self) -> Backoff:
        """Retries while the store is down: capped so we are back within ~2 s."""
        return Backoff(self.retry_initial, min(self.retry_max, RECONNECT_MAX), self.rng)

    # -- calls -------------------------------------------------------------
    async def bounded(self, call: Awaitable[Any]) -> Any:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow
            # a cancellation that races with the call's completion, and a
            # cancelled membership task would then run on forever.
            async with asyncio.timeout(self.op_timeout):
                return await call
        except TimeoutError:
            raise StoreDisconnected(f"lease store did not answer within "
                                    f"{self.op_timeout:g}s") from None

    async def revoke(self, lease_ids: set[int]) -> None:
        """Revoke etcd leases we no longer use (best effort: they expire anyway)."""
        for lease_id in sorted(lease_ids - {0}):
            try:
                await self.bounded(self.store.revoke_lease(lease_id))
                log.info("revoked unused etcd lease %x", lease_id)
            except LeaseStoreError as e:
                log.warning("revoking unused etcd lease %x failed (%s); it expires on its own",
                            lease_id, e)

    # -- health --------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def set_connected(self) -> None:
        if self.state != "connected" and self._down_logged is not None:
            log.info("lease store reachable again")
        self._down_logged = None
        self.state = "connected"
        self.last_contact = self.clock()

    def set_disconnected(self, error: Exception) -> None:
        self.state = f"disconnected: {error}"

    def warn_down(self, message: str, *args: Any) -> None:
        """A store-down WARNING about once a minute; DEBUG in between."""
        now = self.clock()
        quiet = self._down_logged is not None and now - self._down_logged < DOWN_LOG_INTERVAL
        if not quiet:
            self._down_logged = now
        log.log(logging.DEBUG if quiet else logging.WARNING, message, *args)
