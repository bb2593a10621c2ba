"""Published vectors for the handshake as a whole.

WireGuard's handshake is Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with its
identifier string as the prologue, a TAI64N payload in the first message
and an empty one in the second. The Noise project's cacophony vector for
that protocol (as shipped in snow's tests/vectors/cacophony.txt) uses the
prologue "John Galt" and other payloads: run our noise functions with
those and every ciphertext must match byte for byte, including the
transport messages under the split keys.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from udpoverlay.wireguard import noise, transport
from udpoverlay.wireguard.keys import PrivateKey
from udpoverlay.wireguard.primitives import hash_

VECTOR = {
    "prologue": "4a6f686e2047616c74",
    "psk": "54686973206973206d7920417573747269616e20706572737065637469766521",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_static_public": "31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "messages": [
        ("4c756477696720766f6e204d69736573",
         "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944001e21de9f98ddd8e2ad57527207"
         "feb56253c9c94a9e496782ecfcb2a75fbcaf1b52948cc48daefe660c62119ab5000980c84831215f2441eba61654"
         "8e832985464cf17e51ee93109008399a21f7e13f"),
        ("4d757272617920526f746862617264",
         "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843cb765f2caef0751b8f007572dab0"
         "322217755c0632f365717edbf34d33e87a"),
        ("462e20412e20486179656b", "8153ca9833bc3c1b91a7e66e5f4d4f5b59bf9e64c2f20d15f0bba7"),
        ("4361726c204d656e676572", "07af0c9c86e1b4e80f36b04ff7688d51141af3debd0332f0a705ef"),
        ("4a65616e2d426170746973746520536179",
         "6ab1467c0448cc78394494abaaf23afce0e234315d6e2624dcbfa8a21c1c4d073d"),
        ("457567656e2042f6686d20766f6e2042617765726b",
         "dfc346c0d2296ae6cf1acf6f12b8456a1dba228cf8d8b774aacf1c47fc53aa80ebc7a4c292"),
    ],
}

# WireGuard's own C0 and H0 as another implementation (rustyguard) publishes them.
RUSTYGUARD_CONSTRUCTION_HASH = bytes([
    96, 226, 109, 174, 243, 39, 239, 192, 46, 195, 53, 226, 160, 37, 210, 208, 22, 235, 66, 6, 248,
    114, 119, 245, 45, 56, 209, 152, 139, 120, 205, 54])
RUSTYGUARD_IDENTIFIER_HASH = bytes([
    34, 17, 179, 97, 8, 26, 197, 102, 105, 18, 67, 219, 69, 138, 213, 50, 45, 156, 108, 102, 34,
    147, 232, 183, 14, 225, 156, 101, 186, 7, 158, 243])


def test_wireguard_initial_chaining_key_and_hash():
    assert noise.CHAINING_KEY_0 == RUSTYGUARD_CONSTRUCTION_HASH
    assert noise.HASH_0 == RUSTYGUARD_IDENTIFIER_HASH


def test_cacophony_ikpsk2_vector():
    v = VECTOR
    h = bytes.fromhex
    prologue_hash = hash_(noise.CHAINING_KEY_0, h(v["prologue"]))
    init_static, resp_static = PrivateKey(h(v["init_static"])), PrivateKey(h(v["resp_static"]))
    assert resp_static.public.raw == h(v["resp_static_public"])
    ii, ir = noise.Identity(init_static), noise.Identity(resp_static)
    psk = h(v["psk"])
    (p0, c0), (p1, c1), *transport_msgs = [(h(p), h(c)) for p, c in v["messages"]]

    msg0, state = noise.create_initiation(
        ii, resp_static.public.raw, init_static.exchange(resp_static.public.raw), 1, p0,
        ephemeral=X25519PrivateKey.from_private_bytes(h(v["init_ephemeral"])),
        prologue_hash=prologue_hash)
    assert bytes(msg0[8:-32]) == c0

    init = noise.consume_initiation(ir, msg0, lambda raw: resp_static.exchange(raw),
                                    prologue_hash=prologue_hash)
    assert init.timestamp == p0 and init.remote_static == init_static.public.raw

    msg1, keys_r = noise.create_response(
        init, psk, 2, ephemeral=X25519PrivateKey.from_private_bytes(h(v["resp_ephemeral"])), payload=p1)
    assert bytes(msg1[12:-32]) == c1
    keys_i = noise.consume_response(ii, state, msg1, psk)
    assert (keys_i.send_key, keys_i.recv_key) == (keys_r.recv_key, keys_r.send_key)

    # Transport: messages alternate initiator -> responder, responder -> initiator.
    counters = {True: 0, False: 0}
    for i, (payload, ciphertext) in enumerate(transport_msgs):
        from_initiator = i % 2 == 0
        key = keys_r.recv_key if from_initiator else keys_r.send_key
        datagram = transport.seal(key, 0, counters[from_initiator], payload)
        assert datagram[16:] == ciphertext, i
        counters[from_initiator] += 1
