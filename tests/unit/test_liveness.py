"""Liveness and keepalives from sampled per-peer counters: a fake engine's
counters and a fake clock drive it. (The receiving side, rx_keepalive,
is the data plane's: tests/unit/dataplane; both ends together run in
tests/integration/laptop/test_nat.py.)"""

from __future__ import annotations

import ipaddress

from tests.support.asyncutil import FakeClock
from udpoverlay.liveness import IDLE_AFTER, KEEPALIVE, Liveness
from udpoverlay.peer import Peer


class FakeEngine:
    def __init__(self, *peers: Peer) -> None:
        self.peers = peers
        self.stats = {p.subnet: [0, 0, 0] for p in peers}   # tx, rx packets, rx keepalives

    def peer_status(self) -> list[dict]:
        return [{"public_ip": str(p.public_ip), "port": p.port, "subnet": str(p.subnet),
                 "tx_packets": self.stats[p.subnet][0], "rx_packets": self.stats[p.subnet][1],
                 "rx_keepalive": self.stats[p.subnet][2]}
                for p in self.peers]


def _peer(n: int, keepalive: int | None = None) -> Peer:
    return Peer(ipaddress.IPv4Address(f"198.18.0.{n}"), 8285,
                ipaddress.IPv4Network(f"198.19.{n}.0/24"), keepalive=keepalive)


def _key(p: Peer) -> tuple:
    return (str(p.public_ip), p.port, str(p.subnet))


def test_states_follow_the_counters():
    a = _peer(2)
    eng, clock, sent = FakeEngine(a), FakeClock(), []
    live = Liveness(lambda: eng, lambda d, addr: sent.append(addr), clock=clock)
    live.sample()
    assert live.details()[_key(a)] == {"state": "never", "last_rx": None, "last_tx": None,
                                       "keepalive": 0, "tx_keepalive": 0}
    eng.stats[a.subnet] = [3, 1, 0]
    clock.advance(1)
    live.sample()
    clock.advance(2.5)
    d = live.details()[_key(a)]
    assert (d["state"], d["last_rx"], d["last_tx"]) == ("active", 2.5, 2.5)
    clock.advance(IDLE_AFTER)
    live.sample()
    assert live.details()[_key(a)]["state"] == "idle" and not sent   # keepalives off


def test_keepalive_when_nothing_was_sent_for_the_period_per_peer_or_default():
    a, b, c = _peer(2, keepalive=5), _peer(3), _peer(4, keepalive=0)
    eng, clock, sent = FakeEngine(a, b, c), FakeClock(), []
    live = Liveness(lambda: eng, lambda d, addr: sent.append((d, addr)), keepalive=2,
                    clock=clock)
    live.sample()       # the first ones go at once (a NAT'd host opens its mapping)
    assert sent == [(KEEPALIVE, ("198.18.0.2", 8285)), (KEEPALIVE, ("198.18.0.3", 8285))]
    sent.clear()
    for _ in range(10):
        clock.advance(1)
        eng.stats[b.subnet][0] += 1 if clock.now < 1006 else 0    # traffic to b for 5 s
        live.sample()
    to = [addr[0] for _, addr in sent]
    assert to.count("198.18.0.2") == 2               # every 5 s
    assert to.count("198.18.0.3") == 2               # only after its traffic stopped
    assert "198.18.0.4" not in to                    # keepalive = 0: off for this peer
    assert live.tx_keepalive == 6 and live.details()[_key(a)]["tx_keepalive"] == 3


def test_a_failing_send_is_counted_and_retried_a_period_later():
    a = _peer(2, keepalive=3)
    eng, clock = FakeEngine(a), FakeClock()

    def send(data, addr):
        raise OSError(101, "Network is unreachable")
    live = Liveness(lambda: eng, send, clock=clock)
    for _ in range(6):
        live.sample()
        clock.advance(1)
    assert live.tx_keepalive_errors == 2 and live.tx_keepalive == 0


def test_a_moved_peer_starts_again_and_no_engine_is_no_sample():
    a = _peer(2)
    eng, clock = FakeEngine(a), FakeClock()
    live = Liveness(lambda: eng, lambda d, addr: None, clock=clock)
    eng.stats[a.subnet] = [1, 1, 0]
    live.sample()
    eng.stats[a.subnet] = [2, 2, 0]
    live.sample()
    assert live.details()[_key(a)]["state"] == "active"
    moved = Peer(ipaddress.IPv4Address("198.18.0.12"), 8285, a.subnet)
    eng.peers = (moved,)
    eng.stats[a.subnet] = [0, 0, 0]
    live.sample()
    assert list(live.details()) == [_key(moved)] and live.details()[_key(moved)]["state"] == "never"
    Liveness(lambda: None, lambda d, addr: None).sample()


def test_a_peer_heard_only_through_keepalives_is_active():
    """A NAT'd peer with nothing to say still proves it is there."""
    a = _peer(2)
    eng, clock = FakeEngine(a), FakeClock()
    live = Liveness(lambda: eng, lambda d, addr: None, clock=clock)
    live.sample()
    clock.advance(1)
    live.sample()
    assert live.details()[_key(a)]["state"] == "never"
    eng.stats[a.subnet][2] = 1
    clock.advance(1)
    live.sample()
    d = live.details()[_key(a)]
    assert (d["state"], d["last_rx"]) == ("active", 0)
