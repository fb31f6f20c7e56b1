"""The store protocols (see the package docstring)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gtl_nb.engine.cache import CachedAnswer
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.ledger import Totals
    from gtl_nb.engine.ratelimit import Limits

__all__ = ["BreakerStore", "BudgetCounter", "Reservation", "ResponseCache", "Stores", "UsageLedger"]


@runtime_checkable
class UsageLedger(Protocol):
    """One row per request: inserted ``started`` before any upstream call, finished exactly once.

    Optional, outside the protocol: ``when_written(callback)`` — call ``callback()`` once every write
    queued so far is durable (the SQLite and PostgreSQL ledgers have it). The gateway's audit log holds a
    request's record until then; a ledger without it lets the record go at once."""

    async def start(
        self, *, session_id: str, context: RequestContext, model: str | None, now: float | None = None
    ) -> int:
        """Record the start of a request about to be sent; return a handle for ``finish`` (not
        necessarily the row's id: a writer off the request path assigns that later)."""
        ...

    async def finish(self, row_id: int, *, status: str, now: float | None = None, **fields: Any) -> None:
        """Complete a ``started`` row (the keyword fields of ``Ledger.finish``); never leaves it started."""
        ...

    async def rows(self, *, offset: int = 0, limit: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Rows as dicts of the documented columns, oldest first; filters as ``Ledger.to_dataframe``.
        ``offset`` skips that many matching rows, ``limit`` (None: all) caps how many come back — done
        by the store, so that a page of a large ledger never holds every matching row."""
        ...

    async def totals(
        self,
        *,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tenant: str | None = None,
    ) -> Totals:
        """Requests, tokens and cost of the matching rows (``user``, ``tenant``: ``None`` for every one)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Reservation:
    """What ``BudgetCounter.reserve`` counted for one request: settle it with the actual figures."""

    id: int | str
    principal: str
    tokens: int
    cost: float
    time: float


@runtime_checkable
class BudgetCounter(Protocol):
    """Per-principal requests/tokens per minute and USD per UTC day.

    ``reserve`` checks the limits and counts the request in one atomic step (so two callers at the
    same instant cannot both pass the last slot); tokens and cost are counted as the given estimate
    and replaced by the actual figures at ``settle``. A refused request is not counted, nor one
    whose reservation is given back (``release``).
    """

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
        """Count one request, or raise ``RateLimitError`` / ``BudgetExceededError`` with ``retry_after``.

        ``session_id`` names the request's ledger row, so a counter that also reads the ledger
        (``SqliteBudgetCounter`` in the ledger's file) counts it once."""
        ...

    async def settle(
        self, reservation: Reservation, *, tokens: int | None, cost: float | None, now: float | None = None
    ) -> None:
        """Replace the estimate with what the request used (``None``: unknown, keep the estimate)."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Take the reservation back whole — the request, its tokens and its cost: the request was
        refused before any provider was called (``ratelimit.counts_against_budgets``), so it counts
        no more than a refused one. An unknown reservation changes nothing."""
        ...

    async def usage(self, principal: str, *, now: float) -> dict[str, float]:
        """``requests_last_minute``, ``tokens_last_minute``, ``usd_today`` for ``principal``."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ResponseCache(Protocol):
    """Finished answers by cache key (in-flight coalescing stays in the engine)."""

    async def get(self, key: str) -> CachedAnswer | None: ...

    async def set(self, key: str, answer: CachedAnswer, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def clear(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BreakerStore(Protocol):
    """Circuit-breaker state per deployment (``engine.breaker`` holds the rules).

    ``acquire`` returns ``"pass"`` (closed), ``"probe"`` (a half-open slot: report a verdict or
    ``release`` it) or ``None`` (open). ``record_success``/``record_failure`` return the state change
    they caused as ``(old, new)``, else ``None``. ``record_failure``'s ``retry_after`` is the wait the
    provider asked for, which holds a circuit this failure opens open for that wait instead of its
    cooldown (``CircuitBreaker.record_failure``); a shared store keeps it so that every process agrees.
    """

    async def acquire(self, deployment: str) -> str | None: ...

    async def record_success(self, deployment: str) -> tuple[str, str] | None: ...

    async def record_failure(self, deployment: str, retry_after: float | None = None) -> tuple[str, str] | None: ...

    async def release(self, deployment: str) -> None: ...

    async def snapshots(self, deployments: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``CircuitBreaker.snapshot()`` of each deployment plus ``"allowed"`` (``would_allow``)."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class Stores:
    """The four stores an engine runs on (``ledger`` is ``None`` when no ledger is kept)."""

    ledger: UsageLedger | None
    budgets: BudgetCounter
    cache: ResponseCache
    breakers: BreakerStore

    async def aclose(self) -> None:
        for store in (self.ledger, self.budgets, self.cache, self.breakers):
            if store is not None:
                await store.aclose()

    def __iter__(self) -> Iterable[Any]:  # pragma: no cover - convenience for contract tests
        return iter((self.ledger, self.budgets, self.cache, self.breakers))
