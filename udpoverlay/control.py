"""Local control socket: one JSON status document per connection, for root only.

Where: a filesystem unix socket `<runtime dir>/net<N>-<iface>.sock`, N being
the inode of the network namespace (/proc/self/ns/net). Namespaces share the
filesystem, so the inode keeps the daemons of namespace hosts on one machine
apart. The runtime dir (/run/udpoverlay for root) is made 0700 and refused
when it is not owned by the daemon's user or is group/world-writable; the
socket is 0600. Why not an abstract name (the old design): those have no
permissions, so any local user could read every peer, or bind the name first
and both stop the daemon from starting and answer root's `status` instead.

Who: the client checks the server's credentials (SO_PEERCRED): it must run
as the client's own user, which for the command line is root.

Exhaustion: at most `max_clients` connections are served at once (more are
closed at once and counted), a client that does not read within
`send_timeout` is dropped, and the document is rendered at most once per
`rebuild_interval` under load (a token bucket: an occasional client, a
person or a test reading counters right after traffic, still gets a fresh
one), its bytes shared by every client and written a chunk at a time: a
status flood costs a cached write per client, never a build on the packet
path per request, and an idle client pins at most one chunk.

A socket left by a daemon that was killed is replaced when nobody listens on
it; a clean exit removes the socket (only if it is still ours).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import struct
import time
from typing import Callable

from udpoverlay.errors import ControlError, ControlSocketError
from udpoverlay.host.rundir import DEFAULT_RUNTIME_DIR, default_runtime_dir, prepare_runtime_dir, who

__all__ = ["DEFAULT_RUNTIME_DIR", "ControlServer", "ControlSocketError", "ControlSocketBusy",
           "default_runtime_dir",
           "netns_inode", "prepare_runtime_dir", "query_status", "socket_path"]

log = logging.getLogger(__name__)

MAX_CLIENTS = 64
SEND_TIMEOUT = 3.0          # seconds a client has to take the whole document
REBUILD_INTERVAL = 0.5      # seconds per document build, sustained ...
REBUILD_BURST = 8           # ... after a burst of this many fresh ones
CHUNK = 64 * 1024           # bytes handed to the transport at a time
BACKLOG = 128
_UCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid


class ControlSocketBusy(ControlSocketError):
    """Another daemon answers on our socket: the same TUN name in the same
    network namespace is taken."""


def netns_inode() -> int:
    """This process's network namespace, as the kernel names it."""
    return os.stat("/proc/self/ns/net").st_ino


def socket_path(iface: str, runtime_dir: str | None = None,
                netns: int | None = None) -> str:
    """Where the daemon of TUN `iface` in network namespace `netns` (default:
    ours, by inode) listens."""
    if (not iface or iface in (".", "..") or len(iface) > 15
            or any(c in iface for c in "/\0") or any(c.isspace() for c in iface)):
        raise ControlSocketError(f"bad interface name {iface!r}")
    ino = netns_inode() if netns is None else netns
    return os.path.join(runtime_dir or default_runtime_dir(), f"net{ino}-{iface}.sock")


def _claim(path: str) -> None:
    """Clear the way for bind(): remove a socket nobody listens on (left by
    a killed daemon); refuse anything else that holds the name."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("control socket %s was left by a daemon that is gone: replacing it", path)
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass                    # busy (full backlog) or slow: someone is there
    finally:
        probe.close()
    raise ControlSocketBusy(f"another udpoverlay daemon is listening on {path}")


class _Client(asyncio.Protocol):
    """One connection: send the shared document a chunk at a time (flow
    control from the transport), close; abort at the deadline. Never reads."""

    def __init__(self, server: "ControlServer") -> None:
        self._srv = server
        self._transport: asyncio.WriteTransport | None = None
        self._view = memoryview(b"")
        self._off = 0
        self._paused = False
        self._admitted = False
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        srv = self._srv
        self._transport = transport
        if srv.closing or len(srv.clients) >= srv.max_clients:
            srv.stats["rejected_busy"] += 1
            transport.abort()
            return
        self._admitted = True
        srv.clients.add(self)
        transport.pause_reading()          # the client has nothing to say
        transport.set_write_buffer_limits(high=CHUNK)
        self._timer = asyncio.get_running_loop().call_later(srv.send_timeout, self.expire)
        self._view = memoryview(srv.document())
        self._pump()

    def _pump(self) -> None:
        t, n = self._transport, len(self._view)
        assert t is not None
        while not self._paused and self._off < n and not t.is_closing():
            t.write(self._view[self._off:self._off + CHUNK])
            self._off += CHUNK
        if self._off >= n and not t.is_closing():
            t.close()                      # after the buffer drains

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def eof_received(self) -> bool:
        return True                        # a half-close does not end our send

    def expire(self) -> None:
        """Drop a client that did not take the document in time."""
        self.drop("timed_out")

    def drop(self, counter: str | None = None) -> None:
        if self._transport is not None and not self._expired:
            self._expired = True
            if counter:
                self._srv.stats[counter] += 1
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        srv = self._srv
        srv.clients.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._view = memoryview(b"")
        if self._expired:
            return
        srv.stats["served" if exc is None and self._off > 0 else "failed"] += 1


class ControlServer:
    """Serves status_fn() as JSON to each client, then closes the connection.

    runtime_dir and owner (who must own the runtime dir; default: our user,
    root for the daemon) are parameters for tests; so are the limits and the
    clock of the document cache."""

    def __init__(self, iface: str, status_fn: Callable[[], dict], *,
                 runtime_dir: str | None = None, owner: int | None = None,
                 max_clients: int = MAX_CLIENTS, send_timeout: float = SEND_TIMEOUT,
                 rebuild_interval: float = REBUILD_INTERVAL,
                 rebuild_burst: int = REBUILD_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.iface = iface
        self.runtime_dir = runtime_dir or default_runtime_dir()
        self.owner = os.geteuid() if owner is None else owner
        self.path = ""          # known once start() has looked up our namespace
        self.max_clients = max_clients
        self.send_timeout = send_timeout
        self.rebuild_interval = rebuild_interval
        self.rebuild_burst = rebuild_burst
        self.clients: set[_Client] = set()
        self.closing = False
        self.stats = {"served": 0, "rejected_busy": 0, "timed_out": 0, "failed": 0,
                      "builds": 0}
        self._status_fn = status_fn
        self._clock = clock
        self._doc = b""
        self._tokens = float(rebuild_burst)     # builds allowed right now
        self._asked_at: float | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ino: int | None = None

    def counters(self) -> dict:
        """The control socket's own counters (the status doc's "control")."""
        return {**self.stats, "active": len(self.clients)}

    def document(self) -> bytes:
        """The rendered status: fresh while builds are rare, else the last
        one (one build per rebuild_interval, after a burst of rebuild_burst)."""
        now = self._clock()
        if self._asked_at is not None:
            self._tokens = min(float(self.rebuild_burst),
                               self._tokens + (now - self._asked_at) / self.rebuild_interval)
        self._asked_at = now
        if not self._doc or self._tokens >= 1:
            self._tokens = max(0.0, self._tokens - 1)
            self.stats["builds"] += 1
            self._doc = self._render()
        return self._doc

    def _render(self) -> bytes:
        try:
            doc = self._status_fn()
            if isinstance(doc, dict):
                doc = {**doc, "control": self.counters()}
            return json.dumps(doc, sort_keys=True).encode() + b"\n"
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            return json.dumps({"error": str(exc)}).encode() + b"\n"

    async def start(self) -> None:
        self.path = socket_path(self.iface, self.runtime_dir)
        prepare_runtime_dir(self.runtime_dir, self.owner)
        _claim(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Nobody can connect before listen(); the 0700 dir guards this gap.
            os.chmod(self.path, 0o600)
            self._ino = os.stat(self.path).st_ino
            sock.setblocking(False)
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Client(self), sock=sock, backlog=BACKLOG)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        self.closing = False
        log.debug("control socket %s (mode 0600: root only)", self.path)

    def _unlink(self) -> None:
        """Remove our socket file, unless someone else's replaced it."""
        if self._ino is None:
            return
        try:
            if os.lstat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._ino = None

    async def close(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
            for client in list(self.clients):
                client.drop()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._server = None
        self._unlink()


# -- the client ----------------------------------------------------------------
def query_status(iface: str, timeout: float = 5.0, *, runtime_dir: str | None = None,
                 trusted_uid: int | None = None) -> dict:
    """Ask the daemon serving `iface` in this network namespace for status.
    The server must run as trusted_uid (default: our own user, so root for
    the command line). A daemon that is busy (it closes without answering,
    or cuts the answer short) is asked again until the timeout."""
    if not 0 < timeout <= 86400:          # also refuses NaN
        raise ControlError(f"--timeout {timeout}: give seconds, above 0 and up to a day")
    path = socket_path(iface, runtime_dir)
    trusted = os.geteuid() if trusted_uid is None else trusted_uid
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 2):
        data = _ask(path, iface, trusted, deadline, timeout)
        if data.endswith(b"\n"):          # the whole document
            break
        if time.monotonic() + 0.05 >= deadline:
            break
        time.sleep(0.05)
    else:
        data = b""
    if not data.endswith(b"\n"):
        raise ControlError(f"the daemon for {iface!r} closed the connection without a "
                           f"complete answer for {timeout}s (too many status clients?)")
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ControlError(f"daemon for {iface!r} sent a malformed answer")
    return doc


def _ask(path: str, iface: str, trusted: int, deadline: float, timeout: float) -> bytes:
    """One connection: connect, check who serves, read to EOF."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _connect(s, path, iface, deadline, timeout)
        pid, uid, _ = _UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 _UCRED.size))
        if uid != trusted:
            raise ControlError(f"refusing the answer on {path}: it is served by uid {uid} "
                               f"(pid {pid}), not {who(trusted)}")
        chunks: list[bytes] = []
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = s.recv(CHUNK)
            except socket.timeout:
                raise ControlError(f"daemon for {iface!r} did not answer within "
                                   f"{timeout}s") from None
            except ConnectionResetError:
                return b""          # dropped as too slow, or busy: ask again
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        s.close()


def _connect(s: socket.socket, path: str, iface: str, deadline: float,
             timeout: float) -> None:
    where = f"interface {iface!r} in this network namespace"
    for _ in range(int(timeout / 0.02) + 2):
        s.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            s.connect(path)
            return
        except (BlockingIOError, InterruptedError):
            pass                    # listen backlog full: the daemon is busy
        except FileNotFoundError:
            raise ControlError(f"no udpoverlay daemon for {where} (no {path})") from None
        except PermissionError:
            raise ControlError(f"status needs root: permission denied on {path}") from None
        except ConnectionRefusedError:
            raise ControlError(f"no udpoverlay daemon for {where} ({path} is left from "
                               "a daemon that is gone)") from None
        except socket.timeout:
            break
        except OSError as exc:
            raise ControlError(f"cannot reach the daemon for {where} at {path}: "
                               f"{exc.strerror or exc}") from None
        if time.monotonic() + 0.02 >= deadline:
            break
        time.sleep(0.02)
    raise ControlError(f"daemon for {iface!r} did not answer within {timeout}s (busy)")
