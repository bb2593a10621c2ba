"""The receive-side replay window (RFC 6479's ring of bit blocks).

Size: 8192 bits in 128 blocks of 64; one block is always the one being
reused, so the window is WINDOW = 8128 counters behind the greatest one
accepted, as in wireguard-go and the kernel. In words: a counter is
accepted iff it is below REJECT_AFTER_MESSAGES, not accepted before, and no
more than WINDOW below the greatest accepted so far (the unit tests check
exactly that sentence against a set-based model).

Only authenticated packets may move the window: call accept() after the
AEAD tag verified. The state is a fixed array of 64-bit words and one
integer so a compiled twin can mirror it word for word.
"""

from __future__ import annotations

__all__ = ["BLOCK_BITS", "RING_BLOCKS", "WINDOW", "RUN_MAX", "ReplayWindow"]

BLOCK_BITS = 64
RING_BLOCKS = 128
WINDOW = (RING_BLOCKS - 1) * BLOCK_BITS  # 8128
RUN_MAX = 64 * BLOCK_BITS  # accept_run(): the run's blocks never share a ring slot
_RING_MASK = RING_BLOCKS - 1
_BIT_MASK = BLOCK_BITS - 1


class ReplayWindow:
    __slots__ = ("greatest", "_ring")

    def __init__(self) -> None:
        self.greatest = 0
        self._ring = [0] * RING_BLOCKS

    def accept(self, counter: int, limit: int) -> bool:
        """True (and remember it) for a counter not seen and inside the
        window; False for a replay, a counter too old, or one >= limit."""
        if counter >= limit or counter < 0:
            return False
        block = counter >> 6
        if counter > self.greatest:
            # Moving forward: the blocks we step into held counters now
            # more than WINDOW behind; clear them (at most the whole ring).
            top = self.greatest >> 6
            for i in range(top + 1, top + 1 + min(block - top, RING_BLOCKS)):
                self._ring[i & _RING_MASK] = 0
            self.greatest = counter
        elif self.greatest - counter > WINDOW:
            return False
        slot = block & _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        if self._ring[slot] & bit:
            return False
        self._ring[slot] |= bit
        return True

    def accept_run(self, first: int, count: int, limit: int) -> bool:
        """accept() of first .. first+count-1 at once, for the common case of
        a batch in order: True (all remembered, as count accept() calls in
        order would) when the whole run lies ahead of the greatest counter
        so far, below limit, and spans at most RUN_MAX counters; False
        (nothing changed) otherwise: then accept() each."""
        last = first + count - 1
        if count < 1 or count > RUN_MAX or first <= self.greatest or last >= limit:
            return False
        ring, top, end = self._ring, self.greatest >> 6, last >> 6
        for i in range(top + 1, top + 1 + min(end - top, RING_BLOCKS)):
            ring[i & _RING_MASK] = 0
        for block in range(first >> 6, end + 1):
            lo = max(first, block << 6) & _BIT_MASK
            hi = min(last, (block << 6) | _BIT_MASK) & _BIT_MASK
            ring[block & _RING_MASK] |= ((1 << (hi - lo + 1)) - 1) << lo
        self.greatest = last
        return True
