"""Handshakes a source address may make us work on, under load: a token
bucket per source IP, as the kernel's WireGuard and wireguard-go keep
(20 a second, bursts of 5).

Why: under load a handshake message without a valid MAC2 only earns a
cookie reply (cheap, no Diffie-Hellman). One with a valid MAC2 proves the
sender receives at its address, but nothing stops that sender from
sending many: each would cost us the Diffie-Hellman. So, under load, each
source IP gets RATE such messages a second (BURST at once); the rest are
dropped and counted. The table is bounded (MAX_SOURCES): entries whose
bucket is full again are forgotten first; when every entry is still
spending, a new source is refused, as the kernel's table refuses when full.
"""

from __future__ import annotations

__all__ = ["SourceLimiter", "RATE", "BURST", "MAX_SOURCES"]

RATE = 20.0             # handshake messages a second per source IP, under load
BURST = 5.0
MAX_SOURCES = 4096


class SourceLimiter:
    """allow(source_ip, now) -> whether this message may be worked on."""

    def __init__(self, rate: float = RATE, burst: float = BURST,
                 max_sources: int = MAX_SOURCES) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: dict[str, list[float]] = {}     # ip -> [tokens, at]

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, ip: str, now: float) -> bool:
        b = self._buckets.get(ip)
        if b is None:
            if len(self._buckets) >= self.max_sources and not self._forget_full(now):
                return False
            b = self._buckets[ip] = [self.burst, now]
        tokens = min(self.burst, b[0] + max(0.0, now - b[1]) * self.rate)
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            return False
        b[0] = tokens - 1.0
        return True

    def _forget_full(self, now: float) -> bool:
        """Drop the entries whose bucket has refilled (they would start
        full anyway); whether room was made."""
        full = [ip for ip, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * self.rate >= self.burst]
        for ip in full:
            del self._buckets[ip]
        return len(self._buckets) < self.max_sources
