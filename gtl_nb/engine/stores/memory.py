"""The in-process stores (``memory://``): one process's memory, gone when it exits.

``MemoryUsageLedger`` keeps the ledger's rows as dicts (tests, and a gateway replica that records
elsewhere); ``MemoryBudgetCounter`` counts per principal for this process alone;
``MemoryResponseCache`` is the LRU with a time to live; ``MemoryBreakerStore`` is the default
breaker store. Each has the semantics of its SQLite counterpart (the contract tests run both).
Their work is synchronous and short, done under a lock, so it is atomic for the event loop and
safe from other threads (a notebook reading usage while the engine's loop writes).
"""

from __future__ import annotations

import itertools
import platform
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gtl_nb.engine.breaker import BreakerBoard, BreakerConfig
from gtl_nb.engine.cache import CachedAnswer, MemoryCache
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import (
    FINISH_FIELDS,
    LedgerStateError,
    LedgerValueError,
    Totals,
    clean_finish_fields,
    iso_utc,
    refused_by_budget,
    row_filter,
)
from gtl_nb.engine.ledger_schema import COLUMN_NAMES, FINAL_STATUSES
from gtl_nb.engine.processes import own_identity
from gtl_nb.engine.ratelimit import DAY, WINDOW, Limits, Spend, horizon, refusal, usage_report, utc_day_start
from gtl_nb.engine.stores.base import Reservation
from gtl_nb.log import get_logger

__all__ = ["MemoryBreakerStore", "MemoryBudgetCounter", "MemoryResponseCache", "MemoryUsageLedger"]

log = get_logger("engine.stores")


# ----------------------------------------------------------------------------------------------
# the usage ledger


class MemoryUsageLedger:
    """A ``UsageLedger`` in a list: the SQLite ledger's columns and rules, nothing on disk.

    ``clock`` gives wall-clock unix seconds for calls without ``now``."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rows: list[dict[str, Any]] = []
        self._by_id: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self.hostname = platform.node() or "localhost"

    async def start(
        self, *, session_id: str, context: RequestContext, model: str | None, now: float | None = None
    ) -> int:
        """Insert the row of a request about to be sent, status ``started``; return its id."""
        when = self._clock() if now is None else float(now)
        pid, identity = own_identity()
        row: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
        row.update(
            time=when,
            time_utc=iso_utc(when),
            session_id=session_id,
            user=context.principal,
            model=model,
            status="started",
            cache_hit=False,
            coalesced=False,
            pid=pid,
            proc_start=identity,
            hostname=self.hostname,
            tenant=context.tenant,
            key_id=context.key_id,
            trace_id=context.trace_id,
        )
        with self._lock:
            self._check_open()
            row["id"] = next(self._ids)
            self._rows.append(row)
            self._by_id[row["id"]] = row
        return int(row["id"])

    async def finish(self, row_id: int, *, status: str, now: float | None = None, **fields: Any) -> None:
        """Complete a ``started`` row exactly once, with ``Ledger.finish``'s fields and rules."""
        unknown = set(fields) - FINISH_FIELDS
        if unknown:
            raise TypeError(f"finish() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if status not in FINAL_STATUSES:
            raise LedgerValueError(f"finish status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}")
        row_id = int(row_id)
        when = self._clock() if now is None else float(now)
        error_code = fields.get("error_code")
        try:
            clean: dict[str, Any] | None = clean_finish_fields(row_id, fields)
        except Exception as exc:  # as the SQLite ledger: an ended request never stays started
            log.warning("ledger row %s: could not record its details (%s); recording its status only", row_id, exc)
            clean = None
        with self._lock:
            self._check_open()
            row = self._by_id.get(row_id)
            if row is None:
                raise LedgerStateError(f"ledger row {row_id} does not exist")
            if row["status"] != "started":
                raise LedgerStateError(
                    f"ledger row {row_id} is already {row['status']}; it cannot be finished as {status}"
                )
            row.update(status=status, end_time=when, error_code=None if error_code is None else str(error_code))
            if clean is not None:
                _apply_details(row, clean)
            if clean is None or clean["latency_ms"] is None:
                row["latency_ms"] = (when - row["time"]) * 1000.0

    async def rows(self, **filters: Any) -> list[dict[str, Any]]:
        """Matching rows as dicts of every column, oldest first (filters as ``Ledger.to_dataframe``)."""
        match = row_filter(filters)
        with self._lock:
            self._check_open()
            return [_copy(row) for row in self._rows if match(row)]

    async def totals(
        self, *, user: str | None = None, since: float | None = None, until: float | None = None
    ) -> Totals:
        """As ``Ledger.totals``: every row but budget refusals; no tokens of cache hits or coalesced ones."""
        filters: dict[str, Any] = {"since": since, "until": until}
        if user is not None:
            filters["user"] = user
        match = row_filter(filters)
        requests = tokens = 0
        cost = 0.0
        with self._lock:
            self._check_open()
            for row in self._rows:
                if not match(row) or refused_by_budget(row):
                    continue
                requests += 1
                if not (row["cache_hit"] or row["coalesced"]):
                    tokens += (row["tokens_in"] or 0) + (row["tokens_out"] or 0)
                cost += row["cost"] or 0.0
        return Totals(requests, tokens, cost)

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerStateError("the memory ledger is closed")


def _apply_details(row: dict[str, Any], clean: Mapping[str, Any]) -> None:
    """``Ledger.finish``'s UPDATE: measures as given; who answered, flags and path only when given."""
    for name in ("tokens_in", "tokens_out", "cached_tokens_in", "reasoning_tokens_out", "cost", "ttft_ms"):
        row[name] = clean[name]
    row["latency_ms"] = clean["latency_ms"]
    for name in ("deployment", "provider_type", "model", "cache_hit", "coalesced", "failover_path"):
        if clean[name] is not None:
            row[name] = clean[name]


def _copy(row: Mapping[str, Any]) -> dict[str, Any]:
    copied = dict(row)
    if copied["failover_path"] is not None:
        copied["failover_path"] = list(copied["failover_path"])
    return copied


# ----------------------------------------------------------------------------------------------
# budgets


class MemoryBudgetCounter:
    """A ``BudgetCounter`` for one process: each principal's reservations of the last day in a deque."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # principal -> [id, time, tokens, cost] records, oldest first (lists: settle rewrites them)
        self._records: dict[str, deque[list[Any]]] = {}
        self._by_id: dict[int, list[Any]] = {}

    async def reserve(
        self,
        principal: str,
        limits: Limits,
        *,
        now: float,
        tokens: int = 0,
        cost: float = 0.0,
        session_id: str | None = None,
    ) -> Reservation:
        """Check and count one request in one step (``ratelimit.refusal`` decides).

        A principal without limits is counted too: limits that apply later (a changed configuration)
        must see what was used."""
        with self._lock:
            records = self._prune(principal, now)
            if limits.any:
                minute, spent = _window(records, now)
                refused = refusal(principal, limits, now=now, minute=minute, spent_today=spent)
                if refused is not None:
                    raise refused
            record = [next(self._ids), now, int(tokens), float(cost)]
            records.append(record)
            self._by_id[record[0]] = record
        return Reservation(record[0], principal, int(tokens), float(cost), now)

    async def settle(
        self, reservation: Reservation, *, tokens: int | None, cost: float | None, now: float | None = None
    ) -> None:
        """Replace the reservation's estimate with the actual figures (``None``: keep the estimate)."""
        with self._lock:
            record = self._by_id.get(int(reservation.id))
            if record is None:  # unknown, or older than any window
                return
            if tokens is not None:
                record[2] = int(tokens)
            if cost is not None:
                record[3] = float(cost)

    async def usage(self, principal: str, *, now: float) -> dict[str, float]:
        """``requests_last_minute``, ``tokens_last_minute`` and ``usd_today`` of ``principal``."""
        with self._lock:
            minute, spent = _window(self._records.get(principal, ()), now)
        return usage_report(now=now, minute=minute, spent_today=spent)

    async def aclose(self) -> None:
        return None

    def _prune(self, principal: str, now: float) -> deque[list[Any]]:
        """The principal's records, without those no decision needs any more (caller holds the lock)."""
        records = self._records.setdefault(principal, deque())
        oldest = horizon(now) - DAY  # a day of slack for a clock that steps back
        while records and records[0][1] < oldest:
            del self._by_id[records.popleft()[0]]
        return records


def _window(records: Iterable[list[Any]], now: float) -> tuple[list[Spend], float]:
    """The minute's spends and the day's USD of ``[id, time, tokens, cost]`` records."""
    day = utc_day_start(now)
    minute: list[Spend] = []
    spent = 0.0
    for _, at, tokens, cost in records:
        if at >= now - WINDOW:
            minute.append(Spend(at, tokens))
        if at >= day:
            spent += cost
    return minute, spent


# ----------------------------------------------------------------------------------------------
# the response cache


class MemoryResponseCache:
    """A ``ResponseCache`` in this process: ``MemoryCache``'s LRU with a time to live per entry.

    ``clock`` is monotonic seconds (injected in tests); ``default_ttl`` applies to ``set`` without one."""

    def __init__(
        self, max_entries: int = 1024, default_ttl: float = 3600.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lru = MemoryCache(max_entries, default_ttl, clock)

    async def get(self, key: str) -> CachedAnswer | None:
        return self.lru.get(key)

    async def set(self, key: str, answer: CachedAnswer, ttl: float | None = None) -> None:
        self.lru.set(key, answer, ttl)

    async def delete(self, key: str) -> None:
        self.lru.delete(key)

    async def clear(self) -> None:
        self.lru.clear()

    async def aclose(self) -> None:
        return None


# ----------------------------------------------------------------------------------------------
# circuit breakers


class MemoryBreakerStore:
    """A ``BreakerStore`` for one process: a ``BreakerBoard`` (pass one to share it, e.g. with a listener)."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        board: BreakerBoard | None = None,
    ) -> None:
        self.board = board if board is not None else BreakerBoard(config, clock=clock)

    async def acquire(self, deployment: str) -> str | None:
        return self.board.get(deployment).acquire()

    async def record_success(self, deployment: str) -> tuple[str, str] | None:
        return self.board.get(deployment).record_success()

    async def record_failure(self, deployment: str) -> tuple[str, str] | None:
        return self.board.get(deployment).record_failure()

    async def release(self, deployment: str) -> None:
        self.board.get(deployment).release()

    async def snapshots(self, deployments: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Each deployment's ``snapshot()`` plus ``"allowed"`` (whether a call would be let through now)."""
        result = {}
        for name in deployments:
            breaker = self.board.get(name)
            result[name] = {**breaker.snapshot(), "allowed": breaker.would_allow()}
        return result

    async def aclose(self) -> None:
        return None
