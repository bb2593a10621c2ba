"""Reference twin of the WireGuard transport AEAD (mirrors
_fastpath/wgcrypto.pxi): one key's type-4 seal and open over whole batches,
on pyca `cryptography`'s ChaCha20Poly1305. The statement of what the
compiled WgKey must produce byte for byte; a change to one lands in the
other in the same commit.

    datagram = 04 00 00 00 | receiver u32 LE | counter u64 LE
               | ChaCha20Poly1305(key, 0^4 || counter LE, padded packet, no AD) | tag

(udpoverlay.wireguard.transport.seal/open_ for one packet; the differential
tests hold all three to the same bytes.) The argument checks are
wgwire.py's, shared with the compiled twin; per datagram an open never
raises: it returns a verdict (WG_OK, WG_MALFORMED, WG_BAD_TAG).

Two shapes of the same work:
- seal_batch / open_batch: lists of bytes in, new bytes out (simple);
- seal_slots / open_slots: in place in one caller-owned buffer of `count`
  slots of `stride` bytes, lengths in an array('I') (the data path's shape:
  no per-packet object). A seal's packet sits at slot + WG_HEADER; the
  datagram is written from slot + 0. An open's datagram sits at slot + 0;
  its plaintext is left at slot + WG_HEADER. Buffers are borrowed for the
  call only.
"""

from __future__ import annotations

import cryptography
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from udpoverlay.dataplane.wgwire import (
    WG_BAD_TAG,
    WG_HEADER,
    WG_MALFORMED,
    WG_MAX_DATAGRAM,
    WG_MAX_PACKET,
    WG_OK,
    WG_OVERHEAD,
    check_counters,
    check_key,
    check_mtu,
    check_receiver,
    padded_length,
    slot_views,
    verdict_view,
)

__all__ = ["WgKey", "aead_library"]

_TYPE = b"\x04\x00\x00\x00"


def aead_library() -> str:
    """What seals and opens (for status), as the compiled twin's."""
    return f"cryptography {cryptography.__version__} ChaCha20Poly1305"


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def _header(receiver: int, counter: int) -> bytes:
    return _TYPE + receiver.to_bytes(4, "little") + counter.to_bytes(8, "little")


def _malformed(datagram) -> bool:
    return (len(datagram) < WG_OVERHEAD or len(datagram) > WG_MAX_DATAGRAM
            or bytes(datagram[:4]) != _TYPE)


class WgKey:
    """One 32-byte transport key, both directions. The key is never shown
    (repr, exceptions) and cannot be pickled; close() drops it early."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead: ChaCha20Poly1305 | None = ChaCha20Poly1305(check_key(key))

    def __repr__(self) -> str:
        return "<WgKey closed>" if self._aead is None else "<WgKey>"

    def __reduce__(self):
        raise TypeError("a WgKey cannot be pickled")

    def close(self) -> None:
        self._aead = None

    def _key(self) -> ChaCha20Poly1305:
        if self._aead is None:
            raise ValueError("WgKey closed")
        return self._aead

    # -- lists of bytes ---------------------------------------------------------
    def seal_batch(self, receiver: int, first_counter: int, packets, mtu: int = 0) -> list[bytes]:
        """The type-4 datagrams of packets[i] under counter first_counter + i
        (each padded as wireguard.transport.padded(packet, mtu))."""
        aead = self._key()
        check_receiver(receiver)
        check_mtu(mtu)
        items = tuple(packets)
        check_counters(first_counter, len(items))
        for p in items:
            if type(p) is not bytes:
                raise TypeError("packets must be bytes")
            if len(p) > WG_MAX_PACKET:
                raise ValueError(f"a packet is longer than {WG_MAX_PACKET} bytes")
        out = []
        for i, p in enumerate(items):
            counter = first_counter + i
            plain = p + bytes(padded_length(len(p), mtu) - len(p))
            out.append(_header(receiver, counter) + aead.encrypt(_nonce(counter), plain, None))
        return out

    def open_batch(self, datagrams) -> list[tuple[int, bytes]]:
        """(verdict, padded plaintext) per datagram, in order; b"" unless
        WG_OK. The counter is the datagram's own; the receiver is not
        checked (the caller chose this key by it)."""
        aead = self._key()
        items = tuple(datagrams)
        for d in items:
            if type(d) is not bytes:
                raise TypeError("datagrams must be bytes")
        out: list[tuple[int, bytes]] = []
        for d in items:
            if _malformed(d):
                out.append((WG_MALFORMED, b""))
                continue
            counter = int.from_bytes(d[8:16], "little")
            try:
                out.append((WG_OK, aead.decrypt(_nonce(counter), d[WG_HEADER:], None)))
            except InvalidTag:
                out.append((WG_BAD_TAG, b""))
        return out

    # -- slots in one buffer, in place ---------------------------------------------
    def seal_slots(self, buf, lengths, count: int, stride: int, receiver: int,
                   first_counter: int, mtu: int = 0) -> int:
        """Seal slots 0..count-1 of buf in place: lengths[i] in is the
        packet's length (at slot + WG_HEADER), out the datagram's (at slot).
        Every datagram must fit its slot (checked first: nothing is written
        otherwise). Returns the datagrams' total bytes."""
        aead = self._key()
        b, n = slot_views(buf, lengths, count, stride)
        check_receiver(receiver)
        check_mtu(mtu)
        check_counters(first_counter, count)
        for i in range(count):
            if n[i] > WG_MAX_PACKET or WG_OVERHEAD + padded_length(n[i], mtu) > stride:
                raise ValueError(f"packet {i} does not fit its slot")
        total = 0
        for i in range(count):
            off, size, counter = i * stride, n[i], first_counter + i
            pad = padded_length(size, mtu)
            plain = bytes(b[off + WG_HEADER:off + WG_HEADER + size]) + bytes(pad - size)
            sealed = _header(receiver, counter) + aead.encrypt(_nonce(counter), plain, None)
            b[off:off + len(sealed)] = sealed
            n[i] = len(sealed)
            total += len(sealed)
        return total

    def open_slots(self, buf, lengths, verdicts, count: int, stride: int) -> int:
        """Open slots 0..count-1 of buf in place: lengths[i] in is the
        datagram's length (at slot), out the plaintext's (at slot +
        WG_HEADER; 0 unless verdicts[i] is WG_OK). A datagram that does not
        authenticate has its bytes after the header zeroed (no
        unauthenticated plaintext is ever left behind); a malformed one is
        left as it was. Returns how many were WG_OK."""
        aead = self._key()
        b, n = slot_views(buf, lengths, count, stride)
        v = verdict_view(verdicts, count)
        for i in range(count):
            if n[i] > stride:
                raise ValueError(f"datagram {i} is longer than its slot")
        ok = 0
        for i in range(count):
            off, size = i * stride, n[i]
            d = b[off:off + size]
            if _malformed(d):
                v[i], n[i] = WG_MALFORMED, 0
                continue
            counter = int.from_bytes(d[8:16], "little")
            try:
                plain = aead.decrypt(_nonce(counter), bytes(d[WG_HEADER:]), None)
            except InvalidTag:
                b[off + WG_HEADER:off + size] = bytes(size - WG_HEADER)
                v[i], n[i] = WG_BAD_TAG, 0
                continue
            b[off + WG_HEADER:off + WG_HEADER + len(plain)] = plain
            v[i], n[i] = WG_OK, len(plain)
            ok += 1
        return ok

