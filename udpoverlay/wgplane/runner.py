"""WgRunner: drives a WgPlane on the event loop.

- With a WgIo (the daemon's case): each readable callback runs the batch
  path (batched.py) for at most MAX_ROUNDS rounds, so the other direction
  and the timers get their turn: TUN super-packets split, sealed and sent
  as UDP GSO messages; GRO receives opened and coalesced into TUN writes.
- Without one (tests of the plane itself): one packet at a time, at most
  BATCH per wakeup: plane.outgoing() / plane.incoming(), plain TUN reads
  and writes.
- the engine's timer: one loop timer at the engine's next deadline, moved
  earlier when a packet armed an earlier one, re-armed after every tick.

Errors never stop it: a failed read, send or write is counted
(tx_drop_tx_error, rx_drop_tx_error) and the packet is gone, as a lossy
link would lose it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from typing import Callable

from udpoverlay.wgplane.batched import Batches
from udpoverlay.wgplane.plane import WgPlane

__all__ = ["WgRunner", "BATCH", "MAX_ROUNDS", "MIN_TIMER"]

log = logging.getLogger(__name__)

BATCH = 64             # packets per wakeup and direction (one at a time)
MAX_ROUNDS = 4         # batch rounds per wakeup and direction (with a WgIo)
MIN_TIMER = 0.005      # seconds: a deadline already past is retried no sooner than this
MAX_DATAGRAM = 65535
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


class WgRunner:
    """start(loop) registers the readers and the timer; stop() undoes it
    (idempotent). `mode` is what status shows as the data plane."""

    def __init__(self, plane: WgPlane, tun_fd: int, sock: socket.socket,
                 clock: Callable[[], float] = time.monotonic, io=None) -> None:
        self.plane, self.tun_fd, self.sock = plane, tun_fd, sock
        self.clock = clock
        self.batches = Batches(plane, io) if io is not None else None
        self.mode = "loop+batch (wireguard)" if io is not None else "loop+read (wireguard)"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        os.set_blocking(self.tun_fd, False)
        loop.add_reader(self.tun_fd, self._from_tun)
        loop.add_reader(self.sock.fileno(), self._from_wire)
        self._on_timer()        # persistent keepalives are due at once

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if loop is None:
            return
        for fd in (self.tun_fd, self.sock.fileno()):
            try:
                loop.remove_reader(fd)
            except Exception:  # noqa: BLE001 - loop closing / fd gone
                pass

    # -- the two directions ---------------------------------------------------
    def _send(self, datagrams) -> None:
        for data, addr in datagrams:
            try:
                self.sock.sendto(data, addr)
            except OSError as exc:
                self.plane.tx_error += 1
                if exc.errno not in _AGAIN:
                    log.debug("wireguard: send to %s failed: %s", addr, exc)

    def _from_tun(self) -> None:
        if self.batches is not None:
            for _ in range(MAX_ROUNDS):
                self._send(self.batches.from_tun(self.tun_fd, self.sock.fileno(), self.clock()))
                if not self.batches.io.more:
                    break
            self._arm()
            return
        plane, fd = self.plane, self.tun_fd
        for _ in range(BATCH):
            try:
                packet = os.read(fd, MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                plane.tx_error += 1
                log.debug("wireguard: TUN read failed: %s", exc)
                break
            out = plane.outgoing(packet, self.clock())
            if out:
                self._send(out)
        self._arm()

    def _from_wire(self) -> None:
        if self.batches is not None:
            for _ in range(MAX_ROUNDS):
                self._send(self.batches.from_wire(self.sock.fileno(), self.tun_fd, self.clock()))
                if not self.batches.io.more:
                    break
            self._arm()
            return
        plane, sock, fd = self.plane, self.sock, self.tun_fd
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:      # e.g. ICMP port unreachable reported on the socket
                log.debug("wireguard: receive failed: %s", exc)
                continue
            packet, out = plane.incoming(data, addr, self.clock())
            if packet is not None:
                try:
                    os.write(fd, packet)
                except OSError:
                    plane.write_failed(packet)
            if out:
                self._send(out)
        self._arm()

    # -- the engine's timer -----------------------------------------------------
    def _arm(self) -> None:
        """Make sure the timer fires by the engine's next deadline."""
        if self._loop is None:
            return
        due = self.plane.next_deadline()
        if due is None or (self._timer_at is not None and self._timer_at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_later(max(0.0, due - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._loop is None:
            return
        now = self.clock()
        out = self.plane.tick(now)
        if out:
            self._send(out)
        due = self.plane.next_deadline()
        if due is None:
            return
        due = max(due, now + MIN_TIMER)     # never a busy loop on a deadline left in the past
        self._timer_at = due
        self._timer = self._loop.call_later(due - now, self._on_timer)
