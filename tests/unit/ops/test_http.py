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
            assert not srv._conns and srv._clients == {} and srv._regular == 0
            assert _status(await _get(srv.port)) == 200
            for _, w in (silent, slow, lazy):
                w.close()
        finally:
            await srv.close()
    run(main())


async def _probe(port: int, source: str = "127.0.0.1", path: str = "/healthz",
                 timeout: float = 1.0) -> bytes:
    """Kubelet-style: a new connection, the request at once, a deadline."""
    async with asyncio.timeout(timeout):
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return await r.read()
        finally:
            w.close()


async def _idle(port: int, source: str = "127.0.0.1"):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read() == b""
    except ConnectionError:
        return True


def test_connection_caps_and_probation(loop):
    """Within the caps a connection gets the full head timeout; over them it
    is taken on probation (its head within probation_timeout), and when the
    probation places are full the oldest silent one is evicted for the
    newcomer; only when every probationer is being answered is a newcomer
    reset."""
    async def main():
        gate = asyncio.Event()

        async def slow():
            await gate.wait()
            return 200, TEXT, b"slow\n"
        srv = _server(max_connections=6, max_per_client=4, max_probation=3, head_timeout=5,
                      probation_timeout=0.3)
        srv.routes["/slow"] = slow
        await srv.start()
        held = []
        try:
            for _ in range(4):
                held.append(await _idle(srv.port))
            await asyncio.sleep(0.05)
            assert srv._clients == {"127.0.0.1": 4} and not srv._probation
            # over the per-client cap: a probe is answered all the same
            assert (await _probe(srv.port)).endswith(b"ok\n")
            # another address is within the caps
            assert (await _probe(srv.port, "127.0.0.2")).endswith(b"ok\n")
            # a silent one over the cap is closed after the probation timeout
            t0 = asyncio.get_running_loop().time()
            r, w = await _idle(srv.port)
            async with asyncio.timeout(3):
                assert await _closed_by_server(r)
            assert 0.2 < asyncio.get_running_loop().time() - t0 < 2
            w.close()
            rejected = srv.rejected
            assert rejected >= 1 and srv.evicted == 0
            # three silent probationers fill the places; a probe evicts the oldest
            silent = [await _idle(srv.port) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert len(srv._probation) == 3
            assert (await _probe(srv.port)).endswith(b"ok\n")
            assert srv.evicted == 1
            async with asyncio.timeout(2):
                assert await _closed_by_server(silent[0][0])       # the oldest went
            # the held regular ones are still served (full head timeout)
            for r, w in held:
                w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
                async with asyncio.timeout(5):
                    assert (await r.read()).endswith(b"ok\n")
                w.close()
            held.clear()
            for _, w in silent:
                w.close()
            await asyncio.sleep(0.4)
            assert not srv._probation and srv._regular == 0
            # every place taken by requests being answered: a newcomer is reset
            busy = [asyncio.create_task(_probe(srv.port, "127.0.0.3", "/slow", 5))
                    for _ in range(4 + 3)]
            await asyncio.sleep(0.2)
            assert srv._clients == {"127.0.0.3": 4} and len(srv._probation) == 3
            before = srv.rejected
            try:
                over = await _probe(srv.port, "127.0.0.3")
            except ConnectionError:
                over = b""
            assert over == b"" and srv.rejected == before + 1
            gate.set()
            for answer in await asyncio.gather(*busy):
                assert answer.endswith(b"slow\n")
            assert _status(await _get(srv.port)) == 200
        finally:
            for _, w in held:
                w.close()
            await srv.close()
    run(main())


def test_idle_connections_reopened_at_once_do_not_starve_probes(loop):
    """Issue 21: attackers hold more idle connections than the caps and
    places on probation, from the prober's own address and from others,
    and reopen each one the moment the server drops it. Probes (a new
    connection, the request at once, 1 s) are all answered."""
    async def main():
        srv = _server(max_connections=16, max_per_client=4, max_probation=16,
                      head_timeout=2, probation_timeout=0.5)
        await srv.start()
        stop = asyncio.Event()
        opened = [0]

        async def attacker(source: str) -> None:
            for _ in range(10_000):              # bounded: ~50 per second
                if stop.is_set():
                    return
                try:
                    r, w = await _idle(srv.port, source)
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                opened[0] += 1
                try:
                    await _closed_by_server(r)
                finally:
                    w.close()
        sources = ["127.0.0.1"] * 12 + [f"127.0.0.{i}" for i in range(2, 6) for _ in range(5)]
        tasks = [asyncio.create_task(attacker(s)) for s in sources]    # 32 > 16 + 16
        try:
            await asyncio.sleep(0.5)
            assert srv._regular == 16 and len(srv._probation) == 16
            answers = []
            for _ in range(14):
                try:
                    answers.append(await _probe(srv.port))
                except (OSError, TimeoutError) as exc:
                    answers.append(repr(exc).encode())
                await asyncio.sleep(0.1)
            assert all(a.endswith(b"ok\n") for a in answers), answers
            assert opened[0] > len(sources)            # the attackers did reopen
            assert srv.evicted > 0 and srv.rejected > 0
        finally:
            stop.set()
            await srv.close()
            await asyncio.wait(tasks, timeout=5)
    run(main(), timeout=30)


def test_clients_that_do_not_read_cannot_pin_the_probation_places(loop):
    """Every place taken by clients that asked for a large answer and never
    read it: a probe evicts the oldest one stalled past the probation
    timeout and is answered."""
    async def main():
        srv = _server(max_connections=1, max_per_client=1, max_probation=2,
                      probation_timeout=0.3, write_timeout=5)
        await srv.start()
        lazy = []
        try:
            held = await _idle(srv.port)
            for _ in range(2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.port))
                r, w = await asyncio.open_connection(sock=sock)
                w.write(b"GET /big HTTP/1.1\r\n\r\n")
                lazy.append((r, w))
            await asyncio.sleep(0.1)
            assert len(srv._probation) == 2
            assert all(not c.evictable for c in srv._probation)    # heads are in
            try:                       # both answers younger than 0.3 s: reset
                early = await _probe(srv.port)
            except ConnectionError:
                early = b""
            assert early == b"" and srv.evicted == 0
            await asyncio.sleep(0.4)
            assert (await _probe(srv.port)).endswith(b"ok\n")
            assert srv.evicted == 1
            held[1].close()
        finally:
            for _, w in lazy:
                w.close()
            await srv.close()
    run(main())


def test_gzip_when_asked(loop, monkeypatch):
    import gzip as gz

    import udpoverlay.ops.http as http
    page = b"udpoverlay_peer_packets_total 12345\n" * 5000      # 180 KB, compressible
    calls = []
    real = gz.compress
    monkeypatch.setattr(http.gzip, "compress", lambda *a, **k: calls.append(1) or real(*a, **k))

    async def main():
        srv = _server()
        srv.routes["/page"] = lambda: (200, TEXT, page)
        await srv.start()
        try:
            def ask(path, enc):
                return _exchange(srv.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{enc}\r\n"
                                 .encode(), read=len(page) + 1000)
            for enc in ("Accept-Encoding: gzip\r\n", "accept-encoding: br, GZip;q=0.5\r\n"):
                answer = await ask("/page", enc)
                head, body = answer.split(b"\r\n\r\n", 1)
                assert b"Content-Encoding: gzip" in head and len(body) < len(page) // 20
                assert f"Content-Length: {len(body)}".encode() in head
                assert gz.decompress(body) == page
            assert len(calls) == 1           # the same page is compressed once
            for enc in ("", "Accept-Encoding: identity\r\n", "X-Gzip: gzip\r\n"):
                answer = await ask("/page", enc)
                assert b"Content-Encoding" not in answer and answer.endswith(page)
            small = await ask("/healthz", "Accept-Encoding: gzip\r\n")
            assert b"Content-Encoding" not in small and small.endswith(b"\r\n\r\nok\n")
            head_only = await _exchange(srv.port, b"HEAD /page HTTP/1.1\r\n"
                                        b"Accept-Encoding: gzip\r\n\r\n")
            assert head_only.endswith(b"\r\n\r\n") and b"Content-Encoding: gzip" in head_only
        finally:
            await srv.close()
    run(main())


def test_accepts_gzip_parsing():
    from udpoverlay.ops.http import accepts_gzip
    assert accepts_gzip(b"GET / HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
    assert accepts_gzip(b"GET / HTTP/1.1\r\nACCEPT-ENCODING:deflate , gzip ;q=1\r\n\r\n")
    assert not accepts_gzip(b"GET / HTTP/1.1\r\nAccept-Encoding: gzipx, x-gzip\r\n\r\n")
    assert not accepts_gzip(b"GET /?Accept-Encoding:gzip HTTP/1.1\r\n\r\n")
    assert not accepts_gzip(b"GET / HTTP/1.1\r\nAccept: gzip\r\n\r\n")
    assert not accepts_gzip(b"\xff\xfe\r\n\x00accept-encoding gzip\r\n\r\n")


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
