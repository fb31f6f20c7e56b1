"""Running one HTTP request's session while watching its client — shared by the GTL endpoints
(``gateway.http``) and the compatible ones (``gateway.compat``).

* ``collect_session`` runs a session to its end for a one-shot answer; a client that disconnects first
  cancels it (``"the client"``), and so does a shutdown that cancels the waiting task. A session the
  runner refuses before it starts (``gateway.refusals.REFUSED_BEFORE_START``: a cap, the stop) has its
  ledger row written before the error is raised.
* ``stream_session`` runs a response writer (``pump``) beside the session; whichever side ends first,
  the other is stopped, and the session's ledger row is complete before the response task returns.
* ``EventOutbox`` carries the events from the session to the writer in batches: what one upstream
  chunk decodes into goes out in one write, and a slow client holds the engine back once
  ``high_water`` events wait unwritten.

Both work on the listener's session runner (``SessionRunner``, ``gateway.http._Sessions``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from gtl_nb.engine.context import RequestContext
from gtl_nb.gateway.refusals import REFUSED_BEFORE_START
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError
from gtl_nb.protocol.messages import CompletionRequest, Error, StreamEvent

__all__ = ["EventOutbox", "Running", "SessionRunner", "collect_session", "disconnected", "stream_session"]

log = get_logger("gateway.http")


class Running(Protocol):
    """One running session of the listener's runner."""

    task: asyncio.Task[None] | None

    def cancel(self, reason: str) -> None: ...

    async def wait(self) -> None: ...


class SessionRunner(Protocol):
    """The listener's session runner (``gateway.http._Sessions``): ``start`` runs one session as a task."""

    def start(
        self,
        request: CompletionRequest,
        context: RequestContext,
        send: Callable[[StreamEvent], None],
        drain: Callable[[], Awaitable[Any] | None] | None = None,
    ) -> Running: ...

    async def refused(self, request: CompletionRequest, context: RequestContext, error: GTLError) -> Error:
        """Record a request ``start`` refused (``REFUSED_BEFORE_START``: a cap, the stop): its ledger row and
        audit record (``gateway.refusals``); returns its error event."""
        ...


class EventOutbox:
    """A session's events on their way to the response writer, taken in batches.

    The session calls ``put`` for each event and awaits what ``drain`` returns, nothing unless
    ``high_water`` events wait unwritten — then a slow client holds the engine back. The writer's
    ``take`` returns everything waiting: handing events over one at a time cost a task switch per token,
    and a write per token.
    """

    __slots__ = ("_events", "_high_water", "_paused", "_room", "_taker")

    def __init__(self, high_water: int = 64) -> None:
        self._events: list[StreamEvent] = []
        self._high_water = high_water
        self._taker: asyncio.Future[None] | None = None  # the writer's wait for an event, while it waits
        # a plain flag in front of the event, so the check after every event calls nothing
        self._paused = False
        self._room = asyncio.Event()
        self._room.set()

    def put(self, event: StreamEvent) -> None:
        """Queue one event for the writer (never waits: ``drain`` is the session's pause)."""
        events = self._events
        events.append(event)
        taker = self._taker
        if taker is not None:
            self._taker = None
            if not taker.done():  # (a writer cancelled while it waited)
                taker.set_result(None)
        if len(events) >= self._high_water and not self._paused:
            self._paused = True
            self._room.clear()

    def drain(self) -> Awaitable[Any] | None:
        """What to await until fewer than ``high_water`` events wait; ``None`` when fewer do now (the
        session runner then awaits nothing: this is asked after every event)."""
        return self._room.wait() if self._paused else None

    async def take(self) -> list[StreamEvent]:
        """Every event waiting, oldest first; waits for at least one."""
        while not self._events:
            self._taker = asyncio.get_running_loop().create_future()
            await self._taker
        batch = self._events
        self._events = []
        if self._paused:
            self._paused = False
            self._room.set()
        return batch


async def disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    """Return when the client disconnects (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def collect_session(
    sessions: SessionRunner,
    request: CompletionRequest,
    context: RequestContext,
    deliver: Callable[[StreamEvent], None],
    receive: Callable[[], Awaitable[Any]],
) -> None:
    """Run one session to its end, handing each event to ``deliver`` (see the module docstring).
    ``REFUSED_BEFORE_START`` when the runner refused it (a cap, the stop) — its ledger row written already."""
    try:
        running = sessions.start(request, context, deliver)
    except REFUSED_BEFORE_START as exc:
        await sessions.refused(request, context, exc)
        raise
    watching = asyncio.ensure_future(disconnected(receive))

    def client_left(watcher: asyncio.Task[None]) -> None:
        watcher.exception()  # (retrieved: a receive that failed says the client is gone too)
        running.cancel("the client")  # (after the session ended: nothing to cancel)

    watching.add_done_callback(client_left)
    try:
        # waited on, never cancelled with this task: a shutdown cancels the session below, with its reason
        await asyncio.wait((running.task,))  # type: ignore[arg-type]
    finally:
        watching.remove_done_callback(client_left)
        watching.cancel()
        if running.task is not None and not running.task.done():
            running.cancel("the gateway shutting down")
            await running.wait()  # the ledger row is complete before the answer goes out


async def stream_session(
    pump: Coroutine[Any, Any, None], running: Running, receive: Callable[[], Awaitable[Any]]
) -> None:
    """Write the response with ``pump`` while the client stays (see the module docstring)."""
    pumping = asyncio.ensure_future(pump)
    watching = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait((pumping, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if watching.done():
            watching.exception()  # (retrieved: a receive that failed says the client is gone too)
        if not pumping.done():  # the client left (or the server is going down without grace)
            running.cancel("the client" if watching.done() else "the gateway shutting down")
        elif not pumping.cancelled() and pumping.exception() is not None:  # the writing failed: stop the session,
            running.cancel("the gateway")  # which would otherwise wait for ever on an outbox nobody drains
        watching.cancel()  # nothing to wait for: it only reads the disconnect
        await running.wait()  # the ledger row is complete before the response task ends
        if not pumping.done():
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)
    if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
        log.info("client went away mid-stream: %s", pumping.exception())
