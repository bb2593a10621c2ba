"""The fail-over owner (store/failover.py) and the view's freshness bound."""

from __future__ import annotations

import random

import pytest

from tests.support.asyncutil import FakeClock
from udpoverlay.cluster.store.failover import EndpointPool
from udpoverlay.cluster.store.freshness import ViewFreshness


def test_one_failure_seen_by_many_tasks_moves_once():
    pool = EndpointPool(["a", "b", "c"])
    seen = pool.generation
    assert pool.report(seen, "watch: no leader") is True
    # the config watch, the renewal and the closed client's watches saw the same failure
    assert [pool.report(seen, "again") for _ in range(5)] == [False] * 5
    assert pool.current == "b" and pool.moves == 1 and pool.stale_reports == 5
    assert [(m.source, m.target) for m in pool.history] == [("a", "b")]


def test_never_back_to_the_member_that_just_failed_while_another_is_untried():
    clock = FakeClock()
    pool = EndpointPool(["a", "b", "c"], clock)
    pool.report(pool.generation)            # a failed -> b
    clock.advance(1)
    pool.report(pool.generation)            # b failed -> c (untried), not a
    assert pool.current == "c"
    clock.advance(1)
    pool.report(pool.generation)            # c failed -> a: failed least recently
    assert pool.current == "a"
    clock.advance(1)
    pool.report(pool.generation)            # a failed again -> b (failed before c)
    assert [m.target for m in pool.history] == ["b", "c", "a", "b"]
    assert all(m.source != m.target for m in pool.history)


def test_a_member_failing_again_after_a_round_is_not_preferred():
    clock = FakeClock()
    pool = EndpointPool(["a", "b", "c"], clock)
    pool.report(pool.generation)            # a -> b
    clock.advance(5)
    pool.report(pool.generation)            # b -> c
    clock.advance(5)
    # c fails: a failed 10 s ago, b 5 s ago: a it is
    pool.report(pool.generation)
    assert pool.current == "a"


def test_single_endpoint_moves_to_itself_with_a_new_generation():
    pool = EndpointPool(["only"])
    g = pool.generation
    assert pool.report(g) and pool.current == "only" and pool.generation == g + 1
    assert not pool.report(g)


def test_random_reports_never_move_twice_per_generation():
    rng = random.Random(22)
    clock = FakeClock()
    pool = EndpointPool(list("abcde"), clock)
    for _ in range(500):
        clock.advance(rng.random())
        generation = pool.generation - rng.choice([0, 0, 1, 2])
        before = (pool.generation, pool.current)
        moved = pool.report(generation)
        assert moved == (generation == before[0])
        if moved:
            assert pool.generation == before[0] + 1 and pool.current != before[1]
    assert pool.moves + pool.stale_reports == 500
    with pytest.raises(ValueError):
        EndpointPool([])


def test_freshness_stale_after_the_bound_and_not_before_a_first_answer():
    clock = FakeClock()
    fresh = ViewFreshness(6.0, clock)
    assert fresh.age() is None and not fresh.stale() and fresh.progress_interval == 2.0
    fresh.mark()
    clock.advance(5.9)
    assert not fresh.stale() and fresh.age() == pytest.approx(5.9)
    clock.advance(0.2)
    assert fresh.stale()
    fresh.mark()
    assert not fresh.stale() and fresh.age() == 0.0
    with pytest.raises(ValueError):
        ViewFreshness(0)
