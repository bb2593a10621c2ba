"""A tiny HTTP/1.1 server on the event loop for /healthz, /readyz and
/metrics (--healthz-ip/--healthz-port, as flanneld's).

Why hand-written: three GET endpoints need no framework, and this one is
reachable from the network, so its limits are explicit and tested:
- the request head (request line + headers) must fit in HEAD_LIMIT bytes
  and arrive within HEAD_TIMEOUT seconds, else 431 / the connection is
  closed; the response must be taken within WRITE_TIMEOUT;
- at most MAX_CONNECTIONS at once, and MAX_PER_CLIENT from one address, so
  one slow or hostile client cannot starve the kubelet's probes; over the
  cap a connection is reset at once (no answer: answering costs more);
- one request per connection (`Connection: close`): no keep-alive state;
- only GET and HEAD (405 otherwise); a request body is never read;
- a route that raises answers 500 with one line; the server never stops;
- after an error answer (4xx) the rest of the request is read and dropped
  for up to LINGER seconds before closing, so the client reads the answer
  instead of a reset.
Every refused or timed-out connection is counted (`rejected`, exported as
udpoverlay_http_connections_rejected_total).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Awaitable, Callable, Union

__all__ = ["OpsServer", "Response", "HEAD_LIMIT", "HEAD_TIMEOUT", "WRITE_TIMEOUT",
           "MAX_CONNECTIONS", "MAX_PER_CLIENT", "LINGER"]

log = logging.getLogger(__name__)

HEAD_LIMIT = 8192
HEAD_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
MAX_PER_CLIENT = 8
LINGER = 1.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"

# (status, content type, body); a route returns one or an awaitable of one
Response = tuple[int, str, bytes]
Route = Callable[[], Union[Response, Awaitable[Response]]]


class OpsServer:
    """GET routes on one listener; start() binds, close() stops."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], *,
                 max_connections: int = MAX_CONNECTIONS, max_per_client: int = MAX_PER_CLIENT,
                 head_timeout: float = HEAD_TIMEOUT, write_timeout: float = WRITE_TIMEOUT
                 ) -> None:
        self.host, self.requested_port, self.routes = host, port, routes
        self.max_connections, self.max_per_client = max_connections, max_per_client
        self.head_timeout, self.write_timeout = head_timeout, write_timeout
        self.rejected = 0
        self.answered = 0
        self._server: asyncio.Server | None = None
        self._clients: dict[str, int] = {}
        self._writers: set[asyncio.StreamWriter] = set()    # the open connections
        self._idle = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port (the requested one, or the kernel's choice for 0)."""
        assert self._server is not None and self._server.sockets
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.requested_port,
                                                  limit=HEAD_LIMIT, reuse_address=True)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Cut the open connections (their handlers then end on the error);
        # cancelling the handlers instead makes asyncio log each one.
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wait_idle(), 2)
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def _wait_idle(self) -> None:
        while self._writers:
            self._idle.clear()
            await self._idle.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "?"
        if len(self._writers) >= self.max_connections or \
                self._clients.get(client, 0) >= self.max_per_client:
            self.rejected += 1
            writer.transport.abort()
            return
        self._clients[client] = self._clients.get(client, 0) + 1
        self._writers.add(writer)
        # drain() then waits until everything is handed to the kernel, so a
        # close after it loses nothing and a client that does not read times out.
        writer.transport.set_write_buffer_limits(high=0)
        sent = False
        try:
            await self._serve_one(reader, writer)
            sent = True
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            self.rejected += 1
        except Exception as exc:  # noqa: BLE001 - a client must never reach the loop's handler
            self.rejected += 1
            log.debug("ops endpoint: connection from %s dropped: %r", client, exc)
        finally:
            left = self._clients[client] - 1
            if left:
                self._clients[client] = left
            else:
                del self._clients[client]
            self._writers.discard(writer)
            self._idle.set()
            if sent:
                writer.close()
            else:
                writer.transport.abort()

    async def _serve_one(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.head_timeout):
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
        await self._send(writer, status, ctype, body, head_only=method == "HEAD")
        self.answered += 1

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
