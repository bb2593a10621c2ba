"""Tiny statistics shared by the runner, the echo client and the report."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Linear-interpolated percentile (pct in 0..100); None if empty."""
    data = sorted(values)
    if not data:
        return None
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} outside 0..100")
    rank = (len(data) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None if there are none."""
    return percentile((v for v in values if v is not None), 50)


def spread(values: Iterable[float | None]) -> tuple[float, float] | None:
    """(min, max) of the values that are not None; None if fewer than two,
    where there is no spread to show."""
    data = [v for v in values if v is not None]
    if len(data) < 2:
        return None
    return min(data), max(data)
