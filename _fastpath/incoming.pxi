# Incoming: wire -> TUN (included by core.pyx). Mirrors
# udpoverlay/dataplane/_py/incoming.py.
#
# Receive a batch with recvmmsg, accept each datagram only from a known peer
# and only for our subnet (source inside the peer's subnet, no spoofing),
# answer ARP for our VTEP (vxlan) and write the inner packets to the TUN.
# With offloads a received datagram may hold several GRO segments: each is
# checked alone, accepted ones are coalesced into GSO writes (offload.pxi).
#
# Only this direction touches rx_t, so run_rx may run on its own thread.


cdef struct rx_t:
    # counters, written by the RX side only
    uint64_t packets, bytes
    uint64_t verdicts[N_VERDICTS]
    # scratch
    uint8_t *slots
    iovec iov[BATCH]
    mmsghdr msgs[BATCH]
    sockaddr_in addrs[BATCH]
    uint8_t cmsg[BATCH][RX_CMSG]
    uint8_t reply[REPLY_MAX]     # ARP reply to the sender, reply_len bytes
    int reply_len
    Py_ssize_t inner_off         # where the last datagram's inner packet starts
    coalescer_t co               # items allocated by set_offload


cdef void rx_free(rx_t *rx) noexcept nogil:
    free(rx.slots)
    free(rx.co.items)
    rx.slots = NULL
    rx.co.items = NULL


# -- per datagram ----------------------------------------------------------------------
cdef int arp_c(const cfg_t *c, rx_t *rx, table_t *t, const uint8_t *d, Py_ssize_t n,
               int idx) noexcept nogil:
    """Answer ARP requests for our VTEP address; learn the peer's MAC from
    its own ARP (sender = its VTEP address only: no poisoning others)."""
    cdef const uint8_t *a = d + VXLAN_HDR
    cdef peer_t *p = &t.peers[idx]
    cdef uint32_t spa
    cdef int i
    cdef bint bcast = True
    if n < VXLAN_HDR + ARP_LEN:
        return TOO_SHORT
    for i in range(6):
        if d[8 + i] != 0xFF:
            bcast = False
    if not bcast and memcmp(&d[8], c.mac, 6) != 0:
        return WRONG_MAC
    if not (a[0] == 0 and a[1] == 1 and a[2] == 8 and a[3] == 0 and a[4] == 6 and a[5] == 4):
        return BAD_HEADER
    spa = be32(&a[14])
    if spa == p.net and not (a[8] & 1) and not p.has_mac:
        memcpy(p.mac, &a[8], 6)
        uo_barrier()        # the TX side tests has_mac, then reads mac
        p.has_mac = 1
    if a[6] == 0 and a[7] == 1 and be32(&a[24]) == c.tun_addr:
        vxlan_hdr(c, rx.reply, &a[8], 0x0806)
        arp_body(c, &rx.reply[VXLAN_HDR], 2, &a[8], spa)
        rx.reply_len = VXLAN_HDR + ARP_LEN
    return ARP


cdef int inner_c(const cfg_t *c, const table_t *t, const uint8_t *d, Py_ssize_t n,
                 int idx) noexcept nogil:
    """Verdict for the inner packet from peer idx."""
    cdef int v
    cdef const peer_t *p
    v = check_ipv4(d, n)
    if v != OK:
        return v
    p = &t.peers[idx]
    if (be32(&d[12]) & p.mask) != p.net:
        return SPOOFED_SRC
    if (be32(&d[16]) & c.local_mask) != c.local_net:
        return NOT_LOCAL
    if d[8] == 0:
        return TTL_EXPIRED
    return OK


cdef int inbound_c(const cfg_t *c, rx_t *rx, table_t *t, const uint8_t *d, Py_ssize_t n,
                   uint32_t src, int *peer) noexcept nogil:
    """Verdict for one datagram; rx.inner_off = where its inner packet starts."""
    cdef int idx = search(t.by_ip, 0, t.n_by_ip, src)
    peer[0] = idx
    rx.reply_len = 0
    rx.inner_off = 0
    if idx < 0:
        return UNKNOWN_PEER
    if c.mode == MODE_UDP:
        return inner_c(c, t, d, n, idx)
    if n < VXLAN_HDR:
        return TOO_SHORT
    if not (d[0] & 0x08):
        return BAD_VXLAN
    if ((<uint32_t>d[4] << 16) | (<uint32_t>d[5] << 8) | d[6]) != c.vni:
        return BAD_VNI
    if d[20] == 0x08 and d[21] == 0x06:
        return arp_c(c, rx, t, d, n, idx)
    if d[20] != 0x08 or d[21] != 0x00:
        return NOT_IPV4
    if memcmp(&d[8], c.mac, 6) != 0:
        return WRONG_MAC
    rx.inner_off = VXLAN_HDR
    return inner_c(c, t, d + VXLAN_HDR, n - VXLAN_HDR, idx)


cdef inline void count_in(rx_t *rx, const table_t *t, int v, int idx,
                          Py_ssize_t n) noexcept nogil:
    cdef pstats_t *st
    if v == OK:
        st = t.peers[idx].st
        st.rx_packets += 1
        st.rx_bytes += n
        rx.packets += 1
        rx.bytes += n
    else:
        rx.verdicts[v] += 1


# -- receiving ------------------------------------------------------------------------------
cdef inline void rx_prepare(const cfg_t *c, rx_t *rx) noexcept nogil:
    cdef int i
    for i in range(BATCH):
        rx.iov[i].iov_base = rx.slots + <size_t>i * STRIDE
        rx.iov[i].iov_len = SLOT
        memset(&rx.msgs[i], 0, sizeof(mmsghdr))
        rx.msgs[i].msg_hdr.msg_name = &rx.addrs[i]
        rx.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        rx.msgs[i].msg_hdr.msg_iov = &rx.iov[i]
        rx.msgs[i].msg_hdr.msg_iovlen = 1
        if c.vnet_hdr:
            rx.msgs[i].msg_hdr.msg_control = rx.cmsg[i]
            rx.msgs[i].msg_hdr.msg_controllen = RX_CMSG


cdef int rx_recv(const cfg_t *c, rx_t *rx, int sock_fd) noexcept nogil:
    """One recvmmsg of up to BATCH datagrams into the RX slots (with room
    for a UDP_GRO cmsg each when offloading); their number, or <= 0."""
    cdef int got
    while True:
        rx_prepare(c, rx)
        got = recvmmsg(sock_fd, rx.msgs, BATCH, MSG_DONTWAIT, NULL)
        if got >= 0 or errno != EINTR:
            return got


# -- the loop without offloads: one datagram = one packet = one TUN write ---------------------
cdef int udp_to_tun_plain(const cfg_t *c, rx_t *rx, int sock_fd, int tun_fd) noexcept nogil:
    cdef int done = 0, rounds, got, i, idx, v
    cdef Py_ssize_t n
    cdef uint8_t *slot
    cdef table_t *t
    for rounds in range(MAX_ROUNDS):
        got = rx_recv(c, rx, sock_fd)
        if got <= 0:
            break
        for i in range(got):
            slot = rx.slots + <size_t>i * STRIDE
            n = rx.msgs[i].msg_len
            t = c.table
            v = inbound_c(c, rx, t, slot, n, ntohl(rx.addrs[i].sin_addr.s_addr), &idx)
            count_in(rx, t, v, idx, n - rx.inner_off)
            if rx.reply_len:
                if sendto(sock_fd, rx.reply, rx.reply_len, 0, &rx.addrs[i],
                          sizeof(sockaddr_in)) < 0:
                    rx.verdicts[TX_ERROR] += 1
            if v == OK:
                if write(tun_fd, slot + rx.inner_off, n - rx.inner_off) < 0:
                    rx.verdicts[TX_ERROR] += 1
        done += got
        if got < BATCH:
            break
    return done


# -- the loop with offloads ----------------------------------------------------------------------
cdef void rx_datagram(const cfg_t *c, rx_t *rx, uint8_t *d, Py_ssize_t n, uint32_t src, int gro,
                      int tun_fd, int sock_fd, const sockaddr_in *addr) noexcept nogil:
    """One received datagram (GRO: several segments of `gro` bytes): check
    each segment, answer ARP to addr, hand accepted packets to the
    coalescer."""
    cdef Py_ssize_t step = gro if 0 < gro < n else n
    cdef Py_ssize_t off = 0, seg_n
    cdef int v, idx
    cdef table_t *t = c.table
    while True:
        seg_n = n - off
        if seg_n > step:
            seg_n = step
        v = inbound_c(c, rx, t, d + off, seg_n, src, &idx)
        count_in(rx, t, v, idx, seg_n - rx.inner_off)
        if rx.reply_len:
            if sendto(sock_fd, rx.reply, rx.reply_len, 0, addr, sizeof(sockaddr_in)) < 0:
                rx.verdicts[TX_ERROR] += 1
        if v == OK:
            co_add(&rx.co, d + off + rx.inner_off, seg_n - rx.inner_off, tun_fd)
        off += step
        if off >= n:
            break


cdef inline int gro_size(mmsghdr *m) noexcept nogil:
    """The UDP_GRO segment size a received datagram carries, or 0."""
    cdef int gro = 0
    cdef cmsghdr *cm = CMSG_FIRSTHDR(&m.msg_hdr)
    while cm != NULL:
        if cm.cmsg_level == SOL_UDP and cm.cmsg_type == UDP_GRO:
            memcpy(&gro, CMSG_DATA(cm), sizeof(int))
        cm = CMSG_NXTHDR(&m.msg_hdr, cm)
    return gro


cdef int udp_to_tun_vnet(const cfg_t *c, rx_t *rx, int sock_fd, int tun_fd) noexcept nogil:
    cdef int done = 0, rounds, got, i
    for rounds in range(MAX_ROUNDS):
        got = rx_recv(c, rx, sock_fd)
        if got <= 0:
            break
        for i in range(got):
            rx_datagram(c, rx, rx.slots + <size_t>i * STRIDE, rx.msgs[i].msg_len,
                        ntohl(rx.addrs[i].sin_addr.s_addr), gro_size(&rx.msgs[i]), tun_fd,
                        sock_fd, &rx.addrs[i])
        co_flush(&rx.co, tun_fd)
        done += got
        if got < BATCH:
            break
    rx.verdicts[TX_ERROR] += rx.co.failed
    rx.co.failed = 0
    return done


cdef int udp_to_tun_c(const cfg_t *c, rx_t *rx, int sock_fd, int tun_fd) noexcept nogil:
    """Drain the socket (at most MAX_ROUNDS batches); the number of datagrams."""
    if c.vnet_hdr:
        return udp_to_tun_vnet(c, rx, sock_fd, tun_fd)
    return udp_to_tun_plain(c, rx, sock_fd, tun_fd)
