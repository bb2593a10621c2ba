# What both directions check and build (included by core.pyx): the IPv4
# header check, the flow hash, the VXLAN header and the ARP body. Mirrors
# udpoverlay/dataplane/_py/frames.py.


cdef int check_ipv4(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """Verdict for a buffer that should hold exactly one IPv4 packet."""
    cdef int ihl, total
    if n < 20:
        return TOO_SHORT
    if (p[0] >> 4) != 4:
        return NOT_IPV4
    ihl = (p[0] & 0x0F) * 4
    total = (p[2] << 8) | p[3]
    if ihl < 20 or total != n or ihl > total:
        return BAD_HEADER
    return OK


cdef uint32_t flow_hash_c(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """FNV-1a (32 bit) of the inner flow: addresses, protocol and, for an
    unfragmented TCP/UDP/SCTP packet, the ports. Picks the VXLAN source
    socket (RFC 7348 section 5) so that one flow keeps one underlay path.
    Caller guarantees a valid IPv4 header."""
    cdef uint32_t h = 0x811C9DC5
    cdef int ihl = (p[0] & 0x0F) * 4
    cdef int i
    for i in range(12, 20):
        h = (h ^ p[i]) * 0x01000193
    h = (h ^ p[9]) * 0x01000193
    if (p[9] == 6 or p[9] == 17 or p[9] == 132) and ((((p[6] << 8) | p[7]) & 0x3FFF) == 0) \
            and n >= ihl + 4:
        for i in range(ihl, ihl + 4):
            h = (h ^ p[i]) * 0x01000193
    return h


cdef inline void vxlan_hdr(const cfg_t *c, uint8_t *h, const uint8_t *dst_mac,
                           uint16_t ethertype) noexcept nogil:
    """VXLAN header (flags I, our VNI) + inner Ethernet header from our VTEP."""
    memset(h, 0, 8)
    h[0] = 0x08
    h[4] = <uint8_t>(c.vni >> 16)
    h[5] = <uint8_t>(c.vni >> 8)
    h[6] = <uint8_t>c.vni
    memcpy(&h[8], dst_mac, 6)
    memcpy(&h[14], c.mac, 6)
    put16(&h[20], ethertype)


cdef inline void arp_body(const cfg_t *c, uint8_t *a, int op, const uint8_t *tha,
                          uint32_t tpa) noexcept nogil:
    """ARP for IPv4 over Ethernet from our VTEP (MAC, overlay address)."""
    a[0] = 0; a[1] = 1; a[2] = 8; a[3] = 0; a[4] = 6; a[5] = 4; a[6] = 0
    a[7] = <uint8_t>op
    memcpy(&a[8], c.mac, 6)
    put32(&a[14], c.tun_addr)
    if tha == NULL:
        memset(&a[18], 0, 6)
    else:
        memcpy(&a[18], tha, 6)
    put32(&a[24], tpa)
