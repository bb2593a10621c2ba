/* The RFC 1071 sum over long buffers: the same loop as
 * checksum.pxi's csum_add (32-bit words into a 64-bit accumulator, the
 * exact same 64-bit result), compiled at -O3 and, on x86-64 with gcc, also
 * for AVX2, picked at load time (target_clones): about 4x the bytes per
 * second of the -O2 SSE2 build on a TSO segment's payload. Headers and other
 * short buffers stay on the inline loop (no call). */
#ifndef UO_CSUM_H
#define UO_CSUM_H

#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define UO_CSUM_ATTR __attribute__((noinline, target_clones("avx2", "default"), optimize("O3")))
#elif defined(__GNUC__) && !defined(__clang__)
#define UO_CSUM_ATTR __attribute__((noinline, optimize("O3")))
#else
#define UO_CSUM_ATTR __attribute__((noinline))
#endif

UO_CSUM_ATTR static uint64_t uo_csum_add_long(const uint8_t *p, ssize_t n, uint64_t s)
{
    uint32_t w;
    ssize_t i = 0;
    while (i + 4 <= n) {
        memcpy(&w, p + i, 4);
        s += w;
        i += 4;
    }
    if (i < n) {
        w = 0;
        memcpy(&w, p + i, (size_t)(n - i));
        s += w;
    }
    return s;
}

#endif
