"""HASH / MAC / HMAC / KDF as WireGuard composes them, against published
vectors (wireguard-go's device/kdf_test.go) and an independent derivation
(RFC 2104 written out over hashlib.blake2s)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpoverlay.wireguard import noise
from udpoverlay.wireguard.primitives import aead_open, aead_seal, hash_, hmac_, kdf1, kdf2, kdf3, mac, nonce

# (key, input, t0, t1, t2) from wireguard-go's KDF test.
KDF_VECTORS = [
    ("746573742d6b6579", "746573742d696e707574",
     "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
     "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
     "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24"),
    ("776972656775617264", "776972656775617264",
     "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
     "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
     "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160"),
    ("", "",
     "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
     "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
     "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e"),
]


@pytest.mark.parametrize("key, data, t0, t1, t2", KDF_VECTORS)
def test_kdf_published_vectors(key, data, t0, t1, t2):
    k, d = bytes.fromhex(key), bytes.fromhex(data)
    assert kdf1(k, d).hex() == t0
    assert [x.hex() for x in kdf2(k, d)] == [t0, t1]
    assert [x.hex() for x in kdf3(k, d)] == [t0, t1, t2]


def _rfc2104(key: bytes, data: bytes) -> bytes:
    """HMAC written out from RFC 2104 over BLAKE2s (block 64 bytes)."""
    if len(key) > 64:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(64, b"\x00")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in key) + data).digest()
    return hashlib.blake2s(bytes(b ^ 0x5C for b in key) + inner).digest()


@given(st.binary(max_size=100), st.binary(max_size=200))
def test_hmac_is_rfc2104_over_blake2s(key, data):
    assert hmac_(key, data) == _rfc2104(key, data)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_kdf_is_the_whitepaper_expansion(key, data):
    prk = _rfc2104(key, data)
    t1 = _rfc2104(prk, b"\x01")
    t2 = _rfc2104(prk, t1 + b"\x02")
    t3 = _rfc2104(prk, t2 + b"\x03")
    assert kdf3(key, data) == (t1, t2, t3)


def test_hash_and_mac_are_blake2s():
    assert hash_(b"ab", b"cd") == hashlib.blake2s(b"abcd").digest()
    assert mac(b"k" * 32, b"x") == hashlib.blake2s(b"x", key=b"k" * 32, digest_size=16).digest()
    assert len(mac(b"k" * 16, b"")) == 16


def test_protocol_strings_and_initial_chaining_key():
    assert noise.CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert noise.IDENTIFIER == b"WireGuard v1 zx2c4 Jason@zx2c4.com"
    assert noise.CHAINING_KEY_0 == hashlib.blake2s(noise.CONSTRUCTION).digest()
    assert noise.HASH_0 == hashlib.blake2s(noise.CHAINING_KEY_0 + noise.IDENTIFIER).digest()


def test_nonce_layout():
    assert nonce(0) == bytes(12)
    assert nonce(0x0102030405060708) == bytes(4) + bytes([8, 7, 6, 5, 4, 3, 2, 1])


def test_aead_roundtrip_and_tamper():
    key = bytes(range(32))
    sealed = aead_seal(key, 7, b"hello", b"ad")
    assert len(sealed) == 5 + 16
    assert aead_open(key, 7, sealed, b"ad") == b"hello"
    assert aead_open(key, 8, sealed, b"ad") is None
    assert aead_open(key, 7, sealed, b"AD") is None
    assert aead_open(key, 7, bytes([sealed[0] ^ 1]) + sealed[1:], b"ad") is None


def test_tai64n():
    stamp = noise.tai64n(1.5)
    secs, nanos = int.from_bytes(stamp[:8], "big"), int.from_bytes(stamp[8:], "big")
    assert secs == 0x400000000000000A + 1
    assert nanos == 500_000_000 & ~((1 << 24) - 1)  # whitened to 2^24 ns
    assert noise.tai64n(2.0) > noise.tai64n(1.999)
    assert noise.tai64n(1_800_000_000.25) > noise.tai64n(1_800_000_000.0)
