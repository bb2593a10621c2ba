# The peer/route table (included by core.pyx). Mirrors
# udpoverlay/dataplane/_py/routes.py.
#
# One table is immutable once published: set_peers() builds a new one and
# swaps the pointer. Per-peer counters live in pstats_t blocks that a new
# table adopts from the old one by pointer, so an increment made through the
# old table while a worker thread still holds it is never lost. A retired
# table is freed only when no worker can still hold it (see Core.reclaim).

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


cdef table_t *build_table(list specs, table_t *old) except NULL:
    """A new table from [(ip, port, net, length, mac or None)] (the facade
    validated them). Peers also in `old` (same ip, port, net, length) adopt
    its counters, and its learned MAC if the spec names none. `old` stays
    usable: only the ownership of adopted counters moves."""
    cdef int n = len(specs)
    cdef int i, k, g, last_len
    cdef uint32_t last_net
    cdef peer_t *p
    cdef peer_t *q
    cdef table_t *t = <table_t *>calloc(1, sizeof(table_t))
    if t == NULL:
        raise MemoryError()
    t.peers = <peer_t *>calloc(n if n else 1, sizeof(peer_t))
    t.routes = <route_t *>calloc(n if n else 1, sizeof(route_t))
    t.by_ip = <route_t *>calloc(n if n else 1, sizeof(route_t))
    if t.peers == NULL or t.routes == NULL or t.by_ip == NULL:
        free_table(t)
        raise MemoryError()
    t.n_peers = n
    prev = {}
    adopted = []
    for i in range(old.n_peers):
        q = &old.peers[i]
        prev.setdefault((q.ip, q.port, q.net, q.length), i)
    for i, (ip, port, net, length, mac) in enumerate(specs):
        p = &t.peers[i]
        p.ip = ip
        p.port = port
        p.net = net
        p.length = length
        p.mask = mask_of(length)
        p.has_mac = 0
        if mac is not None:
            if len(mac) != 6:
                free_table(t)
                raise ValueError("vtep mac must be 6 bytes")
            memcpy(p.mac, <const char *>mac, 6)
            p.has_mac = 1
        j = prev.pop((ip, port, net, length), None)
        if j is not None:
            q = &old.peers[<int>j]
            if not p.has_mac and q.has_mac:
                # A MAC learned by ARP survives a swap that does not name one.
                memcpy(p.mac, q.mac, 6)
                p.has_mac = 1
            # Counters are adopted, not copied: increments made through the
            # old table by a worker still holding it are kept. Ownership
            # moves below, once nothing can fail any more.
            p.st = q.st
            adopted.append((i, j))
        else:
            p.st = <pstats_t *>calloc(1, sizeof(pstats_t))
            p.own_st = 1
            if p.st == NULL:
                free_table(t)
                raise MemoryError()
    # Routes grouped by prefix length (longest first), sorted by net; the
    # first peer wins on a duplicate, as in the reference.
    k = 0
    g = -1
    last_len = -1
    last_net = 0
    for neg_len, net, i in sorted((-s[3], s[2], i) for i, s in enumerate(specs)):
        if -neg_len != last_len:
            g += 1
            t.groups[g].mask = mask_of(-neg_len)
            t.groups[g].start = k
            last_len = -neg_len
        elif k > t.groups[g].start and net == last_net:
            continue
        t.routes[k].net = net
        t.routes[k].peer = i
        last_net = net
        k += 1
        t.groups[g].end = k
    t.n_groups = g + 1
    k = 0
    last_net = 0
    for ip, i in sorted((s[0], i) for i, s in enumerate(specs)):
        if k > 0 and ip == last_net:
            continue
        t.by_ip[k].net = ip
        t.by_ip[k].peer = i
        last_net = ip
        k += 1
    t.n_by_ip = k
    for i, j in adopted:
        t.peers[<int>i].own_st = 1
        old.peers[<int>j].own_st = 0
    return t
