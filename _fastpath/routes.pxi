# The peer/route table (included by fastpath.pyx).
#
# One table is immutable once published: set_peers() builds a new one and
# swaps the pointer. Per-peer counters live in pstats_t blocks that a new
# table adopts from the old one by pointer, so an increment made through the
# old table while a worker thread still holds it is never lost. A retired
# table is freed only when no worker can still hold it (see Engine.reclaim).

cdef struct pstats_t:
    uint64_t tx_packets
    uint64_t tx_bytes
    uint64_t rx_packets
    uint64_t rx_bytes

cdef struct peer_t:
    uint32_t ip
    uint16_t port
    uint32_t net
    uint32_t mask
    int length
    uint8_t mac[6]
    int has_mac
    pstats_t *st
    int own_st          # this table frees st (not adopted by a newer table)

cdef struct route_t:
    uint32_t net
    int32_t peer

cdef struct group_t:        # all routes of one prefix length, sorted by net
    uint32_t mask
    int start
    int end

cdef struct table_t:
    int n_peers
    peer_t *peers
    route_t *routes
    int n_groups
    group_t groups[33]
    route_t *by_ip             # (ip, peer) sorted by ip, for source checks
    int n_by_ip


cdef inline uint32_t mask_of(int length) noexcept nogil:
    if length == 0:
        return 0
    return (<uint32_t>0xFFFFFFFF) << (32 - length)


cdef inline uint32_t be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef int search(const route_t *r, int lo, int hi, uint32_t key) noexcept nogil:
    """Binary search of key in r[lo:hi] (sorted by net); peer index or -1."""
    cdef int mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if r[mid].net < key:
            lo = mid + 1
        elif r[mid].net > key:
            hi = mid
        else:
            return r[mid].peer
    return -1


cdef int lookup_in(const table_t *t, uint32_t addr) noexcept nogil:
    """Longest-prefix match in t: peer index or -1."""
    cdef int g, r
    for g in range(t.n_groups):
        r = search(t.routes, t.groups[g].start, t.groups[g].end, addr & t.groups[g].mask)
        if r >= 0:
            return r
    return -1


cdef void free_table(table_t *t) noexcept nogil:
    cdef int i
    if t != NULL:
        if t.peers != NULL:
            for i in range(t.n_peers):
                if t.peers[i].own_st:
                    free(t.peers[i].st)
        free(t.peers)
        free(t.routes)
        free(t.by_ip)
        free(t)
