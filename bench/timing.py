"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(func: Callable[[], object], *, repeat: int = 7, number: int = 20) -> float:
    """The fastest of ``repeat`` runs of ``number`` calls, in seconds per call.

    The minimum is the least noisy estimate on a shared machine: noise only ever adds time.
    """
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            func()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def interleaved(
    a: Callable[[], object], b: Callable[[], object], *, rounds: int = 5, number: int = 20
) -> tuple[float, float]:
    """Best per-call times of ``a`` and ``b`` measured in alternating rounds, so drift hits both."""
    best_a = best_b = float("inf")
    for _ in range(rounds):
        best_a = min(best_a, best_of(a, repeat=1, number=number))
        best_b = min(best_b, best_of(b, repeat=1, number=number))
    return best_a, best_b
