"""WireGuard's four message layouts (all integers little-endian).

Every message starts with a type byte and three zero bytes; a message with
non-zero reserved bytes is not a WireGuard message (wireguard-go reads the
four bytes as one integer). Offsets are named so that the handshake code,
the cookie code and a compiled twin of the data path share one table.
"""

from __future__ import annotations

import struct

__all__ = ["INITIATION", "RESPONSE", "COOKIE_REPLY", "TRANSPORT",
           "INITIATION_SIZE", "RESPONSE_SIZE", "COOKIE_REPLY_SIZE", "TRANSPORT_HEADER_SIZE",
           "TRANSPORT_MIN_SIZE", "message_type"]

INITIATION = 1
RESPONSE = 2
COOKIE_REPLY = 3
TRANSPORT = 4

# Initiation (148 B): type/reserved 4 | sender 4 | ephemeral 32 | static 32+16
#                     | timestamp 12+16 | mac1 16 | mac2 16
INITIATION_SIZE = 148
INIT_SENDER = 4
INIT_EPHEMERAL = 8
INIT_STATIC = 40
INIT_TIMESTAMP = 88
INIT_MAC1 = 116
INIT_MAC2 = 132

# Response (92 B): type/reserved 4 | sender 4 | receiver 4 | ephemeral 32
#                  | empty 0+16 | mac1 16 | mac2 16
RESPONSE_SIZE = 92
RESP_SENDER = 4
RESP_RECEIVER = 8
RESP_EPHEMERAL = 12
RESP_EMPTY = 44
RESP_MAC1 = 60
RESP_MAC2 = 76

# Cookie reply (64 B): type/reserved 4 | receiver 4 | nonce 24 | cookie 16+16
COOKIE_REPLY_SIZE = 64
COOKIE_RECEIVER = 4
COOKIE_NONCE = 8
COOKIE_ENCRYPTED = 32

# Transport data: type/reserved 4 | receiver 4 | counter 8 | ciphertext (+16 tag)
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + 16  # a keepalive: no plaintext, one tag
TRANSPORT_HEADER = struct.Struct("<IIQ")

U32 = struct.Struct("<I")

_SIZES = {INITIATION: INITIATION_SIZE, RESPONSE: RESPONSE_SIZE, COOKIE_REPLY: COOKIE_REPLY_SIZE}


def message_type(data: bytes) -> int:
    """The message type when data is shaped like one (right size, zero
    reserved bytes), else 0."""
    if len(data) < 4 or data[1] or data[2] or data[3]:
        return 0
    kind = data[0]
    if kind == TRANSPORT:
        return kind if len(data) >= TRANSPORT_MIN_SIZE else 0
    return kind if _SIZES.get(kind) == len(data) else 0


def u32(data: bytes, offset: int) -> int:
    return U32.unpack_from(data, offset)[0]
