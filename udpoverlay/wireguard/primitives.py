"""The few building blocks WireGuard's handshake names, each a thin call
into a vetted library (hashlib's BLAKE2s, hmac, pyca's ChaCha20Poly1305):
nothing cryptographic is implemented here, only composed as the protocol
defines it (HASH, MAC, HMAC, KDFn, AEAD with a counter nonce).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = ["HASH_SIZE", "MAC_SIZE", "TAG_SIZE", "hash_", "mac", "hmac_", "kdf1", "kdf2", "kdf3",
           "nonce", "aead_seal", "aead_open"]

HASH_SIZE = 32
MAC_SIZE = 16
TAG_SIZE = 16


def hash_(*parts: bytes) -> bytes:
    """HASH(a || b || ...): BLAKE2s-256."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte digest (not HMAC)."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """HMAC(key, data) over BLAKE2s-256 (block size 64)."""
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf(key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
    # HKDF as the whitepaper writes it: extract with HMAC, then expand one
    # 32-byte block at a time with a one-byte counter.
    prk = hmac_(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac_(prk, prev + bytes([i]))
        out.append(prev)
    return tuple(out)


def kdf1(key: bytes, data: bytes) -> bytes:
    return _kdf(key, data, 1)[0]


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    a, b = _kdf(key, data, 2)
    return a, b


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    a, b, c = _kdf(key, data, 3)
    return a, b, c


def nonce(counter: int) -> bytes:
    """The 96-bit ChaCha20Poly1305 nonce: 4 zero bytes, then the 64-bit
    counter little-endian."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce(counter), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes | None:
    """The plaintext, or None when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(counter), ciphertext, ad)
    except InvalidTag:
        return None
