"""Transport data (type 4) for one packet: pure functions of (key, counter,
bytes), the part the compiled data path will mirror byte for byte.

    datagram = 04 00 00 00 | receiver u32 LE | counter u64 LE
               | ChaCha20Poly1305(key, nonce = 0^4 || counter LE, padded packet, no AD)

The plaintext is the IP packet padded with zeros to a multiple of 16 (not
past the MTU); an empty plaintext is a keepalive. The receiver strips the
padding with the IP header's own length (inner_length).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from udpoverlay.wireguard import messages as m
from udpoverlay.wireguard.primitives import nonce

__all__ = ["PADDING_MULTIPLE", "PycaCipher", "padded", "seal", "open_", "seal_with", "open_with",
           "parse_header", "inner_length"]

PADDING_MULTIPLE = 16


def padded(packet: bytes, mtu: int = 0) -> bytes:
    """packet plus zeros up to a multiple of 16, never past mtu (0: no cap)."""
    size = len(packet)
    target = -(-size // PADDING_MULTIPLE) * PADDING_MULTIPLE
    if mtu and target > mtu:
        target = max(size, mtu)
    return packet + bytes(target - size) if target > size else packet


def seal_with(aead: ChaCha20Poly1305, receiver: int, counter: int, plaintext: bytes) -> bytes:
    """The whole type-4 datagram (plaintext already padded)."""
    return (m.TRANSPORT_HEADER.pack(m.TRANSPORT, receiver, counter)
            + aead.encrypt(nonce(counter), plaintext, None))


def open_with(aead: ChaCha20Poly1305, counter: int, datagram: bytes) -> bytes | None:
    """The plaintext of a type-4 datagram (header included in the argument),
    or None when it does not authenticate."""
    try:
        return aead.decrypt(nonce(counter), datagram[m.TRANSPORT_HEADER_SIZE:], None)
    except InvalidTag:
        return None


class PycaCipher:
    """One transport key's seal and open, on pyca `cryptography`: the
    engine's default. A caller may give the engine another factory with the
    same two methods and the same bytes (the data plane's compiled AEAD,
    dataplane/wgaead.py); the differential tests hold them identical."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)

    def seal(self, receiver: int, counter: int, plaintext: bytes) -> bytes:
        return seal_with(self._aead, receiver, counter, plaintext)

    def open(self, counter: int, datagram: bytes) -> bytes | None:
        return open_with(self._aead, counter, datagram)

    def __repr__(self) -> str:
        return "PycaCipher(<key hidden>)"


def seal(key: bytes, receiver: int, counter: int, plaintext: bytes) -> bytes:
    return seal_with(ChaCha20Poly1305(key), receiver, counter, plaintext)


def open_(key: bytes, counter: int, datagram: bytes) -> bytes | None:
    return open_with(ChaCha20Poly1305(key), counter, datagram)


def parse_header(datagram: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a datagram message_type() accepted as type 4."""
    _, receiver, counter = m.TRANSPORT_HEADER.unpack_from(datagram, 0)
    return receiver, counter


def inner_length(plaintext: bytes) -> int:
    """The length the inner IPv4/IPv6 header states, or -1 when plaintext
    is not an IP packet of at least that length."""
    if not plaintext:
        return -1
    version = plaintext[0] >> 4
    if version == 4 and len(plaintext) >= 20:
        size = int.from_bytes(plaintext[2:4], "big")
        return size if 20 <= size <= len(plaintext) else -1
    if version == 6 and len(plaintext) >= 40:
        size = 40 + int.from_bytes(plaintext[4:6], "big")
        return size if size <= len(plaintext) else -1
    return -1
