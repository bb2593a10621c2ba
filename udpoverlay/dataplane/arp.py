"""ARP resolver for the vxlan backend: asks peers whose VTEP MAC is unknown,
through the tunnel, with exponential backoff. The core learns the MAC from
the reply (packets to such a peer meanwhile are dropped and counted as
`unresolved`); this task only sends the requests and logs what was learned.
"""

from __future__ import annotations

import asyncio
import logging
import socket

__all__ = ["resolve_macs"]

log = logging.getLogger(__name__)
ARP_RETRY_FIRST = 0.1     # seconds; doubles per unanswered round
ARP_RETRY_MAX = 5.0
IDLE_POLL = 0.5           # seconds between checks while every MAC is known


async def resolve_macs(engine, sock: socket.socket) -> None:
    """Run until cancelled: ARP for engine.unresolved() peers through sock."""
    delay = ARP_RETRY_FIRST
    known: set = set()
    while True:
        for st in engine.peer_status():
            key = (st["public_ip"], st["subnet"])
            if st["vtep_mac"] is not None and key not in known:
                known.add(key)
                log.info("peer %s (%s): VTEP MAC %s", st["public_ip"], st["subnet"],
                         st["vtep_mac"])
        pending = engine.unresolved()
        if not pending:
            delay = ARP_RETRY_FIRST
            await asyncio.sleep(IDLE_POLL)
            continue
        for peer in pending:
            try:
                sock.sendto(engine.arp_request(peer), (str(peer.public_ip), peer.port))
            except (OSError, LookupError) as exc:
                log.debug("arp to %s: %s", peer.public_ip, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, ARP_RETRY_MAX)
