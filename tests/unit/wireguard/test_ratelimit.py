"""The per-source handshake limiter (wireguard/ratelimit.py) and the
engine's use of it under load."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.wireguard import A_ADDR, B_ADDR, icmp_echo, make_pair
from udpoverlay.wireguard.constants import REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from udpoverlay.wireguard.ratelimit import BURST, RATE, SourceLimiter


def test_a_burst_then_the_rate():
    lim = SourceLimiter()
    assert (RATE, BURST) == (20.0, 5.0)
    assert [lim.allow("198.18.0.9", 100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.allow("198.18.0.9", 100.0 + 0.04) is False       # 0.8 of a token
    assert lim.allow("198.18.0.9", 100.0 + 0.051) is True       # one whole token
    assert lim.allow("198.18.0.10", 100.06) is True             # another source: its own bucket


def test_a_sustained_sender_gets_the_rate():
    lim = SourceLimiter()
    allowed = sum(lim.allow("198.18.0.9", 10.0 + i / 100) for i in range(1000))  # 100/s, 10 s
    assert abs(allowed - (BURST + RATE * 9.99)) <= 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["198.18.0.1", "198.18.0.2"]),
                          st.floats(0, 0.5)), max_size=300))
def test_never_more_than_burst_plus_rate_times_time(events):
    lim, now, got = SourceLimiter(), 0.0, {"198.18.0.1": 0, "198.18.0.2": 0}
    for ip, step in events:
        now += step
        got[ip] += lim.allow(ip, now)
    for n in got.values():
        assert n <= BURST + RATE * now + 1e-6


def test_the_table_is_bounded_and_forgets_refilled_sources_first():
    lim = SourceLimiter(max_sources=3)
    for ip in ("198.18.0.1", "198.18.0.2", "198.18.0.3"):
        assert lim.allow(ip, 0.0)                       # each now spending (4 of 5 left)
    assert lim.allow("198.18.0.4", 0.01) is False     # full, nobody refilled: refused
    assert len(lim) == 3
    assert lim.allow("198.18.0.4", 1.0) is True       # the others refilled: forgotten
    assert len(lim) == 1


def test_under_load_a_source_with_valid_mac2_is_limited_before_any_diffie_hellman():
    """A peer that receives its cookie makes MAC2-valid initiations; under
    load, replaying one costs us the Diffie-Hellman (it reads as stale only
    after it) at most BURST times at once, the rest are ratelimited. From
    another address the MAC2 is not valid: a cookie reply, as before."""
    p = make_pair()
    p.b.under_load = True
    init = p.a.send(p.a_peer_b, icmp_echo("198.19.1.1", "198.19.2.1", 7, 1, b"x"), p.clock.now)
    r = p.b.receive(init[0][0], A_ADDR, p.clock.now)
    assert r.verdict == "cookie_sent"
    assert p.a.receive(r.datagrams[0][0], B_ADDR, p.clock.now).verdict == "cookie_reply"
    p.clock.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    (retry, _), = p.a.tick(p.clock.now).datagrams
    verdicts = [p.b.receive(retry, A_ADDR, p.clock.now).verdict for _ in range(8)]
    assert verdicts == ["initiation"] + ["stale_initiation"] * 4 + ["ratelimited"] * 3
    assert p.b.counters["ratelimited"] == 3
    assert p.b.receive(retry, ("198.18.0.77", 40000), p.clock.now).verdict == "cookie_sent"
    p.b.under_load = False                              # not under load: no limit
    assert p.b.receive(retry, A_ADDR, p.clock.now).verdict == "stale_initiation"
