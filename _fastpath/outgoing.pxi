# Outgoing: TUN -> wire (included by core.pyx). Mirrors
# udpoverlay/dataplane/_py/outgoing.py.
#
# Read a batch from the TUN into slots that leave headroom in front of each
# packet, give every packet a verdict (route, TTL, ICMP error back to the
# TUN), write the outer headers into the headroom, and send the batch with
# sendmmsg: per source socket, in order. With offloads a TUN read is a
# super-packet behind a virtio_net_hdr: it is split into the TX arena and
# its segments are packed into UDP_SEGMENT messages (offload.pxi). A plain
# TUN's packets (one per read, in the slots) are packed the same way when
# the socket takes UDP_SEGMENT: the same wire datagrams, one kernel send
# per message instead of one per packet.
#
# Only this direction touches tx_t, so run_tx may run on its own thread.
# A full socket buffer is waited for at most MAX_WAITS times WAIT_MS per
# batch and socket; messages that still do not fit count as tx_error.
#
# With io_uring (Core.set_io) a round's TUN reads are queued on the ring and
# submitted in one kernel entry (ring_reads); each lands in the slot its
# read() would have used, so everything after the read is the same code.


cdef struct tx_t:
    # counters, written by the TX side only
    uint64_t packets, bytes, icmp_sent, super_packets
    uint64_t gso_messages        # UDP_SEGMENT messages the kernel took
    uint64_t verdicts[N_VERDICTS]
    int shared                   # other queues' workers count into the same peers
    # scratch without offloads: BATCH slots, iovecs, headers, addresses
    uint8_t *slots
    iovec iov[BATCH]
    mmsghdr msgs[BATCH]
    sockaddr_in addrs[BATCH]
    int msg_fd[BATCH]
    mmsghdr grouped[BATCH]
    uint8_t reply[REPLY_MAX]     # ICMP error for the TUN, reply_len bytes
    int reply_len
    # scratch with offloads or UDP GSO (allocated by set_offload; the arena
    # only with the vnet header: a plain TUN's packets stay in their slots)
    txbatch_t b
    mmsghdr *mm
    sockaddr_in *mm_addr
    uint8_t *cmsg
    uint8_t zero_vnet[VNET_HDR_LEN]
    # io_uring: this direction's ring (NULL: read()), reads to queue next
    # round (adaptive), the errno that closed the ring
    uo_ring *ring
    int want
    int ring_err
    uint64_t ring_batches        # submissions that read the TUN through the ring
    iovec uiov[BATCH]
    uo_op uops[BATCH]


cdef int tx_alloc_offload(tx_t *tx, bint arena) noexcept nogil:
    """The packing scratch, and the split arena if asked; 0, or -1 when out
    of memory."""
    if arena and tx.b.arena == NULL:
        tx.b.arena = <uint8_t *>malloc(TX_ARENA)
    if tx.b.msgs == NULL:
        tx.b.msgs = <txmsg_t *>malloc(TX_MSGS * sizeof(txmsg_t))
        tx.mm = <mmsghdr *>calloc(TX_MSGS, sizeof(mmsghdr))
        tx.mm_addr = <sockaddr_in *>calloc(TX_MSGS, sizeof(sockaddr_in))
        tx.cmsg = <uint8_t *>calloc(TX_MSGS, TX_CMSG)
    if ((arena and tx.b.arena == NULL) or tx.b.msgs == NULL or tx.mm == NULL
            or tx.mm_addr == NULL or tx.cmsg == NULL):
        return -1
    return 0


cdef void tx_free(tx_t *tx) noexcept nogil:
    uo_ring_close(tx.ring)
    tx.ring = NULL
    free(tx.slots)
    free(tx.b.arena)
    free(tx.b.msgs)
    free(tx.mm)
    free(tx.mm_addr)
    free(tx.cmsg)
    tx.slots = NULL
    tx.b.arena = NULL
    tx.b.msgs = NULL
    tx.mm = NULL
    tx.mm_addr = NULL
    tx.cmsg = NULL


# -- per packet ------------------------------------------------------------------
cdef int icmp_error(const cfg_t *c, tx_t *tx, const uint8_t *pkt, Py_ssize_t n,
                    int icmp_type) noexcept nogil:
    """Build an ICMP error about pkt into tx.reply; its length or 0 where
    none may be sent (fragments, odd sources, errors about errors)."""
    cdef int ihl = (pkt[0] & 0x0F) * 4
    cdef Py_ssize_t body
    cdef uint8_t t
    cdef uint8_t *r = tx.reply
    tx.reply_len = 0
    if (((pkt[6] & 0x1F) << 8) | pkt[7]) != 0:
        return 0
    if pkt[12] >= 224 or pkt[12] == 0:
        return 0
    if pkt[9] == 1:
        if n < ihl + 1:
            return 0
        t = pkt[ihl]
        if t == 3 or t == 4 or t == 5 or t == 11 or t == 12:
            return 0
    body = ihl + 8
    if body > n:
        body = n
    memset(r, 0, 28)
    r[0] = 0x45
    put16(&r[2], <uint16_t>(28 + body))
    r[8] = ICMP_TTL
    r[9] = 1
    put32(&r[12], c.tun_addr)
    memcpy(&r[16], &pkt[12], 4)
    r[20] = <uint8_t>icmp_type
    memcpy(&r[28], pkt, body)
    put16(&r[22], csum(&r[20], 8 + body))
    put16(&r[10], csum(r, 20))
    tx.icmp_sent += 1
    tx.reply_len = <int>(28 + body)
    return tx.reply_len


cdef int outbound_c(const cfg_t *c, tx_t *tx, const table_t *t, uint8_t *pkt, Py_ssize_t n,
                    int *peer) noexcept nogil:
    """Verdict for one TUN packet; on OK the TTL is decremented in place."""
    cdef int v = check_ipv4(pkt, n)
    cdef uint32_t s
    cdef uint16_t old, new
    peer[0] = -1
    tx.reply_len = 0
    if v != OK:
        return v
    if pkt[8] <= 1:
        icmp_error(c, tx, pkt, n, 11)
        return TTL_EXPIRED
    peer[0] = lookup_in(t, be32(&pkt[16]))
    if peer[0] < 0:
        icmp_error(c, tx, pkt, n, 3)
        return NO_ROUTE
    if c.mode == MODE_VXLAN and not t.peers[peer[0]].has_mac:
        peer[0] = -1
        return UNRESOLVED
    # TTL-1 with an incremental checksum update (RFC 1624, eqn. 3).
    old = (pkt[8] << 8) | pkt[9]
    pkt[8] -= 1
    new = (pkt[8] << 8) | pkt[9]
    s = <uint32_t>(~((pkt[10] << 8) | pkt[11]) & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    put16(&pkt[10], <uint16_t>(~s & 0xFFFF))
    return OK


cdef inline void count_out(tx_t *tx, const table_t *t, int v, int idx,
                           Py_ssize_t n) noexcept nogil:
    cdef pstats_t *st
    if v == OK:
        st = t.peers[idx].st
        if tx.shared:
            uo_add(&st.tx_packets, 1)
            uo_add(&st.tx_bytes, n)
        else:
            st.tx_packets += 1
            st.tx_bytes += n
        tx.packets += 1
        tx.bytes += n
    else:
        tx.verdicts[v] += 1


cdef inline Py_ssize_t encap_c(const cfg_t *c, const table_t *t, uint8_t *pkt,
                               int idx) noexcept nogil:
    """Write the outer headers into the headroom before pkt; their size."""
    if c.mode == MODE_UDP:
        return 0
    vxlan_hdr(c, pkt - VXLAN_HDR, t.peers[idx].mac, 0x0800)
    return VXLAN_HDR


# -- sending -----------------------------------------------------------------------
cdef bint retry_send(int fd, int *waits) noexcept nogil:
    """After a failed send: try again? Yes on EINTR, and on a full socket
    buffer once it drains (waits of WAIT_MS, at most MAX_WAITS per batch)."""
    cdef pollfd p
    if errno == EINTR:
        return True
    if errno != EAGAIN or waits[0] >= MAX_WAITS:
        return False
    waits[0] += 1
    p.fd = fd
    p.events = 4        # POLLOUT
    p.revents = 0
    return poll(&p, 1, WAIT_MS) > 0


cdef void send_all(tx_t *tx, int fd, mmsghdr *msgs, int m) noexcept nogil:
    """sendmmsg one socket's messages of a batch, in order."""
    cdef int i = 0, sent, waits = 0
    while i < m:
        sent = sendmmsg(fd, &msgs[i], m - i, 0)
        if sent < 0:
            if retry_send(fd, &waits):
                continue
            # The first message failed (no route, buffer full): drop it.
            tx.verdicts[TX_ERROR] += 1
            i += 1
        else:
            i += sent


# -- TUN reads through io_uring -------------------------------------------------------
cdef int ring_reads(tx_t *tx, int tun_fd, uint8_t *first, size_t stride,
                    size_t length) noexcept nogil:
    """Queue tx.want reads of the TUN, read i into first + i * stride, and
    submit them in one kernel entry: how many were queued (tx.uops[i].res:
    bytes or -errno each), or -1 when the ring failed or the fd refuses
    RWF_NOWAIT; the ring is then closed and the caller goes on with read()."""
    cdef int i, n = tx.want, rc, got = 0
    if n < 1 or n > BATCH:
        n = BATCH
    for i in range(n):
        tx.uiov[i].iov_base = first + <size_t>i * stride
        tx.uiov[i].iov_len = length
        tx.uops[i].iov = &tx.uiov[i]
        tx.uops[i].iovcnt = 1
    rc = uo_ring_batch(tx.ring, 0, tun_fd, tx.uops, n)
    for i in range(n):
        if tx.uops[i].res >= 0:
            got += 1
    if rc == 0 and got == 0 and (tx.uops[0].res == -EOPNOTSUPP or tx.uops[0].res == -EINVAL):
        rc = tx.uops[0].res
    if rc < 0:
        tx.ring_err = -rc
        uo_ring_close(tx.ring)
        tx.ring = NULL
        return -1
    tx.ring_batches += 1
    # Next round: twice what this one found, so a drained queue costs a few
    # -EAGAIN reads, not a batch of them.
    tx.want = BATCH if 2 * got >= BATCH else (4 if got < 2 else 2 * got)
    return n


cdef inline bint ring_result(tx_t *tx, int i, ssize_t *r) noexcept nogil:
    """Read i of ring_reads: True with r = its length, or False (an empty
    TUN ends the round after this batch; other errors count as tx_error,
    as a failed read() does)."""
    r[0] = tx.uops[i].res
    if r[0] >= 0:
        return True
    if r[0] != -EAGAIN:
        tx.verdicts[TX_ERROR] += 1
    return False


# -- the loop without a vnet header: one TUN read = one packet = one datagram -----------
cdef int tx_plain_one(const cfg_t *c, tx_t *tx, uint8_t *slot, ssize_t r, int tun_fd,
                      int sock_fd, int m, bint packed) noexcept nogil:
    """One packet read into slot: verdict, ICMP error back to the TUN,
    encapsulation in place; then message m of the batch (the next m), or,
    packed, one segment for pack_seg (m unchanged)."""
    cdef int idx, v, sock
    cdef ssize_t h
    cdef peer_t *p
    cdef const table_t *t = c.table
    v = outbound_c(c, tx, t, slot, r, &idx)
    count_out(tx, t, v, idx, r)
    if tx.reply_len:
        write(tun_fd, tx.reply, tx.reply_len)
    if v != OK:
        return m
    p = &t.peers[idx]
    sock = flow_hash_c(slot, r) % c.n_tx if c.n_tx else -1     # -1: the main socket
    h = encap_c(c, t, slot, idx)
    if packed:
        pack_seg(&tx.b, sock, p.ip, p.port, slot - h, <int>(r + h))
        return m
    tx.msg_fd[m] = c.tx_fds[sock] if sock >= 0 else sock_fd
    tx.iov[m].iov_base = slot - h
    tx.iov[m].iov_len = <size_t>(r + h)
    tx.addrs[m].sin_family = AF_INET
    tx.addrs[m].sin_port = htons(p.port)
    tx.addrs[m].sin_addr.s_addr = htonl(p.ip)
    memset(&tx.msgs[m], 0, sizeof(mmsghdr))
    tx.msgs[m].msg_hdr.msg_name = &tx.addrs[m]
    tx.msgs[m].msg_hdr.msg_namelen = sizeof(sockaddr_in)
    tx.msgs[m].msg_hdr.msg_iov = &tx.iov[m]
    tx.msgs[m].msg_hdr.msg_iovlen = 1
    return m + 1


cdef int tun_to_udp_plain(const cfg_t *c, tx_t *tx, int tun_fd, int sock_fd) noexcept nogil:
    cdef int done = 0, rounds, n, m, i, s, k, queued
    cdef ssize_t r
    cdef uint8_t *slot
    cdef bint empty = False, packed
    for rounds in range(MAX_ROUNDS):
        n = 0
        m = 0
        queued = -1
        # UDP GSO (still) on: this round's packets go through pack_seg
        packed = tx.b.gso != 0
        if packed:
            tx_begin(tx)
        if tx.ring != NULL:
            queued = ring_reads(tx, tun_fd, tx.slots + VXLAN_HDR, STRIDE, SLOT)
        for i in range(queued):
            if not ring_result(tx, i, &r):
                empty = True
                continue
            done += 1
            m = tx_plain_one(c, tx, tx.slots + <size_t>i * STRIDE + VXLAN_HDR, r,
                             tun_fd, sock_fd, m, packed)
        while queued < 0 and n < BATCH:
            slot = tx.slots + <size_t>n * STRIDE + VXLAN_HDR
            r = read(tun_fd, slot, SLOT)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:  # EWOULDBLOCK == EAGAIN on Linux
                    tx.verdicts[TX_ERROR] += 1
                empty = True
                break
            n += 1
            done += 1
            m = tx_plain_one(c, tx, slot, r, tun_fd, sock_fd, m, packed)
        if packed:
            tx_send(c, tx, sock_fd)
        elif c.n_tx == 0:
            send_all(tx, sock_fd, tx.msgs, m)
        else:
            # One sendmmsg per source socket; a flow maps to one socket,
            # so per-flow order is kept.
            for s in range(c.n_tx):
                k = 0
                for i in range(m):
                    if tx.msg_fd[i] == c.tx_fds[s]:
                        tx.grouped[k] = tx.msgs[i]
                        k += 1
                if k:
                    send_all(tx, c.tx_fds[s], tx.grouped, k)
        if empty:
            break
    return done


# -- the loop with offloads ---------------------------------------------------------------
cdef void tx_one(const cfg_t *c, tx_t *tx, uint8_t *pkt, Py_ssize_t n, int tun_fd) noexcept nogil:
    """One TUN read (pkt: the packet, its vnet header in the 10 bytes
    before it, VXLAN_HDR - 10 bytes of headroom before that): verdict,
    split, encapsulate, add the segments to the batch. A plain packet is its
    own single segment, in place; a super-packet's segments follow the read
    in the arena."""
    cdef vnet_t vh
    cdef int idx, v, nseg = 1, i, stride = 0, last, sock = -1
    cdef uint8_t *out
    cdef uint8_t *seg
    cdef Py_ssize_t seg_n
    cdef iovec iov[2]
    cdef const table_t *t = c.table
    cdef peer_t *p
    cdef size_t read_end = (tx.b.pos + VXLAN_HDR + <size_t>n + 7) & ~(<size_t>7)
    tx.b.pos = read_end
    read_vnet(pkt - VNET_HDR_LEN, &vh)
    v = outbound_c(c, tx, t, pkt, n, &idx)
    if tx.reply_len:
        iov[0].iov_base = tx.zero_vnet
        iov[0].iov_len = VNET_HDR_LEN
        iov[1].iov_base = tx.reply
        iov[1].iov_len = tx.reply_len
        writev(tun_fd, iov, 2)
    if v == OK:
        if (vh.gso_type & 0x7F) == GSO_NONE:
            if (vh.flags & F_NEEDS_CSUM) and not complete_csum(pkt, n, vh.csum_start,
                                                               vh.csum_offset):
                v = BAD_GSO
            out = pkt - c.room
            last = <int>n + c.room
        else:
            out = tx.b.arena + read_end
            nseg = split_c(pkt, n, vh.gso_type, vh.gso_size, out, c.room, &stride, &last)
            if nseg < 0:
                v = BAD_GSO
            else:
                tx.b.pos = (read_end + <size_t>(nseg - 1) * stride + <size_t>last
                            + 7) & ~(<size_t>7)
    if v != OK:
        tx.verdicts[v] += 1
        return
    p = &t.peers[idx]
    if c.n_tx:
        sock = flow_hash_c(pkt, n) % c.n_tx
    if nseg > 1:
        tx.super_packets += 1
    for i in range(nseg):
        seg = out + <size_t>i * stride
        seg_n = stride if i < nseg - 1 else last
        count_out(tx, t, OK, idx, seg_n - c.room)
        encap_c(c, t, seg + c.room, idx)
        pack_seg(&tx.b, sock, p.ip, p.port, seg, <int>seg_n)


cdef inline void tx_begin(tx_t *tx) noexcept nogil:
    """Start a batch: the arena and the message slots are free again."""
    tx.b.pos = 0
    tx.b.n_msgs = 0


cdef inline void tx_read(const cfg_t *c, tx_t *tx, uint8_t *at, ssize_t r,
                         int tun_fd) noexcept nogil:
    """A TUN read of r bytes whose packet starts at `at`."""
    if r < VNET_HDR_LEN:
        tx.verdicts[TOO_SHORT] += 1
    else:
        tx_one(c, tx, at, r - VNET_HDR_LEN, tun_fd)


cdef inline bint tx_room(const tx_t *tx) noexcept nogil:
    """Room in the batch for one more read's worst split?"""
    return tx.b.n_msgs + MAX_SPLIT <= TX_MSGS


cdef int tun_to_udp_vnet(const cfg_t *c, tx_t *tx, int tun_fd, int sock_fd) noexcept nogil:
    cdef int done = 0, rounds, reads, i, queued
    cdef ssize_t r
    cdef uint8_t *at
    cdef bint empty = False
    for rounds in range(MAX_ROUNDS):
        tx_begin(tx)
        reads = 0
        queued = -1
        if tx.ring != NULL:
            # read i and its split own arena bytes [i * TX_PER_READ, +TX_PER_READ)
            queued = ring_reads(tx, tun_fd, tx.b.arena + VXLAN_HDR - VNET_HDR_LEN,
                                TX_PER_READ, VNET_HDR_LEN + 65535)
        for i in range(queued):
            if not ring_result(tx, i, &r):
                empty = True
                continue
            if not tx_room(tx):     # where read() would have stopped the batch
                tx_send(c, tx, sock_fd)
                tx.b.n_msgs = 0
            done += 1
            tx.b.pos = <size_t>i * TX_PER_READ
            tx_read(c, tx, tx.b.arena + tx.b.pos + VXLAN_HDR, r, tun_fd)
        while queued < 0 and reads < BATCH and tx_room(tx):
            at = tx.b.arena + tx.b.pos + VXLAN_HDR
            r = read(tun_fd, at - VNET_HDR_LEN, VNET_HDR_LEN + 65535)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    tx.verdicts[TX_ERROR] += 1
                empty = True
                break
            reads += 1
            done += 1
            tx_read(c, tx, at, r, tun_fd)
        tx_send(c, tx, sock_fd)
        if empty:
            break
    return done


cdef void tx_send(const cfg_t *c, tx_t *tx, int sock_fd) noexcept nogil:
    """Send the batch's messages: per socket, in order."""
    cdef int s
    if c.n_tx == 0:
        tx_send_group(tx, -1, sock_fd)
    else:
        for s in range(c.n_tx):
            tx_send_group(tx, s, c.tx_fds[s])


cdef void tx_send_group(tx_t *tx, int sock, int fd) noexcept nogil:
    """sendmmsg the batch's messages for one socket, in order."""
    cdef int i, k = 0, sent, waits = 0
    cdef txmsg_t *m
    cdef mmsghdr *mm
    cdef cmsghdr *cm
    cdef uint16_t gso
    for i in range(tx.b.n_msgs):
        m = &tx.b.msgs[i]
        if m.sock != sock:
            continue
        mm = &tx.mm[k]
        memset(mm, 0, sizeof(mmsghdr))
        tx.mm_addr[k].sin_family = AF_INET
        tx.mm_addr[k].sin_port = htons(m.port)
        tx.mm_addr[k].sin_addr.s_addr = htonl(m.ip)
        mm.msg_hdr.msg_name = &tx.mm_addr[k]
        mm.msg_hdr.msg_namelen = sizeof(sockaddr_in)
        mm.msg_hdr.msg_iov = m.iov
        mm.msg_hdr.msg_iovlen = m.nseg
        if m.nseg > 1:
            mm.msg_hdr.msg_control = tx.cmsg + <size_t>k * TX_CMSG
            mm.msg_hdr.msg_controllen = TX_CMSG
            cm = CMSG_FIRSTHDR(&mm.msg_hdr)
            cm.cmsg_level = SOL_UDP
            cm.cmsg_type = UDP_SEGMENT
            cm.cmsg_len = CMSG_LEN(2)
            gso = <uint16_t>m.seg_size
            memcpy(CMSG_DATA(cm), &gso, 2)
        k += 1
    i = 0
    while i < k:
        sent = sendmmsg(fd, &tx.mm[i], k - i, 0)
        if sent >= 0:
            while sent > 0:
                if tx.mm[i].msg_hdr.msg_iovlen > 1:
                    tx.gso_messages += 1
                i += 1
                sent -= 1
            continue
        if retry_send(fd, &waits):
            continue
        mm = &tx.mm[i]
        if mm.msg_hdr.msg_iovlen > 1 and (errno == EIO or errno == EINVAL):
            # The kernel refuses UDP_SEGMENT here (no checksum offload on
            # the route's device): send this one plainly, stop using it.
            tx.b.gso = 0
            send_plain(tx, fd, mm)
        else:
            tx.verdicts[TX_ERROR] += mm.msg_hdr.msg_iovlen
        i += 1


cdef void send_plain(tx_t *tx, int fd, mmsghdr *mm) noexcept nogil:
    """A GSO message's segments one by one (waits: per message)."""
    cdef size_t j
    cdef int waits = 0
    for j in range(mm.msg_hdr.msg_iovlen):
        while True:
            if sendto(fd, mm.msg_hdr.msg_iov[j].iov_base, mm.msg_hdr.msg_iov[j].iov_len,
                      0, mm.msg_hdr.msg_name, mm.msg_hdr.msg_namelen) >= 0:
                break
            if retry_send(fd, &waits):
                continue
            tx.verdicts[TX_ERROR] += 1
            break


cdef int tun_to_udp_c(const cfg_t *c, tx_t *tx, int tun_fd, int sock_fd) noexcept nogil:
    """Drain the TUN (at most MAX_ROUNDS batches); the number of reads."""
    if c.vnet_hdr:
        return tun_to_udp_vnet(c, tx, tun_fd, sock_fd)
    return tun_to_udp_plain(c, tx, tun_fd, sock_fd)
