"""The ARP resolver over a real socket: asks unresolved vxlan peers, backs
off, logs each learned MAC once, stays quiet while nothing is one-way, and
stops when cancelled (its policy on a fake clock: test_learning.py).
Underlay on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from tests.support import pktgen as g
from tests.support.asyncutil import run, wait_until
from tests.support.twins import engine
from udpoverlay.dataplane import arp
from udpoverlay.peer import Peer

LEARNED = bytes.fromhex("02cc00000003")


def test_asks_unresolved_peers_until_the_mac_is_learned(impl, caplog):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (sock, peer_sock):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        known = g.peer("198.18.0.3", 8472, "198.19.3.0/24", g.PEER_MAC)
        asked = Peer(ipaddress.IPv4Address("127.0.0.1"), peer_sock.getsockname()[1],
                     ipaddress.IPv4Network("198.19.2.0/24"))
        e = engine(impl, "vxlan", [known, asked])

        def requests():
            out = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    out.append(peer_sock.recv(2048))
            return out

        async def main():
            task = asyncio.create_task(arp.resolve_macs(e, sock))
            try:
                seen = []
                await wait_until(lambda: seen.extend(requests()) or len(seen) >= 3,
                                 timeout=3, what="three ARP requests (0.1 s, 0.2 s, ...)")
                assert set(seen) == {e.arp_request(asked)}
                reply = (b"\0\x01\x08\x00\x06\x04\0\x02" + LEARNED + bytes([198, 19, 2, 0])
                         + g.MAC + bytes([198, 19, 1, 0]))
                e.t.inbound(g.vxlan(b"")[:20] + b"\x08\x06" + reply, g.ip("127.0.0.1"),
                            asked.port)
                assert e.unresolved() == []
                await wait_until(lambda: "02:cc:00:00:00:03" in caplog.text, timeout=3,
                                 what="the learned MAC logged")
                await asyncio.sleep(0.6)             # one idle round: nothing more asked
                requests()
                await asyncio.sleep(0.6)
                assert requests() == []
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        with caplog.at_level(logging.INFO, logger="udpoverlay"):
            run(main())
        lines = [r.getMessage() for r in caplog.records if "VTEP MAC" in r.getMessage()]
        # the configured MAC is no news; the learned one is logged once
        assert lines == ["peer 127.0.0.1 (198.19.2.0/24): VTEP MAC 02:cc:00:00:00:03"]
    finally:
        sock.close()
        peer_sock.close()
