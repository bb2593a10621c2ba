# TEST-ONLY entry points (included last by core.pyx). Mirrors
# udpoverlay/dataplane/_py/testing.py. Nothing in udpoverlay calls these:
# they expose the per-packet logic and the offload pipeline without the
# syscalls around them, for the differential tests. They reach the module
# as `testing`, e.g. dataplane.twin("cython").testing.outbound(core, pkt).
#
# The pipelines write to real fds (a memfd stands in for the TUN, a
# SEQPACKET socket pair for the wire socket's replies) through the very code
# the loops use, so the production path carries no test branch.

import os as _os
import socket as _socket
import types as _types


def _outbound(Core core, packet):
    """TUN -> wire for one packet: (verdict, peer index, payload, reply to TUN)."""
    cdef bytes data = bytes(packet)
    cdef Py_ssize_t n = min(len(data), SLOT)
    cdef int idx, v
    cdef Py_ssize_t h = 0
    cdef uint8_t *pkt
    cdef table_t *t = core.cfg.table
    if core.closed:
        raise RuntimeError("core closed")
    pkt = core.tx.slots + VXLAN_HDR
    if n:
        memcpy(pkt, <const char *>data, n)
    v = outbound_c(&core.cfg, &core.tx, t, pkt, n, &idx)
    count_out(&core.tx, t, v, idx, n)
    if v == OK:
        h = encap_c(&core.cfg, t, pkt, idx)
    payload = (<char *>(pkt - h))[:n + h] if v == OK else b""
    reply = (<char *>core.tx.reply)[:core.tx.reply_len] if core.tx.reply_len else b""
    return v, idx, payload, reply


def _inbound(Core core, datagram, uint32_t src, uint16_t sport=8285):
    """Wire -> TUN for one datagram from address src, port sport:
    (verdict, peer index, packet for TUN, reply datagram to the sender)."""
    cdef bytes data = bytes(datagram)
    cdef Py_ssize_t n = min(len(data), SLOT)
    cdef int idx, v
    cdef uint8_t *slot
    cdef table_t *t = core.cfg.table
    if core.closed:
        raise RuntimeError("core closed")
    slot = core.rx.slots        # writable: a partial checksum is finished in place
    if n:
        memcpy(slot, <const char *>data, n)
    v = inbound_c(&core.cfg, &core.rx, t, slot, n, src, sport, &idx)
    count_in(&core.rx, t, v, idx, n - core.rx.inner_off)
    reply = (<char *>core.rx.reply)[:core.rx.reply_len] if core.rx.reply_len else b""
    if v != OK:
        return v, idx, b"", reply
    finish_partial(&core.rx, slot + core.rx.inner_off, n - core.rx.inner_off)
    return v, idx, (<char *>slot)[core.rx.inner_off:n], reply


def _tun_records(int fd):
    """The TUN writes a memfd collected: each a vnet header and an IPv4
    packet whose total length says where it ends."""
    _os.lseek(fd, 0, 0)
    chunks = []
    while True:
        b = _os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    buf = b"".join(chunks)
    out = []
    at = 0
    while at < len(buf):
        end = at + VNET_HDR_LEN + ((buf[at + 12] << 8) | buf[at + 13])
        out.append(buf[at:end])
        at = end
    return out


def _outbound_batch(Core core, bufs):
    """TUN reads (vnet header + packet each) through the TX pipeline, in
    batches as the I/O loop cuts them: ([(sock, ip, port, gso_size, payload,
    n_segments)], [TUN writes])."""
    cdef uint8_t *at
    cdef bytes b
    cdef Py_ssize_t r
    cdef int i, j, k, reads, tun
    cdef txmsg_t *m
    if not core.cfg.vnet_hdr or core.closed:
        raise RuntimeError("outbound_batch needs set_offload(True)")
    messages = []
    items = [bytes(x) for x in bufs]
    tun = _os.memfd_create("udpoverlay-test-tun")
    try:
        i = 0
        while i < len(items):
            tx_begin(&core.tx)
            reads = 0
            while i < len(items) and reads < BATCH and tx_room(&core.tx):
                b = items[i]
                i += 1
                reads += 1
                r = min(len(b), VNET_HDR_LEN + 65535)
                at = core.tx.b.arena + core.tx.b.pos + VXLAN_HDR
                memcpy(at - VNET_HDR_LEN, <const char *>b, r)
                tx_read(&core.cfg, &core.tx, at, r, tun)
            for j in range(core.tx.b.n_msgs):
                m = &core.tx.b.msgs[j]
                payload = b"".join([(<char *>m.iov[k].iov_base)[:m.iov[k].iov_len]
                                    for k in range(m.nseg)])
                messages.append((m.sock, m.ip, m.port, m.seg_size if m.nseg > 1 else 0,
                                 payload, m.nseg))
        return messages, _tun_records(tun)
    finally:
        _os.close(tun)


def _inbound_batch(Core core, datagrams):
    """Received datagrams [(data, src, gro_size[, source port, default
    8285])] through the RX pipeline, BATCH at a time as recvmmsg gives them:
    ([TUN writes], [(reply, src)])."""
    cdef bytes b
    cdef int i, k, tun
    cdef Py_ssize_t n
    cdef uint8_t *slot
    cdef sockaddr_in nowhere        # the pair ignores addresses
    if not core.cfg.vnet_hdr or core.closed:
        raise RuntimeError("inbound_batch needs set_offload(True)")
    memset(&nowhere, 0, sizeof(nowhere))
    replies = []
    items = [(bytes(d[0]), d[1], int(d[2]), int(d[3]) if len(d) > 3 else 8285)
             for d in datagrams]
    wire_side, peer_side = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    tun = _os.memfd_create("udpoverlay-test-tun")
    try:
        peer_side.setblocking(False)
        for k in range(0, len(items), BATCH):
            for i, (b, src, gro, sport) in enumerate(items[k:k + BATCH]):
                n = min(len(b), SLOT)
                slot = core.rx.slots + <size_t>i * STRIDE
                memcpy(slot, <const char *>b, n)
                rx_datagram(&core.cfg, &core.rx, slot, n, <uint32_t>src, <uint16_t>sport, gro,
                            tun, wire_side.fileno(), &nowhere)
                while True:
                    try:
                        replies.append((peer_side.recv(65536), src))
                    except BlockingIOError:
                        break
            co_flush(&core.rx.co, tun)
        core.rx.verdicts[TX_ERROR] += core.rx.co.failed
        core.rx.co.failed = 0
        return _tun_records(tun), replies
    finally:
        _os.close(tun)
        wire_side.close()
        peer_side.close()


def _flow_hash(pkt):
    """flow_hash_c of a packet (valid IPv4 header)."""
    cdef bytes b = bytes(pkt)
    return flow_hash_c(<const uint8_t *><const char *>b, len(b))


def _checksum(data):
    """RFC 1071 Internet checksum of data (odd length padded with zero)."""
    cdef bytes b = bytes(data)
    return csum(<const uint8_t *><const char *>b, len(b))


# The enums of wire.pxd as the extension compiled them, for the test that
# they equal udpoverlay/dataplane/wire.py.
_WIRE = dict(
    MODE_UDP=MODE_UDP, MODE_VXLAN=MODE_VXLAN, OK=OK, TOO_SHORT=TOO_SHORT, NOT_IPV4=NOT_IPV4,
    BAD_HEADER=BAD_HEADER, NO_ROUTE=NO_ROUTE, TTL_EXPIRED=TTL_EXPIRED,
    UNKNOWN_PEER=UNKNOWN_PEER, SPOOFED_SRC=SPOOFED_SRC, NOT_LOCAL=NOT_LOCAL, TX_ERROR=TX_ERROR,
    BAD_VXLAN=BAD_VXLAN, BAD_VNI=BAD_VNI, WRONG_MAC=WRONG_MAC, UNRESOLVED=UNRESOLVED, ARP=ARP,
    BAD_GSO=BAD_GSO, BAD_PORT=BAD_PORT, KEEPALIVE=KEEPALIVE, IPV4_MIN=IPV4_MIN, PEER_SPEC_LEN=PEER_SPEC_LEN, N_VERDICTS=N_VERDICTS,
    BATCH=BATCH, MAX_ROUNDS=MAX_ROUNDS, SLOT=SLOT,
    TX_MSGS=TX_MSGS, MAX_WAITS=MAX_WAITS, WAIT_MS=WAIT_MS, MAX_TX_FDS=MAX_TX_FDS, MAX_QUEUES=MAX_QUEUES,
    VXLAN_HDR=VXLAN_HDR, ARP_LEN=ARP_LEN, ICMP_TTL=ICMP_TTL, VNET_HDR_LEN=VNET_HDR_LEN,
    F_NEEDS_CSUM=F_NEEDS_CSUM, GSO_NONE=GSO_NONE, GSO_TCPV4=GSO_TCPV4, GSO_UDP=GSO_UDP,
    GSO_TCPV6=GSO_TCPV6, GSO_UDP_L4=GSO_UDP_L4, GSO_ECN=GSO_ECN, SOL_UDP=SOL_UDP,
    UDP_SEGMENT=UDP_SEGMENT, UDP_GRO=UDP_GRO, MAX_GSO_SEGS=MAX_GSO_SEGS,
    MAX_UDP_PAYLOAD=MAX_UDP_PAYLOAD, MAX_SPLIT=MAX_SPLIT, MAX_COALESCE=MAX_COALESCE,
    MAX_ITEMS=MAX_ITEMS, SCAN_DEPTH=SCAN_DEPTH, TCP_ACK=TCP_ACK, TCP_PSH=TCP_PSH,
    TCP_FIN=TCP_FIN, TCP_CWR=TCP_CWR)

def _wg_aead(key, nonce, aad, data, bint decrypt=False):
    """One ChaCha20-Poly1305 operation through a WgKey's own libcrypto contexts
    and wg_seal/wg_open, with a full 12-byte nonce and associated data (the
    shape of published vectors, e.g. RFC 8439 2.8.2; WireGuard's transport
    has neither): ciphertext || tag, or (decrypt) the plaintext or None."""
    cdef WgKey k = WgKey(bytes(key))
    cdef bytes iv = bytes(nonce), a = bytes(aad), d = bytes(data), out
    cdef int n, r
    if len(iv) != WG_NONCE:
        raise ValueError("the nonce is 12 bytes")
    if not decrypt:
        n = len(d)
        out = PyBytes_FromStringAndSize(NULL, n + WG_TAG)
        r = wg_seal(&k.enc, <const uint8_t *><const char *>iv, <const uint8_t *><const char *>a,
                    len(a), <const uint8_t *><const char *>d,
                    <uint8_t *>PyBytes_AS_STRING(out), n, <uint8_t *>PyBytes_AS_STRING(out) + n)
        if r:
            raise RuntimeError("libcrypto failed to seal")
        return out
    n = len(d) - WG_TAG
    if n < 0:
        return None
    out = PyBytes_FromStringAndSize(NULL, n)
    r = wg_open(&k.dec, <const uint8_t *><const char *>iv, <const uint8_t *><const char *>a,
                len(a), <const uint8_t *><const char *>d, <uint8_t *>PyBytes_AS_STRING(out), n,
                <const uint8_t *><const char *>d + n)
    if r < 0:
        raise RuntimeError("libcrypto failed to open")
    return out if r == 0 else None


def _wg_aead_impl():
    """How WgKeys made now reach libcrypto: "provider" or "evp" (wgevp.h)."""
    return uo_wg_aead_impl().decode()


def _wg_aead_force_evp(bint on):
    """Tests: WgKeys made from now on take the EVP path (on) or the default."""
    uo_wg_aead_force_evp(on)


# wgcrypto.pxi's enums as compiled, for the test that they equal
# udpoverlay/dataplane/wgwire.py (the two Python-int limits are its checks').
_WG = dict(
    WG_HEADER=WG_HEADER, WG_TAG=WG_TAG, WG_OVERHEAD=WG_OVERHEAD, WG_PAD=WG_PAD,
    WG_MAX_PACKET=WG_MAX_PACKET, WG_MAX_DATAGRAM=WG_MAX_DATAGRAM, WG_OK=WG_OK,
    WG_MALFORMED=WG_MALFORMED, WG_BAD_TAG=WG_BAD_TAG, WG_N_VERDICTS=WG_N_VERDICTS,
    WG_MAX_COUNTER=0xFFFFFFFFFFFFFFFF, WG_MAX_RECEIVER=0xFFFFFFFF)

# wgio.pxi's enums as compiled, for the test that they equal _py/wgio.py's.
_WGIO = dict(TX_SEGMENTS=TX_SEGMENTS, OPEN_BAD_TAG=OPEN_BAD_TAG, OPEN_MALFORMED=OPEN_MALFORMED,
             KIND_OTHER=KIND_OTHER, KIND_TRANSPORT=KIND_TRANSPORT)

testing = _types.SimpleNamespace(
    outbound=_outbound, inbound=_inbound, outbound_batch=_outbound_batch,
    inbound_batch=_inbound_batch, flow_hash=_flow_hash, checksum=_checksum, WIRE=_WIRE,
    wg_aead=_wg_aead, wg_aead_impl=_wg_aead_impl, wg_aead_force_evp=_wg_aead_force_evp, WG=_WG, WGIO=_WGIO)
