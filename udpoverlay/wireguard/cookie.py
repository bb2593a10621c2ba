"""MAC1, MAC2 and the cookie reply (type 3): WireGuard's defence against
handshake floods.

MAC1 (keyed with HASH("mac1----" || responder's public key)) proves the
sender knows whom it is talking to; it is checked before any Diffie-Hellman.
A responder under load also wants MAC2, keyed with a cookie that only a
sender who can receive at its source address learns: it answers an
initiation without a valid MAC2 with a 64-byte cookie reply (never larger
than what it answers) instead of doing the expensive handshake.

The cookie is MAC(secret, source address), the secret changes every
COOKIE_REFRESH_TIME; the reply encrypts it with XChaCha20-Poly1305
(libsodium through PyNaCl) under HASH("cookie--" || responder's public
key), authenticated with the MAC1 of the message it answers.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from udpoverlay.wireguard import messages as m
from udpoverlay.wireguard.primitives import MAC_SIZE, hash_, mac

__all__ = ["COOKIE_REFRESH_TIME", "LABEL_MAC1", "LABEL_COOKIE", "source_bytes", "CookieChecker",
           "MacSigner"]

COOKIE_REFRESH_TIME = 120.0
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
NONCE_SIZE = 24


def source_bytes(addr: tuple) -> bytes:
    """What a cookie is bound to: the packed source IP and port (big-endian).
    Only we read it back, so the exact form is ours to choose."""
    ip = ipaddress.ip_address(addr[0])
    return ip.packed + int(addr[1]).to_bytes(2, "big")


def _mac_offsets(msg: bytes | bytearray) -> tuple[int, int]:
    """(offset of mac1, offset of mac2): the last 32 bytes of a handshake message."""
    end = len(msg)
    return end - 2 * MAC_SIZE, end - MAC_SIZE


class CookieChecker:
    """Our side: check MACs on handshake messages sent to us, make cookie
    replies. Time is the caller's monotonic `now`."""

    def __init__(self, local_public: bytes, random: Callable[[int], bytes] = os.urandom) -> None:
        self._mac1_key = hash_(LABEL_MAC1, local_public)
        self._cookie_key = hash_(LABEL_COOKIE, local_public)
        self._random = random
        self._secret = b""
        self._secret_at: float | None = None

    def __repr__(self) -> str:
        return "CookieChecker()"

    def check_mac1(self, msg: bytes) -> bool:
        o1, o2 = _mac_offsets(msg)
        return hmac.compare_digest(mac(self._mac1_key, msg[:o1]), msg[o1:o2])

    def _secret_valid(self, now: float) -> bool:
        return self._secret_at is not None and now - self._secret_at <= COOKIE_REFRESH_TIME

    def check_mac2(self, msg: bytes, src: bytes, now: float) -> bool:
        if not self._secret_valid(now):
            return False
        cookie = mac(self._secret, src)
        _, o2 = _mac_offsets(msg)
        return hmac.compare_digest(mac(cookie, msg[:o2]), msg[o2:])

    def make_reply(self, msg: bytes, receiver_index: int, src: bytes, now: float) -> bytes:
        """The 64-byte cookie reply to msg (an initiation or a response)."""
        if not self._secret_valid(now):
            self._secret = self._random(32)
            self._secret_at = now
        cookie = mac(self._secret, src)
        o1, o2 = _mac_offsets(msg)
        nonce = self._random(NONCE_SIZE)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, bytes(msg[o1:o2]), nonce,
                                                            self._cookie_key)
        reply = bytearray(m.COOKIE_REPLY_SIZE)
        reply[0] = m.COOKIE_REPLY
        m.U32.pack_into(reply, m.COOKIE_RECEIVER, receiver_index)
        reply[m.COOKIE_NONCE:m.COOKIE_ENCRYPTED] = nonce
        reply[m.COOKIE_ENCRYPTED:] = sealed
        return bytes(reply)


class MacSigner:
    """Per peer: put MAC1 (and MAC2 while we hold a fresh cookie from that
    peer) on the handshake messages we send it; take its cookie replies."""

    def __init__(self, remote_public: bytes) -> None:
        self._mac1_key = hash_(LABEL_MAC1, remote_public)
        self._cookie_key = hash_(LABEL_COOKIE, remote_public)
        self._cookie = b""
        self._cookie_at: float | None = None
        self._last_mac1: bytes | None = None

    def __repr__(self) -> str:
        return f"MacSigner(has_cookie={self._cookie_at is not None})"

    def has_cookie(self, now: float) -> bool:
        return self._cookie_at is not None and now - self._cookie_at <= COOKIE_REFRESH_TIME

    def sign(self, msg: bytearray, now: float) -> bytes:
        """Fill in msg's MAC1 and MAC2 (zeros without a fresh cookie)."""
        o1, o2 = _mac_offsets(msg)
        mac1 = mac(self._mac1_key, bytes(msg[:o1]))
        msg[o1:o2] = mac1
        self._last_mac1 = mac1
        if self.has_cookie(now):
            msg[o2:] = mac(self._cookie, bytes(msg[:o2]))
        else:
            msg[o2:] = bytes(MAC_SIZE)
        return bytes(msg)

    def consume_reply(self, reply: bytes, now: float) -> bool:
        """Store the cookie of a reply to the last message we signed; False
        (nothing changes) when it does not decrypt."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(reply[m.COOKIE_ENCRYPTED:]), self._last_mac1,
                bytes(reply[m.COOKIE_NONCE:m.COOKIE_ENCRYPTED]), self._cookie_key)
        except CryptoError:
            return False
        if len(cookie) != MAC_SIZE:
            return False
        self._cookie = cookie
        self._cookie_at = now
        return True
