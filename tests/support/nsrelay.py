"""A TCP relay from 127.0.0.1 (our own namespace) into a test namespace.

Why: the pytest process lives in the root namespace and must not get an
address there, yet its etcd clients have to reach members inside the Lab.
The relay listens on loopback and opens each upstream connection from a
socket made inside the target namespace (a thread joins it with setns(2);
a socket keeps the namespace it was made in). Bytes are copied both ways
by two threads per connection; a close or error on one side closes both.

It counts our open connections per target, so a test can see that a
client the store dropped really closed its connection. close() ends every
thread it started (bounded joins).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

__all__ = ["NsRelay"]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(netns: str) -> None:
    """Move the calling thread (only it) into netns."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NsRelay:
    """One 127.0.0.1 listener per (address, port) inside `netns`."""

    def __init__(self, netns: str, targets: list[tuple[str, int]],
                 connect_timeout: float = 2.0) -> None:
        self.netns, self.targets, self.connect_timeout = netns, targets, connect_timeout
        self._lock = threading.Lock()
        self._open: dict[int, set[socket.socket]] = {i: set() for i in range(len(targets))}
        self.opened = [0] * len(targets)          # upstream connections ever made
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._listeners = []
        for _ in targets:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            s.settimeout(0.2)
            self._listeners.append(s)
        for i in range(len(targets)):
            self._spawn(self._accept_loop, i)

    def endpoint(self, i: int) -> str:
        return f"http://127.0.0.1:{self._listeners[i].getsockname()[1]}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in range(len(self.targets))]

    def open_connections(self, i: int) -> int:
        """Our connections to target i that are still open (client side)."""
        with self._lock:
            return len(self._open[i])

    # -- threads -------------------------------------------------------------
    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name="nsrelay")
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _accept_loop(self, i: int) -> None:
        _enter_netns(self.netns)          # upstream sockets are made in this thread
        listener = self._listeners[i]
        while not self._closed:
            try:
                down, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return                     # listener closed
            try:
                up = socket.create_connection(self.targets[i], timeout=self.connect_timeout)
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.settimeout(None)
            with self._lock:
                if self._closed:
                    down.close()
                    up.close()
                    return
                self._open[i].add(down)
                self.opened[i] += 1
            pair = _Pair(down, up, lambda d=down, i=i: self._forget(i, d))
            self._spawn(pair.copy, down, up)
            self._spawn(pair.copy, up, down)

    def _forget(self, i: int, down: socket.socket) -> None:
        with self._lock:
            self._open[i].discard(down)

    def close(self) -> None:
        self._closed = True
        for s in self._listeners:
            s.close()
        with self._lock:
            conns = [s for group in self._open.values() for s in group]
        for s in conns:
            _shut(s)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=2.0)


class _Pair:
    """Two sockets copied into each other; the first end to finish closes both."""

    def __init__(self, a: socket.socket, b: socket.socket, on_close) -> None:
        self.a, self.b, self.on_close = a, b, on_close
        self._done = 0
        self._lock = threading.Lock()

    def copy(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # One side ended: end both (a half-open gRPC connection is of no use).
        _shut(self.a)
        _shut(self.b)
        with self._lock:
            self._done += 1
            last = self._done == 2
        if last:
            self.a.close()
            self.b.close()
            self.on_close()


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
