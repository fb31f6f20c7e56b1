"""The SQLite budget counter in the ledger's file (``ledger_rows=True``, the default store) counts the
ledger's rows of requests that made no reservation — those of processes or principals without
budgets — as the reservations of the others are counted (``ratelimit``'s "What counts"): not a
request refused before any provider was called (a row ``error`` or ``cancelled`` with no deployment),
and a row once only, by its own principal's reservation of its session id."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest
from store_kit import run

from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.ratelimit import Limits, counts_against_budgets
from gtl_nb.engine.stores import SqliteBudgetCounter
from gtl_nb.protocol import RateLimitError

NOON = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()

# (status, deployment, error_code, counted): how requests end, and whether budgets count them
ENDS = [
    ("error", None, "INVALID_REQUEST", False),  # a compatible endpoint's body refused field by field
    ("error", None, "OVERLOADED", False),  # a session cap
    ("error", None, "FORBIDDEN", False),  # a token's scope or allow-lists
    ("error", None, "AUTH_FAILED", False),  # a token revoked since its connection opened
    ("error", None, "PROVIDER_UNAVAILABLE", False),  # a stopping gateway, or every circuit open
    ("error", None, "MODEL_NOT_FOUND", False),  # routing found no deployment
    ("error", None, "RATE_LIMIT", False),  # a budget
    ("cancelled", None, "CANCELLED", False),  # before routing chose a deployment
    ("ok", "openai", None, True),
    ("error", "openai", "INVALID_REQUEST", True),  # the provider's own refusal, or the catalog's just before
    ("error", "openai", "PROVIDER_UNAVAILABLE", True),
    ("cancelled", "openai", "CANCELLED", True),
    ("interrupted", None, None, True),  # its process died: it may well have been sent
    ("started", None, None, True),  # in flight
]


@pytest.fixture
def ledger(tmp_path: Path):
    opened = Ledger(tmp_path / "ledger.sqlite3")
    yield opened
    opened.close()


def write_row(ledger: Ledger, user: str, session_id: str, status: str, deployment: str | None, code: str | None):
    row = ledger.start(session_id=session_id, user=user, model="gpt-4o-mini", now=NOON - 1)
    if status == "interrupted":
        conn = sqlite3.connect(ledger.path, isolation_level=None)  # as recovery marks a dead process's row
        try:
            conn.execute("UPDATE requests SET status = 'interrupted' WHERE id = ?", (row,))
        finally:
            conn.close()
    elif status != "started":
        ledger.finish(row, status=status, deployment=deployment, error_code=code, cost=0.5, tokens_in=7, now=NOON - 1)


@pytest.mark.parametrize("status, deployment, code, counted", ENDS)
def test_a_row_counts_as_a_reservation_of_the_same_end_would(ledger: Ledger, status, deployment, code, counted):
    write_row(ledger, "ann", "s1", status, deployment, code)
    counter = SqliteBudgetCounter(ledger.path, ledger_rows=True)
    try:
        usage = run(counter.usage("ann", now=NOON))
    finally:
        counter.close()
    assert usage["requests_last_minute"] == int(counted)
    if status not in ("started", "interrupted"):  # (no outcome was written)
        assert (usage["tokens_last_minute"], usage["usd_today"]) == ((7, 0.5) if counted else (0, 0.0))
    assert counts_against_budgets(status, deployment) is counted  # the engine's rule for its reservations


def test_refused_rows_use_none_of_the_requests_per_minute(ledger: Ledger):
    """The review's case: three requests refused field by field, then valid ones up to the limit."""
    for number in range(3):
        write_row(ledger, "ann", f"refused-{number}", "error", None, "INVALID_REQUEST")
    counter = SqliteBudgetCounter(ledger.path, ledger_rows=True)
    limits = Limits(requests_per_minute=3)

    async def scenario() -> None:
        for _ in range(3):
            await counter.reserve("ann", limits, now=NOON)
        with pytest.raises(RateLimitError, match="reached the limit of 3 requests per minute"):
            await counter.reserve("ann", limits, now=NOON)

    try:
        run(scenario())
    finally:
        counter.close()


def test_only_the_principals_own_reservation_of_a_session_id_stands_for_its_row(ledger: Ledger):
    """Clients choose session ids: ann's reservation of "shared" neither hides bob's row of that id
    nor is bob's hidden by it; ann's own row of it counts once (as her reservation)."""
    counter = SqliteBudgetCounter(ledger.path, ledger_rows=True)

    async def scenario() -> tuple[dict[str, float], dict[str, float]]:
        await counter.reserve("ann", Limits(), now=NOON - 1, session_id="shared", tokens=3)
        write_row(ledger, "ann", "shared", "ok", "openai", None)  # the reserved request's own row
        write_row(ledger, "bob", "shared", "ok", "openai", None)  # bob's, without a reservation
        await counter.reserve("bob", Limits(), now=NOON - 1, session_id="bob's own", tokens=2)
        return await counter.usage("ann", now=NOON), await counter.usage("bob", now=NOON)

    try:
        ann, bob = run(scenario())
    finally:
        counter.close()
    assert ann["requests_last_minute"] == 1 and ann["tokens_last_minute"] == 3
    assert bob["requests_last_minute"] == 2 and bob["tokens_last_minute"] == 7 + 2
