# The WireGuard transport AEAD: one key's type-4 seal and open over whole
# batches (WgKey), on OpenSSL's libcrypto (wgevp.h: the provider's functions, or EVP).
# Mirrors udpoverlay/dataplane/_py/wgcrypto.py (the reference, on pyca
# `cryptography`), which states the API; the constants are
# udpoverlay/dataplane/wgwire.py's (exported as testing.WG and checked).
#
#     datagram = 04 00 00 00 | receiver u32 LE | counter u64 LE
#                | ChaCha20Poly1305(key, 0^4 || counter LE, padded packet, no AD) | tag
#
# Design notes:
# - No primitive of our own: ChaCha20-Poly1305 is libcrypto's. A WgKey
#   holds two contexts (uo_wg_aead, wgevp.h), one per direction, keyed
#   once; each packet re-inits its context with the nonce only, so the key
#   schedule and the lookup are paid once per key, not per packet. On
#   OpenSSL 3 a context calls the provider's ChaCha20-Poly1305 functions
#   directly (EVP's per-call overhead skipped), else it is an EVP context.
# - The per-packet loop runs with the GIL released, over C pointers
#   gathered beforehand; it never raises, allocates or logs. A datagram that
#   does not authenticate is a verdict (WG_BAD_TAG), a misshapen one too
#   (WG_MALFORMED). Only a caller's mistake (checked once per call, by
#   wgwire.py's checks, shared with the reference so the words match) or a
#   libcrypto failure (never seen; RuntimeError after the loop) raises.
# - Threads: the seal side and the open side may run at once on two
#   threads (separate contexts). A second concurrent seal (or open) on the
#   same key, or close() while either runs, raises RuntimeError: the busy
#   flags are set and cleared with the GIL held, so the check is exact.
# - Keys: never stored outside the contexts, never in a repr or an
#   exception; no pickling. Freeing a context (close() or deallocation)
#   cleanses the key schedule (OpenSSL clears a context's cipher data on
#   free). Unauthenticated plaintext never survives a call: a bad tag zeroes
#   what the in-place decryption wrote.
# - Buffers: seal_batch/open_batch return new bytes objects (filled while
#   the GIL is released, before anyone else can see them). seal_slots/
#   open_slots work in place in a caller-owned buffer of `count` slots of
#   `stride` bytes (bytearray, and array('I') for the lengths): borrowed
#   for the call only; a seal's packet sits at slot + WG_HEADER, leaving the
#   header room in front (the TUN read can land there, no copy), and the
#   datagram is written from the slot's start with its tag after the
#   padded ciphertext; an open leaves the plaintext at slot + WG_HEADER.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

cdef extern from "<openssl/err.h>" nogil:
    void ERR_clear_error()

cdef extern from "<openssl/crypto.h>" nogil:
    const char *OpenSSL_version(int t)
    enum:
        OPENSSL_VERSION

cdef extern from "wgevp.h" nogil:
    # one direction of one key on libcrypto's ChaCha20-Poly1305: the
    # provider's functions called directly, or EVP (which, and why: wgevp.h)
    ctypedef struct uo_wg_aead:
        pass
    void uo_wg_aead_setup()
    void uo_wg_aead_force_evp(int on)
    const char *uo_wg_aead_impl()
    int uo_wg_aead_init(uo_wg_aead *a, const unsigned char *key, int enc)
    void uo_wg_aead_free(uo_wg_aead *a)
    int uo_wg_live(const uo_wg_aead *a)
    int uo_wg_aead_seal(uo_wg_aead *a, const unsigned char *iv, const unsigned char *aad,
                        int aadlen, const unsigned char *src, unsigned char *dst, int n,
                        unsigned char *tag)
    int uo_wg_aead_open(uo_wg_aead *a, const unsigned char *iv, const unsigned char *aad,
                        int aadlen, const unsigned char *src, unsigned char *dst, int n,
                        const unsigned char *tag)

uo_wg_aead_setup()      # once, at import (GIL held)


def aead_library():
    """What seals and opens (for status): libcrypto's version and path."""
    path = "provider functions" if uo_wg_aead_impl() == b"provider" else "EVP"
    return f"{OpenSSL_version(OPENSSL_VERSION).decode()} ChaCha20-Poly1305, {path}"

# The values are udpoverlay/dataplane/wgwire.py's (testing.WG is checked
# against it).
cdef enum:
    WG_HEADER = 16
    WG_TAG = 16
    WG_OVERHEAD = 32
    WG_PAD = 16
    WG_MAX_PACKET = 65503
    WG_MAX_DATAGRAM = 65536
    WG_OK = 0
    WG_MALFORMED = 1
    WG_BAD_TAG = 2
    WG_N_VERDICTS = 3
    WG_NONCE = 12
    WG_KEY = 32

from udpoverlay.dataplane.wgwire import (
    check_counters as _wg_check_counters, check_key as _wg_check_key,
    check_mtu as _wg_check_mtu, check_receiver as _wg_check_receiver,
    slot_views as _wg_slot_views, verdict_view as _wg_verdict_view)


cdef struct wg_job_t:
    const uint8_t *src
    uint8_t *dst
    int size                # seal: the packet; open: the datagram
    int padded              # seal: the padded plaintext
    int verdict             # open


cdef inline void wg_put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xff
    p[1] = (v >> 8) & 0xff
    p[2] = (v >> 16) & 0xff
    p[3] = (v >> 24) & 0xff


cdef inline void wg_put64(uint8_t *p, uint64_t v) noexcept nogil:
    wg_put32(p, <uint32_t>(v & 0xffffffffu))
    wg_put32(p + 4, <uint32_t>(v >> 32))


cdef inline uint64_t wg_get64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(7, -1, -1):
        v = (v << 8) | p[i]
    return v


cdef inline int wg_padded(int size, int mtu) noexcept nogil:
    """wgwire.padded_length: up to a multiple of 16, never past mtu (0: no
    cap), never below size."""
    cdef int target = (size + WG_PAD - 1) & ~(WG_PAD - 1)
    if mtu and target > mtu:
        target = size if size > mtu else mtu
    return target


cdef inline bint wg_malformed(const uint8_t *d, Py_ssize_t size) noexcept nogil:
    return (size < WG_OVERHEAD or size > WG_MAX_DATAGRAM
            or d[0] != 4 or d[1] != 0 or d[2] != 0 or d[3] != 0)


cdef inline int wg_seal(uo_wg_aead *ctx, const uint8_t *iv, const uint8_t *aad, int aadlen,
                        const uint8_t *src, uint8_t *dst, int n, uint8_t *tag) noexcept nogil:
    """dst = ChaCha20Poly1305 of src (n bytes; dst == src is fine), the
    16-byte tag to tag. 0, or -1 when libcrypto failed."""
    return uo_wg_aead_seal(ctx, iv, aad, aadlen, src, dst, n, tag)


cdef inline int wg_open(uo_wg_aead *ctx, const uint8_t *iv, const uint8_t *aad, int aadlen,
                        const uint8_t *src, uint8_t *dst, int n,
                        const uint8_t *tag) noexcept nogil:
    """dst = the plaintext of src (n bytes; dst == src is fine) checked
    against tag. 0 when it authenticates, 1 when not (dst then holds
    unauthenticated bytes: the caller wipes them), -1 when libcrypto failed."""
    return uo_wg_aead_open(ctx, iv, aad, aadlen, src, dst, n, tag)


cdef inline void wg_header(uint8_t *d, uint32_t receiver, uint64_t counter) noexcept nogil:
    d[0] = 4
    d[1] = 0
    d[2] = 0
    d[3] = 0
    wg_put32(d + 4, receiver)
    wg_put64(d + 8, counter)


cdef int wg_seal_jobs(uo_wg_aead *ctx, wg_job_t *jobs, Py_ssize_t n, uint32_t receiver,
                      uint64_t counter) noexcept nogil:
    """Each job: header, packet and zero padding into dst, sealed in place."""
    cdef uint8_t iv[WG_NONCE]
    cdef Py_ssize_t i
    cdef uint8_t *d
    memset(iv, 0, WG_NONCE)
    for i in range(n):
        d = jobs[i].dst
        wg_header(d, receiver, counter + <uint64_t>i)
        if jobs[i].size:
            memcpy(d + WG_HEADER, jobs[i].src, jobs[i].size)
        memset(d + WG_HEADER + jobs[i].size, 0, jobs[i].padded - jobs[i].size)
        memcpy(iv + 4, d + 8, 8)
        if wg_seal(ctx, iv, NULL, 0, d + WG_HEADER, d + WG_HEADER, jobs[i].padded,
                   d + WG_HEADER + jobs[i].padded):
            return -1
    return 0


cdef int wg_open_jobs(uo_wg_aead *ctx, wg_job_t *jobs,
                      Py_ssize_t n) noexcept nogil:
    """Each job not malformed: the datagram src opened into dst (its own
    counter as the nonce); a bad tag zeroes dst."""
    cdef uint8_t iv[WG_NONCE]
    cdef Py_ssize_t i
    cdef int r, m
    cdef const uint8_t *s
    memset(iv, 0, WG_NONCE)
    for i in range(n):
        if jobs[i].verdict != WG_OK:
            continue
        s = jobs[i].src
        m = jobs[i].size - WG_OVERHEAD
        memcpy(iv + 4, s + 8, 8)
        r = wg_open(ctx, iv, NULL, 0, s + WG_HEADER, jobs[i].dst, m,
                    s + jobs[i].size - WG_TAG)
        if r < 0:
            return -1
        if r:
            memset(jobs[i].dst, 0, m)
            jobs[i].verdict = WG_BAD_TAG
    return 0


cdef class WgKey:
    """One 32-byte WireGuard transport key, both directions (the
    reference: udpoverlay/dataplane/_py/wgcrypto.py, same API and bytes)."""

    cdef uo_wg_aead enc             # each direction's context (wgevp.h)
    cdef uo_wg_aead dec
    cdef int busy_seal
    cdef int busy_open

    def __cinit__(self, key):
        cdef bytes k = _wg_check_key(key)
        if (uo_wg_aead_init(&self.enc, <const uint8_t *>PyBytes_AS_STRING(k), True)
                or uo_wg_aead_init(&self.dec, <const uint8_t *>PyBytes_AS_STRING(k), False)):
            self._free()
            ERR_clear_error()
            raise RuntimeError("libcrypto could not set up ChaCha20-Poly1305")

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        uo_wg_aead_free(&self.enc)
        uo_wg_aead_free(&self.dec)

    def __repr__(self):
        return "<WgKey>" if uo_wg_live(&self.enc) else "<WgKey closed>"

    def __reduce__(self):
        raise TypeError("a WgKey cannot be pickled")

    def close(self):
        """Free (and so cleanse) both contexts now; later calls raise."""
        if self.busy_seal or self.busy_open:
            raise RuntimeError("WgKey.close() while another thread uses the key")
        self._free()

    cdef int _check(self) except -1:
        if not uo_wg_live(&self.enc):
            raise ValueError("WgKey closed")
        return 0

    cdef int _enter(self, bint seal) except -1:
        """Claim one direction (GIL held: exact), after a last closed check."""
        self._check()
        if (self.busy_seal if seal else self.busy_open):
            raise RuntimeError("a WgKey direction is in use on another thread")
        if seal:
            self.busy_seal = 1
        else:
            self.busy_open = 1
        return 0

    # -- lists of bytes ---------------------------------------------------------
    def seal_batch(self, receiver, first_counter, packets, mtu=0):
        """The type-4 datagrams of packets[i] under counter first_counter + i
        (each padded as wireguard.transport.padded(packet, mtu)): a list of
        new bytes."""
        self._check()
        _wg_check_receiver(receiver)
        _wg_check_mtu(mtu)
        cdef tuple items = tuple(packets)
        _wg_check_counters(first_counter, len(items))
        for p in items:
            if type(p) is not bytes:
                raise TypeError("packets must be bytes")
            if len(<bytes>p) > WG_MAX_PACKET:
                raise ValueError(f"a packet is longer than {WG_MAX_PACKET} bytes")
        cdef Py_ssize_t n = len(items), i
        cdef list out = []
        if n == 0:
            return out
        cdef uint32_t rcv = receiver
        cdef uint64_t ctr = first_counter
        cdef int cap = mtu, err = 0, size, plen
        cdef bytes d
        cdef wg_job_t *jobs = <wg_job_t *>malloc(n * sizeof(wg_job_t))
        if jobs == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                p = items[i]
                size = len(<bytes>p)
                plen = wg_padded(size, cap)
                d = PyBytes_FromStringAndSize(NULL, WG_OVERHEAD + plen)
                out.append(d)
                jobs[i].src = <const uint8_t *>PyBytes_AS_STRING(p)
                jobs[i].dst = <uint8_t *>PyBytes_AS_STRING(d)
                jobs[i].size = size
                jobs[i].padded = plen
            self._enter(True)
            with nogil:
                err = wg_seal_jobs(&self.enc, jobs, n, rcv, ctr)
            self.busy_seal = 0
        finally:
            free(jobs)
        if err:
            ERR_clear_error()
            raise RuntimeError("libcrypto failed to seal")
        return out

    def open_batch(self, datagrams):
        """(verdict, padded plaintext) per datagram, in order; b"" unless
        WG_OK. The counter is the datagram's own; the receiver is not
        checked (the caller chose this key by it)."""
        self._check()
        cdef tuple items = tuple(datagrams)
        for p in items:
            if type(p) is not bytes:
                raise TypeError("datagrams must be bytes")
        cdef Py_ssize_t n = len(items), i, size
        cdef list plain = []
        cdef int err = 0
        cdef bytes d
        cdef const uint8_t *s
        if n == 0:
            return []
        cdef wg_job_t *jobs = <wg_job_t *>malloc(n * sizeof(wg_job_t))
        if jobs == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                p = items[i]
                size = len(<bytes>p)
                s = <const uint8_t *>PyBytes_AS_STRING(p)
                jobs[i].src = s
                jobs[i].size = <int>size if size <= WG_MAX_DATAGRAM else 0
                if wg_malformed(s, size):
                    jobs[i].verdict = WG_MALFORMED
                    jobs[i].dst = NULL
                    plain.append(b"")
                else:
                    jobs[i].verdict = WG_OK
                    d = PyBytes_FromStringAndSize(NULL, size - WG_OVERHEAD)
                    plain.append(d)
                    jobs[i].dst = <uint8_t *>PyBytes_AS_STRING(d)
            self._enter(False)
            with nogil:
                err = wg_open_jobs(&self.dec, jobs, n)
            self.busy_open = 0
            if err:
                ERR_clear_error()
                raise RuntimeError("libcrypto failed to open")
            return [(jobs[i].verdict, plain[i] if jobs[i].verdict == WG_OK else b"")
                    for i in range(n)]
        finally:
            free(jobs)

    # -- slots in one buffer, in place ---------------------------------------------
    def seal_slots(self, buf, lengths, count, stride, receiver, first_counter, mtu=0):
        """Seal slots 0..count-1 of buf in place: lengths[i] in is the
        packet's length (at slot + WG_HEADER), out the datagram's (at slot).
        Every datagram must fit its slot (checked first: nothing is written
        otherwise). Returns the datagrams' total bytes."""
        self._check()
        b_view, n_view = _wg_slot_views(buf, lengths, count, stride)
        _wg_check_receiver(receiver)
        _wg_check_mtu(mtu)
        _wg_check_counters(first_counter, count)
        cdef uint8_t[::1] b = b_view
        cdef uint32_t[::1] lens = n_view
        cdef Py_ssize_t cnt = count, st = stride, i, bad = -1
        cdef int cap = mtu, err = 0, plen, size
        cdef uint32_t rcv = receiver
        cdef uint64_t ctr = first_counter
        cdef uint8_t iv[WG_NONCE]
        cdef uint8_t *d
        cdef uint64_t total = 0
        if cnt == 0:
            return 0
        with nogil:
            for i in range(cnt):
                if (lens[i] > WG_MAX_PACKET
                        or WG_OVERHEAD + wg_padded(<int>lens[i], cap) > st):
                    bad = i
                    break
        if bad >= 0:
            raise ValueError(f"packet {bad} does not fit its slot")
        self._enter(True)
        with nogil:
            memset(iv, 0, WG_NONCE)
            for i in range(cnt):
                d = &b[i * st]
                size = <int>lens[i]
                plen = wg_padded(size, cap)
                wg_header(d, rcv, ctr + <uint64_t>i)
                memset(d + WG_HEADER + size, 0, plen - size)
                memcpy(iv + 4, d + 8, 8)
                if wg_seal(&self.enc, iv, NULL, 0, d + WG_HEADER, d + WG_HEADER,
                           plen, d + WG_HEADER + plen):
                    err = 1
                    break
                lens[i] = WG_OVERHEAD + plen
                total += WG_OVERHEAD + plen
        self.busy_seal = 0
        if err:
            ERR_clear_error()
            raise RuntimeError("libcrypto failed to seal")
        return total

    def open_slots(self, buf, lengths, verdicts, count, stride):
        """Open slots 0..count-1 of buf in place: lengths[i] in is the
        datagram's length (at slot), out the plaintext's (at slot +
        WG_HEADER; 0 unless verdicts[i] is WG_OK). A datagram that does not
        authenticate has its bytes after the header zeroed (no
        unauthenticated plaintext is ever left behind); a malformed one is
        left as it was. Returns how many were WG_OK."""
        self._check()
        b_view, n_view = _wg_slot_views(buf, lengths, count, stride)
        v_view = _wg_verdict_view(verdicts, count)
        cdef uint8_t[::1] b = b_view
        cdef uint32_t[::1] lens = n_view
        cdef uint8_t[::1] verd = v_view
        cdef Py_ssize_t cnt = count, st = stride, i, bad = -1, ok = 0
        cdef int err = 0, r, size
        cdef uint8_t iv[WG_NONCE]
        cdef uint8_t *d
        if cnt == 0:
            return 0
        with nogil:
            for i in range(cnt):
                if lens[i] > st:
                    bad = i
                    break
        if bad >= 0:
            raise ValueError(f"datagram {bad} is longer than its slot")
        self._enter(False)
        with nogil:
            memset(iv, 0, WG_NONCE)
            for i in range(cnt):
                d = &b[i * st]
                size = <int>lens[i]
                if wg_malformed(d, size):
                    verd[i] = WG_MALFORMED
                    lens[i] = 0
                    continue
                memcpy(iv + 4, d + 8, 8)
                r = wg_open(&self.dec, iv, NULL, 0, d + WG_HEADER,
                            d + WG_HEADER, size - WG_OVERHEAD, d + size - WG_TAG)
                if r < 0:
                    err = 1
                    break
                if r:
                    memset(d + WG_HEADER, 0, size - WG_HEADER)
                    verd[i] = WG_BAD_TAG
                    lens[i] = 0
                else:
                    verd[i] = WG_OK
                    lens[i] = size - WG_OVERHEAD
                    ok += 1
        self.busy_open = 0
        if err:
            ERR_clear_error()
            raise RuntimeError("libcrypto failed to open")
        return ok
