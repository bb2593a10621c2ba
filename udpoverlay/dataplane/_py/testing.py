"""Reference twin, TEST-ONLY entry points. Mirrors _fastpath/testing.pxi.

Nothing in udpoverlay calls these: they expose the per-packet logic and the
offload pipeline without the syscalls around them, for the differential
tests, with the same signatures and results as the compiled twin's
(`dataplane.twin(name).testing`).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from udpoverlay.dataplane import wgwire, wire
from udpoverlay.dataplane._py import wgio
from udpoverlay.dataplane._py.checksum import checksum
from udpoverlay.dataplane._py.frames import flow_hash
from udpoverlay.dataplane._py.offload import Packer

__all__ = ["outbound", "inbound", "outbound_batch", "inbound_batch", "flow_hash",
           "checksum", "WIRE", "wg_aead", "WG", "WGIO"]

# wire.py's constants, for the test that the compiled twin's equal them.
WIRE = {k: v for k, v in vars(wire).items() if k.isupper() and isinstance(v, int)}
# wgwire.py's constants, for the same test of the compiled twin's WG enums.
WG = {k: v for k, v in vars(wgwire).items() if k.isupper() and isinstance(v, int)}
# WgIo's int constants, for the same test of the compiled twin's enums.
WGIO = {k: getattr(wgio, k) for k in ("TX_SEGMENTS", "OPEN_BAD_TAG", "OPEN_MALFORMED",
                                      "KIND_OTHER", "KIND_TRANSPORT")}


def outbound(core, packet: bytes):
    """TUN -> wire for one packet: (verdict, peer index, payload, reply to TUN)."""
    pkt = bytearray(packet[:wire.SLOT])
    v, idx, reply = core._outbound(pkt)
    core._count_out(v, idx, len(pkt))
    return v, idx, core._encap(pkt, idx) if v == wire.OK else b"", reply


def inbound(core, datagram: bytes, src: int, sport: int = 8285):
    """Wire -> TUN for one datagram from address src, port sport:
    (verdict, peer index, packet for TUN, reply datagram to the sender)."""
    if core._closed:
        raise RuntimeError("core closed")
    datagram = bytes(datagram)[:wire.SLOT]
    v, idx, off, reply = core._inbound(datagram, src, sport)
    core._count_in(v, idx, len(datagram) - off)
    return v, idx, core._finish_partial(datagram[off:]) if v == wire.OK else b"", reply


def outbound_batch(core, bufs):
    """TUN reads (vnet header + packet each) through the TX pipeline, in
    batches as the I/O loop cuts them: ([(sock, ip, port, gso_size, payload,
    n_segments)], [TUN writes])."""
    if not core.vnet_hdr or core._closed:
        raise RuntimeError("outbound_batch needs set_offload(True)")
    items = [bytes(b)[:wire.VNET_HDR_LEN + 65535] for b in bufs]
    messages: list = []
    writes: list = []
    i = 0
    while i < len(items):
        packer = Packer(core._gso)
        reads = 0
        while i < len(items) and reads < wire.BATCH and core._tx_room(packer):
            core._tx_one(items[i], packer, writes.append)
            i += 1
            reads += 1
        messages += [(sock, ip, port, gso, payload, nseg)
                     for sock, (ip, port), gso, payload, nseg in packer.take()]
    return messages, writes


def inbound_batch(core, datagrams):
    """Received datagrams [(data, src, gro_size[, source port, default
    8285])] through the RX pipeline, BATCH at a time as recvmmsg gives them:
    ([TUN writes], [(reply, src)])."""
    if not core.vnet_hdr or core._closed:
        raise RuntimeError("inbound_batch needs set_offload(True)")
    items = [(bytes(d[0])[:wire.SLOT], d[1], int(d[2]), int(d[3]) if len(d) > 3 else 8285)
             for d in datagrams]
    writes: list = []
    replies: list = []
    for k in range(0, len(items), wire.BATCH):
        for data, src, gro, sport in items[k:k + wire.BATCH]:
            core._rx_datagram(data, src, sport, gro,
                              lambda r, src=src: replies.append((r, src)), core._co.add)
        writes += [w for w, _nseg in core._co.take()]
    return writes, replies


def wg_aead(key: bytes, nonce: bytes, aad: bytes, data: bytes, decrypt: bool = False):
    """One ChaCha20-Poly1305 operation with a full 12-byte nonce and
    associated data (published vectors' shape): ciphertext || tag, or
    (decrypt) the plaintext or None."""
    aead = ChaCha20Poly1305(wgwire.check_key(bytes(key)))
    if len(nonce) != 12:
        raise ValueError("the nonce is 12 bytes")
    if not decrypt:
        return aead.encrypt(bytes(nonce), bytes(data), bytes(aad))
    try:
        return aead.decrypt(bytes(nonce), bytes(data), bytes(aad))
    except InvalidTag:
        return None
