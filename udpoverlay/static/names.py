"""Peer names -> addresses, off the event loop (loop.getaddrinfo runs the
system resolver in the default executor, so /etc/hosts, DNS and nsswitch
all apply, and `ip netns exec`'s /etc/netns/<ns>/hosts too).

Each name is re-resolved every `interval` seconds, and sooner after a
failure (1, 2, 4 ... s, capped at the interval). A name that stops
resolving keeps its last good address: a resolver outage must not take
a working peer down; status shows the error and when it last resolved.
When a lookup returns several addresses, the one in use is kept while it
is among them, so round-robin DNS does not flap the route.

An answer is judged before use (config/peerspec.bad_peer_address, the
check cluster leases get too): a name that resolves only to a loopback,
unspecified, multicast or broadcast address, or to our own, is refused:
the peer has no address (it waits, never used; anyone's socket on
127.0.0.1 would otherwise receive the pods' packets and inject as that
peer), `refused` counts such answers and the state says why. Refused
addresses among good ones are skipped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from udpoverlay.config.peerspec import bad_peer_address

__all__ = ["Names", "NameState", "system_lookup", "LOOKUP_TIMEOUT", "RETRY_FIRST"]

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 5.0      # seconds for one lookup (the resolver's own retries included)
RETRY_FIRST = 1.0         # first retry after a failure, doubled up to the interval

Lookup = Callable[[str], Awaitable[list[str]]]
Check = Callable[[ipaddress.IPv4Address], str | None]     # why not a peer's address


async def system_lookup(host: str) -> list[str]:
    """IPv4 addresses of `host` through the system resolver, off the loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, None, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    return [str(info[4][0]) for info in infos]


@dataclass
class NameState:
    """One name: the address in use and how the last lookups went."""
    host: str
    address: ipaddress.IPv4Address | None = None
    resolved_at: float | None = None    # wall clock of the last success
    checked_at: float | None = None     # wall clock of the last attempt
    error: str | None = None            # the last attempt's failure, if it failed
    failures: int = 0                   # consecutive
    refused: bool = False               # the last answer held no usable address
    due: float = 0.0                    # monotonic: next lookup

    def status(self, wall_now: float) -> dict:
        return {"host": self.host,
                "address": None if self.address is None else str(self.address),
                "resolved_ago": None if self.resolved_at is None
                else round(wall_now - self.resolved_at, 1),
                "resolved_at": self.resolved_at, "error": self.error,
                "failures": self.failures, "refused": self.refused}


class Names:
    """The names in use and their addresses; one owner (the event loop)."""

    def __init__(self, interval: float, lookup: Lookup = system_lookup,
                 timeout: float = LOOKUP_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 check: Check = bad_peer_address) -> None:
        self.interval = float(interval)
        self.check = check
        self.timeout = timeout
        self._lookup, self._clock, self._wall = lookup, clock, wall
        self.states: dict[str, NameState] = {}
        self.lookups = 0
        self.lookup_failures = 0
        self.refused = 0            # answers with no usable address

    def track(self, hosts: Iterable[str]) -> None:
        """Resolve exactly these names from now on (new ones are due now)."""
        wanted = set(hosts)
        for host in list(self.states):
            if host not in wanted:
                del self.states[host]
        for host in wanted:
            self.states.setdefault(host, NameState(host, due=self._clock()))

    def address(self, host: str) -> ipaddress.IPv4Address | None:
        state = self.states.get(host)
        return None if state is None else state.address

    def delay(self) -> float:
        """Seconds until the next name is due (the interval if none)."""
        if not self.states:
            return self.interval
        return max(0.0, min(s.due for s in self.states.values()) - self._clock())

    async def resolve(self, only_new: bool = False, every: bool = False) -> bool:
        """Look up the names that are due (every: all of them; only_new:
        those never tried), concurrently; True if an address changed."""
        now = self._clock()
        todo = [s for s in self.states.values()
                if (s.checked_at is None if only_new else every or s.due <= now)]
        if not todo:
            return False
        changed = await asyncio.gather(*(self._one(s) for s in todo))
        return any(changed)

    async def _one(self, state: NameState) -> bool:
        self.lookups += 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow
            # the cancellation that stops the daemon
            async with asyncio.timeout(self.timeout):
                found = await self._lookup(state.host)
            addrs = [ipaddress.IPv4Address(a) for a in found]
            if not addrs:
                raise OSError("no IPv4 address")
        except TimeoutError:
            return self._failed(state, f"no answer within {self.timeout:g} s")
        except (OSError, ValueError) as exc:
            return self._failed(state, getattr(exc, "strerror", None) or str(exc))
        state.checked_at = self._wall()
        state.due = self._clock() + self.interval
        usable = [a for a in addrs if self.check(a) is None]
        if not usable:
            return self._refuse(state, addrs[0])
        state.resolved_at = state.checked_at
        if state.failures or state.refused:
            log.info("peer name %s resolves again", state.host)
        state.error, state.failures, state.refused = None, 0, False
        addrs = usable
        if state.address in addrs:
            return False
        log.info("peer name %s: %s -> %s", state.host, state.address or "(none)", addrs[0])
        state.address = addrs[0]
        return True

    def _refuse(self, state: NameState, addr: ipaddress.IPv4Address) -> bool:
        """The answer is no peer's address: the peer waits (the WARNING
        comes from the table's waiting list), the old address is dropped."""
        self.refused += 1
        state.failures, state.refused = 0, True
        state.error = f"resolves to {addr}, which {self.check(addr)}: refused"
        changed = state.address is not None
        state.address = None
        return changed

    def _failed(self, state: NameState, why: str) -> bool:
        self.lookup_failures += 1
        state.checked_at = self._wall()
        state.failures += 1
        state.error = why
        state.due = self._clock() + min(self.interval, RETRY_FIRST * 2 ** (state.failures - 1))
        if state.failures == 1:      # once per outage, not once per retry
            keep = f"; keeping {state.address}" if state.address is not None else ""
            log.warning("peer name %s does not resolve: %s (retrying%s)", state.host, why, keep)
        return False

    def status(self) -> list[dict]:
        wall = self._wall()
        return [s.status(wall) for s in sorted(self.states.values(), key=lambda s: s.host)]
