"""The WireGuard data plane (--backend wireguard): the sans-I/O engine
(udpoverlay/wireguard) between the TUN and the underlay socket.

    routes    longest-prefix match of an inner destination over the peers' subnets
    plane     WgPlane: the engine, the peer table (static Peers -> engine
              peers), one packet each way (outgoing = TUN -> wire,
              incoming = wire -> TUN), counters and status; shaped like
              dataplane.Engine where the daemon, liveness and /metrics read it
    runner    WgRunner: event-loop readers on the TUN and the socket, and
              the engine's timer
    pubkey    `udpoverlay pubkey` (as `wg pubkey`)

Layering: below the daemon, beside host/; uses wireguard/, config/, peer,
errors. The per-packet AEAD is wireguard/transport.py's (seal_with,
open_with): the one place a compiled AEAD replaces.
"""

from udpoverlay.wgplane.plane import COUNTERS, WgPlane
from udpoverlay.wgplane.runner import WgRunner

__all__ = ["WgPlane", "WgRunner", "COUNTERS"]
