"""A peer: its keys, endpoint, allowed inner sources, keypair slots, the
handshake we may have in flight, the packets waiting for a session, and
its timers (absolute deadlines on the caller's clock, None = not armed).

The Engine drives a Peer; the timer rules (whitepaper section 6, the
way wireguard-go's timers.go applies them) are the small methods here so
they read in one place:
- any authenticated packet sent     -> the pending keepalive is not needed;
- any authenticated packet received -> the "peer went quiet" handshake is not needed;
- data received -> send a keepalive in KEEPALIVE_TIMEOUT unless we send first;
- data sent     -> if nothing comes back in KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, handshake;
- either way    -> persistent keepalive re-armed (when configured).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable

from udpoverlay.wireguard.constants import KEEPALIVE_TIMEOUT, REKEY_TIMEOUT
from udpoverlay.wireguard.cookie import MacSigner
from udpoverlay.wireguard.keys import PresharedKey, PublicKey
from udpoverlay.wireguard.noise import InitiatorState, hash_to
from udpoverlay.wireguard.session import Keypairs

__all__ = ["Peer", "Endpoint"]

Endpoint = tuple  # (host, port) as the caller's socket gives and takes it

_TIMERS = ("retransmit_at", "keepalive_at", "new_handshake_at", "persistent_at", "zero_at")


def _networks(nets: Iterable) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                                        list[tuple[int, int]], list[tuple[int, int]]]:
    parsed = tuple(ipaddress.ip_network(n, strict=False) for n in nets)
    v4 = [(int(n.network_address), int(n.netmask)) for n in parsed if n.version == 4]
    v6 = [(int(n.network_address), int(n.netmask)) for n in parsed if n.version == 6]
    return parsed, v4, v6


class Peer:
    def __init__(self, public_key: PublicKey, static_static: bytes, *,
                 endpoint: Endpoint | None = None, allowed_ips: Iterable = (),
                 preshared_key: PresharedKey | None = None, persistent_keepalive: float = 0,
                 queue_limit: int = 128) -> None:
        self.public_key = public_key
        self.static_static = static_static  # DH(our static, theirs): fixed per peer
        self.initial_hash = hash_to(public_key.raw)
        self.preshared_key = preshared_key
        self.endpoint = endpoint
        self.allowed_ips, self._v4, self._v6 = _networks(allowed_ips)
        self.persistent_keepalive = float(persistent_keepalive)
        self.signer = MacSigner(public_key.raw)
        self.keypairs = Keypairs()
        self.handshake: InitiatorState | None = None
        self.handshake_started: float | None = None
        self.last_initiation_sent: float | None = None
        self.greatest_timestamp = bytes(12)
        self.last_initiation_consumed: float | None = None
        self.rekey_on_receive_sent = False
        self.another_keepalive = False  # data arrived while a keepalive was already due
        self.queue: deque[bytes] = deque()
        self.queue_limit = queue_limit
        self.retransmit_at: float | None = None
        self.keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.persistent_at: float | None = None
        self.zero_at: float | None = None
        self.last_handshake_wall: float | None = None
        self.rx_bytes = 0
        self.tx_bytes = 0

    def __repr__(self) -> str:
        return f"Peer({self.public_key.to_base64()!r}, endpoint={self.endpoint!r})"

    @property
    def psk(self) -> bytes | None:
        return self.preshared_key.raw if self.preshared_key is not None else None

    def set_allowed_ips(self, nets: Iterable) -> None:
        self.allowed_ips, self._v4, self._v6 = _networks(nets)

    @property
    def allowed_v4(self) -> list[tuple[int, int]]:
        """The IPv4 allowed networks as (network, mask) ints (the data
        plane's batch path checks inner sources against them)."""
        return self._v4

    def allows_source(self, packet: bytes) -> bool:
        """Cryptokey routing, inbound: the inner source lies in our allowed
        networks (packet already known to be a whole IPv4/IPv6 packet)."""
        if packet[0] >> 4 == 4:
            src, table = int.from_bytes(packet[12:16], "big"), self._v4
        else:
            src, table = int.from_bytes(packet[8:24], "big"), self._v6
        return any(src & mask == net for net, mask in table)

    # -- timers ----------------------------------------------------------
    def next_deadline(self) -> float | None:
        armed = [t for t in (getattr(self, name) for name in _TIMERS) if t is not None]
        return min(armed) if armed else None

    def sent_authenticated(self, now: float) -> None:
        self.keepalive_at = None
        self._rearm_persistent(now)

    def received_authenticated(self, now: float) -> None:
        self.new_handshake_at = None
        self._rearm_persistent(now)

    def sent_data(self, now: float) -> None:
        if self.new_handshake_at is None:
            self.new_handshake_at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT

    def received_data(self, now: float) -> None:
        if self.keepalive_at is None:
            self.keepalive_at = now + KEEPALIVE_TIMEOUT
        else:
            self.another_keepalive = True

    def _rearm_persistent(self, now: float) -> None:
        if self.persistent_keepalive > 0:
            self.persistent_at = now + self.persistent_keepalive

    def status(self) -> dict:
        """What `wg show` would print for this peer (no key material)."""
        return {
            "public_key": self.public_key.to_base64(),
            "endpoint": f"{self.endpoint[0]}:{self.endpoint[1]}" if self.endpoint else None,
            "allowed_ips": [str(n) for n in self.allowed_ips],
            "preshared_key": self.preshared_key is not None,
            "persistent_keepalive": self.persistent_keepalive,
            "latest_handshake": self.last_handshake_wall,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "queued": len(self.queue),
            "session": self.keypairs.current is not None,
        }
