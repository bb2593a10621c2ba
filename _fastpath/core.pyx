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
    wgcrypto.pxi  WireGuard transport AEAD over batches (WgKey, libcrypto: wgevp.h)
    wgio.pxi      the WireGuard plane's batched I/O (WgIo: split, seal, GSO send;
                  GRO receive, open, check, coalesced TUN writes)
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
    # worker threads: stop flag, and quiescent-state counters (one per
    # queue and direction) bumped with a full barrier whenever a worker
    # holds no table (see Core.reclaim)
    int stopping
    int nq                      # queues (set_queues); queue 0 is the loop's
    uint64_t q_tx[MAX_QUEUES]
    uint64_t q_rx[MAX_QUEUES]
    int busy_us                 # workers: look again this long before sleeping (0: never)


include "frames.pxi"
include "offload.pxi"
include "outgoing.pxi"
include "incoming.pxi"
include "wgcrypto.pxi"
include "wgio.pxi"

IMPLEMENTATION = "cython"
from udpoverlay.dataplane.wire import IO_MODES, PEER_SPEC_FORMAT   # shared with the reference

import struct as _struct
_SPEC = _struct.Struct(PEER_SPEC_FORMAT)


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef inline void quiesce(cfg_t *c, bint is_rx, int q) noexcept nogil:
    uo_barrier()
    if is_rx:
        c.q_rx[q] += 1
    else:
        c.q_tx[q] += 1
    uo_barrier()


cdef void busy_wait(cfg_t *c, pollfd *p, int *spin) noexcept nogil:
    """Opt-in busy poll (set_busy_poll): after a drain that did work, look
    at the input without sleeping for up to spin[0] µs, so a packet that
    comes soon (the answer in a ping-pong) costs no wakeup. Adaptive: a look
    that found nothing halves the next one (down to busy_us / 8), one that
    found something restores busy_us. Each empty look yields the CPU: on
    shared cores a spinner that does not yield delays the very process
    whose answer it waits for (measured: RTT p99 ×2-4 worse without)."""
    cdef uint64_t end = uo_now_ns() + <uint64_t>spin[0] * 1000
    while not c.stopping and uo_now_ns() < end:
        p[0].revents = 0
        if poll(p, 1, 0) > 0:
            spin[0] = c.busy_us
            return
        sched_yield()       # a spinning daemon lets whatever else is runnable go first
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
            sched_yield()
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


cdef void worker(cfg_t *c, tx_t *tx, rx_t *rx, bint is_rx, int q, int in_fd, int out_fd,
                 int stop_fd) noexcept nogil:
    """A worker thread's loop (queue q, one direction): poll the input and
    the stop fd, drain, (busy-poll if asked), repeat."""
    cdef pollfd p[2]
    cdef int n, got
    cdef int spin = c.busy_us
    p[0].fd = in_fd
    p[0].events = POLLIN
    p[1].fd = stop_fd
    p[1].events = POLLIN
    while True:
        quiesce(c, is_rx, q)
        if c.stopping:
            break
        p[0].revents = 0
        p[1].revents = 0
        n = poll(p, 2, 100)
        quiesce(c, is_rx, q)
        if c.stopping or p[1].revents:
            break
        if n <= 0 or not p[0].revents:
            continue
        if is_rx:
            got = udp_to_tun_c(c, rx, in_fd, out_fd)
        else:
            got = tun_to_udp_c(c, tx, in_fd, out_fd)
        if c.busy_us > 0 and got > 0:
            quiesce(c, is_rx, q)       # holds no table while it spins
            busy_wait(c, p, &spin)
    quiesce(c, is_rx, q)


cdef class Core:
    """Route table + per-packet logic + batched I/O (compiled twin).

    Core(mode, tun_addr, local_net, local_len, vni, vtep_mac, local_port):
    ints and bytes only; the facade (dataplane.engine.Engine) validated
    them."""

    cdef cfg_t cfg
    cdef tx_t tx                # queue 0 (the event loop's, or the first workers')
    cdef rx_t rx
    cdef tx_t *txq[MAX_QUEUES]  # every queue's direction state; [0] = &tx
    cdef rx_t *rxq[MAX_QUEUES]
    cdef list retired          # [(table address, quiescent counters at retirement)]
    cdef readonly bint threaded
    cdef bint closed
    cdef readonly int local_port

    def __cinit__(self):
        self.retired = []
        self.cfg.nq = 1
        self.txq[0] = &self.tx
        self.rxq[0] = &self.rx
        self.cfg.table = <table_t *>calloc(1, sizeof(table_t))
        self.tx.slots = <uint8_t *>malloc(BATCH * STRIDE)
        self.rx.slots = <uint8_t *>malloc(BATCH * STRIDE)
        if self.cfg.table == NULL or self.tx.slots == NULL or self.rx.slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free_table(self.cfg.table)
        for ptr, _ in self.retired or ():
            free_table(<table_t *><size_t>ptr)
        self.free_queues(1)
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
        cdef int q
        self.cfg.vnet_hdr = vnet_hdr
        self.cfg.udp_gro = vnet_hdr or udp_gro
        for q in range(self.cfg.nq):
            self.offload_queue(q, udp_gso, tun_uso)

    cdef int offload_queue(self, int q, bint udp_gso, bint tun_uso) except -1:
        cdef tx_t *tx = self.txq[q]
        cdef rx_t *rx = self.rxq[q]
        cdef bint vnet = self.cfg.vnet_hdr
        if vnet:
            if rx.co.items == NULL:
                rx.co.items = <coitem_t *>malloc(MAX_ITEMS * sizeof(coitem_t))
            if rx.co.items == NULL:
                raise MemoryError()
        if (vnet or udp_gso) and tx_alloc_offload(tx, vnet) < 0:
            raise MemoryError()
        tx.b.gso = udp_gso
        rx.co.udp = vnet and tun_uso
        return 0

    def set_tun_mtu(self, int mtu):
        """The TUN's MTU (0: unknown): longer accepted inner TCP packets are
        resegmented (oversize_gso in offload.pxi)."""
        cdef int q
        for q in range(self.cfg.nq):
            self.mtu_queue(q, mtu)

    cdef int mtu_queue(self, int q, int mtu) except -1:
        cdef rx_t *rx = self.rxq[q]
        if mtu and rx.split == NULL:
            rx.split = <uint8_t *>malloc(SPLIT_BUF)
            if rx.split == NULL:
                raise MemoryError()
        rx.co.mtu = mtu
        return 0

    # -- queues (multi-queue TUN, worker threads) -------------------------------
    def set_queues(self, int n):
        """Use n queues (1..MAX_QUEUES), before workers start: queues past
        the first get their own direction state, set up like queue 0's
        (offloads, MTU, io_uring). run_tx/run_rx take the queue index; the
        loop callbacks always use queue 0. Per-peer counters are then added
        atomically, since several workers count into the same peer."""
        cdef int q
        if not 1 <= n <= MAX_QUEUES:
            raise ValueError(f"{n} queues: 1 to {MAX_QUEUES}")
        if self.threaded:
            raise RuntimeError("set_queues while workers run")
        if self.closed:
            return
        self.free_queues(n)
        for q in range(self.cfg.nq, n):
            self.txq[q] = <tx_t *>calloc(1, sizeof(tx_t))
            self.rxq[q] = <rx_t *>calloc(1, sizeof(rx_t))
            self.cfg.nq = q + 1     # counted before filling: free_queues frees it on error
            if self.txq[q] == NULL or self.rxq[q] == NULL:
                raise MemoryError()
            self.txq[q].slots = <uint8_t *>malloc(BATCH * STRIDE)
            self.rxq[q].slots = <uint8_t *>malloc(BATCH * STRIDE)
            if self.txq[q].slots == NULL or self.rxq[q].slots == NULL:
                raise MemoryError()
            self.rxq[q].co.trusted = self.rx.co.trusted
            self.offload_queue(q, self.tx.b.gso, self.rx.co.udp)
            self.mtu_queue(q, self.rx.co.mtu)
            if self.tx.ring != NULL:
                self.ring_queue(q)
        for q in range(n):
            self.txq[q].shared = n > 1
            self.rxq[q].shared = n > 1

    cdef void free_queues(self, int keep):
        """Free queues keep.. (never queue 0, which is part of the object)."""
        cdef int q
        keep = max(keep, 1)
        for q in range(keep, self.cfg.nq):
            if self.txq[q] != NULL:
                tx_free(self.txq[q])
                free(self.txq[q])
                self.txq[q] = NULL
            if self.rxq[q] != NULL:
                rx_free(self.rxq[q])
                free(self.rxq[q])
                self.rxq[q] = NULL
        if keep < self.cfg.nq:
            self.cfg.nq = keep
        self.tx.shared = self.cfg.nq > 1
        self.rx.shared = self.cfg.nq > 1

    @property
    def queues(self):
        return self.cfg.nq

    def queue_counts(self):
        """Per queue: (tx packets, tx bytes, rx packets, rx bytes)."""
        return [(self.txq[q].packets, self.txq[q].bytes, self.rxq[q].packets,
                 self.rxq[q].bytes) for q in range(self.cfg.nq)]

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
        which is epoll (a batched io_uring read was measured dearer than
        read(); see the README's Performance section). The mode in
        effect."""
        cdef int q
        if mode not in IO_MODES:
            raise ValueError(f"unknown I/O mode {mode!r}; known: {', '.join(IO_MODES)}")
        for q in range(self.cfg.nq):
            uo_ring_close(self.txq[q].ring)
            self.txq[q].ring = NULL
            self.txq[q].ring_err = 0
        if mode != "io_uring" or self.closed:
            return self.io_mode
        try:
            for q in range(self.cfg.nq):
                self.ring_queue(q)
        except OSError:
            for q in range(self.cfg.nq):
                uo_ring_close(self.txq[q].ring)
                self.txq[q].ring = NULL
            raise
        return self.io_mode

    cdef int ring_queue(self, int q) except -1:
        """Open queue q's io_uring (OSError: refused, with the reason)."""
        cdef int rc = uo_ring_open(&self.txq[q].ring)
        if rc < 0:
            self.txq[q].ring = NULL
            reason = ("built without liburing" if not UO_URING_BUILT
                      else f"io_uring_setup: {strerror(-rc).decode()}")
            raise OSError(-rc, f"io_uring unavailable: {reason}")
        self.txq[q].want = BATCH
        return 0

    @property
    def io_mode(self):
        """"io_uring" or "epoll" (also after a ring failed at run time)."""
        return "io_uring" if self.tx.ring != NULL else "epoll"

    @property
    def io_batches(self):
        """TUN read batches submitted through io_uring so far."""
        return sum(self.txq[q].ring_batches for q in range(self.cfg.nq))

    @property
    def io_note(self):
        """Why TUN reads left io_uring at run time ("" if they did not)."""
        cdef int q
        for q in range(self.cfg.nq):
            if self.txq[q].ring_err:
                return ("io_uring failed, back to read(): "
                        f"{strerror(self.txq[q].ring_err).decode()}")
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
        once every worker passed a quiescent point after the swap."""
        if not self.threaded:
            free_table(t)
            return
        self.retired.append((<size_t>t, self.quiescent()))
        self.reclaim()

    cdef tuple quiescent(self):
        """Every worker's quiescent-state counter, read after a barrier."""
        cdef int q
        uo_barrier()
        return (tuple(self.cfg.q_tx[q] for q in range(self.cfg.nq))
                + tuple(self.cfg.q_rx[q] for q in range(self.cfg.nq)))

    def reclaim(self):
        """Free retired tables no worker can still hold; how many are left."""
        keep = []
        now = self.quiescent()
        for ptr, then in self.retired:
            if not self.threaded or all(a != b for a, b in zip(now, then)):
                free_table(<table_t *><size_t>ptr)
            else:
                keep.append((ptr, then))
        self.retired = keep
        return len(keep)

    def lookup(self, uint32_t addr):
        """Longest-prefix match: peer index or -1."""
        return lookup_in(self.cfg.table, addr)

    def counts(self):
        """(scalars in wire.SCALAR_COUNTERS order, TX verdict counts, RX
        verdict counts): a raw snapshot the facade names."""
        cdef int q, i
        cdef tx_t *tx
        cdef rx_t *rx
        scalars = [0] * 12
        out_v = [0] * N_VERDICTS
        in_v = [0] * N_VERDICTS
        for q in range(self.cfg.nq):     # summed over queues (one without them)
            tx = self.txq[q]
            rx = self.rxq[q]
            for i, v in enumerate((tx.packets, tx.bytes, rx.packets, rx.bytes,
                                   tx.icmp_sent, tx.super_packets, rx.co.merged,
                                   rx.co.csum_bad, rx.csum_partial, rx.mac_changed,
                                   rx.co.resegmented, tx.gso_messages)):
                scalars[i] += v
            for i in range(N_VERDICTS):
                out_v[i] += tx.verdicts[i]
                in_v[i] += rx.verdicts[i]
        return tuple(scalars), tuple(out_v), tuple(in_v)

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

    def run_tx(self, int tun_fd, int sock_fd, int stop_fd, int queue=0):
        """Worker thread body, GIL released: TUN -> wire until
        stop_workers(), on queue `queue` (its TUN queue fd, its socket)."""
        if not 0 <= queue < self.cfg.nq:
            raise IndexError(f"queue {queue} of {self.cfg.nq}")
        if self.closed:
            return
        with nogil:
            worker(&self.cfg, self.txq[queue], self.rxq[queue], False, queue,
                   tun_fd, sock_fd, stop_fd)

    def run_rx(self, int sock_fd, int tun_fd, int stop_fd, int queue=0):
        """Worker thread body, GIL released: wire -> TUN until
        stop_workers(), on queue `queue`."""
        if not 0 <= queue < self.cfg.nq:
            raise IndexError(f"queue {queue} of {self.cfg.nq}")
        if self.closed:
            return
        with nogil:
            worker(&self.cfg, self.txq[queue], self.rxq[queue], True, queue,
                   sock_fd, tun_fd, stop_fd)

    def close(self):
        """Free the I/O buffers (about 30 MB with offloads); idempotent. I/O
        calls afterwards do nothing; counters and peers stay readable.
        With workers still declared running nothing is freed."""
        if self.closed or self.threaded:
            return
        self.closed = True
        self.free_queues(1)
        tx_free(&self.tx)
        rx_free(&self.rx)
        self.reclaim()


include "testing.pxi"
