"""What one request's budget check and breaker bookkeeping cost as their sliding windows fill up
(``bench.bench_stores``'s sweep).

Both keep a window of the recent past and read it on every request:

* **Budgets.** A ``requests_per_minute`` limit is exact: every counter reads the principal's
  reservations of the last minute to decide (``ratelimit.refusal``). Measured: ``reserve`` with such a
  limit (never reached) on the three counters, the principal already holding *N* reservations —
  spread over the last 50 seconds (``minute``), or over the last hour but none in the minute
  (``hour``: what a counter keeps for the day's spend, which a minute's check need not read).
* **Breakers.** A deployment's breaker keeps every call of its ``window`` (60 s) to compute the error
  rate; the Redis store keeps that state as one JSON value per deployment, which every replica reads
  and rewrites. Measured: what the engine does per request — ``snapshots`` (ordering the targets),
  ``acquire``, ``record_success`` — with the deployment's window already holding *N* calls, on Redis
  and in memory.

Redis figures are the server's own microseconds per request (``INFO commandstats``, every command
summed: what one Redis core spends); the others, and the gateway side of Redis's, are CPU of this
process per request (``time.process_time``: what the gateway spends). Windows are filled before each
measurement (budgets without a limit, so nothing reads them; the Redis keys directly with a
pipeline); the calls measured each add one more entry. Ratios are to the empty window.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gtl_nb.engine.ratelimit import Limits

NEVER = 1_000_000_000
"""requests_per_minute high enough never to refuse (so the check runs and always admits)."""
DEPLOYMENT = "sweep"

BUDGET_CASES = ((0, "minute"), (1000, "minute"), (10_000, "minute"), (10_000, "hour"))
BREAKER_CASES = (0, 1000, 10_000)


@dataclass
class WindowCost:
    """One case: microseconds per request on each store (``None`` when not measured)."""

    what: str
    """``budget`` or ``breaker``."""
    window: int
    placed: str
    """``minute`` (the entries are in the window) or ``hour`` (earlier in the last hour)."""
    redis_server_us: float | None
    redis_gateway_us: float | None
    memory_us: float | None
    sqlite_us: float | None = None
    state_bytes: int | None = None
    """For breakers: the size of the JSON value Redis holds for the deployment."""


def _times(count: int, placed: str, now: float) -> list[float]:
    """``count`` times: over the last 50 s (``minute``) or from an hour to 70 s ago (``hour``)."""
    first, last = (now - 50.0, now) if placed == "minute" else (now - 3600.0, now - 70.0)
    return [first + (last - first) * index / max(count, 1) for index in range(count)]


def _server_usec(admin: Any) -> int:
    """Redis's own microseconds so far over every command but ``info``."""
    return sum(int(v["usec"]) for k, v in admin.info("commandstats").items() if k != "cmdstat_info")


# -- budgets ------------------------------------------------------------------------------------------


async def _budget_fill(counter: Any, principal: str, count: int, placed: str, now: float) -> None:
    for at in _times(count, placed, now):
        await counter.reserve(principal, Limits(), now=at, tokens=16, cost=0.0)


async def _budget_cpu(counter: Any, principal: str, calls: int, now: float) -> float:
    limits = Limits(requests_per_minute=NEVER)
    started = time.process_time()
    for index in range(calls):
        await counter.reserve(principal, limits, now=now + index * 1e-4, tokens=16, cost=0.0)
    return (time.process_time() - started) / calls * 1e6


async def _budget_redis(
    url: str, principal: str, window: int, placed: str, calls: int, now: float
) -> tuple[float, float]:
    from redis import Redis

    from gtl_nb.engine.stores.redis_budget import RedisBudgetCounter

    counter = RedisBudgetCounter(url)
    admin = Redis.from_url(url.split("?", 1)[0])
    try:
        times, spends, *_ = counter._keys(principal, now)
        stamps = _times(window, placed, now)
        for first in range(0, window, 5000):
            pipe = admin.pipeline(transaction=False)
            for index in range(first, min(first + 5000, window)):
                pipe.zadd(times, {f"fill-{index}": stamps[index]})
                pipe.hset(spends, f"fill-{index}", "16 0")
            pipe.execute()
        await counter.reserve(principal, Limits(requests_per_minute=NEVER), now=now, tokens=16)  # loads the script
        before = _server_usec(admin)
        gateway = await _budget_cpu(counter, principal, calls, now + 1e-3)
        return (_server_usec(admin) - before) / calls, gateway
    finally:
        await counter.aclose()
        admin.close()


async def budgets(
    redis_url: str | None, cases: Sequence[tuple[int, str]], calls: int, folder: Path
) -> list[WindowCost]:
    from gtl_nb.engine.stores.memory import MemoryBudgetCounter
    from gtl_nb.engine.stores.sqlite import SqliteBudgetCounter

    rows = []
    for window, placed in cases:
        now = time.time()
        principal = f"sweep-{window}-{placed}-{int(now * 1000)}"
        memory = MemoryBudgetCounter()
        await _budget_fill(memory, principal, window, placed, now)
        memory_us = await _budget_cpu(memory, principal, calls, now)
        sqlite = SqliteBudgetCounter(folder / f"budgets-{window}-{placed}.sqlite3")
        try:
            await _budget_fill(sqlite, principal, window, placed, now)
            sqlite_us = await _budget_cpu(sqlite, principal, calls, now)
        finally:
            await sqlite.aclose()
        server = gateway = None
        if redis_url:
            server, gateway = await _budget_redis(redis_url, principal, window, placed, calls, now)
        rows.append(WindowCost("budget", window, placed, server, gateway, memory_us, sqlite_us))
    return rows


# -- breakers -----------------------------------------------------------------------------------------


async def _per_request(store: Any, calls: int) -> float:
    """CPU microseconds per ``snapshots`` + ``acquire`` + ``record_success`` (the engine's per request)."""
    started = time.process_time()
    for _ in range(calls):
        await store.snapshots([DEPLOYMENT])
        await store.acquire(DEPLOYMENT)
        await store.record_success(DEPLOYMENT)
    return (time.process_time() - started) / calls * 1e6


async def breakers(redis_url: str | None, cases: Sequence[int], calls: int) -> list[WindowCost]:
    from gtl_nb.engine.breaker import BreakerConfig, CircuitBreaker
    from gtl_nb.engine.stores.memory import MemoryBreakerStore

    config = BreakerConfig()
    rows = []
    for window in cases:
        now = time.time()
        stamps = _times(window, "minute", now)
        clock = [now]

        def read(clock: list[float] = clock) -> float:
            return clock[0]

        memory = MemoryBreakerStore(config, clock=read)
        for at in stamps:
            clock[0] = at
            await memory.record_success(DEPLOYMENT)
        clock[0] = now
        memory_us = await _per_request(memory, calls)
        server = gateway = size = None
        if redis_url:
            from redis import Redis

            from gtl_nb.engine.stores.redis_breakers import RedisBreakerStore

            prefixed = f"{redis_url}{'&' if '?' in redis_url else '?'}key_prefix=sweep-breaker-{window}:"
            store = RedisBreakerStore(prefixed, config)
            admin = Redis.from_url(redis_url.split("?", 1)[0])
            try:
                filled = CircuitBreaker(DEPLOYMENT, config, clock=read)
                for at in stamps:
                    clock[0] = at
                    filled.record_success()
                state = {**filled.to_state(), "probe_at": None, "token": "fill"}
                key = store._key(DEPLOYMENT)
                admin.set(key, json.dumps(state, separators=(",", ":")))
                await store.snapshots([DEPLOYMENT])  # connects, loads the script
                before = _server_usec(admin)
                gateway = await _per_request(store, calls)
                server = (_server_usec(admin) - before) / calls
                size = int(admin.strlen(key))
            finally:
                await store.aclose()
                admin.close()
        rows.append(WindowCost("breaker", window, "minute", server, gateway, memory_us, None, size))
    return rows


# -- the sweep ----------------------------------------------------------------------------------------


def measure(
    redis_url: str | None,
    budget_cases: Sequence[tuple[int, str]] = BUDGET_CASES,
    breaker_cases: Sequence[int] = BREAKER_CASES,
    calls: int = 20,
) -> list[WindowCost]:
    """Every case (see the module docstring)."""

    async def both(folder: Path) -> list[WindowCost]:
        return await budgets(redis_url, budget_cases, calls, folder) + await breakers(redis_url, breaker_cases, calls)

    with tempfile.TemporaryDirectory(prefix="gtl-bench-windows-") as tmp:
        return asyncio.run(both(Path(tmp)))


def _cell(value: float | None, base: float | None) -> str:
    if value is None:
        return "–"
    ratio = f" ({value / base:.0f}×)" if base else ""
    return f"{value:,.0f}{ratio}"


def _where(row: WindowCost) -> str:
    if row.window == 0:
        return "none"
    if row.what == "breaker":
        return f"{row.window:,} calls in the last minute"
    return f"{row.window:,} in the last minute" if row.placed == "minute" else f"{row.window:,} earlier in the hour"


def budget_table(rows: list[WindowCost]) -> list[str]:
    """The budget cases as markdown (µs per ``reserve``; the ratio to the first case)."""
    mine = [row for row in rows if row.what == "budget"]
    if not mine:
        return []
    first = mine[0]
    lines = [
        "| the principal's reservations | Redis: server µs | Redis: gateway CPU µs | memory: gateway CPU µs "
        "| SQLite: gateway CPU µs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in mine:
        lines.append(
            f"| {_where(row)} | {_cell(row.redis_server_us, first.redis_server_us)} "
            f"| {_cell(row.redis_gateway_us, first.redis_gateway_us)} | {_cell(row.memory_us, first.memory_us)} "
            f"| {_cell(row.sqlite_us, first.sqlite_us)} |"
        )
    return lines


def breaker_table(rows: list[WindowCost]) -> list[str]:
    """The breaker cases as markdown (µs per request's snapshots + acquire + record_success)."""
    mine = [row for row in rows if row.what == "breaker"]
    if not mine:
        return []
    first = mine[0]
    lines = [
        "| the deployment's window | Redis: state bytes | Redis: server µs | Redis: gateway CPU µs "
        "| memory: gateway CPU µs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in mine:
        size = "–" if row.state_bytes is None else f"{row.state_bytes:,}"
        lines.append(
            f"| {_where(row)} | {size} | {_cell(row.redis_server_us, first.redis_server_us)} "
            f"| {_cell(row.redis_gateway_us, first.redis_gateway_us)} | {_cell(row.memory_us, first.memory_us)} |"
        )
    return lines


def to_json(rows: list[WindowCost]) -> list[dict[str, Any]]:
    return [asdict(row) for row in rows]
