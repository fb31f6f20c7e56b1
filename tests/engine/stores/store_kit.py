"""What the store contract tests share: a fixed instant and a clock that moves only when told."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

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


def lose_each_answer_once(connections: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every piece of work ``connections`` runs commit, then lose its connection before the
    answer — the worst case of a retry (the COMMIT reached the server): the work runs again on a new
    connection. Returns a list that counts the losses."""
    import psycopg

    real_run = connections.run
    lost: list[int] = []

    async def run(work: Any) -> Any:
        first = True

        async def committed_then_lost(conn: Any) -> Any:
            nonlocal first
            result = await work(conn)
            if first:
                first = False
                lost.append(1)
                await conn.close()
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return result

        return await real_run(committed_then_lost)

    monkeypatch.setattr(connections, "run", run)
    return lost
