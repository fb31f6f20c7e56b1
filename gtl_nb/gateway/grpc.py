"""The gateway over gRPC: ``gtl.proto``'s ``GTL`` service on one TCP port (``serve_grpc``).

``serve_grpc`` follows the listener contract of ``gateway.listeners``. Its three calls:

* ``Session`` (bidirectional) — one GTL connection per call: ``GatewayConnection`` over a
  ``GrpcStreamChannel`` (``transports/grpc/stream.py``), so hello, many sessions, cancels, bad frames
  and back-pressure work as on every other transport. The call's initial metadata announces the frame
  limit (``gtl-max-frame-bytes``). The client's half-close (the end of its requests) lets the sessions
  and queries under way finish, then the call ends ``OK`` (``GatewayConnection.client_done_sending``).
* ``Complete`` (unary) — one session through ``engine.session.run_session``; the ``CompletionResult``
  holds every event, the last one its ``done`` or ``error``. Its ``gtl-version`` metadata is negotiated
  as ``Session``'s (none spoken: ``INVALID_ARGUMENT``), and its initial metadata names the version
  agreed. One beyond the principal's ``max_sessions_per_principal`` is ``RESOURCE_EXHAUSTED`` /
  ``OVERLOADED``, once its ledger row and audit record are written (``gateway.refusals``).
* ``ListProviders`` (unary) — ``engine.provider_info()``.

**Tokens** travel in the call metadata, ``authorization: Bearer <token>``; on ``Session`` hello's
token counts when the metadata has none. A token ``authenticate`` refuses is status
``UNAUTHENTICATED`` on the unary calls; on ``Session`` the connection ends with GTL's connection-level
``AUTH_FAILED`` error, then the same status. Every refusal's details start with the GTL code
(``"AUTH_FAILED: …"``, ``stream.status_details``), so a client rebuilds the same error class.

**Limits** (``Limits``), and who enforces each:

=============================== =================================================================
``max_frame_bytes``             each JSON frame of a ``Session``: ``GTLConnection`` (a larger one
                                ends its session with ``INVALID_REQUEST``; the client refuses it
                                before sending, from the announced limit). ``Complete``: a request
                                over the limit is ``RESOURCE_EXHAUSTED`` / ``INVALID_REQUEST``. gRPC's
                                ``max_receive_message_length`` (the limit + ``MESSAGE_SLACK``) bounds
                                memory: a message beyond it ends the call with ``RESOURCE_EXHAUSTED``
``max_sessions_per_connection`` ``GatewayConnection``, per ``Session`` call (``OVERLOADED``, with
                                its ledger row); ``Complete`` calls on one HTTP/2 connection:
                                ``grpc.max_concurrent_streams``, which holds a call back in the
                                client rather than refusing it
``max_connections_per_address`` open calls per client IP (``context.peer()``, or the client a trusted
                                proxy forwards), whichever the method: a ``Session`` (a GTL
                                connection, as a WebSocket is) and a ``Complete`` or ``ListProviders``
                                (one request, as an HTTP connection carries) each count one; one more
                                is ``RESOURCE_EXHAUSTED`` / ``OVERLOADED``, before its request is read
                                (a connection refused: no ledger row). HTTP/2 connections with no
                                call are not counted per address (gRPC shows the gateway calls, not
                                connections): ``header_timeout`` and ``idle_timeout`` close them
``max_connections``             gRPC's ``grpc.max_allowed_incoming_connections``: this listener's share
                                (``gateway.connection_budget``) of HTTP/2 connections, counted from
                                accept whether they carry a call or not; one more is closed at once
``header_timeout``              gRPC's ``grpc.server_handshake_timeout_ms`` (TLS and the HTTP/2
                                preface); the hello of a ``Session``: ``GatewayConnection``; the
                                request message of ``Complete`` and ``ListProviders``: here, within
                                ``header_timeout`` plus 1 s per 32 KiB it may hold (``DEADLINE_EXCEEDED``
                                / ``TIMEOUT``), and a call that ends without one is ``INVALID_ARGUMENT``
``idle_timeout``                gRPC's ``grpc.max_connection_idle_ms`` (an HTTP/2 connection with no
                                call); a ``Session`` that runs nothing: ``GatewayConnection``
``write_timeout``               a ``Session`` whose write to the client has waited on HTTP/2 flow
                                control that long ends as a client that left, its sessions
                                ``cancelled`` (``GrpcStreamChannel``); the HTTP/2 stream stays until
                                the client ends it (grpc.aio cannot reset it from here)
=============================== =================================================================

gRPC keepalive pings (every ``KEEPALIVE_SECONDS``, answered within ``KEEPALIVE_TIMEOUT``) find a client
that vanished without closing its socket; its sessions are then cancelled and their rows completed.

**Compression.** gRPC accepts gzip-compressed requests by itself. Answers are compressed only for a
call whose metadata asks for it (``gtl-compression: gzip``, which ``grpc://…?compression=gzip`` sends);
nothing is ever compressed by default.

**Shutdown.** Once ``shutdown.stopping`` is set the server takes no new call (gRPC answers
``UNAVAILABLE``), running calls may finish for ``shutdown.grace`` seconds, and then their work is
cancelled: each session ends with a ``CANCELLED`` error the client receives and its ledger row is
complete before ``serve_grpc`` returns. Cancelling ``serve_grpc`` does the same without the grace —
also when a graceful stop is under way (the gateway's second signal): what is left of the grace is
skipped, and ``serve_grpc`` raises ``CancelledError`` once every session ended. The grace of a
``Session``'s connection is kept here, not by its ``GatewayConnection`` (``_SessionShutdown``), so
that cancellation can cut it short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import unquote

import grpc
import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.loop import within
from gtl_nb.engine.session import run_session
from gtl_nb.gateway.connection_budget import listener_share
from gtl_nb.gateway.listeners import Limits, ListenerSettings, Ready, Shutdown, Signal, TlsFiles
from gtl_nb.gateway.offload import OFF_LOOP_PROTO_BYTES, OffloadedFrames, converted
from gtl_nb.gateway.permissions import completion_refusal, visible_providers
from gtl_nb.gateway.principal_sessions import sessions_of
from gtl_nb.gateway.proxies import peer_text
from gtl_nb.gateway.refusals import GatewayStopping, TokenUncheckable, recorded_refusal
from gtl_nb.gateway.sessions import Authenticate, GatewayConnection, HeaderTokenFirst, authenticated_or_logged
from gtl_nb.ids import unique_hex
from gtl_nb.log import get_logger
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    GTLError,
    InvalidRequestError,
    OverloadedError,
    ProtocolError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    VersionMismatchError,
)
from gtl_nb.protocol.messages import CompletionRequest, Error, StreamEvent
from gtl_nb.protocol.negotiation import (
    IMPLIED_VERSION,
    SUPPORTED_VERSIONS,
    VERSION_HEADER,
    header_value,
    negotiate_header,
)
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc
from gtl_nb.transports.grpc.mapping import from_proto, to_frame, to_proto
from gtl_nb.transports.grpc.stream import (
    BATCH_KEY,
    BATCH_VALUE,
    COMPRESSION_KEY,
    MAX_FRAME_KEY,
    MESSAGE_SLACK,
    GrpcStreamChannel,
    status_details,
)

__all__ = ["GTLServicer", "serve_grpc", "server_options"]

log = get_logger("gateway.grpc")

SERVICE = "gtl.v1.GTL"
KEEPALIVE_SECONDS = 60
KEEPALIVE_TIMEOUT = 20
CANCEL_WAIT = 5.0
"""Seconds the cancelled calls of a shutdown get to send their last events before gRPC aborts them."""
LATE_MARGIN = 1.0
"""Seconds a Session's connection gets, after the grace, to end its own sessions."""


MAX_METADATA_BYTES = 64 * 1024
"""Largest call metadata accepted (the token travels there)."""
MIN_MESSAGE_RATE = 32 * 1024
"""Bytes a second the request message of a unary call must arrive at, past ``header_timeout``: the HTTP
listener's body rate (``gateway.http.MIN_REQUEST_RATE``). gRPC shows no partial message, so the deadline is
the one for the largest message it takes: ``header_timeout`` + (``max_frame_bytes`` + ``MESSAGE_SLACK``) /
this rate."""


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """The gRPC server options that apply ``limits`` (see the module docstring)."""
    options = [
        ("grpc.max_receive_message_length", limits.max_frame_bytes + MESSAGE_SLACK),
        # an oversized token is refused by the token check (AUTH_FAILED), not by gRPC's 8 KiB default
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
        ("grpc.server_handshake_timeout_ms", _ms(limits.header_timeout)),
        ("grpc.max_connection_idle_ms", _ms(limits.idle_timeout)),
        # calls at once on one HTTP/2 connection: a client opening streams without end holds no more than this
        ("grpc.max_concurrent_streams", limits.max_sessions_per_connection),
        ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT * 1000),
        # the client pings every 30 s to find a dead gateway; allow that (gRPC's default refuses it)
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]
    share = listener_share(limits.max_connections, limits.tcp_listeners)
    if share:
        # HTTP/2 connections at once, counted from accept (a handshake under way too), whether they carry a
        # call or not: one more is closed as soon as it is accepted. Without it idle connections took every
        # descriptor of the process (gateway.connection_budget)
        options.append(("grpc.max_allowed_incoming_connections", share))
    return options


class _SessionShutdown(Shutdown):
    """One ``Session`` connection's view of its listener's shutdown.

    It stops (new sessions are refused) with the listener — the same ``stopping`` signal — but its
    grace is the listener's: it is over when ``grace_over`` is set, at the end of the listener's grace
    or at once when ``serve_grpc`` is cancelled; ``GatewayConnection`` then cancels what still runs,
    "cancelled by the gateway shutting down", and closes (as it does, sooner, once it runs no session).
    A connection handed a grace of its own would count it from when it heard of the shutdown.
    """

    def __init__(self, listener: Shutdown, grace_over: Signal) -> None:
        super().__init__(grace=0.0, stopping=listener.stopping)
        self.grace_over = grace_over

    def after_grace(self, callback: Callable[[], object]) -> Callable[[], None]:
        return self.grace_over.when_set(callback)


class GTLServicer(pb_grpc.GTLServicer):
    """The ``GTL`` service over one engine (see the module docstring).

    The handlers take and return serialized messages (``methods()``), so a malformed message is
    read by the mapping — a bad frame or ``INVALID_REQUEST`` — rather than failing inside gRPC.
    ``Complete`` and ``ListProviders`` are unary on the wire but served as request streams: grpc.aio
    never answers a unary call whose request stream ends without a message (nor one whose message
    never comes) and holds it for as long as the connection lives; read here, its one message has a
    deadline and its absence an answer (``_request_bytes``).
    """

    def __init__(self, engine: Engine, *, authenticate: Authenticate, limits: Limits) -> None:
        self.engine = engine
        self.limits = limits
        self.stopping = Shutdown()
        """This listener's own signal, begun by ``stop``: with the grace of the gateway's shutdown, or
        none when ``serve_grpc`` is cancelled (each connection then ends its sessions at once, saying why)."""
        self.grace_over = Signal()
        """Set by ``stop`` when the grace ended or was cut short: every ``Session`` ends what it still runs."""
        self._authenticate = authenticate
        self._connections: Counter[str] = Counter()  # open calls per client address (the per-address cap)
        self._calls: set[asyncio.Task[Any]] = set()  # the tasks running our calls (gRPC's own)
        self._work: dict[asyncio.Task[Any], bool] = {}  # what each call runs (-> is it a Session's connection)

    def methods(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers, bytes in and out."""
        return {
            "Session": grpc.stream_stream_rpc_method_handler(self.Session),
            "Complete": grpc.stream_unary_rpc_method_handler(self.Complete),
            "ListProviders": grpc.stream_unary_rpc_method_handler(self.ListProviders),
        }

    def attach(self, server: grpc.aio.Server) -> None:
        """Serve the ``GTL`` service on ``server``."""
        methods = self.methods()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
        server.add_registered_method_handlers(SERVICE, methods)

    # -- the calls -----------------------------------------------------------------------------------

    async def Session(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """One GTL connection: ``GatewayConnection`` over the call."""
        async with self._call(context):
            await self._session(context, self._client_of(context))

    async def _session(self, context: grpc.aio.ServicerContext, peer: str) -> None:
        bearer = _bearer(context)
        agreed = await _agreed_version(context)  # the spec's negotiation, for a client that sends no hello
        batches = _metadata(context, BATCH_KEY) == BATCH_VALUE  # several frames per message (ServerFrame.more)
        initial = [(MAX_FRAME_KEY, str(self.limits.max_frame_bytes)), (VERSION_HEADER, agreed or SPOKEN)]
        initial += [(BATCH_KEY, BATCH_VALUE)] if batches else []
        try:
            await context.send_initial_metadata(tuple(initial))
        except Exception:  # the client is gone already
            return
        channel = GrpcStreamChannel(
            context.read, context.write, role="server", peer=peer, where="client",
            max_json_bytes=self.limits.max_frame_bytes, batches=batches,
            convert=_read_message,  # a large message read into its frame in a worker thread (offload)
            write_timeout=self.limits.write_timeout,  # a client reading none of it is let go (stream.py)
        )  # fmt: skip
        refused: list[AuthenticationError] = []
        authenticate = HeaderTokenFirst(self._authenticate, bearer, refused.append)

        connection = GTLConnection(
            "server",
            max_frame_bytes=self.limits.max_frame_bytes,
            features=self.limits.features,
            implied_versions=[agreed or IMPLIED_VERSION],  # a client that sends no hello speaks these
        )
        shutdown = _SessionShutdown(self.stopping, self.grace_over)
        gateway = GatewayConnection(
            self.engine,
            OffloadedFrames(connection, channel),  # a large frame decoded in a worker thread
            authenticate=authenticate,
            max_sessions=self.limits.max_sessions_per_connection,
            limits=self.limits,
            shutdown=shutdown,
            transport="grpc",
        )
        channel.on_half_close = gateway.client_done_sending  # its sessions run to their end, then it closes
        try:
            await self._work_on(gateway.run(), connection=True)
        finally:
            await channel.aclose()
        if refused:  # the client read the error frame first; the status tells any other reader
            # a token the gateway could not check is its own trouble, as ListProviders and Complete say
            uncheckable = isinstance(refused[0], TokenUncheckable)
            context.set_code(grpc.StatusCode.UNAVAILABLE if uncheckable else grpc.StatusCode.UNAUTHENTICATED)
            context.set_details(status_details(refused[0]))

    async def Complete(self, requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        """One session; every event in one ``CompletionResult``."""
        async with self._call(context, read_when_stopping=True):
            agreed = await _agreed_version(context)  # the spec's negotiation, as Session's: no hello here either
            # the version agreed (else those spoken), as Session says it; sent first, also because grpc.aio
            # compresses a unary answer only when the headers went out before it
            await context.send_initial_metadata(((VERSION_HEADER, agreed or SPOKEN),))
            who = await self._context_of(context)
            message = await self._request_of(await self._request_bytes(context), context)
            if self.stopping.is_stopping:  # read, so that its refusal has its row (gateway.refusals)
                refusal = GatewayStopping("the gateway is shutting down; connect again")
                await recorded_refusal(self.engine, message, who, refusal)
                await _abort(context, grpc.StatusCode.UNAVAILABLE, refusal)
            events: list[StreamEvent] = []

            def cancelled_by() -> str:
                return "the gateway shutting down" if self.stopping.is_stopping else "the client"

            refused = completion_refusal(who)
            principals = sessions_of(self.engine)  # (gateway.principal_sessions: counted until the session ends)
            counted = refused is None  # refused for its token or scopes: runs nothing, outside the cap
            try:
                if counted:
                    principals.take(who.principal, self.limits.max_sessions_per_principal)
            except OverloadedError as exc:  # counted nowhere, but recorded first (gateway.refusals)
                await recorded_refusal(self.engine, message, who, exc)
                await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, exc)
            try:
                await self._work_on(
                    run_session(self.engine, message, who, events.append, cancelled_by=cancelled_by, refused=refused)
                )
            finally:
                if counted:
                    principals.release(who.principal)
            return _result(events).SerializeToString()

    async def ListProviders(self, requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        """Every deployment's ``provider_info``."""
        async with self._call(context) as compressing:
            if compressing:
                await context.send_initial_metadata(())
            who = await self._context_of(context)
            await self._request_bytes(context)  # empty (ListProvidersRequest has no field), but it must come
            infos = [to_proto(info) for info in visible_providers(self.engine, who)]
            return pb.ListProvidersResponse(providers=infos).SerializeToString()  # type: ignore[arg-type]

    # -- what every call does ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _call(
        self, context: grpc.aio.ServicerContext, *, read_when_stopping: bool = False
    ) -> AsyncIterator[bool]:
        """Refuse a call once shutdown began (unless ``read_when_stopping``: a ``Complete``, whose request is
        read and then refused with its ledger row), or one more than its address may hold open; count it
        while it runs; honour its compression wish (yields whether its answers are compressed: gRPC
        applies that when the headers go out)."""
        if self.stopping.is_stopping and not read_when_stopping:
            refusal = ProviderUnavailableError("the gateway is shutting down; connect again")
            await _abort(context, grpc.StatusCode.UNAVAILABLE, refusal)
        address = self._capped_address(context)
        if address is not None:
            most = self.limits.max_connections_per_address
            if self._connections[address] >= most:
                log.info("refused a call from %s: it has %d open (the cap)", address, most)
                refusal = OverloadedError(f"{address} already has {most} open connections (gRPC calls) to this gateway")
                await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            self._connections[address] += 1
        try:
            compressing = _metadata(context, COMPRESSION_KEY) == "gzip"
            if compressing:
                context.set_compression(grpc.Compression.Gzip)
            task = asyncio.current_task()
            assert task is not None
            self._calls.add(task)
            try:
                yield compressing
            finally:
                self._calls.discard(task)
        finally:
            if address is not None:
                self._connections[address] -= 1
                if self._connections[address] <= 0:
                    del self._connections[address]

    def _capped_address(self, context: grpc.aio.ServicerContext) -> str | None:
        """The client address a call counts against ``max_connections_per_address``; ``None`` for a
        trusted proxy's own call (no forwarded client: capping it would cap every client behind it)."""
        peer = _peer(context.peer())
        client = self._client_of(context)
        if client == peer and self.limits.trusted_proxies.trusts(_address(peer)):
            return None
        return _address(client)

    async def _work_on(self, work: Coroutine[Any, Any, None], *, connection: bool = False) -> None:
        """Run a call's work as a task the shutdown can cancel; cancelling the call cancels it too."""
        task = asyncio.ensure_future(work)
        self._work[task] = connection
        try:
            await asyncio.wait({task})  # returns, not raises, when the shutdown cancelled the task
        except asyncio.CancelledError:  # the call was cancelled: the client went away
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            del self._work[task]
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def _context_of(self, context: grpc.aio.ServicerContext) -> RequestContext:
        try:
            who = authenticated_or_logged(self._authenticate, _bearer(context), _peer(context.peer()))
        except AuthenticationError as exc:  # (a token the gateway could not check: UNAVAILABLE, retried)
            code = grpc.StatusCode.UNAVAILABLE if isinstance(exc, TokenUncheckable) else grpc.StatusCode.UNAUTHENTICATED
            await _abort(context, code, exc)
        return dataclasses.replace(who, peer=self._client_of(context), transport="grpc")

    def _client_of(self, context: grpc.aio.ServicerContext) -> str:
        """The call's peer, or the client a trusted proxy forwarded (``x-forwarded-for``, ``gateway.proxies``)."""
        peer = _peer(context.peer())
        trusted = self.limits.trusted_proxies
        if not trusted:
            return peer
        forwarded = [value for key, value in (context.invocation_metadata() or ()) if key == "x-forwarded-for"]
        client = trusted.client(_address(peer), ",".join(str(value) for value in forwarded) or None)
        if client is None or client == _address(peer):
            return peer
        return peer_text((client, 0)) or peer  # an IPv6 client in brackets: its last group is not a port

    async def _request_bytes(self, context: grpc.aio.ServicerContext) -> bytes:
        """The one request message of a unary call, arrived within its deadline (see ``MIN_MESSAGE_RATE``)."""
        largest = self.limits.max_frame_bytes + MESSAGE_SLACK
        deadline = self.limits.header_timeout + largest / MIN_MESSAGE_RATE
        try:
            data = await within(context.read(), deadline)  # (not wait_for: it could drop the call's reset)
        except asyncio.TimeoutError:
            refusal = ProviderTimeoutError(f"the request message did not arrive within {deadline:g} s")
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, refusal)
        if data is grpc.aio.EOF or data is None:
            refusal = InvalidRequestError("the call ended without its request message")
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, refusal)
        return bytes(data)

    async def _request_of(self, data: bytes, context: grpc.aio.ServicerContext) -> CompletionRequest:
        limit = self.limits.max_frame_bytes
        if len(data) > limit:
            refusal = InvalidRequestError(f"the request of {len(data)} bytes exceeds the maximum frame size of {limit}")
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        try:
            message = from_proto(pb.CompletionRequest.FromString(data), max_json_bytes=limit)
        except ProtocolError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError(exc.message))
        except Exception as exc:  # protobuf's own failures on outside bytes
            error = InvalidRequestError(f"malformed gtl.v1.CompletionRequest: {type(exc).__name__}")
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, error)
        if not message.session_id:  # no connection to keep ids apart: any unique id will do
            message = msgspec.structs.replace(message, session_id=unique_hex())
        return message  # type: ignore[no-any-return]

    # -- shutdown ------------------------------------------------------------------------------------

    async def stop(self, server: grpc.aio.Server, grace: float) -> None:
        """Take no new call; let running ones finish for ``grace`` s; cancel the rest; wait for them.

        Cancelled meanwhile (the gateway's second signal), it skips what is left of the grace and of its
        waits, still ends every session (its ``CANCELLED`` error sent, its ledger row complete), then
        raises ``CancelledError``.
        """
        self.stopping.grace = grace
        self.stopping.begin()
        stopping = asyncio.ensure_future(server.stop(grace + CANCEL_WAIT))  # gRPC aborts what is left then
        cancelled = False
        if grace > 0:
            cancelled = not await self._calls_end(grace)
        # each session still running sends its CANCELLED error and completes its ledger row; a Session's
        # GatewayConnection does that itself once told the grace is over (saying why), so its call gets a
        # moment before it is cancelled from here
        self.grace_over.set()
        for task in [task for task, connection in self._work.items() if not connection]:
            task.cancel()
        cancelled = not await self._calls_end(LATE_MARGIN) or cancelled
        for task in list(self._work):
            task.cancel()
        cancelled = not await self._calls_end(CANCEL_WAIT) or cancelled
        if cancelled:
            await server.stop(0)  # a call that has not ended by now is aborted, not given gRPC's grace
        await stopping
        if cancelled:
            raise asyncio.CancelledError

    async def _calls_end(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the running calls to end; ``False`` when cancelled meanwhile (the
        wait is cut short, not the shutdown: ``stop`` goes on to end what still runs)."""
        if not self._calls:
            return True
        try:
            await asyncio.wait(set(self._calls), timeout=timeout)
        except asyncio.CancelledError:
            return False
        return True


async def serve_grpc(
    engine: Engine,
    listener: ListenerSettings,
    *,
    authenticate: Authenticate,
    limits: Limits,
    shutdown: Shutdown,
    ready: Ready,
) -> None:
    """Serve the ``GTL`` service on ``listener`` until ``shutdown`` (or cancellation; see the module docstring)."""
    servicer = GTLServicer(engine, authenticate=authenticate, limits=limits)
    server = grpc.aio.server(options=server_options(limits))
    servicer.attach(server)
    port = _bind(server, listener)
    graceful = False
    try:
        await server.start()  # (inside: a stop while it starts still stops the server, on this loop)
        ready(listener.url(port))
        await shutdown.wait()
        graceful = True
    finally:
        await servicer.stop(server, shutdown.grace if graceful else 0.0)


def _bind(server: grpc.aio.Server, listener: ListenerSettings) -> int:
    """Add the listener's port to ``server``; the port bound (port 0 picks one)."""
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    address = f"{host}:{listener.port}"
    try:
        if listener.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, _credentials(listener.tls))
    except RuntimeError as exc:  # gRPC says only "Failed to bind": the system's own reason says why
        raise listener.cannot_listen(_why_not_bound(listener) or str(exc)) from None
    if not port:
        raise listener.cannot_listen(
            _why_not_bound(listener) or "the port is taken, or the address is not this machine's"
        )
    return int(port)


def _why_not_bound(listener: ListenerSettings) -> OSError | None:
    """The system's reason a socket cannot bind the listener's address (in use, not this machine's),
    asked with a socket of our own once gRPC failed to bind; ``None`` when that one binds."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((listener.host, listener.port))
        except OSError as exc:
            return exc
    return None


def _credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    tls.server_context()  # a ConfigurationError naming the files when they do not load
    try:
        key, cert = tls.key.read_bytes(), tls.cert.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the TLS files {tls.cert} and {tls.key}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)])


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, error: GTLError) -> Any:
    """End the call with ``code`` and the GTL code in its details (never returns)."""
    await context.abort(code, status_details(error))


def _result(events: list[StreamEvent]) -> pb.CompletionResult:
    """The events as a ``CompletionResult``; an event gRPC cannot carry ends it with ``INTERNAL``."""
    frames = []
    for event in events:
        try:
            frames.append(to_frame(event, pb.StreamEvent))
        except ProtocolError as exc:
            log.warning("session %r: a %s cannot be sent over gRPC: %s", event.session_id, type(event).__name__, exc)
            ended = Error(session_id=event.session_id, code="INTERNAL", message="the gateway cannot send an event")
            frames.append(to_frame(ended, pb.StreamEvent))
            break
    return pb.CompletionResult(events=frames)  # type: ignore[arg-type]


SPOKEN = header_value(SUPPORTED_VERSIONS)


async def _agreed_version(context: grpc.aio.ServicerContext) -> str | None:
    """The version a call's ``gtl-version`` metadata agrees on (every value of the key, read as one list,
    as HTTP reads its ``GTL-Version`` lines), ``None`` without one; a call naming no version this gateway
    speaks ends ``INVALID_ARGUMENT`` / ``INVALID_REQUEST``, the message naming those it speaks."""
    values = [
        value.decode("latin-1") if isinstance(value, bytes) else str(value)
        for key, value in (context.invocation_metadata() or ())
        if key == VERSION_HEADER
    ]
    offered = ", ".join(values)
    if not offered.strip(" ,"):
        return None
    try:
        return negotiate_header(offered)
    except VersionMismatchError as exc:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc)
    return None  # (not reached: the abort raises)


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


async def _read_message(size: int, read: Callable[[bytes], bytes], message: bytes) -> bytes:
    """``read(message)`` (a ``Session`` message into its JSON frame), in a worker thread for a message over
    ``OFF_LOOP_PROTO_BYTES`` (``gateway.offload``)."""
    return await converted(size, read, message, above=OFF_LOOP_PROTO_BYTES)


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    """The token of ``authorization: Bearer <token>``, or ``None``."""
    header = _metadata(context, "authorization")
    return header[7:].strip() if header and header[:7].lower() == "bearer " else None


def _peer(peer: str | None) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``127.0.0.1:5000``; ``ipv6:%5B::1%5D:5000`` -> ``[::1]:5000``."""
    text = unquote(peer or "unknown")
    kind, sep, rest = text.partition(":")
    return rest if sep and kind in ("ipv4", "ipv6") else text


def _address(peer: str) -> str:
    """The client's address without its port (whose calls ``max_connections_per_address`` counts)."""
    host, sep, port = peer.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() else peer


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
