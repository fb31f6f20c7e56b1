"""The gateway's answers to ``query`` messages: what a remote client asks that is not a completion.

``answer_query(engine, context, query, max_bytes=...)`` returns the one ``Answer`` (never raises):

* ``usage`` — the caller's own ledger rows (``context.principal``), oldest first. ``params``:
  ``filters`` (the ledger's filters: ``since``, ``until``, ``status``, ``model``, … — a ``user`` other
  than the caller's is refused until GhostToken scopes exist) and ``offset``. Rows are paged to fit
  the connection's frame limit: the result is ``{"rows": [...], "next": offset_or_null}``.
* ``breakers`` — ``{"breakers": {deployment: state}}``, the engine's circuit breakers.
* ``models`` — ``{"models": [...]}``, a deployment's live model list (``params``: ``deployment``).

A refused or failed query answers with an ``error`` (its ``session_id`` is the ``query_id``): the
same ``GTLError`` the embedded client would raise, or ``INTERNAL`` for a bug (logged here).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError, InternalError, InvalidRequestError, PermissionDeniedError
from gtl_nb.protocol.messages import Answer, Query

__all__ = ["QUERY_NAMES", "answer_query"]

log = get_logger("gateway.queries")
QUERY_NAMES = ("usage", "breakers", "models")
_ANSWER_OVERHEAD = 4096
"""Bytes kept free in a page of rows for the answer's own fields."""


async def answer_query(engine: Engine, context: RequestContext, query: Query, *, max_bytes: int) -> Answer:
    """The answer to ``query`` from a client whose sessions run under ``context`` (see the module docstring)."""
    try:
        if query.name == "usage":
            result = await _usage(engine, context, query.params, max_bytes=max_bytes)
        elif query.name == "breakers":
            result = {"breakers": await engine.breaker_states()}
        elif query.name == "models":
            deployment = query.params.get("deployment")
            if not isinstance(deployment, str) or not deployment:
                raise InvalidRequestError('the models query needs params {"deployment": NAME}')
            result = {"models": await engine.list_models(deployment)}
        else:
            raise InvalidRequestError(f"unknown query {query.name!r}; the gateway answers: {', '.join(QUERY_NAMES)}")
    except GTLError as exc:
        return Answer(query_id=query.query_id, error=exc.to_event(query.query_id))
    except ValueError as exc:  # a ledger filter it does not know, a value of the wrong kind
        return Answer(query_id=query.query_id, error=InvalidRequestError(str(exc)).to_event(query.query_id))
    except Exception as exc:
        log.exception("query %s (%s) failed in the gateway", query.query_id, query.name)
        error = InternalError(f"the {query.name} query failed: {type(exc).__name__}")
        return Answer(query_id=query.query_id, error=error.to_event(query.query_id))
    return Answer(query_id=query.query_id, result=result)


async def _usage(engine: Engine, context: RequestContext, params: dict[str, Any], *, max_bytes: int) -> dict[str, Any]:
    filters = params.get("filters") or {}
    offset = params.get("offset", 0)
    if not isinstance(filters, dict) or not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidRequestError('the usage query takes params {"filters": {...}, "offset": N}')
    asked = filters.get("user", context.principal)
    if asked != context.principal:
        raise PermissionDeniedError("a client may read its own usage rows only")
    ledger = engine.ledger
    if ledger is None:
        return {"rows": [], "next": None}
    rows = await ledger.rows(**{**filters, "user": context.principal})
    page: list[dict[str, Any]] = []
    room = max(max_bytes - _ANSWER_OVERHEAD, 1024)
    for row in rows[offset:]:
        size = len(msgspec.json.encode(row)) + 1
        if page and size > room:
            break
        page.append(row)
        room -= size
    following = offset + len(page)
    return {"rows": page, "next": following if following < len(rows) else None}
