"""The replay window: the kernel's published sequence (as ported to
wireguard-go's replay_test.go) and Hypothesis against a set-based model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from udpoverlay.wireguard.constants import REJECT_AFTER_MESSAGES as RAM
from udpoverlay.wireguard.replay import WINDOW, ReplayWindow

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
