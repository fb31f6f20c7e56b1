"""What the store contract tests share: a fixed instant and a clock that moves only when told."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z, exactly representable


class FakeClock:
    """A clock that moves only when told (``clock.now += 5``); callable like ``time.time``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one scenario on a fresh event loop."""
    return asyncio.run(coroutine)
