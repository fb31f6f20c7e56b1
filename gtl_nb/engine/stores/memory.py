"""The in-process stores (``memory://``): one process's memory, gone when it exits.

``MemoryUsageLedger`` keeps the ledger's rows as dicts (tests, and a gateway replica that records
elsewhere); ``MemoryBudgetCounter`` counts per principal for this process alone;
``MemoryResponseCache`` is the LRU with a time to live; ``MemoryBreakerStore`` is the default
breaker store. Each has the semantics of its SQLite counterpart (the contract tests run both).
Their work is synchronous and short, done under a lock, so it is atomic for the event loop and
safe from other threads (a notebook reading usage while the engine's loop writes).
"""

from __future__ import annotations

import bisect
import itertools
import math
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gtl_nb.engine.breaker import BreakerBoard, BreakerConfig
from gtl_nb.engine.cache import CachedAnswer, MemoryCache
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import (
    FINISH_FIELDS,
    TOKEN_COUNTS,
    LedgerStateError,
    LedgerValueError,
    Totals,
    clean_finish_fields,
    iso_utc,
    page_bounds,
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

    async def rows(self, *, offset: int = 0, limit: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Matching rows as dicts of every column, oldest first (filters as ``Ledger.to_dataframe``;
        ``offset`` and ``limit`` as ``Ledger.rows``'s)."""
        match = row_filter(filters)
        count, skip = page_bounds(offset, limit)
        with self._lock:
            self._check_open()
            matching = (row for row in self._rows if match(row))
            stop = None if count < 0 else min(skip + count, sys.maxsize)  # (islice takes no larger index)
            return [_copy(row) for row in itertools.islice(matching, skip, stop)]

    async def totals(
        self,
        *,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tenant: str | None = None,
    ) -> Totals:
        """As ``Ledger.totals``: every row but budget refusals; no tokens of cache hits or coalesced ones."""
        filters: dict[str, Any] = {"since": since, "until": until}
        if user is not None:
            filters["user"] = user
        if tenant is not None:
            filters["tenant"] = tenant
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
    """``Ledger.finish``'s UPDATE: measures and the finish reason as given; who answered, flags and
    path only when given."""
    for name in ("finish_reason", *TOKEN_COUNTS, "cost", "usage_estimated", "ttft_ms"):
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


NANOS = 1_000_000_000
"""Nano-dollars per dollar: money is counted in whole nano-dollars, integers that add up exactly (as in Redis)."""
TIDY_SECONDS = 600.0
"""How often (in the callers' time) a ``MemoryBudgetCounter`` starts a pass over its principals to forget the idle."""
TIDY_STEP = 64
"""Principals one reserve looks at while such a pass runs: the pass costs O(1) per reserve, amortised."""


def nanos(cost: float) -> int:
    """``cost`` (USD) in whole nano-dollars."""
    return round(float(cost) * NANOS)


def limits_reached(limits: Limits, *, requests: int, tokens: int, spent_today: float) -> bool:
    """Whether ``ratelimit.refusal`` refuses on these totals (the minute's requests and tokens, the
    day's USD): the cheap test a counter makes before it gathers what the refusal's message and
    ``retry_after`` need (the minute's reservations one by one)."""
    if limits.usd_per_day is not None and spent_today >= limits.usd_per_day:
        return True
    if limits.requests_per_minute is not None and requests >= limits.requests_per_minute:
        return True
    return limits.tokens_per_minute is not None and tokens >= limits.tokens_per_minute


def _time(record: list[Any]) -> float:
    return float(record[1])


class _Counts:
    """One principal's reservations, oldest first, and running totals: of its minute, and per UTC day.

    ``records`` are ``[id, time, tokens, nano-USD]`` in time order (lists: settle rewrites them); those
    before ``head`` are forgotten. ``records[cut:]`` are those reserved at or after ``since`` (the
    start of the newest minute a reserve asked about), and ``requests``/``tokens`` are their totals.
    Every record enters and leaves the totals once: a check costs O(1), amortised, however many the
    minute holds. ``seed`` is ``None`` or ``(time, UTC day start, requests, tokens, nano-USD)``: usage
    counted elsewhere (``MemoryBudgetCounter.seed``), in the minute after ``time`` and in its day.
    (Caller holds the counter's lock.)"""

    __slots__ = ("cut", "days", "head", "records", "requests", "seed", "since", "tokens")

    def __init__(self) -> None:
        self.records: list[list[Any]] = []
        self.head = 0
        self.cut = 0
        self.since = -math.inf
        self.requests = 0
        self.tokens = 0
        self.days: dict[float, int] = {}  # UTC day start -> nano-USD counted for requests reserved that day
        self.seed: tuple[float, float, int, int, int] | None = None

    def advance(self, since: float) -> None:
        """Start the totals' minute at ``since`` if that is later: subtract what left it."""
        if since <= self.since:
            return
        records, cut = self.records, self.cut
        while cut < len(records) and records[cut][1] < since:
            self.requests -= 1
            self.tokens -= records[cut][2]
            cut += 1
        self.cut, self.since = cut, since

    def forget(self, before: float, by_id: dict[int, Any]) -> None:
        """Forget the records older than ``before`` (outside the totals: ``before`` < ``since``)."""
        records, head = self.records, self.head
        while head < self.cut and records[head][1] < before:
            del by_id[records[head][0]]
            head += 1
        if head > 64 and 2 * head > len(records):  # drop the forgotten ones: O(1) amortised
            del records[:head]
            self.cut -= head
            head = 0
        self.head = head

    def minute(self, since: float) -> tuple[int, int]:
        """Requests and tokens reserved at or after ``since`` (its reserve's minute), the seed's included."""
        requests, tokens = self.requests, self.tokens
        if since < self.since:  # this clock is behind the newest one seen: add the few in between
            first = bisect.bisect_left(self.records, since, self.head, self.cut, key=_time)
            for record in self.records[first : self.cut]:
                requests += 1
                tokens += record[2]
        seed = self.seed
        if seed is not None and seed[0] >= since:
            requests += seed[2]
            tokens += seed[3]
        return requests, tokens

    def spent(self, day: float) -> int:
        """Nano-USD counted for the UTC day starting at ``day``, the seed's included."""
        seed = self.seed
        spent = self.days.get(day, 0)
        return spent + seed[4] if seed is not None and seed[1] == day else spent

    def spends(self, since: float) -> list[Spend]:
        """The reservations at or after ``since``, one by one (for a refusal, and ``usage``); the seed's
        requests as that many at its time, the first with its tokens."""
        first = bisect.bisect_left(self.records, since, self.head, len(self.records), key=_time)
        found = [Spend(record[1], record[2]) for record in self.records[first:]]
        seed = self.seed
        if seed is not None and seed[0] >= since and seed[2] > 0:
            found += [Spend(seed[0], seed[3])] + [Spend(seed[0], 0)] * (seed[2] - 1)
        return found

    def idle(self, now: float, before: float, by_id: dict[int, Any]) -> bool:
        """Move the totals to ``now``'s minute, forget the records older than ``before`` (at most that
        minute's start) and the seed and day totals no check at ``now`` needs; whether nothing is left."""
        self.advance(now - WINDOW)
        self.forget(before, by_id)
        records, head = self.records, self.head
        if head:  # give the memory of the forgotten ones back now
            del records[:head]
            self.cut -= head
            self.head = 0
        yesterday = utc_day_start(now) - DAY  # a day of slack, as ``reserve`` keeps, for a clock that steps back
        for day in [day for day in self.days if day < yesterday]:
            del self.days[day]
        if self.seed is not None and self.seed[0] < before and self.seed[1] < yesterday:
            self.seed = None
        return not records and self.seed is None and not any(self.days.values())

    def add(self, record: list[Any]) -> None:
        """Count a new reservation (usually the newest: appended; else put in its place)."""
        records, at = self.records, record[1]
        if not records or records[-1][1] <= at:
            records.append(record)
        else:
            records.insert(bisect.bisect_right(records, at, self.head, len(records), key=_time), record)
        if at >= self.since:
            self.requests += 1
            self.tokens += record[2]
        else:  # behind the totals' minute: placed before cut, not counted
            self.cut += 1
        day = utc_day_start(at)
        if day not in self.days:
            for old in [old for old in self.days if old < day - 2 * DAY]:
                del self.days[old]
        self.days[day] = self.days.get(day, 0) + record[3]

    def remove(self, record: list[Any]) -> None:
        """Take a record out of the records and every total that counts it (``release``)."""
        records = self.records
        index = bisect.bisect_left(records, record[1], self.head, len(records), key=_time)
        while records[index] is not record:  # among those of the same instant
            index += 1
        del records[index]
        if index < self.cut:  # before the totals' minute: not in them
            self.cut -= 1
        else:
            self.requests -= 1
            self.tokens -= record[2]
        day = utc_day_start(record[1])
        if day in self.days:
            self.days[day] -= record[3]

    def settle(self, record: list[Any], tokens: int | None, cost: int | None) -> None:
        """Replace a record's figures, and the totals that count it."""
        if tokens is not None:
            if record[1] >= self.since:
                self.tokens += tokens - record[2]
            record[2] = tokens
        if cost is not None:
            day = utc_day_start(record[1])
            if day in self.days:
                self.days[day] += cost - record[3]
            record[3] = cost


class MemoryBudgetCounter:
    """A ``BudgetCounter`` for one process: each principal's reservations of the last two days, with
    running totals of its minute and of each UTC day's money (``_Counts``), so a check costs the same
    whatever the principal's traffic. Money is counted in whole nano-dollars (``NANOS``), as in Redis.

    A principal is forgotten once nothing of it matters to a check any more: every ``TIDY_SECONDS``
    (of the ``now`` callers pass) a pass looks at every principal, ``TIDY_STEP`` of them per reserve,
    and drops those without a reservation since the start of yesterday (nor a seed, nor money counted
    today or yesterday). So an idle principal holds no memory for more than about two days.

    ``seed`` counts usage made elsewhere (``RedisBudgetCounter`` starting to count locally), as if
    reserved at one instant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._counts: dict[str, _Counts] = {}
        self._by_id: dict[int, tuple[list[Any], _Counts]] = {}  # reservation id -> its record, its principal's
        self._tidying: list[str] = []  # the principals the current pass has still to look at
        self.tidy_at = -math.inf
        """The callers' time from which the next pass over the principals is due (-inf while one runs)."""
        self.latest = -math.inf
        """The latest ``now`` a reserve was given."""

    @property
    def principals(self) -> int:
        """How many principals the counter holds something of."""
        return len(self._counts)

    @property
    def reservations(self) -> int:
        """How many reservations it holds (settle can still find)."""
        return len(self._by_id)

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
        """Check and count one request in one step (``ratelimit.refusal`` decides, on the running totals;
        only a refusal reads the minute's reservations one by one, for its ``retry_after``).

        A principal without limits is counted too: limits that apply later (a changed configuration)
        must see what was used."""
        tokens = int(tokens)
        with self._lock:
            if now >= self.tidy_at:
                self._tidy(now, horizon(now) - DAY)
            if now > self.latest:
                self.latest = now
            counts = self._counts.get(principal)
            if counts is None:
                counts = self._counts[principal] = _Counts()
            since = now - WINDOW
            counts.advance(since)
            counts.forget(horizon(now) - DAY, self._by_id)  # a day of slack for a clock that steps back
            if limits.any:
                requests, used = counts.minute(since)
                spent = counts.spent(utc_day_start(now)) / NANOS
                if limits_reached(limits, requests=requests, tokens=used, spent_today=spent):
                    refused = refusal(principal, limits, now=now, minute=counts.spends(since), spent_today=spent)
                    if refused is not None:
                        raise refused
            record = [next(self._ids), now, tokens, nanos(cost)]
            counts.add(record)
            self._by_id[record[0]] = (record, counts)
        return Reservation(record[0], principal, tokens, float(cost), now)

    async def settle(
        self, reservation: Reservation, *, tokens: int | None, cost: float | None, now: float | None = None
    ) -> None:
        """Replace the reservation's estimate with the actual figures (``None``: keep the estimate)."""
        with self._lock:
            found = self._by_id.get(int(reservation.id))
            if found is None:  # unknown, or older than any window
                return
            record, counts = found
            counts.settle(record, None if tokens is None else int(tokens), None if cost is None else nanos(cost))

    async def release(self, reservation: Reservation) -> None:
        """Take the reservation back whole (its request, tokens and cost): it was never sent."""
        with self._lock:
            found = self._by_id.pop(int(reservation.id), None)
            if found is None:  # unknown, forgotten, or handed over to another counter
                return
            record, counts = found
            counts.remove(record)

    async def usage(self, principal: str, *, now: float) -> dict[str, float]:
        """``requests_last_minute``, ``tokens_last_minute`` and ``usd_today`` of ``principal``."""
        with self._lock:
            counts = self._counts.get(principal)
            if counts is None:
                return usage_report(now=now, minute=(), spent_today=0.0)
            minute = counts.spends(now - WINDOW)
            spent = counts.spent(utc_day_start(now)) / NANOS
        return usage_report(now=now, minute=minute, spent_today=spent)

    def seed(self, principal: str, *, at: float, requests: int, tokens: int, cost: float) -> None:
        """Count ``requests`` requests, ``tokens`` tokens and ``cost`` USD of ``principal`` made elsewhere
        at ``at``: in every check of the minute after ``at`` (and in a refusal's ``retry_after``, as
        reservations made at ``at``), and in the day of ``at``; ``usage`` reports them too. It replaces
        the principal's earlier seed; it is never settled."""
        with self._lock:
            counts = self._counts.get(principal)
            if counts is None:
                counts = self._counts[principal] = _Counts()
            counts.seed = (float(at), utc_day_start(at), max(0, int(requests)), max(0, int(tokens)), nanos(cost))

    def forget_seeds(self) -> None:
        """Drop every principal's seed (the usage made elsewhere is counted there again)."""
        with self._lock:
            for counts in self._counts.values():
                counts.seed = None

    def names(self) -> list[str]:
        """The principals the counter holds something of."""
        with self._lock:
            return list(self._counts)

    def outbox(self, principal: str, *, since: float, day: float) -> tuple[int, list[tuple[int, float, int]], int]:
        """What ``principal`` used here, to hand over to another counter: the newest reservation id (0:
        none), the reservations at or after ``since`` as ``(id, time, tokens)``, and the nano-USD counted
        for the UTC day starting at ``day`` (its seed not included). ``handed_over`` forgets them."""
        with self._lock:
            counts = self._counts.get(principal)
            if counts is None:
                return 0, [], 0
            records = counts.records[counts.head :]
            newest = max((record[0] for record in records), default=0)
            minute = [(record[0], record[1], record[2]) for record in records if record[1] >= since]
            return newest, minute, counts.days.get(day, 0)

    def handed_over(self, principal: str, newest: int, *, day: float, nanos: int) -> None:
        """Forget what ``outbox`` gave (now counted elsewhere): ``principal``'s reservations up to id
        ``newest`` — a later ``settle`` of one changes nothing — and ``nanos`` of the day starting at
        ``day`` (earlier days go too); the principal goes when nothing else is left."""
        with self._lock:
            counts = self._counts.get(principal)
            if counts is None:
                return
            kept = []
            for record in counts.records[counts.head :]:
                if record[0] <= newest:
                    self._by_id.pop(record[0], None)
                else:  # reserved since (Redis failed again meanwhile): stays
                    kept.append(record)
            counts.records, counts.head = kept, 0
            counts.cut = bisect.bisect_left(kept, counts.since, key=_time)
            counts.requests = len(kept) - counts.cut
            counts.tokens = sum(record[2] for record in kept[counts.cut :])
            if day in counts.days:
                counts.days[day] -= nanos
            for old in [old for old in counts.days if old < day]:
                del counts.days[old]
            if not kept and counts.seed is None and not any(counts.days.values()):
                del self._counts[principal]
                if not self._counts:  # give back the tables too (a dict never shrinks on its own)
                    self._counts, self._by_id = {}, {}

    def tidy(self, now: float) -> bool:
        """One step of the pass over the principals (the class docstring), starting one if it is due
        at ``now``: whether the pass goes on. ``reserve`` takes the steps; a counter that gets none
        (``RedisBudgetCounter``'s while Redis answers) may take them here."""
        with self._lock:
            return self._tidy(now, horizon(now) - DAY)

    def _tidy(self, now: float, before: float) -> bool:
        """``tidy`` (the caller holds the lock)."""
        if not self._tidying:
            if now < self.tidy_at:
                return False
            self._tidying = list(self._counts)
        for _ in range(min(TIDY_STEP, len(self._tidying))):
            principal = self._tidying.pop()
            counts = self._counts.get(principal)
            if counts is not None and counts.idle(now, before, self._by_id):
                del self._counts[principal]
        if self._tidying:
            self.tidy_at = -math.inf
            return True
        self.tidy_at = now + TIDY_SECONDS
        for name in ("_counts", "_by_id"):  # a dict never shrinks on its own: copy one far larger than needed
            table = getattr(self, name)
            if sys.getsizeof(table) > 200 * len(table) + 4096:  # a full one takes about 40 to 80 bytes an entry
                setattr(self, name, dict(table))
        return False

    async def aclose(self) -> None:
        return None


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

    async def record_failure(self, deployment: str, retry_after: float | None = None) -> tuple[str, str] | None:
        return self.board.get(deployment).record_failure(retry_after)

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
