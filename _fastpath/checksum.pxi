# Internet checksum (RFC 1071), included by core.pyx; mirrors
# udpoverlay/dataplane/_py/checksum.py. Word at a time: 32-bit loads summed into a
# 64-bit accumulator (no carry can be lost below 2**32 words; gcc vectorises
# the loop). Sums are in host byte order until csum_fold swaps them; partial
# sums may be added together when every part starts at an even offset of the
# checksummed data, which all callers guarantee (headers have even lengths).

cdef extern from "csum.h" nogil:
    # the same sum for long buffers, -O3 and AVX2 where the CPU has it
    uint64_t uo_csum_add_long(const uint8_t *p, Py_ssize_t n, uint64_t s)


cdef inline uint64_t csum_add(const uint8_t *p, Py_ssize_t n, uint64_t s) noexcept nogil:
    cdef uint32_t w
    cdef Py_ssize_t i = 0
    if n >= 256:
        return uo_csum_add_long(p, n, s)
    while i + 4 <= n:
        memcpy(&w, p + i, 4)
        s += w
        i += 4
    if i < n:
        w = 0
        memcpy(&w, p + i, <size_t>(n - i))
        s += w
    return s


cdef inline uint16_t csum_fold(uint64_t s) noexcept nogil:
    """Folded (not inverted) sum as a big-endian 16-bit value."""
    s = (s & <uint64_t>0xFFFFFFFF) + (s >> 32)
    s = (s & <uint64_t>0xFFFFFFFF) + (s >> 32)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    if UO_LITTLE_ENDIAN:
        s = ((s & 0xFF) << 8) | (s >> 8)
    return <uint16_t>s


cdef inline uint16_t csum(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    return <uint16_t>(~csum_fold(csum_add(p, n, 0)) & 0xFFFF)


cdef inline uint64_t pseudo_sum(const uint8_t *ip, uint8_t proto, uint32_t length) noexcept nogil:
    """Sum of the IPv4 pseudo-header (addresses taken from the header at ip)."""
    cdef uint8_t b[12]
    memcpy(b, ip + 12, 8)
    b[8] = 0
    b[9] = proto
    b[10] = <uint8_t>(length >> 8)
    b[11] = <uint8_t>length
    return csum_add(b, 12, 0)


cdef inline void put16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void ip_header_csum(uint8_t *ip, int ihl) noexcept nogil:
    ip[10] = 0
    ip[11] = 0
    put16(&ip[10], csum(ip, ihl))
