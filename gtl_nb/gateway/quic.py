"""The gateway over QUIC: ``serve_quic`` (the contract of ``gateway.listeners``), aioquic underneath.

One UDP port, TLS 1.3 with the listener's certificate, ALPN ``gtl/1``. Per connection
(``transports.quic.wire`` has the stream roles and codes):

* **The control stream** (the client's first bidirectional stream) runs a server ``GTLConnection``:
  the hello exchange, whose token goes to ``authenticate`` (a refusal is a connection-level
  ``AUTH_FAILED`` error on that stream, then the connection closes with the same code), then the
  provider list. No hello within ``limits.header_timeout`` seconds: the connection is closed.
* **Each later stream is one session**: its ``completion_request`` runs with ``run_session`` (exactly
  one terminal event, the ledger's ending) and the events go back on the stream, which ends (FIN)
  with the terminal event. A ``cancel`` frame, a reset of the stream or a stop-sending request
  cancels the session. A stream that opens before hello, or carries anything but one request (then
  perhaps one cancel), gets an ``INVALID_REQUEST`` error and is closed; the third such stream closes
  the connection. A session beyond ``limits.max_sessions_per_connection`` (or the principal's
  ``max_sessions_per_principal``) ends with a retryable ``OVERLOADED`` error once its ledger row and
  audit record are written (``gateway.refusals``), counted against neither cap.
* **Back-pressure**: each session awaits its own stream's drain after every event (``QuicPeer.drain``),
  so a client that reads one session slowly holds that session's engine stream only. A session stream
  on which none of what waits goes out for ``limits.write_timeout`` seconds (the client grants it no
  flow-control credit, for the stream or the connection) is reset and its session cancelled, with one
  ``INFO`` line: a client that stops reading no longer holds its sessions, their provider streams and
  their places in the session caps. A slow reader is not cut: each byte sent starts the count again.
* **Address validation**: a client's first Initial is answered with a Retry (aioquic's stateless
  token), so datagrams from forged addresses never create a connection: without it each forged
  1,200-byte Initial held a connection (about 80 KB) until ``header_timeout``. It costs a round trip
  per new connection.
* **Limits**: ``max_frame_bytes`` per frame; ``max_connections_per_address`` (counted once the
  handshake proved the address; one more is closed with ``OVERLOADED``); ``header_timeout`` for the
  handshake and hello together; QUIC's idle timeout is ``limits.idle_timeout`` (the client's pings and
  shorter offer usually make it 3 s: ``transports.quic.config``), and a connection that runs no session
  and asks no query for ``limits.idle_timeout`` seconds is closed.
* **Shutdown**: once ``shutdown.stopping`` is set, new connections are closed with
  ``PROVIDER_UNAVAILABLE`` after their handshake and new sessions refused with it (each with its ledger
  row and audit record, ``gateway.refusals``); running sessions
  get ``shutdown.grace`` seconds, then are cancelled (each client reads ``CANCELLED``, each ledger row
  completes); then every connection closes and ``serve_quic`` returns. Cancelling it skips the grace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Any

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.session import SessionEnd, run_session
from gtl_nb.gateway.listeners import MIN_REQUEST_RATE, Limits, ListenerSettings, Ready, Shutdown
from gtl_nb.gateway.offload import InTurn
from gtl_nb.gateway.permissions import completion_context, visible_providers
from gtl_nb.gateway.principal_sessions import sessions_of
from gtl_nb.gateway.queries import MAX_QUERIES, QueryDesk
from gtl_nb.gateway.refusals import GatewayStopping, TokenUncheckable, recorded_refusal
from gtl_nb.gateway.sessions import Authenticate, authenticated_or_logged, cancel_started, fitted, without_a_token
from gtl_nb.log import get_logger
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.protocol.connection_events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    ConnectionTerminated,
    HandshakeComplete,
    ProtocolViolation,
)
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    GTLError,
    InternalError,
    InvalidRequestError,
    OverloadedError,
    ProviderUnavailableError,
)
from gtl_nb.protocol.frames import ReadFrame
from gtl_nb.protocol.messages import Cancel, CompletionRequest, Error, Query, StreamEvent
from gtl_nb.protocol.session import SessionStateMachine
from gtl_nb.transports.conventions import PROVIDERS_END
from gtl_nb.transports.quic.config import FLUSH_WAIT, server_configuration
from gtl_nb.transports.quic.peer import QuicPeer
from gtl_nb.transports.quic.wire import (
    ALPN,
    CONTROL_STREAM_ID,
    STREAM_CANCEL,
    STREAM_DONE,
    RequestInput,
    RequestStream,
    StreamViolation,
    close_code,
    frame,
    is_terminal,
)
from gtl_nb.words import counted

__all__ = ["MAX_BAD_STREAMS", "serve_quic"]

log = get_logger("gateway.quic")
MAX_BAD_STREAMS = 3
"""Bad streams (and bad control frames) after which a connection is closed."""


async def serve_quic(
    engine: Engine,
    listener: ListenerSettings,
    *,
    authenticate: Authenticate,
    limits: Limits,
    shutdown: Shutdown,
    ready: Ready,
) -> None:
    """Serve GTL over QUIC on ``listener`` until shutdown (see the module docstring)."""
    from aioquic.asyncio.server import QuicServer

    if listener.tls is None:
        raise ConfigurationError("[gateway.quic] needs tls_cert and tls_key: QUIC always runs over TLS 1.3")
    listener.tls.say_if_out_of_date()
    try:
        configuration = server_configuration(listener.tls.cert, listener.tls.key, idle_timeout=limits.idle_timeout)
    except ConfigurationError as exc:
        raise listener.tls.refusal(exc) from None
    gateway = _Gateway(engine, authenticate=authenticate, limits=limits, shutdown=shutdown)
    loop = asyncio.get_running_loop()
    try:
        transport, server = await loop.create_datagram_endpoint(
            # retry: a first Initial is answered with a stateless Retry, so a flood of forged Initials (any
            # source address) creates no connection; state begins once the client proved its address
            lambda: QuicServer(configuration=configuration, create_protocol=gateway.accept, retry=True),
            local_addr=(listener.host, listener.port),
        )
    except OSError as exc:
        raise listener.cannot_listen(exc, udp=True) from None
    try:
        ready(listener.url(transport.get_extra_info("sockname")[1]))
        await shutdown.wait()
        await gateway.stop(shutdown.grace)
    except asyncio.CancelledError:
        await gateway.stop(0.0)
        raise
    finally:
        server.close()


MAX_ARRIVING_FRAMES = 4
"""Frames' worth of requests (``max_frame_bytes`` each) a connection's session streams may hold together
before each is whole: without a bound, 128 streams each sending most of a frame held a GiB."""
LATE_RECHECK = 0.1
"""Seconds before a stream past its request deadline is looked at again while its frame is being decoded
in a worker thread (``offload.InTurn``): it arrived whole, so it is not late unless the decode found none."""


class _Gateway:
    """Every connection of one listener, the sessions they run, and the limits across them."""

    def __init__(self, engine: Engine, *, authenticate: Authenticate, limits: Limits, shutdown: Shutdown) -> None:
        self.engine = engine
        self.authenticate = authenticate
        self.limits = limits
        self.shutdown = shutdown
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._per_address: Counter[str] = Counter()
        self._stopped = False

    @property
    def stopping(self) -> bool:
        return self._stopped or self.shutdown.is_stopping

    def accept(self, quic: Any, **_: Any) -> QuicPeer:
        """aioquic's ``create_protocol``: a new connection's peer, served by a ``_Connection``."""
        peer = QuicPeer(quic)
        self.connections.add(_Connection(self, peer))
        return peer

    def arrived(self, host: str) -> GTLError | None:
        """Count a connection from ``host``; the reason to refuse it, if any."""
        self._per_address[host] += 1
        if self.stopping:
            return ProviderUnavailableError("the gateway is shutting down; connect again (to another replica)")
        if self._per_address[host] > self.limits.max_connections_per_address:
            limit = self.limits.max_connections_per_address
            return OverloadedError(f"{limit} connections from your address are open already; reuse one")
        return None

    def left(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if connection.counted and connection.host is not None:
            self._per_address[connection.host] -= 1
            if self._per_address[connection.host] <= 0:
                del self._per_address[connection.host]

    async def stop(self, grace: float) -> None:
        """Refuse what is new, give running sessions ``grace`` seconds, cancel the rest, close everything."""
        self._stopped = True
        if self.tasks and grace > 0:
            log.info("shutting down: %d sessions may finish within %g s", len(self.tasks), grace)
            await asyncio.wait(set(self.tasks), timeout=grace)
        running = {connection: list(connection.running) for connection in self.connections}
        for connection in running:
            connection.cancel_sessions("the gateway shutting down")
        await asyncio.gather(*self.tasks, return_exceptions=True)
        error = ProviderUnavailableError("the gateway is shutting down")
        closing = [connection.close(error, flush=streams) for connection, streams in running.items()]
        await asyncio.gather(*closing, return_exceptions=True)


def unread_answers_limit(max_frame_bytes: int) -> int:
    """Bytes of answers a client may leave unread on its control stream and still ask: as many answers of
    the largest size as it may have asked at once (``MAX_QUERIES``), and its provider list."""
    return (MAX_QUERIES + 1) * max_frame_bytes


class _Connection:
    """One client connection: its control stream, its session streams, its timers."""

    def __init__(self, gateway: _Gateway, peer: QuicPeer) -> None:
        self.gateway = gateway
        self.peer = peer
        self.limits = gateway.limits
        self.control = GTLConnection(
            "server", max_frame_bytes=self.limits.max_frame_bytes, features=self.limits.features
        )
        self.context: RequestContext | None = None
        self.refused_unasked: GTLError | None = None
        """A client that sent no hello, refused: each request it sent with its implied hello gets this as its
        own error on the control stream, then the connection ends with it (``welcome``, ``_ControlStream``)."""
        self.host: str | None = None
        self.where = "?"
        self.counted = False  # in the gateway's count of connections per address
        self.running: dict[int, _Session] = {}
        self.arriving = 0  # bytes of requests not yet whole, over every session stream
        # every stream's reads in turn, to stop at the connection's end (weak: a stream forgotten goes)
        self.readers: weakref.WeakSet[InTurn[Any]] = weakref.WeakSet()
        self.requests_arriving: weakref.WeakSet[_Session] = weakref.WeakSet()  # counted in ``arriving``
        self.bad_streams = 0
        self.cancel_reason = "the client"
        self._closing: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.desk = QueryDesk(
            gateway.engine,
            self._send_control,
            max_bytes=self.limits.max_frame_bytes,
            recheck=getattr(gateway.authenticate, "recheck", None),
        )
        peer.on_address = self._arrived
        peer.on_handshake = self._handshake
        peer.on_stream = self._stream
        peer.on_terminated = self._terminated
        peer.on_write_stalled = self._write_stalled
        peer.write_timeout = self.limits.write_timeout

    @property
    def closing(self) -> bool:
        """Whether the connection is closing (or closed): nothing more is written to it."""
        return self._closing is not None

    @property
    def over(self) -> bool:
        """Whether it is closing or QUIC ended it: a request decoded now starts nothing."""
        return self._closing is not None or self.peer.terminated is not None

    # -- the connection's life ---------------------------------------------------------------------

    def _arrived(self, address: Any) -> None:
        self.host = str(address[0])
        self.where = f"[{self.host}]:{address[1]}" if ":" in self.host else f"{self.host}:{address[1]}"
        self._arm(self.limits.header_timeout, self._no_hello)  # the handshake and hello together

    def _handshake(self, alpn: str | None) -> None:
        # counted once the handshake proved the address (a spoofed one never gets this far)
        assert self.host is not None
        self.counted = True
        refusal = self.gateway.arrived(self.host)
        if refusal is None and alpn != ALPN:
            refusal = InvalidRequestError(f"this gateway speaks ALPN {ALPN}, not {alpn!r}")
        if refusal is not None:
            log.info("refused a connection from %s: %s", self.where, refusal.message)
            self.close(refusal)

    def _no_hello(self) -> None:
        if self.context is None:
            log.info("client %s sent no hello within %g s", self.where, self.limits.header_timeout)
            self.close(ProviderUnavailableError(f"no hello within {self.limits.header_timeout:g} s"))

    def _idle(self) -> None:
        if self.running:
            return
        if self.desk.busy:  # a query still being answered: its client is not idle
            self._arm(self.limits.idle_timeout, self._idle)
            return
        log.info("closing the idle connection from %s", self.where)
        self.close(None)

    def _arm(self, delay: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def reading_failed(self, error: GTLError) -> None:
        """A stream's reads in turn (``offload.InTurn``) stopped: too much arrived while a large frame was
        decoded, or the decode raised. The connection ends, as a callback that raised on the loop ends it."""
        log.warning("client %s: %s; closing", self.where, error.message)
        self.close(error)

    def _stop_reading(self) -> None:
        """Drop every stream's reads still waiting for a decode in a worker: the connection is over."""
        for reads in list(self.readers):
            reads.cancel()
        self.readers.clear()
        for session in list(self.requests_arriving):  # (a request whose decode was dropped: its timer too)
            session._stop_counting()

    def _terminated(self, event: Any) -> None:
        """QUIC ended the connection (the client closed it, went silent, or our own close completed)."""
        self._stop_reading()
        if self._timer is not None:
            self._timer.cancel()
        self.cancel_sessions(self.cancel_reason)
        self.gateway.left(self)

    def _write_stalled(self, stream_id: int) -> None:
        """A session's stream took none of what waits for ``write_timeout`` seconds: end it (``QuicPeer``)."""
        session = self.running.get(stream_id)
        if session is None or self._closing is not None:  # (only a running session waits on its stream)
            return
        timeout = self.limits.write_timeout
        log.info(
            "client %s: stream %d read none of what was written to it for %g s (%d bytes wait); session cancelled",
            self.where,
            stream_id,
            timeout,
            self.peer.unsent(stream_id),
        )
        session.stalled(f"the gateway: the client read none of its answer for {timeout:g} s")

    def cancel_sessions(self, reason: str) -> None:
        self.cancel_reason = reason
        for session in list(self.running.values()):
            session.cancel()
        self.desk.cancel_all()

    def ask(self, query: Query) -> None:
        """Answer a ``query`` from the control stream (``gateway.queries``) — unless the client has left
        more answers unread there than it could have asked for at once (``unread_answers_limit``): it asks
        on while reading nothing, and QUIC's flow control would not stop it (its windows grow with what
        arrives), so each answer would stay in the gateway's memory. The connection is closed instead."""
        if self.context is None or self._closing is not None:
            return
        unread = self.peer.unsent(CONTROL_STREAM_ID)
        if unread > unread_answers_limit(self.limits.max_frame_bytes):
            log.info("client %s: %d bytes of answers unread on its control stream; closing", self.where, unread)
            self.close(OverloadedError(f"{unread:,} bytes of query answers are unread: read them before asking more"))
            return
        self.desk.ask(query, self.context)
        if not self.running:  # a query is activity, as on every other transport: the idle count starts again
            self._arm(self.limits.idle_timeout, self._idle)

    def _send_control(self, message: Any) -> None:
        if self._closing is not None or self.control.closed:
            raise ProviderUnavailableError("the connection is closing")
        self.peer.write(CONTROL_STREAM_ID, self.control.send(message))

    def close(self, error: GTLError | None, *, flush: Iterable[int] = ()) -> asyncio.Future[None]:
        """End the connection: say why on the control stream, end the sessions, then close QUIC once the
        last frames — those of the running sessions and of the streams in ``flush`` — were acknowledged."""
        if self._closing is None:
            self._stop_reading()
            if self._timer is not None:
                self._timer.cancel()
            self.peer.write(CONTROL_STREAM_ID, self.control.close(error), end=True)
            sessions = list(self.running.values())
            streams = [CONTROL_STREAM_ID, *flush, *(session.stream_id for session in sessions)]
            self.cancel_sessions(self.cancel_reason)
            self._closing = asyncio.ensure_future(self._close(error, sessions, streams))
        return self._closing

    async def _close(self, error: GTLError | None, sessions: list[_Session], streams: list[int]) -> None:
        await asyncio.gather(*(session.task for session in sessions if session.task), return_exceptions=True)
        await self.peer.flushed(streams, FLUSH_WAIT)  # the last frames (CANCELLED, AUTH_FAILED) reach the client
        if self.peer.terminated is None:
            self.peer.close_with(*close_code(error))

    # -- streams -------------------------------------------------------------------------------------

    def _stream(self, stream_id: int) -> Any:
        if self._closing is not None:
            return None
        if stream_id == CONTROL_STREAM_ID:
            return _ControlStream(self)
        if stream_id % 4 == 0:  # a client-initiated bidirectional stream
            return _Session(self, stream_id)
        self.peer.stop(stream_id, STREAM_DONE)
        self.bad(InvalidRequestError("GTL over QUIC uses bidirectional streams only"))
        return None

    def welcome(self, event: HandshakeComplete) -> None:
        try:
            context = authenticated_or_logged(self.gateway.authenticate, event.token, self.where)
        except AuthenticationError as exc:
            # a client that sent no hello (so no token: QUIC has no header) is told where one goes — first as
            # the answer to each request that came with its implied hello (``_ControlStream._apply``)
            if not event.implicit:
                self.close(exc)
            else:
                self.refused_unasked = exc if isinstance(exc, TokenUncheckable) else without_a_token(exc, "quic")
            return
        except Exception:  # a bug in the hook must not leave the connection half-open
            log.exception("authenticating client %s failed", self.where)
            self.close(InternalError("the gateway could not check the client's token"))
            return
        self.context = dataclasses.replace(context, peer=self.where, transport="quic")
        if not event.implicit:  # a client that sent no hello asked for no provider list
            for info in visible_providers(self.gateway.engine, self.context):
                self.peer.write(CONTROL_STREAM_ID, self.control.send(fitted(info, self.limits.max_frame_bytes)))
            self.peer.write(CONTROL_STREAM_ID, self.control.send(PROVIDERS_END))
        self._arm(self.limits.idle_timeout, self._idle)

    def start(self, session: _Session, request: CompletionRequest) -> None:
        sid = request.session_id
        if self.context is None:
            error = InvalidRequestError(
                "a session stream opened before the hello exchange on the control stream (the connection's first "
                'stream: send {"type":"hello","versions":["1.0"],"token":"..."} there first, the token where the '
                "gateway needs one)"
            )
            session.refuse(error.to_event(sid))
            self.bad(error)
        elif self.gateway.stopping:  # recorded too (gateway.refusals); the stop waits for its row
            session.refuse_recorded(request, self.context, GatewayStopping())
        elif isinstance(checked := completion_context(self.context, self.gateway.authenticate), GTLError):
            session.refuse_recorded(request, self.context, checked)  # before the caps: a revoked token is told so
        elif len(self.running) >= self.limits.max_sessions_per_connection:
            running = counted(len(self.running), "session")
            message = f"this connection already runs {running}; start more when some have ended"
            session.refuse_recorded(request, self.context, OverloadedError(message))
        else:
            context, limit = checked, self.limits.max_sessions_per_principal
            self.context = context  # (narrowed, when a reload took deployments from the policy's defaults)
            try:  # counted until its task is done (gateway.principal_sessions)
                sessions_of(self.gateway.engine).start(context.principal, limit, lambda: session.run(request, context))
            except OverloadedError as exc:
                session.refuse_recorded(request, context, exc)
                return
            if self._timer is not None:
                self._timer.cancel()
            self.running[session.stream_id] = session

    def ended(self, session: _Session) -> None:
        if self.running.pop(session.stream_id, None) is not None and not self.running and self._closing is None:
            self._arm(self.limits.idle_timeout, self._idle)

    def violation(self, session: _Session, violation: StreamViolation) -> None:
        log.warning("client %s sent a bad stream: %s", self.where, violation.error.message)
        if session.task is not None:
            # its session runs: it is cancelled with INVALID_REQUEST, its row completed with that error too
            # (SessionEnd.end_with) — unless the engine had decided its end already (an answer already whole
            # is delivered, as its row says), so the client and the row never tell two ends
            assert session.machine is not None
            sid, reason = session.machine.session_id, violation.error.message
            session.ending.end_with(Error(session_id=sid, code="INVALID_REQUEST", message=reason))
            session.cancel_reason = f"the client, which sent a bad frame on its stream ({violation.error.message})"
            session.cancel()
        elif session.machine is None:  # (else its request is being refused with its row: that error ends it)
            session.refuse(InvalidRequestError(violation.error.message).to_event(violation.session_id or ""))
        self.bad(violation.error)

    def bad(self, error: GTLError) -> None:
        self.bad_streams += 1
        if self.bad_streams >= MAX_BAD_STREAMS:
            self.close(
                InvalidRequestError(
                    f"{self.bad_streams} bad streams from the client; closing (the last: {error.message})"
                )
            )


class _ControlStream:
    """The control stream's listener: bytes into the server ``GTLConnection``, its answers back out (a
    read completing a large frame is decoded in a worker thread, in turn: ``offload.InTurn``)."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        control = connection.control
        self.reads = InTurn(
            self._decoded,
            self._apply,
            lambda: control.reader.pending_bytes,
            name="gtl-quic-control",
            most_waiting=connection.limits.max_frame_bytes,
            failed=connection.reading_failed,
        )
        connection.readers.add(self.reads)

    def data_received(self, data: bytes, end: bool) -> None:
        self.reads.take(data, end)

    def _decoded(self, data: bytes, end: bool) -> tuple[list[ReadFrame], bool]:
        """The frames ``data`` completes (perhaps in a worker thread: only this stream feeds the reader)."""
        control = self.connection.control
        return (control.reader.feed(data) if data and not control.closed else []), end

    def _apply(self, decoded: tuple[list[ReadFrame], bool]) -> None:
        connection, control = self.connection, self.connection.control
        frames, end = decoded
        if connection.peer.terminated is not None:  # it ended while this read was in a worker
            return
        if frames:
            control.receive_frames(frames)
        if end:
            control.receive_data(b"")
        while (event := control.next_event()) is not NEED_DATA and event is not CONNECTION_CLOSED:
            if isinstance(event, HandshakeComplete):
                connection.welcome(event)
            elif isinstance(event, Query):
                connection.ask(event)
            elif isinstance(event, CompletionRequest) and connection.refused_unasked is not None:
                # a client that sent no hello, refused: its request is told why (not where requests go)
                refusal = connection.refused_unasked.to_event(event.session_id)
                connection.peer.write(CONTROL_STREAM_ID, control.send(refusal))
            elif isinstance(event, CompletionRequest):  # sessions have streams of their own
                error = InvalidRequestError("a completion_request goes on a stream of its own, not the control stream")
                connection.peer.write(CONTROL_STREAM_ID, control.send(error.to_event(event.session_id)))
                connection.bad(error)
            elif isinstance(event, ProtocolViolation):
                log.warning("client %s broke the protocol: %s", connection.where, event.error)
            elif isinstance(event, ConnectionTerminated):
                connection.close(None if event.by_peer else event.error)
        if not control.closed:
            connection.peer.write(CONTROL_STREAM_ID, control.data_to_send())
        if connection.refused_unasked is not None:  # each request read with the implied hello was answered
            connection.close(connection.refused_unasked)

    def reset_received(self, code: int) -> None:
        self.reads.cancel()
        self.connection.close(None)

    def stop_received(self, code: int) -> None:
        self.reads.cancel()
        self.connection.close(None)


class _Session:
    """One session stream: its request, the task running it, its events written back in order."""

    def __init__(self, connection: _Connection, stream_id: int) -> None:
        self.connection = connection
        self.peer = connection.peer
        self.stream_id = stream_id
        self.max_frame_bytes = connection.limits.max_frame_bytes
        self.reader = RequestStream(self.max_frame_bytes)
        # a read completing a large frame is decoded in a worker thread; what comes after waits its turn
        self.reads = InTurn(
            lambda data, end: self.reader.feed(data, end),
            self._take,
            lambda: self.reader.pending_bytes,
            name=f"gtl-quic-read-{stream_id}",
            most_waiting=self.max_frame_bytes,
            failed=connection.reading_failed,
        )
        connection.readers.add(self.reads)
        self.machine: SessionStateMachine | None = None
        self.task: asyncio.Task[None] | None = None
        self.ending = SessionEnd()  # how its session ended, or the error the gateway ends it with (a bad stream)
        self.done = False  # the terminal event went out (or the stream was refused)
        self.client_done = False  # the client ended or reset its side
        self.cancel_reason: str | None = None  # who cancelled it, when not the connection's own reason
        self._cancelled = False
        self._deadline: float | None = None  # (loop time) by when the request must be whole
        self._late_timer: asyncio.TimerHandle | None = None
        self._arriving = 0  # bytes of this stream's request received so far, until it is whole

    # -- what the client sends ---------------------------------------------------------------------

    def data_received(self, data: bytes, end: bool) -> None:
        self.client_done = self.client_done or end
        if self.done:
            self._forget_when_over()
            return
        if self.machine is None and not self._arrives(len(data)):
            return
        self.reads.take(data, end)

    def _take(self, items: list[RequestInput]) -> None:
        if self.done or self.connection.over:  # refused, or the connection ended, while its read was in a worker
            self._stop_counting()
            return
        for item in items:
            if isinstance(item, CompletionRequest):
                self.connection.start(self, item)
            elif isinstance(item, Cancel):
                self.cancel()
            else:
                self.connection.violation(self, item)

    def _arrives(self, size: int) -> bool:
        """Count ``size`` more bytes of the request still arriving; ``False`` when the stream was refused.

        As for an HTTP request: the request must arrive within ``header_timeout`` of its first byte, each
        ``MIN_REQUEST_RATE`` bytes moving that on by a second (a stream trickling a byte every few
        seconds is refused, its bytes let go), and every stream of the connection together may hold at
        most ``MAX_ARRIVING_FRAMES`` frames' worth of requests not yet whole."""
        connection = self.connection
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + connection.limits.header_timeout
            self._late_timer = loop.call_at(self._deadline, self._late)
        self._deadline += size / MIN_REQUEST_RATE
        self._arriving += size
        connection.requests_arriving.add(self)
        connection.arriving += size
        limit = MAX_ARRIVING_FRAMES * self.max_frame_bytes
        if connection.arriving > limit:  # (a client may send several large requests at once: not a bad stream)
            why = f"the requests still arriving on this connection hold more than {limit:,} bytes; send this one later"
            self._give_up(Error(session_id="", code="OVERLOADED", message=why, retryable=True), bad=False)
            return False
        return True

    def _late(self) -> None:
        if self.machine is not None or self.done or self._deadline is None or self.connection.closing:
            return
        if self.connection.over:  # (it ended meanwhile: nothing to refuse, and no bad stream to count)
            return
        if self.reads.busy:  # a frame arrived whole and is being decoded: look again once it is
            self._late_timer = asyncio.get_running_loop().call_later(LATE_RECHECK, self._late)
            return
        now = asyncio.get_running_loop().time()
        if now < self._deadline:  # bytes came since the timer was set: wait until the deadline they earned
            self._late_timer = asyncio.get_running_loop().call_at(self._deadline, self._late)
            return
        why = (
            f"the request did not arrive within {self.connection.limits.header_timeout:g} s "
            f"(at least {MIN_REQUEST_RATE // 1024} KiB/s after that)"
        )
        self._give_up(Error(session_id="", code="TIMEOUT", message=why, retryable=True), bad=True)

    def _give_up(self, refusal: Error, *, bad: bool) -> None:
        """Refuse the stream whose request is too slow or too much, and let go of what it holds; ``bad``:
        it counts toward the connection's bad streams."""
        log.info("client %s: %s; stream %d refused", self.connection.where, refusal.message, self.stream_id)
        self._stop_counting()
        self.reader = RequestStream(self.max_frame_bytes)
        self.reader.broken = True
        self.refuse(refusal)
        if bad:
            self.connection.bad(InvalidRequestError(refusal.message))

    def _stop_counting(self) -> None:
        """The request is whole (or refused): its bytes no longer count as arriving."""
        self.connection.arriving -= self._arriving
        self._arriving = 0
        self.connection.requests_arriving.discard(self)
        if self._late_timer is not None:
            self._late_timer.cancel()
            self._late_timer = None

    def reset_received(self, code: int) -> None:
        self.reads.later(self._reset)  # after a request still being decoded: it is then cancelled

    def _reset(self) -> None:
        self.client_done = True
        self._stop_counting()
        self.cancel()  # the client gave up on the session
        if self.task is None:
            self.peer.forget(self.stream_id)
        self._forget_when_over()

    def stop_received(self, code: int) -> None:
        self.reads.later(self.cancel)

    def _forget_when_over(self) -> None:
        if self.done and self.client_done:
            self.peer.forget(self.stream_id)  # both sides have ended: late bytes are dropped

    def stalled(self, reason: str) -> None:
        """Its client reads nothing of the stream: cancel the session and reset the stream, so that what waits
        in QUIC's buffers for it is let go (the client gets no terminal event: it reads nothing)."""
        self.cancel_reason = reason
        self.cancel()
        self.done = True  # nothing more is written: the stream is reset
        self.peer.reset(self.stream_id, STREAM_CANCEL)

    def cancel(self) -> None:
        """Cancel the session's task once (a second cancel could cut short its ledger row's completion)."""
        if self.task is not None and not self._cancelled:
            self._cancelled = True
            cancel_started(self.task)

    # -- what the gateway sends --------------------------------------------------------------------

    def run(self, request: CompletionRequest, context: RequestContext) -> asyncio.Task[None]:
        """Start the session's task (returned)."""
        self._stop_counting()
        self.machine = SessionStateMachine(request.session_id)
        self.task = task = asyncio.get_running_loop().create_task(
            self._run(request, context), name=f"gtl-quic-{request.session_id}"
        )
        self.connection.gateway.tasks.add(task)
        return task

    async def _run(self, request: CompletionRequest, context: RequestContext) -> None:
        try:
            await run_session(
                self.connection.gateway.engine,
                request,
                context,
                self.send,
                drain=self.drain,
                finish=self.finish,
                cancelled_by=lambda: self.cancel_reason or self.connection.cancel_reason,
                ending=self.ending,
            )
        except Exception:  # a bug, or an event this stream cannot carry: already ended with INTERNAL
            log.exception("session %r failed in the gateway", request.session_id)
        finally:
            self.connection.gateway.tasks.discard(self.task)  # type: ignore[arg-type]
            self.connection.ended(self)

    def send(self, event: StreamEvent) -> None:
        """Write one event (the terminal one with FIN); raises for an event out of order or too large."""
        if self.done:
            return
        assert self.machine is not None
        data = frame(event, self.max_frame_bytes)
        self.machine.advance(event)
        self.done = is_terminal(event)
        self.peer.write(self.stream_id, data, end=self.done)
        self._forget_when_over()

    async def drain(self) -> None:
        await self.peer.drain(self.stream_id)

    def finish(self, event: StreamEvent) -> None:
        """The terminal event ``run_session`` decided itself (a cancel, a bug): never raises."""
        try:
            self.send(event)
        except GTLError as exc:
            log.debug("could not end session %r: %s", event.session_id, exc)

    def refuse_recorded(self, request: CompletionRequest, context: RequestContext, error: GTLError) -> None:
        """Refuse a whole ``request`` at a session cap: its ledger row and audit record are written, then
        ``error`` ends the stream (``gateway.refusals``). It runs nothing and counts against neither cap;
        what bounds these recordings is the stream itself, open until its error goes out — QUIC lets a
        connection hold only so many (aioquic: 128, a new one granted as one ends)."""
        self._stop_counting()
        self.machine = SessionStateMachine(request.session_id)  # the request is whole: later bytes are not arriving
        gateway = self.connection.gateway
        task = asyncio.get_running_loop().create_task(
            self._refused(request, context, error), name=f"gtl-quic-refused-{request.session_id}"
        )
        gateway.tasks.add(task)  # a shutdown waits for it, as for a session
        task.add_done_callback(gateway.tasks.discard)

    async def _refused(self, request: CompletionRequest, context: RequestContext, error: GTLError) -> None:
        self.refuse(await recorded_refusal(self.connection.gateway.engine, request, context, error))

    def refuse(self, event: Error) -> None:
        """End the stream with ``event`` without running anything (and cancel what runs, if anything)."""
        self._stop_counting()
        self.cancel()
        if not self.done:
            self.done = True
            self.peer.write(self.stream_id, frame(event), end=True)
        self.peer.stop(self.stream_id, STREAM_DONE)  # what else the client sends is not read
