"""Local control socket: one JSON status document per connection.

The socket is an abstract unix socket named `\\0udpoverlay.<iface>`. Abstract
names live in the network namespace, so daemons in different namespaces
(the demo, the tests) never collide, and nothing is left on disk when a
daemon dies.
"""

from __future__ import annotations

import asyncio
import json
import socket

from udpoverlay.errors import ControlError

__all__ = ["socket_name", "ControlServer", "query_status"]


def socket_name(iface: str) -> str:
    return "\0udpoverlay." + iface


class ControlServer:
    """Serves status_fn() as JSON to each client, then closes the connection."""

    def __init__(self, iface: str, status_fn) -> None:
        self.iface = iface
        self._status_fn = status_fn
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._handle, path=socket_name(self.iface))

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            try:
                doc = self._status_fn()
                data = json.dumps(doc, sort_keys=True).encode() + b"\n"
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                data = json.dumps({"error": str(exc)}).encode() + b"\n"
            writer.write(data)
            await asyncio.wait_for(writer.drain(), 5)
        except Exception:  # noqa: BLE001 - a client that went away
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except Exception:  # noqa: BLE001
                pass
            self._server = None


def query_status(iface: str, timeout: float = 5.0) -> dict:
    """Ask the daemon serving `iface` (in this network namespace) for status."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(socket_name(iface))
        except OSError as exc:
            raise ControlError(f"no udpoverlay daemon for interface {iface!r} "
                               f"in this network namespace ({exc.strerror or exc})") from None
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise ControlError(f"daemon for {iface!r} did not answer within {timeout}s") from None
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        s.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"daemon for {iface!r} sent a malformed answer") from None
