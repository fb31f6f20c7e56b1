"""The gateway core: one client connection's sessions, each a task over ``Engine.stream``.

``GatewayConnection(engine, framed, authenticate=...).run()`` serves one connection until it ends,
whatever the transport under ``framed``:

* **Hello.** After the exchange the client's token goes to ``authenticate``, which returns the
  ``RequestContext`` every session of the connection runs under (the transport's ``peer`` added) or
  raises ``AuthenticationError``, which ends the connection with ``AUTH_FAILED``. An accepted client
  then gets the provider list (``transports.conventions``).
* **Sessions.** Each ``completion_request`` runs as its own task over ``engine.stream``; its events
  go back through the connection in order. The task awaits the channel's drain after every event, so
  a slow reader stops the engine from pulling more from the provider: per session, at most one event
  is held beyond the channel's buffer. At most ``max_sessions`` run at once per connection; a request
  beyond that ends at once with a retryable ``OVERLOADED`` error.
* **Cancel.** A ``cancel`` cancels the session's task: the engine closes the upstream response and
  completes the ledger row as cancelled, and the client gets one ``CANCELLED`` error (or the
  ``done``/``error`` the engine had already recorded, so the client and the ledger agree).
* **The end.** When the connection ends — the client closed it, broke the protocol too often, or
  ``run`` was cancelled — every session's task is cancelled and awaited, so each ledger row is
  complete before ``run`` returns. A session the connection itself ended (a bad frame) is cancelled
  the same way; the connection has already told the client.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine, run_session
from gtl_nb.log import get_logger
from gtl_nb.protocol.connection_events import (
    ConnectionEvent,
    ConnectionTerminated,
    HandshakeComplete,
    ProtocolViolation,
)
from gtl_nb.protocol.errors import AuthenticationError, GTLError
from gtl_nb.protocol.messages import Cancel, CompletionRequest, Error, StreamEvent
from gtl_nb.transports.conventions import PROVIDERS_END
from gtl_nb.transports.framed import FramedConnection

__all__ = ["DEFAULT_MAX_SESSIONS", "Authenticate", "GatewayConnection"]

log = get_logger("gateway")
DEFAULT_MAX_SESSIONS = 256
"""Sessions one connection may run at once."""

Authenticate = Callable[[str | None], RequestContext]
"""The client's hello token → the context its sessions run under; raises ``AuthenticationError``."""


class GatewayConnection:
    """Serves one client connection (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        framed: FramedConnection,
        *,
        authenticate: Authenticate,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self.engine = engine
        self.framed = framed
        self.max_sessions = max_sessions
        self.context: RequestContext | None = None
        self._authenticate = authenticate
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()

    @property
    def live_sessions(self) -> int:
        """Sessions whose task is still running."""
        return len(self._tasks)

    async def run(self) -> None:
        """Serve the connection until it ends; every session's ledger row is complete on return."""
        try:
            async for event in self.framed.events():
                self._handle(event)
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                self._cancel(task)
            await asyncio.gather(*tasks, return_exceptions=True)  # no drain: a client that stopped reading
            # must not keep the gateway; closing the channel sends what it can

    # -- events ------------------------------------------------------------------------------------

    def _handle(self, event: ConnectionEvent) -> None:
        if isinstance(event, HandshakeComplete):
            self._welcome(event)
        elif isinstance(event, CompletionRequest):
            self._start(event)
        elif isinstance(event, (Cancel, Error)):
            # a client's cancel, or the connection ending a session itself (a bad frame, the end)
            task = self._tasks.get(event.session_id)
            if task is not None:
                self._cancel(task)
        elif isinstance(event, ProtocolViolation):
            log.warning("client %s broke the protocol: %s", self.framed.channel.peer, event.error)
        elif isinstance(event, ConnectionTerminated) and event.error is not None:
            log.info("connection from %s ended: %s", self.framed.channel.peer, event.error)

    def _welcome(self, event: HandshakeComplete) -> None:
        try:
            context = self._authenticate(event.token)
        except AuthenticationError as exc:
            log.warning("refused client %s: %s", self.framed.channel.peer, exc.message)
            self.framed.close_nowait(exc)
            return
        self.context = dataclasses.replace(context, peer=self.framed.channel.peer)
        for info in self.engine.provider_info():
            self.framed.send_nowait(info)
        self.framed.send_nowait(PROVIDERS_END)

    def _start(self, request: CompletionRequest) -> None:
        sid = request.session_id
        if self.context is None:  # cannot happen: a refused client's connection is closed
            self._end(AuthenticationError("the client is not authenticated").to_event(sid))
            return
        if len(self._tasks) >= self.max_sessions:
            message = f"this connection already runs {len(self._tasks)} sessions; start more when some have ended"
            self._end(Error(session_id=sid, code="OVERLOADED", message=message, retryable=True))
            return
        task = asyncio.get_running_loop().create_task(self._session(request, self.context), name=f"gtl-{sid}")
        self._tasks[sid] = task

    def _cancel(self, task: asyncio.Task[None]) -> None:
        """Cancel a session's task once (a second cancel could cut short its ledger row's completion)."""
        if task not in self._cancelled:
            self._cancelled.add(task)
            task.cancel()

    # -- one session -------------------------------------------------------------------------------

    async def _session(self, request: CompletionRequest, context: RequestContext) -> None:
        try:
            # the drain waits while the client is not reading; a terminal event the stream could not
            # deliver goes out through _end, which never waits
            await run_session(
                self.engine,
                request,
                context,
                self.framed.send_nowait,
                drain=self.framed.drain,
                finish=self._end,
                cancelled_by="the client",
            )
        except Exception:  # a bug, or an event this connection cannot carry: already ended with INTERNAL
            log.exception("session %s failed in the gateway", request.session_id)
        finally:
            task = asyncio.current_task()
            if self._tasks.get(request.session_id) is task:
                del self._tasks[request.session_id]
            self._cancelled.discard(task)  # type: ignore[arg-type]

    def _end(self, event: StreamEvent) -> None:
        """Send a session's terminal event without waiting (nothing is sent once the connection ended it)."""
        try:
            self.framed.send_nowait(event)
        except GTLError as exc:
            log.debug("could not end session %s: %s", event.session_id, exc)
