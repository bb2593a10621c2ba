"""ARP resolver for the vxlan backend: asks peers whose VTEP MAC is not
configured, through the tunnel, and keeps re-validating what was learned.

The core learns (and re-learns) a peer's MAC from that peer's own ARP,
request or reply, and from the inner source MAC of its valid data frames;
packets to a peer without a MAC are dropped and counted as `unresolved`.
This task only decides whom to ask when, and logs what was learned or
changed:

- unresolved peers: asked with exponential backoff (0.1 s doubling to 5 s);
- one-way peers: we keep sending but nothing has come back for SILENT
  seconds (a wrong or stale MAC looks exactly like that): asked every
  SILENT seconds, so a forged or outdated MAC is corrected within seconds
  once the real peer answers;
- every learned peer: asked again every REFRESH seconds.

A configured MAC (--peer ...,vtep-mac=, etcd's VtepMAC) is never asked for
nor overwritten. Time is a parameter (`clock`), so the policy is tested
without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable

from udpoverlay.peer import Peer, format_mac

__all__ = ["Resolver", "resolve_macs"]

log = logging.getLogger(__name__)
ARP_RETRY_FIRST = 0.1     # seconds; doubles per unanswered request
ARP_RETRY_MAX = 5.0
SILENT = 2.0              # one-way this long: ask again
REFRESH = 30.0            # every learned peer, this often
POLL = 0.5                # longest sleep between ticks


class _State:
    __slots__ = ("mac", "tx", "rx", "rx_at", "asked", "delay")

    def __init__(self, now: float) -> None:
        self.mac: bytes | None = None
        self.tx = self.rx = -1
        self.rx_at = now          # when rx_packets last moved
        self.asked = -1e18        # when we last asked
        self.delay = ARP_RETRY_FIRST


class Resolver:
    """Whom to ask now: tick() returns the table indices and peers to send
    an ARP request to, and logs learned and changed MACs."""

    def __init__(self, engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._peers: dict[tuple, _State] = {}

    def tick(self) -> list[tuple[int, Peer]]:
        now = self.clock()
        ask = []
        seen: dict[tuple, _State] = {}
        for idx, peer, st in self.engine.learned():
            key = (str(peer.public_ip), peer.port, str(peer.subnet))
            s = self._peers.get(key) or _State(now)
            seen[key] = s
            tx, rx, mac = st[0], st[2], st[4]
            if rx != s.rx:
                s.rx, s.rx_at = rx, now
            sending = tx != s.tx
            s.tx = tx
            if mac != s.mac:
                if s.mac is None:
                    log.info("peer %s (%s): VTEP MAC %s", key[0], key[2], format_mac(mac))
                elif mac is not None:
                    log.warning("peer %s (%s): VTEP MAC changed %s -> %s", key[0], key[2],
                                format_mac(s.mac), format_mac(mac))
                s.mac, s.delay = mac, ARP_RETRY_FIRST
            if mac is None:
                due = now - s.asked >= s.delay
                if due:
                    s.delay = min(s.delay * 2, ARP_RETRY_MAX)
            else:
                one_way = sending and now - s.rx_at >= SILENT
                due = now - s.asked >= (SILENT if one_way else REFRESH)
            if due:
                s.asked = now
                ask.append((idx, peer))
        self._peers = seen
        return ask


async def resolve_macs(engine, sock: socket.socket,
                       clock: Callable[[], float] = time.monotonic) -> None:
    """Run until cancelled: ARP for learned and unresolved peers through sock."""
    r = Resolver(engine, clock)
    while True:
        for idx, peer in r.tick():
            try:
                sock.sendto(engine.arp_request(idx), (str(peer.public_ip), peer.port))
            except (OSError, LookupError) as exc:
                log.debug("arp to %s: %s", peer.public_ip, exc)
        pending = any(s.mac is None for s in r._peers.values())
        await asyncio.sleep(ARP_RETRY_FIRST if pending else POLL)
