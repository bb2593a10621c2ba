"""The ops HTTP server as a hostile or broken client meets it, on loopback,
on both event loops: oversized and garbage heads, slow and silent clients,
a client that never reads its answer, too many connections, a route that
raises. After each, the server still answers a plain GET."""

from __future__ import annotations

import asyncio
import socket

from tests.support.asyncutil import run
from udpoverlay.ops.http import HEAD_LIMIT, TEXT, OpsServer

BIG = 16_000_000      # more than loopback's socket buffers hold


def _server(**kw) -> OpsServer:
    def boom():
        raise RuntimeError("collector broke")
    routes = {"/healthz": lambda: (200, TEXT, b"ok\n"), "/boom": boom,
              "/big": lambda: (200, TEXT, b"x" * BIG)}
    return OpsServer("127.0.0.1", 0, routes, **kw)


async def _exchange(port: int, data: bytes, read: int = 1 << 16) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        async with asyncio.timeout(5):
            while len(out) < read:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        writer.close()


async def _get(port: int, path: str = "/healthz", method: str = "GET") -> bytes:
    return await _exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_routes_methods_and_errors(loop):
    async def main():
        srv = _server()
        await srv.start()
        try:
            ok = await _get(srv.port)
            assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nok\n")
            assert b"Content-Length: 3\r\n" in ok and b"Connection: close" in ok
            assert _status(await _get(srv.port, "/healthz?verbose=1")) == 200
            assert _status(await _get(srv.port, "/nope")) == 404
            head = await _get(srv.port, method="HEAD")
            assert _status(head) == 200 and head.endswith(b"\r\n\r\n")   # no body
            post = await _get(srv.port, method="POST")
            assert _status(post) == 405 and b"Allow: GET, HEAD" in post
            boom = await _get(srv.port, "/boom")
            assert _status(boom) == 500 and b"collector broke" in boom
            for bad in (b"\xff\xfe garbage\r\n\r\n", b"GET\r\n\r\n", b"GET / SPDY/3\r\n\r\n",
                        b"GET nopath HTTP/1.1\r\n\r\n"):
                assert _status(await _exchange(srv.port, bad)) == 400, bad
            big = await _exchange(srv.port, b"GET / HTTP/1.1\r\nX: " + b"a" * HEAD_LIMIT
                                  + b"\r\n\r\n")
            assert _status(big) == 431
            # a large answer arrives whole (nothing cut at close)
            body = await _exchange(srv.port, b"GET /big HTTP/1.1\r\n\r\n", read=BIG + 1000)
            assert body.endswith(b"x" * 1000) and len(body.split(b"\r\n\r\n", 1)[1]) == BIG
            assert _status(await _get(srv.port)) == 200
        finally:
            await srv.close()
    run(main())


def test_silent_slow_and_non_reading_clients_time_out(loop):
    async def main():
        srv = _server(head_timeout=0.3, write_timeout=0.3)
        await srv.start()
        try:
            silent = await asyncio.open_connection("127.0.0.1", srv.port)
            slow = await asyncio.open_connection("127.0.0.1", srv.port)
            slow[1].write(b"GET /heal")       # never finishes its head
            # never reads a 16 MB answer: the kernel buffers fill, the write times out
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.port))
            lazy = await asyncio.open_connection(sock=sock)
            lazy[1].write(b"GET /big HTTP/1.1\r\n\r\n")
            async with asyncio.timeout(5):
                assert await silent[0].read() == b""          # closed by the server
                assert await slow[0].read() == b""
                while srv.rejected < 3:
                    await asyncio.sleep(0.02)
            assert len(srv._writers) == 0 and srv._clients == {}
            assert _status(await _get(srv.port)) == 200
            for _, w in (silent, slow, lazy):
                w.close()
        finally:
            await srv.close()
    run(main())


def test_connection_caps(loop):
    async def main():
        srv = _server(max_connections=6, max_per_client=4, head_timeout=5)
        await srv.start()
        held = []
        try:
            for _ in range(4):
                held.append(await asyncio.open_connection("127.0.0.1", srv.port))
            await asyncio.sleep(0.1)
            # the fifth from the same address: reset at once, unanswered
            try:
                over = await _get(srv.port)
            except ConnectionError:
                over = b""
            assert over == b"" and srv.rejected == 1
            # another address (127.0.0.2 is loopback too) is served meanwhile
            r, w = await asyncio.open_connection("127.0.0.1", srv.port, local_addr=("127.0.0.2", 0))
            w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
            async with asyncio.timeout(5):
                assert (await r.read()).endswith(b"ok\n")
            w.close()
            # the held ones finish normally; then the cap is free again
            for r, w in held:
                w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
                async with asyncio.timeout(5):
                    assert (await r.read()).endswith(b"ok\n")
                w.close()
            assert _status(await _get(srv.port)) == 200
        finally:
            for _, w in held:
                w.close()
            await srv.close()
    run(main())


def test_port_in_use_is_one_clear_error():
    import pytest

    from udpoverlay.config.options import build_config
    from udpoverlay.errors import TunSetupError
    from udpoverlay.lifecycle import Lifecycle
    from udpoverlay.ops.service import Ops

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        opts = build_config(subnet="198.19.1.0/24", network="198.19.0.0/16", peers=(),
                            healthz_ip="127.0.0.1", healthz_port=port)
        with pytest.raises(TunSetupError, match=f"cannot listen on 127.0.0.1:{port} "
                                                r"\(--healthz-port\)"):
            run(Ops(opts, Lifecycle(), argv=[]).start())
