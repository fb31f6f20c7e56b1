"""The ``usage`` query's params: what the caller got wrong is ``INVALID_REQUEST``, never a store away."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

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
