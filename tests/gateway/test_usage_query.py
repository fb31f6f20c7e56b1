"""The ``usage`` query's params: what the caller got wrong is ``INVALID_REQUEST``, never a store away."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gtl_nb.engine.context import RequestContext
from gtl_nb.gateway import queries
from gtl_nb.protocol.messages import Query


def test_a_usage_filter_no_column_can_hold_is_the_callers_mistake():
    """A filter value of a query's JSON that is an object (``{"model": {"$ne": 1}}``) reached SQL, which
    cannot bind it: answered as a store away (``PROVIDER_UNAVAILABLE``), with a warning in the log.
    It is the caller's ``INVALID_REQUEST``, naming the filter."""
    engine = SimpleNamespace(ledger=None)
    context = RequestContext(principal="ann", scopes=frozenset({"usage:read"}))
    query = Query(query_id="q", name="usage", params={"filters": {"model": {"$ne": 1}}})
    answer = asyncio.run(queries.answer_query(engine, context, query, max_bytes=1 << 20))  # type: ignore[arg-type]
    assert answer.error is not None and answer.error.code == "INVALID_REQUEST"
    assert "the filter 'model' takes text or a number" in answer.error.message


def test_a_number_no_column_can_hold_or_a_bound_past_any_date_is_the_callers_mistake():
    """An integer beyond 64 bits as a filter, or a ``since`` of 10**400 seconds, raised ``OverflowError`` in
    SQLite's binding or the date: answered ``INTERNAL`` with a traceback. Both are ``INVALID_REQUEST``."""
    engine = SimpleNamespace(ledger=None)
    context = RequestContext(principal="ann", scopes=frozenset({"usage:read"}))
    for filters in ({"tokens_in": 10**30}, {"cost": float("nan")}, {"since": 10**400}):
        query = Query(query_id="q", name="usage", params={"filters": filters})
        answer = asyncio.run(queries.answer_query(engine, context, query, max_bytes=1 << 20))  # type: ignore[arg-type]
        assert answer.error is not None and answer.error.code == "INVALID_REQUEST", (filters, answer.error)


class CountingLedger:
    """A memory ledger that remembers the most rows one ``rows`` call handed over."""

    def __init__(self) -> None:
        from gtl_nb.engine.stores import MemoryUsageLedger

        self.inner = MemoryUsageLedger()
        self.most = 0

    async def rows(self, **arguments: Any) -> list[dict[str, Any]]:
        found = await self.inner.rows(**arguments)
        self.most = max(self.most, len(found))
        return found


def test_a_usage_page_far_in_reads_a_chunk_of_the_ledger_not_every_row():
    """The usage query read every matching row (``ledger.rows()``, no LIMIT) and sliced its page at
    ``offset`` afterwards: a page at offset 300000 held 300000 rows in the gateway's memory, and 16 at
    once took it to gigabytes. The ledger is read a chunk at a time, and the pages are what they were."""
    ledger = CountingLedger()
    context = RequestContext(principal="ann", tenant="t", scopes=frozenset({"usage:read"}))
    other = RequestContext(principal="bob", tenant="t")
    count = queries._CHUNK_ROWS * 2 + 37

    async def fill() -> None:
        for index in range(count):
            await ledger.inner.start(session_id=f"s{index}", context=other if index % 5 == 0 else context, model="m")

    def ask(offset: int, max_bytes: int) -> dict[str, Any]:
        query = Query(query_id="q", name="usage", params={"offset": offset})
        answer = asyncio.run(queries.answer_query(SimpleNamespace(ledger=ledger), context, query, max_bytes=max_bytes))  # type: ignore[arg-type]
        assert answer.error is None, answer.error
        return answer.result  # type: ignore[return-value]

    asyncio.run(fill())
    mine = [f"s{index}" for index in range(count) if index % 5]
    last = ask(len(mine) - 3, 1 << 20)
    assert [row["session_id"] for row in last["rows"]] == mine[-3:] and last["next"] is None
    assert ledger.most <= queries._CHUNK_ROWS
    whole = ask(0, 1 << 24)  # one page of every row, read over several chunks
    assert [row["session_id"] for row in whole["rows"]] == mine and whole["next"] is None
    paged, offset = [], 0
    while offset is not None:  # small pages: each ends where the next begins, the last says so
        page = ask(offset, 64 << 10)
        assert page["rows"]
        paged += [row["session_id"] for row in page["rows"]]
        offset = page["next"]
    assert paged == mine
    assert ledger.most <= queries._CHUNK_ROWS


def test_the_writers_host_and_process_are_shown_to_an_operator_only():
    """Every ``usage:read`` token got the gateway's ``hostname``, ``pid`` and ``proc_start`` (its boot id)
    in its rows: internals ``/readyz`` keeps from callers without ``metrics:read``. They are left out the
    same way; an operator's token (``metrics:read``) still reads them."""
    ledger = CountingLedger()
    reader = RequestContext(principal="ann", tenant="t", scopes=frozenset({"usage:read"}))
    operator = RequestContext(principal="ann", tenant="t", scopes=frozenset({"usage:read", "metrics:read"}))
    asyncio.run(ledger.inner.start(session_id="s", context=reader, model="m"))

    def row_for(context: RequestContext) -> dict[str, Any]:
        query = Query(query_id="q", name="usage")
        answer = asyncio.run(queries.answer_query(SimpleNamespace(ledger=ledger), context, query, max_bytes=1 << 20))  # type: ignore[arg-type]
        assert answer.error is None and answer.result is not None
        (row,) = answer.result["rows"]
        return row

    internals = {"hostname", "pid", "proc_start"}
    shown = row_for(reader)
    assert not internals & set(shown) and shown["session_id"] == "s" and shown["model"] == "m"
    full = row_for(operator)
    assert all(full[name] is not None for name in internals)
    assert set(full) - set(shown) == internals

    def filtered(context: RequestContext, filters: dict[str, Any]) -> Any:
        query = Query(query_id="q", name="usage", params={"filters": filters})
        return asyncio.run(queries.answer_query(SimpleNamespace(ledger=ledger), context, query, max_bytes=1 << 20))  # type: ignore[arg-type]

    # nor can such a token confirm a guess of them by filtering on them
    guessed = filtered(reader, {"hostname": full["hostname"]})
    assert guessed.error is not None and guessed.error.code == "FORBIDDEN" and "metrics:read" in guessed.error.message
    assert len(filtered(operator, {"hostname": full["hostname"]}).result["rows"]) == 1


def test_a_page_past_any_row_is_empty_however_far():
    """An offset past SQLite's largest integer was an ``INVALID_REQUEST`` naming an ``OverflowError``."""
    ledger = CountingLedger()
    reader = RequestContext(principal="ann", tenant="t", scopes=frozenset({"usage:read"}))
    query = Query(query_id="q", name="usage", params={"offset": 2**70})
    answer = asyncio.run(queries.answer_query(SimpleNamespace(ledger=ledger), reader, query, max_bytes=1 << 20))  # type: ignore[arg-type]
    assert answer.error is None and answer.result == {"rows": [], "next": None}
