# Incoming: wire -> TUN (included by core.pyx). Mirrors
# udpoverlay/dataplane/_py/incoming.py.
#
# Receive a batch with recvmmsg, accept each datagram only from a known peer
# and only for our subnet (source inside the peer's subnet, no spoofing),
# answer ARP for our VTEP (vxlan) and write the inner packets to the TUN.
# With UDP_GRO on the socket a received datagram may hold several GRO
# segments: each is checked alone; accepted ones are coalesced into GSO
# writes (offload.pxi) when the TUN has a vnet header, else each is written
# on its own.
#
# Only this direction touches rx_t, so run_rx may run on its own thread.


cdef struct rx_t:
    # counters, written by the RX side only
    uint64_t packets, bytes
    uint64_t verdicts[N_VERDICTS]
    uint64_t csum_partial        # partial inner checksums finished
    uint64_t mac_changed         # learned VTEP MACs replaced
    int shared                   # other queues' workers count into the same peers
    uint8_t *split               # oversized packets' segments (SPLIT_BUF), set_tun_mtu
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
    free(rx.split)
    rx.slots = NULL
    rx.co.items = NULL
    rx.split = NULL


# -- per datagram ----------------------------------------------------------------------
cdef inline void learn_c(rx_t *rx, peer_t *p, const uint8_t *mac) noexcept nogil:
    """Take mac as peer p's VTEP MAC unless configured or multicast; a
    different known one is replaced and counted (learned MACs keep being
    re-validated: a forged or stale one cannot stick). A TX thread may read
    a half-written MAC for a frame or two during a change: that frame is
    dropped by the peer, as one sent to the old MAC would be."""
    if p.mac_fixed or (mac[0] & 1):
        return
    if p.has_mac:
        if memcmp(p.mac, mac, 6) == 0:
            return
        rx.mac_changed += 1
        memcpy(p.mac, mac, 6)
        return
    memcpy(p.mac, mac, 6)
    uo_barrier()        # the TX side tests has_mac, then reads mac
    p.has_mac = 1


cdef int arp_c(const cfg_t *c, rx_t *rx, table_t *t, const uint8_t *d, Py_ssize_t n,
               int lo, int hi) noexcept nogil:
    """Answer ARP requests for our VTEP address; learn a peer's MAC from its
    own ARP, request or reply (sender = that peer's VTEP address only: no
    poisoning others). by_ip[lo:hi] are the peers of the sender's address."""
    cdef const uint8_t *a = d + VXLAN_HDR
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
    for i in range(lo, hi):
        if t.peers[t.by_ip[i].peer].net == spa:
            learn_c(rx, &t.peers[t.by_ip[i].peer], &a[8])
            break
    if a[6] == 0 and a[7] == 1 and be32(&a[24]) == c.tun_addr:
        vxlan_hdr(c, rx.reply, &a[8], 0x0806)
        arp_body(c, &rx.reply[VXLAN_HDR], 2, &a[8], spa)
        rx.reply_len = VXLAN_HDR + ARP_LEN
    return ARP


cdef int inner_c(const cfg_t *c, const table_t *t, const uint8_t *d, Py_ssize_t n,
                 int lo, int hi, int *peer) noexcept nogil:
    """Verdict for an inner packet from one of the peers by_ip[lo:hi]; peer =
    the first whose subnet holds its source."""
    cdef int v, i
    cdef uint32_t src
    cdef const peer_t *p
    v = check_ipv4(d, n)
    if v != OK:
        return v
    src = be32(&d[12])
    for i in range(lo, hi):
        p = &t.peers[t.by_ip[i].peer]
        if (src & p.mask) == p.net:
            peer[0] = t.by_ip[i].peer
            break
    else:
        return SPOOFED_SRC
    if (be32(&d[16]) & c.local_mask) != c.local_net:
        return NOT_LOCAL
    if d[8] == 0:
        return TTL_EXPIRED
    return OK


cdef int inbound_c(const cfg_t *c, rx_t *rx, table_t *t, const uint8_t *d, Py_ssize_t n,
                   uint32_t src, uint16_t sport, int *peer) noexcept nogil:
    """Verdict for one datagram from src:sport; rx.inner_off = where its
    inner packet starts, peer = the peer it is counted for (or -1)."""
    cdef int lo = by_ip_first(t, src)
    cdef int hi = lo
    cdef int v
    peer[0] = -1
    rx.reply_len = 0
    rx.inner_off = 0
    while hi < t.n_by_ip and t.by_ip[hi].net == src:
        hi += 1
    if lo == hi:
        return UNKNOWN_PEER
    if c.mode == MODE_UDP:
        # Peers send from their configured port (flannel's proxy too):
        # anything else from that host is some other process.
        while lo < hi and t.peers[t.by_ip[lo].peer].port != sport:
            lo += 1
        v = lo
        while v < hi and t.peers[t.by_ip[v].peer].port == sport:
            v += 1
        if lo == v:
            return BAD_PORT
        if n < IPV4_MIN:
            peer[0] = t.by_ip[lo].peer   # a NAT keepalive: counted for it, not written
            return KEEPALIVE
        return inner_c(c, t, d, n, lo, v, peer)
    if n < IPV4_MIN:
        peer[0] = t.by_ip[lo].peer
        return KEEPALIVE
    if n < VXLAN_HDR:
        return TOO_SHORT
    if not (d[0] & 0x08):
        return BAD_VXLAN
    if ((<uint32_t>d[4] << 16) | (<uint32_t>d[5] << 8) | d[6]) != c.vni:
        return BAD_VNI
    if d[20] == 0x08 and d[21] == 0x06:
        return arp_c(c, rx, t, d, n, lo, hi)
    if d[20] != 0x08 or d[21] != 0x00:
        return NOT_IPV4
    if memcmp(&d[8], c.mac, 6) != 0:
        return WRONG_MAC
    rx.inner_off = VXLAN_HDR
    v = inner_c(c, t, d + VXLAN_HDR, n - VXLAN_HDR, lo, hi, peer)
    if v == OK:
        learn_c(rx, &t.peers[peer[0]], &d[14])
    return v


cdef void finish_partial(rx_t *rx, uint8_t *p, Py_ssize_t n) noexcept nogil:
    """An accepted inner packet whose TCP/UDP checksum field holds the
    pseudo-header partial sum and does not verify (a kernel sender's
    checksum offload left it unfinished): finish it in place, count it.
    Anything else is left as it is (the kernel checks it)."""
    cdef int ihl = (p[0] & 0x0F) * 4
    cdef uint8_t proto = p[9]
    cdef Py_ssize_t at
    cdef uint16_t field, s
    cdef uint64_t ps
    if proto == 6:
        at = ihl + 16
        if n < ihl + 20:
            return
    elif proto == 17:
        at = ihl + 6
        if n < ihl + 8:
            return
    else:
        return
    if ((p[6] << 8) | p[7]) & 0x3FFF:
        return
    field = (p[at] << 8) | p[at + 1]
    ps = pseudo_sum(p, proto, <uint32_t>(n - ihl))
    if (proto == 17 and field == 0) or field != csum_fold(ps):
        return
    if csum_fold(ps + csum_add(p + ihl, n - ihl, 0)) == 0xFFFF:
        return
    s = csum(p + ihl, n - ihl)      # the field already holds the pseudo-header sum
    if s == 0 and proto == 17:
        s = 0xFFFF
    put16(p + at, s)
    rx.csum_partial += 1


cdef inline void count_in(rx_t *rx, const table_t *t, int v, int idx,
                          Py_ssize_t n) noexcept nogil:
    cdef pstats_t *st
    if v == OK:
        st = t.peers[idx].st
        if rx.shared:
            uo_add(&st.rx_packets, 1)
            uo_add(&st.rx_bytes, n)
        else:
            st.rx_packets += 1
            st.rx_bytes += n
        rx.packets += 1
        rx.bytes += n
    else:
        if v == KEEPALIVE and idx >= 0:
            uo_add(&t.peers[idx].st.rx_keepalive, 1)
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
        if c.udp_gro:
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


# -- TUN writes without a vnet header: one per accepted packet ---------------------------
cdef void write_plain(rx_t *rx, const uint8_t *p, Py_ssize_t n, int tun_fd) noexcept nogil:
    """Write an accepted packet; an oversized one (oversize_gso) as
    MTU-sized segments, counted."""
    cdef int gso = oversize_gso(p, n, rx.co.mtu) if rx.split != NULL else 0
    cdef int nseg, i, stride = 0, last = 0
    if not gso:
        if write(tun_fd, p, n) < 0:
            rx.verdicts[TX_ERROR] += 1
        return
    rx.co.resegmented += 1
    nseg = split_c(p, n, GSO_TCPV4, gso, rx.split, 0, &stride, &last)
    for i in range(nseg):
        if write(tun_fd, rx.split + <size_t>i * stride, stride if i < nseg - 1 else last) < 0:
            rx.verdicts[TX_ERROR] += 1


# -- the loop ---------------------------------------------------------------------------------
cdef void rx_datagram(const cfg_t *c, rx_t *rx, uint8_t *d, Py_ssize_t n, uint32_t src,
                      uint16_t sport, int gro, int tun_fd, int sock_fd,
                      const sockaddr_in *addr) noexcept nogil:
    """One received datagram (GRO: several segments of `gro` bytes): check
    each segment, answer ARP to addr, hand accepted packets to the
    coalescer (vnet header) or write each to the TUN."""
    cdef Py_ssize_t step = gro if 0 < gro < n else n
    cdef Py_ssize_t off = 0, seg_n
    cdef int v, idx
    cdef table_t *t = c.table
    while True:
        seg_n = n - off
        if seg_n > step:
            seg_n = step
        v = inbound_c(c, rx, t, d + off, seg_n, src, sport, &idx)
        count_in(rx, t, v, idx, seg_n - rx.inner_off)
        if rx.reply_len:
            if sendto(sock_fd, rx.reply, rx.reply_len, 0, addr, sizeof(sockaddr_in)) < 0:
                rx.verdicts[TX_ERROR] += 1
        if v == OK:
            finish_partial(rx, d + off + rx.inner_off, seg_n - rx.inner_off)
            if c.vnet_hdr:
                co_add(&rx.co, d + off + rx.inner_off, seg_n - rx.inner_off, tun_fd)
            else:
                write_plain(rx, d + off + rx.inner_off, seg_n - rx.inner_off, tun_fd)
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


cdef int udp_to_tun_c(const cfg_t *c, rx_t *rx, int sock_fd, int tun_fd) noexcept nogil:
    """Drain the socket (at most MAX_ROUNDS batches); the number of datagrams."""
    cdef int done = 0, rounds, got, i
    for rounds in range(MAX_ROUNDS):
        got = rx_recv(c, rx, sock_fd)
        if got <= 0:
            break
        for i in range(got):
            rx_datagram(c, rx, rx.slots + <size_t>i * STRIDE, rx.msgs[i].msg_len,
                        ntohl(rx.addrs[i].sin_addr.s_addr), ntohs(rx.addrs[i].sin_port),
                        gro_size(&rx.msgs[i]) if c.udp_gro else 0, tun_fd, sock_fd,
                        &rx.addrs[i])
        if c.vnet_hdr:
            co_flush(&rx.co, tun_fd)
        done += got
        if got < BATCH:
            break
    rx.verdicts[TX_ERROR] += rx.co.failed
    rx.co.failed = 0
    return done

