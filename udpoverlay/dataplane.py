"""Event-loop glue: runs the fast path's two directions, TUN -> wire and
wire -> TUN, in one of two ways. No Python object is made per packet here.

- loop: when the TUN or the socket is readable, the event loop calls into
  the engine once per wakeup (Engine.tun_to_udp / Engine.udp_to_tun), which
  drains a batch with the GIL released.
- threads: one worker thread per direction runs the engine's nogil loop
  (Engine.run_tx / Engine.run_rx: poll, drain, repeat), so the directions use
  two cores and no Python runs per wakeup. Per-flow order holds: each
  direction stays on one thread. Stopping writes to a pipe both workers poll.

The route table has one owner: the event-loop thread calls set_peers(), and
the engine swaps the whole table in one step (with workers running, the old
one is freed once neither worker can still hold it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from typing import Iterable

from udpoverlay.peers import Peer, format_mac

__all__ = ["DataPlane", "peer_tuple"]

log = logging.getLogger("udpoverlay")
ARP_RETRY_FIRST = 0.1     # seconds; doubles per unanswered round
ARP_RETRY_MAX = 5.0


def peer_tuple(p: Peer) -> tuple:
    return (str(p.public_ip), int(p.port), str(p.subnet), p.vtep_mac)


RECLAIM_EVERY = 1.0       # seconds: free retired route tables (threads mode)


class DataPlane:
    def __init__(self, engine, tun_fd: int, sock: socket.socket,
                 threads: bool = False) -> None:
        self.engine = engine
        self.tun_fd = tun_fd
        self.sock = sock
        self.sock_fd = sock.fileno()
        self.threads = threads
        self.peers: tuple[Peer, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[threading.Thread] = []
        self._stop_pipe: tuple[int, int] | None = None
        self._reclaim: asyncio.TimerHandle | None = None

    @property
    def mode(self) -> str:
        return "threads" if self.threads else "loop"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if not self.threads:
            loop.add_reader(self.tun_fd, self.engine.tun_to_udp, self.tun_fd, self.sock_fd)
            loop.add_reader(self.sock_fd, self.engine.udp_to_tun, self.sock_fd, self.tun_fd)
            return
        self._stop_pipe = os.pipe()
        self.engine.set_threaded(True)
        stop_fd = self._stop_pipe[0]
        for name, body, args in (("udpoverlay-tx", self.engine.run_tx,
                                  (self.tun_fd, self.sock_fd, stop_fd)),
                                 ("udpoverlay-rx", self.engine.run_rx,
                                  (self.sock_fd, self.tun_fd, stop_fd))):
            t = threading.Thread(target=body, args=args, name=name, daemon=True)
            t.start()
            self._workers.append(t)
        self._schedule_reclaim()

    def _schedule_reclaim(self) -> None:
        if self._loop is not None and self._workers:
            self.engine.reclaim()
            self._reclaim = self._loop.call_later(RECLAIM_EVERY, self._schedule_reclaim)

    def stop(self) -> None:
        if self._loop is not None and not self.threads:
            for fd in (self.tun_fd, self.sock_fd):
                try:
                    self._loop.remove_reader(fd)
                except Exception:  # noqa: BLE001 - loop closing / fd gone
                    pass
        if self._reclaim is not None:
            self._reclaim.cancel()
            self._reclaim = None
        if self._workers:
            self.engine.stop_workers()
            os.write(self._stop_pipe[1], b"x")
            for t in self._workers:
                t.join(timeout=5)
            alive = [t.name for t in self._workers if t.is_alive()]
            if alive:   # cannot happen short of a kernel hang: say so, go on
                log.error("worker threads did not stop: %s", ", ".join(alive))
            else:
                self.engine.set_threaded(False)
            self._workers = []
        if self._stop_pipe is not None:
            for fd in self._stop_pipe:
                os.close(fd)
            self._stop_pipe = None
        self._loop = None

    def set_peers(self, peers: Iterable[Peer]) -> None:
        peers = tuple(peers)
        self.engine.set_peers([peer_tuple(p) for p in peers])
        self.peers = peers

    async def resolve_macs(self) -> None:
        """vxlan: ARP through the tunnel for peers whose VTEP MAC is unknown,
        with exponential backoff; the engine learns the MAC from the reply
        (packets meanwhile are dropped and counted as `unresolved`)."""
        delay = ARP_RETRY_FIRST
        known: set = set()
        while True:
            pending = []
            for i, pc in enumerate(self.engine.peer_counters()):
                key = (pc["public_ip"], pc["subnet"])
                if pc.get("vtep_mac") is None:
                    pending.append((i, pc))
                elif key not in known:
                    known.add(key)
                    log.info("peer %s (%s): VTEP MAC %s", pc["public_ip"],
                             pc["subnet"], pc["vtep_mac"])
            if not pending:
                delay = ARP_RETRY_FIRST
                await asyncio.sleep(0.5)
                continue
            for i, pc in pending:
                try:
                    self.sock.sendto(self.engine.arp_request(i), (pc["public_ip"], pc["port"]))
                except (OSError, IndexError) as exc:
                    log.debug("arp to %s: %s", pc["public_ip"], exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, ARP_RETRY_MAX)

    def status(self) -> dict:
        macs = {(str(p.public_ip), p.port, str(p.subnet)): p for p in self.peers}
        peers = []
        for pc in self.engine.peer_counters():
            d = dict(pc)
            p = macs.get((str(d.get("public_ip")), d.get("port"), str(d.get("subnet"))))
            if p is not None:
                d.setdefault("source", p.source)
                if p.vtep_mac is not None:
                    d.setdefault("vtep_mac", format_mac(p.vtep_mac))
            if isinstance(d.get("vtep_mac"), (bytes, bytearray)):
                d["vtep_mac"] = format_mac(bytes(d["vtep_mac"]))
            peers.append(d)
        return {"peers": peers, "counters": dict(self.engine.counters())}
