"""The Runner over real fds, no root: a SEQPACKET socket pair stands in for
the TUN (one read = one packet), UDP sockets on 127.0.0.1 for the underlay.
In loop mode and in threads mode traffic crosses both ways; stop() removes
the readers or joins the workers, and is idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading

import pytest

from tests.support import pktgen as g
from tests.support.asyncutil import run, wait_until
from tests.support.twins import engine
from udpoverlay import dataplane
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
def rig(impl, threads: bool):
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
        runner = dataplane.Runner(e, tun_dev.fileno(), sock.fileno(), threads=threads)
        try:
            yield runner, tun_app, peer, sock.getsockname()
        finally:
            runner.stop()
            e.close()
    finally:
        for s in opened:
            s.close()


def workers_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("udpoverlay-")]


@pytest.mark.parametrize("threads", [False, True], ids=["loop", "threads"])
def test_traffic_crosses_and_stop_is_clean(impl, loop, threads):
    with rig(impl, threads) as (runner, tun_app, peer, addr):
        assert runner.mode == ("threads" if threads else "loop")

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
