"""The WireGuard plane's engine seals and opens through the data plane's
AEAD (the compiled twin under ./dev test), with exactly the bytes of the
engine's own pyca cipher: same key, receiver and counter, same datagram;
each opens the other's; a flipped bit opens in neither."""

from __future__ import annotations

import os

import pytest

from udpoverlay.dataplane import twins
from udpoverlay.wgplane.cipher import DataPlaneCipher
from udpoverlay.wireguard.transport import PycaCipher, padded

KEY = bytes(range(32))


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1400, 1420, 9000])
def test_same_bytes_as_the_engines_own_cipher(size):
    packet = padded(os.urandom(size))
    ours, ref = DataPlaneCipher(KEY), PycaCipher(KEY)
    for counter in (0, 1, 2**32, 2**64 - 2):
        sealed = ours.seal(0x01020304, counter, packet)
        assert sealed == ref.seal(0x01020304, counter, packet)
        assert ours.open(counter, sealed) == ref.open(counter, sealed) == packet
        bad = bytearray(sealed)
        bad[-1] ^= 1
        assert ours.open(counter, bytes(bad)) is None and ref.open(counter, bytes(bad)) is None


def test_the_plane_uses_the_data_planes_cipher_and_says_which():
    import ipaddress

    from udpoverlay.wgplane.plane import WgPlane
    from udpoverlay.wireguard.keys import generate
    plane = WgPlane(generate(), ipaddress.IPv4Network("198.19.1.0/24"))
    assert plane.engine.cipher is DataPlaneCipher
    assert WgPlane.implementation == twins.IMPLEMENTATION
    if os.environ.get("UDPOVERLAY_REQUIRE_EXTENSION") == "1":
        assert WgPlane.implementation == "cython"
    assert "key" not in repr(DataPlaneCipher(KEY)).replace("<key hidden>", "")
