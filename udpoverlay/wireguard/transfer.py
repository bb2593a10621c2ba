"""The transport half of the WireGuard engine: type-4 data out and in, one
packet at a time (send, receive's data case) or a run at a time for a data
plane that seals and opens batches itself (reserve/sent,
data_keypair/received). The Engine (engine.py) is this plus the
handshakes, cookies and timers; the split is by message kind, and the
bookkeeping both paths share (_authenticated, _rekey_due) lives here once.

What this half needs of the engine it is mixed into: `counters`, `mtu`,
`_index` (our receiver indices), and three handshake steps declared below.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from udpoverlay.wireguard import transport
from udpoverlay.wireguard.constants import (
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
)
from udpoverlay.wireguard.peer import Endpoint, Peer
from udpoverlay.wireguard.session import Keypair

__all__ = ["Transfer", "Received", "Datagram"]

Datagram = tuple[bytes, Endpoint]


@dataclass(slots=True)
class Received:
    verdict: str
    peer: Peer | None = None
    packet: bytes | None = None  # for the TUN, padding removed
    datagrams: list[Datagram] = field(default_factory=list)


class Transfer:
    """Mixed into Engine (see the module notes)."""

    counters: collections.Counter[str]
    mtu: int
    _index: dict[int, Peer]

    # -- the handshake steps this half triggers (the Engine's) -----------------
    def _begin_handshake(self, peer: Peer, now: float) -> list[Datagram]:
        raise NotImplementedError

    def _forget(self, keypairs: Iterable[Keypair]) -> None:
        raise NotImplementedError

    def _handshake_done(self, peer: Peer, now: float) -> None:
        raise NotImplementedError

    # -- outgoing ------------------------------------------------------------
    def send(self, peer: Peer, packet: bytes, now: float) -> list[Datagram]:
        """Encrypt packet for peer, or queue it until a session exists
        (the handshake datagram, if one is due, is returned instead)."""
        if len(peer.queue) >= peer.queue_limit:
            peer.queue.popleft()  # the oldest is the least useful
            self.counters["queue_full"] += 1
        peer.queue.append(packet)
        return self._flush(peer, now)

    def _flush(self, peer: Peer, now: float) -> list[Datagram]:
        if not peer.queue:
            return []
        if peer.endpoint is None:
            self.counters["no_endpoint"] += 1
            return []
        kp = peer.keypairs.current
        if kp is None or not kp.can_send(now):
            return self._begin_handshake(peer, now)
        out = []
        while peer.queue:
            out.append(self._encrypt(peer, kp, peer.queue.popleft(), now))
        return out + self._rekey_due(peer, kp, now)

    def _rekey_due(self, peer: Peer, kp: Keypair, now: float) -> list[Datagram]:
        """Keep the key fresh: rekey after REKEY_AFTER_TIME (initiator's
        job) or REKEY_AFTER_MESSAGES (anyone's)."""
        if kp.send_counter > REKEY_AFTER_MESSAGES or (
                kp.is_initiator and now - kp.created >= REKEY_AFTER_TIME):
            return self._begin_handshake(peer, now)
        return []

    # -- batches: the data plane seals and opens, the engine decides ------------
    def reserve(self, peer: Peer, count: int, now: float) -> tuple[Keypair, int] | None:
        """Claim `count` (>= 1) consecutive send counters of peer's current
        keypair for packets the caller seals and sends itself, with send()'s
        bookkeeping for each; sent() once they are out. (keypair, first
        counter), or None (nothing claimed) when they must go through
        send(): packets already wait, no endpoint, no usable keypair, or
        too few counters left."""
        kp = peer.keypairs.current
        if (peer.queue or peer.endpoint is None or kp is None or not kp.can_send(now)
                or kp.send_counter + count > REJECT_AFTER_MESSAGES):
            return None
        first = kp.send_counter
        kp.send_counter += count
        peer.sent_authenticated(now)
        peer.sent_data(now)
        self.counters["tx_data"] += count
        return kp, first

    def sent(self, peer: Peer, kp: Keypair, wire_bytes: int, now: float) -> list[Datagram]:
        """After reserve(): the datagrams went out (wire_bytes in all)."""
        peer.tx_bytes += wire_bytes
        return self._rekey_due(peer, kp, now)

    def data_keypair(self, receiver: int, now: float) -> tuple[str, Peer | None, Keypair | None]:
        """For transport datagrams the caller opens itself: ("", peer,
        keypair) of our receiver index, or the verdict that refuses them all
        ("unknown_index", "expired_session"; the caller counts it)."""
        peer = self._index.get(receiver)
        kp = peer.keypairs.by_index(receiver) if peer is not None else None
        if peer is None or kp is None:
            return "unknown_index", None, None
        if not kp.can_receive(now):
            return "expired_session", peer, kp
        return "", peer, kp

    def received(self, peer: Peer, kp: Keypair, addr: Endpoint, now: float, wire_bytes: int,
                 data: int) -> list[Datagram]:
        """After data_keypair(): datagrams the caller opened under kp,
        authenticated and fresh (the replay window took them), wire_bytes
        in all, `data` of them not empty: _receive_data's bookkeeping once."""
        out = self._authenticated(peer, kp, addr, wire_bytes, now)
        if data:
            peer.received_data(now)
        return out

    def count(self, verdict: str, n: int = 1) -> None:
        """Count n receive verdicts of datagrams the caller handled."""
        self.counters[verdict] += n

    def _encrypt(self, peer: Peer, kp: Keypair, packet: bytes, now: float) -> Datagram:
        counter = kp.send_counter
        kp.send_counter += 1
        datagram = kp.send.seal(kp.remote_index, counter, transport.padded(packet, self.mtu))
        peer.tx_bytes += len(datagram)
        peer.sent_authenticated(now)
        if packet:
            peer.sent_data(now)
            self.counters["tx_data"] += 1
        else:
            self.counters["tx_keepalive"] += 1
        assert peer.endpoint is not None
        return datagram, peer.endpoint

    def _keepalive(self, peer: Peer, now: float) -> list[Datagram]:
        kp = peer.keypairs.current
        if peer.endpoint is None or kp is None or not kp.can_send(now):
            return []
        return [self._encrypt(peer, kp, b"", now)]

    # -- incoming --------------------------------------------------------------
    def _receive_data(self, data: bytes, addr: Endpoint, now: float) -> Received:
        receiver, counter = transport.parse_header(data)
        why, peer, kp = self.data_keypair(receiver, now)
        if why or peer is None or kp is None:
            return Received(why, peer)
        if counter >= REJECT_AFTER_MESSAGES:
            return Received("replay", peer)
        plaintext = kp.recv.open(counter, data)
        if plaintext is None:
            return Received("bad_auth", peer)
        if not kp.replay.accept(counter, REJECT_AFTER_MESSAGES):
            return Received("replay", peer)
        out = self._authenticated(peer, kp, addr, len(data), now)
        if not plaintext:
            return Received("keepalive", peer, datagrams=out)
        peer.received_data(now)
        size = transport.inner_length(plaintext)
        if size < 0:
            return Received("malformed_inner", peer, datagrams=out)
        packet = plaintext[:size]
        if not peer.allows_source(packet):
            return Received("wrong_inner_source", peer, datagrams=out)
        return Received("data", peer, packet, out)

    def _authenticated(self, peer: Peer, kp: Keypair, addr: Endpoint, wire_bytes: int,
                       now: float) -> list[Datagram]:
        """What authenticated, fresh data on kp does to its peer: roaming,
        the timers, confirming a responder's keypair, rekey on receive."""
        peer.endpoint = addr
        peer.rx_bytes += wire_bytes
        peer.received_authenticated(now)  # before sending: what we send now still awaits an answer
        out: list[Datagram] = []
        if kp is peer.keypairs.next:
            self._forget(peer.keypairs.confirm(kp))
            self._handshake_done(peer, now)
            out += self._flush(peer, now)
        current = peer.keypairs.current
        if (current is not None and current.is_initiator and not peer.rekey_on_receive_sent
                and now - current.created >= REKEY_ON_RECEIVE_AGE):
            peer.rekey_on_receive_sent = True
            out += self._begin_handshake(peer, now)
        return out
