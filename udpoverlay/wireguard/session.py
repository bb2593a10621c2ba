"""One transport session (a keypair) and a peer's three keypair slots.

Slots, so that a rekey loses nothing:
- current: what we send with;
- previous: the one before, still accepted on receive (packets in flight);
- next: a keypair we made as responder. The initiator already uses it, but
  we may not send with it until the initiator proves it has it (its first
  data packet on it); that packet rotates next -> current -> previous.
"""

from __future__ import annotations

from udpoverlay.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from udpoverlay.wireguard.noise import TransportKeys
from udpoverlay.wireguard.replay import ReplayWindow
from udpoverlay.wireguard.transport import PycaCipher

__all__ = ["Keypair", "Keypairs"]


class Keypair:
    __slots__ = ("send", "recv", "local_index", "remote_index", "created", "is_initiator",
                 "send_counter", "replay")

    def __init__(self, keys: TransportKeys, now: float, cipher=PycaCipher) -> None:
        # The cipher objects hold the keys; no raw key is kept beside them.
        self.send = cipher(keys.send_key)
        self.recv = cipher(keys.recv_key)
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.created = now
        self.is_initiator = keys.is_initiator
        self.send_counter = 0
        self.replay = ReplayWindow()

    def can_send(self, now: float) -> bool:
        return (now - self.created < REJECT_AFTER_TIME
                and self.send_counter < REJECT_AFTER_MESSAGES)

    def can_receive(self, now: float) -> bool:
        return now - self.created < REJECT_AFTER_TIME

    def __repr__(self) -> str:
        return (f"Keypair(local_index={self.local_index:#010x}, remote_index={self.remote_index:#010x},"
                f" initiator={self.is_initiator}, sent={self.send_counter})")


class Keypairs:
    """The current / previous / next slots of one peer."""

    __slots__ = ("current", "previous", "next")

    def __init__(self) -> None:
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None

    def all(self) -> list[Keypair]:
        return [kp for kp in (self.current, self.previous, self.next) if kp is not None]

    def by_index(self, index: int) -> Keypair | None:
        for kp in (self.current, self.previous, self.next):
            if kp is not None and kp.local_index == index:
                return kp
        return None

    def install_initiator(self, kp: Keypair) -> list[Keypair]:
        """A handshake we initiated completed: kp is usable at once. Returns
        the keypairs dropped (their indices must leave the index table)."""
        dropped: list[Keypair] = []
        if self.next is not None:
            # An unconfirmed responder keypair is newer than current: keep
            # it as previous (the peer may already send on it).
            dropped += [k for k in (self.previous, self.current) if k is not None]
            self.previous, self.next = self.next, None
        else:
            if self.previous is not None:
                dropped.append(self.previous)
            self.previous = self.current
        self.current = kp
        return dropped

    def install_responder(self, kp: Keypair) -> list[Keypair]:
        """We answered an initiation: kp waits in next until confirmed."""
        dropped = [k for k in (self.next, self.previous) if k is not None]
        self.next, self.previous = kp, None
        return dropped

    def confirm(self, kp: Keypair) -> list[Keypair]:
        """kp (== next) received its first authenticated packet: rotate."""
        dropped = [self.previous] if self.previous is not None else []
        self.previous, self.current, self.next = self.current, kp, None
        return dropped

    def clear(self) -> list[Keypair]:
        dropped = self.all()
        self.current = self.previous = self.next = None
        return dropped
