"""The WireGuard plane's batch path: WgIo (dataplane/wgio.py) does the
per-packet work (reads, TSO split, seal, UDP GSO send; GRO receive, open,
inner checks, coalesced TUN writes) a batch at a time; here the engine
decides once per run of packets (one destination, or one source and
receiver index) and the plane's counters are kept.

Why per run: a TCP stream's 64 KB super-packet is ~45 segments for one
peer and keypair, a GRO buffer ~45 datagrams from one peer on one keypair;
one reserve() of 45 counters and one seal_send() replace 45 engine calls
and 45 sendto()s, which is where the one-packet path spent its time.

The protocol stays the engine's, with the same results as one packet at a
time:
- out: reserve() claims the counters and does send()'s bookkeeping, or
  refuses (no session yet, packets already waiting, spent keypair): then
  each packet goes through engine.send(), which queues it behind the
  handshake; nothing is ever sent in plain text;
- in: data_keypair() refuses a whole run (unknown index, expired keypair);
  each datagram is opened, then the keypair's replay window takes its
  counter (after authentication, as in _receive_data); received() does the
  once-per-run bookkeeping (roaming, timers, keypair confirmation);
  cryptokey routing (inner source in the peer's allowed IPs) and our own
  subnet as destination are checked per packet by WgIo.accept();
- every verdict lands in the same engine and plane counters.
"""

from __future__ import annotations

from udpoverlay.dataplane.wgio import KIND_TRANSPORT, OPEN_BAD_TAG
from udpoverlay.wgplane.plane import Datagram, WgPlane
from udpoverlay.wireguard.constants import REJECT_AFTER_MESSAGES

__all__ = ["Batches"]

_NOWHERE = (0xFFFFFFFF, 0xFFFFFFFF)     # a local subnet no packet is in


class Batches:
    """One plane's batch path over its WgIo (`io`)."""

    def __init__(self, plane: WgPlane, io) -> None:
        self.plane, self.io = plane, io

    # -- TUN -> wire ------------------------------------------------------------
    def from_tun(self, tun_fd: int, sock_fd: int, now: float) -> list[Datagram]:
        """One read_tun() round, sealed and sent; what the engine wants sent
        besides (handshakes)."""
        plane, io, engine = self.plane, self.io, self.plane.engine
        out: list[Datagram] = []
        for dst, first, count, nbytes in io.read_tun(tun_fd):
            route = plane.route_to(dst)
            if route is None:
                plane.tx_no_route += count
                continue
            route.tx_packets += count
            route.tx_bytes += nbytes
            plane.tx_packets += count
            plane.tx_bytes += nbytes
            wg = route.wg
            got = engine.reserve(wg, count, now)
            if got is None:     # the engine queues them behind a handshake
                for i in range(first, first + count):
                    out += engine.send(wg, io.packet(i), now)
                continue
            kp, counter = got
            wire = io.seal_send(first, count, kp.send.wgkey, kp.remote_index, counter,
                                engine.mtu, sock_fd, wg.endpoint)
            out += engine.sent(wg, kp, wire, now)
        return out

    # -- wire -> TUN ------------------------------------------------------------
    def from_wire(self, sock_fd: int, tun_fd: int, now: float) -> list[Datagram]:
        """One recv() round, opened and written; the datagrams to send
        (handshake answers, packets that waited for a session)."""
        plane, io = self.plane, self.io
        out: list[Datagram] = []
        for kind, first, count, addr, receiver in io.recv(sock_fd):
            if kind == KIND_TRANSPORT:
                out += self._transport(first, count, addr, receiver, now)
                continue
            # handshakes and what is not WireGuard at all: one at a time (never
            # a packet for the TUN: only transport datagrams carry those)
            _packet, more = plane.incoming(io.datagram(first), addr, now)
            out += more
        io.write_tun(tun_fd)
        return out

    def _transport(self, first: int, count: int, addr: tuple, receiver: int,
                   now: float) -> list[Datagram]:
        plane, io, engine = self.plane, self.io, self.plane.engine
        why, peer, kp = engine.data_keypair(receiver, now)
        if why or peer is None or kp is None:
            engine.count(why, count)
            return []
        bad = malformed = replayed = 0
        window = kp.replay
        counters = io.open(first, count, kp.recv.wgkey)
        # the usual run: every datagram authentic, in order, all new
        c0 = counters[0]
        if c0 >= 0 and counters == list(range(c0, c0 + count)) \
                and window.accept_run(c0, count, REJECT_AFTER_MESSAGES):
            counters = []
        for j, counter in enumerate(counters):
            if counter < 0:
                if counter == OPEN_BAD_TAG:
                    bad += 1
                else:
                    malformed += 1
            elif not window.accept(counter, REJECT_AFTER_MESSAGES):
                io.drop(first + j)
                replayed += 1
        route = plane.route_of(peer)
        local = plane.local if route is not None else _NOWHERE
        data, data_bytes, keepalive, bad_inner, wrong, not_local, wire, nonempty = \
            io.accept(first, count, peer.allowed_v4, *local)
        for verdict, n in (("bad_auth", bad), ("malformed", malformed), ("replay", replayed),
                           ("keepalive", keepalive), ("malformed_inner", bad_inner),
                           ("wrong_inner_source", wrong), ("data", data + not_local)):
            if n:
                engine.count(verdict, n)
        plane.rx_not_local += not_local
        if route is not None:
            route.rx_packets += data
            route.rx_bytes += data_bytes
            route.rx_keepalive += keepalive
        plane.rx_packets += data
        plane.rx_bytes += data_bytes
        if not wire:
            return []
        return engine.received(peer, kp, addr, now, wire, nonempty)
