# Offloads (included by core.pyx): split TUN super-packets into wire
# segments (TSO/USO), pack segments into UDP_SEGMENT messages, coalesce
# received segments into GSO writes to the TUN (GRO). Mirrors
# udpoverlay/dataplane/_py/offload.py, where the rules are written down, byte
# for byte.


cdef inline void put16_host(uint8_t *p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)


cdef struct vnet_t:
    uint8_t flags
    uint8_t gso_type
    uint16_t hdr_len
    uint16_t gso_size
    uint16_t csum_start
    uint16_t csum_offset


cdef inline void read_vnet(const uint8_t *p, vnet_t *v) noexcept nogil:
    memcpy(v, p, 10)       # host byte order, packed: 2 x u8 + 4 x u16


cdef bint complete_csum(uint8_t *pkt, Py_ssize_t n, int start, int offset) noexcept nogil:
    """Finish a NEEDS_CSUM packet in place; False if the offsets are bad."""
    cdef Py_ssize_t at = start + offset
    cdef uint16_t c
    if at + 2 > n:
        return False
    c = csum(pkt + start, n - start)
    if c == 0:
        c = 0xFFFF
    put16(&pkt[at], c)
    return True


cdef int split_c(const uint8_t *pkt, Py_ssize_t n, int gso_type, int gso_size,
                 uint8_t *out, int room, int *stride, int *last,
                 int slot=0) noexcept nogil:
    """Segments of super-packet pkt, written at out one after another, each
    after `room` bytes left free for the outer header. Returns their number
    (stride[0] = bytes per full segment incl. room, last[0] = the last one's)
    or -1 if the vnet header does not fit the packet. slot > 0: where a full
    segment and its room fit in slot bytes, segments go a slot apart
    (stride[0] = slot; WgIo's fixed slots); else as without it."""
    cdef int gt = gso_type & 0x7F
    cdef int ihl = (pkt[0] & 0x0F) * 4
    cdef int l4, hlen, payload, nseg, i, chunk, total, at
    cdef uint32_t seq
    cdef uint16_t ident, c
    cdef uint8_t proto = pkt[9]
    cdef uint8_t *s
    if ihl < 20:
        return -1
    if gt == GSO_TCPV4:
        if proto != 6 or n < ihl + 20:
            return -1
        l4 = ((pkt[ihl + 12] >> 4) & 0x0F) * 4
        if l4 < 20 or ihl + l4 > n:
            return -1
    elif gt == GSO_UDP_L4:
        if proto != 17 or n < ihl + 8:
            return -1
        l4 = 8
    else:
        return -1
    if gso_size == 0:
        return -1
    hlen = ihl + l4
    payload = <int>n - hlen
    nseg = (payload + gso_size - 1) // gso_size
    if nseg < 1:
        nseg = 1
    if nseg > MAX_SPLIT:
        return -1
    ident = (pkt[4] << 8) | pkt[5]
    seq = be32(&pkt[ihl + 4])
    stride[0] = room + hlen + gso_size
    if 0 < stride[0] <= slot:
        stride[0] = slot
    for i in range(nseg):
        chunk = gso_size if i < nseg - 1 else payload - i * gso_size
        s = out + <size_t>i * stride[0] + room
        memcpy(s, pkt, hlen)
        memcpy(s + hlen, pkt + hlen + <size_t>i * gso_size, chunk)
        total = hlen + chunk
        put16(&s[2], <uint16_t>total)
        put16(&s[4], <uint16_t>(ident + i))
        ip_header_csum(s, ihl)
        if gt == GSO_TCPV4:
            put32(&s[ihl + 4], seq + <uint32_t>i * <uint32_t>gso_size)
            if i != nseg - 1:
                s[ihl + 13] &= ~(TCP_FIN | TCP_PSH)
            if i != 0:
                s[ihl + 13] &= ~TCP_CWR
            at = ihl + 16
        else:
            put16(&s[ihl + 4], <uint16_t>(8 + chunk))
            at = ihl + 6
        s[at] = 0
        s[at + 1] = 0
        c = <uint16_t>(~csum_fold(pseudo_sum(s, proto, total - ihl)
                                  + csum_add(s + ihl, total - ihl, 0)) & 0xFFFF)
        if c == 0 and gt == GSO_UDP_L4:
            c = 0xFFFF
        put16(&s[at], c)
        last[0] = room + total
    return nseg


cdef int oversize_gso(const uint8_t *p, Py_ssize_t n, int mtu) noexcept nogil:
    """The MTU-derived segment size for an accepted inner packet that must
    be resegmented (a kernel sender's super-frame: TCP, DF set, no IP
    options, checksum verified), else 0."""
    cdef int l4, gso
    if mtu == 0 or n <= mtu or p[0] != 0x45 or p[9] != 6 or n < 40:
        return 0
    if (((p[6] << 8) | p[7]) & 0x7FFF) != 0x4000:
        return 0                # DF clear or a fragment: the kernel fragments it
    l4 = (p[32] >> 4) * 4
    gso = mtu - 20 - l4
    if l4 < 20 or 20 + l4 >= n or gso <= 0 or (<int>n - 20 - l4 + gso - 1) // gso > MAX_SPLIT:
        return 0
    if csum_fold(pseudo_sum(p, 6, <uint32_t>(n - 20)) + csum_add(p + 20, n - 20, 0)) != 0xFFFF:
        return 0
    return gso


# -- TX: segments -> UDP messages ------------------------------------------------
cdef struct txmsg_t:
    int sock            # index into the tx sockets, -1 = the main socket
    uint32_t ip
    uint16_t port
    int seg_size
    int nseg
    iovec iov[MAX_GSO_SEGS]


cdef struct txbatch_t:
    uint8_t *arena
    size_t pos
    int n_msgs
    int gso             # UDP_SEGMENT allowed
    txmsg_t *msgs


cdef void pack_seg(txbatch_t *b, int sock, uint32_t ip, uint16_t port,
                   uint8_t *seg, int n) noexcept nogil:
    """Add one wire datagram to the batch (caller keeps n_msgs < TX_MSGS)."""
    cdef int i, lo
    cdef txmsg_t *m
    if b.gso:
        lo = b.n_msgs - SCAN_DEPTH
        if lo < 0:
            lo = 0
        i = b.n_msgs - 1
        while i >= lo:
            m = &b.msgs[i]
            if m.sock == sock and m.ip == ip and m.port == port:
                if (m.nseg < MAX_GSO_SEGS and n <= m.seg_size
                        and <int>m.iov[m.nseg - 1].iov_len == m.seg_size
                        and m.seg_size * m.nseg + n <= MAX_UDP_PAYLOAD):
                    m.iov[m.nseg].iov_base = seg
                    m.iov[m.nseg].iov_len = n
                    m.nseg += 1
                    return
                break
            i -= 1
    m = &b.msgs[b.n_msgs]
    b.n_msgs += 1
    m.sock = sock
    m.ip = ip
    m.port = port
    m.seg_size = n
    m.nseg = 1
    m.iov[0].iov_base = seg
    m.iov[0].iov_len = n


# -- RX: coalescing into TUN writes -------------------------------------------------
cdef struct coitem_t:
    uint8_t key[13]     # proto, addresses, ports
    int has_key
    int proto
    int open
    int gso
    int last
    int total
    int last_flags
    uint32_t next_seq
    int nseg
    int big             # an oversized packet: one segment, written as GSO
    uint8_t *first      # borrowed from the receive slots until the flush
    int first_len
    uint8_t vnet[10]
    iovec iov[MAX_COALESCE + 1]     # vnet header, first packet, later payloads


cdef struct coalescer_t:
    int udp             # UDP GSO writes accepted by the TUN
    int trusted         # udp mode: the outer UDP checksum covered the inner packet
    int n_items
    coitem_t *items
    uint64_t merged
    uint64_t csum_bad
    uint64_t resegmented    # oversized packets written as GSO or split
    int mtu                 # the TUN's; 0 = unknown
    uint64_t failed     # segments whose TUN write failed, not yet counted


cdef inline bint flow_key(const uint8_t *p, Py_ssize_t n, uint8_t *key) noexcept nogil:
    cdef int ihl = (p[0] & 0x0F) * 4
    if (p[9] != 6 and p[9] != 17) or (((p[6] << 8) | p[7]) & 0x3FFF) or n < ihl + 4:
        return False
    key[0] = p[9]
    memcpy(&key[1], &p[12], 8)
    memcpy(&key[9], &p[ihl], 4)
    return True


cdef bint co_mergeable(coalescer_t *co, const uint8_t *p, Py_ssize_t n) noexcept nogil:
    cdef int l4
    cdef uint8_t proto = p[9]
    if p[0] != 0x45 or (((p[6] << 8) | p[7]) & 0x3FFF):
        return False
    if proto == 6:
        if n < 40:
            return False
        l4 = (p[32] >> 4) * 4
        if l4 < 20 or 20 + l4 >= n or (p[33] != TCP_ACK and p[33] != (TCP_ACK | TCP_PSH)):
            return False
    elif proto == 17 and co.udp:
        if n <= 28 or ((p[24] << 8) | p[25]) != n - 20:
            return False
    else:
        return False
    if proto == 17 and p[26] == 0 and p[27] == 0:
        return False        # no checksum to verify: not merged, not counted
    if co.trusted:
        return True         # no second pass over the payload
    if csum_fold(pseudo_sum(p, proto, <uint32_t>(n - 20)) + csum_add(p + 20, n - 20, 0)) != 0xFFFF:
        co.csum_bad += 1
        return False
    return True


cdef bint co_fits(coitem_t *it, const uint8_t *p, Py_ssize_t n) noexcept nogil:
    cdef const uint8_t *f = it.first
    cdef int l4, payload
    if not it.open or p[1] != f[1] or p[8] != f[8] or p[6] != f[6]:
        return False
    if it.proto == 6:
        l4 = (p[32] >> 4) * 4
        if (p[32] != f[32] or memcmp(&p[28], &f[28], 4) != 0
                or memcmp(&p[40], &f[40], l4 - 20) != 0 or be32(&p[24]) != it.next_seq):
            return False
        payload = <int>n - 20 - l4
    else:
        payload = <int>n - 28
    return (payload <= it.gso and it.last == it.gso and it.nseg < MAX_COALESCE
            and it.total + payload <= 65535)


cdef void co_add(coalescer_t *co, uint8_t *p, Py_ssize_t n, int tun_fd) noexcept nogil:
    """Add an accepted inner packet (borrowed until the flush, which may
    happen here when MAX_ITEMS items are open)."""
    cdef uint8_t key[13]
    cdef bint has_key = flow_key(p, n, key)
    cdef int big = oversize_gso(p, n, co.mtu)
    cdef bint ok = not big and has_key and co_mergeable(co, p, n)
    cdef int i, lo, hl, payload
    cdef coitem_t *it
    if has_key and not big:
        lo = co.n_items - SCAN_DEPTH
        if lo < 0:
            lo = 0
        i = co.n_items - 1
        while i >= lo:
            it = &co.items[i]
            if it.has_key and memcmp(it.key, key, 13) == 0:
                if ok and co_fits(it, p, n):
                    hl = 20 + ((it.first[32] >> 4) * 4 if it.proto == 6 else 8)
                    payload = <int>n - hl
                    it.iov[it.nseg + 1].iov_base = p + hl
                    it.iov[it.nseg + 1].iov_len = payload
                    it.nseg += 1
                    it.total += payload
                    it.last = payload
                    co.merged += 1
                    if it.proto == 6:
                        it.next_seq = it.next_seq + <uint32_t>payload
                        it.last_flags = p[33]
                        if p[33] & TCP_PSH:
                            it.open = 0
                    return
                break
            i -= 1
    if co.n_items >= MAX_ITEMS:
        co_flush(co, tun_fd)
    it = &co.items[co.n_items]
    co.n_items += 1
    it.has_key = has_key
    if has_key:
        memcpy(it.key, key, 13)
    it.proto = p[9]
    it.first = p
    it.first_len = <int>n
    it.nseg = 1
    it.open = ok
    it.total = <int>n
    it.iov[1].iov_base = p
    it.iov[1].iov_len = n
    it.big = big > 0
    if big:
        it.gso = big            # one segment, closed: the kernel splits it
        it.last = big
        it.last_flags = p[33]
        co.resegmented += 1
    elif ok:
        hl = 20 + ((p[32] >> 4) * 4 if it.proto == 6 else 8)
        it.gso = <int>n - hl
        it.last = it.gso
        if it.proto == 6:
            it.next_seq = be32(&p[24]) + <uint32_t>it.gso
            it.last_flags = p[33]
            it.open = p[33] == TCP_ACK


cdef int co_render(coitem_t *it) noexcept nogil:
    """Fill it.vnet (and patch the first packet's headers for a GSO write);
    the number of iovecs of the write."""
    cdef uint8_t *f = it.first
    cdef int l4, at
    cdef uint16_t c
    memset(it.vnet, 0, 10)
    it.iov[0].iov_base = it.vnet
    it.iov[0].iov_len = 10
    if it.nseg == 1 and not it.big:
        return 2
    put16(&f[2], <uint16_t>it.total)
    ip_header_csum(f, 20)
    if it.proto == 6:
        l4 = (f[32] >> 4) * 4
        f[33] = <uint8_t>it.last_flags
        at = 16
        it.vnet[1] = GSO_TCPV4
    else:
        l4 = 8
        put16(&f[24], <uint16_t>(it.total - 20))
        at = 6
        it.vnet[1] = GSO_UDP_L4
    # NEEDS_CSUM: the field holds the folded pseudo-header sum.
    c = csum_fold(pseudo_sum(f, <uint8_t>it.proto, <uint32_t>(it.total - 20)))
    put16(&f[20 + at], c)
    it.vnet[0] = F_NEEDS_CSUM
    put16_host(&it.vnet[2], <uint16_t>(20 + l4))
    put16_host(&it.vnet[4], <uint16_t>it.gso)
    put16_host(&it.vnet[6], 20)
    put16_host(&it.vnet[8], <uint16_t>at)
    return it.nseg + 1


cdef void co_flush(coalescer_t *co, int tun_fd) noexcept nogil:
    """Write every item to the TUN, in the order they were opened, and start
    afresh; co.failed counts the segments of failed writes."""
    cdef int i, cnt
    for i in range(co.n_items):
        cnt = co_render(&co.items[i])
        if writev(tun_fd, co.items[i].iov, cnt) < 0:
            co.failed += co.items[i].nseg
    co.n_items = 0
