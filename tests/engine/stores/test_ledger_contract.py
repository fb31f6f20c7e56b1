"""The ``UsageLedger`` contract: every implementation records, finishes, filters and totals rows alike."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from store_kit import T0, FakeClock, run

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import Ledger, LedgerStateError, LedgerValueError, frame_from_rows, process_identity
from gtl_nb.engine.ledger_schema import COLUMN_NAMES, DTYPES
from gtl_nb.engine.stores import MemoryUsageLedger, SqliteUsageLedger, UsageLedger

ADA = RequestContext(principal="ada", tenant="acme", key_id="key_7", trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
BOB = RequestContext(principal="bob")


@pytest.fixture
def ledger(ledger_backend: str, store_file: Path, clock: FakeClock):
    store: UsageLedger = (
        MemoryUsageLedger(clock=clock) if ledger_backend == "memory" else SqliteUsageLedger(store_file, clock=clock)
    )
    yield store
    asyncio.run(store.aclose())


async def only_row(ledger: UsageLedger) -> dict[str, Any]:
    """The scenario's one row (``start`` returns a handle for ``finish``, not necessarily the row's id)."""
    rows = await ledger.rows()
    assert len(rows) == 1
    return rows[0]


def test_it_is_a_usage_ledger(ledger: UsageLedger):
    assert isinstance(ledger, UsageLedger)


def test_start_inserts_a_started_row_with_the_request_context(ledger: UsageLedger):
    async def scenario() -> dict[str, Any]:
        await ledger.start(session_id="sess_1", context=ADA, model="gpt-4o", now=T0)
        return await only_row(ledger)

    row = run(scenario())
    assert list(row) == list(COLUMN_NAMES)
    assert (row["status"], row["time"], row["time_utc"], row["end_time"]) == (
        "started",
        T0,
        "2023-11-14T22:13:20.250Z",
        None,
    )
    assert (row["user"], row["tenant"], row["key_id"], row["trace_id"]) == (
        "ada",
        "acme",
        "key_7",
        "4bf92f3577b34da6a3ce929d0e0e4736",
    )
    assert (row["session_id"], row["model"], row["deployment"]) == ("sess_1", "gpt-4o", None)
    assert (row["cache_hit"], row["coalesced"], row["failover_path"]) == (False, False, None)
    assert row["pid"] == os.getpid() and row["proc_start"] == process_identity(os.getpid())
    assert row["hostname"]


def test_every_finish_field_round_trips(ledger: UsageLedger):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=ADA, model="gpt-4o", now=T0)
        await ledger.finish(
            row_id,
            status="error",
            error_code="RATE_LIMIT",
            deployment="backup",
            provider_type="anthropic",
            model="claude-x",
            tokens_in=120,
            tokens_out=45,
            cached_tokens_in=100,
            cache_write_tokens_in=30,
            reasoning_tokens_out=7,
            cost=0.0125,
            usage_estimated=True,
            ttft_ms=210.5,
            latency_ms=1500.25,
            cache_hit=True,
            coalesced=True,
            failover_path=["primary", "backup"],
            now=T0 + 1.5,
        )
        return await only_row(ledger)

    row = run(scenario())
    assert {name: row[name] for name in COLUMN_NAMES if name not in ("id", "pid", "proc_start", "hostname")} == {
        "time": T0,
        "time_utc": "2023-11-14T22:13:20.250Z",
        "end_time": T0 + 1.5,
        "session_id": "s",
        "user": "ada",
        "deployment": "backup",
        "provider_type": "anthropic",
        "model": "claude-x",
        "status": "error",
        "error_code": "RATE_LIMIT",
        "finish_reason": None,  # an error row: no answer ended, so no reason
        "tokens_in": 120,
        "tokens_out": 45,
        "cached_tokens_in": 100,
        "cache_write_tokens_in": 30,
        "reasoning_tokens_out": 7,
        "cost": 0.0125,
        "usage_estimated": True,
        "ttft_ms": 210.5,
        "latency_ms": 1500.25,
        "cache_hit": True,
        "coalesced": True,
        "failover_path": ["primary", "backup"],
        "tenant": "acme",
        "key_id": "key_7",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }


COUNTS = ("tokens_in", "tokens_out", "cached_tokens_in", "cache_write_tokens_in", "reasoning_tokens_out")


def test_each_token_count_lands_in_its_own_column_whichever_way_the_row_is_written(ledger: UsageLedger):
    # A value of its own per count and per row: a count one place off in a statement shows. The first
    # row's outcome may be written with its start (one INSERT); the second's start is read back first,
    # so its outcome is an UPDATE of a started row.
    def counts(base: int) -> dict[str, int]:
        return {name: base + index for index, name in enumerate(COUNTS)}

    async def scenario() -> list[dict[str, Any]]:
        first = await ledger.start(session_id="together", context=ADA, model="m", now=T0)
        await ledger.finish(first, status="ok", cost=0.5, now=T0 + 1, **counts(100))
        second = await ledger.start(session_id="apart", context=ADA, model="m", now=T0 + 2)
        assert [row["status"] for row in await ledger.rows(session_id="apart")] == ["started"]
        await ledger.finish(second, status="ok", cost=0.25, now=T0 + 3, **counts(200))
        third = await ledger.start(session_id="unreported", context=ADA, model="m", now=T0 + 4)
        await ledger.rows()
        await ledger.finish(third, status="ok", tokens_in=9, now=T0 + 5)
        return await ledger.rows()

    rows = run(scenario())
    assert [{name: row[name] for name in COUNTS} for row in rows] == [
        counts(100),
        counts(200),
        {"tokens_in": 9, **dict.fromkeys(COUNTS[1:])},  # not reported: unknown, never 0
    ]
    assert [row["cost"] for row in rows] == [0.5, 0.25, None]
    frame = frame_from_rows(rows)
    assert str(frame["cache_write_tokens_in"].dtype) == "Int64"
    writes = frame["cache_write_tokens_in"]
    assert list(writes[:2]) == [103, 203] and writes.isna().tolist() == [False, False, True]


def test_the_estimate_mark_lands_in_its_column_whichever_way_the_row_is_written(ledger: UsageLedger):
    # with its start (one INSERT) and as an UPDATE of a started row; a row still started has no mark yet
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        first = await ledger.start(session_id="together", context=ADA, model="m", now=T0)
        await ledger.finish(first, status="cancelled", error_code="CANCELLED", tokens_in=7, usage_estimated=True)
        second = await ledger.start(session_id="apart", context=ADA, model="m", now=T0 + 2)
        running = await ledger.rows(session_id="apart")
        await ledger.finish(second, status="cancelled", error_code="CANCELLED", tokens_out=3, usage_estimated=True)
        third = await ledger.start(session_id="reported", context=ADA, model="m", now=T0 + 4)
        await ledger.rows()
        await ledger.finish(third, status="ok", tokens_in=9, tokens_out=2)
        return running, await ledger.rows()

    running, rows = run(scenario())
    assert [row["usage_estimated"] for row in running] == [None]
    assert [(row["session_id"], row["usage_estimated"]) for row in rows] == [
        ("together", True),
        ("apart", True),
        ("reported", False),
    ]
    assert frame_from_rows(rows)["usage_estimated"].tolist() == [True, True, False]


def test_the_finish_reason_of_each_row_lands_in_its_column_whichever_way_it_is_written(ledger: UsageLedger):
    # written with its start (one INSERT), as an UPDATE of a started row, an error row, and none given
    async def scenario() -> list[dict[str, Any]]:
        first = await ledger.start(session_id="cut", context=ADA, model="m", now=T0)
        await ledger.finish(first, status="ok", finish_reason="length", tokens_out=16, now=T0 + 1)
        second = await ledger.start(session_id="tools", context=ADA, model="m", now=T0 + 2)
        assert [row["status"] for row in await ledger.rows(session_id="tools")] == ["started"]
        await ledger.finish(second, status="ok", finish_reason="tool_calls", now=T0 + 3)
        third = await ledger.start(session_id="failed", context=ADA, model="m", now=T0 + 4)
        await ledger.finish(third, status="error", error_code="OVERLOADED", now=T0 + 5)
        fourth = await ledger.start(session_id="unsaid", context=ADA, model="m", now=T0 + 6)
        await ledger.finish(fourth, status="ok", now=T0 + 7)
        return await ledger.rows()

    rows = run(scenario())
    assert [(row["session_id"], row["status"], row["finish_reason"]) for row in rows] == [
        ("cut", "ok", "length"),
        ("tools", "ok", "tool_calls"),
        ("failed", "error", None),
        ("unsaid", "ok", None),  # not given: unknown, never a guessed "stop"
    ]
    assert [row["session_id"] for row in run(ledger.rows(finish_reason="length"))] == ["cut"]
    frame = frame_from_rows(rows)
    assert str(frame["finish_reason"].dtype) == "string"
    assert list(frame.columns[list(frame.columns).index("status") :][:3]) == ["status", "error_code", "finish_reason"]


@pytest.mark.parametrize(
    ("value", "stored"),
    [(7, None), (b"length", None), (["stop"], None), ("x" * 500, "x" * 32), ("content_filter", "content_filter")],
    ids=["int", "bytes", "list", "long", "content_filter"],
)
def test_a_finish_reason_is_kept_short_text_or_unknown(ledger: UsageLedger, value: Any, stored: str | None):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=BOB, model="m", now=T0)
        await ledger.finish(row_id, status="ok", tokens_in=10, finish_reason=value, now=T0 + 1)
        return await only_row(ledger)

    row = run(scenario())
    assert (row["status"], row["tokens_in"], row["finish_reason"]) == ("ok", 10, stored)


@pytest.mark.parametrize("value", [-1, True, 2**63, 1.5], ids=repr)
def test_an_implausible_cache_write_count_is_unknown_like_any_count(ledger: UsageLedger, value: Any):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=BOB, model="m", now=T0)
        await ledger.finish(row_id, status="ok", tokens_in=10, cache_write_tokens_in=value, now=T0 + 1)
        return await only_row(ledger)

    row = run(scenario())
    assert (row["status"], row["tokens_in"], row["cache_write_tokens_in"]) == ("ok", 10, None)


def test_finish_keeps_what_it_is_not_given_and_measures_latency_itself(ledger: UsageLedger, clock: FakeClock):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=BOB, model="m")
        clock.now += 2
        await ledger.finish(row_id, status="ok", deployment="oa")
        return await only_row(ledger)

    row = run(scenario())
    assert (row["model"], row["deployment"], row["end_time"]) == ("m", "oa", T0 + 2)
    assert row["tokens_in"] is None and row["cost"] is None  # unknown stays unknown, never 0
    assert row["latency_ms"] == 2000.0


def test_a_row_is_finished_once_and_the_first_outcome_wins(ledger: UsageLedger):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=BOB, model="m", now=T0)
        await ledger.finish(row_id, status="ok", tokens_in=1, now=T0 + 1)
        with pytest.raises(LedgerStateError, match="already"):
            await ledger.finish(row_id, status="error", error_code="INTERNAL", tokens_in=99, now=T0 + 2)
        with pytest.raises(LedgerStateError, match="does not exist"):
            await ledger.finish(row_id + 100, status="ok")
        return await only_row(ledger)

    row = run(scenario())
    assert (row["status"], row["tokens_in"], row["error_code"], row["end_time"]) == ("ok", 1, None, T0 + 1)


@pytest.mark.parametrize("status", ["started", "done", ""])
def test_finish_refuses_a_status_that_is_not_final(ledger: UsageLedger, status: str):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=BOB, model="m")
        with pytest.raises(LedgerValueError, match="finish status"):
            await ledger.finish(row_id, status=status)
        with pytest.raises(TypeError):
            await ledger.finish(row_id, status="ok", colour="blue")
        return await only_row(ledger)

    assert run(scenario())["status"] == "started"


def test_implausible_numbers_are_stored_as_unknown_and_the_row_still_finishes(ledger: UsageLedger):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=BOB, model="m")
        await ledger.finish(row_id, status="ok", tokens_in=-5, tokens_out=2**70, cost=float("nan"), ttft_ms="soon")
        return await only_row(ledger)

    row = run(scenario())
    assert row["status"] == "ok"
    assert (row["tokens_in"], row["tokens_out"], row["cost"], row["ttft_ms"]) == (None, None, None, None)


def test_details_it_cannot_store_leave_the_outcome_recorded(ledger: UsageLedger):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=BOB, model="m")
        await ledger.finish(row_id, status="error", error_code="TIMEOUT", failover_path=5)  # not a sequence
        return await only_row(ledger)

    row = run(scenario())
    assert (row["status"], row["error_code"], row["failover_path"]) == ("error", "TIMEOUT", None)


def test_a_finish_whose_caller_is_cancelled_still_lands(ledger: UsageLedger):
    async def scenario() -> dict[str, Any]:
        row_id = await ledger.start(session_id="s", context=BOB, model="m")
        task = asyncio.ensure_future(ledger.finish(row_id, status="ok", tokens_in=3))
        await asyncio.sleep(0)  # the finish has begun
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return await only_row(ledger)

    row = run(scenario())
    assert (row["status"], row["tokens_in"]) == ("ok", 3)


def test_rows_filter_as_to_dataframe_does(ledger: UsageLedger):
    async def scenario() -> dict[str, list[str]]:
        for index, (context, status) in enumerate([(ADA, "ok"), (BOB, "error"), (ADA, "cancelled"), (BOB, "ok")]):
            row_id = await ledger.start(session_id=f"s{index}", context=context, model="m", now=T0 + index)
            await ledger.finish(row_id, status=status, cost=None if index == 1 else 0.5, now=T0 + index)
        await ledger.start(session_id="s4", context=ADA, model="m", now=T0 + 4)

        async def sessions(**filters: Any) -> list[str]:
            return [row["session_id"] for row in await ledger.rows(**filters)]

        return {
            "all": await sessions(),
            "ada": await sessions(user="ada"),
            "tenant": await sessions(tenant="acme"),
            "no tenant": await sessions(tenant=None),
            "status list": await sessions(status=["error", "cancelled"]),
            "unknown cost": await sessions(cost=None),
            "window": await sessions(since=T0 + 1, until=T0 + 3),
            "datetime": await sessions(since=datetime.fromtimestamp(T0 + 3, timezone.utc)),
            "session": await sessions(session_id="s2"),
            "flag": await sessions(cache_hit=False, status="started"),
        }

    assert run(scenario()) == {
        "all": ["s0", "s1", "s2", "s3", "s4"],
        "ada": ["s0", "s2", "s4"],
        "tenant": ["s0", "s2", "s4"],
        "no tenant": ["s1", "s3"],
        "status list": ["s1", "s2"],
        "unknown cost": ["s1", "s4"],
        "window": ["s1", "s2"],
        "datetime": ["s3", "s4"],
        "session": ["s2"],
        "flag": ["s4"],
    }


def test_an_unknown_filter_is_a_caller_mistake(ledger: UsageLedger):
    with pytest.raises(LedgerValueError, match="unknown ledger filter 'colour'"):
        run(ledger.rows(colour="blue"))
    with pytest.raises(LedgerValueError, match="timezone-aware"):
        run(ledger.rows(since=datetime(2024, 1, 1)))
    with pytest.raises(LedgerValueError, match="timezone-aware"):
        run(ledger.rows(since="2024-01-01T00:00:00"))
    with pytest.raises(LedgerValueError, match="timezone-aware"):  # a time of day says not in which zone
        run(ledger.rows(since="2024-01-01 00:00"))
    with pytest.raises(LedgerValueError, match=r"or a day \('2026-12-01', from midnight UTC\)"):
        run(ledger.rows(since="2024-13-01"))
    with pytest.raises(LedgerValueError, match="unix seconds, a timezone-aware datetime, ISO-8601") as bound:
        run(ledger.rows(since="yesterday"))
    assert bound.value.code == "INVALID_REQUEST"  # the call is wrong: nothing failed
    with pytest.raises(LedgerValueError, match=r"usage_table\(client.usage\(\), by=...\)"):
        run(ledger.rows(by="model"))


def test_bounds_may_be_iso_text_with_an_offset(ledger: UsageLedger):
    async def scenario() -> tuple[int, int, int]:
        row_id = await ledger.start(session_id="s", context=ADA, model="m", now=T0)
        await ledger.finish(row_id, status="ok", now=T0)
        when = datetime.fromtimestamp(T0, timezone.utc)
        after = (when + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        before = (when - timedelta(seconds=1)).isoformat()
        return (
            len(await ledger.rows(since=before)),
            len(await ledger.rows(since=after)),
            len(await ledger.rows(until=after, since=str(T0))),  # unix seconds as text
        )

    assert run(scenario()) == (1, 0, 1)


def test_a_day_alone_starts_at_midnight_utc(ledger: UsageLedger):
    day = datetime.fromtimestamp(T0, timezone.utc).date()

    async def scenario() -> list[int]:
        row_id = await ledger.start(session_id="s", context=ADA, model="m", now=T0)
        await ledger.finish(row_id, status="ok", now=T0)
        bounds = [{"since": day.isoformat()}, {"since": day}, {"until": day.isoformat()}]
        bounds.append({"since": (day + timedelta(days=1)).isoformat()})
        bounds.append({"since": f" {day.isoformat()} ", "until": day + timedelta(days=1)})
        return [len(await ledger.rows(**bound)) for bound in bounds]

    assert run(scenario()) == [1, 1, 0, 0, 1]


def test_totals_count_as_budgets_did(ledger: UsageLedger):
    async def scenario() -> tuple[Any, ...]:
        async def add(context: RequestContext, **fields: Any) -> None:
            row_id = await ledger.start(session_id="s", context=context, model="m", now=T0)
            await ledger.finish(row_id, now=T0, **fields)

        await add(ADA, status="ok", tokens_in=10, tokens_out=5, cost=0.25)
        await add(ADA, status="ok", tokens_in=100, tokens_out=100, cost=0.0, cache_hit=True)  # no tokens
        await add(ADA, status="ok", tokens_in=100, coalesced=True)  # no tokens
        await add(ADA, status="error", error_code="RATE_LIMIT")  # refused by a budget: not a request
        await add(ADA, status="error", error_code="RATE_LIMIT", deployment="oa")  # the provider's: counted
        await add(ADA, status="error", error_code="TIMEOUT", tokens_in=None, cost=None)
        await add(BOB, status="ok", tokens_in=1, cost=1.0)
        return (
            await ledger.totals(user="ada"),
            await ledger.totals(),
            await ledger.totals(user="ada", since=T0 + 1),
            await ledger.totals(user="ada", until=T0 + 1),
            await ledger.totals(tenant="acme"),  # ada's tenant (a tenant's shared budget is rebuilt from it)
            await ledger.totals(tenant="acme", user="bob"),
        )

    ada, everyone, later, until, acme, bob_in_acme = run(scenario())
    assert tuple(ada) == (5, 15, 0.25)
    assert tuple(everyone) == (6, 16, 1.25)
    assert tuple(later) == (0, 0, 0.0)
    assert until == ada
    assert acme == ada
    assert tuple(bob_in_acme) == (0, 0, 0.0)


def test_frame_from_rows_has_the_documented_columns_and_dtypes(ledger: UsageLedger):
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        empty = await ledger.rows()
        await ledger.start(session_id="in flight", context=ADA, model="m", now=T0)
        row_id = await ledger.start(session_id="done", context=BOB, model="m", now=T0)
        await ledger.finish(row_id, status="ok", tokens_in=3, failover_path=["a", "b"], now=T0 + 1)
        return empty, await ledger.rows()

    empty, rows = run(scenario())
    for frame in (frame_from_rows(empty), frame_from_rows(rows)):
        assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == DTYPES
    frame = frame_from_rows(rows)
    assert list(frame["session_id"]) == ["in flight", "done"]
    assert pd.isna(frame.loc[0, "end_time"]) and frame.loc[1, "tokens_in"] == 3
    assert frame.loc[1, "end_time"] == pd.Timestamp("2023-11-14T22:13:21.250Z")
    assert frame.loc[1, "failover_path"] == ["a", "b"] and frame.loc[0, "tenant"] == "acme"


def test_a_closed_ledger_refuses_calls(ledger: UsageLedger):
    run(ledger.aclose())
    with pytest.raises(LedgerStateError, match="closed"):
        run(ledger.start(session_id="s", context=BOB, model="m"))
    with pytest.raises(LedgerStateError, match="closed"):
        run(ledger.rows())


# -- the SQLite implementation's own promises ------------------------------------------------------


def test_the_sqlite_store_is_the_ledger_file_and_its_frame(store_file: Path):
    async def scenario(store: SqliteUsageLedger) -> list[dict[str, Any]]:
        row_id = await store.start(session_id="s", context=ADA, model="m", now=T0)
        await store.finish(row_id, status="ok", cost=0.5, now=T0 + 1)
        rows = await store.rows()
        await store.aclose()
        return rows

    rows = run(scenario(SqliteUsageLedger(store_file)))
    with Ledger(store_file) as reopened:
        pd.testing.assert_frame_equal(reopened.to_dataframe(), frame_from_rows(rows))
        assert reopened.rows() == rows


def test_a_wrapped_ledger_stays_open_for_its_owner(store_file: Path):
    with Ledger(store_file) as owned:
        store = SqliteUsageLedger(owned)
        assert store.path == store_file
        run(store.start(session_id="s", context=BOB, model="m"))
        run(store.aclose())
        assert owned.totals().requests == 1  # still open
        with pytest.raises(LedgerStateError):
            run(store.rows())


def test_a_start_is_never_cancelled_half_way(store_file: Path):
    # start() queues the row without waiting for the disk: a task cancelled before it ran queued
    # nothing, one that ran returned its handle (and its caller finishes the row)
    async def scenario(store: SqliteUsageLedger) -> list[dict[str, Any]]:
        never = asyncio.ensure_future(store.start(session_id="never", context=BOB, model="m"))
        never.cancel()
        ran = asyncio.ensure_future(store.start(session_id="ran", context=BOB, model="m"))
        await asyncio.gather(never, return_exceptions=True)
        assert ran.done() and not ran.cancel()  # nothing left to cancel
        await store.finish(ran.result(), status="cancelled", error_code="CANCELLED")
        rows = await store.rows()
        await store.aclose()
        return rows

    rows = run(scenario(SqliteUsageLedger(store_file)))
    assert [(row["session_id"], row["status"], row["error_code"]) for row in rows] == [
        ("ran", "cancelled", "CANCELLED")
    ]


def test_a_page_of_rows_is_the_same_slice_of_the_same_order(ledger: UsageLedger):
    """``rows(offset=, limit=)`` is done by the store (the gateway's ``usage`` query reads a page of a
    large ledger so); it must give exactly the slice ``rows()`` would, filters and id order kept."""

    async def scenario() -> tuple[list[str], list[list[str]], list[str], list[str]]:
        for index in range(7):
            context = ADA if index % 3 else BOB
            await ledger.start(session_id=f"s{index}", context=context, model="m", now=T0 + index)

        async def sessions(**arguments: Any) -> list[str]:
            return [row["session_id"] for row in await ledger.rows(**arguments)]

        pages = [await sessions(user="ada", offset=offset, limit=2) for offset in (0, 2, 4, 9)]
        return await sessions(user="ada"), pages, await sessions(offset=5), await sessions(limit=0)

    every, pages, tail, none = run(scenario())
    assert every == ["s1", "s2", "s4", "s5"]
    assert pages == [["s1", "s2"], ["s4", "s5"], [], []]
    assert tail == ["s5", "s6"] and none == []
    for wrong in ({"offset": -1}, {"limit": -2}, {"offset": "3"}, {"limit": True}):
        with pytest.raises(LedgerValueError, match="whole number of rows"):
            run(ledger.rows(**wrong))
