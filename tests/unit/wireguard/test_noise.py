"""The handshake functions and message layouts, without the engine."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from udpoverlay.wireguard import messages as m
from udpoverlay.wireguard import transport
from udpoverlay.wireguard.cookie import CookieChecker, MacSigner, source_bytes
from udpoverlay.wireguard.keys import generate
from udpoverlay.wireguard.noise import (
    HandshakeError,
    Identity,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    tai64n,
)


def _handshake(psk_i=None, psk_r=None):
    ki, kr = generate(), generate()
    ii, ir = Identity(ki), Identity(kr)
    ss_i = ki.exchange(kr.public.raw)
    ss_r = kr.exchange(ki.public.raw)
    msg, state = create_initiation(ii, kr.public.raw, ss_i, 0x11223344, tai64n(1e9))
    init = consume_initiation(ir, msg, lambda raw: ss_r if raw == ki.public.raw else None)
    resp, keys_r = create_response(init, psk_r, 0x55667788)
    keys_i = consume_response(ii, state, resp, psk_i)
    return msg, resp, init, keys_i, keys_r, ki


def test_sizes_and_layout():
    msg, resp, init, keys_i, keys_r, ki = _handshake()
    assert len(msg) == 148 and bytes(msg[:4]) == b"\x01\x00\x00\x00"
    assert m.u32(msg, 4) == 0x11223344
    assert len(resp) == 92 and bytes(resp[:4]) == b"\x02\x00\x00\x00"
    assert m.u32(resp, 4) == 0x55667788 and m.u32(resp, 8) == 0x11223344
    assert init.remote_static == ki.public.raw and init.timestamp == tai64n(1e9)
    assert m.message_type(bytes(msg)) == m.INITIATION and m.message_type(bytes(resp)) == m.RESPONSE


def test_both_sides_derive_mirrored_keys():
    *_, keys_i, keys_r, _ki = _handshake()
    assert keys_i.send_key == keys_r.recv_key and keys_i.recv_key == keys_r.send_key
    assert keys_i.send_key != keys_i.recv_key
    assert (keys_i.local_index, keys_i.remote_index) == (0x11223344, 0x55667788)
    assert (keys_r.local_index, keys_r.remote_index) == (0x55667788, 0x11223344)
    assert keys_i.is_initiator and not keys_r.is_initiator
    assert "key" not in repr(keys_i).replace("TransportKeys", "")


def test_psk_mismatch_fails_the_response():
    psk = os.urandom(32)
    _handshake(psk, psk)
    with pytest.raises(HandshakeError) as info:
        _handshake(psk, None)
    assert info.value.reason == "bad_auth"


def test_unknown_static_is_named():
    ki, kr = generate(), generate()
    msg, _ = create_initiation(Identity(ki), kr.public.raw, ki.exchange(kr.public.raw), 1, tai64n(1e9))
    with pytest.raises(HandshakeError) as info:
        consume_initiation(Identity(kr), msg, lambda raw: None)
    assert info.value.reason == "unknown_peer"


def test_initiation_to_someone_else_does_not_decrypt():
    ki, kr, other = generate(), generate(), generate()
    msg, _ = create_initiation(Identity(ki), kr.public.raw, ki.exchange(kr.public.raw), 1, tai64n(1e9))
    with pytest.raises(HandshakeError) as info:
        consume_initiation(Identity(other), msg, lambda raw: b"\x00" * 32)
    assert info.value.reason == "bad_auth"


def test_low_order_ephemeral_refused():
    ki, kr = generate(), generate()
    msg, _ = create_initiation(Identity(ki), kr.public.raw, ki.exchange(kr.public.raw), 1, tai64n(1e9))
    msg[8:40] = bytes(32)  # the all-zero point
    with pytest.raises(HandshakeError):
        consume_initiation(Identity(kr), msg, lambda raw: None)


def test_fixed_ephemerals_make_deterministic_messages():
    ki, kr = generate(), generate()
    e = X25519PrivateKey.generate()
    ss = ki.exchange(kr.public.raw)
    a, _ = create_initiation(Identity(ki), kr.public.raw, ss, 9, tai64n(5.0), ephemeral=e)
    b, _ = create_initiation(Identity(ki), kr.public.raw, ss, 9, tai64n(5.0), ephemeral=e)
    assert a == b


def test_mac1_and_mac2():
    kr = generate()
    checker = CookieChecker(kr.public.raw)
    signer = MacSigner(kr.public.raw)
    msg = bytearray(os.urandom(116)) + bytearray(32)
    msg[:4] = b"\x01\x00\x00\x00"
    signed = signer.sign(msg, now=0.0)
    assert checker.check_mac1(signed) and signed[-16:] == bytes(16)
    assert not CookieChecker(generate().public.raw).check_mac1(signed)
    src = source_bytes(("198.18.0.9", 4000))
    assert not checker.check_mac2(signed, src, now=0.0)  # no secret yet
    reply = checker.make_reply(signed, 77, src, now=0.0)
    assert len(reply) == 64 and m.message_type(reply) == m.COOKIE_REPLY and m.u32(reply, 4) == 77
    assert signer.consume_reply(reply, now=1.0)
    signed2 = signer.sign(bytearray(signed), now=2.0)
    assert checker.check_mac1(signed2) and checker.check_mac2(signed2, src, now=2.0)
    assert not checker.check_mac2(signed2, source_bytes(("198.18.0.9", 4001)), now=2.0)
    # the secret rotates: a cookie from before is no longer good
    assert not checker.check_mac2(signed2, src, now=121.0)
    # the signer stops using a cookie after 120 s
    assert signer.sign(bytearray(signed), now=122.0)[-16:] == bytes(16)


def test_cookie_reply_bound_to_our_last_mac1():
    kr = generate()
    checker, signer = CookieChecker(kr.public.raw), MacSigner(kr.public.raw)
    src = source_bytes(("198.18.0.9", 4000))
    first = signer.sign(bytearray(148), 0.0)
    reply = checker.make_reply(first, 1, src, 0.0)
    signer.sign(bytearray(os.urandom(148)), 0.0)  # a newer message: its MAC1 differs
    assert not signer.consume_reply(reply, 0.0)
    assert not MacSigner(kr.public.raw).consume_reply(reply, 0.0)  # never signed anything


def test_transport_seal_open_pure_functions():
    key = os.urandom(32)
    packet = b"\x45" + os.urandom(30)
    plain = transport.padded(packet)
    assert len(plain) == 32 and plain.startswith(packet)
    datagram = transport.seal(key, 0xAABBCCDD, 5, plain)
    assert datagram[:4] == b"\x04\x00\x00\x00" and len(datagram) == 16 + 32 + 16
    assert transport.parse_header(datagram) == (0xAABBCCDD, 5)
    assert transport.open_(key, 5, datagram) == plain
    assert transport.open_(key, 6, datagram) is None
    assert transport.padded(b"", 0) == b"" and transport.padded(b"x" * 16) == b"x" * 16
    assert transport.padded(b"x" * 1415, mtu=1420) == b"x" * 1415 + bytes(5)  # capped at the MTU
    assert len(transport.padded(b"x" * 1401, mtu=1420)) == 1408


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x00\x00", b"\x01\x00\x00\x01" + bytes(144),
                                  bytes(148), b"\x01" + bytes(146), b"\x04\x00\x00\x00" + bytes(27),
                                  b"\x05\x00\x00\x00" + bytes(60), b"\x03\x00\x00\x00" + bytes(61)])
def test_message_type_rejects_misshapen(data):
    assert m.message_type(data) == 0
