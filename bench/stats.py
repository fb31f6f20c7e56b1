"""The few statistics the suite needs: percentiles, medians, spread, a straight-line fit."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile of already sorted values (nearest rank; ``nan`` when empty).

    Nearest rank rather than interpolation: a p99 of 100 samples is the 99th sample, a real latency.
    """
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def median(values: Sequence[float]) -> float:
    """The median of the finite values (``nan`` when there are none)."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if not finite:
        return math.nan
    middle = len(finite) // 2
    return finite[middle] if len(finite) % 2 else (finite[middle - 1] + finite[middle]) / 2


def spread(values: Sequence[float]) -> float:
    """Half the range of the finite values relative to their median: how much rounds disagreed."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    centre = median(finite)
    if len(finite) < 2 or not centre:
        return math.nan
    return (max(finite) - min(finite)) / 2 / abs(centre)


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``ys`` over ``xs`` (finite pairs only)."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if len(pairs) < 2:
        return math.nan, math.nan
    n = len(pairs)
    mean_x = sum(x for x, _ in pairs) / n
    mean_y = sum(y for _, y in pairs) / n
    var = sum((x - mean_x) ** 2 for x, _ in pairs)
    if var == 0:
        return math.nan, math.nan
    slope = sum((x - mean_x) * (y - mean_y) for x, y in pairs) / var
    return mean_y - slope * mean_x, slope
