"""Lifecycle hooks: the engine announces what happens to each request as typed events.

In-process subscribers (metrics, the audit log, tests) receive them synchronously on the engine's
loop; a subscriber that raises is logged and never disturbs the request.

**Which request.** Every event of one request carries the same ``handle``, an object made for that
request alone: a subscriber that keeps state per request keys it by ``handle``, never by
``session_id`` — ids are the clients', and two running requests (two connections, two tenants) may
share one, so state keyed by the id lets one request's end take or remove the other's. Widgets keep reading the
GTL events of their own stream (``status: failover``), which also reach a remote client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gtl_nb.engine.context import RequestContext
from gtl_nb.log import get_logger
from gtl_nb.protocol.messages import CompletionRequest

__all__ = [
    "AttemptStarted",
    "BreakerChanged",
    "CacheHit",
    "EngineEvent",
    "FailedOver",
    "Hooks",
    "ReloadRefused",
    "Reloaded",
    "RequestFinished",
    "RequestStarted",
    "RetryScheduled",
]

log = get_logger("engine.hooks")


@dataclass(frozen=True)
class RequestStarted:
    """A request entered the engine (its ledger row, if any, exists)."""

    session_id: str
    context: RequestContext
    model: str
    request: CompletionRequest | None = None
    """The request itself (its sampling parameters, its messages): for tracing and a full audit log."""
    refused: bool = False
    """Refused before it ran (a scope, a session cap): it is recorded, and never runs."""
    handle: object = field(default_factory=object, compare=False, repr=False)
    """This request's own identity in the process (the same object in each of its events; never sent)."""


@dataclass(frozen=True)
class AttemptStarted:
    """A call to one deployment begins (``attempt`` counts from 1 per deployment)."""

    session_id: str
    deployment: str
    model: str
    attempt: int
    handle: object = field(default_factory=object, compare=False, repr=False)
    """This request's own identity in the process (the same object in each of its events; never sent)."""


@dataclass(frozen=True)
class RetryScheduled:
    """The same deployment will be tried again after ``delay`` seconds."""

    session_id: str
    deployment: str
    attempt: int
    delay: float
    reason: str
    handle: object = field(default_factory=object, compare=False, repr=False)
    """This request's own identity in the process (the same object in each of its events; never sent)."""


@dataclass(frozen=True)
class FailedOver:
    """The request moves to another deployment; what was received so far is discarded."""

    session_id: str
    from_deployment: str
    to_deployment: str
    reason: str
    handle: object = field(default_factory=object, compare=False, repr=False)
    """This request's own identity in the process (the same object in each of its events; never sent)."""


@dataclass(frozen=True)
class BreakerChanged:
    """A deployment's circuit changed state (``closed``, ``open``, ``half_open``)."""

    deployment: str
    old: str
    new: str


@dataclass(frozen=True)
class CacheHit:
    """The answer was replayed from the response cache."""

    session_id: str
    deployment: str
    handle: object = field(default_factory=object, compare=False, repr=False)
    """This request's own identity in the process (the same object in each of its events; never sent)."""


@dataclass(frozen=True)
class RequestFinished:
    """The session ended (its ledger row is complete): status ``ok``, ``error`` or ``cancelled``."""

    session_id: str
    context: RequestContext
    status: str
    error_code: str | None
    deployment: str | None
    model: str | None
    tokens_in: int | None
    tokens_out: int | None
    cost: float | None
    latency_ms: float | None
    cache_hit: bool
    ttft_ms: float | None = None
    provider_type: str | None = None
    finish_reason: str | None = None
    answer: str | None = None
    """The answer's text, only while a subscriber asked for it (``Hooks.want_answers``)."""
    cached_tokens_in: int | None = None
    """The part of ``tokens_in`` read from the provider's prompt cache."""
    cache_write_tokens_in: int | None = None
    """The part of ``tokens_in`` written to the provider's prompt cache."""
    refused: bool = False
    """Refused before it ran (its ``RequestStarted`` said so)."""
    usage_estimated: bool = False
    """``tokens_in``, ``tokens_out`` and ``cost`` are gtl_nb's estimate, not the provider's report: the
    session ended (cancelled, or failed) after its provider was called and before it reported usage."""
    handle: object = field(default_factory=object, compare=False, repr=False)
    """This request's own identity in the process (the same object in each of its events; never sent)."""


@dataclass(frozen=True)
class Reloaded:
    """The engine took a new configuration (``Engine.reload``): a subscriber that labels or names
    things by deployment reads ``engine.deployments`` again."""

    engine: Any


@dataclass(frozen=True)
class ReloadRefused:
    """A new configuration was refused (by the gateway's reloader: a mistake in the file, or a part
    that could not be built); the engine runs on what it had. ``reason`` says why, in one line."""

    reason: str


EngineEvent = (
    RequestStarted
    | AttemptStarted
    | RetryScheduled
    | FailedOver
    | BreakerChanged
    | CacheHit
    | RequestFinished
    | Reloaded
    | ReloadRefused
)
Subscriber = Callable[[EngineEvent], None]


class Hooks:
    """The engine's subscribers (``engine.hooks.subscribe(callback)`` returns the unsubscribe call)."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.want_answers = False  # a subscriber that records answers (traces with content) sets it

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every engine event from now on."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: EngineEvent) -> None:
        """Hand ``event`` to every subscriber; a failing subscriber is logged and skipped."""
        for callback in tuple(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("engine hook %r failed on %s", callback, type(event).__name__)

    def __bool__(self) -> bool:
        return bool(self._subscribers)
