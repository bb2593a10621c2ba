"""The WireGuard transport AEAD's constants: ONE home, neither twin's.

The reference twin (dataplane/_py/wgcrypto.py) imports them from here; the
compiled twin declares the same values as a `cdef enum` in
_fastpath/wgcrypto.pxi and exports them as `testing.WG`, which
tests/differential/test_wg_aead.py checks against this module. The sizes
are WireGuard's (udpoverlay/wireguard/messages.py has the same
TRANSPORT_HEADER_SIZE; this layer may not import that one).
"""

from __future__ import annotations

import operator
import socket

# -- a type-4 datagram: header | ciphertext of the padded packet | tag ---------
WG_HEADER = 16          # 04 00 00 00 | receiver u32 LE | counter u64 LE
WG_TAG = 16             # Poly1305
WG_OVERHEAD = WG_HEADER + WG_TAG   # also the smallest datagram (a keepalive)
WG_PAD = 16             # the plaintext is zero-padded to a multiple of this, not past the MTU
WG_MAX_PACKET = 65535 - WG_OVERHEAD            # the largest packet a seal takes
WG_MAX_DATAGRAM = WG_OVERHEAD + -(-WG_MAX_PACKET // WG_PAD) * WG_PAD
# (= 65536: the largest packet, padded, sealed; an open takes nothing longer)

# -- per-datagram verdicts of an open: index into WG_VERDICT_NAMES ---------------
WG_OK = 0
WG_MALFORMED = 1        # shorter than WG_OVERHEAD, longer than WG_MAX_DATAGRAM, or not 04 00 00 00
WG_BAD_TAG = 2          # does not authenticate under this key and its own counter
WG_VERDICT_NAMES = ("ok", "malformed", "bad_tag")
WG_N_VERDICTS = len(WG_VERDICT_NAMES)

WG_MAX_COUNTER = (1 << 64) - 1
WG_MAX_RECEIVER = (1 << 32) - 1


def padded_length(size: int, mtu: int = 0) -> int:
    """The plaintext length of a size-byte packet once padded: up to a
    multiple of WG_PAD, never past mtu (0: no cap), never below size
    (wireguard.transport.padded's rule, as a length)."""
    target = -(-size // WG_PAD) * WG_PAD
    if mtu and target > mtu:
        target = max(size, mtu)
    return target


# -- argument checks both twins run (once per call, never per packet), so
# -- that a caller's mistake raises the same exception with the same words ----
def check_key(key: object) -> bytes:
    if type(key) is not bytes:
        raise TypeError("a WgKey takes its key as bytes")
    if len(key) != 32:
        raise ValueError("a WireGuard key is 32 bytes")
    return key


def check_receiver(receiver: object) -> int:
    if not isinstance(receiver, int) or not 0 <= receiver <= WG_MAX_RECEIVER:
        raise ValueError("receiver must be an int in 0..2**32-1")
    return receiver


def check_counters(first: object, count: int) -> int:
    """first, when first .. first+count-1 are all valid 64-bit counters."""
    if not isinstance(first, int) or not 0 <= first <= WG_MAX_COUNTER:
        raise ValueError("first_counter must be an int in 0..2**64-1")
    if count and first + count - 1 > WG_MAX_COUNTER:
        raise ValueError("the batch's counters would pass 2**64-1")
    return first


def check_mtu(mtu: object) -> int:
    if not isinstance(mtu, int) or not 0 <= mtu <= 65535:
        raise ValueError("mtu must be an int in 0..65535 (0: no cap)")
    return mtu


def _view(obj: object, name: str, fmt: str) -> memoryview:
    try:
        v = memoryview(obj)         # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must support the buffer protocol") from None
    if v.readonly or v.ndim != 1 or not v.c_contiguous or v.format != fmt:
        raise ValueError(f"{name} must be a writable, contiguous, one-dimensional "
                         f"buffer of format {fmt!r}")
    return v


def slot_views(buf: object, lengths: object, count: object,
               stride: object) -> tuple[memoryview, memoryview]:
    """The slot calls' buffers as memoryviews, checked: buf of format 'B'
    (a bytearray) holding count slots of stride bytes, lengths of format
    'I' (an array('I')) with at least count entries."""
    if not isinstance(count, int) or not isinstance(stride, int):
        raise TypeError("count and stride must be ints")
    if stride < WG_OVERHEAD or stride > WG_MAX_DATAGRAM:
        raise ValueError(f"stride must be in {WG_OVERHEAD}..{WG_MAX_DATAGRAM}")
    b = _view(buf, "buf", "B")
    n = _view(lengths, "lengths", "I")
    if count < 0 or count > len(n):
        raise ValueError("count must be in 0..len(lengths)")
    if count * stride > len(b):
        raise ValueError("buf is shorter than count * stride")
    return b, n


def verdict_view(verdicts: object, count: int) -> memoryview:
    """An open's verdicts as a memoryview, checked: format 'B' (a
    bytearray), at least count entries."""
    v = _view(verdicts, "verdicts", "B")
    if count > len(v):
        raise ValueError("count must be in 0..len(verdicts)")
    return v


# -- WgIo's argument checks (dataplane/_py/wgio.py, _fastpath/wgio.pxi) -------------
def check_tun_mtu(mtu: object) -> int:
    """A TUN MTU for WgIo (the longest plain segment it takes): 0 is 1500."""
    mtu = operator.index(mtu)       # type: ignore[arg-type]
    if not 0 <= mtu <= WG_MAX_PACKET:
        raise ValueError(f"mtu {mtu}: 0 to {WG_MAX_PACKET}")
    return mtu or 1500


def check_range(first: object, count: object, n: int, what: str) -> None:
    """first .. first+count-1 are indexes of n segments or datagrams."""
    if not isinstance(first, int) or not isinstance(count, int):
        raise TypeError("first and count must be ints")
    if not 0 <= first <= first + count <= n:
        raise IndexError(f"{what} out of range")


def check_index(i: object, n: int, what: str) -> None:
    if not isinstance(i, int):
        raise TypeError(f"a {what} index must be an int")
    if not 0 <= i < n:
        raise IndexError(f"{what} {i} out of range")


def check_u32(value: object, name: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be an int in 0..2**32-1")
    return value


def check_nets(allowed: object) -> list[tuple[int, int]]:
    """[(net, mask)], each an IPv4 address as an int (an allowed-IPs list)."""
    return [(check_u32(n, "a net"), check_u32(m, "a mask"))
            for n, m in allowed]       # type: ignore[attr-defined]


def check_addr(addr: object) -> tuple[int, int]:
    """A destination (host, port) as (address as an int, port): host an
    IPv4 address as socket.inet_aton reads it (OSError otherwise)."""
    host: str
    port: object
    host, port = addr       # type: ignore[misc]
    ip = int.from_bytes(socket.inet_aton(host), "big")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError("port must be an int in 0..65535")
    return ip, port
