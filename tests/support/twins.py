"""Engines for the data-plane tests: a facade Engine over a chosen twin with
the usual test addresses (198.19.1.0/24 is ours, peers from pktgen), and
both twins at once for the differential tests."""

from __future__ import annotations

import functools
import os
import sys
import types

from tests.support import pktgen as g
from tests.support.requirements import require
from udpoverlay import dataplane

NETWORK = "198.19.0.0/16"
TUN_ADDR = "198.19.1.0"


def engine(twin, backend: str = "udp", peers=None, *, vni: int = 1, mac: bytes = g.MAC,
           port: int = 8285, offload: tuple | None = None) -> dataplane.Engine:
    """An Engine over `twin` (a core module) with peers set (default: g.PEERS)
    and, if given, set_offload(*offload)."""
    e = dataplane.Engine(backend, TUN_ADDR, g.OUR_SUBNET, NETWORK, vni=vni, vtep_mac=mac,
                         port=port, twin=twin)
    e.set_peers(g.PEERS if peers is None else peers)
    if offload is not None:
        e.set_offload(*offload)
    e.t = probe(e)
    return e


def probe(e: dataplane.Engine) -> types.SimpleNamespace:
    """The twin's test-only entry points (its `testing` part) bound to e's
    core: probe(e).outbound(pkt), .inbound(data, src), .outbound_batch(bufs),
    .inbound_batch(datagrams)."""
    t = sys.modules[type(e.core).__module__].testing
    return types.SimpleNamespace(**{name: functools.partial(getattr(t, name), e.core)
                                    for name in ("outbound", "inbound", "outbound_batch",
                                                 "inbound_batch")})


def both():
    """(reference, compiled) core modules; the compiled one missing skips,
    or fails under UDPOVERLAY_REQUIRE_EXTENSION=1."""
    try:
        cy = dataplane.twin("cython")
    except ImportError as exc:
        if os.environ.get("UDPOVERLAY_REQUIRE_EXTENSION") == "1":
            raise
        require(False, f"compiled fast path not built: {exc}")
    return dataplane.twin("python"), cy


def engines(backend: str = "udp", peers=None, **kw) -> list[dataplane.Engine]:
    """One engine per twin, reference first, configured alike."""
    return [engine(t, backend, peers, **kw) for t in both()]
