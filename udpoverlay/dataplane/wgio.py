"""The WireGuard plane's batched I/O, `WgIo` (see dataplane/_py/wgio.py for
the contract): the compiled twin (_fastpath/wgio.pxi: reads, splits, seals,
GSO sends, GRO receives, opens and coalesced TUN writes without the GIL)
when it loaded, else the pure-Python reference; the same choice and
environment rules as the rest of the data plane (twins.py)."""

from __future__ import annotations

from udpoverlay.dataplane import twins
from udpoverlay.dataplane._py.wgio import (
    ACCEPT_FIELDS,
    KIND_OTHER,
    KIND_TRANSPORT,
    OPEN_BAD_TAG,
    OPEN_MALFORMED,
    WGIO_COUNTERS,
)

__all__ = ["WgIo", "wgio_class", "WGIO_COUNTERS", "ACCEPT_FIELDS", "OPEN_BAD_TAG",
           "OPEN_MALFORMED", "KIND_OTHER", "KIND_TRANSPORT"]


def wgio_class(name: str) -> type:
    """One twin's WgIo: "python" or "cython"."""
    cls: type = twins.twin(name).WgIo
    return cls


WgIo: type = twins.DEFAULT.WgIo
