"""State that every listener serving one engine shares: one object per engine, made on first use.

A gateway may serve one engine on several listeners (HTTP, gRPC, QUIC, stdio), each built apart; what
they must count or wait for together — the sessions each principal has open, the refusals still being
recorded — hangs off the engine itself. Held weakly: an engine closed and dropped (a test's, a reloaded
gateway's) takes its state with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["PerEngine"]

T = TypeVar("T")


class PerEngine(Generic[T]):
    """``of(engine)``: the one ``T`` of ``engine``, made by ``make()`` the first time it is asked for."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._of: weakref.WeakKeyDictionary[Any, T] = weakref.WeakKeyDictionary()

    def __call__(self, engine: Any) -> T:
        state = self._of.get(engine)
        if state is None:
            state = self._of[engine] = self._make()
        return state
