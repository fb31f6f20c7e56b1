"""The client's end of GTL over QUIC: ``QuicLink``, one connection (``RemoteBackend`` holds one at a time).

``QuicLink.open()`` completes the QUIC/TLS handshake (ALPN ``gtl/1``), sends hello on the control
stream and waits for the provider list; then each ``session()`` opens a stream of its own, writes
the request and delivers the gateway's events, each checked by the session's state machine
(``wire.EventStream``). Every session ends with exactly one ``done`` or ``error`` delivered:

* the gateway's terminal event (after which the client ends its side of the stream);
* ``INTERNAL`` when the gateway broke the stream's rules (the stream is then reset);
* a retryable ``PROVIDER_UNAVAILABLE`` when the connection ends first — the gateway closed it, or it
  went silent for ``IDLE_TIMEOUT`` seconds despite the pings (a killed gateway sends nothing);
* when the task running the session is cancelled, a ``cancel`` frame goes out and the gateway's
  terminal event is delivered — or ``CANCELLED`` when the gateway does not confirm within
  ``CANCEL_WAIT`` seconds, and the stream is reset (which the gateway also takes as a cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.protocol.connection_events import CONNECTION_CLOSED, NEED_DATA, ConnectionTerminated, HandshakeComplete
from gtl_nb.protocol.errors import (
    GTLError,
    ProviderUnavailableError,
)
from gtl_nb.protocol.extensions import check_request, degraded
from gtl_nb.protocol.messages import Answer, Cancel, CompletionRequest, Error, ProviderInfo, StreamEvent
from gtl_nb.transports.conventions import is_providers_end
from gtl_nb.transports.link import CANCEL_WAIT, OPEN_TIMEOUT, Deliver
from gtl_nb.transports.questions import Questions
from gtl_nb.transports.quic.config import CONNECT_TIMEOUT, IDLE_TIMEOUT, PING_INTERVAL, client_configuration
from gtl_nb.transports.quic.peer import QuicPeer
from gtl_nb.transports.quic.wire import (
    ALPN,
    NO_ERROR,
    STREAM_CANCEL,
    EventStream,
    close_code,
    closed_error,
    frame,
    is_terminal,
    stream_fault,
)
from gtl_nb.transports.unreached import refused, unreached_reason

__all__ = ["CLOSE_WAIT", "QuicLink"]


def _reason(exc: OSError) -> str:
    """Why the gateway could not be reached: ``unreached_reason``'s words for a refusal, else the system's."""
    return unreached_reason(exc) if refused(exc) else exc.strerror or str(exc)


log = get_logger("transports.quic")
CLOSE_WAIT = 1.0
"""Seconds ``aclose`` waits for QUIC's closing period before it drops the socket."""


class _Session:
    """One session stream of the client: its checked events, delivered until the terminal one."""

    def __init__(self, link: QuicLink, request: CompletionRequest, deliver: Deliver) -> None:
        self.link = link
        self.session_id = request.session_id
        self.deliver = deliver
        self.reader = EventStream(request.session_id, link.max_frame_bytes)
        self.ended = asyncio.Event()
        self.cancelling = False
        self.stream_id = -1

    def put(self, event: StreamEvent) -> None:
        if self.ended.is_set():
            return
        if is_terminal(event):
            self.ended.set()
        try:
            self.deliver(event)
        except Exception:  # the caller's callback must not stop the connection
            log.exception("delivering an event of session %r failed", self.session_id)

    def data_received(self, data: bytes, end: bool) -> None:
        events, violation = self.reader.feed(data, end)
        for event in events:
            self.put(event)
        if violation is not None and not self.ended.is_set():
            log.warning("the %s broke session %r's stream: %s", self.link.label, self.session_id, violation)
            self.put(stream_fault(self.session_id, violation))
            self.link.peer_reset(self.stream_id)

    def reset_received(self, code: int) -> None:
        if self.cancelling:
            self.put(Error(session_id=self.session_id, code="CANCELLED", message="cancelled by the caller"))
            return
        message = f"the {self.link.label} reset the session's stream before its end"
        self.put(Error(session_id=self.session_id, code="PROVIDER_UNAVAILABLE", message=message, retryable=True))

    def stop_received(self, code: int) -> None:
        """The gateway no longer reads our side (it refused the stream): its error frame follows."""


class _Control:
    """The control stream: the hello exchange, the provider list, a connection-level error."""

    def __init__(self, link: QuicLink, connection: GTLConnection) -> None:
        self.link = link
        self.connection = connection

    def data_received(self, data: bytes, end: bool) -> None:
        connection = self.connection
        if data:
            connection.receive_data(data)
        if end:
            connection.receive_data(b"")
        while (event := connection.next_event()) is not NEED_DATA and event is not CONNECTION_CLOSED:
            if isinstance(event, ProviderInfo):
                if is_providers_end(event):
                    self.link.ready.set()
                else:
                    self.link.providers.append(event)
            elif isinstance(event, HandshakeComplete):
                self.link.version = event.version
            elif isinstance(event, Answer):
                self.link.questions.answered(event)
            elif isinstance(event, ConnectionTerminated):
                self.link.control_ended(event.error)
        if not connection.closed:
            self.link.write_control(connection.data_to_send())

    def reset_received(self, code: int) -> None:
        self.link.control_ended(ProviderUnavailableError(f"the {self.link.label} reset the control stream"))

    def stop_received(self, code: int) -> None:
        self.reset_received(code)


class QuicLink:
    """One QUIC connection to a gateway (see the module docstring); ``RemoteBackend`` holds one at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None = None,
        verify: object = True,
        label: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.label = label or f"quic gateway at {host}:{port}"
        self.max_frame_bytes = max_frame_bytes
        self.providers: list[ProviderInfo] = []
        self.version: str | None = None
        self.error: GTLError | None = None
        """Why the connection ended, when it ended with an error."""
        self.ready = asyncio.Event()
        self.peer: QuicPeer | None = None
        self._token = token
        self._configuration = client_configuration(host, verify)
        self._sessions: dict[int, _Session] = {}
        self._ended = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._control_id = 0
        self._control: GTLConnection | None = None
        self.questions = Questions(self.label)

    def __repr__(self) -> str:  # never the token
        return f"<QuicLink {self.label}>"

    @property
    def closed(self) -> bool:
        """Whether the connection ended (no new session can start on it)."""
        return self._ended.is_set() or self.peer is None or not self.peer.is_open

    @property
    def channel(self) -> QuicPeer | None:
        """The QUIC connection (``RemoteBackend.channel``): the same object for as long as it lasts."""
        return self.peer

    @property
    def live_sessions(self) -> int:
        return len(self._sessions)

    # -- opening ---------------------------------------------------------------------------------------

    async def open(self, timeout: float = OPEN_TIMEOUT) -> None:
        """Connect, say hello and wait for the provider list; raise why the gateway refused or could not be reached."""
        try:
            await self._connect(min(timeout, CONNECT_TIMEOUT))
            waits = [asyncio.ensure_future(self.ready.wait()), asyncio.ensure_future(self._ended.wait())]
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        except BaseException:
            await self.abort(ProviderUnavailableError(f"stopped connecting to the {self.label}"))
            raise
        if self.ready.is_set() and not self.closed:
            return
        if not self.closed:
            error: GTLError = ProviderUnavailableError(f"the {self.label} sent no answer to hello within {timeout:g} s")
        elif self.error is not None:
            error = self.error  # the gateway's own word: AUTH_FAILED, no common version, OVERLOADED, ...
        else:
            error = ProviderUnavailableError(f"the {self.label} closed the connection before it was ready")
        await self.abort(error)
        raise error

    async def _connect(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            found = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ProviderUnavailableError(f"cannot reach the {self.label}: {_reason(exc)}") from None
        for number, (family, _, _, _, address) in enumerate(found):
            try:
                alpn = await self._handshake(family, address, max(0.0, deadline - loop.time()))
                break
            except (
                OSError
            ) as exc:  # refused (ICMP) at this address: the next one may answer (localhost: ::1, 127.0.0.1)
                if number + 1 < len(found) and loop.time() < deadline:
                    await self._drop_socket()
                    continue
                raise ProviderUnavailableError(f"cannot reach the {self.label}: {_reason(exc)}") from None
        peer = self.peer
        assert peer is not None
        if alpn != ALPN:
            raise ProviderUnavailableError(f"the {self.label} does not speak {ALPN} (ALPN {alpn!r})")
        peer.on_terminated = self._terminated
        control = self._control = GTLConnection("client", token=self._token, max_frame_bytes=self.max_frame_bytes)
        self._control_id = peer.open_stream(_Control(self, control))
        peer.write(self._control_id, control.data_to_send())
        peer.start_pings(PING_INTERVAL)

    async def _handshake(self, family: int, address: tuple[Any, ...], timeout: float) -> str | None:
        """The QUIC and TLS handshake with one address: the agreed ALPN, or why not (``OSError``: refused)."""
        from aioquic.quic.connection import QuicConnection

        # a connected UDP socket: a closed port answers the first packet with an ICMP error
        self._transport, peer = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: QuicPeer(QuicConnection(configuration=self._configuration)), remote_addr=address, family=family
        )
        self.peer = peer
        peer.connect(address)
        try:
            return await asyncio.wait_for(asyncio.shield(peer.handshake), timeout)
        except asyncio.TimeoutError:
            raise ProviderUnavailableError(f"cannot reach the {self.label}: no answer within {timeout:g} s") from None
        except ConnectionError:
            if peer.terminated is None:
                raise
            raise self._close_reason() from None  # TLS refused: the certificate, the ALPN, ...

    async def _drop_socket(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = self.peer = None

    # -- sessions ----------------------------------------------------------------------------------------

    async def session(self, request: CompletionRequest, deliver: Deliver) -> None:
        """Run one session on a stream of its own (see the module docstring for how it ends)."""
        sid = request.session_id
        peer = self.peer
        if self.closed or peer is None:
            deliver(self.gone(sid))
            return
        try:
            missing = self._control.missing_extensions if self._control is not None else None
            if missing:  # an older gateway's control hello: it would drop the field (no GTLConnection sends this)
                request = degraded(request, missing)  # (left out, with a warning, when it changes no answer)
                check_request(request, missing)
            data = frame(request, self.max_frame_bytes)
        except GTLError as exc:
            deliver(exc.to_event(sid))
            return
        session = _Session(self, request, deliver)
        session.stream_id = stream_id = peer.open_stream(session)
        self._sessions[stream_id] = session
        try:
            peer.write(stream_id, data)
            await peer.drain(stream_id)
            await session.ended.wait()
        except asyncio.CancelledError:
            if not session.ended.is_set():
                await self._cancel(session)
            raise
        finally:
            del self._sessions[stream_id]
            if session.reader.ended:
                peer.write(stream_id, b"", end=True)  # our side ends too, so QUIC can retire the stream
                peer.forget(stream_id)
            else:
                peer.reset(stream_id, STREAM_CANCEL)

    async def _cancel(self, session: _Session) -> None:
        session.cancelling = True
        peer = self.peer
        if (
            self.closed
            or peer is None
            or not peer.write(session.stream_id, frame(Cancel(session_id=session.session_id)))
        ):
            session.put(self.gone(session.session_id, cancelling=True))
            return
        try:
            await asyncio.wait_for(session.ended.wait(), CANCEL_WAIT)
        except asyncio.TimeoutError:
            message = f"cancelled by the caller; the {self.label} did not confirm within {CANCEL_WAIT:g} s"
            session.put(Error(session_id=session.session_id, code="CANCELLED", message=message))

    async def query(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask the gateway ``name`` on the control stream (as ``ClientLink.query``)."""
        control = self._control
        if self.closed or control is None:
            raise ProviderUnavailableError(f"the connection to the {self.label} is closed")
        return await self.questions.ask(lambda query: self.write_control(control.send(query)), name, params)

    @property
    def answers_queries(self) -> bool:
        """Whether the gateway agreed to the ``query`` feature."""
        return self._control is not None and "query" in self._control.features

    def peer_reset(self, stream_id: int) -> None:
        if self.peer is not None:
            self.peer.reset(stream_id, STREAM_CANCEL)

    def write_control(self, data: bytes) -> None:
        if data and self.peer is not None:
            self.peer.write(self._control_id, data)

    # -- the end -------------------------------------------------------------------------------------------

    async def abort(self, error: GTLError) -> None:
        """End the connection now: every session gets ``error``, the gateway is told why."""
        self._end_sessions(lambda sid, cancelling: error.to_event(sid))
        await self._close(*close_code(error))

    async def aclose(self) -> None:
        """Close politely: live sessions end ``CANCELLED`` (their streams reset, so the gateway cancels them)."""

        def cancelled(sid: str, cancelling: bool) -> Error:
            return Error(session_id=sid, code="CANCELLED", message="the connection was closed")

        self._end_sessions(cancelled)
        await self._close(NO_ERROR, "")

    async def _close(self, code: int, reason: str) -> None:
        peer = self.peer
        if peer is not None:
            for stream_id in list(self._sessions):
                peer.reset(stream_id, STREAM_CANCEL)
            if peer.terminated is None:
                if not peer.closed_here:
                    peer.close_with(code, reason)
                if peer.handshake.done() and peer.handshake.exception() is None:
                    with contextlib.suppress(asyncio.TimeoutError):  # the closing period: CLOSE is re-sent if lost
                        await asyncio.wait_for(peer.wait_closed(), CLOSE_WAIT)
            peer.stop_pings()
        self._ended.set()
        if self._transport is not None:
            self._transport.close()

    def _terminated(self, event: object) -> None:
        """The QUIC connection is over: every live session ends, the socket is released."""
        if self.error is None:
            self.error = self._close_reason()
        self._end_sessions(lambda sid, cancelling: self.gone(sid, cancelling=cancelling))
        self._ended.set()
        if self._transport is not None:
            asyncio.get_running_loop().call_soon(self._transport.close)  # aioquic is still in its event loop

    def control_ended(self, error: GTLError | None) -> None:
        """The gateway ended the GTL connection on the control stream (with ``error``, when it said why)."""
        if error is not None:
            self.error = error
        self._end_sessions(lambda sid, cancelling: self.gone(sid, cancelling=cancelling))
        self._ended.set()
        if self.peer is not None and self.peer.is_open:
            self.peer.close_with(NO_ERROR)

    def _end_sessions(self, ending: object) -> None:
        for session in list(self._sessions.values()):
            session.put(ending(session.session_id, session.cancelling))  # type: ignore[operator]
        self.questions.fail_all(lambda qid: ending(qid, False))  # type: ignore[operator]

    def _close_reason(self) -> GTLError:
        peer = self.peer
        event = peer.terminated if peer is not None else None
        if event is None or peer is None:
            return ProviderUnavailableError(f"the connection to the {self.label} closed")
        if peer.closed_here and self.error is not None:
            return self.error
        if event.reason_phrase == "Idle timeout":
            return ProviderUnavailableError(
                f"the {self.label} stopped answering (nothing for {IDLE_TIMEOUT:g} s, pings unanswered)"
            )
        return closed_error(
            event.error_code, event.reason_phrase, application=event.frame_type is None, label=self.label
        )

    def gone(self, sid: str, *, cancelling: bool = False) -> Error:
        """How a session ends when the connection ended under it."""
        if cancelling:
            return Error(
                session_id=sid, code="CANCELLED", message=f"cancelled by the caller (the {self.label} is gone)"
            )
        why = f" ({self.error.message})" if self.error is not None else ""
        message = f"the connection to the {self.label} closed before the session ended{why}"
        return Error(session_id=sid, code="PROVIDER_UNAVAILABLE", message=message, retryable=True)
