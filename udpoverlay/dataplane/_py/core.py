"""The reference twin of the data plane's core: pure Python, the readable
statement of what the compiled twin (udpoverlay.dataplane._c, built from
_fastpath/) must do byte for byte. Assembled here (as core.pyx assembles the compiled
twin) from its parts, which mirror the compiled twin's file for file:

    checksum.py   RFC 1071 checksums             (_fastpath/checksum.pxi)
    routes.py     the peer/route table           (_fastpath/routes.pxi)
    frames.py     IPv4 check, flow hash, VXLAN header, ARP body (frames.pxi)
    offload.py    TSO/USO split, GSO packing, GRO coalescing (offload.pxi)
    outgoing.py   TUN -> wire                    (_fastpath/outgoing.pxi)
    incoming.py   wire -> TUN                    (_fastpath/incoming.pxi)
    testing.py    test-only entry points         (_fastpath/testing.pxi)

The differential tests (tests/differential) prove the twins identical; a
change to one lands in the other in the same commit. The core never raises
or logs per packet: each packet gets a verdict, which is counted. Buffers
passed in are borrowed for the call only.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from udpoverlay.dataplane._py import testing
from udpoverlay.dataplane._py.frames import BROADCAST, arp_body, vxlan_hdr
from udpoverlay.dataplane._py.incoming import Incoming
from udpoverlay.dataplane._py.offload import Coalescer
from udpoverlay.dataplane._py.outgoing import Outgoing, socket_for
from udpoverlay.dataplane._py.routes import Table, mask, unpack_specs
from udpoverlay.dataplane.wire import IO_MODES, MAX_QUEUES, MAX_ROUNDS, MAX_TX_FDS, MODE_UDP, N_VERDICTS

__all__ = ["IMPLEMENTATION", "Core", "testing"]

IMPLEMENTATION = "python"


class Core(Outgoing, Incoming):
    """Route table + per-packet logic + batched I/O (reference twin).

    Core(mode, tun_addr, local_net, local_len, vni, vtep_mac, local_port):
    ints and bytes only; the facade (dataplane.engine.Engine) validated
    them."""

    def __init__(self, mode: int, tun_addr: int, local_net: int, local_len: int,
                 vni: int, vtep_mac: bytes, local_port: int) -> None:
        self.mode = mode
        self.tun_addr = tun_addr
        self.local_net = local_net
        self._local_mask = mask(local_len)
        self.vni = vni
        self.vtep_mac = bytes(vtep_mac)
        self.local_port = local_port
        self._t = Table()
        # TX counters: packets, bytes, icmp_sent, super_packets, gso_messages; per verdict
        self._tx_c = [0, 0, 0, 0, 0]
        self._tx_v = [0] * N_VERDICTS
        # RX counters: packets, bytes; per verdict (merges: the coalescer's)
        self._rx_c = [0, 0, 0, 0]   # packets, bytes, csum_partial, mac_changed
        self._rx_v = [0] * N_VERDICTS
        self._socks: dict[int, socket.socket] = {}
        self._tx_fds: list[int] = []
        self.vnet_hdr = False
        self.tun_uso = False
        self._gso = False
        self.udp_gro = False
        self._co = Coalescer(udp=False, trusted=mode == MODE_UDP)
        self._closed = False

    # -- TUN I/O -------------------------------------------------------------
    io_mode = "epoll"   # this twin reads with os.read only: it has no io_uring ring
    io_batches = 0
    io_note = ""

    def set_io(self, mode: str) -> str:
        """The compiled twin's set_io: "auto" and "epoll" give "epoll";
        "io_uring" raises OSError."""
        if mode not in IO_MODES:
            raise ValueError(f"unknown I/O mode {mode!r}; known: {', '.join(IO_MODES)}")
        if mode == "io_uring":
            raise OSError(errno.ENOSYS,
                          "io_uring unavailable: the pure-Python data plane has no ring")
        return self.io_mode

    # -- devices ------------------------------------------------------------
    def set_tx_fds(self, fds) -> None:
        """vxlan: send through these sockets, chosen per inner flow by
        flow_hash; empty = the main socket only."""
        self._tx_fds = list(fds)[:MAX_TX_FDS]

    def set_offload(self, vnet_hdr: bool, udp_gso: bool, tun_uso: bool,
                    udp_gro: bool = False) -> None:
        """Declare what the devices were set up with, before any I/O: the
        TUN carries a virtio_net_hdr; the socket takes UDP_SEGMENT (also
        for a plain TUN: its packets are packed alike); the TUN takes UDP
        GSO writes (needs the vnet header); the socket has UDP_GRO (a plain
        TUN's receive path then splits GRO buffers; with the vnet header
        they are always looked for)."""
        self.vnet_hdr = bool(vnet_hdr)
        self._gso = bool(udp_gso)
        self.tun_uso = bool(vnet_hdr and tun_uso)
        self.udp_gro = bool(vnet_hdr or udp_gro)
        self._co.udp = self.tun_uso

    def set_tun_mtu(self, mtu: int) -> None:
        """The TUN's MTU (0: unknown): longer accepted inner TCP packets are
        resegmented (offload.oversize_gso)."""
        self._co.mtu = int(mtu)

    @property
    def udp_gso(self) -> bool:
        """UDP_SEGMENT in use (turned off for good if the kernel refuses it)."""
        return self._gso

    def _sock(self, fd: int) -> socket.socket:
        return socket_for(self._socks, fd)

    # -- the table -------------------------------------------------------------
    def set_peers(self, specs) -> None:
        """Replace the table with [(ip, port, net, length, mac or None)] in
        one assignment; counters of kept peers stay. A spec's MAC is
        configured (never learned over); None: learned by ARP."""
        self._t = Table(specs, self._t)

    def set_peers_packed(self, buf: bytes) -> None:
        """set_peers() from packed records (wire.PEER_SPEC_FORMAT), the
        facade's cheap form."""
        self._t = Table(unpack_specs(bytes(buf)), self._t)

    def lookup(self, addr: int) -> int:
        """Longest-prefix match: peer index or -1."""
        return self._t.lookup(addr)

    def counts(self) -> tuple:
        """(scalars in wire.SCALAR_COUNTERS order, TX verdict counts, RX
        verdict counts): a raw snapshot the facade names."""
        tx, rx = self._tx_c, self._rx_c
        return ((tx[0], tx[1], rx[0], rx[1], tx[2], tx[3], self._co.merged, self._co.csum_bad,
                 rx[2], rx[3], self._co.resegmented, tx[4]),
                tuple(self._tx_v), tuple(self._rx_v))

    def peer_stats(self) -> list[tuple]:
        """Per peer, in table order: (tx_packets, tx_bytes, rx_packets,
        rx_bytes, VTEP MAC or None, rx_keepalive)."""
        return [(*p[5][:4], p[4], p[5][4]) for p in self._t.peers]

    def arp_request(self, idx: int) -> bytes:
        """VXLAN datagram asking peer idx for the MAC of its VTEP address."""
        if not 0 <= idx < len(self._t.peers):
            raise IndexError(idx)
        return (vxlan_hdr(self.vni, self.vtep_mac, BROADCAST, b"\x08\x06")
                + arp_body(self.vtep_mac, self.tun_addr, 1, None, self._t.peers[idx][2]))

    # -- worker threads ----------------------------------------------------------
    # The reference keeps the GIL (no parallelism), but runs the same thread
    # bodies; tables are garbage collected, so retiring one is free.
    threaded = False
    _stopping = False

    def set_threaded(self, on: bool) -> None:
        """Declare that run_tx/run_rx threads are about to run (True) or have
        been joined (False); route tables are then freed only when safe."""
        self.threaded = bool(on)
        self._stopping = False

    def reclaim(self) -> int:
        """Free retired tables no worker can still hold; how many are left."""
        return 0

    busy_poll = 0       # µs (set_busy_poll)

    def set_busy_poll(self, usec: int) -> None:
        """Look again for up to usec µs before sleeping: workers at their
        input (adaptive), serve() at both sides; 0 = never (the default).
        Costs CPU while traffic flows."""
        if not 0 <= usec <= 100000:
            raise ValueError(f"busy poll {usec} µs: 0 to 100000")
        self.busy_poll = int(usec)

    def stop_workers(self) -> None:
        """Make run_tx/run_rx return (within 100 ms; at once if the stop fd
        they poll becomes readable)."""
        self._stopping = True

    def run_tx(self, tun_fd: int, sock_fd: int, stop_fd: int, queue: int = 0) -> None:
        """Worker thread body: TUN -> wire until stop_workers()."""
        if queue != 0:
            raise IndexError(f"queue {queue} of 1")
        self._worker(tun_fd, stop_fd, lambda: self.tun_to_udp(tun_fd, sock_fd))

    def run_rx(self, sock_fd: int, tun_fd: int, stop_fd: int, queue: int = 0) -> None:
        """Worker thread body: wire -> TUN until stop_workers()."""
        if queue != 0:
            raise IndexError(f"queue {queue} of 1")
        self._worker(sock_fd, stop_fd, lambda: self.udp_to_tun(sock_fd, tun_fd))

    # -- queues: the reference runs one (its workers would share the GIL) --------
    queues = 1

    def set_queues(self, n: int) -> None:
        """The compiled twin's set_queues: only 1 here; more raises OSError."""
        if not 1 <= n <= MAX_QUEUES:
            raise ValueError(f"{n} queues: 1 to {MAX_QUEUES}")
        if n > 1:
            raise OSError(errno.EOPNOTSUPP, "the pure-Python data plane runs one queue")

    def queue_counts(self) -> list[tuple]:
        """Per queue: (tx packets, tx bytes, rx packets, rx bytes)."""
        return [(self._tx_c[0], self._tx_c[1], self._rx_c[0], self._rx_c[1])]

    def serve(self, tun_fd: int, sock_fd: int, from_rx: bool) -> int:
        """The compiled twin's serve(): drain the ready side, then both
        sides as they become ready within busy_poll µs (at most MAX_ROUNDS
        more drains)."""
        done = self.udp_to_tun(sock_fd, tun_fd) if from_rx else self.tun_to_udp(tun_fd, sock_fd)
        if self.busy_poll <= 0 or done <= 0:
            return done
        end, rounds = time.monotonic() + self.busy_poll / 1e6, 0
        while rounds < MAX_ROUNDS and time.monotonic() < end:
            ready = select.select([tun_fd, sock_fd], [], [], 0)[0]
            if not ready:
                os.sched_yield()    # as the compiled twin: others runnable go first
                continue
            if sock_fd in ready:
                done += self.udp_to_tun(sock_fd, tun_fd)
            if tun_fd in ready:
                done += self.tun_to_udp(tun_fd, sock_fd)
            rounds += 1
            end = time.monotonic() + self.busy_poll / 1e6
        return done

    def _worker(self, in_fd: int, stop_fd: int, drain) -> None:
        spin = self.busy_poll
        while not self._stopping and not self._closed:
            ready, _, _ = select.select([in_fd, stop_fd], [], [], 0.1)
            if self._stopping or stop_fd in ready:
                return
            if in_fd in ready and drain() and self.busy_poll:
                spin = self._busy_wait(in_fd, spin)

    def _busy_wait(self, in_fd: int, spin: int) -> int:
        """The compiled twin's busy_wait: look at in_fd without sleeping for
        up to spin µs; the next spin (adaptive: halved after a miss, down to
        busy_poll / 8, restored after a hit)."""
        end = time.monotonic() + spin / 1e6
        while not self._stopping and time.monotonic() < end:
            if select.select([in_fd], [], [], 0)[0]:
                return self.busy_poll
            os.sched_yield()
        return max(spin // 2, self.busy_poll // 8 if self.busy_poll >= 8 else 1)

    def close(self) -> None:
        """Close the dup'ed sockets; idempotent. I/O calls afterwards do
        nothing; counters and peers stay readable."""
        if self.threaded:
            return      # workers still declared running: as the compiled twin
        self._closed = True
        for s in self._socks.values():
            s.close()
        self._socks.clear()
