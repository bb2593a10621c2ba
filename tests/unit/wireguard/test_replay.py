"""The replay window: the kernel's published sequence (as ported to
wireguard-go's replay_test.go) and Hypothesis against a set-based model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from udpoverlay.wireguard.constants import REJECT_AFTER_MESSAGES as RAM
from udpoverlay.wireguard.replay import RUN_MAX, WINDOW, ReplayWindow

T_LIM = WINDOW + 1

# (counter, expected) in order, from the kernel selftest's first sequence.
KERNEL_SEQUENCE = [
    (0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False),
    (T_LIM, True), (T_LIM - 1, True), (T_LIM - 1, False), (T_LIM - 2, True), (2, True),
    (2, False), (T_LIM + 16, True), (3, False), (T_LIM + 16, False), (T_LIM * 4, True),
    (T_LIM * 4 - (T_LIM - 1), True), (10, False), (T_LIM * 4 - T_LIM, False),
    (T_LIM * 4 - (T_LIM + 1), False), (T_LIM * 4 - (T_LIM - 2), True),
    (T_LIM * 4 + 1 - T_LIM, False), (0, False), (RAM, False), (RAM - 1, True), (RAM, False),
    (RAM - 1, False), (RAM - 2, True), (RAM + 1, False), (RAM + 2, False), (RAM - 2, False),
    (RAM - 3, True), (0, False),
]


def test_window_size_is_stated():
    assert WINDOW == 8128


def test_kernel_sequence():
    w = ReplayWindow()
    for i, (counter, expected) in enumerate(KERNEL_SEQUENCE, 1):
        assert w.accept(counter, RAM) is expected, f"step {i}: {counter}"


def _run(counters):
    w = ReplayWindow()
    return [w.accept(c, RAM) for c in counters]


def test_kernel_bulk_cases():
    assert all(_run(range(1, WINDOW + 1))) and _run([*range(1, WINDOW + 1), 0, 0])[-2:] == [True, False]
    assert _run([*range(2, WINDOW + 2), 1, 0])[-2:] == [True, False]
    assert all(_run(range(WINDOW + 1, 0, -1)))
    assert _run([*range(WINDOW + 2, 1, -1), 0])[-1] is False
    assert _run([*range(WINDOW, 0, -1), WINDOW + 1, 0])[-2:] == [True, False]
    assert _run([*range(WINDOW, 0, -1), 0, WINDOW + 1])[-2:] == [True, True]


def test_big_jump_clears_everything():
    w = ReplayWindow()
    assert w.accept(5, RAM)
    assert w.accept(10**12, RAM)
    assert not w.accept(5, RAM)
    assert w.accept(10**12 - WINDOW, RAM) and not w.accept(10**12 - WINDOW - 1, RAM)
    assert w.accept(10**12 - 1, RAM) and not w.accept(10**12, RAM)


def test_limit_and_negative():
    w = ReplayWindow()
    assert not w.accept(100, 100) and w.accept(99, 100) and not w.accept(-1, RAM)


class Model:
    """The sentence in replay.py's docstring, as a set."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.greatest = -1

    def accept(self, counter: int, limit: int) -> bool:
        if counter >= limit or counter in self.seen:
            return False
        if self.greatest >= 0 and self.greatest - counter > WINDOW:
            return False
        self.seen.add(counter)
        self.greatest = max(self.greatest, counter)
        return True


# Counters cluster around a moving point so that the window edge, block
# boundaries and whole-ring jumps are all exercised.
_steps = st.lists(st.tuples(st.sampled_from([-WINDOW - 64, -WINDOW - 1, -WINDOW, -WINDOW + 1, -64, -1,
                                              0, 1, 63, 64, 65, 8192, 20000]),
                            st.integers(-130, 130)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(_steps, st.integers(0, 2**20))
def test_against_set_model(steps, base):
    w, model = ReplayWindow(), Model()
    point = base
    for jump, wiggle in steps:
        point = max(0, point + jump // 2)
        counter = max(0, point + wiggle)
        assert w.accept(counter, RAM) == model.accept(counter, RAM), counter


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3 * WINDOW), max_size=400))
def test_against_set_model_random(counters):
    w, model = ReplayWindow(), Model()
    for c in counters:
        assert w.accept(c, RAM) == model.accept(c, RAM), c


# accept_run(): runs of counters in order, mixed with single accepts, must
# leave the window exactly as one accept() per counter does (its ring words
# and greatest), and refuse (changing nothing) whatever is not ahead.
_runs = st.lists(st.tuples(st.sampled_from([-WINDOW - 64, -70, -1, 0, 1, 63, 64, 130, 8192,
                                            20000, 9000 * 64]),
                           st.integers(0, RUN_MAX + 2), st.booleans()), max_size=120)


@settings(max_examples=300, deadline=None)
@given(_runs, st.integers(0, 2**20))
def test_accept_run_is_accept_in_order(runs, base):
    fast, slow = ReplayWindow(), ReplayWindow()
    point = base
    for jump, count, single in runs:
        first = max(0, point + jump)
        if single:
            assert fast.accept(first, RAM) == slow.accept(first, RAM)
        else:
            before = (fast.greatest, list(fast._ring))
            if fast.accept_run(first, count, RAM):
                assert count >= 1 and first > slow.greatest and count <= RUN_MAX
                assert all(slow.accept(c, RAM) for c in range(first, first + count))
            else:
                assert (fast.greatest, fast._ring) == before        # nothing changed
                assert (count < 1 or count > RUN_MAX or first <= slow.greatest
                        or first + count > RAM)
        assert (fast.greatest, fast._ring) == (slow.greatest, slow._ring)
        point = max(point, fast.greatest)


def test_accept_run_at_the_limit_and_from_zero():
    w = ReplayWindow()
    assert not w.accept_run(0, 10, RAM)     # 0 is not ahead of the initial greatest
    assert w.accept(0, RAM) and w.accept_run(1, 100, RAM) and w.greatest == 100
    assert not any(w.accept(c, RAM) for c in range(0, 101))
    assert not w.accept_run(RAM - 5, 6, RAM) and w.accept_run(RAM - 5, 5, RAM)
    assert not w.accept(RAM - 1, RAM)
