"""The Runner over real fds, no root: a SEQPACKET socket pair stands in for
the TUN (one read = one packet), UDP sockets on 127.0.0.1 for the underlay.
In loop mode and in threads mode, with TUN reads on read() (epoll) and on
io_uring, traffic crosses both ways; stop() removes the readers or joins
the workers, and is idempotent. `mode` says which I/O is in use."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading

import pytest

from tests.support import pktgen as g
from tests.support.asyncutil import run, wait_until
from tests.support.requirements import require
from tests.support.twins import engine
from udpoverlay import dataplane
from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer

LOCAL = "127.0.0.1"     # the underlay: loopback only
OUT = g.raw_ipv4("198.19.1.5", "198.19.2.5", 64, 17, b"out")
IN = g.raw_ipv4("198.19.2.7", "198.19.1.5", 64, 17, b"in")


def recv_nowait(s: socket.socket):
    try:
        return s.recv(65536)
    except BlockingIOError:
        return None


@contextlib.contextmanager
def rig(impl, threads: bool, io: str = "epoll", busy: int = 0):
    """(runner, tun_app, peer socket, address of the engine's socket)."""
    opened = []
    try:
        tun_app, tun_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        opened += [tun_app, tun_dev]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened.append(sock)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened.append(peer)
        for s in (tun_app, tun_dev, sock, peer):
            s.setblocking(False)
        sock.bind((LOCAL, 0))
        peer.bind((LOCAL, 0))
        e = engine(impl, "udp", [Peer(ipaddress.IPv4Address(LOCAL), peer.getsockname()[1],
                                      ipaddress.IPv4Network("198.19.2.0/24"))])
        runner = dataplane.Runner(e, tun_dev.fileno(), sock.fileno(), threads=threads, io=io,
                                  busy_poll_us=busy)
        try:
            yield runner, tun_app, peer, sock.getsockname()
        finally:
            runner.stop()
            e.close()
    finally:
        for s in opened:
            s.close()


def has_ring(impl) -> bool:
    """True for the compiled twin, whose ring must be usable here (a failure,
    or a skip outside UDPOVERLAY_REQUIRE_ALL=1, where io_uring was not built
    in or is refused); False for the reference, which has no ring."""
    if impl.IMPLEMENTATION != "cython":
        return False
    e = engine(impl, "udp")
    try:
        e.core.set_io("io_uring")
    except OSError as exc:
        require(False, f"io_uring path not usable: {exc}")
    finally:
        e.close()
    return True


NO_RING = (r"^--io io_uring: io_uring unavailable: the pure-Python data plane has no ring "
           r"\(--io auto reads with epoll\)$")


def test_auto_io_is_epoll(impl):
    """auto = read(): cheaper per packet than io_uring here (issue 14)."""
    with rig(impl, True, "auto") as (runner, *_):
        assert runner.mode == "threads+epoll" and runner.core.io_batches == 0


def test_busy_poll_is_bounded(impl):
    for bad in (-1, 100001):
        with pytest.raises(ValueError, match="0 to 100000"):
            with rig(impl, True, "epoll", bad):
                pass


def test_forced_io_uring_is_used_or_one_clear_error(impl):
    """--io io_uring: the compiled twin reads through its ring; the
    reference, which has none, refuses in one line (never a silent epoll)."""
    if has_ring(impl):
        with rig(impl, False, "io_uring") as (runner, *_):
            assert runner.mode == "loop+io_uring"
    else:
        with pytest.raises(ConfigError, match=NO_RING):
            with rig(impl, False, "io_uring"):
                pass
    with pytest.raises(ValueError, match="unknown I/O mode 'uring'"):
        with rig(impl, False, "uring"):
            pass


def workers_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("udpoverlay-")]


@pytest.mark.parametrize("threads,io,busy", [
    (False, "epoll", 0), (True, "epoll", 0), (False, "io_uring", 0), (True, "io_uring", 0),
    (True, "epoll", 200), (False, "epoll", 200)],
    ids=["loop", "threads", "loop-io_uring", "threads-io_uring", "threads-busy-poll",
         "loop-busy-poll"])
def test_traffic_crosses_and_stop_is_clean(impl, loop, threads, io, busy):
    if io == "io_uring" and not has_ring(impl):
        with pytest.raises(ConfigError, match=NO_RING):
            with rig(impl, threads, io, busy):
                pass
        return
    with rig(impl, threads, io, busy) as (runner, tun_app, peer, addr):
        assert runner.mode == (("threads" if threads else "loop") + "+" + io
                               + (f"+busy-poll {busy} µs" if busy else ""))

        async def main():
            runner.start(asyncio.get_running_loop())
            tun_app.send(OUT)
            got = await wait_until(lambda: recv_nowait(peer), what="TUN -> wire")
            assert got[:8] == OUT[:8] and got[8] == 63 and got[20:] == b"out"
            peer.sendto(IN, addr)
            assert await wait_until(lambda: recv_nowait(tun_app), what="wire -> TUN") == IN
            runner.stop()
            runner.stop()
            assert workers_alive() == []
            tun_app.send(OUT)                    # nobody forwards it any more
            await asyncio.sleep(0.2)
            assert recv_nowait(peer) is None

        run(main())
        c = runner.engine.counters()
        assert (c["tx_packets"], c["rx_packets"]) == (1, 1)
