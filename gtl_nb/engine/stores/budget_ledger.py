"""What the usage ledger says a principal used: the figures a budget counter rebuilds its windows from.

A shared budget counter (``redis_budget``) keeps its windows in a server that may forget them — a Redis
restarted without persistence, a ``FLUSHDB``, a failover to an empty replica, eviction. The ledger
(``UsageLedger``, PostgreSQL when replicas share one) holds every request's start time, tokens and
cost per principal, so the counter reads from it what it lost: ``ledger_usage`` gives the principal's
counted requests of the last minute and its USD of the UTC day, counted as budgets count
(``ratelimit.counts_against_budgets``). A budget principal is a user's name, or ``tenant:<name>`` for
the limits a tenant's members share (``Engine._reserve``): those read the ledger's ``tenant`` column.

What the ledger cannot tell: the cost of a request still in flight (its row has none yet; its tokens
are those it reported so far, none until it ends), and rows a replica has not written yet (a
PostgreSQL ledger's writer gathers them for a few milliseconds; ``rows`` waits for this replica's
own, not for other replicas').
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gtl_nb.engine.ratelimit import DAY, TENANT_PREFIX, WINDOW, counts_against_budgets, utc_day_start
from gtl_nb.engine.stores.base import UsageLedger

__all__ = ["MAX_MINUTE_ROWS", "LedgerUsage", "ledger_usage"]

MAX_MINUTE_ROWS = 10_000
"""The most rows of the last minute read (the oldest first): more than any per-minute limit needs."""


@dataclass(frozen=True)
class LedgerUsage:
    """A principal's usage per the ledger at ``now``: ``minute`` its counted requests started in the
    last 60 s, oldest first, as ``(row id, start time, tokens)``; ``usd_today`` the USD of its rows
    started since 00:00 UTC."""

    minute: list[tuple[int, float, int]]
    usd_today: float


def _principal_filter(principal: str) -> dict[str, str]:
    """The ledger filter that selects ``principal``'s rows."""
    if principal.startswith(TENANT_PREFIX):
        return {"tenant": principal.removeprefix(TENANT_PREFIX)}
    return {"user": principal}


def _tokens(row: dict[str, Any]) -> int:
    """A row's tokens as budgets count them: none for answers that sent nothing upstream."""
    if row.get("cache_hit") or row.get("coalesced"):
        return 0
    return int(row.get("tokens_in") or 0) + int(row.get("tokens_out") or 0)


def _counted(row: dict[str, Any]) -> bool:
    return counts_against_budgets(str(row.get("status") or ""), row.get("deployment"))


async def _usd_since(ledger: UsageLedger, principal: str, day: float) -> float:
    """USD of ``principal``'s rows started in the UTC day from ``day`` (uncounted rows have no cost)."""
    return float((await ledger.totals(since=day, until=day + DAY, **_principal_filter(principal))).cost)


async def ledger_usage(ledger: UsageLedger, principal: str, *, now: float) -> LedgerUsage:
    """``principal``'s usage at ``now`` per ``ledger`` (module docstring); the ledger's own errors pass."""
    rows, usd_today = await asyncio.gather(  # (two queries at once: the first request waits for both)
        ledger.rows(limit=MAX_MINUTE_ROWS, since=now - WINDOW, **_principal_filter(principal)),
        _usd_since(ledger, principal, utc_day_start(now)),
    )
    minute = [(int(row["id"]), float(row["time"]), _tokens(row)) for row in rows if _counted(row)]
    minute.sort(key=lambda found: found[1])
    return LedgerUsage(minute=minute, usd_today=usd_today)
