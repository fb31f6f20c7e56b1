"""The gateway's answers to ``query`` messages: what a remote client asks that is not a completion.

``answer_query(engine, context, query, max_bytes=...)`` returns the one ``Answer`` (never raises):

* ``usage`` — the caller's own ledger rows (``context.principal``; scope ``usage:read``), oldest
  first. ``params``: ``filters`` (the ledger's filters: ``since``, ``until``, ``status``, ``model``,
  ``user`` …), ``all_users: true`` for everyone's, and ``offset``; another ``user`` or everyone's
  needs ``usage:admin``. Rows are paged to fit
  the connection's frame limit: the result is ``{"rows": [...], "next": offset_or_null}``. The
  writer's ``hostname``, ``pid`` and ``proc_start`` are left out unless the caller holds ``metrics:read``.
* ``sessions`` — ``{"sessions": [...]}``, the caller's sessions running on this gateway, over any
  connection (``session:read``); ``params`` ``all_users: true`` for everyone's (``session:admin``).
* ``cancel`` — cancel a running session by ``params`` ``session_id``, from any connection: those the
  caller's token started (no scope needed: it could end them anyway), one's own (``session:write``),
  anyone's (``session:admin``); ``{"cancelled": N}``. A session of another user is not there without
  ``session:admin`` (the answer for an id nothing runs under) — whether it exists is not told.
* ``breakers`` — ``{"breakers": {deployment: state}}``, the engine's circuit breakers (``models:read``).
* ``models`` — ``{"models": [...]}``, a deployment's live model list (``params``: ``deployment``;
  ``models:read``), narrowed to what the token's allow-lists let it use. One call to the provider
  serves every caller for a minute (``gateway.model_lists``): no budget counts these calls.

A refused or failed query answers with an ``error`` (its ``session_id`` is the ``query_id``): the
same ``GTLError`` the embedded client would raise, or ``INTERNAL`` for a bug (logged here).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.ledger import LedgerError, LedgerValueError, row_filter
from gtl_nb.engine.stores.base import UsageLedger
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.gateway.live import live_sessions
from gtl_nb.gateway.model_lists import model_lists
from gtl_nb.gateway.permissions import usage_scope
from gtl_nb.gateway.scopes import SCOPES, has_scope, require_scope
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError, InternalError, InvalidRequestError, ProviderUnavailableError
from gtl_nb.protocol.messages import Answer, Error, Query

__all__ = ["MAX_QUERIES", "QUERY_NAMES", "QueryDesk", "answer_query"]

log = get_logger("gateway.queries")
QUERY_NAMES = ("usage", "sessions", "cancel", "breakers", "models")
_ANSWER_OVERHEAD = 4096
"""Bytes kept free in a page of rows for the answer's own fields."""


async def answer_query(engine: Engine, context: RequestContext, query: Query, *, max_bytes: int) -> Answer:
    """The answer to ``query`` from a client whose sessions run under ``context`` (see the module docstring)."""
    try:
        if query.name == "usage":
            result = await _usage(engine, context, query.params, max_bytes=max_bytes)
        elif query.name == "sessions":
            result = _sessions(engine, context, query.params)
        elif query.name == "cancel":
            result = _cancel(engine, context, query.params)
        elif query.name == "breakers":
            require_scope(context, "breakers.read")
            states = await engine.breaker_states()
            allowed = context.allowed_deployments  # only the deployments this token may use
            result = {"breakers": {name: state for name, state in states.items() if allowed is None or name in allowed}}
        elif query.name == "models":
            require_scope(context, "models.list")
            asked = query.params.get("deployment")
            if not isinstance(asked, str) or not asked:
                raise InvalidRequestError('the models query needs params {"deployment": NAME}')
            deployment = engine.permitted_deployment(asked, context)  # before any call upstream
            # one provider call serves every caller on the same key for a while; a token's own stored key
            # (provider_keys) is asked with that key: one team's fine-tunes are not listed to another
            key_name = context.provider_keys.get(deployment.name)
            names = await model_lists(engine).names(deployment, key_name)
            result = {"models": [name for name in names if context.allows(deployment.name, name)]}
        else:
            raise InvalidRequestError(f"unknown query {query.name!r}; the gateway answers: {', '.join(QUERY_NAMES)}")
    except LedgerValueError as exc:  # a filter the ledger does not know: the caller's mistake
        return Answer(query_id=query.query_id, error=InvalidRequestError(exc.message).to_event(query.query_id))
    except (StoreError, LedgerError) as exc:  # a store away (PostgreSQL, a locked file): its address is the operator's
        log.warning("query %s (%s) could not be answered: %s", query.query_id, query.name, exc.message)
        away = ProviderUnavailableError(
            f"the gateway cannot answer the {query.name} query now: a store it reads is unavailable; try again shortly"
        )
        return Answer(query_id=query.query_id, error=away.to_event(query.query_id))
    except GTLError as exc:
        return Answer(query_id=query.query_id, error=exc.to_event(query.query_id))
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # an unknown filter, a value of the wrong kind
        message = f"the {query.name} query's params are not usable: {type(exc).__name__}: {exc}"[:500]
        return Answer(query_id=query.query_id, error=InvalidRequestError(message).to_event(query.query_id))
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
    everyone = params.get("all_users") is True
    asked = None if everyone else filters.get("user", context.principal)
    usage_scope(context, asked)  # one's own rows: usage:read; anyone else's or everyone's: usage:admin
    if asked == context.principal and not has_scope(context, SCOPES["usage.admin"]):
        # one's own rows are one's sub's within one's tenant: another tenant's token with the same sub
        # is another principal (an administrator reads any rows anyway)
        if filters.get("tenant", context.tenant) != context.tenant:
            require_scope(context, "usage.admin")
        filters = {**filters, "tenant": context.tenant}
    row_filter(filters)  # the ledger's own check of the filters (names and values), with or without a ledger
    ledger = engine.ledger
    if ledger is None:
        return {"rows": [], "next": None}
    selected = filters if asked is None or "user" in filters else {**filters, "user": asked}
    # the writer's host and process are the operator's, as /readyz's reasons are (docs/security.md):
    # neither shown nor filtered on (a filter would confirm a guess of them)
    hidden = frozenset() if has_scope(context, SCOPES["metrics.read"]) else _WRITER_COLUMNS
    if hidden & set(filters):
        require_scope(context, "metrics.read")
    page, more = await _page(ledger, selected, offset, room=max(max_bytes - _ANSWER_OVERHEAD, 1024), hidden=hidden)
    following = offset + len(page)
    return {"rows": page, "next": following if more else None}


_WRITER_COLUMNS = frozenset({"hostname", "pid", "proc_start"})
"""Columns that name the gateway's host, process and boot: left out of the rows of a caller without
``metrics:read``, the scope that reads the gateway's operations data."""

_CHUNK_ROWS = 500
"""Rows read from the ledger at a time while filling a page: a page holds at most that many rows
beyond its own in memory, whatever its ``offset`` or the ledger's size."""


async def _page(
    ledger: UsageLedger, filters: dict[str, Any], offset: int, *, room: int, hidden: frozenset[str] = frozenset()
) -> tuple[list[dict[str, Any]], bool]:
    """The rows from ``offset`` on, less their ``hidden`` columns, that fit in ``room`` bytes of JSON,
    and whether any row follows them.

    The ledger is read a chunk at a time (its own LIMIT/OFFSET): a page never loads every matching row."""
    page: list[dict[str, Any]] = []
    position = offset
    while True:
        chunk = await ledger.rows(offset=position, limit=_CHUNK_ROWS, **filters)
        for found in chunk:
            row = {key: value for key, value in found.items() if key not in hidden} if hidden else found
            size = len(msgspec.json.encode(row)) + 1
            if size > room:
                if page:
                    return page, True  # this row did not fit: it starts the next page
                row, size = _shortened(row), room  # a row too large for a page alone: shortened, so paging moves on
            page.append(row)
            room -= size
        if len(chunk) < _CHUNK_ROWS:
            return page, False
        position += len(chunk)


MAX_QUERIES = 8
"""Queries one connection may have answered at once."""


class QueryDesk:
    """One connection's queries: each answered by its own task, at most ``MAX_QUERIES`` at once (one more
    is answered ``OVERLOADED``), every answer handed to ``send`` — which may raise ``GTLError`` (too large
    after all, the connection closed), in which case an ``INTERNAL`` answer is tried instead."""

    def __init__(
        self,
        engine: Engine,
        send: Callable[[Answer], None],
        *,
        max_bytes: int,
        on_idle: Callable[[], object] | None = None,
        recheck: Callable[[RequestContext], RequestContext] | None = None,
    ) -> None:
        self.engine = engine
        self.max_bytes = max_bytes
        self._send = send
        self._on_idle = on_idle  # told when the last query being answered has ended
        # the connection's authenticator's ``recheck``: a token revoked or expired since the connection
        # opened must not keep reading everyone's usage or cancelling anyone's session on it
        self._recheck = recheck
        self._tasks: set[asyncio.Task[None]] = set()
        live_sessions(engine)  # from the first connection on, every session is known to the sessions query

    def ask(self, query: Query, context: RequestContext) -> None:
        """Start answering ``query`` for a client whose sessions run under ``context`` — or refuse it
        (``AUTH_FAILED``) when the token behind ``context`` has expired or been revoked since."""
        if self._recheck is not None:
            try:
                context = self._recheck(context)  # (narrowed, when a reload took deployments away)
            except GTLError as exc:
                self._reply(Answer(query_id=query.query_id, error=exc.to_event(query.query_id)))
                return
        if len(self._tasks) >= MAX_QUERIES:
            error = Error(
                session_id=query.query_id, code="OVERLOADED", message="too many queries at once", retryable=True
            )
            self._reply(Answer(query_id=query.query_id, error=error))
            return
        task = asyncio.get_running_loop().create_task(self._answer(query, context), name=f"gtl-query-{query.query_id}")
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    @property
    def busy(self) -> bool:
        """Whether a query is being answered."""
        return bool(self._tasks)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks and self._on_idle is not None:
            self._on_idle()

    async def _answer(self, query: Query, context: RequestContext) -> None:
        self._reply(await answer_query(self.engine, context, query, max_bytes=self.max_bytes))

    def _reply(self, answer: Answer) -> None:
        try:
            self._send(answer)
        except GTLError as exc:
            error = Error(session_id=answer.query_id, code="INTERNAL", message=f"the answer could not be sent: {exc}")
            with contextlib.suppress(GTLError):  # the connection is gone: nobody is left to tell
                self._send(Answer(query_id=answer.query_id, error=error))

    async def aclose(self) -> None:
        """Cancel the queries still being answered and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cancel_all(self) -> None:
        """Cancel the queries still being answered (without waiting)."""
        for task in list(self._tasks):
            task.cancel()


def _shortened(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its long text fields cut (marked ``"truncated": true``)."""
    cut = {key: value[:256] if isinstance(value, str) else value for key, value in row.items()}
    return {**cut, "truncated": True}


def _sessions(engine: Engine, context: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    everyone = params.get("all_users") is True
    require_scope(context, "session.admin" if everyone else "session.read")
    return {"sessions": [entry.describe() for entry in live_sessions(engine).visible_to(context, everyone=everyone)]}


def _cancel(engine: Engine, context: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    session_id = params.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise InvalidRequestError('the cancel query needs params {"session_id": ID}')
    entries = live_sessions(engine).find(session_id)
    # only an administrator reaches another user's sessions; to anyone else they are not there — the
    # answer is the same whether or not one runs under that id (a FORBIDDEN told a guesser it did). A
    # user's own sessions are never held hostage by another's that took the same id (a client may choose its ids)
    admin = has_scope(context, SCOPES["session.admin"])
    if admin:
        reached, yours = entries, ""
    elif has_scope(context, SCOPES["session.cancel"]):
        reached, yours = [entry for entry in entries if entry.owned_by(context)], " of yours"
    else:
        # without session:write, the sessions this very token started: it could end them anyway (an HTTP
        # client closes its response), and hearing how one ended — a refusal that crossed the cancel — needs
        # this answer (transports.http). Nothing of another token, this principal's or another's, is reached
        reached, yours = [entry for entry in entries if entry.started_with(context)], " of this token"
        if not reached and any(entry.owned_by(context) for entry in entries):
            require_scope(context, "session.cancel")  # another token of this principal's started it
    if not reached:  # (the end of one that just ended is on its way to its client, which reads on)
        raise InvalidRequestError(f"no session {session_id!r}{yours} is running on this gateway")
    cancelled = 0
    for entry in reached:
        if entry.task is not None and not entry.task.done():
            entry.task.get_loop().call_soon(entry.task.cancel)  # after its first step: see sessions.cancel_started
            cancelled += 1
    return {"cancelled": cancelled}
