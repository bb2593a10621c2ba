"""Peer liveness and NAT keepalives, for both modes (the Daemon runs it).

Once a second the engine's per-peer counters are sampled: a counter that
moved means a datagram went to / came from that peer since the last
sample, so "seconds since the last rx / tx" costs the fast path nothing.
State per peer: `never` (nothing received yet at its current address),
`active` (something received within IDLE_AFTER seconds, or three keepalive
periods if longer), `idle` (heard from before, not lately).

Keepalives: when nothing was sent to a peer for its keepalive period
(the peer's own `keepalive`, else --keepalive; 0 = off), one 1-byte
datagram goes to it on the underlay socket. Shorter than an IPv4 header,
it is ignored by flannel's udp proxy and counted (never written to the
TUN) by ours; it keeps NAT mappings on the path open. The first one goes
at once, so a host behind NAT opens its mapping as soon as it starts.
Entries are keyed like the data plane's (address, port, subnet): a peer
that moves starts again at `never`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = ["Liveness", "KEEPALIVE", "SAMPLE", "IDLE_AFTER"]

log = logging.getLogger(__name__)

KEEPALIVE = b"\x00"     # < 20 bytes: never an IPv4 packet
SAMPLE = 1.0            # seconds between samples
IDLE_AFTER = 30.0       # seconds without rx before a peer counts as idle


@dataclass
class _Track:
    tx: int = 0
    rx: int = 0
    last_tx: float | None = None     # monotonic
    last_rx: float | None = None
    keepalives: int = 0
    period: int = 0                  # keepalive seconds, 0 = off


class Liveness:
    """engine(): the Engine or None (not set up yet); send(data, (ip, port))
    sends on the underlay socket (OSError on failure); keepalive: the
    default period (--keepalive); sends=False: only watch (--backend
    wireguard, whose engine sends its own, encrypted, keepalives)."""

    def __init__(self, engine: Callable[[], object], send: Callable[[bytes, tuple], object],
                 keepalive: int = 0, clock: Callable[[], float] = time.monotonic,
                 sends: bool = True) -> None:
        self._engine, self._send, self._clock = engine, send, clock
        self.keepalive = keepalive
        self.sends = sends
        self._tracks: dict[tuple, _Track] = {}
        self.tx_keepalive = 0
        self.tx_keepalive_errors = 0

    def sample(self) -> None:
        """Read the counters, update the tracks, send the keepalives due."""
        engine = self._engine()
        if engine is None:
            return
        now = self._clock()
        tracks: dict[tuple, _Track] = {}
        for peer, st in zip(engine.peers, engine.peer_status()):   # type: ignore[attr-defined]
            key = (st["public_ip"], st["port"], st["subnet"])
            t = self._tracks.get(key)
            # received = packets and keepalives: a peer that only keeps its
            # NAT mapping open is alive too
            rx = st["rx_packets"] + st.get("rx_keepalive", 0)
            if t is None:       # new: only what moves from here on counts
                t = _Track(st["tx_packets"], rx)
            if st["tx_packets"] != t.tx:
                t.tx, t.last_tx = st["tx_packets"], now
            if rx != t.rx:
                t.rx, t.last_rx = rx, now
            period = t.period = peer.keepalive if peer.keepalive is not None else self.keepalive
            if self.sends and period and (t.last_tx is None or now - t.last_tx >= period - 0.05):
                self._keepalive(t, key, now)
            tracks[key] = t
        self._tracks = tracks

    def _keepalive(self, t: _Track, key: tuple, now: float) -> None:
        try:
            self._send(KEEPALIVE, (key[0], key[1]))
        except OSError as exc:      # unreachable while the address changes: next time
            self.tx_keepalive_errors += 1
            log.debug("keepalive to %s:%d: %s", key[0], key[1], exc)
            t.last_tx = now         # retry after one period, not every sample
            return
        self.tx_keepalive += 1
        t.keepalives += 1
        t.last_tx = now

    async def run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - liveness must never stop the daemon
                log.exception("liveness sample failed")
            await asyncio.sleep(SAMPLE)

    def details(self) -> dict[tuple, dict]:
        """Per (address, port, subnet): state, seconds since the last rx / tx
        (None: never), keepalives sent."""
        now = self._clock()
        out = {}
        for key, t in self._tracks.items():
            if t.last_rx is None:
                state = "never"
            else:
                window = max(IDLE_AFTER, 3 * t.period)
                state = "active" if now - t.last_rx <= window else "idle"
            out[key] = {"state": state,
                        "last_rx": None if t.last_rx is None else round(now - t.last_rx, 1),
                        "last_tx": None if t.last_tx is None else round(now - t.last_tx, 1),
                        "keepalive": t.period, "tx_keepalive": t.keepalives}
        return out

    def peer_entries(self, engine: Any,
                     sources: Iterable[Callable[[], dict[str, dict]]] = ()) -> list[dict]:
        """The engine's per-peer status entries joined with the name each
        peer came from, its liveness, and the extra keys `sources` give by
        subnet (a failing source is skipped: status must always answer)."""
        live = self.details()
        extra: dict[str, dict] = {}
        for source in sources:
            try:
                for subnet, d in source().items():
                    extra.setdefault(subnet, {}).update(d)
            except Exception as exc:  # noqa: BLE001 - status must always answer
                log.debug("peer details: %s", exc)
        entries = engine.peer_status()
        for peer, e in zip(engine.peers, entries):
            e["host"] = peer.host
            e.update(live.get((e["public_ip"], e["port"], e["subnet"]),
                              {"state": "never", "last_rx": None, "last_tx": None}))
            e.update(extra.get(e["subnet"], {}))
        return entries
