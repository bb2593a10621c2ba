"""The WireGuard device, sans I/O: datagrams and time in, datagrams and the
next timer deadline out. The socket, the TUN and the loop are the caller's.

    engine.receive(data, addr, now) -> Received(verdict, peer, packet, datagrams)
    engine.send(peer, ip_packet, now) -> datagrams (or [] while queued for a handshake)
    engine.tick(now)                  -> Tick(datagrams, deadline)

`now` is the caller's monotonic clock in seconds; the wall clock (for the
initiation's TAI64N timestamp) and the random source are parameters so
tests can fix them. Nothing here raises on bad input: every datagram gets
a verdict, counted by name in `counters` (see RECEIVE_VERDICTS). A packet is
never sent in plain text: without a session it waits (bounded) in the
peer's queue and goes out encrypted once a handshake completes.

Design notes:
- Handshakes we initiate and initiations we answer are independent: a
  simultaneous initiation from both sides completes both ways.
- Our own initiation timestamps never go backwards, even if the wall clock
  does, so a peer never takes our retry for a replay.
- Roaming: a peer's endpoint becomes the source of its last authenticated
  packet (initiation, response, data).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from udpoverlay.errors import UdpOverlayError
from udpoverlay.wireguard import messages as m
from udpoverlay.wireguard import transport
from udpoverlay.wireguard.constants import (
    HANDSHAKE_INITIATION_RATE,
    KEEPALIVE_TIMEOUT,
    QUEUE_LIMIT,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEYS_AFTER,
)
from udpoverlay.wireguard.cookie import CookieChecker, source_bytes
from udpoverlay.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from udpoverlay.wireguard.noise import (
    HandshakeError,
    Identity,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    tai64n,
)
from udpoverlay.wireguard.peer import Endpoint, Peer
from udpoverlay.wireguard.ratelimit import SourceLimiter
from udpoverlay.wireguard.session import Keypair
from udpoverlay.wireguard.transfer import Datagram, Received, Transfer

__all__ = ["Engine", "Received", "Tick", "Datagram", "RECEIVE_VERDICTS", "EVENT_COUNTERS", "PeerConfigError"]


# Every verdict receive() can give, each counted under its own name.
RECEIVE_VERDICTS = {
    "data": "an authenticated IP packet for the TUN (Received.packet)",
    "keepalive": "an authenticated empty data packet",
    "initiation": "a peer's initiation, answered with a response",
    "response": "the answer to our initiation: session up, queued packets sent",
    "cookie_reply": "a peer under load gave us a cookie for our next MAC2",
    "malformed": "not shaped like any WireGuard message (size, type, reserved bytes)",
    "bad_mac": "a handshake message whose MAC1 is not for our public key",
    "cookie_sent": "under load and no valid MAC2: answered with a cookie reply only",
    "bad_cookie": "a cookie reply that does not decrypt",
    "unknown_peer": "an initiation from a static key that is not a peer: no answer",
    "bad_auth": "a handshake or data message that does not authenticate",
    "stale_initiation": "an initiation whose timestamp is not newer than the greatest seen",
    "handshake_flood": "a peer's initiations faster than 50 per second",
    "ratelimited": "under load, a source IP's handshake messages with a valid MAC2 beyond "
                   "20 a second (bursts of 5): dropped before any Diffie-Hellman",
    "unknown_index": "a response, cookie reply or data for an index we do not have",
    "stale_response": "a response to an initiation older than its retry time (tick() ran late)",
    "expired_session": "data on a keypair older than REJECT_AFTER_TIME",
    "replay": "a data counter seen before, too old for the window, or past the limit",
    "malformed_inner": "decrypted data that is not a whole IPv4/IPv6 packet",
    "wrong_inner_source": "decrypted data whose inner source is outside the peer's allowed IPs",
}

# The engine's other counters (what it sent, and what happened to queues
# and handshakes), one line each.
EVENT_COUNTERS = {
    "tx_data": "an IP packet sent encrypted",
    "tx_keepalive": "an empty data packet sent (keepalive, or session confirmation)",
    "tx_initiation": "a handshake initiation sent (first tries and retries)",
    "tx_initiation_retry": "of those, retries after REKEY_TIMEOUT without a response",
    "tx_response": "a handshake response sent",
    "tx_cookie_reply": "a cookie reply sent (under load)",
    "persistent_keepalive": "the persistent-keepalive timer fired",
    "queue_full": "a waiting packet dropped because the peer's queue was full (oldest first)",
    "queue_dropped": "waiting packets dropped when a handshake gave up",
    "handshake_timeout": "a handshake given up after REKEY_ATTEMPT_TIME",
    "no_endpoint": "a packet or handshake for a peer whose endpoint is not known yet",
    "keys_zeroed": "a peer's keys erased after 3 x REJECT_AFTER_TIME without a handshake",
}


class PeerConfigError(UdpOverlayError):
    """A peer that cannot be added (our own key, a low-order key, a duplicate)."""


@dataclass(slots=True)
class Tick:
    datagrams: list[Datagram]
    deadline: float | None  # call tick() again by then (None: no timer armed)


class Engine(Transfer):
    def __init__(self, private_key: PrivateKey, *, wallclock: Callable[[], float] = time.time,
                 random: Callable[[int], bytes] = os.urandom, mtu: int = 0,
                 queue_limit: int = QUEUE_LIMIT,
                 cipher: Callable[[bytes], Any] = transport.PycaCipher) -> None:
        self.identity = Identity(private_key)
        self.public_key = private_key.public
        self.checker = CookieChecker(self.identity.public, random)
        self.limiter = SourceLimiter()
        self.wallclock = wallclock
        self.random = random
        self.mtu = mtu
        self.queue_limit = queue_limit
        self.cipher = cipher     # one transport key -> seal/open (transport.PycaCipher)
        self.under_load = False  # the caller's judgement (e.g. a backlog); then MAC2 is required
        self.peers: dict[PublicKey, Peer] = {}
        self._by_raw: dict[bytes, Peer] = {}
        self._index: dict[int, Peer] = {}
        self._last_timestamp = b""
        self.counters: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"Engine(public_key={self.public_key.to_base64()!r}, peers={len(self.peers)})"

    # -- configuration -----------------------------------------------------
    def add_peer(self, public_key: PublicKey, *, endpoint: Endpoint | None = None,
                 allowed_ips: Iterable = (), preshared_key: PresharedKey | None = None,
                 persistent_keepalive: float = 0, now: float | None = None) -> Peer:
        if public_key in self.peers:
            raise PeerConfigError(f"peer {public_key} already configured")
        if public_key == self.public_key:
            raise PeerConfigError("a peer cannot have our own public key")
        try:
            ss = self.identity.private.exchange(public_key.raw)
        except ValueError:
            raise PeerConfigError(f"peer {public_key}: not a usable public key (low order)") from None
        peer = Peer(public_key, ss, endpoint=endpoint, allowed_ips=allowed_ips,
                    preshared_key=preshared_key, persistent_keepalive=persistent_keepalive,
                    queue_limit=self.queue_limit)
        self.peers[public_key] = peer
        self._by_raw[public_key.raw] = peer
        if persistent_keepalive > 0:
            # wg(8): a keepalive goes out as soon as it is configured (at
            # the next tick when the caller gave no time).
            peer.persistent_at = now if now is not None else 0.0
        return peer

    def remove_peer(self, public_key: PublicKey) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        del self._by_raw[public_key.raw]
        self._forget(peer.keypairs.clear())
        self._drop_handshake(peer)

    def peer(self, public_key: PublicKey) -> Peer | None:
        return self.peers.get(public_key)

    # -- indices -------------------------------------------------------------
    def _new_index(self, peer: Peer) -> int:
        for _ in range(64):  # 2^32 indices: a collision twice in a row is already unlikely
            index = int.from_bytes(self.random(4), "little")
            if index not in self._index:
                self._index[index] = peer
                return index
        raise UdpOverlayError("no free session index")

    def _forget(self, keypairs: Iterable[Keypair]) -> None:
        for kp in keypairs:
            self._index.pop(kp.local_index, None)

    def _drop_handshake(self, peer: Peer) -> None:
        if peer.handshake is not None:
            self._index.pop(peer.handshake.local_index, None)
            peer.handshake = None

    def _timestamp(self) -> bytes:
        stamp = tai64n(self.wallclock())
        if self._last_timestamp and stamp <= self._last_timestamp:
            # The wall clock stood still or stepped back: step one whitened unit.
            secs, nanos = int.from_bytes(self._last_timestamp[:8], "big"), \
                int.from_bytes(self._last_timestamp[8:], "big") + (1 << 24)
            if nanos >= 1_000_000_000:
                secs, nanos = secs + 1, 0
            stamp = secs.to_bytes(8, "big") + nanos.to_bytes(4, "big")
        self._last_timestamp = stamp
        return stamp

    def _begin_handshake(self, peer: Peer, now: float) -> list[Datagram]:
        """Start a handshake unless one is in flight; no more than one new
        initiation per REKEY_TIMEOUT (a later one is scheduled instead)."""
        if peer.retransmit_at is not None:
            return []
        if peer.last_initiation_sent is not None and now - peer.last_initiation_sent < REKEY_TIMEOUT:
            peer.handshake_started = None
            peer.retransmit_at = peer.last_initiation_sent + REKEY_TIMEOUT
            return []
        peer.handshake_started = now
        return self._send_initiation(peer, now)

    def _send_initiation(self, peer: Peer, now: float) -> list[Datagram]:
        if peer.endpoint is None:
            self.counters["no_endpoint"] += 1
            return []
        self._drop_handshake(peer)
        index = self._new_index(peer)
        msg, state = create_initiation(self.identity, peer.public_key.raw, peer.static_static,
                                       index, self._timestamp())
        peer.handshake = state
        peer.last_initiation_sent = now
        jitter = int.from_bytes(self.random(2), "little") % 1000 / 1000 * REKEY_TIMEOUT_JITTER_MAX
        peer.retransmit_at = now + REKEY_TIMEOUT + jitter
        peer.sent_authenticated(now)
        self.counters["tx_initiation"] += 1
        return [(peer.signer.sign(msg, now), peer.endpoint)]

    # -- timers --------------------------------------------------------------
    def next_deadline(self) -> float | None:
        deadlines = [d for d in (p.next_deadline() for p in self.peers.values()) if d is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> Tick:
        out: list[Datagram] = []
        for peer in list(self.peers.values()):
            out += self._tick_peer(peer, now)
        return Tick(out, self.next_deadline())

    def _tick_peer(self, peer: Peer, now: float) -> list[Datagram]:
        out: list[Datagram] = []
        if peer.zero_at is not None and now >= peer.zero_at:
            # Long without a handshake: erase every key and the attempt.
            peer.zero_at = None
            self._forget(peer.keypairs.clear())
            self._drop_handshake(peer)
            self.counters["keys_zeroed"] += 1
        if peer.retransmit_at is not None and now >= peer.retransmit_at:
            peer.retransmit_at = None
            if peer.handshake_started is None:  # a new handshake that had to wait
                peer.handshake_started = now
                out += self._send_initiation(peer, now)
            elif now - peer.handshake_started >= REKEY_ATTEMPT_TIME:
                # Give up; the next packet to send starts over.
                self._drop_handshake(peer)
                peer.handshake_started = None
                self.counters["handshake_timeout"] += 1
                self.counters["queue_dropped"] += len(peer.queue)
                peer.queue.clear()
                if peer.zero_at is None and not peer.keypairs.all():
                    peer.zero_at = now + ZERO_KEYS_AFTER
            else:
                self.counters["tx_initiation_retry"] += 1
                out += self._send_initiation(peer, now)
        if peer.keepalive_at is not None and now >= peer.keepalive_at:
            peer.keepalive_at = None
            again, peer.another_keepalive = peer.another_keepalive, False
            out += self._keepalive(peer, now)
            if again:  # data kept coming after this one was due: one more later
                peer.keepalive_at = now + KEEPALIVE_TIMEOUT
        if peer.new_handshake_at is not None and now >= peer.new_handshake_at:
            # We sent data and heard nothing back: the session may be dead.
            peer.new_handshake_at = None
            out += self._begin_handshake(peer, now)
        if peer.persistent_at is not None and now >= peer.persistent_at:
            peer.persistent_at = None
            self.counters["persistent_keepalive"] += 1
            out += self.send(peer, b"", now)  # through the queue: it may need a handshake
            if peer.persistent_at is None:  # nothing went out (handshake pending): try again later
                peer.persistent_at = now + peer.persistent_keepalive
        return out

    # -- incoming ------------------------------------------------------------
    def receive(self, data: bytes, addr: Endpoint, now: float) -> Received:
        kind = m.message_type(data)
        if kind == m.TRANSPORT:
            result = self._receive_data(data, addr, now)
        elif kind == m.INITIATION:
            result = self._receive_initiation(data, addr, now)
        elif kind == m.RESPONSE:
            result = self._receive_response(data, addr, now)
        elif kind == m.COOKIE_REPLY:
            result = self._receive_cookie(data, now)
        else:
            result = Received("malformed")
        self.counters[result.verdict] += 1
        return result

    def _cookie_instead(self, data: bytes, addr: Endpoint, sender: int, now: float) -> Received | None:
        """Under load, a handshake message without a valid MAC2 only earns
        a cookie reply (64 bytes: smaller than what it answers)."""
        if not self.under_load:
            return None
        try:
            src = source_bytes(addr)
        except (ValueError, TypeError, IndexError):
            return Received("malformed")
        if self.checker.check_mac2(data, src, now):
            return None if self.limiter.allow(str(addr[0]), now) else Received("ratelimited")
        self.counters["tx_cookie_reply"] += 1
        return Received("cookie_sent", datagrams=[(self.checker.make_reply(data, sender, src, now), addr)])

    def _receive_initiation(self, data: bytes, addr: Endpoint, now: float) -> Received:
        if not self.checker.check_mac1(data):
            return Received("bad_mac")
        cookie = self._cookie_instead(data, addr, m.u32(data, m.INIT_SENDER), now)
        if cookie is not None:
            return cookie

        def static_static_of(raw: bytes) -> bytes | None:
            peer = self._by_raw.get(raw)
            return peer.static_static if peer is not None else None

        try:
            init = consume_initiation(self.identity, data, static_static_of)
        except HandshakeError as exc:
            return Received(exc.reason)
        peer = self._by_raw[init.remote_static]
        if init.timestamp <= peer.greatest_timestamp:
            return Received("stale_initiation", peer)
        if (peer.last_initiation_consumed is not None
                and now - peer.last_initiation_consumed < HANDSHAKE_INITIATION_RATE):
            return Received("handshake_flood", peer)
        peer.greatest_timestamp = init.timestamp
        peer.last_initiation_consumed = now
        peer.endpoint = addr
        peer.received_authenticated(now)
        index = self._new_index(peer)
        try:
            msg, keys = create_response(init, peer.psk, index)
        except HandshakeError as exc:
            self._index.pop(index, None)
            return Received(exc.reason, peer)
        self._forget(peer.keypairs.install_responder(Keypair(keys, now, self.cipher)))
        peer.zero_at = now + ZERO_KEYS_AFTER
        peer.sent_authenticated(now)
        self.counters["tx_response"] += 1
        return Received("initiation", peer, datagrams=[(peer.signer.sign(msg, now), addr)])

    def _receive_response(self, data: bytes, addr: Endpoint, now: float) -> Received:
        if not self.checker.check_mac1(data):
            return Received("bad_mac")
        cookie = self._cookie_instead(data, addr, m.u32(data, m.RESP_SENDER), now)
        if cookie is not None:
            return cookie
        receiver = m.u32(data, m.RESP_RECEIVER)
        peer = self._index.get(receiver)
        if peer is None or peer.handshake is None or peer.handshake.local_index != receiver:
            return Received("unknown_index")
        if (peer.last_initiation_sent is None
                or now - peer.last_initiation_sent > REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX):
            # Our retry would have replaced this initiation had tick() run on
            # time; the responder's keypair is as old as it: do not use it.
            return Received("stale_response", peer)
        try:
            keys = consume_response(self.identity, peer.handshake, data, peer.psk)
        except HandshakeError as exc:
            return Received(exc.reason, peer)
        peer.handshake = None  # its index lives on as the keypair's
        kp = Keypair(keys, now, self.cipher)
        self._forget(peer.keypairs.install_initiator(kp))
        self._handshake_done(peer, now)
        peer.endpoint = addr
        peer.received_authenticated(now)
        # Send what waited; with nothing queued, a keepalive confirms the
        # session to the responder (it may not send until it hears from us).
        out = self._flush(peer, now) or self._keepalive(peer, now)
        return Received("response", peer, datagrams=out)

    def _handshake_done(self, peer: Peer, now: float) -> None:
        peer.retransmit_at = None
        peer.handshake_started = None
        peer.rekey_on_receive_sent = False
        peer.last_handshake_wall = self.wallclock()
        peer.zero_at = now + ZERO_KEYS_AFTER

    def _receive_cookie(self, data: bytes, now: float) -> Received:
        peer = self._index.get(m.u32(data, m.COOKIE_RECEIVER))
        if peer is None:
            return Received("unknown_index")
        if not peer.signer.consume_reply(data, now):
            return Received("bad_cookie", peer)
        return Received("cookie_reply", peer)

    def status(self) -> dict:
        return {"public_key": self.public_key.to_base64(),
                "peers": [p.status() for p in self.peers.values()],
                "counters": dict(self.counters)}
