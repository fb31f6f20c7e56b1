"""What a session's two paths share: the lane (``session._run_lane``) and the general path
(``Engine.stream_batches`` and its attempts, ``core.py``).

``SessionRecord`` is what a session's ledger row needs beyond its events; ``AttemptOutcome``, how one
attempt at one deployment ended; ``Lane`` and ``LaneHandover``, a session the lane runs and the state
the general path takes it over with. ``REQUEST_CONTEXT`` holds the running session's context for the
attempts deep below; the event-type sets are what the per-event loops test ``type(event)`` against.
``refused_by_dialect``, ``close_attempt`` and ``ended_unfinished`` end an attempt the same way on
either path.
"""

from __future__ import annotations

import contextvars
import operator
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from gtl_nb.engine.caller_errors import scrubbed, with_provider
from gtl_nb.engine.coalesce import Flight
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.routing import Target
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError
from gtl_nb.protocol.messages import Done, Error, Reasoning, StreamEvent, Token, ToolCallEvent, Usage
from gtl_nb.protocol.session import SessionStateMachine
from gtl_nb.providers.base import Deployment, NotServedHere

__all__ = [
    "ANSWER",
    "CONTENT",
    "REQUEST_CONTEXT",
    "TEXT",
    "TOKENS",
    "AttemptOutcome",
    "Lane",
    "LaneHandover",
    "SessionRecord",
    "close_attempt",
    "ended_unfinished",
    "refused_by_dialect",
]

log = get_logger("engine")

# event types, tested as ``type(event) in …`` on the per-event paths (see ``TERMINAL_EVENTS``)
CONTENT = frozenset((Token, Reasoning, ToolCallEvent))
ANSWER = CONTENT | {Usage}  # what a retry would send the caller a second time
TOKENS = frozenset((Token,))
TEXT = operator.attrgetter("text")
REQUEST_CONTEXT: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("gtl_request_context")
"""The context of the session being streamed, for the attempts deep below (the stored key a token chose)."""


@dataclass
class SessionRecord:
    """What a session's ledger row needs beyond its events: where it went and how it was served."""

    path: list[str] = field(default_factory=list)
    model: str | None = None  # the model asked of the last deployment tried, as that provider names it
    cache_hit: bool = False
    coalesced: bool = False
    answer: list[str] | None = None  # the answer's text pieces, kept only when a hook subscriber wants it
    finish_reason: str | None = None
    refused: bool = False  # refused before it ran (a scope, a session cap): its hook events say so
    # characters of content (text, reasoning, tool calls) handed to the caller, every attempt's; ``None``
    # until content began. A session that ends before its provider reported usage is counted from it
    # (``Engine._finish``): the provider bills what it generated, cancelled or not
    produced: int | None = None
    flight: Flight | None = None  # the shared call it read (``_source``), led or followed
    # the request's identity in its hook events: subscribers key per-request state by it, never by the
    # session id (the client's: two running requests may share one)
    handle: object = field(default_factory=object)


@dataclass
class AttemptOutcome:
    """How one attempt at one target ended, for the attempt loop."""

    events: list[StreamEvent] | None = None  # kept only when the answer goes to the cache
    done: Done | None = None
    error: Error | None = None
    content: bool = False  # content or usage reached the caller: a retry would duplicate it
    ttft: float | None = None  # this attempt's own time to first content, for lowest_latency
    first: float | None = None  # when the first content came (the clock's), for ``done``'s ttft_ms
    # this process could not call the target at all (``Engine._uncallable``), or the target's API cannot
    # carry the request (``NotServedHere``): fail over at once
    uncallable: bool = False


@dataclass
class Lane:
    """A session ``run_session`` runs in its own coroutine (``Engine.lane_targets``)."""

    context: RequestContext
    target: Target


@dataclass
class LaneHandover:
    """A lane's session as the general path takes it over (``stream_batches(resume=...)``)."""

    targets: list[Target]
    record: SessionRecord
    row: int | None
    machine: SessionStateMachine
    started: float
    usage: Usage | None
    first: tuple[str | None, AttemptOutcome | None]  # the breaker's grant, and the attempt made with it


def refused_by_dialect(
    exc: GTLError, target: Target, deployment: Deployment, sid: str, outcome: AttemptOutcome
) -> None:
    """A dialect refused to carry the request (an unsupported image URL, say): what this deployment cannot
    carry another may — ``NotServedHere`` fails over at once, with no verdict and no retry."""
    if isinstance(exc, NotServedHere):
        outcome.uncallable = True
    outcome.error = with_provider(scrubbed(exc.to_event(sid), deployment), target)


async def close_attempt(attempt: AsyncGenerator[list[StreamEvent], None], target: Target, sid: str) -> None:
    try:
        await attempt.aclose()
    except Exception:  # closing the response failed after its events were read: the answer stands
        log.exception("%s: closing the response of %r failed", target.name, sid)


def ended_unfinished(target: Target, sid: str) -> Error:
    return Error(
        session_id=sid, code="INTERNAL", message=f"{target.name} ended without done or error", provider=target.name
    )
