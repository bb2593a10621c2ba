"""A tiny HTTP/1.1 server on the event loop for /healthz, /readyz and
/metrics (--healthz-ip/--healthz-port, as flanneld's).

Why hand-written: three GET endpoints need no framework, and this one is
reachable from the network, so its limits are explicit and tested:
- the request head (request line + headers) must fit in HEAD_LIMIT bytes
  and arrive within HEAD_TIMEOUT seconds, else 431 / the connection is
  closed; the response must be taken within WRITE_TIMEOUT;
- at most MAX_CONNECTIONS at once, and MAX_PER_CLIENT from one address,
  get the full HEAD_TIMEOUT; a connection over those caps is still taken,
  on probation: it must send its whole request head within
  PROBATION_TIMEOUT. Why: caps alone let anyone starve the kubelet's
  probes by holding idle connections and reopening each one the server
  drops (issue 21: 0 of 14 probes answered). Whatever others hold, a
  client that sends its request at once is served. At most MAX_PROBATION
  connections are on probation; when full, the oldest one that has not
  sent its whole head is closed (evicted) for the newcomer, else the
  oldest one whose answer has taken longer than PROBATION_TIMEOUT (a
  client that does not read cannot pin the places either). "Has sent its
  head" is noted as the bytes arrive (_HeadReader), not when the handler
  next runs, so a burst of newcomers cannot evict a probe whose request is
  already here. What is left: a flood of new connections, more than
  MAX_PROBATION between a probe's connect and its request (~1 ms), still
  evicts it;
- one request per connection (`Connection: close`): no keep-alive state;
- only GET and HEAD (405 otherwise); a request body is never read;
- a route that raises answers 500 with one line; the server never stops;
- after an error answer (4xx) the rest of the request is read and dropped
  for up to LINGER seconds before closing, so the client reads the answer
  instead of a reset;
- a 200 answer of GZIP_MIN bytes or more is gzip-compressed when the
  request says `Accept-Encoding: gzip` (as prometheus_client's own server
  does); a large body is compressed in a worker thread, and the last one
  is kept, so a scrape flood compresses a /metrics page once.
Every refused, evicted or timed-out connection is counted (`rejected`,
exported as udpoverlay_http_connections_rejected_total; `evicted` counts
the evictions among them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import logging
import time
from typing import Awaitable, Callable, Iterable, SupportsIndex, Union

__all__ = ["OpsServer", "Response", "HEAD_LIMIT", "HEAD_TIMEOUT", "WRITE_TIMEOUT",
           "MAX_CONNECTIONS", "MAX_PER_CLIENT", "MAX_PROBATION", "PROBATION_TIMEOUT",
           "LINGER", "GZIP_MIN", "accepts_gzip"]

log = logging.getLogger(__name__)

HEAD_LIMIT = 8192
HEAD_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
MAX_PER_CLIENT = 8
MAX_PROBATION = 128          # over the caps, on probation at once
PROBATION_TIMEOUT = 1.0      # s: a kubelet probe's own default timeout
LINGER = 1.0
BACKLOG = 1024               # a connect burst waits in the kernel, not SYN-dropped
GZIP_MIN = 1024              # smaller answers are not worth compressing
GZIP_LEVEL = 6
_GZIP_INLINE = 65536         # larger bodies are compressed in a worker thread
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"

# (status, content type, body); a route returns one or an awaitable of one
Response = tuple[int, str, bytes]
Route = Callable[[], Union[Response, Awaitable[Response]]]


class _HeadReader(asyncio.StreamReader):
    """A StreamReader that notes, as the bytes arrive, that a whole request
    head (up to the blank line) is here; the eviction choice reads it."""

    head_seen = False
    _tail = b""

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if not self.head_seen:
            data = bytes(data)
            joined = self._tail + data
            self.head_seen = b"\r\n\r\n" in joined
            self._tail = joined[-3:]
        super().feed_data(data)


class _Conn:
    """One accepted connection's bookkeeping."""

    __slots__ = ("client", "reader", "writer", "probation", "open", "since")

    def __init__(self, client: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, probation: bool) -> None:
        self.client, self.reader, self.writer = client, reader, writer
        self.probation = probation
        self.open = True
        self.since = time.monotonic()

    @property
    def evictable(self) -> bool:
        """Still owes its request head (a probe's has arrived already)."""
        return not getattr(self.reader, "head_seen", False)


class OpsServer:
    """GET routes on one listener; start() binds, close() stops."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], *,
                 max_connections: int = MAX_CONNECTIONS, max_per_client: int = MAX_PER_CLIENT,
                 max_probation: int = MAX_PROBATION,
                 head_timeout: float = HEAD_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 probation_timeout: float = PROBATION_TIMEOUT) -> None:
        self.host, self.requested_port, self.routes = host, port, routes
        self.max_connections, self.max_per_client = max_connections, max_per_client
        self.max_probation = max_probation
        self.head_timeout, self.write_timeout = head_timeout, write_timeout
        self.probation_timeout = min(probation_timeout, head_timeout)
        self.rejected = 0
        self.evicted = 0
        self.answered = 0
        self._server: asyncio.Server | None = None
        self._clients: dict[str, int] = {}        # client -> connections within the caps
        self._regular = 0                         # connections within the caps
        self._conns: dict[_Conn, None] = {}       # every open one, oldest first
        self._probation: dict[_Conn, None] = {}   # those over the caps, oldest first
        self._idle = asyncio.Event()
        self._gz: tuple[bytes, bytes] | None = None     # the last body compressed, and gzip
        self._gz_lock: asyncio.Lock | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one, or the kernel's choice for 0)."""
        assert self._server is not None and self._server.sockets
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            # asyncio.start_server's own factory, with the head-noting reader
            return asyncio.StreamReaderProtocol(_HeadReader(limit=HEAD_LIMIT, loop=loop),
                                                self._accept, loop=loop)
        self._server = await loop.create_server(protocol, self.host, self.requested_port,
                                                reuse_address=True, backlog=BACKLOG)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Cut the open connections (their handlers then end on the error);
        # cancelling the handlers instead makes asyncio log each one.
        for conn in list(self._conns):
            conn.writer.transport.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wait_idle(), 2)
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def _wait_idle(self) -> None:
        while self._conns:
            self._idle.clear()
            await self._idle.wait()

    def _admit(self, client: str, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> _Conn | None:
        """Within the caps: a regular connection. Over them: on probation,
        evicting for it, when there is no room, the oldest probationer that
        owes its head, else the oldest one older than the probation timeout
        (its answer stalled: a client that does not read); None (reset)
        only when every probationer is a younger one being answered."""
        if self._regular < self.max_connections and \
                self._clients.get(client, 0) < self.max_per_client:
            self._clients[client] = self._clients.get(client, 0) + 1
            self._regular += 1
            conn = _Conn(client, reader, writer, False)
        else:
            if len(self._probation) >= self.max_probation:
                victim = next((c for c in self._probation if c.evictable), None)
                if victim is None:
                    old = time.monotonic() - self.probation_timeout
                    victim = next((c for c in self._probation if c.since <= old), None)
                if victim is None:
                    return None
                self.evicted += 1
                self._release(victim)        # its handler counts it (rejected) as it ends
                victim.writer.transport.abort()
            conn = _Conn(client, reader, writer, True)
            self._probation[conn] = None
        self._conns[conn] = None
        return conn

    def _release(self, conn: _Conn) -> None:
        """Forget a connection (once: an evicted one is released early)."""
        if not conn.open:
            return
        conn.open = False
        if conn.probation:
            del self._probation[conn]
        else:
            self._regular -= 1
            left = self._clients[conn.client] - 1
            if left:
                self._clients[conn.client] = left
            else:
                del self._clients[conn.client]
        del self._conns[conn]
        self._idle.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "?"
        conn = self._admit(client, reader, writer)
        if conn is None:
            self.rejected += 1
            writer.transport.abort()
            return
        # drain() then waits until everything is handed to the kernel, so a
        # close after it loses nothing and a client that does not read times out.
        writer.transport.set_write_buffer_limits(high=0)
        sent = False
        try:
            await self._serve_one(reader, writer, conn)
            sent = True
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            self.rejected += 1
        except Exception as exc:  # noqa: BLE001 - a client must never reach the loop's handler
            self.rejected += 1
            log.debug("ops endpoint: connection from %s dropped: %r", client, exc)
        finally:
            self._release(conn)
            if sent:
                writer.close()
            else:
                writer.transport.abort()

    async def _serve_one(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, conn: _Conn) -> None:
        try:
            async with asyncio.timeout(self.probation_timeout if conn.probation
                                       else self.head_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._refuse(reader, writer, 431, b"request head too large\n")
            return
        method, path, error = _parse(head)
        if error:
            await self._refuse(reader, writer, 400, error.encode() + b"\n")
            return
        if method not in ("GET", "HEAD"):
            await self._refuse(reader, writer, 405, b"only GET and HEAD\n",
                               extra="Allow: GET, HEAD\r\n")
            return
        route = self.routes.get(path)
        if route is None:
            await self._send(writer, 404, TEXT, b"not found\n", head_only=method == "HEAD")
            return
        try:
            answer = route()
            status, ctype, body = await answer if inspect.isawaitable(answer) else answer
        except Exception as exc:  # noqa: BLE001 - one bad scrape must not stop the server
            log.warning("ops endpoint %s failed: %s", path, exc)
            status, ctype, body = 500, TEXT, f"{path} failed: {exc}\n".encode()
        extra = ""
        if status == 200 and len(body) >= GZIP_MIN:
            extra = "Vary: Accept-Encoding\r\n"
            if accepts_gzip(head):
                body = await self._gzip(body)
                extra += "Content-Encoding: gzip\r\n"
        await self._send(writer, status, ctype, body, head_only=method == "HEAD", extra=extra)
        self.answered += 1

    async def _gzip(self, body: bytes) -> bytes:
        """body gzip-compressed; the last result is kept (the /metrics page
        is the same bytes object for a second), a large body is compressed
        off the loop, one at a time."""
        if len(body) < _GZIP_INLINE:
            return gzip.compress(body, GZIP_LEVEL, mtime=0)
        if self._gz_lock is None:
            self._gz_lock = asyncio.Lock()
        async with self._gz_lock:
            if self._gz is None or self._gz[0] is not body:
                packed = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0)
                self._gz = (body, packed)
            return self._gz[1]

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      status: int, body: bytes, extra: str = "") -> None:
        await self._send(writer, status, TEXT, body, extra=extra)
        await _linger(reader, writer)

    async def _send(self, writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes,
                    head_only: bool = False, extra: str = "") -> None:
        writer.write(_response(status, ctype, body, head_only, extra))
        async with asyncio.timeout(self.write_timeout):
            await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the client still sends (bounded),
    so closing with unread data does not reset the answer away."""
    writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER):
            for _ in range(64):
                if not await reader.read(HEAD_LIMIT):
                    break


def accepts_gzip(head: bytes) -> bool:
    """The request head has `Accept-Encoding` naming gzip (prometheus_client's
    rule: any listed coding equal to gzip, parameters ignored)."""
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"accept-encoding":
            for coding in value.split(b","):
                if coding.split(b";")[0].strip().lower() == b"gzip":
                    return True
    return False


def _parse(head: bytes) -> tuple[str, str, str]:
    """(method, path without query, error) from a request head."""
    line = head.split(b"\r\n", 1)[0]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return "", "", "request line is not ASCII"
    parts = text.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return "", "", "bad request line"
    return parts[0], parts[1].split("?", 1)[0], ""


def _response(status: int, ctype: str, body: bytes, head_only: bool = False,
              extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n")
    return head.encode() + (b"" if head_only else body)
