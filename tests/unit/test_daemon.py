"""The daemon's wiring without root: the host seams (TUN, interface MTU) are
replaced by a socketpair and a number, everything else is real: the UDP
socket on loopback, the data-plane engine of the switch's twin, the runner
on the event loop, the control socket, stop() and close().

Loopback only: our socket on 127.0.0.1, the "peer" on 127.0.0.2; overlay
addresses from 198.19.0.0/16."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import secrets
import socket

import pytest

from tests.support import pktgen as g
from tests.support.asyncutil import run, wait_until
from udpoverlay import dataplane
from udpoverlay.config.options import Options, build_config
from udpoverlay.control import query_status
from udpoverlay.daemon import Daemon
from udpoverlay.errors import ConfigError, ControlError
from udpoverlay.status import offload_text


class FakeTun:
    """A TUN stand-in: one end of a datagram socketpair (one packet per
    read/write, like a TUN without a vnet header)."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self._sock = sock
        self.fd = sock.fileno()
        self.vnet_hdr = False
        self.vnet_hdr_refused = False
        self.offloads: tuple[str, ...] = ()
        self.queue_fds: list[int] = []

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.fd = -1


class LoopbackDaemon(Daemon):
    """Daemon whose TUN is a socketpair; kernel_side is the other end."""

    kernel_side: socket.socket

    def interface_mtu(self, ip: str) -> int:
        return 1500

    def create_tun(self, name, offload):
        ours, self.kernel_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)              # as configure_tun leaves the TUN fd
        self.kernel_side.settimeout(5)
        return FakeTun(name, ours)

    def configure_tun(self, tun, subnet, network, mtu):
        self.configured = (tun.name, subnet, network, mtu)


@pytest.fixture
def peer_sock():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.2", 0))
    s.settimeout(5)
    try:
        yield s
    finally:
        s.close()


def _opts(peer_port: int) -> Options:
    tun = "uotest" + secrets.token_hex(4)
    return build_config(public_ip="127.0.0.1", port=_free_port(), tun=tun,
                        subnet="198.19.1.0/24", network="198.19.0.0/16",
                        peers=[f"127.0.0.2:{peer_port}=198.19.2.0/24"], offload=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_daemon_needs_public_ip_and_setup_needs_subnet(peer_sock):
    with pytest.raises(ConfigError, match="public IP"):
        Daemon(Options())
    d = LoopbackDaemon(Options(public_ip=ipaddress.IPv4Address("127.0.0.1"), port=_free_port()))
    d.open_host()                       # no subnet needed to bind and create the TUN
    assert d.sock is not None and d.tun is not None
    with pytest.raises(ConfigError, match="no subnet"):
        d.setup()
    assert d.sock is None and d.tun is None       # undone on failure


def test_serve_forwards_both_ways_reports_status_and_stops(loop, peer_sock):
    opts = _opts(peer_sock.getsockname()[1])
    d = LoopbackDaemon(opts)
    d.setup()
    assert d.mtu == 1500 - 28
    assert d.configured == (opts.tun, "198.19.1.0/24", "198.19.0.0/16", 1472)

    async def main():
        served = asyncio.create_task(d.serve())
        doc = await wait_until(lambda: asyncio.to_thread(_status, opts.tun), 5,
                               "control socket")
        # TUN -> wire: the packet leaves to the peer, TTL decremented
        out = g.ipv4("198.19.1.1", "198.19.2.5", 17, b"\0\1\0\2\0\x0cxxxx", ttl=64)
        d.kernel_side.send(out)
        got, src = await asyncio.to_thread(peer_sock.recvfrom, 65536)
        # wire -> TUN: a packet from the peer's subnet comes out of the TUN
        back = g.ipv4("198.19.2.5", "198.19.1.1", 17, b"\0\2\0\1\0\x0cyyyy", ttl=63)
        peer_sock.sendto(back, ("127.0.0.1", opts.port))
        into_tun = await asyncio.to_thread(d.kernel_side.recv, 65536)
        after = await asyncio.to_thread(_status, opts.tun)
        d.stop()
        code = await asyncio.wait_for(served, 5)
        return doc, got, src, into_tun, after, code

    doc, got, src, into_tun, after, code = run(main())
    assert src == ("127.0.0.1", opts.port)
    assert got[8] == 63 and got[12:] == out_tail(got)
    assert into_tun[8] == 63 and into_tun[12:16] == bytes([198, 19, 2, 5])
    assert doc["implementation"] == dataplane.IMPLEMENTATION and doc["dataplane"].startswith("loop")
    assert doc["iface"] == opts.tun and doc["mtu"] == 1472 and doc["backend"] == "udp"
    assert [p["subnet"] for p in doc["peers"]] == ["198.19.2.0/24"]
    assert doc["routes"] == [{"subnet": "198.19.2.0/24",
                              "via": f"127.0.0.2:{peer_sock.getsockname()[1]}"}]
    assert after["counters"]["tx_packets"] == 1 and after["counters"]["rx_packets"] == 1
    assert after["peers"][0]["tx_packets"] == 1 and after["peers"][0]["rx_packets"] == 1
    assert code == 0
    # everything released: TUN closed, socket closed, control socket gone
    assert d.tun is None and d.sock is None
    with pytest.raises(ControlError):
        query_status(opts.tun, 1.0)
    d.close()                                     # idempotent


def out_tail(pkt: bytes) -> bytes:
    """The forwarded packet from byte 12 on: addresses and payload unchanged."""
    return bytes([198, 19, 1, 1, 198, 19, 2, 5]) + pkt[20:]


def test_stop_before_serve_returns_at_once(loop, peer_sock):
    d = LoopbackDaemon(_opts(peer_sock.getsockname()[1]))
    d.setup()
    d.stop()
    assert run(d.serve(), timeout=5) == 0
    assert d.tun is None


def test_failed_setup_releases_what_it_made(peer_sock):
    class Broken(LoopbackDaemon):
        def create_tun(self, *a, **kw):
            raise OSError("no TUN here")

    d = Broken(_opts(peer_sock.getsockname()[1]))
    with pytest.raises(OSError, match="no TUN here"):
        d.setup()
    assert d.sock is None and d.tun is None and d.engine is None


def _status(iface: str):
    try:
        return query_status(iface, 1.0)
    except ControlError:
        return None


def test_keepalives_both_ways_counted_never_written_and_liveness_in_status(loop, peer_sock):
    """--keepalive 1: the daemon sends 1-byte datagrams to its silent peer;
    one from the peer is counted as rx_keepalive and not written to the TUN."""
    opts = dataclasses.replace(_opts(peer_sock.getsockname()[1]), keepalive=1)
    d = LoopbackDaemon(opts)
    d.setup()
    d.kernel_side.settimeout(0.3)

    async def main():
        served = asyncio.create_task(d.serve())
        got, src = await asyncio.to_thread(peer_sock.recvfrom, 2048)
        peer_sock.sendto(b"\0", ("127.0.0.1", opts.port))
        await wait_until(lambda: d.engine.counters()["rx_keepalive"] == 1, 5, "rx_keepalive")
        written = await asyncio.to_thread(_recv_or_none, d.kernel_side)
        doc = d.status()
        d.stop()
        await asyncio.wait_for(served, 5)
        return got, src, written, doc

    got, src, written, doc = run(main())
    assert got == b"\0" and src == ("127.0.0.1", opts.port) and written is None
    assert doc["counters"]["tx_keepalive"] >= 1 and doc["counters"]["rx_keepalive"] == 1
    (peer,) = doc["peers"]
    assert peer["keepalive"] == 1 and peer["tx_keepalive"] >= 1 and peer["last_tx"] is not None
    assert peer["host"] is None and peer["state"] in ("never", "active")


def _recv_or_none(s: socket.socket):
    try:
        return s.recv(65536)
    except (socket.timeout, BlockingIOError):
        return None


def test_wildcard_bind_and_peer_details_joined_into_status(peer_sock):
    opts = dataclasses.replace(_opts(peer_sock.getsockname()[1]), bind_any=True)
    d = LoopbackDaemon(opts)
    d.setup()
    try:
        assert d.sock.getsockname()[0] == "0.0.0.0"
        d.peer_details.append(lambda: {"198.19.2.0/24": {"origin": "peers.toml:3"},
                                       "198.19.9.0/24": {"origin": "elsewhere"}})
        d.peer_details.append(lambda: 1 / 0)          # a broken source: status still answers
        doc = d.status()
    finally:
        d.close()
    assert doc["bind_ip"] == "0.0.0.0" and doc["underlay_ip"] == "127.0.0.1"
    (peer,) = doc["peers"]
    assert (peer["origin"], peer["state"], peer["last_rx"]) == ("peers.toml:3", "never", None)
    assert doc["counters"]["tx_keepalive"] == 0


def test_address_changes_followed_when_bound_to_any_else_one_error(peer_sock, caplog):
    d = LoopbackDaemon(dataclasses.replace(_opts(peer_sock.getsockname()[1]), bind_any=True))
    d.setup()
    try:
        d.address.current = "127.0.0.9"     # as if we had another address before
        with caplog.at_level(logging.INFO, logger="udpoverlay"):
            d.check_address()
        assert d.address.current == "127.0.0.1" and "underlay address changed" in caplog.text
    finally:
        d.close()
    for cluster in (False, True):
        gone = Options(public_ip=ipaddress.IPv4Address("198.18.0.99"),
                       endpoints=("http://127.0.0.1:2379",) if cluster else ())
        d = Daemon(gone)                    # bound to an address this host does not hold
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="udpoverlay"):
            for _ in range(3):
                d.check_address()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "198.18.0.99 is gone" in errors[0] and "restart" in errors[0]
        assert ("lease still advertises" in errors[0]) == cluster
        assert d.address.gone and d.status()["underlay_address_gone"]


def test_sighups_during_a_reload_make_exactly_one_more_run(loop, peer_sock):
    d = LoopbackDaemon(_opts(peer_sock.getsockname()[1]))
    runs = []

    async def slow():
        runs.append(len(runs))
        await asyncio.sleep(0.05)

    async def broken():
        raise RuntimeError("bad reloader")

    d.reloaders += [broken, slow]

    async def main():
        for _ in range(3):
            d.reload()
        await asyncio.sleep(0.01)
        d.reload()
        d.reload()
        await d.reloads.task
        await d.reloads.task
    run(main())
    assert runs == [0, 1]


@pytest.mark.parametrize("udp_offload", [True, False])
def test_plain_tun_keeps_the_underlay_batching_unless_told(peer_sock, udp_offload):
    """--no-offload (a plain TUN, here the socketpair) leaves UDP GSO/GRO on
    the underlay socket; --no-udp-offload turns them off. status and the
    start-up log line say which, truthfully."""
    opts = dataclasses.replace(_opts(peer_sock.getsockname()[1]), udp_offload=udp_offload)
    d = LoopbackDaemon(opts)
    try:
        d.setup()
        off = d.offload_status()
        assert d.sock is not None
        gro = d.sock.getsockopt(socket.SOL_UDP, 104)         # UDP_GRO, as the kernel has it
    finally:
        d.close()
    assert (off["enabled"], off["tun"], off["udp_offload"]) == (False, [], udp_offload)
    assert off["udp_gso"] is off["udp_gro"] is udp_offload and bool(gro) is udp_offload
    text = offload_text(off)
    assert text.startswith("TUN offloads off (--no-offload): one packet per TUN read and write")
    assert text.endswith("underlay UDP GSO on, GRO on" if udp_offload
                         else "underlay UDP GSO/GRO off (--no-udp-offload): one datagram per send")


def test_offload_text_names_each_side():
    on = {"enabled": True, "tun": ["csum", "tso4"], "udp_offload": True, "udp_gso": False,
          "udp_gro": True, "vnet_hdr_refused": False}
    assert offload_text(on) == "tun csum,tso4; underlay UDP GSO off, GRO on"
    refused = dict(on, enabled=False, tun=[], vnet_hdr_refused=True, udp_gso=True)
    assert offload_text(refused).startswith("TUN offloads off (the kernel refused IFF_VNET_HDR)")
    assert offload_text(dict(on, tun=[])).startswith("tun none (kernel refused TUNSETOFFLOAD)")
