"""The gateway core: one client connection's sessions, each a task over ``Engine.stream``.

``GatewayConnection(engine, framed, authenticate=...).run()`` serves one connection until it ends,
whatever the transport under ``framed``:

* **Hello.** After the exchange the client's token goes to ``authenticate``, which returns the
  ``RequestContext`` every session of the connection runs under (the transport's ``peer`` added) or
  raises ``AuthenticationError``, which ends the connection with ``AUTH_FAILED``. An accepted client
  then gets the provider list (``transports.conventions``) — unless it sent no hello (the spec's peer:
  ``HandshakeComplete.implicit``), which asked for nothing. Such a client refused is answered as it
  asked: each request it sent with its implied hello (the frames of that read) gets the refusal as its
  own ``error`` — for want of any token, saying where a token goes on its transport — and then the
  connection ends with the same connection-level error.
* **Sessions.** Each ``completion_request`` runs as its own task over ``engine.stream``; its events
  go back through the connection in order. The task awaits the channel's drain after every event, so
  a slow reader stops the engine from pulling more from the provider: per session, at most one event
  is held beyond the channel's buffer. At most ``max_sessions`` run at once per connection, and
  ``limits.max_sessions_per_principal`` per principal over every connection of the process
  (``gateway.principal_sessions``); a request beyond either ends at once with a retryable
  ``OVERLOADED`` error, counted against neither cap but still recorded — its ledger row and audit
  record are written first (``gateway.refusals``), by the connection's reader, which reads the next
  frame only then: a client flooding requests past a cap is paced by those writes.
* **Cancel.** A ``cancel`` cancels the session's task: the engine closes the upstream response and
  completes the ledger row as cancelled, and the client gets one ``CANCELLED`` error (or the
  ``done``/``error`` the engine had already recorded, so the client and the ledger agree).
* **Queries.** A ``query`` (usage rows, breakers, a live model list: ``gateway.queries``) is answered
  by its own task, at most ``MAX_QUERIES`` at once per connection (one more is answered ``OVERLOADED``).
* **Limits** (``gateway.listeners.Limits``). A client that has not completed hello within
  ``header_timeout`` seconds, or whose connection runs no session or query and sends nothing for
  ``idle_timeout`` seconds, is closed (a dropped idle connection is reopened by the client's next
  request).
* **Shutdown** (``gateway.listeners.Shutdown``). Once ``shutdown.stopping`` is set, a new
  ``completion_request`` is refused with a retryable ``PROVIDER_UNAVAILABLE`` ("shutting down"), its
  ledger row and audit record written first, as at a cap (``gateway.refusals``); running sessions may
  finish for ``shutdown.grace`` seconds, after which they are cancelled (``CANCELLED``, "cancelled by
  the gateway shutting down"); the connection closes as soon as it runs no session and records no
  refusal (whose error goes out first), so ``run`` returns.
* **The client's half-close** (``client_done_sending``: gRPC's end of the request stream, while the call
  still carries answers): sessions and queries running go on to their end — each its ``done`` or
  ``error`` — and then the connection closes, as in a stop. A client that reads nothing meanwhile is
  still let go by the transport's write timeout.
* **A batch** (``batch``: stdio's file of requests, which no client reads to try again): a request past
  ``max_sessions_per_connection`` or ``max_sessions_per_principal`` is not refused; the reader waits for a
  session to end (and so stops reading the file), unless the batch's answers can no longer be written —
  the connection then ends.
* **The end.** When the connection ends — the client closed it, broke the protocol too often, or
  ``run`` was cancelled — every session's task is cancelled and awaited, so each ledger row is
  complete before ``run`` returns. A session the connection itself ended (a bad frame) is cancelled
  the same way; the connection has already told the client. With ``answers_after_end`` (stdio, whose
  client may close its side and still read), the end the client's side made still gets each session's
  terminal event written (its ``CANCELLED``): every request read has its one ``done`` or ``error``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.session import SessionEnd, run_session
from gtl_nb.gateway.listeners import Limits, Shutdown
from gtl_nb.gateway.permissions import completion_context, visible_providers
from gtl_nb.gateway.principal_sessions import sessions_of
from gtl_nb.gateway.queries import MAX_QUERIES, QueryDesk
from gtl_nb.gateway.refusals import GatewayStopping, TokenUncheckable, recorded_refusal
from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import encode, frames_within
from gtl_nb.protocol.connection_events import (
    ConnectionEvent,
    ConnectionTerminated,
    HandshakeComplete,
    ProtocolViolation,
)
from gtl_nb.protocol.errors import AuthenticationError, GTLError, OverloadedError, ProviderUnavailableError
from gtl_nb.protocol.messages import (
    TERMINAL_EVENTS,
    Cancel,
    CompletionRequest,
    Error,
    ProviderInfo,
    Query,
    StreamEvent,
)
from gtl_nb.transports.conventions import PROVIDERS_END
from gtl_nb.transports.framed import FramedConnection
from gtl_nb.words import counted

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "MAX_QUERIES",
    "Authenticate",
    "GatewayConnection",
    "HeaderTokenFirst",
    "cancel_started",
    "without_a_token",
]

log = get_logger("gateway")
DEFAULT_MAX_SESSIONS = 256
"""Sessions one connection may run at once."""

Authenticate = Callable[[str | None], RequestContext]
"""The client's hello token → the context its sessions run under; raises ``AuthenticationError``.

An authenticator may also offer ``recheck(context)``, returning the context an open connection's next
completion or query runs under — narrowed when a reload took deployments from the token policy's
defaults — and raising when the token behind it has since expired or been revoked
(``gateway.permissions.rechecked``; ``gateway.queries.QueryDesk`` asks it before each query too)."""


def authenticated_or_logged(authenticate: Authenticate, token: str | None, peer: str | None) -> RequestContext:
    """``authenticate(token)``; a refusal is logged for the operator (who was refused and why — never
    the token) before it is raised, as on every transport."""
    try:
        return authenticate(token)
    except AuthenticationError as exc:
        why = getattr(exc, "for_the_log", None)  # a GhostToken's refusal says why, for the operator only
        log.warning("refused client %s: %s%s", peer, exc.message, f" [{why}]" if why else "")
        raise


class HeaderTokenFirst:
    """``authenticate`` for a connection whose transport carried a token in its headers: that token
    counts instead of hello's. ``refused`` (optional) hears each refusal before it is raised."""

    def __init__(
        self,
        authenticate: Authenticate,
        bearer: str | None,
        refused: Callable[[AuthenticationError], None] | None = None,
    ) -> None:
        self.authenticate = authenticate
        self.bearer = bearer
        self.refused = refused

    def __call__(self, token: str | None) -> RequestContext:
        try:
            return self.authenticate(self.bearer if self.bearer is not None else token)
        except AuthenticationError as exc:
            if self.refused is not None:
                self.refused(exc)
            raise

    def recheck(self, context: RequestContext) -> RequestContext:
        """Ask the wrapped authenticator again (when it can): the context to use now."""
        recheck = getattr(self.authenticate, "recheck", None)
        return context if recheck is None else recheck(context)


_HELLO_TOKEN = 'as token in a {"type":"hello","versions":["1.0"],"token":"..."} frame before any request'
_HOW_TO_SEND_A_TOKEN = {
    "ws": f"send it in the upgrade request's Authorization: Bearer header, or {_HELLO_TOKEN}",
    "grpc": "send it as authorization: Bearer metadata on the call, or as a first hello frame's token",
}


def without_a_token(refusal: AuthenticationError, transport: str | None) -> AuthenticationError:
    """The refusal of a client that sent no hello — so no hello token — and no header token either: it
    may never have heard of either, so the error says where a token goes on this transport (the
    authenticator's own words follow, for whatever else they say)."""
    how = _HOW_TO_SEND_A_TOKEN.get(transport or "", f"send it {_HELLO_TOKEN}")
    words = f"this gateway needs a token and the connection carried none: {how} ({refusal.message})"
    return AuthenticationError(words, retryable=refusal.retryable, retry_after=refusal.retry_after)


def fitted(info: ProviderInfo, max_bytes: int) -> ProviderInfo:
    """``info`` cut to fit one frame: a deployment listing more models than a frame holds is sent with
    the models that fit (logged), so the provider list always reaches the client."""
    if len(encode(info)) < max_bytes:
        return info
    models = list(info.models)
    while models and len(encode(msgspec.structs.replace(info, models=models))) >= max_bytes:
        models.pop()
    log.warning(
        "the provider list of %s was cut to %d of %d models to fit max_frame_bytes",
        info.provider,
        len(models),
        len(info.models),
    )
    return msgspec.structs.replace(info, models=models)


def cancel_started(task: asyncio.Task[Any]) -> None:
    """Cancel a session's task after it took its first step. A task cancelled before it ever ran never
    runs its body — no terminal event, no ``finally``, a session slot held for ever — so the cancel is
    queued behind the task's first step (the loop runs callbacks in order)."""
    asyncio.get_running_loop().call_soon(task.cancel)


class GatewayConnection:
    """Serves one client connection (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        framed: FramedConnection,
        *,
        authenticate: Authenticate,
        max_sessions: int | None = None,
        limits: Limits | None = None,
        shutdown: Shutdown | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: str | None = None,
        answers_after_end: bool = False,
        batch: asyncio.Event | None = None,
    ) -> None:
        self.engine = engine
        self.framed = framed
        self.limits = limits or Limits()
        self.max_sessions = max_sessions if max_sessions is not None else self.limits.max_sessions_per_connection
        self.shutdown = shutdown
        self.transport = transport
        """The scheme this connection came over (``stdio``, ``ws``, ``grpc``): the request context says it."""
        self.context: RequestContext | None = None
        self._authenticate = authenticate
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._endings: dict[str, SessionEnd] = {}  # each running session's, as ``run_session`` records it
        self._cancelled: set[asyncio.Task[None]] = set()
        self._last_activity = clock()
        self._said_hello = False
        self._cancel_reason = "the client"
        # The time limits and the shutdown are watched by a timer and a callback, not by tasks: a
        # connection held open for minutes keeps no coroutine, future or context of theirs alive for
        # the garbage collector to walk (docs/benchmarks.md, "Scale").
        self._timer: asyncio.TimerHandle | None = None
        self._unwatch_shutdown: Callable[[], None] | None = None
        self._unwatch_grace: Callable[[], None] | None = None
        self._watching = True  # until run() ends: nothing is armed after that
        self._reading: asyncio.Future[None] | None = None
        self._desk = QueryDesk(
            engine,
            framed.send_nowait,
            max_bytes=framed.connection.max_frame_bytes,
            on_idle=self._quiet,
            recheck=getattr(authenticate, "recheck", None),
        )
        self._closed_here = False
        self._refusing = False  # the reader awaits a refusal's row: the stop closes the connection after it
        self._client_done = False  # the client sends no more (client_done_sending): close once nothing runs
        self._principals = sessions_of(engine)
        self._answers_after_end = answers_after_end
        """The channel still carries what is written after the client's end of stream (stdio's pipes)."""
        self._client_ended = False  # the client ended the connection (its end of stream, or its error frame)
        self.gave_up_with: GTLError | None = None
        """The error this end ended the connection for (a bad frame, a refused hello), ``None`` otherwise."""
        # sessions whose end the connection itself told the client (a bad frame of theirs): their task's own
        # end is not written after the connection ended (``_told_after_end``), so each has one terminal event
        self._told_by_connection: set[str] = set()
        # a client that sent no hello, refused: each request read with its implied hello gets this as its own
        # error, then the connection ends with it (``_welcome``, ``_read``)
        self._refused_unasked: AuthenticationError | None = None
        self._batch = batch
        """A batch's (stdio's file of requests): a request past a session cap waits for a session to end rather
        than being refused ``OVERLOADED`` (no client is there to try it again); set, its answers can no longer
        be written, and the connection ends (``_room_in_batch``)."""
        self._room: asyncio.Event | None = None  # set when a session ends, for a batch waiting at a cap

    @property
    def live_sessions(self) -> int:
        """Sessions whose task is still running."""
        return len(self._tasks)

    async def run(self) -> None:
        """Serve the connection until it ends; every session's ledger row is complete on return."""
        self._reading = asyncio.ensure_future(self._read())
        self._timer = asyncio.get_running_loop().call_later(self.limits.header_timeout, self._no_hello)
        if self.shutdown is not None:
            self._unwatch_shutdown = self.shutdown.when_stopping(self._shutting_down)
        try:
            await self._reading
        except asyncio.CancelledError:
            if not self._closed_here:  # run() itself was cancelled
                raise
        finally:
            self._stop_watching()
            await self._desk.aclose()
            tasks = list(self._tasks.values())
            for task in tasks:
                self._cancel(task)
            await asyncio.gather(*tasks, return_exceptions=True)  # no drain: a client that stopped reading
            # must not keep the gateway; closing the channel sends what it can

    async def _read(self) -> None:
        framed = self.framed
        while True:
            async for event in framed.events():
                self._last_activity = self._clock()
                if self._batch is not None and isinstance(event, CompletionRequest) and not await self._room_in_batch():
                    return  # its answers can no longer be written: the connection ends
                refusal = self._handle(event)
                if refusal is not None:  # a request refused at a cap or by the stop: its row first (gateway.refusals)
                    self._refusing = True
                    try:
                        await refusal
                    finally:
                        self._refusing = False
                    if self._stopped_and_idle():  # its error went out: the connection's last word in a stop,
                        framed.read_no_more = True  # once every other request read with it is refused too
            if self._refused_unasked is not None:  # every request read with the implied hello was answered
                self._close(self._refused_unasked)
                return
            if not framed.read_no_more or framed.closed:
                return  # the connection ended
            if self._stopped_and_idle():  # every request read has its answer
                self._close(None)
                return
            framed.read_no_more = False  # a client done sending whose last requests run: read on

    def _finish(self) -> None:
        """The stop (or a client done sending) with nothing left running: close the connection — at once when
        the reader waits for bytes, else once it has handled what it read (each request then refused with its
        row, never dropped unanswered)."""
        reading = self._reading
        if self.framed.waiting_for_peer or reading is None or reading.done():
            self._close(None)
        else:
            self.framed.read_no_more = True  # ``_read`` closes once what it holds is handled

    async def _room_in_batch(self) -> bool:
        """A batch's next request waits while the connection (or its principal) runs all the sessions it may:
        the reader stops, and so does the reading of the file. ``False`` when the batch's answers can no
        longer be written (``self._batch`` set)."""
        gone = self._batch
        assert gone is not None
        while self._tasks and self._at_a_cap() and not gone.is_set():
            self._room = asyncio.Event()
            waits = [asyncio.ensure_future(self._room.wait()), asyncio.ensure_future(gone.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return not gone.is_set()

    def _at_a_cap(self) -> bool:
        if len(self._tasks) >= self.max_sessions:
            return True
        context = self.context
        limit = self.limits.max_sessions_per_principal
        return context is not None and self._principals.running(context.principal) >= limit

    def client_done_sending(self) -> None:
        """The client ended its messages but still reads (gRPC's half-close): what runs goes on to its end,
        then the connection closes (at once when nothing runs)."""
        self._client_done = True
        if self._watching and self._stopped_and_idle():
            self._finish()

    # -- events ------------------------------------------------------------------------------------

    def _handle(self, event: ConnectionEvent) -> Awaitable[None] | None:
        """Act on one event; what to await before the next one (a refusal's ledger row), if anything."""
        if isinstance(event, HandshakeComplete):
            self._welcome(event)
        elif isinstance(event, CompletionRequest):
            return self._start(event)
        elif isinstance(event, Query):
            self._ask(event)
        elif isinstance(event, (Cancel, Error)):
            # a client's cancel, or the connection ending a session itself (a bad frame, the end: a client's
            # own connection-level error arrives here as CANCELLED, whatever its code — GTLConnection)
            task = self._tasks.get(event.session_id)
            if task is not None:
                if type(event) is Error and event.code != "CANCELLED":  # the client was told this error:
                    self._endings[event.session_id].end_with(event)  # the row ends with it too
                    self._told_by_connection.add(event.session_id)
                self._cancel(task)
        elif isinstance(event, ProtocolViolation):
            log.warning("client %s broke the protocol: %s", self.framed.channel.peer, event.error.message)
        elif isinstance(event, ConnectionTerminated):
            self._client_ended = event.by_peer
            if not event.by_peer:
                self.gave_up_with = event.error  # what a WebSocket's close code says (transports.messages)
            if event.error is not None:
                log.info("connection from %s ended: %s", self.framed.channel.peer, event.error)
        return None

    def _welcome(self, event: HandshakeComplete) -> None:
        self._said_hello = True
        self._arm_idle(self.limits.idle_timeout)  # in place of the hello deadline
        try:
            context = authenticated_or_logged(self._authenticate, event.token, self.framed.channel.peer)
        except AuthenticationError as exc:
            no_token = getattr(self._authenticate, "bearer", None) is None and not isinstance(exc, TokenUncheckable)
            if event.implicit and no_token:
                exc = without_a_token(exc, self.transport)
            if event.implicit:  # its first request came with it: answer that first (``_start``), then close
                self._refused_unasked = exc
                self.framed.read_no_more = True  # ``_read`` closes once the frames of this read are handled
                return
            self.framed.close_nowait(exc)
            return
        self.context = dataclasses.replace(context, peer=self.framed.channel.peer, transport=self.transport)
        if event.implicit:  # a client that sent no hello asked for no provider list (it may not read one)
            return
        for info in visible_providers(self.engine, self.context):
            self.framed.send_nowait(fitted(info, self.framed.connection.max_frame_bytes))
        self.framed.send_nowait(PROVIDERS_END)

    def _start(self, request: CompletionRequest) -> Awaitable[None] | None:
        """Start the session of ``request``; a refusal at a cap is returned, for the reader to await."""
        sid = request.session_id
        self._told_by_connection.discard(sid)  # (an id used again names a new session)
        if self.context is None:  # a refused client's connection is closed, and its sessions ended with it
            # (a client that sent no hello, refused: each request read with it is told why, and nothing runs it)
            refusal = self._refused_unasked or AuthenticationError("the client is not authenticated")
            self._end(refusal.to_event(sid))
            return None
        context = self.context
        if self.shutdown is not None and self.shutdown.is_stopping:
            return self._refuse(request, context, GatewayStopping())
        checked = completion_context(context, self._authenticate)
        if isinstance(checked, GTLError):  # before the caps: a revoked token is told so, not to try again later
            return self._refuse(request, context, checked)
        context = self.context = checked
        if len(self._tasks) >= self.max_sessions:
            running = counted(len(self._tasks), "session")
            message = f"this connection already runs {running}; start more when some have ended"
            return self._refuse(request, context, OverloadedError(message))
        loop = asyncio.get_running_loop()
        ending = SessionEnd()
        try:
            task = self._principals.start(
                context.principal,
                self.limits.max_sessions_per_principal,
                lambda: loop.create_task(self._session(request, context, ending), name=f"gtl-{sid}"),
            )
        except OverloadedError as exc:
            return self._refuse(request, context, exc)
        self._tasks[sid] = task
        self._endings[sid] = ending
        return None

    async def _refuse(self, request: CompletionRequest, context: RequestContext, error: GTLError) -> None:
        """Refuse ``request`` (a cap, a scope, a token no longer valid, the stop): its ledger row and audit record, then
        its error (``gateway.refusals``)."""
        self._end(await recorded_refusal(self.engine, request, context, error))

    def _ask(self, query: Query) -> None:
        if self.context is not None:  # (always: a refused client's connection is closed)
            self._desk.ask(query, self.context)

    def _cancel(self, task: asyncio.Task[None]) -> None:
        """Cancel a session's task once (a second cancel could cut short its ledger row's completion)."""
        if task not in self._cancelled:
            self._cancelled.add(task)
            cancel_started(task)

    # -- one session -------------------------------------------------------------------------------

    async def _session(self, request: CompletionRequest, context: RequestContext, ending: SessionEnd) -> None:
        try:
            # the drain waits while the client is not reading; a terminal event the stream could not
            # deliver goes out through _end, which never waits
            await run_session(
                self.engine,
                request,
                context,
                self._send_after_end if self._answers_after_end else self.framed.send_nowait,
                drain=self.framed.drain_when_full,
                finish=self._end,
                cancelled_by=lambda: self._cancel_reason,
                ending=ending,
            )
        except Exception:  # a bug, or an event this connection cannot carry: already ended with INTERNAL
            log.exception("session %r failed in the gateway", request.session_id)
        finally:
            task = asyncio.current_task()
            if self._tasks.get(request.session_id) is task:
                del self._tasks[request.session_id]
                del self._endings[request.session_id]
            self._cancelled.discard(task)  # type: ignore[arg-type]
            if self._room is not None:
                self._room.set()  # a batch waiting at a cap reads its next request
            if self._stopped_and_idle():
                self._finish()  # the last session of a shutdown has ended
            elif not self._tasks:
                self._quiet()

    def _end(self, event: StreamEvent) -> None:
        """Send a session's terminal event without waiting (once the connection ended, only where
        ``_told_after_end`` may)."""
        if self.framed.closed:
            self._told_after_end(event)
            return
        try:
            self.framed.send_nowait(event)
        except GTLError as exc:
            log.debug("could not end session %r: %s", event.session_id, exc)

    def _send_after_end(self, event: StreamEvent) -> None:
        """A session's event to the client (``answers_after_end``): once the client ended the connection,
        only its terminal event, written past the ended connection (``_told_after_end``)."""
        if self.framed.closed:
            self._told_after_end(event)
        else:
            self.framed.send_nowait(event)

    def _told_after_end(self, event: StreamEvent) -> None:
        """Write a session's terminal event after the client ended the connection, where the channel still
        carries it (stdio: a client that closed the gateway's input may still read its output)."""
        if not (self._answers_after_end and self._client_ended and type(event) in TERMINAL_EVENTS):
            return
        if event.session_id in self._told_by_connection:  # the connection told the client this session's end
            self._told_by_connection.discard(event.session_id)
            return
        try:
            self.framed.channel.write(frames_within(event, self.framed.connection.send_limit))
        except GTLError as exc:
            log.debug("could not end session %r: %s", event.session_id, exc)

    # -- time limits and shutdown ------------------------------------------------------------------

    def _no_hello(self) -> None:
        """The header timeout: close a connection that has not completed hello."""
        self._timer = None
        if not self._said_hello and not self.framed.closed:
            timeout = self.limits.header_timeout
            log.info("client %s sent no hello within %g s", self.framed.channel.peer, timeout)
            self._close(ProviderUnavailableError(f"no hello within {timeout:g} s"))

    def _arm_idle(self, delay: float) -> None:
        """Look again in ``delay`` seconds whether the connection has been idle long enough."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watching and math.isfinite(self.limits.idle_timeout) and not self.framed.closed:
            self._timer = asyncio.get_running_loop().call_later(max(0.01, delay), self._check_idle)

    def _quiet(self) -> None:
        """The last session or query has ended: the idle count starts now, if nothing else runs (or the
        connection closes, when the client sends no more)."""
        if self._tasks or self._desk.busy:
            return
        if self._client_done and self._watching and self._stopped_and_idle():
            self._finish()
            return
        self._last_activity = self._clock()
        if self._said_hello:
            self._arm_idle(self.limits.idle_timeout)

    def _check_idle(self) -> None:
        """Close a connection that runs no session or query and has sent nothing for ``idle_timeout`` seconds."""
        self._timer = None
        if self.framed.closed or self._tasks or self._desk.busy:  # busy: the last one's end arms the timer again
            return
        quiet_until = self._last_activity + self.limits.idle_timeout
        now = self._clock()
        if now < quiet_until:
            self._arm_idle(quiet_until - now)
            return
        log.info("closing idle connection from %s", self.framed.channel.peer)
        self._close(None)

    def _shutting_down(self) -> None:
        """Shutdown began: new sessions are refused (``_start``); the connection closes once it runs
        none, and the sessions still running after ``grace`` seconds are cancelled."""
        self._unwatch_shutdown = None
        if self.framed.closed or not self._watching:
            return
        if self._stopped_and_idle():
            self._finish()
            return
        assert self.shutdown is not None
        self._unwatch_grace = self.shutdown.after_grace(self._grace_over)

    def _stopped_and_idle(self) -> bool:
        """Shutdown began (or the client sends no more) and the connection has nothing left to end: no
        session, no refusal being recorded (and, for a client done sending, no query being answered)."""
        if self._tasks or self._refusing:
            return False
        if self.shutdown is not None and self.shutdown.is_stopping:
            return True
        return self._client_done and not self._desk.busy

    def _grace_over(self) -> None:
        self._unwatch_grace = None
        if self._tasks:
            self._cancel_reason = "the gateway shutting down"
            for task in list(self._tasks.values()):
                self._cancel(task)
        # the last one to end closes the connection (``_session``)

    def _stop_watching(self) -> None:
        self._watching = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for unwatch in (self._unwatch_shutdown, self._unwatch_grace):
            if unwatch is not None:
                unwatch()
        self._unwatch_shutdown = self._unwatch_grace = None

    def _close(self, error: GTLError | None) -> None:
        """End the connection from the gateway's side: the peer is told, the reader stops, ``run`` returns."""
        if self.framed.closed:
            return
        if error is not None and self.gave_up_with is None:
            self.gave_up_with = error  # what a WebSocket's close code says (no hello in time: 1013)
        self.framed.close_nowait(error)
        self._closed_here = True
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()  # it may be waiting for bytes that will never come
