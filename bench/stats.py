"""Small order statistics, kept exact and dependency-free.

Why our own: the report quotes p50/p95/p99 of a few dozen samples; nearest-rank percentiles are
easy to reason about at that size (p95 of 20 samples is the 19th value), where interpolating ones
invent values nobody measured.
"""

from __future__ import annotations

import math
import statistics
from typing import Iterable

__all__ = ["median", "percentile", "ratio"]


def median(values: Iterable[float]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100); ``None`` for no data."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(data)))
    return data[min(rank, len(data)) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
