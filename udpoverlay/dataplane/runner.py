"""Runner: drives an Engine's two directions, TUN -> wire and wire -> TUN,
in one of two ways. No Python object is made per packet here.

- loop: when the TUN or the socket is readable, the event loop calls into
  the core once per wakeup (Core.tun_to_udp / Core.udp_to_tun, registered
  directly), which drains a batch with the GIL released.
- threads: one worker thread per direction runs the core's nogil loop
  (Core.run_tx / Core.run_rx: poll, drain, repeat), so the directions use
  two cores and no Python runs per wakeup. Per-flow order holds: each
  direction stays on one thread. Stopping writes to a pipe both workers poll.

TUN reads go through read() or io_uring (Core.set_io, chosen here at
construction from io=: "epoll" and "auto" take read(), which measured
cheaper per packet than batched io_uring reads on kernel 6.18; "io_uring"
opts in and fails with ConfigError (one line) where the kernel, its seccomp
filter or the build refuse it). `mode` names both choices, e.g. "loop+epoll" or
"threads+io_uring", for status, plus why io_uring was left at run time.
busy_poll_us (opt-in, 0 = off) trades CPU for wakeups: after a drain the
loop looks at both sides for that long (Core.serve: the answer to a packet
just delivered is sent without a loop wakeup), workers at their own input.

More queues (multi-queue TUN): extra=[(tun_fd, sock_fd), ...] gives queues
1.. their own TUN queue fd and underlay socket (the daemon opens them:
host/queues.py); each queue gets its worker pair, so threads is implied.
The kernel keeps a flow on one TUN queue and the socket group's steering
program keeps it on one socket, so per-flow order holds per worker pair.

The route table has one owner: the event-loop thread calls
Engine.set_peers(), and the core swaps the whole table in one step (with
workers running, the old one is freed once neither worker can still hold
it: the reclaim timer here frees it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Sequence

from udpoverlay.errors import ConfigError

__all__ = ["Runner"]

log = logging.getLogger(__name__)
RECLAIM_EVERY = 1.0       # seconds: free retired route tables (threads mode)


class Runner:
    """Runs engine.core on the TUN fd and the underlay socket fd: on the
    event loop (threads=False) or on two worker threads. stop() is
    idempotent and joins the workers."""

    def __init__(self, engine, tun_fd: int, sock_fd: int, threads: bool = False,
                 io: str = "auto", busy_poll_us: int = 0,
                 extra: Sequence[tuple[int, int]] = ()) -> None:
        self.engine = engine
        self.core = engine.core
        try:
            self.core.set_io(io)        # ValueError for an unknown mode
        except OSError as exc:      # io_uring asked for, impossible here: one line
            raise ConfigError(f"--io {io}: {exc.strerror or exc} (--io auto reads with "
                              "epoll)") from exc
        self.core.set_busy_poll(busy_poll_us)
        try:    # after set_io: new queues copy queue 0's set-up
            self.core.set_queues(1 + len(extra))
        except OSError as exc:
            raise ConfigError(f"--queues {1 + len(extra)}: {exc.strerror or exc}") from exc
        self.tun_fd = tun_fd
        self.sock_fd = sock_fd
        self.queues = [(tun_fd, sock_fd), *extra]
        self.threads = threads or bool(extra)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[threading.Thread] = []
        self._stop_pipe: tuple[int, int] | None = None
        self._reclaim: asyncio.TimerHandle | None = None

    @property
    def mode(self) -> str:
        """How the data plane runs: loop|threads + epoll|io_uring, and why
        io_uring was left if a ring failed at run time."""
        base = ("threads" if self.threads else "loop") + "+" + self.core.io_mode
        if len(self.queues) > 1:
            base += f"+{len(self.queues)} queues"
        if self.core.busy_poll:
            base += f"+busy-poll {self.core.busy_poll} µs"
        note = self.core.io_note
        return f"{base} ({note})" if note else base

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if not self.threads and self.core.busy_poll:
            loop.add_reader(self.tun_fd, self.core.serve, self.tun_fd, self.sock_fd, False)
            loop.add_reader(self.sock_fd, self.core.serve, self.tun_fd, self.sock_fd, True)
            return
        if not self.threads:
            loop.add_reader(self.tun_fd, self.core.tun_to_udp, self.tun_fd, self.sock_fd)
            loop.add_reader(self.sock_fd, self.core.udp_to_tun, self.sock_fd, self.tun_fd)
            return
        self._stop_pipe = os.pipe()
        self.core.set_threaded(True)
        stop_fd = self._stop_pipe[0]
        for q, (tun_fd, sock_fd) in enumerate(self.queues):
            suffix = f"-{q}" if len(self.queues) > 1 else ""
            for name, body, args in (("udpoverlay-tx" + suffix, self.core.run_tx,
                                      (tun_fd, sock_fd, stop_fd, q)),
                                     ("udpoverlay-rx" + suffix, self.core.run_rx,
                                      (sock_fd, tun_fd, stop_fd, q))):
                t = threading.Thread(target=body, args=args, name=name, daemon=True)
                t.start()
                self._workers.append(t)
        self._schedule_reclaim()

    def _schedule_reclaim(self) -> None:
        if self._loop is not None and self._workers:
            self.core.reclaim()
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
            self.core.stop_workers()
            if self._stop_pipe is not None:
                os.write(self._stop_pipe[1], b"x")
            for t in self._workers:
                t.join(timeout=5)
            alive = [t.name for t in self._workers if t.is_alive()]
            if alive:   # cannot happen short of a kernel hang: say so, go on
                log.error("worker threads did not stop: %s", ", ".join(alive))
            else:
                self.core.set_threaded(False)
            self._workers = []
        if self._stop_pipe is not None:
            for fd in self._stop_pipe:
                os.close(fd)
            self._stop_pipe = None
        self._loop = None
