# The WireGuard plane's batched I/O, WgIo (included by core.pyx after
# wgcrypto.pxi). Mirrors udpoverlay/dataplane/_py/wgio.py, whose module
# notes are the contract: the same groups, verdicts, counters, exceptions
# and bytes; tests/differential/test_wgio.py holds the two to it.
#
# Design notes:
# - Fixed arenas, allocated once. TX: TX_SEGMENTS slots of WG_OVERHEAD +
#   the MTU padded to 16 (rounded up to 64) bytes, then WGIO_SLACK bytes
#   (room for a split at its natural stride, or a 64 KB read, after the
#   last slot a read may start at); a larger MTU reallocates (slots never
#   shrink). RX: BATCH slots of SLOT bytes for recvmmsg, and one record a
#   datagram (where, how long, from whom, opened/plaintext flags).
# - TX: a plain TUN's read lands in the next free slot, WG_HEADER bytes in,
#   where it is sealed: no copy. A vnet TUN's read goes to its own buffer;
#   a super-packet is split (split_c, udp mode's) straight into consecutive
#   slots, a plain packet copied into one. seal_send writes the header and
#   padding in place, seals with the key's context (wg_seal, as
#   WgKey.seal_slots), packs the datagrams into UDP_SEGMENT messages whose
#   iovecs point into the slots (pack_seg) and sends them as udp mode does
#   (tx_send_group: sendmmsg, waits for a full buffer, the GSO refusal
#   rule); all of it in one nogil block.
# - RX: recvmmsg (UDP_GRO cmsgs) into the slots until EAGAIN or BATCH
#   messages, as the reference's recvmsg loop; GRO buffers are cut into
#   records at their segment size. open() opens in place (wg_open, as
#   WgKey.open_slots); accept() checks the plaintexts where they lie and
#   queues them; write_tun() hands them to udp mode's coalescer (co_add /
#   co_flush: borrowed from the slots until the flush) or writes each.
# - The per-packet loops run without the GIL; Python objects are made for
#   results only: one tuple a group, packet(i), datagram(i), open()'s list.
# - Buffers are spent as the contract says (sealed segments, opened
#   datagrams, taken plaintexts): the twins agree on what can be read back.
# - Threads: the TX calls and the RX calls may run on two threads. A second
#   concurrent call of one direction, set_mtu() during a TX call or close()
#   during either raises RuntimeError (busy flags set with the GIL held).
# - Sockets: sock_fd must be non-blocking (the reference makes its own dup
#   non-blocking, which sets the flag on the caller's socket too).

from libc.stdio cimport snprintf
from libc.string cimport memmove
from libc.stdlib cimport realloc
from cpython.long cimport PyLong_FromUnsignedLongLong

from udpoverlay.dataplane.wgwire import (
    check_addr as _wg_check_addr, check_index as _wg_check_index,
    check_nets as _wg_check_nets, check_range as _wg_check_range,
    check_tun_mtu as _wg_check_tun_mtu, check_u32 as _wg_check_u32)

cdef enum:
    TX_SEGMENTS = 2 * MAX_SPLIT         # segments one read_tun round holds
    WGIO_READ = SLOT + VNET_HDR_LEN     # one TUN read, as the reference's os.read
    WGIO_SLACK = SPLIT_BUF + MAX_SPLIT * WG_HEADER + 64
    WGIO_RX_CMSG = 24                   # CMSG_SPACE(sizeof(int)), the reference's recvmsg
    WGIO_RECORDS = BATCH * 128          # records to begin with (more if GRO needs them)
    OPEN_BAD_TAG = -1
    OPEN_MALFORMED = -2
    KIND_OTHER = 0
    KIND_TRANSPORT = 4
    RX_OPENED = 1                       # open() spent it
    RX_PLAIN = 2                        # opened, not dropped, not yet taken
    # counters(): indexes (WGIO_COUNTERS' order) of those kept in wgio_c;
    # tx_send_error and tx_gso_messages are tx_t's, rx_merged and
    # rx_csum_bad the coalescer's
    WC_TOO_SHORT = 0
    WC_NOT_IPV4 = 1
    WC_BAD_GSO = 2
    WC_TOO_BIG = 3
    WC_READ_ERROR = 4
    WC_SUPER = 6
    WC_RECV_ERROR = 8
    WC_WRITE_ERROR = 9
    WC_N = 12


cdef struct wgrec_t:
    uint32_t off                # in the RX arena
    uint32_t len                # the datagram's
    uint32_t plen               # the opened plaintext's
    uint32_t ip                 # the source, host order
    uint16_t port
    uint8_t flags               # RX_OPENED | RX_PLAIN
    uint8_t verdict             # open(): WG_OK, WG_BAD_TAG, WG_MALFORMED


cdef struct wggroup_t:
    uint32_t key                # TX: the inner destination; RX: the kind
    uint32_t first
    uint32_t count
    uint64_t value              # TX: plain bytes; RX: the receiver index


cdef inline Py_ssize_t wgio_slot(int mtu) noexcept nogil:
    """Bytes per TX slot: a datagram of the longest segment, padded."""
    return (WG_OVERHEAD + ((mtu + WG_PAD - 1) & ~(WG_PAD - 1)) + 63) & ~(<Py_ssize_t>63)


cdef inline int wgio_inner_length(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """_py/wgio.py's _inner_length (wireguard.transport.inner_length)."""
    cdef int size
    if (p[0] >> 4) == 4 and n >= 20:
        size = (p[2] << 8) | p[3]
        return size if 20 <= size <= n else -1
    if (p[0] >> 4) == 6 and n >= 40:
        size = 40 + ((p[4] << 8) | p[5])
        return size if size <= n else -1
    return -1


cdef class WgIo:
    """The batched I/O of one WireGuard plane (compiled twin; the contract:
    udpoverlay/dataplane/_py/wgio.py)."""

    cdef public bint vnet_hdr
    cdef public bint udp_gro
    cdef public bint tun_uso
    cdef int mtu_c
    cdef bint more_c
    cdef int busy_tx, busy_rx
    cdef uint64_t wgio_c[WC_N]
    # TX
    cdef uint8_t *tx_arena
    cdef Py_ssize_t slot_size
    cdef uint8_t *rbuf              # one vnet TUN read
    cdef uint32_t *seg_len
    cdef uint8_t *sealed
    cdef Py_ssize_t n_tx
    cdef wggroup_t *tx_groups
    cdef Py_ssize_t n_tx_groups
    cdef tx_t tx                    # udp mode's packing and sending (b, mm, counters)
    # RX
    cdef uint8_t *rx_arena
    cdef uint8_t *rx_cmsg
    cdef mmsghdr rx_msgs[BATCH]
    cdef iovec rx_iov[BATCH]
    cdef sockaddr_in rx_addrs[BATCH]
    cdef wgrec_t *recs
    cdef wggroup_t *rx_groups
    cdef uint32_t *taken            # record indexes, in acceptance order
    cdef uint32_t *taken_len        # their IP lengths
    cdef Py_ssize_t rec_cap, n_rx, n_rx_groups, n_taken
    cdef coalescer_t co

    def __init__(self, vnet_hdr, udp_gso, udp_gro, tun_uso, mtu):
        cdef int m = _wg_check_tun_mtu(mtu)
        self.vnet_hdr = bool(vnet_hdr)
        self.udp_gro = bool(udp_gro)
        self.tun_uso = bool(tun_uso)
        self.tx.b.gso = bool(udp_gso)
        self._set_mtu(m)
        self._alloc()

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        free(self.tx_arena)
        free(self.rbuf)
        free(self.seg_len)
        free(self.sealed)
        free(self.tx_groups)
        tx_free(&self.tx)
        free(self.rx_arena)
        free(self.rx_cmsg)
        free(self.recs)
        free(self.rx_groups)
        free(self.taken)
        free(self.taken_len)
        free(self.co.items)
        self.tx_arena = self.rbuf = self.sealed = self.rx_arena = self.rx_cmsg = NULL
        self.seg_len = self.taken = self.taken_len = NULL
        self.tx_groups = self.rx_groups = NULL
        self.recs = NULL
        self.co.items = NULL
        self.slot_size = self.rec_cap = 0
        self.n_tx = self.n_tx_groups = self.n_rx = self.n_rx_groups = self.n_taken = 0

    cdef int _alloc(self) except -1:
        """Every buffer not there yet (all at first; again after close())."""
        if self.tx_arena == NULL:
            self.slot_size = wgio_slot(self.mtu_c)
            self.tx_arena = <uint8_t *>malloc(TX_SEGMENTS * self.slot_size + WGIO_SLACK)
        if self.rbuf == NULL:
            self.rbuf = <uint8_t *>malloc(WGIO_READ)
            self.seg_len = <uint32_t *>malloc(TX_SEGMENTS * sizeof(uint32_t))
            self.sealed = <uint8_t *>calloc(TX_SEGMENTS, 1)
            self.tx_groups = <wggroup_t *>malloc(TX_SEGMENTS * sizeof(wggroup_t))
            self.rx_arena = <uint8_t *>malloc(BATCH * SLOT)
            self.rx_cmsg = <uint8_t *>calloc(BATCH, WGIO_RX_CMSG)
            self.co.items = <coitem_t *>malloc(MAX_ITEMS * sizeof(coitem_t))
        if (self.tx_arena == NULL or self.rbuf == NULL or self.seg_len == NULL
                or self.sealed == NULL or self.tx_groups == NULL or self.rx_arena == NULL
                or self.rx_cmsg == NULL or self.co.items == NULL
                or tx_alloc_offload(&self.tx, False) < 0 or self._records(WGIO_RECORDS) < 0):
            raise MemoryError()
        return 0

    cdef int _records(self, Py_ssize_t need) noexcept nogil:
        """Room for `need` RX records (and groups, taken packets); -1 when
        out of memory (the old arrays stay)."""
        cdef void *p
        if need <= self.rec_cap:
            return 0
        p = realloc(self.recs, need * sizeof(wgrec_t))
        if p == NULL:
            return -1
        self.recs = <wgrec_t *>p
        p = realloc(self.rx_groups, need * sizeof(wggroup_t))
        if p == NULL:
            return -1
        self.rx_groups = <wggroup_t *>p
        p = realloc(self.taken, need * sizeof(uint32_t))
        if p == NULL:
            return -1
        self.taken = <uint32_t *>p
        p = realloc(self.taken_len, need * sizeof(uint32_t))
        if p == NULL:
            return -1
        self.taken_len = <uint32_t *>p
        self.rec_cap = need
        return 0

    cdef int _set_mtu(self, int mtu) except -1:
        """Bigger slots if mtu needs them, the segments read so far moved
        along; slots never shrink (a segment read before stays sealable)."""
        cdef Py_ssize_t size = wgio_slot(mtu), i
        cdef uint8_t *arena
        if self.tx_arena != NULL and size > self.slot_size:
            arena = <uint8_t *>malloc(TX_SEGMENTS * size + WGIO_SLACK)
            if arena == NULL:
                raise MemoryError()
            for i in range(self.n_tx):
                memcpy(arena + i * size, self.tx_arena + i * self.slot_size, self.slot_size)
            free(self.tx_arena)
            self.tx_arena = arena
            self.slot_size = size
        self.mtu_c = mtu
        return 0

    cdef int _enter(self, bint rx) except -1:
        if self.busy_rx if rx else self.busy_tx:
            raise RuntimeError("a WgIo direction is in use on another thread")
        if rx:
            self.busy_rx = 1
        else:
            self.busy_tx = 1
        return 0

    @property
    def mtu(self):
        return self.mtu_c

    @property
    def more(self):
        return bool(self.more_c)

    @property
    def udp_gso(self):
        """UDP_SEGMENT in use (off for good once the kernel refused it)."""
        return bool(self.tx.b.gso)

    @udp_gso.setter
    def udp_gso(self, on):
        self.tx.b.gso = bool(on)

    def set_mtu(self, mtu):
        """The TUN's MTU: the longest plain segment taken (0: 1500)."""
        cdef int m = _wg_check_tun_mtu(mtu)
        if self.busy_tx:
            raise RuntimeError("WgIo.set_mtu() during a TX call")
        self._set_mtu(m)

    def counters(self):
        return (self.wgio_c[0], self.wgio_c[1], self.wgio_c[2], self.wgio_c[3],
                self.wgio_c[4], self.tx.verdicts[TX_ERROR], self.wgio_c[6],
                self.tx.gso_messages, self.wgio_c[8], self.wgio_c[9], self.co.merged,
                self.co.csum_bad)

    def close(self):
        """Free the arenas (about 7 MB at MTU 1500) and forget the segments
        and datagrams; a later call allocates them again."""
        if self.busy_tx or self.busy_rx:
            raise RuntimeError("WgIo.close() while another thread uses it")
        self._free()

    # -- TX ------------------------------------------------------------------------
    def read_tun(self, int tun_fd):
        cdef Py_ssize_t k
        cdef wggroup_t *g
        self._alloc()
        self._enter(False)
        try:
            with nogil:
                self._read_tun(tun_fd)
            out = []
            for k in range(self.n_tx_groups):
                g = &self.tx_groups[k]
                out.append((g.key, g.first, g.count, g.value))
            return out
        finally:
            self.busy_tx = 0

    cdef void _read_tun(self, int fd) noexcept nogil:
        cdef int reads = 0, nseg, i, stride = 0, last = 0
        cdef ssize_t r
        cdef uint8_t *slot
        cdef uint8_t *pkt
        cdef uint8_t *seg
        cdef vnet_t vh
        cdef wggroup_t *g
        cdef uint32_t dst
        self.n_tx = 0
        self.more_c = 0
        while True:
            if reads >= BATCH or TX_SEGMENTS - self.n_tx < MAX_SPLIT:
                self.more_c = 1
                break
            slot = self.tx_arena + self.n_tx * self.slot_size
            r = read(fd, self.rbuf if self.vnet_hdr else slot + WG_HEADER, WGIO_READ)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    self.wgio_c[WC_READ_ERROR] += 1
                break
            reads += 1
            if not self.vnet_hdr:
                self._take(slot + WG_HEADER, r)
                continue
            pkt = self.rbuf + VNET_HDR_LEN
            r -= VNET_HDR_LEN
            if r < 20:
                self.wgio_c[WC_TOO_SHORT] += 1
                continue
            if (pkt[0] >> 4) != 4:
                self.wgio_c[WC_NOT_IPV4] += 1
                continue
            read_vnet(self.rbuf, &vh)
            if (vh.gso_type & 0x7F) == GSO_NONE:
                if (vh.flags & F_NEEDS_CSUM) and not complete_csum(pkt, r, vh.csum_start,
                                                                   vh.csum_offset):
                    self.wgio_c[WC_BAD_GSO] += 1
                else:
                    self._take(pkt, r)
                continue
            nseg = split_c(pkt, r, vh.gso_type, vh.gso_size, slot, WG_HEADER, &stride, &last,
                           <int>self.slot_size)
            if nseg < 0:
                self.wgio_c[WC_BAD_GSO] += 1
                continue
            self.wgio_c[WC_SUPER] += 1
            for i in range(nseg):
                seg = slot + <size_t>i * stride + WG_HEADER
                self._take(seg, (seg[2] << 8) | seg[3])     # its IP total length
        # runs of one inner destination
        self.n_tx_groups = 0
        for i in range(self.n_tx):
            self.sealed[i] = 0
            dst = be32(self.tx_arena + i * self.slot_size + WG_HEADER + 16)
            g = &self.tx_groups[self.n_tx_groups - 1]
            if self.n_tx_groups and g.key == dst:
                g.count += 1
                g.value += self.seg_len[i]
                continue
            g = &self.tx_groups[self.n_tx_groups]
            self.n_tx_groups += 1
            g.key = dst
            g.first = i
            g.count = 1
            g.value = self.seg_len[i]

    cdef inline void _take(self, const uint8_t *p, Py_ssize_t n) noexcept nogil:
        """Segment p (n bytes) checked, and moved to the next free slot
        (where it mostly is already) if taken. A split's segments lie at or
        past their slot, so moving one never overwrites the next."""
        cdef uint8_t *dst
        if n < 20:
            self.wgio_c[WC_TOO_SHORT] += 1
        elif (p[0] >> 4) != 4:
            self.wgio_c[WC_NOT_IPV4] += 1
        elif n > self.mtu_c:
            self.wgio_c[WC_TOO_BIG] += 1
        else:
            dst = self.tx_arena + self.n_tx * self.slot_size + WG_HEADER
            if dst != p:
                memmove(dst, p, n)
            self.seg_len[self.n_tx] = <uint32_t>n
            self.n_tx += 1

    def packet(self, i):
        _wg_check_index(i, self.n_tx, "segment")
        if self.sealed[i]:
            raise ValueError(f"segment {i} was sealed")
        if self.busy_tx:
            raise RuntimeError("a WgIo direction is in use on another thread")
        cdef Py_ssize_t k = i
        return (<char *>self.tx_arena + k * self.slot_size + WG_HEADER)[:self.seg_len[k]]

    def seal_send(self, first, count, WgKey key not None, receiver, counter, mtu, int sock_fd,
                  addr):
        _wg_check_range(first, count, self.n_tx, "segments")
        cdef Py_ssize_t f = first, cnt = count, i
        for i in range(f, f + cnt):
            if self.sealed[i]:
                raise ValueError(f"segment {i} was already sealed")
        ip, port = _wg_check_addr(addr)
        _wg_check_receiver(receiver)
        _wg_check_mtu(mtu)
        _wg_check_counters(counter, count)
        if cnt == 0:
            return 0
        cdef uint32_t c_ip = ip, rcv = receiver
        cdef uint16_t c_port = port
        cdef uint64_t ctr = counter, total = 0
        cdef int cap = mtu, err
        self._enter(False)
        try:
            key._enter(True)
        except BaseException:
            self.busy_tx = 0
            raise
        with nogil:
            err = self._seal_send(&key.enc, f, cnt, rcv, ctr, cap, sock_fd, c_ip,
                                  c_port, &total)
        key.busy_seal = 0
        self.busy_tx = 0
        if err:
            ERR_clear_error()
            raise RuntimeError("libcrypto failed to seal")
        return total

    cdef int _seal_send(self, uo_wg_aead *ctx, Py_ssize_t first,
                        Py_ssize_t count, uint32_t receiver, uint64_t counter, int cap, int fd,
                        uint32_t ip, uint16_t port, uint64_t *total) noexcept nogil:
        """Seal segments first.. in their slots (WgKey.seal_slots' loop), pack
        and send them; -1 if libcrypto failed (nothing sent then)."""
        cdef uint8_t iv[WG_NONCE]
        cdef uint8_t *d
        cdef Py_ssize_t j
        cdef int size, plen
        memset(iv, 0, WG_NONCE)
        tx_begin(&self.tx)
        for j in range(count):
            d = self.tx_arena + (first + j) * self.slot_size
            size = <int>self.seg_len[first + j]
            plen = wg_padded(size, cap)
            wg_header(d, receiver, counter + <uint64_t>j)
            memset(d + WG_HEADER + size, 0, plen - size)
            memcpy(iv + 4, d + 8, 8)
            self.sealed[first + j] = 1
            if wg_seal(ctx, iv, NULL, 0, d + WG_HEADER, d + WG_HEADER, plen,
                       d + WG_HEADER + plen):
                return -1
            total[0] += WG_OVERHEAD + plen
            pack_seg(&self.tx.b, -1, ip, port, d, WG_OVERHEAD + plen)
        tx_send_group(&self.tx, -1, fd)
        return 0

    # -- RX ------------------------------------------------------------------------
    def recv(self, int sock_fd):
        cdef int err
        cdef wggroup_t *g
        cdef wgrec_t *r
        cdef char host[16]
        cdef uint32_t ip = 0
        cdef uint16_t port = 0
        cdef Py_ssize_t k
        self._alloc()
        self._enter(True)
        try:
            with nogil:
                err = self._recv(sock_fd)
            if err:
                raise MemoryError()
            out = []
            src = None
            for k in range(self.n_rx_groups):
                g = &self.rx_groups[k]
                r = &self.recs[g.first]
                if src is None or r.ip != ip or r.port != port:
                    ip, port = r.ip, r.port
                    snprintf(host, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255,
                             (ip >> 8) & 255, ip & 255)
                    src = (host.decode("ascii"), port)
                out.append((g.key, g.first, g.count, src, g.value))
            return out
        finally:
            self.busy_rx = 0

    cdef int _recv(self, int fd) noexcept nogil:
        """recvmmsg until EAGAIN or BATCH messages, cut GRO buffers into
        records, group them; -1 when out of memory for the records."""
        cdef int got, total = 0, m, gro, kind
        cdef Py_ssize_t n, step, k, need = 0, at
        cdef mmsghdr *mm
        cdef wgrec_t *r
        cdef wggroup_t *g
        cdef const uint8_t *d
        cdef uint32_t receiver
        self.n_rx = self.n_rx_groups = self.n_taken = 0
        self.more_c = 0
        while True:
            if total >= BATCH:
                self.more_c = 1
                break
            for m in range(total, BATCH):
                mm = &self.rx_msgs[m]
                memset(mm, 0, sizeof(mmsghdr))
                self.rx_iov[m].iov_base = self.rx_arena + <size_t>m * SLOT
                self.rx_iov[m].iov_len = SLOT
                mm.msg_hdr.msg_name = &self.rx_addrs[m]
                mm.msg_hdr.msg_namelen = sizeof(sockaddr_in)
                mm.msg_hdr.msg_iov = &self.rx_iov[m]
                mm.msg_hdr.msg_iovlen = 1
                if self.udp_gro:
                    mm.msg_hdr.msg_control = self.rx_cmsg + <size_t>m * WGIO_RX_CMSG
                    mm.msg_hdr.msg_controllen = WGIO_RX_CMSG
            got = recvmmsg(fd, &self.rx_msgs[total], BATCH - total, MSG_DONTWAIT, NULL)
            if got < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    self.wgio_c[WC_RECV_ERROR] += 1
                break
            if got == 0:
                break
            total += got
        # records: a GRO buffer cut at its segment size (the reference's rule)
        for m in range(total):
            n = self.rx_msgs[m].msg_len
            gro = gro_size(&self.rx_msgs[m]) if self.udp_gro else 0
            step = gro if 0 < gro < n else (n if n else 1)
            need += ((n if n else 1) + step - 1) // step
        if self._records(need) < 0:
            return -1
        for m in range(total):
            n = self.rx_msgs[m].msg_len
            gro = gro_size(&self.rx_msgs[m]) if self.udp_gro else 0
            step = gro if 0 < gro < n else (n if n else 1)
            k = 0
            while True:
                r = &self.recs[self.n_rx]
                self.n_rx += 1
                at = <Py_ssize_t>m * SLOT + k
                r.off = <uint32_t>at
                r.len = <uint32_t>(step if n - k > step else n - k)
                r.plen = 0
                r.flags = 0
                r.verdict = 0
                r.ip = ntohl(self.rx_addrs[m].sin_addr.s_addr)
                r.port = ntohs(self.rx_addrs[m].sin_port)
                k += step
                if k >= n:
                    break
        # groups: a run of transport datagrams of one source and receiver
        for k in range(self.n_rx):
            r = &self.recs[k]
            d = self.rx_arena + r.off
            g = &self.rx_groups[self.n_rx_groups - 1]
            if r.len >= WG_OVERHEAD and d[0] == 4 and d[1] == 0 and d[2] == 0 and d[3] == 0:
                receiver = (<uint32_t>d[4] | (<uint32_t>d[5] << 8) | (<uint32_t>d[6] << 16)
                            | (<uint32_t>d[7] << 24))
                if (self.n_rx_groups and g.key == KIND_TRANSPORT and g.value == receiver
                        and self.recs[g.first].ip == r.ip and self.recs[g.first].port == r.port):
                    g.count += 1
                    continue
                kind = KIND_TRANSPORT
            else:
                receiver = 0
                kind = KIND_OTHER
            g = &self.rx_groups[self.n_rx_groups]
            self.n_rx_groups += 1
            g.key = kind
            g.first = <uint32_t>k
            g.count = 1
            g.value = receiver
        return 0

    def datagram(self, i):
        _wg_check_index(i, self.n_rx, "datagram")
        cdef wgrec_t *r = &self.recs[<Py_ssize_t>i]
        if r.flags & RX_OPENED:
            raise ValueError(f"datagram {i} was opened")
        return (<char *>self.rx_arena + r.off)[:r.len]

    def open(self, first, count, WgKey key not None):
        _wg_check_range(first, count, self.n_rx, "datagrams")
        cdef Py_ssize_t f = first, cnt = count, i
        cdef int err
        cdef wgrec_t *r
        for i in range(f, f + cnt):
            if self.recs[i].flags & RX_OPENED:
                raise ValueError(f"datagram {i} was already opened")
        if cnt == 0:
            return []
        self._enter(True)
        try:
            key._enter(False)
        except BaseException:
            self.busy_rx = 0
            raise
        with nogil:
            err = self._open(&key.dec, f, cnt)
        key.busy_open = 0
        self.busy_rx = 0
        if err:
            ERR_clear_error()
            raise RuntimeError("libcrypto failed to open")
        out = []
        for i in range(f, f + cnt):
            r = &self.recs[i]
            if r.verdict == WG_OK:
                out.append(PyLong_FromUnsignedLongLong(wg_get64(self.rx_arena + r.off + 8)))
            else:
                out.append(OPEN_BAD_TAG if r.verdict == WG_BAD_TAG else OPEN_MALFORMED)
        return out

    cdef int _open(self, uo_wg_aead *ctx, Py_ssize_t first,
                   Py_ssize_t count) noexcept nogil:
        """Open records first.. in place (WgKey.open_slots' loop); -1 if
        libcrypto failed."""
        cdef uint8_t iv[WG_NONCE]
        cdef uint8_t *d
        cdef wgrec_t *r
        cdef Py_ssize_t j
        cdef int size, rc
        memset(iv, 0, WG_NONCE)
        for j in range(first, first + count):
            r = &self.recs[j]
            d = self.rx_arena + r.off
            size = <int>r.len
            r.flags |= RX_OPENED
            if wg_malformed(d, size):
                r.verdict = WG_MALFORMED
                continue
            memcpy(iv + 4, d + 8, 8)
            rc = wg_open(ctx, iv, NULL, 0, d + WG_HEADER, d + WG_HEADER,
                         size - WG_OVERHEAD, d + size - WG_TAG)
            if rc < 0:
                return -1
            if rc:
                memset(d + WG_HEADER, 0, size - WG_HEADER)
                r.verdict = WG_BAD_TAG
            else:
                r.verdict = WG_OK
                r.plen = size - WG_OVERHEAD
                r.flags |= RX_PLAIN
        return 0

    def drop(self, i):
        _wg_check_index(i, self.n_rx, "datagram")
        self.recs[<Py_ssize_t>i].flags &= ~RX_PLAIN

    def accept(self, first, count, allowed, local_net, local_mask):
        _wg_check_range(first, count, self.n_rx, "datagrams")
        nets = _wg_check_nets(allowed)
        cdef uint32_t net = _wg_check_u32(local_net, "local_net")
        cdef uint32_t mask = _wg_check_u32(local_mask, "local_mask")
        cdef Py_ssize_t f = first, cnt = count, n_nets = len(nets), i
        cdef uint64_t res[8]
        cdef uint32_t *c_nets = <uint32_t *>malloc(2 * n_nets * sizeof(uint32_t) + 8)
        if c_nets == NULL:
            raise MemoryError()
        try:
            for i in range(n_nets):
                c_nets[2 * i] = nets[i][0]
                c_nets[2 * i + 1] = nets[i][1]
            self._enter(True)
            with nogil:
                self._accept(f, cnt, c_nets, n_nets, net, mask, res)
            self.busy_rx = 0
        finally:
            free(c_nets)
        return (res[0], res[1], res[2], res[3], res[4], res[5], res[6], res[7])

    cdef void _accept(self, Py_ssize_t first, Py_ssize_t count, const uint32_t *nets,
                      Py_ssize_t n_nets, uint32_t local_net, uint32_t local_mask,
                      uint64_t *res) noexcept nogil:
        """ACCEPT_FIELDS into res; taken packets queued for write_tun."""
        cdef Py_ssize_t j, k
        cdef wgrec_t *r
        cdef const uint8_t *p
        cdef int size
        cdef uint32_t src
        memset(res, 0, 8 * sizeof(uint64_t))
        for j in range(first, first + count):
            r = &self.recs[j]
            if not (r.flags & RX_PLAIN):
                continue
            r.flags &= ~RX_PLAIN        # taken once
            res[6] += r.len
            if r.plen == 0:
                res[2] += 1
                continue
            res[7] += 1
            p = self.rx_arena + r.off + WG_HEADER
            size = wgio_inner_length(p, r.plen)
            if size < 0:
                res[3] += 1
                continue
            if (p[0] >> 4) != 4:
                res[4] += 1
                continue
            src = be32(p + 12)
            for k in range(n_nets):
                if (src & nets[2 * k + 1]) == nets[2 * k]:
                    break
            else:
                res[4] += 1
                continue
            if (be32(p + 16) & local_mask) != local_net:
                res[5] += 1
                continue
            res[0] += 1
            res[1] += size
            self.taken[self.n_taken] = <uint32_t>j
            self.taken_len[self.n_taken] = <uint32_t>size
            self.n_taken += 1

    def write_tun(self, int tun_fd):
        """Write what accept() took; the number of TUN writes made."""
        cdef Py_ssize_t writes
        if self.n_taken == 0:
            return 0
        self._enter(True)
        with nogil:
            writes = self._write_tun(tun_fd)
        self.busy_rx = 0
        return writes

    cdef Py_ssize_t _write_tun(self, int fd) noexcept nogil:
        cdef Py_ssize_t k, writes = 0, before
        cdef uint8_t *p
        cdef coalescer_t *co = &self.co
        if self.vnet_hdr:
            co.udp = self.tun_uso
            co.trusted = 1         # the AEAD tag covered them (see the reference)
            co.mtu = self.mtu_c
        for k in range(self.n_taken):
            p = self.rx_arena + self.recs[self.taken[k]].off + WG_HEADER
            if not self.vnet_hdr:
                while write(fd, p, self.taken_len[k]) < 0:
                    if errno != EINTR:
                        self.wgio_c[WC_WRITE_ERROR] += 1
                        break
                writes += 1
                continue
            before = co.n_items
            co_add(co, p, self.taken_len[k], fd)
            if co.n_items < before:         # a flush made room: those were written
                writes += before
        if self.vnet_hdr:
            writes += co.n_items
            co_flush(co, fd)
            self.wgio_c[WC_WRITE_ERROR] += co.failed
            co.failed = 0
        self.n_taken = 0
        return writes
