"""Two engines in memory: handshakes, data, rekeying, timers, cookies and
everything a hostile network can send. Time is a fake clock."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.wireguard import A_ADDR, B_ADDR, Clock, icmp_echo, make_pair
from udpoverlay.wireguard import RECEIVE_VERDICTS, Engine, PeerConfigError, generate
from udpoverlay.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from udpoverlay.wireguard.keys import PresharedKey

A_IP, B_IP = "198.19.1.1", "198.19.2.1"


def a_to_b(seq: int, size: int = 20) -> bytes:
    return icmp_echo(A_IP, B_IP, 7, seq, os.urandom(size))


def b_to_a(seq: int, size: int = 20) -> bytes:
    return icmp_echo(B_IP, A_IP, 7, seq, os.urandom(size), reply=True)


def established(psk=None, **kw):
    """A pair after A initiated and B confirmed (one packet A->B)."""
    p = make_pair(psk=psk, **kw)
    first = a_to_b(0)
    out = p.a.send(p.a_peer_b, first, p.clock.now)
    res = p.deliver(out, "b")
    assert p.packets(res, "b") == [first]
    return p


# -- handshakes and data ---------------------------------------------------

def test_a_initiates_then_data_both_ways():
    p = make_pair()
    pkts = [a_to_b(i) for i in range(3)]
    out = []
    for pkt in pkts:
        out += p.a.send(p.a_peer_b, pkt, p.clock.now)
    assert len(out) == 1 and len(out[0][0]) == 148 and out[0][1] == B_ADDR  # one initiation, data queued
    res = p.deliver(out, "b")
    verdicts = [(d, r.verdict) for d, r in res]
    assert verdicts[:2] == [("b", "initiation"), ("a", "response")]
    assert p.packets(res, "b") == pkts  # queued packets arrive, in order
    # B's keypair was confirmed by A's first data: B can send at once
    back = b_to_a(9)
    out = p.b.send(p.b_peer_a, back, p.clock.now)
    assert len(out) == 1 and out[0][0][0] == 4
    assert p.packets(p.deliver(out, "a"), "a") == [back]
    assert p.a.counters["response"] == 1 and p.b.counters["initiation"] == 1


def test_b_initiates():
    p = make_pair()
    pkt = b_to_a(1)
    res = p.deliver(p.b.send(p.b_peer_a, pkt, p.clock.now), "a")
    assert p.packets(res, "a") == [pkt]
    pkt2 = a_to_b(2)
    assert p.packets(p.deliver(p.a.send(p.a_peer_b, pkt2, p.clock.now), "b"), "b") == [pkt2]


def test_handshake_without_data_is_confirmed_by_a_keepalive():
    p = make_pair(persistent_keepalive=25)
    tick = p.a.tick(p.clock.now)  # persistent keepalive fires at once: needs a handshake first
    res = p.deliver(tick.datagrams, "b")
    assert [r.verdict for _, r in res] == ["initiation", "response", "keepalive"]
    assert p.b_peer_a.keypairs.current is not None and p.b_peer_a.keypairs.next is None


def test_simultaneous_initiation_settles():
    p = make_pair()
    out_a = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    out_b = p.b.send(p.b_peer_a, b_to_a(1), p.clock.now)
    res = p.deliver(out_a, "b") + p.deliver(out_b, "a")
    assert len(p.packets(res, "a")) == 1 and len(p.packets(res, "b")) == 1
    for i in range(2, 5):
        assert len(p.packets(p.deliver(p.a.send(p.a_peer_b, a_to_b(i), p.clock.now), "b"), "b")) == 1
        assert len(p.packets(p.deliver(p.b.send(p.b_peer_a, b_to_a(i), p.clock.now), "a"), "a")) == 1


def test_preshared_key_both_sides():
    psk = PresharedKey(os.urandom(32))
    p = established(psk=psk)
    assert p.a_peer_b.keypairs.current is not None


def test_preshared_key_mismatch_fails():
    p = make_pair()
    p.a_peer_b.preshared_key = PresharedKey(os.urandom(32))
    res = p.deliver(p.a.send(p.a_peer_b, a_to_b(1), p.clock.now), "b")
    assert [r.verdict for _, r in res] == ["initiation", "bad_auth"]
    assert p.a_peer_b.keypairs.current is None


def test_padding_removed_and_sizes():
    p = established()
    pkt = a_to_b(1, size=3)  # 20 + 8 + 3 = 31 bytes -> padded to 32
    out = p.a.send(p.a_peer_b, pkt, p.clock.now)
    assert len(out[0][0]) == 16 + 32 + 16
    assert p.packets(p.deliver(out, "b"), "b") == [pkt]


# -- rekeying --------------------------------------------------------------

class Wire:
    """Datagrams in flight with a fixed latency."""

    def __init__(self, pair, latency: float) -> None:
        self.p, self.latency, self.flying = pair, latency, []
        self.received = {"a": [], "b": []}

    def put(self, datagrams, to: str) -> None:
        self.flying += [(self.p.clock.now + self.latency, to, d) for d, _ in datagrams]

    def step(self) -> None:
        now = self.p.clock.now
        due = [f for f in self.flying if f[0] <= now]
        self.flying = [f for f in self.flying if f[0] > now]
        for _, to, data in due:
            engine, src = (self.p.a, B_ADDR) if to == "a" else (self.p.b, A_ADDR)
            r = engine.receive(data, src, now)
            if r.verdict == "data":
                self.received[to].append(r.packet)
            self.put(r.datagrams, "b" if to == "a" else "a")


def test_rekey_after_time_loses_no_packet():
    p = established()
    wire = Wire(p, latency=0.3)
    sent = {"a": [], "b": []}
    first_index = p.a_peer_b.keypairs.current.local_index
    seq = 0
    for _ in range(int(3.2 * REKEY_AFTER_TIME / 0.25)):  # 384 s, 4 steps a second
        p.clock.advance(0.25)
        seq += 1
        pa, pb = a_to_b(seq), b_to_a(seq)
        sent["b"].append(pa)
        sent["a"].append(pb)
        wire.put(p.a.send(p.a_peer_b, pa, p.clock.now), "b")
        wire.put(p.b.send(p.b_peer_a, pb, p.clock.now), "a")
        wire.put(p.a.tick(p.clock.now).datagrams, "b")
        wire.put(p.b.tick(p.clock.now).datagrams, "a")
        wire.step()
    for _ in range(10):
        p.clock.advance(0.25)
        wire.step()
    assert wire.received["b"] == sent["b"]
    assert wire.received["a"] == sent["a"]
    assert p.a.counters["tx_initiation"] >= 3  # rekeyed at ~120 s, ~240 s, ~360 s
    assert p.a_peer_b.keypairs.current.local_index != first_index
    for e in (p.a, p.b):
        assert not {"replay", "bad_auth", "unknown_index", "expired_session"} & set(e.counters)


def test_rekey_after_messages():
    p = established()
    p.b_peer_a.keypairs.current.send_counter = REKEY_AFTER_MESSAGES + 1  # B: the responder
    out = p.b.send(p.b_peer_a, b_to_a(1), p.clock.now)
    assert [d[0] for d, _ in out] == [4, 1]  # the data, then an initiation


def test_counter_exhausted_means_new_handshake_not_reuse():
    p = established()
    p.a_peer_b.keypairs.current.send_counter = REJECT_AFTER_MESSAGES
    p.clock.advance(REKEY_TIMEOUT)
    out = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    assert [d[0] for d, _ in out] == [1]  # only an initiation; the packet waits


def test_old_session_is_not_used_after_reject_after_time():
    p = established()
    p.clock.advance(REJECT_AFTER_TIME + 1)
    out = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    assert [d[0] for d, _ in out] == [1]
    # and B refuses data on a keypair that old
    p2 = established()
    kp = p2.a_peer_b.keypairs.current
    from udpoverlay.wireguard import transport
    datagram = kp.send.seal(kp.remote_index, 99, transport.padded(a_to_b(1)))
    p2.clock.advance(REJECT_AFTER_TIME)
    assert p2.b.receive(datagram, A_ADDR, p2.clock.now).verdict == "expired_session"


def test_responder_rekeys_via_initiator_when_it_only_receives():
    """Receiving on an initiator keypair 165 s old starts a handshake."""
    p = established()
    p.clock.advance(REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT + 0.5)
    out = p.b.send(p.b_peer_a, b_to_a(1), p.clock.now)
    res = p.a.receive(out[0][0], B_ADDR, p.clock.now)
    assert res.verdict == "data" and [d[0] for d, _ in res.datagrams] == [1]


# -- replays, tampering, strangers -------------------------------------------

def test_replayed_initiation_is_ignored():
    p = make_pair()
    init = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    p.deliver(init, "b")
    r = p.b.receive(init[0][0], A_ADDR, p.clock.now + 1)
    assert r.verdict == "stale_initiation" and r.datagrams == []
    # an older one after a newer handshake: ignored as well
    p.clock.advance(REKEY_TIMEOUT + 1)
    p.a_peer_b.keypairs.clear()
    p.deliver(p.a.send(p.a_peer_b, a_to_b(2), p.clock.now), "b")
    assert p.b.receive(init[0][0], A_ADDR, p.clock.now).verdict == "stale_initiation"
    assert p.b.counters["stale_initiation"] == 2


def test_initiation_flood_is_dropped():
    p = make_pair()
    a_peer = p.a_peer_b
    first = p.a.send(a_peer, a_to_b(1), p.clock.now)
    assert p.b.receive(first[0][0], A_ADDR, p.clock.now).verdict == "initiation"
    a_peer.retransmit_at = None
    a_peer.last_initiation_sent = None
    second = p.a._send_initiation(a_peer, p.clock.now)  # a fresh timestamp (whitened +1 step)
    assert p.b.receive(second[0][0], A_ADDR, p.clock.now + 0.001).verdict == "handshake_flood"
    assert p.b.receive(second[0][0], A_ADDR, p.clock.now + 0.1).verdict == "initiation"


def test_a_response_older_than_the_retry_time_is_not_used():
    """tick() ran late: the responder's keypair is as old as our initiation."""
    p = make_pair()
    init = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    resp = p.b.receive(init[0][0], A_ADDR, p.clock.now).datagrams
    p.clock.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 0.01)
    r = p.a.receive(resp[0][0], B_ADDR, p.clock.now)
    assert r.verdict == "stale_response" and r.datagrams == [] and p.a_peer_b.keypairs.all() == []


def test_replayed_data_is_dropped():
    p = established()
    out = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    assert p.b.receive(out[0][0], A_ADDR, p.clock.now).verdict == "data"
    r = p.b.receive(out[0][0], A_ADDR, p.clock.now)
    assert r.verdict == "replay" and r.packet is None and p.b.counters["replay"] == 1


def test_flipped_bits_are_dropped():
    p = established()
    data = p.a.send(p.a_peer_b, a_to_b(1, size=40), p.clock.now)[0][0]
    seen = {}
    for pos in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            r = p.b.receive(bytes(bad), A_ADDR, p.clock.now)
            assert r.packet is None and r.datagrams == [], (pos, bit)
            seen[r.verdict] = seen.get(r.verdict, 0) + 1
    assert set(seen) <= {"malformed", "unknown_index", "bad_auth", "replay"}
    assert seen["bad_auth"] > 2 * len(data) - 20
    assert p.b.receive(data, A_ADDR, p.clock.now).verdict == "data"  # the original still passes


def test_unknown_static_key_gets_no_answer():
    p = make_pair()
    stranger = Engine(generate(), wallclock=p.clock.wall)
    peer = stranger.add_peer(p.b.public_key, endpoint=B_ADDR, allowed_ips=["198.19.2.0/24"])
    init = stranger.send(peer, a_to_b(1), p.clock.now)
    r = p.b.receive(init[0][0], ("198.18.0.66", 51820), p.clock.now)
    assert r.verdict == "unknown_peer" and r.datagrams == [] and r.peer is None
    assert p.b.counters["unknown_peer"] == 1


def test_initiation_with_wrong_mac1_gets_no_answer():
    p = make_pair()
    init = bytearray(p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)[0][0])
    init[120] ^= 1
    r = p.b.receive(bytes(init), A_ADDR, p.clock.now)
    assert r.verdict == "bad_mac" and r.datagrams == []


def test_wrong_inner_source_and_malformed_inner():
    p = established()
    spoof = icmp_echo("198.19.9.9", B_IP, 1, 1)
    r = p.b.receive(p.a.send(p.a_peer_b, spoof, p.clock.now)[0][0], A_ADDR, p.clock.now)
    assert r.verdict == "wrong_inner_source" and r.packet is None
    r = p.b.receive(p.a.send(p.a_peer_b, b"\x00" * 40, p.clock.now)[0][0], A_ADDR, p.clock.now)
    assert r.verdict == "malformed_inner"
    truncated = a_to_b(1)[:-20]  # header says longer than what arrived (even padded)
    r = p.b.receive(p.a.send(p.a_peer_b, truncated, p.clock.now)[0][0], A_ADDR, p.clock.now)
    assert r.verdict == "malformed_inner"


def test_roaming_follows_last_authenticated_source():
    p = established()
    moved = ("198.18.7.7", 40000)
    out = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    assert p.b.receive(out[0][0], moved, p.clock.now).verdict == "data"
    assert p.b_peer_a.endpoint == moved
    assert p.b.send(p.b_peer_a, b_to_a(1), p.clock.now)[0][1] == moved
    # forged traffic from elsewhere moves nothing
    bad = bytearray(p.a.send(p.a_peer_b, a_to_b(2), p.clock.now)[0][0])
    bad[-1] ^= 1
    assert p.b.receive(bytes(bad), ("198.18.6.6", 1), p.clock.now).verdict == "bad_auth"
    assert p.b_peer_a.endpoint == moved


# -- cookies and amplification ---------------------------------------------

def test_cookie_reply_flow_under_load():
    p = make_pair()
    p.b.under_load = True
    pkt = a_to_b(1)
    init = p.a.send(p.a_peer_b, pkt, p.clock.now)
    r = p.b.receive(init[0][0], A_ADDR, p.clock.now)
    assert r.verdict == "cookie_sent" and len(r.datagrams) == 1 and len(r.datagrams[0][0]) == 64
    assert p.b_peer_a.keypairs.all() == []  # no handshake work done
    assert p.a.receive(r.datagrams[0][0], B_ADDR, p.clock.now).verdict == "cookie_reply"
    # the retry (after REKEY_TIMEOUT + jitter) carries MAC2 and gets a response
    p.clock.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    retry = p.a.tick(p.clock.now).datagrams
    assert len(retry) == 1 and retry[0][0][-16:] != bytes(16)
    res = p.deliver(retry, "b")
    assert [x.verdict for _, x in res][:2] == ["initiation", "response"]
    assert p.packets(res, "b") == [pkt]


def test_cookie_for_a_response_when_the_initiator_is_under_load():
    p = make_pair()
    p.a.under_load = True
    init = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    resp = p.b.receive(init[0][0], A_ADDR, p.clock.now).datagrams
    r = p.a.receive(resp[0][0], B_ADDR, p.clock.now)
    assert r.verdict == "cookie_sent" and len(r.datagrams[0][0]) == 64 < 92
    assert p.b.receive(r.datagrams[0][0], A_ADDR, p.clock.now).verdict == "cookie_reply"


def test_a_forged_cookie_reply_changes_nothing():
    p = make_pair()
    init = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)
    index = int.from_bytes(init[0][0][4:8], "little")
    forged = b"\x03\x00\x00\x00" + index.to_bytes(4, "little") + os.urandom(56)
    assert p.a.receive(forged, B_ADDR, p.clock.now).verdict == "bad_cookie"
    assert not p.a_peer_b.signer.has_cookie(p.clock.now)


def _unauthenticated_inputs(p):
    init = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)[0][0]
    stranger = Engine(generate())
    sp = stranger.add_peer(p.b.public_key, endpoint=B_ADDR)
    yield stranger.send(sp, b"", p.clock.now)[0][0]
    yield init
    bad_mac = bytearray(init)
    bad_mac[130] ^= 1
    yield bytes(bad_mac)
    bad_static = bytearray(init)
    bad_static[50] ^= 1  # MAC1 no longer matches either
    yield bytes(bad_static)
    yield b"\x02\x00\x00\x00" + os.urandom(88)
    yield b"\x03\x00\x00\x00" + os.urandom(60)
    yield b"\x04\x00\x00\x00" + os.urandom(60)
    yield os.urandom(200)


@pytest.mark.parametrize("under_load", [False, True])
def test_no_answer_is_larger_than_an_unauthenticated_message(under_load):
    p = make_pair()
    p.b.under_load = under_load
    for i, data in enumerate(_unauthenticated_inputs(p)):
        p.clock.advance(1)
        r = p.b.receive(data, ("198.18.0.99", 1000 + i), p.clock.now)
        for answer, _ in r.datagrams:
            assert len(answer) <= len(data), (r.verdict, len(answer), len(data))


# -- timers ------------------------------------------------------------------

def test_keepalive_after_receiving_data_when_we_stay_quiet():
    p = established()
    t0 = p.clock.now
    assert p.b_peer_a.keepalive_at == pytest.approx(t0 + KEEPALIVE_TIMEOUT)
    assert p.b.tick(t0 + KEEPALIVE_TIMEOUT - 0.01).datagrams == []
    out = p.b.tick(t0 + KEEPALIVE_TIMEOUT).datagrams
    assert len(out) == 1 and len(out[0][0]) == 32
    p.clock.advance(KEEPALIVE_TIMEOUT)
    assert p.a.receive(out[0][0], B_ADDR, p.clock.now).verdict == "keepalive"
    assert p.a_peer_b.keepalive_at is None  # a keepalive is not data: no keepalive back


def test_data_while_a_keepalive_is_due_earns_a_second_one():
    p = established()
    t0 = p.clock.now
    p.clock.advance(5)
    p.deliver(p.a.send(p.a_peer_b, a_to_b(1), p.clock.now), "b")
    assert p.b_peer_a.keepalive_at == pytest.approx(t0 + KEEPALIVE_TIMEOUT)  # not pushed back
    assert [len(d) for d, _ in p.b.tick(t0 + KEEPALIVE_TIMEOUT).datagrams] == [32]
    assert p.b.tick(t0 + 2 * KEEPALIVE_TIMEOUT - 0.01).datagrams == []
    assert [len(d) for d, _ in p.b.tick(t0 + 2 * KEEPALIVE_TIMEOUT).datagrams] == [32]
    assert p.b_peer_a.keepalive_at is None


def test_no_keepalive_when_we_answered_with_data():
    p = established()
    p.clock.advance(1)
    p.b.send(p.b_peer_a, b_to_a(1), p.clock.now)
    assert p.b_peer_a.keepalive_at is None
    assert p.b.tick(p.clock.now + KEEPALIVE_TIMEOUT + 1).datagrams == []


def test_silence_after_sending_data_triggers_a_handshake():
    p = established()  # A sent data at t0 and B has not answered yet
    t0 = p.clock.now
    assert p.a.tick(t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - 0.01).datagrams == []
    out = p.a.tick(t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT).datagrams
    assert [d[0] for d, _ in out] == [1]


def test_a_keepalive_back_prevents_the_new_handshake():
    p = established()
    t0 = p.clock.now
    p.clock.advance(KEEPALIVE_TIMEOUT)
    p.deliver(p.b.tick(p.clock.now).datagrams, "a")  # B's keepalive
    assert p.a.tick(t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 1).datagrams == []


def test_persistent_keepalive_interval():
    p = make_pair(persistent_keepalive=2)
    sent_at = []
    for _ in range(int(12 / 0.125)):  # a step exact in binary: no drift
        tick = p.a.tick(p.clock.now)
        for d, _ in tick.datagrams:
            if len(d) == 32:
                sent_at.append(p.clock.now)
        p.deliver(tick.datagrams, "b")
        p.clock.advance(0.125)
    gaps = [round(b - a, 1) for a, b in zip(sent_at, sent_at[1:])]
    assert len(sent_at) >= 5 and all(g == 2.0 for g in gaps), gaps


def test_handshake_retries_then_gives_up():
    p = make_pair()
    t0 = p.clock.now
    p.a.send(p.a_peer_b, a_to_b(1), t0)
    attempts = [t0]
    for _ in range(1000):
        deadline = p.a.next_deadline()
        if deadline is None:
            break
        p.clock.now = deadline
        for d, _ in p.a.tick(deadline).datagrams:
            assert d[0] == 1
            attempts.append(deadline)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX for g in gaps)
    assert attempts[-1] - t0 < REKEY_ATTEMPT_TIME <= attempts[-1] - t0 + REKEY_TIMEOUT + 0.34
    assert p.a.counters["handshake_timeout"] == 1 and p.a.counters["queue_dropped"] == 1
    assert p.a_peer_b.queue == type(p.a_peer_b.queue)() and p.a_peer_b.handshake is None


def test_keys_are_erased_after_long_silence():
    p = established()
    p.clock.advance(3 * REJECT_AFTER_TIME)
    p.a.tick(p.clock.now)
    p.b.tick(p.clock.now)
    assert p.a_peer_b.keypairs.all() == [] and p.b_peer_a.keypairs.all() == []
    assert p.b._index == {} and p.b.counters["keys_zeroed"] == 1
    # A had sent data and heard nothing: the same tick starts a fresh handshake
    assert list(p.a._index) == [p.a_peer_b.handshake.local_index]


def test_next_deadline_reports_the_earliest_timer():
    p = established()
    assert p.b.next_deadline() == pytest.approx(p.clock.now + KEEPALIVE_TIMEOUT)
    tick = p.b.tick(p.clock.now)
    assert tick.deadline == p.b.next_deadline()


# -- queueing: bounded, never in plain text -------------------------------------

def test_packets_wait_for_the_session_and_never_leave_in_plain_text():
    p = make_pair()
    pkts = [a_to_b(i, size=64) for i in range(5)]
    wire = []
    for pkt in pkts:
        wire += p.a.send(p.a_peer_b, pkt, p.clock.now)
    res = p.deliver(wire, "b")
    everything = [d for d, _ in wire] + [d for _, r in res for d, _ in r.datagrams]
    for pkt in pkts:
        assert not any(pkt[20:] in d for d in everything)
    assert p.packets(res, "b") == pkts


def test_queue_is_bounded():
    p = make_pair()
    for i in range(200):
        p.a.send(p.a_peer_b, a_to_b(i % 65536), p.clock.now)
    assert len(p.a_peer_b.queue) == 128 and p.a.counters["queue_full"] == 72


def test_no_endpoint_keeps_packets_queued():
    p = make_pair(endpoints=False)
    assert p.a.send(p.a_peer_b, a_to_b(1), p.clock.now) == []
    assert len(p.a_peer_b.queue) == 1 and p.a.counters["no_endpoint"] == 1
    p.a_peer_b.endpoint = B_ADDR
    assert p.b.receive(p.a.send(p.a_peer_b, a_to_b(2), p.clock.now)[0][0], A_ADDR,
                       p.clock.now).verdict == "initiation"


# -- configuration, hygiene ------------------------------------------------------

def test_remove_peer_forgets_its_sessions():
    p = established()
    data = p.a.send(p.a_peer_b, a_to_b(1), p.clock.now)[0][0]
    p.b.remove_peer(p.a.public_key)
    assert p.b.receive(data, A_ADDR, p.clock.now).verdict == "unknown_index"
    assert p.b._index == {}


def test_peer_config_errors():
    k = generate()
    e = Engine(k)
    with pytest.raises(PeerConfigError):
        e.add_peer(k.public)
    other = generate().public
    e.add_peer(other)
    with pytest.raises(PeerConfigError):
        e.add_peer(other)


def test_private_key_not_in_engine_text():
    p = established(psk=PresharedKey(os.urandom(32)))
    secret = p.a.identity.private.secret_base64()
    psk = p.a_peer_b.preshared_key.raw
    import base64
    for text in (repr(p.a), str(p.a.status()), repr(p.a_peer_b), repr(p.a.identity),
                 repr(p.a_peer_b.keypairs.current), repr(p.a.checker)):
        assert secret not in text and base64.b64encode(psk).decode() not in text


def test_every_counter_is_documented():
    import re
    from pathlib import Path

    from udpoverlay.wireguard import engine as engine_module
    from udpoverlay.wireguard.engine import EVENT_COUNTERS
    source = Path(engine_module.__file__).read_text()
    named = set(re.findall(r'counters\["([a-z0-9_]+)"\]', source))
    named |= set(re.findall(r'Received\("([a-z0-9_]+)"', source))
    assert named <= set(RECEIVE_VERDICTS) | set(EVENT_COUNTERS)
    assert not set(RECEIVE_VERDICTS) & set(EVENT_COUNTERS)


def test_our_timestamps_increase_even_when_the_wall_clock_steps_back():
    p = make_pair()
    wall = [2_000_000_000.0]
    p.a.wallclock = lambda: wall[0]
    p.deliver(p.a.send(p.a_peer_b, a_to_b(1), p.clock.now), "b")
    wall[0] -= 3600  # NTP stepped the clock back an hour
    p.clock.advance(REKEY_TIMEOUT + 1)
    p.a_peer_b.keypairs.clear()
    res = p.deliver(p.a.send(p.a_peer_b, a_to_b(2), p.clock.now), "b")
    assert [r.verdict for _, r in res][:2] == ["initiation", "response"]


def test_inner_ipv6_source_checked_against_ipv6_allowed_ips():
    p = established()
    p.b_peer_a.set_allowed_ips(["198.19.1.0/24", "::ffff:198.19.1.0/120"])

    def ipv6(src_last: int) -> bytes:
        src = bytes(10) + b"\xff\xff" + bytes([198, 19, 1, src_last])
        dst = bytes(10) + b"\xff\xff" + bytes([198, 19, 2, 1])
        return bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + src + dst + bytes(8)

    assert p.b.receive(p.a.send(p.a_peer_b, ipv6(5), p.clock.now)[0][0], A_ADDR,
                       p.clock.now).verdict == "data"
    p.b_peer_a.set_allowed_ips(["198.19.1.0/24"])
    assert p.b.receive(p.a.send(p.a_peer_b, ipv6(5), p.clock.now)[0][0], A_ADDR,
                       p.clock.now).verdict == "wrong_inner_source"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.integers(0, 3), st.booleans())
def test_garbage_never_raises(data, kind, under_load):
    p = _FUZZ_PAIR
    p.b.under_load = under_load
    if kind and len(data) >= 4:
        data = bytes([kind]) + b"\x00\x00\x00" + data[4:]
    r = p.b.receive(data, A_ADDR, p.clock.now)
    assert r.verdict in RECEIVE_VERDICTS and r.packet is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 147), st.integers(0, 7), st.integers(0, 91), st.integers(0, 7))
def test_mutated_handshakes_never_raise(pos_i, bit_i, pos_r, bit_r):
    p = _FUZZ_PAIR
    p.b.under_load = False
    p.clock.advance(1)
    init = bytearray(p.a._send_initiation(p.a_peer_b, p.clock.now)[0][0])
    init[pos_i] ^= 1 << bit_i
    r = p.b.receive(bytes(init), A_ADDR, p.clock.now)
    assert r.verdict in RECEIVE_VERDICTS
    resp = bytearray(92)
    resp[0] = 2
    resp[pos_r] ^= 1 << bit_r
    assert p.a.receive(bytes(resp), B_ADDR, p.clock.now).verdict in RECEIVE_VERDICTS


_FUZZ_PAIR = established(clock=Clock())
