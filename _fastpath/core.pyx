# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled twin of the data plane's core (udpoverlay.dataplane._c),
assembled here from its parts, which mirror the reference twin's modules in
udpoverlay/dataplane/_py file for file:

    wire.pxd      constants as C enums (values: udpoverlay/dataplane/wire.py)
    syscalls.pxi  C declarations (no mirror)
    checksum.pxi  RFC 1071 checksums
    routes.pxi    the peer/route table, longest-prefix match
    frames.pxi    IPv4 check, flow hash, VXLAN header, ARP body
    offload.pxi   TSO/USO split, UDP GSO packing, GRO coalescing
    outgoing.pxi  TUN -> wire (tx_t)
    incoming.pxi  wire -> TUN (rx_t)
    testing.pxi   test-only entry points, nothing else calls them

Same int-based API, verdicts, counters and bytes as the reference; the
differential tests (tests/differential) prove it. A change to one lands in
the other in the same commit.

Design notes:
- The per-packet code works on borrowed C buffers and returns a verdict; it
  never raises, allocates or logs. Drops are counted. The loops run with
  the GIL released.
- State is split by owner: cfg_t (set up by the control plane, read by
  both directions), tx_t and rx_t (scratch and counters of one direction
  each), so run_tx and run_rx can run on two threads without locks.
- The route table is rebuilt off to the side by set_peers() and swapped in
  by pointer assignment; every packet reads the pointer once. With worker
  threads running, the old table is freed only after both workers passed a
  point where they hold no table (reclaim()).
- TUN reads leave VXLAN_HDR bytes of headroom so the outer headers are
  written in place, without a copy.
- TUN reads may go through io_uring (set_io, uring.h): a round's reads in
  one kernel entry, into the same slots; the reference twin always uses
  os.read (it has no ring), and the differential tests compare the two.
- Busy polling (set_busy_poll, opt-in) only changes when drains run
  (serve_c, busy_wait), never what they do to a packet.
"""

from libc.stdlib cimport malloc, calloc, free, qsort
from libc.string cimport memcmp, memcpy, memset
from libc.errno cimport errno, EAGAIN, EINTR, EIO, EINVAL, EOPNOTSUPP

from wire cimport *

include "syscalls.pxi"
include "checksum.pxi"
include "routes.pxi"


cdef struct cfg_t:
    # Set by the control plane before I/O (the table: swapped any time);
    # both directions read it.
    int mode
    int room                    # outer header bytes in front of a packet
    uint32_t tun_addr
    uint32_t local_net
    uint32_t local_mask
    uint32_t vni
    uint8_t mac[6]
    table_t *table
    int tx_fds[MAX_TX_FDS]
    int n_tx
    int vnet_hdr
    int udp_gro                 # received datagrams may be GRO buffers (a UDP_GRO cmsg)
    # worker threads: stop flag, and quiescent-state counters bumped with a
    # full barrier whenever a worker holds no table (see Core.reclaim)
    int stopping
    uint64_t q_tx, q_rx
    int busy_us                 # workers: look again this long before sleeping (0: never)


include "frames.pxi"
include "offload.pxi"
include "outgoing.pxi"
include "incoming.pxi"

IMPLEMENTATION = "cython"
from udpoverlay.dataplane.wire import IO_MODES   # the one list, shared with the reference

import struct as _struct
_SPEC = _struct.Struct("=IIHBB6s")     # wire.PEER_SPEC_FORMAT


cdef inline void quiesce(cfg_t *c, bint is_rx) noexcept nogil:
    uo_barrier()
    if is_rx:
        c.q_rx += 1
    else:
        c.q_tx += 1
    uo_barrier()


cdef void busy_wait(cfg_t *c, pollfd *p, int *spin) noexcept nogil:
    """Opt-in busy poll (set_busy_poll): after a drain that did work, look
    at the input without sleeping for up to spin[0] µs, so a packet that
    comes soon (the answer in a ping-pong) costs no wakeup. Adaptive: a look
    that found nothing halves the next one (down to busy_us / 8), one that
    found something restores busy_us."""
    cdef uint64_t end = uo_now_ns() + <uint64_t>spin[0] * 1000
    while not c.stopping and uo_now_ns() < end:
        p[0].revents = 0
        if poll(p, 1, 0) > 0:
            spin[0] = c.busy_us
            return
    spin[0] = spin[0] // 2
    if spin[0] < c.busy_us // 8 or spin[0] < 1:
        spin[0] = c.busy_us // 8 if c.busy_us >= 8 else 1


cdef int serve_c(cfg_t *c, tx_t *tx, rx_t *rx, int tun_fd, int sock_fd,
                 bint from_rx) noexcept nogil:
    """Loop mode with busy poll: drain the direction that woke the loop,
    then look at BOTH fds without sleeping for up to busy_us µs, draining
    whichever becomes ready (in a ping-pong: the answer to what was just
    delivered) with no loop wakeup; each drain opens a new window, at most
    MAX_ROUNDS of them, so the event loop is never held for long. The
    number of packets."""
    cdef pollfd p[2]
    cdef int done, k, rounds = 0
    cdef uint64_t end
    done = udp_to_tun_c(c, rx, sock_fd, tun_fd) if from_rx else tun_to_udp_c(c, tx, tun_fd, sock_fd)
    if c.busy_us <= 0 or done <= 0:
        return done
    p[0].fd = tun_fd
    p[0].events = POLLIN
    p[1].fd = sock_fd
    p[1].events = POLLIN
    end = uo_now_ns() + <uint64_t>c.busy_us * 1000
    while rounds < MAX_ROUNDS and uo_now_ns() < end:
        p[0].revents = 0
        p[1].revents = 0
        if poll(p, 2, 0) <= 0:
            continue
        k = 0
        if p[1].revents:
            k += udp_to_tun_c(c, rx, sock_fd, tun_fd)
        if p[0].revents:
            k += tun_to_udp_c(c, tx, tun_fd, sock_fd)
        done += k
        rounds += 1
        end = uo_now_ns() + <uint64_t>c.busy_us * 1000
    return done


cdef void worker(cfg_t *c, tx_t *tx, rx_t *rx, bint is_rx, int in_fd, int out_fd,
                 int stop_fd) noexcept nogil:
    """A worker thread's loop: poll the input and the stop fd, drain,
    (busy-poll if asked), repeat."""
    cdef pollfd p[2]
    cdef int n, got
    cdef int spin = c.busy_us
    p[0].fd = in_fd
    p[0].events = POLLIN
    p[1].fd = stop_fd
    p[1].events = POLLIN
    while True:
        quiesce(c, is_rx)
        if c.stopping:
            break
        p[0].revents = 0
        p[1].revents = 0
        n = poll(p, 2, 100)
        quiesce(c, is_rx)
        if c.stopping or p[1].revents:
            break
        if n <= 0 or not p[0].revents:
            continue
        if is_rx:
            got = udp_to_tun_c(c, rx, in_fd, out_fd)
        else:
            got = tun_to_udp_c(c, tx, in_fd, out_fd)
        if c.busy_us > 0 and got > 0:
            quiesce(c, is_rx)       # holds no table while it spins
            busy_wait(c, p, &spin)
    quiesce(c, is_rx)


cdef class Core:
    """Route table + per-packet logic + batched I/O (compiled twin).

    Core(mode, tun_addr, local_net, local_len, vni, vtep_mac, local_port):
    ints and bytes only; the facade (dataplane.engine.Engine) validated
    them."""

    cdef cfg_t cfg
    cdef tx_t tx
    cdef rx_t rx
    cdef list retired          # [(table address, q_tx, q_rx at retirement)]
    cdef readonly bint threaded
    cdef bint closed
    cdef readonly int local_port

    def __cinit__(self):
        self.retired = []
        self.cfg.table = <table_t *>calloc(1, sizeof(table_t))
        self.tx.slots = <uint8_t *>malloc(BATCH * STRIDE)
        self.rx.slots = <uint8_t *>malloc(BATCH * STRIDE)
        if self.cfg.table == NULL or self.tx.slots == NULL or self.rx.slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free_table(self.cfg.table)
        for ptr, _, _ in self.retired or ():
            free_table(<table_t *><size_t>ptr)
        tx_free(&self.tx)
        rx_free(&self.rx)

    def __init__(self, int mode, uint32_t tun_addr, uint32_t local_net, int local_len,
                 uint32_t vni, vtep_mac, int local_port):
        if len(vtep_mac) != 6:      # the facade validates; this guards the memcpy
            raise ValueError("vtep mac must be 6 bytes")
        self.cfg.mode = mode
        self.cfg.room = VXLAN_HDR if mode == MODE_VXLAN else 0
        self.rx.co.trusted = mode == MODE_UDP     # see offload.py's Coalescer
        self.cfg.tun_addr = tun_addr
        self.cfg.local_net = local_net
        self.cfg.local_mask = mask_of(local_len)
        self.cfg.vni = vni
        memcpy(self.cfg.mac, <const char *>vtep_mac, 6)
        self.local_port = local_port

    # -- devices ------------------------------------------------------------
    def set_tx_fds(self, fds):
        """vxlan: send through these sockets, chosen per inner flow by
        flow_hash; empty = the main socket only."""
        cdef int i
        fds = list(fds)[:MAX_TX_FDS]
        for i in range(len(fds)):
            self.cfg.tx_fds[i] = fds[i]
        self.cfg.n_tx = len(fds)

    def set_offload(self, bint vnet_hdr, bint udp_gso, bint tun_uso, bint udp_gro=False):
        """Declare what the devices were set up with, before any I/O: the
        TUN carries a virtio_net_hdr; the socket takes UDP_SEGMENT (also
        for a plain TUN: its packets are packed alike); the TUN takes UDP
        GSO writes (needs the vnet header); the socket has UDP_GRO (a plain
        TUN's receive path then splits GRO buffers; with the vnet header
        they are always looked for)."""
        if vnet_hdr:
            if self.rx.co.items == NULL:
                self.rx.co.items = <coitem_t *>malloc(MAX_ITEMS * sizeof(coitem_t))
            if self.rx.co.items == NULL:
                raise MemoryError()
        if (vnet_hdr or udp_gso) and tx_alloc_offload(&self.tx, vnet_hdr) < 0:
            raise MemoryError()
        self.cfg.vnet_hdr = vnet_hdr
        self.cfg.udp_gro = vnet_hdr or udp_gro
        self.tx.b.gso = udp_gso
        self.rx.co.udp = vnet_hdr and tun_uso

    def set_tun_mtu(self, int mtu):
        """The TUN's MTU (0: unknown): longer accepted inner TCP packets are
        resegmented (oversize_gso in offload.pxi)."""
        if mtu and self.rx.split == NULL:
            self.rx.split = <uint8_t *>malloc(SPLIT_BUF)
            if self.rx.split == NULL:
                raise MemoryError()
        self.rx.co.mtu = mtu

    @property
    def vnet_hdr(self):
        return bool(self.cfg.vnet_hdr)

    @property
    def udp_gso(self):
        """UDP_SEGMENT in use (turned off for good if the kernel refuses it)."""
        return bool(self.tx.b.gso)

    @property
    def tun_uso(self):
        return bool(self.rx.co.udp)

    @property
    def udp_gro(self):
        """Received datagrams are split at their UDP_GRO segment size."""
        return bool(self.cfg.udp_gro)

    # -- TUN I/O: io_uring or read() -------------------------------------------
    def set_io(self, str mode):
        """How TUN reads are made, before any I/O: "io_uring" (a round's
        reads in one kernel entry; OSError if this kernel, its seccomp
        filter or this build cannot), "epoll" (one read() each) or "auto",
        which is epoll: on kernel 6.18 a batched io_uring read measured
        about 35 % dearer than read() (issue 14's closing note). The mode
        in effect."""
        cdef int rc
        if mode not in IO_MODES:
            raise ValueError(f"unknown I/O mode {mode!r}; known: {', '.join(IO_MODES)}")
        uo_ring_close(self.tx.ring)
        self.tx.ring = NULL
        self.tx.ring_err = 0
        if mode != "io_uring" or self.closed:
            return self.io_mode
        rc = uo_ring_open(&self.tx.ring)
        if rc < 0:
            reason = ("built without liburing" if not UO_URING_BUILT
                      else f"io_uring_setup: {strerror(-rc).decode()}")
            raise OSError(-rc, f"io_uring unavailable: {reason}")
        self.tx.want = BATCH
        return self.io_mode

    @property
    def io_mode(self):
        """"io_uring" or "epoll" (also after a ring failed at run time)."""
        return "io_uring" if self.tx.ring != NULL else "epoll"

    @property
    def io_batches(self):
        """TUN read batches submitted through io_uring so far."""
        return self.tx.ring_batches

    @property
    def io_note(self):
        """Why TUN reads left io_uring at run time ("" if they did not)."""
        if self.tx.ring_err:
            return f"io_uring failed, back to read(): {strerror(self.tx.ring_err).decode()}"
        return ""

    # -- the table ------------------------------------------------------------
    def set_peers(self, specs):
        """Replace the table with [(ip, port, net, length, mac or None)] in
        one pointer swap; counters of kept peers stay. A spec's MAC is
        configured (never learned over); None: learned by ARP."""
        recs = []
        for ip, port, net, length, mac in specs:
            if mac is not None and len(mac) != 6:
                raise ValueError("vtep mac must be 6 bytes")
            if not 0 <= length <= 32:
                raise ValueError(f"bad prefix length {length}")
            recs.append(_SPEC.pack(ip, net, port, length, mac is not None, mac or bytes(6)))
        self.set_peers_packed(b"".join(recs))

    def set_peers_packed(self, const uint8_t[::1] buf):
        """set_peers() from packed records (wire.PEER_SPEC_FORMAT), the
        facade's cheap form."""
        cdef table_t *old = self.cfg.table
        if buf.shape[0] % PEER_SPEC_LEN:
            raise ValueError("peer table: not a whole number of records")
        self.cfg.table = build_table(&buf[0] if buf.shape[0] else NULL,
                                     <int>(buf.shape[0] // PEER_SPEC_LEN), old)   # the swap
        self.retire(old)

    cdef void retire(self, table_t *t):
        """Free a table nobody can use any more: at once without workers, else
        once both workers passed a quiescent point after the swap."""
        if not self.threaded:
            free_table(t)
            return
        uo_barrier()
        self.retired.append((<size_t>t, self.cfg.q_tx, self.cfg.q_rx))
        self.reclaim()

    def reclaim(self):
        """Free retired tables no worker can still hold; how many are left."""
        keep = []
        uo_barrier()
        for ptr, qtx, qrx in self.retired:
            if not self.threaded or (self.cfg.q_tx != qtx and self.cfg.q_rx != qrx):
                free_table(<table_t *><size_t>ptr)
            else:
                keep.append((ptr, qtx, qrx))
        self.retired = keep
        return len(keep)

    def lookup(self, uint32_t addr):
        """Longest-prefix match: peer index or -1."""
        return lookup_in(self.cfg.table, addr)

    def counts(self):
        """(scalars in wire.SCALAR_COUNTERS order, TX verdict counts, RX
        verdict counts): a raw snapshot the facade names."""
        return ((self.tx.packets, self.tx.bytes, self.rx.packets, self.rx.bytes,
                 self.tx.icmp_sent, self.tx.super_packets, self.rx.co.merged,
                 self.rx.co.csum_bad, self.rx.csum_partial, self.rx.mac_changed,
                 self.rx.co.resegmented, self.tx.gso_messages),
                tuple(self.tx.verdicts), tuple(self.rx.verdicts))

    def peer_stats(self):
        """Per peer, in table order: (tx_packets, tx_bytes, rx_packets,
        rx_bytes, VTEP MAC or None, rx_keepalive)."""
        cdef int i
        cdef peer_t *p
        cdef table_t *t = self.cfg.table
        res = []
        for i in range(t.n_peers):
            p = &t.peers[i]
            res.append((p.st.tx_packets, p.st.tx_bytes, p.st.rx_packets, p.st.rx_bytes,
                        (<char *>p.mac)[:6] if p.has_mac else None, p.st.rx_keepalive))
        return res

    def arp_request(self, int idx):
        """VXLAN datagram asking peer idx for the MAC of its VTEP address."""
        cdef table_t *t = self.cfg.table
        cdef uint8_t buf[VXLAN_HDR + ARP_LEN]
        cdef uint8_t bcast[6]
        if not 0 <= idx < t.n_peers:
            raise IndexError(idx)
        memset(bcast, 0xFF, 6)
        vxlan_hdr(&self.cfg, buf, bcast, 0x0806)
        arp_body(&self.cfg, &buf[VXLAN_HDR], 1, NULL, t.peers[idx].net)
        return (<char *>buf)[:VXLAN_HDR + ARP_LEN]

    # -- I/O ----------------------------------------------------------------------
    def tun_to_udp(self, int tun_fd, int sock_fd):
        """Drain the TUN: read, route, encapsulate, send per batch."""
        cdef int done = 0
        if self.closed:
            return 0
        with nogil:
            done = tun_to_udp_c(&self.cfg, &self.tx, tun_fd, sock_fd)
        return done

    def udp_to_tun(self, int sock_fd, int tun_fd):
        """Drain the socket: receive, check the peer, decapsulate, write to TUN."""
        cdef int done = 0
        if self.closed:
            return 0
        with nogil:
            done = udp_to_tun_c(&self.cfg, &self.rx, sock_fd, tun_fd)
        return done

    def serve(self, int tun_fd, int sock_fd, bint from_rx):
        """The loop's callback with busy polling (set_busy_poll): drain the
        side that is ready, then both sides as they become ready within
        busy_us (serve_c). The number of packets."""
        cdef int done = 0
        if self.closed:
            return 0
        with nogil:
            done = serve_c(&self.cfg, &self.tx, &self.rx, tun_fd, sock_fd, from_rx)
        return done

    # -- worker threads ------------------------------------------------------------
    def set_threaded(self, bint on):
        """Declare that run_tx/run_rx threads are about to run (True) or have
        been joined (False); route tables are then freed only when safe."""
        self.threaded = on
        self.cfg.stopping = 0
        if not on:
            self.reclaim()

    def set_busy_poll(self, int usec):
        """Look again for up to usec µs before sleeping: workers at their
        input (adaptive), serve() at both sides; 0 = never (the default).
        Costs CPU while traffic flows."""
        if not 0 <= usec <= 100000:
            raise ValueError(f"busy poll {usec} µs: 0 to 100000")
        self.cfg.busy_us = usec

    @property
    def busy_poll(self):
        return self.cfg.busy_us

    def stop_workers(self):
        """Make run_tx/run_rx return (within 100 ms; at once if the stop fd
        they poll becomes readable)."""
        self.cfg.stopping = 1
        uo_barrier()

    def run_tx(self, int tun_fd, int sock_fd, int stop_fd):
        """Worker thread body, GIL released: TUN -> wire until stop_workers()."""
        if self.closed:
            return
        with nogil:
            worker(&self.cfg, &self.tx, &self.rx, False, tun_fd, sock_fd, stop_fd)

    def run_rx(self, int sock_fd, int tun_fd, int stop_fd):
        """Worker thread body, GIL released: wire -> TUN until stop_workers()."""
        if self.closed:
            return
        with nogil:
            worker(&self.cfg, &self.tx, &self.rx, True, sock_fd, tun_fd, stop_fd)

    def close(self):
        """Free the I/O buffers (about 30 MB with offloads); idempotent. I/O
        calls afterwards do nothing; counters and peers stay readable.
        With workers still declared running nothing is freed."""
        if self.closed or self.threaded:
            return
        self.closed = True
        tx_free(&self.tx)
        rx_free(&self.rx)
        self.reclaim()


include "testing.pxi"
