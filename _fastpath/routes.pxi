# The peer/route table (included by core.pyx). Mirrors
# udpoverlay/dataplane/_py/routes.py.
#
# One table is immutable once published: set_peers() builds a new one and
# swaps the pointer. Per-peer counters live in pstats_t blocks that a new
# table adopts from the old one by pointer, so an increment made through the
# old table while a worker thread still holds it is never lost. A retired
# table is freed only when no worker can still hold it (see Core.reclaim).
#
# Only a peer's learned MAC changes in a published table (written by the RX
# side, see learn_c). A table is built in C from packed records (one qsort
# per index), so set_peers at thousands of peers costs well under a ms.
# by_ip holds EVERY peer (one public IP may own several subnets), ordered
# (ip, port, longest prefix, net, index) like the reference's by_ip lists.

cdef struct pstats_t:
    uint64_t tx_packets
    uint64_t tx_bytes
    uint64_t rx_packets
    uint64_t rx_bytes
    uint64_t rx_keepalive      # NAT keepalives from this peer (liveness, not packets)

cdef struct peer_t:
    uint32_t ip
    uint16_t port
    uint32_t net
    uint32_t mask
    int length
    uint8_t mac[6]
    int has_mac
    int mac_fixed       # configured: never learned over
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
    route_t *by_ip             # (ip, peer) of every peer, sorted by (ip, port, longest
                               # prefix, net, index), for source checks
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


cdef int by_ip_first(const table_t *t, uint32_t ip) noexcept nogil:
    """Index of the first by_ip entry of address ip (t.n_by_ip if none)."""
    cdef int lo = 0, hi = t.n_by_ip, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if t.by_ip[mid].net < ip:
            lo = mid + 1
        else:
            hi = mid
    return lo


# -- building a table: C sorts over small key records, O(n log n), no Python
# objects per peer (set_peers at thousands of peers stays in the low ms).
cdef struct skey_t:
    uint32_t k[4]
    int32_t idx


cdef int cmp_keys(const skey_t *x, const skey_t *y) noexcept nogil:
    cdef int i
    for i in range(4):
        if x.k[i] != y.k[i]:
            return -1 if x.k[i] < y.k[i] else 1
    return 0


cdef int cmp_skey(const void *a, const void *b) noexcept nogil:
    cdef int r = cmp_keys(<const skey_t *>a, <const skey_t *>b)
    if r:
        return r
    return (<const skey_t *>a).idx - (<const skey_t *>b).idx


cdef inline void set_key(skey_t *s, uint32_t a, uint32_t b, uint32_t c, uint32_t d,
                         int idx) noexcept nogil:
    s.k[0] = a
    s.k[1] = b
    s.k[2] = c
    s.k[3] = d
    s.idx = idx


cdef table_t *build_table(const uint8_t *buf, int n, table_t *old) except NULL:
    """A new table from n packed records (wire.PEER_SPEC_FORMAT). Peers also
    in `old` (same ip, port, net, length; the first such old peer, once)
    adopt its counters, and its MAC if the record names none (as a learned
    one). `old` stays usable: only the ownership of adopted counters moves."""
    cdef int i, k, g, lo, hi, mid, nold = old.n_peers
    cdef uint16_t port
    cdef peer_t *p
    cdef peer_t *q
    cdef const uint8_t *r
    cdef skey_t probe
    cdef table_t *t = <table_t *>calloc(1, sizeof(table_t))
    cdef skey_t *keys = <skey_t *>malloc((n if n > nold else nold) * sizeof(skey_t) + 1)
    cdef skey_t *olds = <skey_t *>malloc(nold * sizeof(skey_t) + 1)
    cdef uint8_t *taken = <uint8_t *>calloc(nold + 1, 1)
    cdef int32_t *adopt = <int32_t *>malloc(n * sizeof(int32_t) + 1)
    if t == NULL or keys == NULL or olds == NULL or taken == NULL or adopt == NULL:
        free(t)
        free(keys)
        free(olds)
        free(taken)
        free(adopt)
        raise MemoryError()
    t.peers = <peer_t *>calloc(n if n else 1, sizeof(peer_t))
    t.routes = <route_t *>calloc(n if n else 1, sizeof(route_t))
    t.by_ip = <route_t *>calloc(n if n else 1, sizeof(route_t))
    t.n_peers = n
    try:
        if t.peers == NULL or t.routes == NULL or t.by_ip == NULL:
            raise MemoryError()
        for i in range(nold):
            q = &old.peers[i]
            set_key(&olds[i], q.ip, q.port, q.net, <uint32_t>q.length, i)
        qsort(olds, nold, sizeof(skey_t), cmp_skey)
        for i in range(n):
            r = buf + <size_t>i * PEER_SPEC_LEN
            p = &t.peers[i]
            memcpy(&p.ip, r, 4)
            memcpy(&p.net, r + 4, 4)
            memcpy(&port, r + 8, 2)
            p.port = port
            p.length = r[10]
            if p.length > 32:
                raise ValueError(f"bad prefix length {p.length}")
            p.mask = mask_of(p.length)
            p.has_mac = p.mac_fixed = 1 if r[11] else 0
            if r[11]:
                memcpy(p.mac, r + 12, 6)
            # the first old peer with this key, unless a new peer took it already
            set_key(&probe, p.ip, p.port, p.net, <uint32_t>p.length, 0)
            lo = 0
            hi = nold
            while lo < hi:
                mid = (lo + hi) >> 1
                if cmp_keys(&olds[mid], &probe) < 0:
                    lo = mid + 1
                else:
                    hi = mid
            adopt[i] = -1
            if lo < nold and cmp_keys(&olds[lo], &probe) == 0 and not taken[lo]:
                taken[lo] = 1
                adopt[i] = olds[lo].idx
                q = &old.peers[adopt[i]]
                if not p.has_mac and q.has_mac:
                    # A MAC learned by ARP survives a swap that does not name one.
                    memcpy(p.mac, q.mac, 6)
                    p.has_mac = 1
                # Counters are adopted, not copied: increments made through the
                # old table by a worker still holding it are kept. Ownership
                # moves below, once nothing can fail any more.
                p.st = q.st
            else:
                p.st = <pstats_t *>calloc(1, sizeof(pstats_t))
                if p.st == NULL:
                    raise MemoryError()
                p.own_st = 1
        # Routes grouped by prefix length (longest first), sorted by net; the
        # first peer wins on a duplicate, as in the reference.
        for i in range(n):
            set_key(&keys[i], 32 - <uint32_t>t.peers[i].length, t.peers[i].net, 0, 0, i)
        qsort(keys, n, sizeof(skey_t), cmp_skey)
        k = 0
        g = -1
        for i in range(n):
            if g < 0 or keys[i].k[0] != keys[i - 1].k[0]:
                g += 1
                t.groups[g].mask = mask_of(32 - keys[i].k[0])
                t.groups[g].start = k
            elif keys[i].k[1] == keys[i - 1].k[1]:
                continue
            t.routes[k].net = keys[i].k[1]
            t.routes[k].peer = keys[i].idx
            k += 1
            t.groups[g].end = k
        t.n_groups = g + 1
        # Sources: every peer, by (ip, port, longest prefix, net, index).
        for i in range(n):
            p = &t.peers[i]
            set_key(&keys[i], p.ip, p.port, 32 - <uint32_t>p.length, p.net, i)
        qsort(keys, n, sizeof(skey_t), cmp_skey)
        for i in range(n):
            t.by_ip[i].net = keys[i].k[0]
            t.by_ip[i].peer = keys[i].idx
        t.n_by_ip = n
    except BaseException:
        free_table(t)       # frees only the counters it allocated (own_st)
        free(adopt)
        raise
    finally:
        free(keys)
        free(olds)
        free(taken)
    for i in range(n):
        if adopt[i] >= 0:
            t.peers[i].own_st = 1
            old.peers[adopt[i]].own_st = 0
    free(adopt)
    return t
