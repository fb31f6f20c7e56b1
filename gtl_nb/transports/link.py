"""The client's end of one GTL connection to a gateway: hello, the provider list, many sessions.

``ClientLink.open()`` sends hello and waits until the gateway answered it and sent its provider list
(``conventions.PROVIDERS_END``), or raises why not: the gateway's own error (``AUTH_FAILED``, a
version mismatch) or ``PROVIDER_UNAVAILABLE`` naming how it ended. One reader task then hands each
session's events to that session's ``deliver`` callback.

Every session ends with exactly one ``done`` or ``error`` delivered:

* the gateway's terminal event;
* when the connection drops, the connection's retryable ``PROVIDER_UNAVAILABLE`` error, as soon as
  the end of the stream is read (a killed gateway's pipe ends at once);
* when the task running the session is cancelled, a ``cancel`` goes to the gateway and its terminal
  event is delivered — or ``CANCELLED`` when the connection is gone or the gateway does not confirm
  within ``CANCEL_WAIT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from gtl_nb.log import get_logger
from gtl_nb.protocol.connection import STREAM_EVENT_TYPES
from gtl_nb.protocol.connection_events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    ConnectionEvent,
    ConnectionTerminated,
    HandshakeComplete,
    ProtocolViolation,
)
from gtl_nb.protocol.errors import (
    ConfigurationError,
    GTLError,
    ProviderUnavailableError,
    RequestError,
    VersionMismatchError,
)
from gtl_nb.protocol.extensions import degraded
from gtl_nb.protocol.messages import (
    TERMINAL_EVENTS,
    Answer,
    Cancel,
    CompletionRequest,
    Error,
    ProviderInfo,
    Query,
    StreamEvent,
)
from gtl_nb.transports.conventions import is_providers_end
from gtl_nb.transports.framed import FramedConnection
from gtl_nb.transports.questions import Questions

__all__ = ["CANCEL_WAIT", "OPEN_TIMEOUT", "ClientLink", "Deliver"]

log = get_logger("transports.link")
Deliver = Callable[[StreamEvent], None]
_SESSION_EVENTS = frozenset(STREAM_EVENT_TYPES)
OPEN_TIMEOUT = 30.0
"""Seconds from the hello to the end of the provider list (a gateway process starts in that time)."""
CANCEL_WAIT = 3.0
"""Seconds a cancelled session waits for the gateway's terminal event (the client waits 5 s in all)."""


class _Slot:
    """One session's delivery: at most one terminal event gets through."""

    __slots__ = ("cancelling", "deliver", "ended", "finished", "session_id")

    def __init__(self, session_id: str, deliver: Deliver) -> None:
        self.session_id = session_id
        self.deliver = deliver
        self.ended = asyncio.Event()  # for a cancel waiting for the end
        self.finished = False  # the same, asked per event: a plain flag
        self.cancelling = False

    def put(self, event: StreamEvent) -> None:
        if self.finished:
            return
        if type(event) in TERMINAL_EVENTS:
            self.finished = True
            self.ended.set()
        try:
            self.deliver(event)
        except Exception:  # the caller's callback must not stop the connection's reader
            log.exception("delivering an event of session %r failed", self.session_id)


class ClientLink:
    """One client connection over a ``FramedConnection`` (see the module docstring)."""

    def __init__(self, framed: FramedConnection, *, label: str = "gateway") -> None:
        self.framed = framed
        self.label = label
        self.providers: list[ProviderInfo] = []
        self.version: str | None = None
        self.error: GTLError | None = None
        """Why the connection ended, when it ended with an error."""
        self._slots: dict[str, _Slot] = {}
        self.questions = Questions(label)
        self._ready = asyncio.Event()
        self._ended = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """Whether the connection ended (no new session can start on it)."""
        return self._ended.is_set() or self.framed.closed

    @property
    def live_sessions(self) -> int:
        """Sessions waiting for their terminal event."""
        return len(self._slots)

    async def open(self, timeout: float = OPEN_TIMEOUT) -> None:
        """Send hello and wait for the answer and the provider list; raise why the gateway refused."""
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"gtl-link-{self.label}")
        waits = [asyncio.ensure_future(self._ready.wait()), asyncio.ensure_future(self._ended.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self.abort(ProviderUnavailableError(f"stopped waiting for the {self.label}"))
            raise
        finally:
            for wait in waits:
                wait.cancel()
        if self._ready.is_set() and not self.closed:
            return
        if not self.closed:
            error = ProviderUnavailableError(f"the {self.label} sent no answer to hello within {timeout:g} s")
            await self.abort(error)
            raise error
        await self._ended.wait()
        raise self._refusal()

    async def session(self, request: CompletionRequest, deliver: Deliver) -> None:
        """Run one session, delivering its events (see the module docstring for how it ends)."""
        sid = request.session_id
        if self.closed:
            deliver(self._gone(sid))
            return
        missing = self.framed.connection.missing_extensions
        if missing:  # an older gateway: what changes no answer is left out, with a warning
            request = degraded(request, missing)
        try:
            self.framed.send_nowait(request)
        except GTLError as exc:  # too large, a live id, or the connection closed under us
            deliver(self._gone(sid) if self.framed.closed else exc.to_event(sid))
            return
        slot = self._slots[sid] = _Slot(sid, deliver)
        try:
            await self.framed.drain()
            await slot.ended.wait()
        except asyncio.CancelledError:
            if not slot.ended.is_set():
                await self._cancel(slot)
            raise
        finally:
            if self._slots.get(sid) is slot:
                del self._slots[sid]

    @property
    def answers_queries(self) -> bool:
        """Whether the gateway agreed to the ``query`` feature (an older one did not)."""
        return "query" in self.framed.connection.features

    async def query(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask the gateway ``name`` (``usage``, ``breakers``, ``models``) and return its result, or raise
        the ``GTLError`` it answered with (``PROVIDER_UNAVAILABLE`` when the connection ends first)."""
        if self.closed:
            raise ProviderUnavailableError(f"the connection to the {self.label} is closed")

        async def send(query: Query) -> None:
            self.framed.send_nowait(query)
            await self.framed.drain()

        return await self.questions.ask(send, name, params)

    async def abort(self, error: GTLError) -> None:
        """End the connection now: the gateway is told why, every session gets ``error``."""
        if not self.framed.closed:
            self.framed.close_nowait(error)
            self._dispatch_local()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        await self._wait_reader()

    async def aclose(self) -> None:
        """Close politely: live sessions end ``CANCELLED`` — each cancelled on the gateway first, since the end
        of its input may mean only that no more requests come (gRPC's half-close) — and the gateway reads
        the end of its input."""
        if not self.framed.closed:
            for sid, slot in list(self._slots.items()):
                if not slot.finished:
                    with contextlib.suppress(GTLError):
                        self.framed.send_nowait(Cancel(session_id=sid))
            self.framed.close_nowait()
            self._dispatch_local()
        await self.framed.channel.aclose()
        await self._wait_reader()

    # -- the reader ----------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for event in self.framed.events():
                self._dispatch(event)
        except Exception as exc:  # a bug must still end every session
            log.exception("the connection to the %s failed", self.label)
            if not self.framed.closed:
                self.framed.close_nowait(ProviderUnavailableError(f"connection failed: {type(exc).__name__}"))
                self._dispatch_local()
        finally:
            for slot in list(self._slots.values()):
                slot.put(self._gone(slot.session_id, cancelling=slot.cancelling))
            self.questions.fail_all(self._gone)
            try:
                await self.framed.channel.aclose()
            finally:
                self._ended.set()

    def _dispatch_local(self) -> None:
        """Hand on the events the connection produced when this side closed it (the reader may be waiting)."""
        connection = self.framed.connection
        while (event := connection.next_event()) is not NEED_DATA and event is not CONNECTION_CLOSED:
            self._dispatch(event)
        self.framed.flush_nowait()

    def _dispatch(self, event: ConnectionEvent) -> None:
        if type(event) in _SESSION_EVENTS:  # the bulk of the traffic, asked first
            slot = self._slots.get(event.session_id)  # type: ignore[union-attr]
            if slot is None:
                return  # its caller left (a cancel that was not confirmed in time)
            if slot.cancelling and type(event) is Error and self.framed.closed:
                event = self._gone(slot.session_id, cancelling=True)
            slot.put(event)  # type: ignore[arg-type]
        elif isinstance(event, ProviderInfo):
            if is_providers_end(event):
                self._ready.set()
            else:
                self.providers.append(event)
        elif isinstance(event, Answer):
            self.questions.answered(event)
        elif isinstance(event, ConnectionTerminated):
            self.error = event.error
            if event.error is not None:
                log.info("the connection to the %s ended: %s", self.label, event.error)
        elif isinstance(event, ProtocolViolation):
            log.warning("the %s broke the protocol: %s", self.label, event.error)
        elif isinstance(event, HandshakeComplete):
            self.version = event.version

    async def _cancel(self, slot: _Slot) -> None:
        slot.cancelling = True
        with contextlib.suppress(GTLError):
            self.framed.send_nowait(Cancel(session_id=slot.session_id))
        if self.closed:
            slot.put(self._gone(slot.session_id, cancelling=True))
            return
        try:
            await asyncio.wait_for(slot.ended.wait(), CANCEL_WAIT)
        except asyncio.TimeoutError:
            message = f"cancelled by the caller; the {self.label} did not confirm within {CANCEL_WAIT:g} s"
            slot.put(Error(session_id=slot.session_id, code="CANCELLED", message=message))

    async def _wait_reader(self) -> None:
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=OPEN_TIMEOUT)  # the reader's own end never raises here

    # -- how sessions end without the gateway ------------------------------------------------------------

    def _gone(self, sid: str, *, cancelling: bool = False) -> Error:
        if cancelling:
            message = f"cancelled by the caller (the {self.label} is gone)"
            return Error(session_id=sid, code="CANCELLED", message=message)
        message = f"the connection to the {self.label} closed before the session ended"
        return Error(session_id=sid, code="PROVIDER_UNAVAILABLE", message=message, retryable=True)

    def _refusal(self) -> GTLError:
        """Why the connection ended before it was ready."""
        if isinstance(self.error, (RequestError, VersionMismatchError)):
            return self.error  # the gateway refused us: AUTH_FAILED, no common version, ...
        set_up = getattr(self.framed.channel, "set_up_error", None)
        mistake = set_up() if callable(set_up) else None
        if mistake is not None:  # its configuration is wrong: permanent, never a retryable outage
            return ConfigurationError(f"the {self.label} cannot start: {mistake}")
        note = getattr(self.framed.channel, "exit_note", None)
        why = f": {note()}" if callable(note) else (f" ({self.error.message})" if self.error else "")
        return ProviderUnavailableError(f"the {self.label} closed the connection before it was ready{why}")
