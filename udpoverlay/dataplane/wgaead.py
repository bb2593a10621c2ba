"""The WireGuard transport AEAD the data path uses: `WgKey`, one 32-byte
key's type-4 seal and open over whole batches, from the compiled twin
(udpoverlay.dataplane._c, _fastpath/wgcrypto.pxi: libcrypto's
ChaCha20-Poly1305, loop without the GIL) when it loaded, else the pure-Python reference
(dataplane/_py/wgcrypto.py, on pyca `cryptography`): the same choice, and
the same UDPOVERLAY_NO_EXTENSIONS / UDPOVERLAY_REQUIRE_EXTENSION rules, as
the rest of the data plane (twins.py).

Why here and not in udpoverlay.wireguard: the import layers keep dataplane
and wireguard independent siblings, and the compiled class lives in the
data plane's extension. The protocol engine's own per-packet functions
(wireguard.transport.seal/open_) stay the statement of the bytes; the
differential tests hold both twins to them.

    key = WgKey(session_key)                      # bytes, 32
    datagrams = key.seal_batch(receiver, counter, packets, mtu)
    for verdict, plaintext in key.open_batch(datagrams): ...
    key.seal_slots(buf, lengths, count, stride, receiver, counter, mtu)   # in place
    key.open_slots(buf, lengths, verdicts, count, stride)                 # in place
    key.close()                                   # wipe now, not at collection

Verdicts and sizes: wgwire.py. Counters are the caller's (one per packet,
never reused under one key); the replay window (wireguard/replay.py) is
the caller's too, after WG_OK.
"""

from __future__ import annotations

from udpoverlay.dataplane import twins
from udpoverlay.dataplane.wgwire import (
    WG_BAD_TAG,
    WG_HEADER,
    WG_MALFORMED,
    WG_MAX_DATAGRAM,
    WG_MAX_PACKET,
    WG_OK,
    WG_OVERHEAD,
    WG_TAG,
    WG_VERDICT_NAMES,
    padded_length,
)

__all__ = ["WgKey", "IMPLEMENTATION", "wgkey_class", "library", "WG_OK", "WG_MALFORMED", "WG_BAD_TAG",
           "WG_VERDICT_NAMES", "WG_HEADER", "WG_TAG", "WG_OVERHEAD", "WG_MAX_PACKET",
           "WG_MAX_DATAGRAM", "padded_length"]


def wgkey_class(name: str) -> type:
    """One twin's WgKey: "python" or "cython" (ImportError when the
    extension is not built, AttributeError when it was built without it)."""
    cls: type = twins.twin(name).WgKey
    return cls


def library(name: str) -> str:
    """What one twin's WgKey seals with (status): library, version, path."""
    describe = twins.twin(name).aead_library
    return str(describe())


WgKey: type = twins.DEFAULT.WgKey
IMPLEMENTATION: str = twins.IMPLEMENTATION
