"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses it: the
initiation (type 1) and the response (type 2), without their MACs (those
are cookie.py's), and the transport keys both produce.

Each step below is one line of the whitepaper's section 5.4: C is the
chaining key, H the running hash, k a one-use AEAD key (nonce 0). The
functions are pure apart from the ephemeral keys they generate (which a
test can pass in); failures raise HandshakeError with a counter name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from udpoverlay.errors import UdpOverlayError
from udpoverlay.wireguard import messages as m
from udpoverlay.wireguard.keys import NO_PSK, PrivateKey
from udpoverlay.wireguard.primitives import MAC_SIZE, aead_open, aead_seal, hash_, kdf1, kdf2, kdf3

__all__ = ["CONSTRUCTION", "IDENTIFIER", "HandshakeError", "Identity", "InitiatorState",
           "ConsumedInitiation", "TransportKeys", "tai64n", "create_initiation",
           "consume_initiation", "create_response", "consume_response"]

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"

CHAINING_KEY_0 = hash_(CONSTRUCTION)
HASH_0 = hash_(CHAINING_KEY_0, IDENTIFIER)

TAI64_BASE = (1 << 62) + 10  # TAI64 label of 1970 (plus the 10 s TAI-UTC offset of 1972)
_TAI64N = struct.Struct(">QI")
# Nanoseconds are rounded down to 2^24 ns (~16.8 ms) so the timestamp does
# not leak a fine-grained clock (as wireguard-go does).
_WHITENER = (1 << 24) - 1


class HandshakeError(UdpOverlayError):
    """A handshake message that cannot be used; `reason` is the counter name."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


def tai64n(wall: float) -> bytes:
    """The 12-byte TAI64N label of a wall-clock time (seconds since 1970)."""
    secs = int(wall // 1)
    nanos = int((wall - secs) * 1e9) & ~_WHITENER
    return _TAI64N.pack(TAI64_BASE + secs, min(nanos, 999_999_999) & 0xFFFFFFFF)


def _dh(private: X25519PrivateKey | PrivateKey, public: bytes) -> bytes:
    try:
        if isinstance(private, PrivateKey):
            return private.exchange(public)
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # A low-order point gives an all-zero shared secret: refuse it.
        raise HandshakeError("bad_auth", "low-order public key") from None


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


@dataclass(frozen=True)
class Identity:
    """Our static key and what depends only on it."""

    private: PrivateKey
    public: bytes = field(init=False)
    hash_to_us: bytes = field(init=False)  # H after mixing our public key (initiations to us)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", self.private.public.raw)
        object.__setattr__(self, "hash_to_us", hash_(HASH_0, self.public))

    def __repr__(self) -> str:
        return f"Identity({self.private!r})"


def hash_to(remote_public: bytes) -> bytes:
    """H at the start of an initiation to remote_public (computed once per peer)."""
    return hash_(HASH_0, remote_public)


@dataclass
class InitiatorState:
    """What the initiator keeps between its initiation and the response."""

    local_index: int
    ephemeral: X25519PrivateKey
    chaining_key: bytes
    hash: bytes

    def __repr__(self) -> str:
        return f"InitiatorState(local_index={self.local_index:#010x})"


@dataclass
class ConsumedInitiation:
    """An authenticated initiation, ready to be answered."""

    sender_index: int
    remote_static: bytes
    remote_ephemeral: bytes
    timestamp: bytes
    chaining_key: bytes
    hash: bytes

    def __repr__(self) -> str:
        return f"ConsumedInitiation(sender_index={self.sender_index:#010x})"


@dataclass
class TransportKeys:
    send_key: bytes
    recv_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool

    def __repr__(self) -> str:
        return (f"TransportKeys(local_index={self.local_index:#010x}, "
                f"remote_index={self.remote_index:#010x}, initiator={self.is_initiator})")


def create_initiation(identity: Identity, remote_static: bytes, static_static: bytes,
                      local_index: int, timestamp: bytes,
                      ephemeral: X25519PrivateKey | None = None,
                      prologue_hash: bytes = HASH_0) -> tuple[bytearray, InitiatorState]:
    """The 148-byte initiation with zero MACs, and the state to keep.
    static_static is DH(our static, their static), computed once per peer.
    (prologue_hash and a payload other than a 12-byte timestamp exist only
    for the generic Noise test vectors.)"""
    e = ephemeral or X25519PrivateKey.generate()
    e_pub = _public(e)
    h = hash_(prologue_hash, remote_static)
    c = kdf1(CHAINING_KEY_0, e_pub)
    h = hash_(h, e_pub)
    c, k = kdf2(c, _dh(e, remote_static))
    enc_static = aead_seal(k, 0, identity.public, h)
    h = hash_(h, enc_static)
    c, k = kdf2(c, static_static)
    enc_time = aead_seal(k, 0, timestamp, h)
    h = hash_(h, enc_time)
    msg = bytearray(bytes([m.INITIATION, 0, 0, 0]) + m.U32.pack(local_index) + e_pub + enc_static
                    + enc_time + bytes(2 * MAC_SIZE))
    return msg, InitiatorState(local_index, e, c, h)


def consume_initiation(identity: Identity, msg: bytes, static_static_of,
                       prologue_hash: bytes = HASH_0) -> ConsumedInitiation:
    """Decrypt an initiation sent to us (its MAC1 already checked).
    static_static_of(remote_public) gives DH(our static, theirs) for a
    configured peer, or None: then HandshakeError("unknown_peer")."""
    e_pub = bytes(msg[m.INIT_EPHEMERAL:m.INIT_STATIC])
    enc_static = bytes(msg[m.INIT_STATIC:m.INIT_TIMESTAMP])
    enc_time = bytes(msg[m.INIT_TIMESTAMP:len(msg) - 2 * MAC_SIZE])
    h = identity.hash_to_us if prologue_hash == HASH_0 else hash_(prologue_hash, identity.public)
    c = kdf1(CHAINING_KEY_0, e_pub)
    h = hash_(h, e_pub)
    c, k = kdf2(c, _dh(identity.private, e_pub))
    remote_static = aead_open(k, 0, enc_static, h)
    if remote_static is None:
        raise HandshakeError("bad_auth", "initiation: static key does not decrypt")
    h = hash_(h, enc_static)
    ss = static_static_of(remote_static)
    if ss is None:
        raise HandshakeError("unknown_peer", "initiation from a key that is not a peer")
    c, k = kdf2(c, ss)
    timestamp = aead_open(k, 0, enc_time, h)
    if timestamp is None:
        raise HandshakeError("bad_auth", "initiation: timestamp does not decrypt")
    h = hash_(h, enc_time)
    return ConsumedInitiation(m.u32(msg, m.INIT_SENDER), remote_static, e_pub, timestamp, c, h)


def create_response(init: ConsumedInitiation, psk: bytes | None, local_index: int,
                    ephemeral: X25519PrivateKey | None = None,
                    payload: bytes = b"") -> tuple[bytearray, TransportKeys]:
    """The 92-byte response (zero MACs) and the responder's transport keys.
    (WireGuard's payload is empty; others exist for the Noise test vectors.)"""
    e = ephemeral or X25519PrivateKey.generate()
    e_pub = _public(e)
    c = kdf1(init.chaining_key, e_pub)
    h = hash_(init.hash, e_pub)
    c = kdf1(c, _dh(e, init.remote_ephemeral))
    c = kdf1(c, _dh(e, init.remote_static))
    c, tau, k = kdf3(c, psk or NO_PSK)
    h = hash_(h, tau)
    enc_empty = aead_seal(k, 0, payload, h)
    msg = bytearray(bytes([m.RESPONSE, 0, 0, 0]) + m.U32.pack(local_index)
                    + m.U32.pack(init.sender_index) + e_pub + enc_empty + bytes(2 * MAC_SIZE))
    recv, send = kdf2(c, b"")
    return msg, TransportKeys(send, recv, local_index, init.sender_index, False)


def consume_response(identity: Identity, state: InitiatorState, msg: bytes,
                     psk: bytes | None) -> TransportKeys:
    """Check a response to our initiation (MAC1 already checked); the
    initiator's transport keys."""
    e_pub = bytes(msg[m.RESP_EPHEMERAL:m.RESP_EMPTY])
    c = kdf1(state.chaining_key, e_pub)
    h = hash_(state.hash, e_pub)
    c = kdf1(c, _dh(state.ephemeral, e_pub))
    c = kdf1(c, _dh(identity.private, e_pub))
    c, tau, k = kdf3(c, psk or NO_PSK)
    h = hash_(h, tau)
    if aead_open(k, 0, bytes(msg[m.RESP_EMPTY:len(msg) - 2 * MAC_SIZE]), h) is None:
        raise HandshakeError("bad_auth", "response does not authenticate")
    send, recv = kdf2(c, b"")
    return TransportKeys(send, recv, state.local_index, m.u32(msg, m.RESP_SENDER), True)
