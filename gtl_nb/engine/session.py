"""The session runner of every front end: ``run_session`` runs one session of an engine, handing each
event to its reader, exactly one terminal event whatever happens.

The common session — one target, nothing to count, cache or share — runs in ``run_session``'s own
coroutine (``_run_lane``): the steps of ``Engine.stream_batches``, ``_attempts`` and ``_one_attempt``
without the generators between them, handed to the general path (``Engine.stream_batches(resume=)``)
the moment it needs more (a retry, failover, a breaker's probe). ``SessionEnd`` is how the session
ended, as its reader must be told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.estimates import content_characters
from gtl_nb.engine.hooks import AttemptStarted, RequestStarted
from gtl_nb.engine.session_parts import (
    CONTENT,
    REQUEST_CONTEXT,
    TEXT,
    TOKENS,
    AttemptOutcome,
    Lane,
    LaneHandover,
    SessionRecord,
    close_attempt,
    ended_unfinished,
    refused_by_dialect,
)
from gtl_nb.protocol.errors import GTLError
from gtl_nb.protocol.messages import TERMINAL_EVENTS, CompletionRequest, Done, Error, Status, StreamEvent, Token, Usage
from gtl_nb.protocol.session import SessionState, SessionStateMachine

if TYPE_CHECKING:
    from gtl_nb.engine.core import Engine

__all__ = ["SessionEnd", "reader_failure", "run_session"]


class SessionEnd:
    """How a session ended, as ``run_session`` must tell its reader: ``event``, the terminal event the
    engine decided (put there as its row is completed: see ``stream``); ``failure``, the error the
    session ends with when it did not end by itself — the ``INTERNAL`` error a reader that failed is
    told (``reader_failure``), or the error its front end ended it with (``end_with``) — its row
    completed with it, so the reader and the ledger tell one end."""

    __slots__ = ("event", "failure")

    def __init__(self) -> None:
        self.event: Done | Error | None = None
        self.failure: Error | None = None

    def end_with(self, error: Error) -> None:
        """The session is ended from outside with ``error`` (a gateway connection that told its client
        ``INVALID_REQUEST`` for a bad frame): the cancel that follows completes its row with ``error``
        rather than ``cancelled``. Nothing changes once the engine has decided its end."""
        if self.event is None and self.failure is None:
            self.failure = error


async def run_session(
    engine: Engine,
    request: CompletionRequest,
    context: RequestContext,
    send: Callable[[StreamEvent], None],
    *,
    drain: Callable[[], Awaitable[None] | None] | None = None,
    finish: Callable[[StreamEvent], None] | None = None,
    cancelled_by: str | Callable[[], str] = "the caller",
    refused: GTLError | None = None,
    ending: SessionEnd | None = None,
) -> None:
    """Run one session of ``engine``, handing each event to ``send`` — the one session runner of every
    front end (the embedded backend, the gateway's connections).

    ``drain``, when given, is called after each batch of events (what one read of the upstream
    decoded) and what it returns awaited, so a slow reader holds the engine back rather than letting
    events pile up; it returns ``None`` when there is room (then nothing is awaited: no coroutine is
    made per batch). Exactly one terminal event goes out
    whatever happens, through ``finish`` (default ``send``) when the stream did not deliver it: a
    cancel sends ``CANCELLED`` — or the end the engine had already recorded in the ledger, so the
    reader and the ledger agree — and a bug sends ``INTERNAL`` and is re-raised. ``cancelled_by`` names
    who cancelled in that error (a callable is asked when the cancel happens: a gateway knows then
    whether the client or a shutdown did).
    ``refused`` goes to ``Engine.stream``: the session is that error (a gateway's permission check).
    ``ending``, when given, is where the end is recorded: a front end that cancels the session with an
    error of its own puts it there first (``SessionEnd.end_with``), and the row ends with that error.
    """
    end = finish or send
    recorded = ending if ending is not None else SessionEnd()
    ended = False
    try:
        lane = None if refused is not None else engine.lane_targets(request, context)
        if lane is None:
            batches = engine.stream_batches(request, context=context, ending=recorded, refused=refused)
        else:  # the common session, in this coroutine (``_run_lane``); the general path only if it needs it
            handover = await _run_lane(engine, request, lane, send, drain, recorded)
            if handover is None:  # ended there: its end sent, its row completed
                ended = True
                if drain is not None and (waiting := drain()) is not None:  # (after the end, as below)
                    await waiting
                return
            batches = handover
        try:  # (``aclosing`` without its two coroutines a session)
            async for batch in batches:
                try:
                    for event in batch:
                        send(event)
                    ended = type(batch[-1]) in TERMINAL_EVENTS
                    if drain is not None:
                        waiting = drain()
                        if waiting is not None:
                            await waiting
                except Exception as exc:  # the reader failed: the row ends as the reader is told (below)
                    if recorded.event is None:  # (failing on the end itself, its row is complete already)
                        recorded.failure = reader_failure(request.session_id, exc)
                    raise
        finally:
            await batches.aclose()
    except asyncio.CancelledError:
        if not ended:
            who = cancelled_by() if callable(cancelled_by) else cancelled_by
            cancelled = Error(session_id=request.session_id, code="CANCELLED", message=f"cancelled by {who}")
            end(recorded.event or recorded.failure or cancelled)
        raise
    except Exception as exc:
        if not ended:  # the failed reader's end its row was completed with; else a bug's, or the end's own failure
            # (a reader that could not take the terminal event is told INTERNAL: the row, complete
            # already, says how the engine ended — the one case where the two differ)
            end(recorded.failure or reader_failure(request.session_id, exc))
        raise


def reader_failure(session_id: str, exc: Exception) -> Error:
    """The ``INTERNAL`` error that ends a session whose reader raised (``send`` or ``drain``: an event
    the connection cannot carry), or that ``run_session`` itself broke."""
    return Error(session_id=session_id, code="INTERNAL", message=f"gtl_nb internal error: {type(exc).__name__}: {exc}")


async def _run_lane(
    engine: Engine,
    request: CompletionRequest,
    lane: Lane,
    send: Callable[[StreamEvent], None],
    drain: Callable[[], Awaitable[None] | None] | None,
    recorded: SessionEnd,
) -> AsyncGenerator[list[StreamEvent], None] | None:
    """The common session — one target, nothing to count, cache or share — in one coroutine:
    what ``stream_batches``, ``_attempts`` and ``_one_attempt`` do for it, each read's events checked
    and then handed to ``send`` here rather than climbing three generators. ``None`` once the session
    has ended here (its terminal event sent, its row completed; ``run_session`` drains after it); else
    the general path's batches, taking the session over where the lane stopped — the breaker gave no
    plain pass, or the first attempt did not answer (an error, a cut, a refusal): retries, failover
    and their bookkeeping are theirs alone.

    Everything ends as down the general path: a cancel completes the row ``cancelled``; a bug below
    (the runner, a decoder) ends the session and its row ``INTERNAL``, that error sent like any event;
    ``send`` or ``drain`` raising is the reader's failure, left to ``run_session``: the row completed
    with the ``INTERNAL`` error the reader is told (``recorded.failure``). ``recorded`` gets the
    terminal event before the row is completed with it.
    """
    sid = request.session_id
    context, target = lane.context, lane.target
    scope = REQUEST_CONTEXT.set(context)  # the attempt reads it: which stored key a token chose
    record = SessionRecord()
    usage: Usage | None = None
    end: Done | Error | None = None
    row: int | None = None
    reader_failed = False  # ``send`` or ``drain`` raised: not the engine's bug (``run_session`` says so)
    handed_over = False  # the general path completes the row and tells the hooks from there
    hooks = engine.hooks
    try:
        try:
            row = await engine._ledger_start(request, context, target.model)
        finally:  # (also when cancelled while the row starts: one start, then one end, as ``stream_batches``)
            if hooks:
                hooks.emit(RequestStarted(sid, context, request.model, request, False, record.handle))
        machine = SessionStateMachine(sid)
        started = engine.clock()
        queued = Status(session_id=sid, state="queued")
        machine.advance(queued)
        try:
            send(queued)
            if drain is not None and (waiting := drain()) is not None:
                await waiting
        except Exception:
            reader_failed = True
            raise
        grant = await engine._acquire(target.name)
        if grant != "pass":  # refused or a probe: the general path decides (and hands a probe back)
            handover = LaneHandover([target], record, row, machine, started, None, (grant, None))
            handed_over = True
            return engine.stream_batches(request, context=context, ending=recorded, resume=handover)
        record.path.append(target.name)
        record.model = target.model
        if hooks:
            hooks.emit(AttemptStarted(sid, target.name, target.model, 1, record.handle))
        outcome = AttemptOutcome()
        attempt_started = engine.clock()
        attempt, deployment = engine._call(request, target, outcome)
        flowing = False  # (as in ``_one_attempt``: once the answer flows, a token needs no check)
        try:
            async for batch in attempt:
                if flowing and TOKENS.issuperset(map(type, batch)):
                    checked = batch
                    record.produced = (record.produced or 0) + sum(map(len, map(TEXT, batch)))
                else:
                    checked = []
                    produced = 0  # (the content's characters, counted as the events are looked at)
                    for event in batch:
                        kind = type(event)
                        if flowing and kind is Token:
                            checked.append(event)
                            produced += len(event.text)  # type: ignore[union-attr]
                            continue
                        event = engine._checked(
                            event, kind, target, deployment, machine, started, attempt_started, outcome
                        )  # type: ignore[assignment]
                        if event is None or outcome.done is not None:
                            break  # (an error ends the attempt unseen; ``done`` goes out after the bookkeeping)
                        if kind is Usage:
                            usage = event  # type: ignore[assignment]
                        elif kind in CONTENT:
                            produced += content_characters(event)
                            record.produced = record.produced or 0  # content began, even of no characters
                        checked.append(event)
                        flowing = outcome.content and outcome.first is not None and machine.state is SessionState.OPEN
                    if produced:
                        record.produced = (record.produced or 0) + produced
                if checked:  # handed on as ``run_session`` hands on a batch of the general path
                    try:
                        for event in checked:
                            send(event)
                        if drain is not None and (waiting := drain()) is not None:
                            await waiting
                    except Exception:
                        reader_failed = True
                        raise
                if outcome.done is not None or outcome.error is not None:
                    break
        except GTLError as exc:  # a dialect refusing the request
            if deployment is None or reader_failed:
                raise
            refused_by_dialect(exc, target, deployment, sid, outcome)
        finally:
            await close_attempt(attempt, target, sid)
        done = outcome.done
        if done is None:  # the attempt failed: the general path's retries and failover go on from it
            if outcome.error is None:
                outcome.error = ended_unfinished(target, sid)
            handover = LaneHandover([target], record, row, machine, started, usage, (grant, outcome))
            handed_over = True
            return engine.stream_batches(request, context=context, ending=recorded, resume=handover)
        engine._breaker_changed(target.name, await engine.stores.breakers.record_success(target.name))
        await engine._remember_success(request, target, outcome, None)
        end = done
    except Exception as exc:  # a bug below: the session and its row end INTERNAL, as ``stream_batches`` ends them
        if reader_failed:  # the reader's failure: the row ends as ``run_session`` tells the reader (not sent here)
            recorded.failure = failure = reader_failure(sid, exc)
            await engine._finish(request, context, row, failure, usage, record, None)
            raise
        end = engine._internal_error(request, record, exc)
    finally:
        with contextlib.suppress(ValueError):  # closed from another context (a finalizer): nothing to undo
            REQUEST_CONTEXT.reset(scope)
        if end is None and not handed_over and not reader_failed:  # cancelled: the row ends ``cancelled``
            # (or with the error its front end ended it with: ``SessionEnd.end_with``); the hooks hear it
            await engine._finish(request, context, row, recorded.failure, usage, record, None)
    # the end: recorded, the row completed, then sent (a cancel meanwhile reports it, as it is recorded)
    if type(end) is Done:
        record.finish_reason = end.finish_reason
    recorded.event = end
    await engine._finish(request, context, row, end, usage, record, None)
    send(end)  # type: ignore[arg-type]
    return None
