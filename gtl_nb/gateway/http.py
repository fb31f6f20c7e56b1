"""The gateway over HTTP: one session per request, a WebSocket for many, on one TCP port (Starlette on uvicorn).

``serve_http(engine, listener, ...)`` follows the listener contract of ``gateway.listeners``. Endpoints
(docs/gateway.md):

* ``POST /v1/gtl`` — the body is one ``completion_request``. ``stream: true`` answers with a chunked
  ``application/x-ndjson`` body of GTL frames, one per line, ending with the session's ``done`` or
  ``error``; ``stream: false`` answers with one JSON object ``{"session_id": ..., "events": [...]}``
  whose status says how the session ended (``STATUS_OF_CODE``).
* ``POST /v1/gtl/sse`` — the same session as server-sent events (``event: <type>``, ``data: <frame>``).
* ``GET /v1/gtl/ws`` — a WebSocket carrying one GTL connection (``GatewayConnection``), many sessions.
* ``GET /v1/gtl/providers`` — the gateway's ``provider_info`` list as a JSON array; its ``GTL-Features`` header names
  the features the gateway knows (the request extensions a client may use: no hello over HTTP).
* ``POST /v1/gtl/query`` — one ``query`` frame in, its ``answer`` frame out.
* ``GET /healthz``, ``GET /readyz``, ``GET /.well-known/gtl`` (every transport this gateway offers,
  with the URL a client passes to ``gtl_nb.connect``, and the protocol versions).

Before a session runs, a refusal is a status with one GTL ``error`` as the body: ``401`` for a token
the gateway does not accept (``503``, retryable, for one it cannot check: its revocation list was
never read — ``refusals.TokenUncheckable``), ``413`` for a body over ``max_frame_bytes``, ``400`` for a body that is
not a ``completion_request`` (or a request that is not HTTP/1.1 at all, or whose ``GTL-Version`` names
no version this gateway speaks: the spec's negotiation, as these endpoints have no hello; every
answer that is a GTL frame, each of these refusals included, carries ``GTL-Version``), ``404`` and ``405`` for a
path or method nobody here serves (``INVALID_REQUEST``, naming the endpoints; the OpenAI- and
Anthropic-compatible routes answer under their own paths in their own shape), ``429`` for one
connection too many from an address (no ledger row: no request was read) or for a request beyond the
principal's ``max_sessions_per_principal`` (its ledger row and audit record written first:
``gateway.refusals``), ``503`` once the gateway is shutting down (a completion request is read first,
so that its refusal leaves its ledger row and audit record), ``408`` (then the
connection closes) for a request that arrives too slowly (below).

**Limits** (``gateway.listeners.Limits``): a body is read a piece at a time and refused as soon as it
passes ``max_frame_bytes``; a request must arrive within ``header_timeout`` seconds of the connection
opening (after TLS, whose handshake has the same deadline) or of its first byte on a kept-alive
connection, plus one second for every ``MIN_REQUEST_RATE`` (32 KiB) received (``_HttpProtocol``): a
head, or a body, sent a byte a second is cut at ``header_timeout``, a body arriving at 32 KiB/s or
faster never is (a request is held at most ``header_timeout`` + (``max_frame_bytes`` + 64 KiB) / 32 KiB/s:
4 min 28 s with the defaults), and one that stops for ``header_timeout`` seconds is cut whatever it earned;
bytes of requests and WebSocket messages still arriving count against the listener's ``max_unfinished_bytes``
(``gateway.unfinished``, which bounds WebSocket messages the same way). A kept-alive connection may wait
``idle_timeout`` seconds for its next
request; an address may hold ``max_connections_per_address`` connections at once (the next one gets
one ``429`` and is closed); a WebSocket connection runs at most ``max_sessions_per_connection``
sessions (``GatewayConnection``).

**Shutdown** (``shutdown.begin()``): the port stops accepting, idle keep-alive connections close, a
request whose body is still arriving, or that arrives now, gets ``503`` (one that arrives now on a
completion route — a connection accepted before the port closed — with its ledger row and audit
record: ``_Sessions.start`` refuses it after its token and body were read); running NDJSON/SSE streams and
WebSocket sessions have ``shutdown.grace`` seconds, then end with ``CANCELLED`` and their ledger rows
complete. uvicorn's own server loop (and its signal handlers) is not used: the listener is
``loop.create_server`` with uvicorn's protocols, and whoever runs the gateway owns the signals.

**Compression** is negotiated, never forced: NDJSON and SSE bodies are gzip-encoded when the request
says ``Accept-Encoding: gzip``, each event flushed (``Z_SYNC_FLUSH``) so the client decodes it as
soon as it arrives; the WebSocket offers permessage-deflate. ``compression=False`` turns both off.

A client that disconnects mid-stream cancels the session: the engine closes the upstream response and
completes the ledger row as cancelled. One that disconnects mid-body is one ``INFO`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gzip as gzip_module
import logging
import math
import re
import socket
import string
import time
import zlib
from collections.abc import Awaitable, Callable, Collection
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msgspec
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.session import run_session
from gtl_nb.gateway.compat import compat_routes
from gtl_nb.gateway.compat.reply import try_later
from gtl_nb.gateway.compat.routes import compat_refusal
from gtl_nb.gateway.connection_budget import listener_share
from gtl_nb.gateway.listeners import (
    MIN_REQUEST_RATE,
    Limits,
    ListenerSettings,
    Ready,
    Shutdown,
    TlsServer,
    is_loopback,
)
from gtl_nb.gateway.offload import OffloadedFrames, converted
from gtl_nb.gateway.permissions import completion_refusal, visible_providers
from gtl_nb.gateway.principal_sessions import sessions_of
from gtl_nb.gateway.proxies import TrustedProxies, peer_text
from gtl_nb.gateway.queries import answer_query
from gtl_nb.gateway.readiness import degraded_parts, may_read_reasons, readiness
from gtl_nb.gateway.refusals import (
    REFUSED_BEFORE_START,
    UNCHECKABLE_RETRY_AFTER,
    GatewayStopping,
    recorded_refusal,
    unavailable_status,
)
from gtl_nb.gateway.scopes import SCOPES
from gtl_nb.gateway.sessions import (
    Authenticate,
    GatewayConnection,
    HeaderTokenFirst,
    authenticated_or_logged,
    cancel_started,
)
from gtl_nb.gateway.streaming import EventOutbox, collect_session, stream_session
from gtl_nb.gateway.tracecontext import trace_id_from
from gtl_nb.gateway.unfinished import FREE_BYTES, UnfinishedBytes, limited_websocket, over_free
from gtl_nb.gateway.write_stall import WriteStallBound
from gtl_nb.ids import random_hex, unique_hex
from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import CUT_EVENTS, DEFAULT_MAX_DEPTH, decode, encode, frames_within, nesting_exceeds
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    FrameTooLargeError,
    GTLError,
    InternalError,
    InvalidRequestError,
    OverloadedError,
    PermissionDeniedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    VersionMismatchError,
)
from gtl_nb.protocol.messages import MAX_ID_LENGTH, CompletionRequest, Done, Error, Query, StreamEvent
from gtl_nb.protocol.negotiation import (
    FEATURES_HEADER,
    IMPLIED_VERSION,
    SUPPORTED_VERSIONS,
    VERSION_HEADER,
    features_value,
    header_value,
    negotiate_header,
)
from gtl_nb.transports.http import MAX_FRAME_HEADER
from gtl_nb.transports.messages import JOIN_BYTES
from gtl_nb.words import install_extra

__all__ = ["PATHS", "STATUS_OF_CODE", "accepts_gzip", "bind", "build_app", "discovery_document", "serve_http"]

log = get_logger("gateway.http")
NDJSON = "application/x-ndjson"
PATHS = {
    "http": "/v1/gtl",
    "sse": "/v1/gtl/sse",
    "ws": "/v1/gtl/ws",
    "providers": "/v1/gtl/providers",
    "query": "/v1/gtl/query",
}
"""Where each endpoint lives (the discovery document repeats it)."""
OFFER_ORDER = ("quic", "grpc", "ws", "sse", "http")
"""The order transports are listed in the discovery document: the spec's, best first."""
_ENDPOINTS = ", ".join(
    [
        "POST /v1/chat/completions (OpenAI)",
        "POST /v1/responses (OpenAI)",
        "POST /v1/messages (Anthropic)",
        "GET /v1/models",
        f"POST {PATHS['http']}",
        f"POST {PATHS['sse']}",
        f"GET {PATHS['ws']} (WebSocket)",
        f"GET {PATHS['providers']}",
        f"POST {PATHS['query']}",
        "GET /healthz",
        "GET /readyz",
        "GET /.well-known/gtl",
    ]
)
"""What a ``404`` names: the endpoints of this listener, the compatible ones first (what an SDK user looks for)."""
MAX_HEAD_BYTES = 64 * 1024
"""Largest request head (h11's default was 16 KiB): an oversized token is then refused by the token
check, with AUTH_FAILED, rather than by the HTTP parser with a bare 431."""
MAX_PIPELINED = 16
"""Requests a connection may have read and waiting behind the one being answered (HTTP/1.1 pipelining). At
this many the rest of what the client sent is not parsed, and the connection is not read, until an answer
is complete: a queued request costs ~2.4 KB (its cycle, scope and headers) against the 34 bytes a tiny
``GET`` takes to send, so an unbounded queue let one connection grow the gateway by hundreds of MiB."""
_HELD_PIECE = 16 * 1024
"""Bytes held back (``MAX_PIPELINED``) are parsed this many at a time once answers make room."""
_BLANK_LINE = re.compile(rb"\n\r?\n")
"""What ends every request head (CRLF CRLF, or a bare LF's lenient forms), and a chunked body (its last chunk's
empty line): a head completes only where one ends."""
FULL_LOG_EVERY = 60.0
"""Seconds between two log lines about connections closed for the listener's share of ``max_connections``."""
OVER_CAP_WAIT = 1.0
"""Seconds a connection beyond the per-address cap may take to send the request its ``429`` answers."""
CLOSE_WAIT = 5.0
"""Seconds the last step of a shutdown waits for cancelled sessions and closing connections."""
SPOKEN = header_value(SUPPORTED_VERSIONS)
"""This gateway's ``GTL-Version`` answer on the GTL endpoints: the versions it speaks (the spec's negotiation)."""
_WAITING, _HEAD, _BODY, _WHOLE = "waiting", "head", "body", "whole"
"""Where a connection's current request is: not begun, its head arriving, its body arriving, all of it in."""
_CUT = "gtl_nb.cut"
"""The scope key ``_HttpProtocol._cut`` sets on a request it answered itself: the application logs nothing more."""

STATUS_OF_CODE: dict[str, int] = {
    "INVALID_REQUEST": 400,
    "CONTEXT_LENGTH_EXCEEDED": 400,
    "MODEL_NOT_FOUND": 404,
    "FORBIDDEN": 403,
    "CONTENT_FILTERED": 422,
    "BUDGET_EXCEEDED": 429,
    "RATE_LIMIT": 429,
    "AUTH_FAILED": 502,  # a provider refused the gateway's key: the caller's own token was accepted (else 401)
    "PROVIDER_UNAVAILABLE": 502,
    "OVERLOADED": 503,
    "CANCELLED": 503,  # only a shutdown cancels a non-streamed session whose caller is still there
    "TIMEOUT": 504,
    "INTERNAL": 500,
}
"""The status of a non-streamed ``POST /v1/gtl`` whose session ended with this error code (``done``: 200)."""


# -- compression -------------------------------------------------------------------------------------


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (``gzip;q=0`` refuses it, ``*`` admits it)."""
    if not header:
        return False
    star = False
    for item in header.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if name in ("gzip", "x-gzip"):
            return quality > 0
        if name == "*":
            star = quality > 0
    return star


class _GzipStream:
    """One gzip body written event by event; each piece is flushed so the client can decode it at once."""

    def __init__(self) -> None:
        # a 4 KiB window and memLevel 5 (32 KiB per stream, not zlib's 256 KiB): events repeat each other
        # within a few hundred bytes, so a larger window buys nothing for the memory of many streams
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + 12, 5)

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._compressor.flush(zlib.Z_FINISH)


# -- the sessions a listener runs ------------------------------------------------------------------


class _Running:
    """One HTTP session's task, and who cancelled it (for its ``CANCELLED`` message)."""

    __slots__ = ("cancelled", "reason", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.reason = "the client"
        self.cancelled = False

    def cancel(self, reason: str) -> None:
        """Cancel once (a second cancel could cut short the completion of the ledger row)."""
        if self.task is not None and not self.task.done() and not self.cancelled:
            self.cancelled = True
            self.reason = reason
            cancel_started(self.task)  # (a task cancelled before it ran would never end its session)

    async def wait(self) -> None:
        if self.task is not None and not self.task.done():
            await asyncio.gather(self.task, return_exceptions=True)


class _Sessions:
    """The HTTP sessions and WebSocket connections of one listener, so a shutdown can wait for them or end them.
    ``max_per_principal``: the sessions a principal may run at once in the process (``0``: no cap);
    once ``shutdown`` began no session starts."""

    def __init__(self, engine: Engine, max_per_principal: int = 0, shutdown: Shutdown | None = None) -> None:
        self.engine = engine
        self.max_per_principal = max_per_principal
        self.shutdown = shutdown
        self._principals = sessions_of(engine)
        self._running: set[_Running] = set()
        self._sockets = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(
        self,
        request: CompletionRequest,
        context: RequestContext,
        send: Callable[[StreamEvent], None],
        drain: Callable[[], Awaitable[Any] | None] | None = None,
    ) -> _Running:
        """Run one session over ``engine.session.run_session`` (exactly one terminal event, whatever happens).
        ``OverloadedError``, with nothing run, when the principal runs ``max_per_principal`` sessions already
        (a refusal before the session: ``429``); ``GatewayStopping`` once the shutdown began (``503``). The
        caller records either with ``refused`` (``gateway.refusals.REFUSED_BEFORE_START``)."""
        if self.shutdown is not None and self.shutdown.is_stopping:
            raise GatewayStopping()
        running = _Running()
        refused = completion_refusal(context)

        async def run() -> None:
            try:
                await run_session(
                    self.engine,
                    request,
                    context,
                    send,
                    drain=drain,
                    cancelled_by=lambda: running.reason,
                    refused=refused,
                )
            except Exception:  # a bug: run_session already ended the session with INTERNAL
                log.exception("session %r failed in the gateway", request.session_id)
            finally:
                self._running.discard(running)
                self._update()

        loop = asyncio.get_running_loop()

        def spawn() -> asyncio.Task[None]:
            return loop.create_task(run(), name=f"gtl-http-{request.session_id}")

        # refused for its token or scopes, it runs nothing: outside the cap, and told why, not to retry
        if refused is not None:
            running.task = spawn()
        else:
            running.task = self._principals.start(context.principal, self.max_per_principal, spawn)
        self._running.add(running)
        self._update()
        return running

    async def refused(self, request: CompletionRequest, context: RequestContext, error: GTLError) -> Error:
        """The error event of ``request``, refused by ``start`` (the principal's cap, the stop), once its
        ledger row and audit record are written (``gateway.refusals``): awaited by the request's own task,
        counted nowhere."""
        return await recorded_refusal(self.engine, request, context, error)

    @contextlib.contextmanager
    def socket(self) -> Any:
        """Count a WebSocket connection while it runs."""
        self._sockets += 1
        self._update()
        try:
            yield
        finally:
            self._sockets -= 1
            self._update()

    def cancel_all(self, reason: str) -> None:
        """Cancel every HTTP session (WebSocket connections end their own, see ``GatewayConnection``)."""
        for running in list(self._running):
            running.cancel(reason)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs; ``False`` when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _update(self) -> None:
        if self._running or self._sockets:
            self._idle.clear()
        else:
            self._idle.set()


# -- connections: per-address cap and request-head deadline -------------------------------------------


class _ConnectionGuard:
    """Open connections per client address; a connection beyond ``cap`` is answered 429 and closed.

    A connection is counted from accept (after TLS) to close, whatever it carries — requests, a
    WebSocket — so it is keyed by its transport, which survives the WebSocket upgrade.
    """

    def __init__(self, cap: int, trusted: TrustedProxies | None = None, listener_cap: int = 0) -> None:
        # one address may hold at most half the listener's share: else, under a low descriptor limit
        # (ulimit -n 1024 leaves a share of ~240 against a cap of 256), one client fills the listener
        self.cap = min(cap, max(1, listener_cap // 2)) if listener_cap else cap
        if self.cap < cap:
            log.warning(
                "one address may hold %d connections, not max_connections_per_address (%d): half this "
                "listener's share of the descriptors (%d; raise the descriptor limit or [gateway] max_connections)",
                self.cap,
                cap,
                listener_cap,
            )
        self.trusted = trusted or TrustedProxies()
        self.listener_cap = listener_cap
        """Connections the whole listener may hold (its share of ``max_connections``; 0: no bound)."""
        self._turned_away = 0  # connections closed for the listener's cap since the last line saying so
        self._said_full_at = -math.inf
        self._counts: dict[str, int] = {}
        self._open: dict[Any, str] = {}
        self._refused: set[tuple[str, int]] = set()
        self._peers: dict[Any, tuple[str, int]] = {}

    def opened(self, transport: Any, peer: tuple[str, int] | None) -> None:
        if transport in self._open:
            return
        address = peer[0] if peer else ""
        count = self._counts.get(address, 0) + 1
        self._counts[address] = count
        self._open[transport] = address
        if peer is not None:
            self._peers[transport] = (peer[0], peer[1])
            if count > self.cap and not self.trusted.trusts(address):  # a proxy carries every client
                self._refused.add(self._peers[transport])
                log.info("refusing a connection from %s: %d already open (the cap)", address, count - 1)

    def closed(self, transport: Any) -> None:
        address = self._open.pop(transport, None)
        if address is None:
            return
        self._refused.discard(self._peers.pop(transport, ("", -1)))
        left = self._counts.get(address, 1) - 1
        if left > 0:
            self._counts[address] = left
        else:
            self._counts.pop(address, None)

    def full(self) -> bool:
        """Whether the listener holds more connections than ``listener_cap`` (the newest is to close at once)."""
        return 0 < self.listener_cap < len(self._open)

    def turned_away(self) -> None:
        """Count a connection closed for the listener's cap; say so at most once every ``FULL_LOG_EVERY``
        seconds (a flood would otherwise write a line a connection)."""
        self._turned_away += 1
        now = time.monotonic()
        if now - self._said_full_at >= FULL_LOG_EVERY:
            log.warning(
                "closed %d new connection(s): the listener holds its share of [gateway] max_connections (%d)",
                self._turned_away,
                self.listener_cap,
            )
            self._said_full_at, self._turned_away = now, 0

    def refused(self, client: Any) -> bool:
        """Whether the connection of an ASGI scope's ``client`` was one too many."""
        return client is not None and (client[0], client[1]) in self._refused

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)


class _PipelineFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while a connection holds bytes it has not
    parsed because ``MAX_PIPELINED`` requests wait (uvicorn resumes reading at each ``receive`` and answer)."""

    def __init__(self, transport: Any, protocol: _HttpProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        protocol = self._protocol
        if protocol.held is None:
            super().resume_reading()
        elif protocol._phase is _BODY:  # (bytes are held only between whole requests: a body never waits on them)
            protocol._release_soon()


def _cut_after_heads(data: bytes, pos: int, room: int, tail: bytes) -> int:
    """Where to cut ``data`` (parsed up to ``pos``) so that at most ``room`` request heads complete in
    ``data[pos:cut]``: just past its ``room``-th blank line (a head ends at its first one), or its end when
    it has fewer. ``tail`` is the last two bytes parsed before ``pos``, for a blank line that began there.

    A body's blank lines count too: they only make the cut earlier (the caller goes on parsing; it holds
    bytes back only between whole requests). The cut is never at ``pos``: parsing always moves on."""
    seen = 0
    if tail.endswith(b"\n") and (data.startswith(b"\n", pos) or data.startswith(b"\r\n", pos)):
        seen, start = 1, pos + (1 if data.startswith(b"\n", pos) else 2)
        if seen >= room:
            return start
    elif tail.endswith(b"\n\r") and data.startswith(b"\n", pos):
        seen, start = 1, pos + 1
        if seen >= room:
            return start
    else:
        start = pos
    for found in _BLANK_LINE.finditer(data, start):
        seen += 1
        if seen >= room:
            return found.end()
    return len(data)


class _HttpProtocol(WriteStallBound, HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol over httptools (llhttp, compiled) with the listener's limits: the
    per-address count, a bounded request head, a deadline per request, and a GTL error for what it
    refuses itself. (It replaced uvicorn's h11 protocol, pure Python, which was 16 % of the gateway's
    CPU per request: docs/benchmarks.md.)

    uvicorn bounds the wait *between* keep-alive requests (``timeout_keep_alive``), but neither of its
    HTTP/1.1 protocols bounds how long a request may take to arrive: a client sending its head, or its
    body, one byte a second holds a connection for ever. Here a deadline starts when a connection opens,
    and again when the first bytes of a later request arrive: ``header_timeout`` seconds, moved on by one
    second for every ``MIN_REQUEST_RATE`` bytes received (counted up to ``max_request_bytes``). It stops
    once the whole request has arrived, or the connection is upgraded. When it passes, the client gets
    ``408`` and the connection closes; a shutdown answers a body still arriving with ``503`` the same way
    (``_cut``); a head longer than ``MAX_HEAD_BYTES`` gets ``431`` and a request llhttp cannot parse ``400``
    (once the requests pipelined before it are answered: ``send_400_response``). A client's half-close after
    whole requests still gets their answers (``eof_received``). At most ``MAX_PIPELINED`` requests wait
    behind the one being answered: past them nothing more is parsed or read until an answer is complete.
    """

    guard: ClassVar[_ConnectionGuard]
    header_timeout: ClassVar[float]
    max_request_bytes: ClassVar[int]
    unfinished: ClassVar[UnfinishedBytes]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._request_started = 0.0
        self._request_bytes = 0
        self._progress = 0.0  # when the current request's last byte arrived
        self._charged = 0  # of its bytes, those the listener's budget of unfinished bytes holds
        self._phase = _WAITING  # where the client's current request is (module constants)
        self._head_bytes = 0  # bytes received since the current request's head began (an incomplete head's size)
        self._head_size = 0  # the parsed head's size: its URL and header lines
        self._codings: list[bytes] = []  # the current request's transfer codings, as its head lists them
        self._completed = False  # a request became whole during the current read
        self._keep_alive_held: Any = None  # the cycle whose keep-alive waits for its body (on_headers_complete)
        self._close_after_answer = False  # a shutdown found a request queued behind an answer being written
        self._running_cycle: Any = None  # the cycle whose application runs (the one a pipelined request waits on)
        self._refusal_due: bytes | None = None  # a bad request's answer, written once the answers before it are
        self._client_done = False  # the client shut its side (a half-close): no request follows what it sent
        self._length = 0  # the current request's content-length, as its head says
        self._body_left = 0  # bytes of its body (a content-length's) not parsed yet: no head ends in them
        self.held: bytearray | None = None  # bytes read and not parsed: MAX_PIPELINED requests wait (data_received)
        self._tail = b""  # the last two bytes parsed (a blank line may begin in them: _cut_after_heads)
        self._held_end = False  # the client's end arrived behind ``held``: it is read once they are
        self._release_due = False  # ``_release`` is scheduled

    def connection_made(self, transport: Any) -> None:
        _no_delay(transport)
        super().connection_made(transport)
        self.flow = _PipelineFlow(transport, self)
        self.guard.opened(transport, self.client)
        if self.guard.full():  # every descriptor of this listener's share is taken: this one goes at once
            self.guard.turned_away()
            error = OverloadedError("the gateway holds all the connections it can; connect again", retry_after=1.0)
            transport.write(_raw_response(503, error))
            transport.close()
            return
        self._start_deadline()
        if self.guard.refused(self.client):  # one too many: answered 429 at its request, or closed soon
            self.loop.call_later(OVER_CAP_WAIT, self._over_cap_and_silent)

    def _over_cap_and_silent(self) -> None:
        """A connection beyond the per-address cap that sent no request yet: close it now with its 429
        rather than hold it (and its descriptor) until ``header_timeout``."""
        if self._phase is _WAITING and self.cycle is None and not self.transport.is_closing():
            cap = self.guard.cap
            error = OverloadedError(f"this address already has {cap} connections open to the gateway; reuse one")
            self._cut(429, error, f"one connection more than the {cap} of its address, and silent")

    def data_received(self, data: bytes) -> None:
        if self._refusal_due is not None:  # past a request llhttp could not parse: nothing after it is read
            return
        if self.held is not None:  # (a read already under way when reading paused)
            self.held += data
            return
        used = self._parse(data)
        if used < len(data):  # the rest would queue more than MAX_PIPELINED requests: it waits for an answer
            self.held = bytearray(data[used:])
            self.flow.pause_reading()

    def _parse(self, data: bytes) -> int:
        """Parse as much of ``data`` as ``MAX_PIPELINED`` allows; how many of its bytes that was.

        Bytes are held back only between whole requests, once ``MAX_PIPELINED`` whole ones wait behind the
        one being answered: never inside a request still arriving (its head, or its body, chunked or not),
        whose application may be waiting for them. Until then ``data`` is parsed in pieces, each completing
        at most as many heads as there is room for (it ends at a blank line, or where a content-length body
        does), and the queue is looked at again after each: a body's own blank lines only make the pieces
        smaller."""
        if data.count(b"\n\n") + data.count(b"\n\r\n") + 1 < MAX_PIPELINED - len(self.pipeline):
            # the usual read: fewer blank lines (plus one begun in the last read) than there is room
            # for heads, so no piece could pass the bound — parsed whole, without the regular
            # expression's scan and the loop (bytes.count is C's; it may count more, never fewer)
            self._read_now(data)
            self._tail = (self._tail + data[-2:])[-2:]
            return len(data)
        pos, size = 0, len(data)
        while pos < size:
            room = MAX_PIPELINED - len(self.pipeline)
            if self._phase is _BODY:
                if self._body_left:  # the rest of a content-length body: no head ends in it
                    cut = min(size, pos + self._body_left)
                else:  # a chunked body, which ends at a blank line
                    cut = _cut_after_heads(data, pos, max(room, 1), self._tail)
            elif room <= 0:
                return pos  # the rest waits for an answer
            else:
                cut = _cut_after_heads(data, pos, room, self._tail)
            piece = data if pos == 0 and cut == size else data[pos:cut]
            self._read_now(piece)
            self._tail = (self._tail + piece[-2:])[-2:]
            pos = cut
            if self.transport.is_closing() or self._refusal_due is not None:
                return size  # nothing after it is read
            if pos < size and self.transport.get_protocol() is not self:  # upgraded: the rest is the new protocol's
                self.transport.get_protocol().data_received(data[pos:])
                return size
        return size

    def _read_now(self, data: bytes) -> None:
        if self._phase is _WHOLE:
            self._phase = _WAITING  # bytes after a whole request: the next one begins
        if self._deadline_timer is None and self._phase is _WAITING and not self._answering():
            # the first bytes of a request on a kept-alive connection (a pipelined one's deadline starts
            # when the answer before it is complete: on_response_complete)
            self._start_deadline()
        if self._deadline_timer is not None:
            self._request_bytes += len(data)
            self._progress = self.loop.time()
            if self._request_bytes > FREE_BYTES and not self._charge():
                error = OverloadedError("the gateway holds too many requests still arriving; send it again later")
                self._cut(503, error, "its request would pass max_unfinished_bytes")
                return
        if self._phase is not _BODY:
            self._head_bytes += len(data)  # reset when the head is complete (on_headers_complete)
        super().data_received(data)
        if (self._phase is _WAITING or self._phase is _HEAD) and self._head_bytes > MAX_HEAD_BYTES:
            # llhttp has no limit of its own on a head: one still incomplete after this many bytes is refused
            what = f"the request head is longer than {MAX_HEAD_BYTES // 1024} KiB"
            self._cut(431, InvalidRequestError(what), what)
            return
        if self._completed or self._phase is _WHOLE or self.transport.get_protocol() is not self:
            # a request became whole in this read (or the connection is past requests: closed, upgraded)
            self._completed = False
            self._stop_deadline()
            if self._phase is _HEAD and not self._answering():
                self._start_deadline()  # a next request's head came in the same read

    def on_message_begin(self) -> None:
        self._phase = _HEAD
        self._length = 0
        self._head_size = 0
        self._codings = []
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            self._codings += [coding.strip().lower() for coding in value.split(b",")]
        elif lowered == b"content-length" and value.isdigit():  # (llhttp refuses any other)
            self._length = int(value)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_size > MAX_HEAD_BYTES:  # whole, but over the limit (it may have come in several reads)
            what = f"the request head is longer than {MAX_HEAD_BYTES // 1024} KiB"
            self._cut(431, InvalidRequestError(what), what)  # (judged as a head: no cycle of its own yet)
            self._phase = _BODY
            return
        codings, self._codings = self._codings, []
        if codings and codings != [b"chunked"]:
            # RFC 9112 (6.1): a transfer coding the server does not know is answered 501. Read as plain
            # chunked, "gzip, chunked" handed the application compressed bytes as if they were JSON
            what = f"transfer-encoding {b', '.join(codings).decode('latin-1')[:60]!r}: only chunked is understood"
            self._cut(501, InvalidRequestError(what), what)
            self._phase = _BODY
            return
        self._phase = _BODY
        self._head_bytes = 0
        self._body_left = 0 if codings else self._length
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before and cycle is not None:  # a new request (not an upgrade)
            if not self.pipeline:
                self._running_cycle = cycle  # it runs now (a pipelined one starts in on_response_complete)
            if cycle.keep_alive:
                # until the body is whole (on_message_complete), an answer would close the connection
                # (on_response_complete): uvicorn then says "connection: close", so no client reuses it
                cycle.keep_alive = False
                self._keep_alive_held = cycle

    def on_body(self, body: bytes) -> None:
        if self._body_left:  # (a chunked body's is 0)
            self._body_left -= len(body)
        if not self.transport.is_closing():  # (a head refused with 431 has no cycle to take its body)
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _WHOLE
        self._completed = True
        held, self._keep_alive_held = self._keep_alive_held, None
        if held is not None and not held.response_started:
            held.keep_alive = True  # the body arrived before any answer: the connection may be kept
        if not self.transport.is_closing():
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        self.guard.closed(self.transport)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        """The client shut its side of the connection (a half-close, or a close: TCP cannot tell them apart).

        A request already whole is still answered, and so is every one pipelined before the end (RFC 9112
        lets a client half-close once it has sent its requests): the connection closes once they are. A
        client that closed for good is found when an answer is written to it (its reset ends the
        connection, and the session is cancelled then). With nothing to answer, or a request cut short by
        the end (it can never be whole), the connection closes now, as before. Over TLS the end closes the
        connection as before, whatever is under way (asyncio's TLS transport closes at a peer's end whatever
        the protocol answers).
        """
        if self.held is not None and not self.transport.is_closing():  # requests not parsed yet come first
            self._held_end = True
            return True
        self._client_done = True
        if self.transport.is_closing() or self.scheme == "https":  # TLS: asyncio closes at the end whatever we say
            return False
        if self._refusal_due is not None:  # the answers before a bad request go out, then its 400
            return True
        partial = self.cycle if self._phase is _BODY else None  # a request whose body the end cut short
        if partial is not None and self.pipeline and self.pipeline[0][0] is partial:
            self.pipeline.popleft()  # it waited behind an earlier answer: it never starts
            partial = None
        running = self._running_cycle
        earlier = running is not None and running is not partial and not running.response_complete
        if partial is None and (earlier or self.pipeline):
            self._stop_deadline()  # nothing more can arrive
            return True
        return False  # asyncio closes the transport: what runs sees the client gone

    def shutdown(self) -> None:
        """uvicorn's graceful close, except that a request whose body is still arriving is answered ``503`` now.

        Left alone it would run into the end of the shutdown and be cancelled there: a plain ``500`` and a
        ``CancelledError`` traceback.
        """
        if self._phase is _BODY and self._may_answer():
            error = ProviderUnavailableError("the gateway is shutting down; connect again (to another replica)")
            self._cut(503, error, "the gateway is shutting down while its request body arrives")
            return
        if self._phase is _BODY and self.pipeline:
            # an earlier request's answer is still being written: it ends whole, then the connection closes
            # (the request behind it never started: its client may send it elsewhere); an answer not begun
            # yet says so (``connection: close``), and uvicorn closes after it
            self._close_after_answer = True
            answering = self._running_cycle
            if answering is not None and not answering.response_started:
                answering.keep_alive = False
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        """uvicorn's keep-alive, except after answering a request whose body is still arriving (a ``413``, a
        refusal before the body was read): the connection closes, once the answer is written (and the
        answer said ``connection: close``: ``on_headers_complete`` holds a request's keep-alive until its
        body is whole).

        Kept open, it would read and throw away whatever the client still sends until the request's
        deadline passed (``header_timeout`` + 1 s per 32 KiB: 4 min with the defaults), a connection's slot
        held all the while.
        """
        if self._refusal_due is not None or self._client_done:
            self._after_the_last_request()
            return
        # the body of the request just answered (a pipelined request queued behind it has a cycle of its own)
        cycle = self.cycle
        body_arriving = self._phase is _BODY and cycle is not None and cycle.response_complete
        if self._close_after_answer and not self.transport.is_closing():
            self._stop_deadline()
            self.transport.close()  # before uvicorn starts the request queued behind (it never will)
        upcoming = self.pipeline[-1][0] if self.pipeline else None  # uvicorn starts it now, if it can
        super().on_response_complete()
        if upcoming is not None and not self.transport.is_closing():
            self._running_cycle = upcoming
        self._release_soon()
        if body_arriving and not self.transport.is_closing():
            self._stop_deadline()
            self.transport.close()
        elif self._deadline_timer is None and (self._phase is _HEAD or self._phase is _BODY):
            # a pipelined request's head, or its body, is still arriving now that the answer before it is
            # sent: its deadline starts (until now it waited its turn)
            self._start_deadline()

    def _release_soon(self) -> None:
        """An answer is complete (a waiting request started): parse what was held back, on the next turn
        (not inside the answer's own ``send``)."""
        if self.held is not None and not self._release_due:
            self._release_due = True
            self.loop.call_soon(self._release)

    def _release(self) -> None:
        """Parse the bytes held back, as far as ``MAX_PIPELINED`` allows; once all are parsed, read again.

        They are parsed a piece at a time (``_HELD_PIECE``), each taken off the front of the buffer, so a
        read's worth held back is not copied or scanned whole for every request it makes room for."""
        self._release_due = False
        held, self.held = self.held, None
        while held and not self.transport.is_closing() and self._refusal_due is None:
            if self.transport.get_protocol() is not self:  # (upgraded: the rest is the new protocol's)
                self.transport.get_protocol().data_received(bytes(held))
                return
            piece = bytes(held[:_HELD_PIECE])
            used = self._parse(piece)
            del held[:used]
            if used < len(piece):  # no more room: the rest waits for the next answer
                self.held = held
                return
        if self.transport.is_closing() or self._refusal_due is not None:
            return
        if self._held_end:
            self._held_end = False
            if not self.eof_received():
                self.transport.close()
            return
        cycle = self.cycle
        if cycle is None or len(cycle.body) <= HIGH_WATER_LIMIT:  # (uvicorn's own pause for a body stays)
            self.flow.resume_reading()

    def _after_the_last_request(self) -> None:
        """An answer is complete and no request may follow the ones read (a bad request, or the client's end):
        start the next one pipelined before it, else write the bad request's ``400`` (if any) and close."""
        if self.pipeline and not self.transport.is_closing() and not self._close_after_answer:
            upcoming = self.pipeline[-1][0]
            super().on_response_complete()  # uvicorn starts it
            self._running_cycle = upcoming
            self._release_soon()
            return
        self._stop_deadline()
        self.server_state.total_requests += 1
        if not self.transport.is_closing():
            # (after requests a shutdown left unstarted, a 400 would read as the first one's answer)
            if self._refusal_due is not None and not self.pipeline:
                self.transport.write(self._refusal_due)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request llhttp cannot parse (uvicorn's own answer is plain text), answered in the shape of its
        path's API when its path was read: OpenAI's or Anthropic's on theirs, GTL's elsewhere.

        The requests before it on the connection (pipelined, even in the same write) are answered first,
        whole and in order; then comes the ``400`` and the connection closes (nothing after a request that
        does not parse can be read as a request)."""
        why = "the request is not valid HTTP/1.1"
        answer = self._bad_request_answer(InvalidRequestError(why))
        bad = self.cycle if self._phase is _BODY else None  # a request whose body broke has a cycle of its own
        if bad is not None and self.pipeline and self.pipeline[0][0] is bad:
            self.pipeline.popleft()  # it waited behind an earlier answer: it never starts
        elif bad is not None or not (self._answering() or self.pipeline):
            self._cut(400, InvalidRequestError(why), why, answer=answer)  # nothing before it is unanswered
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("closing the connection from %s once the requests before its last are answered: %s", peer, why)
        self._stop_deadline()
        self._refusal_due = answer

    def _bad_request_answer(self, error: GTLError) -> bytes:
        """The whole ``400`` for the request being parsed, in the shape of its path's API when its path was
        read (its head had begun), else a GTL error."""
        path = ""
        if self._phase is _HEAD or self._phase is _BODY:  # uvicorn's ``url`` and ``headers`` are this request's
            path = urlsplit(self.url.decode("latin-1")).path if self.url else ""
        if not _compatible_path(path):
            return _raw_response(400, error)
        names = {name for name, _ in self.headers or ()}
        reply = compat_refusal(error, b"anthropic-version" in names or path.startswith("/v1/messages"))
        return _raw_reply(reply)

    def _answering(self) -> bool:
        """Whether an answer is on its way and not complete (an earlier request's, while a pipelined one
        arrives)."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def _may_answer(self) -> bool:
        """Whether a response of ours may go on the wire now for the current request: none has begun for it,
        and no earlier request's answer is still being written (bytes must not land inside it)."""
        cycle = self.cycle
        if self._phase is _WAITING or self._phase is _HEAD:  # ``cycle`` is the previous request's
            return cycle is None or cycle.response_complete
        if self.pipeline:  # ``cycle`` waits behind an earlier request whose answer is being written
            return False
        return cycle is None or not cycle.response_started

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._request_started = self._progress = self.loop.time()
        self._request_bytes = 0
        self._deadline_timer = self.loop.call_later(self.header_timeout, self._deadline_passed)

    def _stop_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._charged:  # the request is whole, or cut: its bytes no longer count as unfinished
            self.unfinished.give(self._charged)
            self._charged = 0

    def _charge(self) -> bool:
        """Hold the request's bytes beyond ``FREE_BYTES`` against the listener's budget (``gateway.unfinished``);
        ``False`` when they would pass it."""
        charge = over_free(min(self._request_bytes, self.max_request_bytes))
        if charge > self._charged:
            if not self.unfinished.take(charge - self._charged):
                return False
            self._charged = charge
        return True

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        # the timer is set once and looked at when it fires: counting bytes costs nothing per read
        now = self.loop.time()
        if self.flow is not None and self.flow.read_paused:  # the application is not reading: not the client's time
            self._request_started += now - self._progress
            self._progress = now
        earned = min(self._request_bytes, self.max_request_bytes) / MIN_REQUEST_RATE
        stalled = self._progress + self.header_timeout  # no byte more for that long: cut whatever was earned
        remaining = min(self._request_started + self.header_timeout + earned, stalled) - now
        if remaining > 0:
            self._deadline_timer = self.loop.call_later(remaining, self._deadline_passed)
            return
        if self._phase is not _BODY:
            what = f"no whole request head within {self.header_timeout:g} s"
        elif stalled <= now:
            what = f"the request body stopped arriving for {self.header_timeout:g} s"
        else:
            rate = MIN_REQUEST_RATE // 1024
            what = f"the request body did not arrive in time ({self.header_timeout:g} s, plus 1 s per {rate} KiB)"
        self._cut(408, ProviderTimeoutError(what), what)

    def _cut(self, status: int, error: GTLError, why: str, *, answer: bytes | None = None) -> None:
        """Answer the request still arriving with ``status`` and one GTL error (or ``answer``, whole), then close
        the connection.

        Once a response of ours has begun there is no answering: the connection just closes. The
        application reading the body sees a disconnect and, finding the request marked, logs nothing more.
        """
        if self.transport.is_closing():
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.info("closing the connection from %s: %s", peer, why)
        if self._may_answer():
            self.transport.write(answer if answer is not None else _raw_response(status, error))
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.scope[_CUT] = status  # type: ignore[literal-required]
            cycle.disconnected = True  # whatever the application still sends goes nowhere
            cycle.message_event.set()
        self.transport.close()


def _no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off for an accepted connection.

    asyncio does so only for sockets whose protocol number is ``IPPROTO_TCP``, and a socket accepted from
    ``socket.create_server``'s listener has 0: left on, Nagle held each response's second write until the
    client acknowledged the first, which a Linux client delays up to 40 ms — every request after a
    kept-alive connection's first took ~44 ms (found by the benchmark suite).
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the connection is already gone
            pass


def _protocol_classes(
    guard: _ConnectionGuard, limits: Limits, max_request_bytes: int, unfinished: UnfinishedBytes
) -> tuple[type[Any], type[Any]]:
    """This listener's HTTP and WebSocket protocol classes (both report closed connections to ``guard``, hold
    what is still arriving against ``unfinished`` — ``gateway.unfinished`` — and drop a peer that reads
    nothing for ``write_timeout`` seconds: ``gateway.write_stall``)."""
    try:  # websockets' sans-I/O protocol, whose fragments and parser buffer LimitedWebSocket measures
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        raise ConfigurationError(f"[gateway.http] needs websockets: {install_extra('gateway')}") from None
    base = limited_websocket(
        WebSocketsSansIOProtocol, header_timeout=limits.header_timeout, budget=unfinished, max_head_bytes=MAX_HEAD_BYTES
    )

    class WebSocketProtocol(WriteStallBound, base):  # type: ignore[misc, valid-type]
        """After an upgrade the transport reports its end here, no longer to ``_HttpProtocol``."""

        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                guard.closed(self.transport)

    WebSocketProtocol.write_timeout = limits.write_timeout
    settings = {
        "guard": guard,
        "header_timeout": limits.header_timeout,
        "max_request_bytes": max_request_bytes,
        "unfinished": unfinished,
        "write_timeout": limits.write_timeout,
    }
    http = type("GatewayHttpProtocol", (_HttpProtocol,), settings)
    return http, WebSocketProtocol


# -- responses -----------------------------------------------------------------------------------------


def _raw_response(status: int, error: GTLError) -> bytes:
    """A whole response carrying one GTL error, closing the connection, for the protocol to write itself."""
    body = encode(error.to_event(""))
    wait = f"retry-after: {math.ceil(error.retry_after)}\r\n" if error.retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n{wait}"
        f"{VERSION_HEADER}: {SPOKEN}\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _raw_reply(reply: Any) -> bytes:
    """A compatible endpoint's whole answer (``compat.reply.Reply``), closing the connection, for the protocol
    to write itself."""
    head = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}", "content-type: application/json"]
    head += [f"{name}: {value}" for name, value in reply.headers.items() if name.lower() != "connection"]
    head += ["connection: close", f"content-length: {len(reply.body)}", "", ""]
    return "\r\n".join(head).encode("latin-1") + reply.body


def _error_response(exc: GTLError, status: int, session_id: str = "", headers: dict[str, str] | None = None) -> Any:
    """A GTL ``error`` frame as a whole answer. Like every GTL answer it says the versions this gateway
    speaks (the spec's negotiation holds on refusals too: a client reads them before the error)."""
    from starlette.responses import Response

    said = {VERSION_HEADER: SPOKEN, **headers} if headers else {VERSION_HEADER: SPOKEN}
    return Response(encode(exc.to_event(session_id)), status_code=status, media_type="application/json", headers=said)


def _token_refusal(exc: GTLError) -> Any:
    """A refused token's answer: ``401`` asking for a bearer token, or ``503`` with ``retry-after``
    when the gateway could not check it (``TokenUncheckable``: another replica may)."""
    status = unavailable_status(exc)
    if status == 401:
        return _error_response(exc, 401, headers={"www-authenticate": "Bearer"})
    return _error_response(exc, status, headers=dict(UNCHECKABLE_RETRY_AFTER))


def _in_the_callers_shape(request: Any, exc: GTLError, status: int) -> Any:
    """An error in the shape the caller's SDK reads — Anthropic's (it sends ``anthropic-version``),
    OpenAI's (``x-stainless-*`` headers without it), else GTL's — so a mistyped path is a readable
    ``NotFoundError`` with its advice, not raw JSON the SDK cannot parse."""
    headers = request.headers
    if "anthropic-version" in headers:
        from gtl_nb.gateway.compat import anthropic

        return anthropic.error_reply(exc.to_event(), status=status, kind="not_found_error")
    if any(name.startswith("x-stainless-") for name in headers):
        from gtl_nb.gateway.compat import openai

        return openai.error_reply(exc.to_event(), status=status, kind="invalid_request_error", code="unknown_url")
    return _error_response(exc, status)


def _version_refusal(request: Any) -> Any:
    """A ``400`` for a request whose ``GTL-Version`` names no version this gateway speaks, else ``None``
    (no header, or an empty one: a client from before the header, served as the version it spoke
    then). Several header lines are one list, as HTTP reads them (RFC 9110, 5.3): a proxy may join
    them or not."""
    offered = ", ".join(request.headers.getlist(VERSION_HEADER))
    if not offered.strip(" ,"):
        return None
    try:
        negotiate_header(offered)
    except VersionMismatchError as exc:
        return _error_response(exc, 400)
    return None


def _body_refusal(exc: GTLError) -> Any:
    """A body that is too large (``413``) or not the frame the endpoint takes (``400``), answered with
    the session id the body claimed, when it could be read (the caller's way to match the answer)."""
    status = 413 if isinstance(exc, FrameTooLargeError) else 400
    return _error_response(InvalidRequestError(exc.message), status, getattr(exc, "session_id", ""))


def claimed_session_id(body: bytes) -> str:
    """The ``session_id`` a frame that failed to decode says it is for, if it can be read safely (an
    object within the depth limit, a string id within the protocol's length), else ``""``."""
    if nesting_exceeds(body, DEFAULT_MAX_DEPTH):
        return ""
    try:
        frame = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return ""
    claimed = frame.get("session_id") if isinstance(frame, dict) else None
    return claimed if isinstance(claimed, str) and 0 < len(claimed) <= MAX_ID_LENGTH else ""


async def _refuse(scope: Any, receive: Any, send: Any, status: int, error: GTLError) -> None:
    """Answer a request or a WebSocket upgrade with ``status`` and one GTL error, then close — a request
    to an OpenAI- or Anthropic-compatible path in that API's error shape (its SDK reads the message and
    the type; a GTL frame it would show as a raw dict), with the status that API's refusal gives."""
    if scope["type"] == "http" and _compatible_path(scope["path"]):
        headers = dict(scope.get("headers", ()))
        anthropic_style = b"anthropic-version" in headers or scope["path"].startswith("/v1/messages")
        reply = compat_refusal(error, anthropic_style)
        reply.headers["connection"] = "close"
        await reply(scope, receive, send)
        return
    body = encode(error.to_event(""))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (VERSION_HEADER.encode(), SPOKEN.encode()),  # a GTL frame: it says the versions, as every GTL answer
    ]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(math.ceil(error.retry_after)).encode()))
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008 if status == 403 else 1013})  # policy; try later
        return
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _Gate:
    """ASGI middleware in front of the routes: one connection too many from an address, a shutdown, or
    — on a development gateway (``loopback_callers_only``) — a request a web page could have sent."""

    def __init__(
        self,
        app: Any,
        guard: _ConnectionGuard,
        shutdown: Shutdown,
        *,
        loopback_callers_only: bool = False,
        allowed_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.guard = guard
        self.shutdown = shutdown
        self.loopback_callers_only = loopback_callers_only
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            problem = _from_a_web_page(scope, self.allowed_hosts) if self.loopback_callers_only else None
            if problem is not None:
                await _refuse(scope, receive, send, 403, PermissionDeniedError(problem))
                return
            if self.guard.refused(scope.get("client")):
                error = OverloadedError(
                    f"this address already has {self.guard.cap} connections open to the gateway; reuse one",
                    retry_after=1.0,
                )
                await _refuse(scope, receive, send, 429, error)
                return
            if self.shutdown.is_stopping:
                if not _completion(scope):
                    await _refuse(scope, receive, send, 503, GatewayStopping())
                    return
                send = _closing(send)  # a completion is refused with its row; the connection then closes
            if self.guard.trusted:
                scope = _forwarded(scope, self.guard.trusted)
        await self.app(scope, receive, send)


_COMPLETION_PATHS = frozenset({PATHS["http"], PATHS["sse"], "/v1/chat/completions", "/v1/responses", "/v1/messages"})
"""Where a completion request is posted: once the stop began it is still read — its token checked, its
body parsed — so that its refusal (``_Sessions.start``) leaves its ledger row and audit record."""


def _compatible_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI- or Anthropic-compatible API's (``/v1/`` but not GTL's own)."""
    return path.startswith("/v1/") and not path.startswith("/v1/gtl")


def _completion(scope: Any) -> bool:
    """Whether an ASGI scope is a completion request (``_COMPLETION_PATHS``)."""
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _COMPLETION_PATHS


def _closing(send: Any) -> Any:
    """``send`` that says ``connection: close`` on the response it starts (uvicorn then closes the connection
    after it): a connection the stop did not shut — it was not served yet — carries no request after this one."""

    async def closing_send(message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = [(name, value) for name, value in message.get("headers", ()) if name.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing_send


def _refusal_status(error: GTLError) -> int:
    """The status of a refusal before the session (``REFUSED_BEFORE_START``): ``503`` for the stop, else ``429``."""
    return 503 if isinstance(error, GatewayStopping) else 429


def _from_a_web_page(scope: Any, allowed_hosts: frozenset[str] = frozenset()) -> str | None:
    """Why a request to a development gateway (no GhostToken checked, loopback only) may come from a web
    page, or ``None``. Any page the user opens can send such a gateway a request — a plain ``POST``
    needs no permission, a WebSocket none either — and spend the provider keys; a site whose name
    resolves to 127.0.0.1 (DNS rebinding) can even read the answers. Programs on this machine name the
    gateway by a loopback name (or one of ``allowed_hosts``, names the operator gave this machine) and
    send no ``Origin``; a browser always names the page's, which must be a loopback name."""
    host = origin = None
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"origin":
            origin = value.decode("latin-1")
    if host is not None and not _names_this_machine(_host_name(host), allowed_hosts):
        names = "a loopback name" + (f" or {', '.join(sorted(allowed_hosts)[:5])}" if allowed_hosts else " only")
        return (
            f"this development gateway answers requests addressed to {names}, not {host[:100]!r}: "
            'with auth = "none" or "token" it checks no GhostToken, and a web page could use it (DNS rebinding). '
            "If that name is this machine's, add it to [gateway] allowed_hosts"
        )
    if origin is not None and not _names_this_machine(_origin_host(origin)):
        return (
            f"this development gateway refuses requests from web pages (Origin {origin[:100]!r}): with "
            'auth = "none" or "token" it checks no GhostToken, so any page could spend the provider keys'
        )
    return None


def _names_this_machine(name: str, allowed_hosts: frozenset[str] = frozenset()) -> bool:
    """Whether ``name`` (case folded, no final dot) is a loopback name — an address, ``localhost`` or a
    name under ``.localhost``, which resolves to loopback only (RFC 6761; browsers never ask DNS for
    it) — or one of ``allowed_hosts``."""
    return is_loopback(name) or name.endswith(".localhost") or name in allowed_hosts


def _origin_host(origin: str) -> str:
    """The host of an ``Origin`` header (``""`` for one that is no URL: ``null``, a broken ``[::1``)."""
    try:
        return (urlsplit(origin).hostname or "").rstrip(".")
    except ValueError:
        return ""


def _host_name(host: str) -> str:
    """``host`` of a ``Host`` header without its port (``[::1]:8787`` → ``::1``), as DNS compares names:
    case folded, without a final dot (``LOCALHOST.:8787`` → ``localhost``)."""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.lower().rstrip(".")


def _forwarded(scope: Any, trusted: TrustedProxies) -> Any:
    """``scope`` with the client and scheme a trusted proxy forwarded (``gateway.proxies``), else as it is."""
    client = scope.get("client")
    if client is None or not trusted.trusts(client[0]):
        return scope
    forwarded_for = forwarded_proto = None
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":  # several lines are one list, in order
            text = value.decode("latin-1")
            forwarded_for = text if forwarded_for is None else f"{forwarded_for},{text}"
        elif name == b"x-forwarded-proto":
            forwarded_proto = value.decode("latin-1")
    host = trusted.client(client[0], forwarded_for)
    secure = scope.get("scheme") in ("https", "wss")
    proto = trusted.scheme(client[0], forwarded_proto, "https" if secure else "http")
    scheme = ("wss" if proto == "https" else "ws") if scope["type"] == "websocket" else proto
    # the port is the proxy's connection's, meaningless for the client: 0 says "not known"
    return {**scope, "client": (host, 0) if host != client[0] else client, "scheme": scheme}


_HOT_PATHS = frozenset({PATHS["http"], PATHS["sse"], "/v1/chat/completions"})
"""The routes ``_HotRoutes`` calls without Starlette's router (``POST`` only): most of what a gateway serves."""


class _HotRoutes:
    """The listener's application: ``POST`` to a ``_HOT_PATHS`` route calls its endpoint directly, anything
    else goes through the Starlette application.

    Between uvicorn and an endpoint Starlette puts its error middleware, two exception-handling
    wrappers and a pattern match per route until one fits — more Python per request than the
    endpoint's own work before the session starts. Here the endpoint gets the same ``Request`` and
    its response is sent the same way, and errors end as they would there: ``ClientDisconnect``
    answered by the application's handler (``client_gone``), any other exception by the ``500``
    handler when no response has begun, then raised again for uvicorn to log. A request with a
    ``root_path`` (the router would strip it first) takes the long way too.
    """

    def __init__(self, app: Any, hot: dict[str, Any], *, client_gone: Any, internal: Any) -> None:
        from starlette.requests import ClientDisconnect, Request

        self.app = app
        self.hot = hot
        self.client_gone = client_gone
        self.internal = internal
        self._request = Request
        self._disconnect = ClientDisconnect

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = self.hot.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        sender, started = _watched(send)
        request = self._request(scope, receive, sender)
        try:
            try:
                response = await endpoint(request)
                await response(scope, receive, sender)
            except self._disconnect as exc:
                if started():  # as Starlette says it
                    raise RuntimeError("Caught handled exception, but response already started.") from exc
                response = await self.client_gone(request, exc)
                await response(scope, receive, sender)
        except Exception as exc:
            if not started():
                response = await self.internal(self._request(scope), exc)
                await response(scope, receive, send)
            raise


def _watched(send: Any) -> tuple[Any, Callable[[], bool]]:
    """``send`` and a question: has a response begun? uvicorn's own ``send`` (a bound method of its
    request's cycle) knows already — asked there, no wrapper runs per message; any other ``send`` is
    wrapped to watch for ``http.response.start``."""
    cycle = getattr(send, "__self__", None)
    if isinstance(getattr(cycle, "response_started", None), bool):
        return send, lambda: bool(cycle.response_started)
    started = False

    async def sender(message: Any) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    return sender, lambda: started


class _SessionResponse:
    """Streams one session (NDJSON or SSE, gzip when asked) and cancels it when the client disconnects."""

    def __init__(
        self,
        sessions: _Sessions,
        request: CompletionRequest,
        context: RequestContext,
        *,
        media_type: str,
        render: Callable[[StreamEvent], bytes],
        gzip: bool,
    ) -> None:
        self.sessions = sessions
        self.request = request
        self.context = context
        self.media_type = media_type
        self.render = render
        self.gzip = gzip

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        outbox = EventOutbox()  # a slow client holds the engine back once its high-water mark is reached
        try:
            running = self.sessions.start(self.request, self.context, outbox.put, drain=outbox.drain)
        except REFUSED_BEFORE_START as exc:  # the principal's cap, or the stop: refused before it starts
            await self.sessions.refused(self.request, self.context, exc)
            await _error_response(exc, _refusal_status(exc), self.request.session_id)(scope, receive, send)
            return
        compressor = _GzipStream() if self.gzip else None
        headers = [
            (b"content-type", self.media_type.encode()),
            (b"cache-control", b"no-store"),
            (b"vary", b"accept-encoding"),
            (VERSION_HEADER.encode(), SPOKEN.encode()),
        ]
        if compressor is not None:
            headers.append((b"content-encoding", b"gzip"))

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            ended = False
            while not ended:
                events = await outbox.take()
                ended = isinstance(events[-1], (Done, Error))  # the terminal event is always a batch's last
                chunk = b"".join(self.render(event) for event in events)
                if compressor is not None:
                    chunk = compressor.compress(chunk) + (compressor.finish() if ended else b"")
                # the last batch ends the body too: one write for both
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})

        await stream_session(pump(), running, receive)


def _ndjson(event: StreamEvent, limit: int) -> bytes:
    data = encode(event)
    if len(data) <= limit or type(event) not in CUT_EVENTS:
        return data + b"\n"  # (anything but text goes whole, as it always did)
    return frames_within(event, limit)  # a token longer than a frame goes as several, as on every transport


_SSE_FIELDS: dict[type, bytes] = {}
"""``event: <type>\ndata: `` for each message class, made once (its tag is fixed)."""


def _sse(event: StreamEvent, limit: int) -> bytes:
    head = _SSE_FIELDS.get(type(event))
    if head is None:
        head = _SSE_FIELDS[type(event)] = b"event: " + str(event.__struct_config__.tag).encode() + b"\ndata: "
    data = encode(event)
    if len(data) <= limit or type(event) not in CUT_EVENTS:
        return head + data + b"\n\n"
    return b"".join(head + frame + b"\n\n" for frame in frames_within(event, limit).splitlines())


def _bearer(header: str | None) -> str | None:
    return header[7:].strip() if header and header[:7].lower() == "bearer " else None


# -- the discovery document ------------------------------------------------------------------------------

_HOST_CHARACTERS = frozenset(string.ascii_letters + string.digits + ".-_:[]")


def _request_host(header: str | None, fallback: str) -> str:
    """The ``host[:port]`` the client used (its ``Host`` header), or ``fallback`` for a missing or odd one."""
    if header and len(header) <= 255 and set(header) <= _HOST_CHARACTERS:
        return header
    return fallback


def _with_host(url: str, hostname: str) -> str:
    """``url`` with a wildcard host (``0.0.0.0``, ``::``) replaced by the name the client reached us by."""
    parts = urlsplit(url)
    if parts.hostname not in ("0.0.0.0", "::", ""):
        return url
    host = f"[{hostname}]" if ":" in hostname else hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


_WITHOUT_V1 = frozenset({"/chat/completions", "/responses", "/models", "/embeddings", "/completions"})
"""Where the OpenAI SDK posts when its base URL is the gateway's root, without ``/v1``."""


def _through_a_proxy(request: Any, host: str, own: str) -> bool:
    """Whether the client reached this listener through something else: it names another port than the
    listener's own, or a proxy's ``X-Forwarded-*`` header came with it."""
    if any(name in request.headers for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")):
        return True
    return urlsplit(f"//{host}").port != urlsplit(f"//{own}").port


def discovery_document(host: str, *, tls: bool, offers: dict[str, str]) -> dict[str, Any]:
    """``GET /.well-known/gtl``: every transport offered, best first, each with its ``connect()`` URL."""
    schemes = {"http": "https", "sse": "sses", "ws": "wss"} if tls else {"http": "http", "sse": "sse", "ws": "ws"}
    hostname = urlsplit(f"//{host}").hostname or host
    urls = {name: _with_host(url, hostname) for name, url in offers.items() if name not in schemes}
    urls.update({name: f"{scheme}://{host}" for name, scheme in schemes.items()})
    ordered = {name: urls[name] for name in OFFER_ORDER if name in urls}
    ordered.update({name: url for name, url in urls.items() if name not in ordered})
    return {"protocol": "gtl", "versions": list(SUPPORTED_VERSIONS), "transports": ordered, "paths": dict(PATHS)}


# -- the application --------------------------------------------------------------------------------------


def _quiet_invalid_requests(record: logging.LogRecord) -> bool:
    """Drop uvicorn's warning for a malformed request, and its traceback for a WebSocket text message that is
    not UTF-8 (the client is answered 400, or closed with 1007): a client must not be able to fill the log with
    tracebacks. Each is logged at debug here instead."""
    message = record.getMessage()
    if message.startswith("Invalid HTTP request received"):
        log.debug("a client sent a malformed HTTP request (it was answered 400)")
        return False
    if message.startswith("Invalid UTF-8 sequence received from client"):
        log.debug("a client sent a WebSocket text message that is not UTF-8 (closed with 1007)")
        return False
    return True


def _metrics_routes(engine: Engine, metrics: Any, *, require_token: bool, authenticate: Authenticate) -> list[Any]:
    """``GET /metrics`` when metrics are on (``[gateway.metrics]``); reading them needs ``metrics:read``."""
    if metrics is None:
        return []
    from gtl_nb.gateway.metrics import metrics_route

    async def refresh() -> None:
        await metrics.refresh_breakers(engine)
        metrics.store_states(degraded_parts(engine, authenticate))

    return [
        metrics_route(
            metrics,
            require_token=require_token,
            authenticate=authenticate,
            scope=SCOPES["metrics.read"],
            refresh=refresh,
        )
    ]


def build_app(
    engine: Engine,
    *,
    authenticate: Authenticate,
    limits: Limits,
    shutdown: Shutdown,
    sessions: _Sessions | None = None,
    base_url: Callable[[], str],
    offers: Callable[[], dict[str, str]] | None = None,
    advertised: Collection[str] = (),
    compression: bool = True,
    metrics: Any = None,
    metrics_require_token: bool = True,
    loopback_callers_only: bool = False,
) -> Any:
    """The application of one gateway listener: Starlette's, with the busiest routes called directly
    (``_HotRoutes``; ``serve_http`` puts the connection gate in front); with ``metrics``
    (``gateway.metrics.Metrics``) it also serves ``GET /metrics``. ``loopback_callers_only``: a
    development gateway (no GhostToken checked), whose ``/readyz`` reasons go to loopback callers."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    sessions = sessions or _Sessions(engine, limits.max_sessions_per_principal, shutdown)
    max_body_bytes = limits.max_frame_bytes
    features = features_value(limits.features)

    def context_of(request: Request, **more: Any) -> RequestContext:
        """The caller's context (``AuthenticationError`` when refused): its address, its trace id (its
        ``traceparent``'s, else a new one, as the engine would make), and ``more`` fields, in one replace."""
        peer = peer_text(request.client)
        context = authenticated_or_logged(authenticate, _bearer(request.headers.get("authorization")), peer)
        trace_id = trace_id_from(request.headers.get("traceparent")) or random_hex(2)
        return dataclasses.replace(context, peer=peer, trace_id=trace_id, **more)

    async def read_frame(request: Request, kind: type[Any], name: str) -> Any:
        """The body, one GTL frame of type ``kind``; read a piece at a time and refused (``FrameTooLargeError``)
        as soon as it passes ``max_body_bytes``, so an endless chunked body costs no more memory than that."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise FrameTooLargeError(f"the body of {length} bytes exceeds the maximum of {max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise FrameTooLargeError(f"the body exceeds the maximum of {max_body_bytes} bytes")
        try:  # (a large body decoded in a thread: ``offload``)
            message = await converted(len(body), functools.partial(decode, max_bytes=max_body_bytes), bytes(body))
        except GTLError as exc:
            exc.session_id = claimed_session_id(bytes(body))  # type: ignore[attr-defined]  # (_body_refusal's)
            raise
        if not isinstance(message, kind):
            raise InvalidRequestError(f"the body must be a {name}, not {type(message).__name__}")
        return message

    async def completion(request: Request, *, sse: bool) -> Any:
        try:
            context = context_of(request, transport="sse" if sse else "http")
        except AuthenticationError as exc:
            return _token_refusal(exc)
        if (refusal := _version_refusal(request)) is not None:
            return refusal
        try:
            message: CompletionRequest = await read_frame(request, CompletionRequest, "completion_request")
        except GTLError as exc:
            return _body_refusal(exc)
        if not message.session_id:  # "" is a connection-level error's id; one session per call: any unique id
            message = msgspec.structs.replace(message, session_id=unique_hex())  # (as gRPC's Complete)
        gzip = compression and accepts_gzip(request.headers.get("accept-encoding"))
        if sse or message.stream:
            media, format_event = ("text/event-stream", _sse) if sse else (NDJSON, _ndjson)
            render = functools.partial(format_event, limit=max_body_bytes)  # (a frame, as the client reads one)
            return _SessionResponse(sessions, message, context, media_type=media, render=render, gzip=gzip)
        return await collected(request, message, context, gzip=gzip)

    async def collected(request: Request, message: CompletionRequest, context: RequestContext, *, gzip: bool) -> Any:
        """``stream: false``: the whole session in one JSON object, its status from how it ended."""
        events: list[StreamEvent] = []
        try:
            await collect_session(sessions, message, context, events.append, request.receive)
        except REFUSED_BEFORE_START as exc:  # the principal's cap, or the stop: refused before it starts
            return _error_response(exc, _refusal_status(exc), message.session_id)
        body = b'{"session_id":' + msgspec.json.encode(message.session_id) + b',"events":['
        body += b",".join(encode(event) for event in events) + b"]}"
        status, headers = 200, {"vary": "accept-encoding", "cache-control": "no-store", VERSION_HEADER: SPOKEN}
        last = events[-1] if events else None
        if isinstance(last, Error):
            status = 503 if try_later(last) else STATUS_OF_CODE.get(last.code, 500)
            if last.retry_after is not None and math.isfinite(last.retry_after):
                headers["retry-after"] = str(max(0, math.ceil(last.retry_after)))
        if gzip and len(body) > 1024:
            body = gzip_module.compress(body, compresslevel=6, mtime=0)
            headers["content-encoding"] = "gzip"
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    async def post_gtl(request: Request) -> Any:
        return await completion(request, sse=False)

    async def post_sse(request: Request) -> Any:
        return await completion(request, sse=True)

    async def providers(request: Request) -> Any:
        try:
            context = context_of(request)
        except AuthenticationError as exc:
            return _token_refusal(exc)
        if (refusal := _version_refusal(request)) is not None:  # what connect() asks first
            return refusal
        return Response(
            msgspec.json.encode(visible_providers(engine, context)),
            media_type="application/json",
            # the body size this gateway takes: a client refuses a larger request itself, with a clear
            # error, instead of losing its connection mid-upload (the others learn it from hello)
            # and the features it knows (no hello here): the client refuses a request field it lacks
            headers={MAX_FRAME_HEADER: str(max_body_bytes), VERSION_HEADER: SPOKEN, FEATURES_HEADER: features},
        )

    async def post_query(request: Request) -> Any:
        """``POST /v1/gtl/query``: one ``query`` frame in, its ``answer`` frame out (200 whatever it says)."""
        try:
            context = context_of(request)
        except AuthenticationError as exc:
            return _token_refusal(exc)
        if (refusal := _version_refusal(request)) is not None:
            return refusal
        try:
            query: Query = await read_frame(request, Query, "query")
        except GTLError as exc:
            return _body_refusal(exc)
        answer = await answer_query(engine, context, query, max_bytes=max_body_bytes)
        headers = {"cache-control": "no-store", VERSION_HEADER: SPOKEN}
        return Response(encode(answer), media_type="application/json", headers=headers)

    async def healthz(request: Request) -> Any:
        return JSONResponse({"status": "ok"})

    async def not_found(request: Request, exc: Exception) -> Any:
        """A path nobody here serves (the compatible endpoints answer under their own paths, in their own shape)."""
        where = f"{request.method} {request.url.path}"
        if request.url.path == "/metrics" and metrics is None:  # a scraper's first request: say how to turn them on
            off = "metrics are off on this gateway: its operator turns them on in [gateway.metrics]"
            return _error_response(InvalidRequestError(f"no endpoint at {where}; {off} (docs/operations.md)"), 404)
        if request.url.path.startswith("/v1/v1/"):  # an SDK given a base URL that ends in /v1 already
            advice = (
                "the SDK's base URL ends in /v1 already: give the Anthropic SDK the gateway's root "
                f"({request.base_url}), the OpenAI SDK its /v1 ({request.base_url}v1)"
            )
        elif request.url.path in _WITHOUT_V1:  # the OpenAI SDK given the gateway's root: its paths lack /v1
            advice = f"the OpenAI SDK's base URL needs /v1 at its end: give it {request.base_url}v1"
        else:
            advice = f"this gateway serves {_ENDPOINTS}"
        return _in_the_callers_shape(request, InvalidRequestError(f"no endpoint at {where}; {advice}"), 404)

    async def not_allowed(request: Request, exc: Exception) -> Any:
        allow = (exc.headers or {}).get("Allow", "") if isinstance(exc, HTTPException) else ""
        path = request.url.path
        use = " or ".join(f"{method.strip()} {path}" for method in allow.split(",") if method.strip())
        error = InvalidRequestError(f"{request.method} {path} is not served; use {use or 'another method'}")
        return _error_response(error, 405, headers={"allow": allow} if allow else None)

    async def internal(request: Request, exc: Exception) -> Any:
        """A bug: uvicorn still logs its traceback, the client reads a GTL error rather than plain text."""
        return _error_response(InternalError("the gateway failed to answer this request"), 500)

    async def client_gone(request: Request, exc: Exception) -> Any:
        """The client left before its body was whole (or ``_HttpProtocol._cut`` cut it off, and said so)."""
        if _CUT not in request.scope:
            peer = f"{request.client.host}:{request.client.port}" if request.client else "?"
            log.info("client %s disconnected mid-body (%s %s)", peer, request.method, request.url.path)
        return Response(status_code=400)  # goes nowhere: the connection is gone

    async def no_socket(socket_: WebSocket) -> None:
        """A WebSocket upgrade to any other path: refused as an HTTP request to it would be."""
        error = InvalidRequestError(f"no WebSocket endpoint at {socket_.url.path}; this gateway serves {_ENDPOINTS}")
        await _refuse(socket_.scope, socket_.receive, socket_.send, 404, error)

    async def readyz(request: Request) -> Any:
        """``ready``, or ``degraded`` (still 200: the gateway serves while a shared store is away — the
        PostgreSQL ledger spooling its rows, Redis stores falling back to local ones); ``503``
        ``unavailable`` while it refuses every token. Why a part is degraded only for a caller who may
        read operations data (``gateway.readiness``): the reasons name internal hosts and users."""
        bearer = _bearer(request.headers.get("authorization"))
        peer = request.client.host if request.client else None
        reasons = may_read_reasons(authenticate, bearer, peer, development=loopback_callers_only)
        status, body = readiness(engine, authenticate, reasons=reasons)
        return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})

    async def discovery(request: Request) -> Any:
        base = base_url()
        own = base.partition("://")[2]
        host = _request_host(request.headers.get("host"), own)
        secure = base.startswith("https:") or request.url.scheme == "https"  # a trusted proxy's TLS too
        offered = offers() if offers else {}
        if _through_a_proxy(request, host, own):  # the other listeners' own addresses lead around it
            offered = {name: url for name, url in offered.items() if name in advertised}
        document = discovery_document(host, tls=secure, offers=offered)
        return JSONResponse(document, headers={"cache-control": "no-store"})

    async def websocket(socket_: WebSocket) -> None:
        """``/v1/gtl/ws``: one GTL connection, many sessions; the header's token counts as hello's. The
        upgrade's ``GTL-Version`` is negotiated as a request's (refused with ``400`` when it names no version
        this gateway speaks), its answer named in the ``101``, and it is what a client sending no hello is
        taken to speak (``GTLConnection``'s implied hello)."""
        from gtl_nb.protocol.connection import GTLConnection
        from gtl_nb.transports.messages import NDJSON_SUBPROTOCOL, MessageChannel, ws_close_code

        offered = ", ".join(socket_.headers.getlist(VERSION_HEADER))
        agreed = None
        if offered.strip(" ,"):
            try:
                agreed = negotiate_header(offered)
            except VersionMismatchError as exc:
                await _refuse(socket_.scope, socket_.receive, socket_.send, 400, exc)
                return
        bearer = _bearer(socket_.headers.get("authorization"))
        joins = NDJSON_SUBPROTOCOL in socket_.scope.get("subprotocols", ())  # several frames a message
        said = [(VERSION_HEADER.encode(), (agreed or SPOKEN).encode())]
        await socket_.accept(subprotocol=NDJSON_SUBPROTOCOL if joins else None, headers=said)

        async def recv() -> str | bytes | None:
            message = await socket_.receive()
            if message["type"] == "websocket.disconnect":
                return None
            return message.get("text") if message.get("text") is not None else message.get("bytes")

        async def close() -> None:  # a connection ended for a bad frame closes 1008 (1009, …), not 1000
            await socket_.close(code=ws_close_code(serving.gave_up_with))

        channel = MessageChannel(recv, socket_.send_text, close, peer=peer_text(socket_.client), joins_frames=joins)
        implied = [agreed or IMPLIED_VERSION]  # what a client sending no hello speaks
        connection = GTLConnection(
            "server", max_frame_bytes=max_body_bytes, features=limits.features, implied_versions=implied
        )
        framed = OffloadedFrames(connection, channel)  # a large frame decoded in a worker thread
        with sessions.socket():
            serving = GatewayConnection(
                engine,
                framed,
                authenticate=HeaderTokenFirst(authenticate, bearer),
                max_sessions=limits.max_sessions_per_connection,
                limits=limits,
                shutdown=shutdown,
                transport="ws",
            )
            try:
                await serving.run()
            finally:
                await channel.aclose()

    routes = [
        WebSocketRoute(PATHS["ws"], websocket),
        Route(PATHS["http"], post_gtl, methods=["POST"]),
        Route(PATHS["sse"], post_sse, methods=["POST"]),
        Route(PATHS["providers"], providers, methods=["GET"]),
        Route(PATHS["query"], post_query, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/.well-known/gtl", discovery, methods=["GET"]),
        # OpenAI- and Anthropic-compatible endpoints, on the same sessions (docs/gateway.md)
        *compat_routes(engine, authenticate=authenticate, sessions=sessions, limits=limits),
        *_metrics_routes(engine, metrics, require_token=metrics_require_token, authenticate=authenticate),
        WebSocketRoute("/{path:path}", no_socket),  # last: only what no route above takes
    ]
    app = Starlette(
        routes=routes,
        # the router's own 404 and 405, and a bug's 500, as GTL errors (a handler's own answers are untouched)
        exception_handlers={404: not_found, 405: not_allowed, 500: internal, ClientDisconnect: client_gone},
    )
    hot: dict[str, Any] = {}
    for route in routes:  # the first route taking POST at a path, as Starlette's router would pick
        if isinstance(route, Route) and route.path in _HOT_PATHS and "POST" in (route.methods or ()):
            hot.setdefault(route.path, route.endpoint)
    return _HotRoutes(app, hot, client_gone=client_gone, internal=internal)


# -- the listener ------------------------------------------------------------------------------------------


def bind(host: str, port: int, *, insecure: bool = False) -> socket.socket:
    """The listening socket; a plaintext listener binds to loopback only unless ``insecure``."""
    if not insecure and not is_loopback(host):
        raise ConfigurationError(
            f"a plaintext listener binds to loopback only (127.0.0.1, ::1); add --insecure to listen on {host}"
        )
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.create_server((address, port), family=family)


async def serve_http(
    engine: Engine,
    listener: ListenerSettings,
    *,
    authenticate: Authenticate,
    limits: Limits,
    shutdown: Shutdown,
    ready: Ready,
    offers: Callable[[], dict[str, str]] | None = None,
    advertised: Collection[str] = (),
    compression: bool = True,
    metrics: Any = None,
    metrics_require_token: bool = True,
    loopback_callers_only: bool = False,
    allowed_hosts: frozenset[str] = frozenset(),
) -> None:
    """Serve HTTP, SSE, WebSocket and discovery on ``listener`` (https/wss with its TLS files) until shutdown.

    Follows ``gateway.listeners``: ``ready(url)`` once it accepts; after ``shutdown.begin()`` it stops
    accepting, refuses new requests (``503``), lets running streams and WebSocket sessions finish for
    ``shutdown.grace`` seconds, ends the rest with ``CANCELLED`` and returns with every ledger row
    complete. Cancelling it does the same at once. ``offers()`` gives the other listeners' client URLs
    for ``/.well-known/gtl``; to a client that came through a proxy only those ``advertised`` (``[gateway]
    advertise``) are offered, since a listener's own address would lead around the proxy.
    ``compression=False`` never gzips and does not offer permessage-deflate.
    ``loopback_callers_only`` (a development gateway, which checks no GhostToken) refuses what a web
    page could send it (``_Gate``), answering requests addressed to a loopback name or to one of
    ``allowed_hosts`` (``[gateway] allowed_hosts``).
    uvicorn runs without its signal handlers: whoever runs the gateway owns the signals.
    """
    import uvicorn
    from uvicorn.server import ServerState

    sock = bind(listener.host, listener.port, insecure=listener.insecure or listener.tls is not None)
    try:
        tls = listener.tls.server_context(alpn=("http/1.1",)) if listener.tls is not None else None
        url = listener.url(sock.getsockname()[1])
        sessions = _Sessions(engine, limits.max_sessions_per_principal, shutdown)
        share = listener_share(limits.max_connections, limits.tcp_listeners)
        guard = _ConnectionGuard(limits.max_connections_per_address, limits.trusted_proxies, share)
        app = build_app(
            engine,
            authenticate=authenticate,
            limits=limits,
            shutdown=shutdown,
            sessions=sessions,
            base_url=lambda: url,
            offers=offers,
            advertised=advertised,
            compression=compression,
            metrics=metrics,
            metrics_require_token=metrics_require_token,
            loopback_callers_only=loopback_callers_only,
        )
        # uvicorn warns "Invalid HTTP request received." for every malformed request — a client's TLS hello
        # on this plaintext port during discovery, say — and logs a traceback for a WebSocket text message that
        # is not UTF-8; the client already got its answer: keep both to debug
        logging.getLogger("uvicorn.error").addFilter(_quiet_invalid_requests)
        # a request counts towards its deadline at most its largest head and body (then it is refused anyway)
        request_bytes = MAX_HEAD_BYTES + limits.max_frame_bytes
        # a message may hold JOIN_BYTES of frames (gtl.ndjson); GTLConnection refuses a frame over the limit itself
        ws_max_size = max(limits.max_frame_bytes, JOIN_BYTES) + 1024
        # one budget for what every connection of the listener holds of messages still arriving
        unfinished = UnfinishedBytes(max(limits.max_unfinished_bytes, ws_max_size + FREE_BYTES))
        http_protocol, ws_protocol = _protocol_classes(guard, limits, request_bytes, unfinished)
        config = uvicorn.Config(
            _Gate(app, guard, shutdown, loopback_callers_only=loopback_callers_only, allowed_hosts=allowed_hosts),
            http=http_protocol,
            ws=ws_protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,  # the per-address cap and the ledger's peer are the real peer's
            server_header=False,
            timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]
            ws_max_size=ws_max_size,
            ws_per_message_deflate=compression,
        )
        config.load()
        state = ServerState()

        # our own create_server rather than uvicorn.Server: no signal handlers, no polling loop, and the
        # TLS handshake gets the header deadline too (uvicorn leaves asyncio's 60 s)
        def protocol() -> Any:
            return http_protocol(config=config, server_state=state, app_state={})

        server: Any
        if tls is not None:  # plain HTTP to it is answered 400 "this port speaks TLS", as nginx does
            server = TlsServer(sock, protocol, tls, handshake_timeout=limits.header_timeout, backlog=socket.SOMAXCONN)
        else:
            server = await asyncio.get_running_loop().create_server(
                protocol,
                sock=sock,
                # asyncio's default backlog (100) overflows with a burst of connections — one client opening its
                # share at once — and the kernel then drops the handshakes' last ACKs: other clients' requests
                # arrive seconds late and can be cut at header_timeout (408). Let the kernel queue what it allows.
                backlog=socket.SOMAXCONN,
            )
    except BaseException:
        sock.close()
        raise
    try:
        ready(url)
        await shutdown.wait()
        log.info("%s: shutting down, running sessions get %g s", url, shutdown.grace)
        server.close()  # stop accepting: a new connection is refused by the operating system
        # idle keep-alive connections close now, busy ones after their response; WebSockets end their own
        _shut(connection for connection in state.connections if isinstance(connection, _HttpProtocol))
        if not await sessions.wait_idle(shutdown.grace):
            sessions.cancel_all("the gateway shutting down")  # WebSocket connections cancel their own
            await sessions.wait_idle(CLOSE_WAIT)
    finally:  # also the way out when cancelled: no grace, sessions end now
        server.close()
        sessions.cancel_all("the gateway shutting down")
        _shut(state.connections)  # WebSockets close (1012): their connections cancel what still runs
        await _settle(state.tasks)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), CLOSE_WAIT)


def _shut(connections: Any) -> None:
    """uvicorn's ``shutdown()`` on each connection (a WebSocket already closing raises: it is closing anyway)."""
    for connection in list(connections):
        try:
            connection.shutdown()
        except Exception as exc:
            log.debug("shutting a connection down: %s", exc)


async def _settle(tasks: set[asyncio.Task[None]]) -> None:
    """Let the connections' request tasks end (``CLOSE_WAIT`` at most), then cancel what is left."""
    pending = set(tasks)
    if pending:
        _, pending = await asyncio.wait(pending, timeout=CLOSE_WAIT)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_WAIT)
