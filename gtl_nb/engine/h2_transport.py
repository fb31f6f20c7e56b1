"""``H2Transport``: provider calls multiplexed over HTTP/2 (``[upstream] client = "h2"``), a client of
our own over the ``h2`` state machine.

Why: over HTTP/1.1 every open stream holds a connection, so a gateway holding N streaming sessions needs
2N descriptors (N clients, N upstream); over HTTP/2 one connection carries many streams, so it needs N
and a handful. httpx's HTTP/2 was measured first and not kept: each of its streams waits its turn for
the connection's read lock and reads the socket itself, so with thousands of paced streams an event
waits behind every other stream's read (docs/benchmarks.md). Here one protocol object reads for all
of a connection's streams and hands each event to its stream.

What it does, precisely:

* **Which protocol.** ``https://`` offers ``h2`` and ``http/1.1`` by ALPN; ``http://`` speaks HTTP/2
  with prior knowledge (h2c). A server that picks ``http/1.1``, or answers the h2c preface in HTTP/1.1
  (as local model servers do), is remembered as an HTTP/1.1 server and this call and every later one
  to it go through an ``HttptoolsTransport`` of this client's own: setting ``client = "h2"`` never
  cuts a deployment off. (The request is sent once: the HTTP/1.1 server saw only the preface, which
  it refused as a malformed request.) That client offers only ``http/1.1`` by ALPN; given a context
  of the caller's, which offers both, a server remembered as HTTP/1.1 that chooses ``h2`` on a later
  connection is refused there before anything is sent, and called over HTTP/2 again. A server that
  closes the connection at the preface without a word cannot be told from one that failed, and fails
  the call.
* **Connections.** A connection carries up to the peer's ``SETTINGS_MAX_CONCURRENT_STREAMS`` streams
  (its first streams start once those settings arrive); when every connection to a host is full
  another is opened, within ``max_connections`` and ``max_connections_per_host`` (0: no bound);
  beyond those a request waits for a free stream in order of arrival, within its connect timeout.
  Requests that arrive while a connection is being opened wait for it rather than each opening their
  own, are served in order of arrival, and share its failure. A connection without streams for
  ``idle_timeout`` seconds is closed; one whose server's settings do not arrive within the connect
  timeout is given up; one that has said nothing at all since a stream that timed out started is sent
  a PING, and when nothing arrives within ``PING_TIMEOUT`` it is drained: no new stream goes there (a
  dead path would otherwise take every later request to that host), the streams on it end by their
  own deadlines or answers (a stalled server may still answer), and it closes after the last. A
  server whose limit is 0 streams is waited for, not answered with more connections. After a
  ``GOAWAY`` no new stream starts on the connection; the streams the server says it did not take fail as
  ``ConnectFailed`` (never processed: the engine's retry policy may send them again).
* **Flow control.** Received data is acknowledged as the caller reads it, so an unread stream buffers
  at most its window (``STREAM_WINDOW``); the connection's window is ``CONNECTION_WINDOW``. A request
  body larger than the peer's window is sent as the window opens.
* **Limits.** A response's header list is bounded by HPACK's decoder (64 KiB) and by ``MAX_HEADERS``;
  the request header table is kept at ``HPACK_TABLE`` bytes whatever the server allows;
  server push is refused; compressed bodies are inflated in bounded pieces (``http_parts.Inflater``).
* **Errors** map onto the seam's exceptions (``engine.transport``); no message quotes a header value or
  the URL's query. A stream the caller abandons is reset (``CANCEL``); its connection carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from gtl_nb.engine.http_parts import (
    URL_CACHE_SIZE,
    BufferedPieces,
    Expired,
    Inflater,
    Key,
    NegotiatedHttp2,
    RequestTarget,
    cancel_for_time,
    expire,
    os_reason,
)
from gtl_nb.engine.httptools_transport import HttptoolsTransport
from gtl_nb.engine.transport import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    HttpResponse,
    check_request_headers,
)
from gtl_nb.providers.base import HttpRequest

__all__ = ["H2Transport"]

PING_TIMEOUT = 5.0
"""Seconds a connection suspected dead (a stream timed out and nothing arrived since it started) has to
answer a PING before it is closed."""
HPACK_TABLE = 4096
"""The most bytes of the request header table kept for a server, whatever larger size it allows: a
bigger table makes each request's encoding slower (HPACK's search is linear)."""
STREAM_WINDOW = 256 * 1024
"""Bytes a stream's server may send ahead of the caller's reading."""
CONNECTION_WINDOW = 16 * 1024 * 1024
"""Bytes all of a connection's streams together may have unread."""
MAX_HEADERS = 256
IDLE_TIMEOUT = 15.0
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"})
"""Request headers HTTP/2 forbids (RFC 9113 8.2.2); ``host`` becomes ``:authority``."""


class _Multiplexer(h2.connection.H2Connection):
    """h2's connection state machine with its count of open streams taken from the pool. h2 counts by
    walking every stream it holds (the walk is also where it forgets closed ones) before each new
    stream: quadratic, with thousands open on one connection. The pool knows its open streams (it
    keeps the server's limit itself), so that count stands in, and h2's walk runs once every
    ``FORGET_EVERY`` new streams to forget the closed ones."""

    FORGET_EVERY = 256

    def __init__(self, open_streams: dict[int, _Stream]) -> None:
        super().__init__(
            config=h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                # the request headers are ours, lower-case and checked (`_request_headers`): no second look
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self._pool_streams = open_streams
        self._new_streams = 0

    @property
    def open_outbound_streams(self) -> int:
        self._new_streams += 1
        if self._new_streams % self.FORGET_EVERY == 0:
            return super().open_outbound_streams
        return len(self._pool_streams)

    def _receive_goaway_frame(self, frame: Any) -> Any:
        # h2 closes its state machine at a GOAWAY and would refuse the frames of the streams the server
        # goes on answering (python-hyper/h2 issue 1199), even later in the same read: reopen it while
        # one of ours is among them (``draining`` keeps new streams off the connection)
        result = super()._receive_goaway_frame(frame)
        if any(stream_id <= frame.last_stream_id for stream_id in self._pool_streams):
            self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return result


class _Stream:
    """One request's stream: its response's head, body pieces and end (or failure), and what is left
    of its request body to send."""

    __slots__ = (
        "body",
        "complete",
        "failure",
        "head",
        "headers",
        "id",
        "started",
        "status",
        "unacknowledged",
        "upload",
        "waiter",
    )

    def __init__(self, head: asyncio.Future[None]) -> None:
        self.id = 0
        self.started = 0  # the connection's count of reads when the stream started
        self.head = head
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: deque[bytes] = deque()
        self.unacknowledged = 0  # flow-controlled bytes received and not yet read by the caller
        self.complete = False
        self.failure: Exception | None = None
        self.upload: memoryview | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, failure: Exception, unanswered: str) -> None:
        """End the stream with ``failure`` once its head arrived, else with ``_Unanswered(unanswered)``."""
        if self.complete or self.failure is not None:
            return
        if self.head.done():
            self.failure = failure
            self.wake()
        else:
            self.head.set_exception(_Unanswered(unanswered))


class _SpeaksHttp1(ConnectFailed):
    """The server does not speak HTTP/2: the call goes over HTTP/1.1 instead."""


class _Unanswered(ConnectFailed):
    """The stream ended before its response's head: the request was not answered."""


class _H2Connection(asyncio.Protocol):
    """One HTTP/2 connection: the ``h2`` state machine turns what arrives into its streams' events."""

    def __init__(self, pool: H2Transport, key: Key, generation: int, tls: bool) -> None:
        self.pool = pool
        self.key = key
        self.generation = generation
        self.tls = tls
        self.counted = True  # it holds a place in the pool's counts until it closes
        self.streams: dict[int, _Stream] = {}
        self.uploading: dict[int, _Stream] = {}  # streams whose request body waits for window
        self.h2 = _Multiplexer(self.streams)
        self.transport: asyncio.Transport | None = None
        self.reserved = 0  # requests waiting for this connection to open, each promised a stream
        self.followers: list[asyncio.Future[bool]] = []  # their wake-ups: True, a stream is theirs
        self.ready = False  # connected, and the server's settings (its stream limit) known
        self.refusal: str | None = None  # why it could not open as HTTP/2
        self.http1 = False  # the refusal: the server speaks HTTP/1.1
        self.draining = False  # a GOAWAY arrived (or we are closing): no new streams
        self.settings_received = False
        self.closed = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.reads = 0  # data_received calls so far: whether anything arrived since a moment
        self.first_bytes = b""  # (h2c) what arrived before the server's settings, while it may be "HTTP/"
        self.ping_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:  # the client was closed while this connection opened
            transport.abort()
            return
        if self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if chosen != "h2":
                self._refuse_http1(f"the server chose {chosen or 'no protocol'} by ALPN")
                return
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        self._flush()  # streams start once the server's settings arrive (``settle``)

    def data_received(self, data: bytes) -> None:
        if not self.settings_received and not self.tls:
            # an HTTP/1.1 answer to the h2c preface, perhaps split: hold the first bytes until they tell
            data = self.first_bytes + data
            if len(data) < 5 and b"HTTP/".startswith(data):
                self.first_bytes = data
                return
            self.first_bytes = b""
            if data.startswith(b"HTTP/"):
                self._refuse_http1("the server answered the HTTP/2 preface in HTTP/1.1")
                return
        self.reads += 1
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._dispatch(event)
        except (h2.exceptions.ProtocolError, ValueError) as exc:  # (hpack's errors arrive as ProtocolError)
            self._flush()  # the GOAWAY h2 prepared
            self._fail_streams(ConnectionLost(f"an HTTP/2 protocol error ({type(exc).__name__})"))
            self.close()
            return
        self._flush()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ready = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.ping_timer is not None:
            self.ping_timer.cancel()
        reason = f"the connection closed ({os_reason(exc)})" if exc is not None else "the connection closed"
        self.settle(_SpeaksHttp1(self.refusal or "") if self.http1 else ConnectFailed(self.refusal or reason))
        self._fail_streams(ConnectionLost(reason + " mid-body"), reason)
        self.pool._discard(self)

    # -- events

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:  # a stream we reset: hand its window back at once
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            if not event.data:  # padding only: nothing for the caller to read, so nothing to wait for
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream.body.append(event.data)
            stream.unacknowledged += event.flow_controlled_length
            stream.wake()
        elif isinstance(event, h2.events.ResponseReceived):
            self._head(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.complete = True
                stream.wake()
                if stream.upload:  # the server answered before the body was sent: stop sending it
                    self._abandon(stream)
                self._end(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                code = _code_name(event.error_code)
                if event.remote_reset:
                    stream.fail(
                        ConnectionLost(f"the server reset the stream ({code})"),
                        f"the server refused the stream ({code})",
                    )
                else:  # h2 reset it: the server broke the protocol on this stream
                    broke = f"the server broke the protocol on the stream ({code})"
                    stream.fail(ConnectionLost(broke), broke)
                self._end(stream)
        elif isinstance(event, h2.events.WindowUpdated):
            waiting = self.uploading
            targets = list(waiting.values()) if event.stream_id == 0 else [waiting.get(event.stream_id)]
            for stream in targets:
                if stream is not None:
                    self._send_body(stream)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            encoder = self.h2.encoder
            if encoder.header_table_size > HPACK_TABLE:
                encoder.header_table_size = HPACK_TABLE
            for stream in list(self.uploading.values()):  # a larger initial window opens every stream's
                self._send_body(stream)
            if not self.settings_received:
                self.settings_received = True
                self.settle(None)
            self.pool._wake(self.key, everyone=True)  # room for more streams, perhaps
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)
        # other events (informational heads, trailers, pings, settings acknowledged) need nothing of ours

    def _head(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.head.done():
            return
        if len(event.headers) > MAX_HEADERS + 1:
            self._refuse(stream, "too many headers")
            return
        headers: dict[str, str] = {}
        status = 0
        for name, value in event.headers:
            if name == b":status":
                if not (len(value) == 3 and value.isdigit()):
                    self._refuse(stream, "a status that is not three digits")
                    return
                status = int(value)
            elif not name.startswith(b":"):
                # lower-case already (HTTP/2); values as the HTTP/1.1 client reads them
                headers[name.decode("latin-1")] = value.decode("utf-8", "replace").rstrip(" \t")
        stream.status = status
        stream.headers = headers
        stream.head.set_result(None)

    def _refuse(self, stream: _Stream, what: str) -> None:
        self._abandon(stream)
        stream.fail(ConnectionLost(f"a malformed response ({what})"), f"a malformed response ({what})")
        self._end(stream)

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """No new streams; the streams the server did not take fail as unanswered (safe to resend)."""
        self.draining = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = _code_name(event.error_code)
        for stream in [s for s in self.streams.values() if s.id > last]:
            stream.fail(ConnectionLost(f"the server went away ({code})"), f"the server went away ({code})")
            self._end(stream)
        if not self.streams:
            self.close()
        self.pool._wake(self.key, everyone=True)  # waiters may open another connection

    # -- ours

    def _refuse_http1(self, why: str) -> None:
        self.refusal = why
        self.http1 = True
        self.close()

    def usable(self) -> bool:
        return not (self.closed or self.draining or self.refusal)

    def room(self) -> int:
        """Streams this connection could still start (counting those promised to waiting requests);
        unknown, so 1, until the server's settings arrive: requests wait for them on this connection
        rather than each opening another."""
        if not self.settings_received:
            return 1
        return self.h2.remote_settings.max_concurrent_streams - len(self.streams) - self.reserved

    def settle(self, failure: Exception | None) -> None:
        """The connection is ready (``failure`` None: the server's settings arrived) or never will be:
        wake the requests waiting for it (once) — with a stream each for the first to arrive, as many
        as the server allows; the others look for another connection."""
        self.ready = failure is None and not self.closed
        followers, self.followers = self.followers, []
        free = self.h2.remote_settings.max_concurrent_streams - len(self.streams) if self.ready else 0
        for follower in followers:
            if follower.done():
                continue
            if failure is not None:
                follower.set_exception(failure)
            else:
                follower.set_result(free > 0)
                free -= 1
        if self.ready:
            self._idle_if_unused()  # a connection nobody starts a stream on is not kept for ever

    def start(self, stream: _Stream, headers: list[tuple[bytes, bytes]], body: bytes | None) -> None:
        """Open ``stream`` with ``headers`` and send ``body`` as far as the windows allow."""
        try:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, headers, end_stream=not body)
        except h2.exceptions.NoAvailableStreamIDError:
            self.draining = True  # (after 2^30 streams) the next request opens a new connection
            raise _Unanswered("the connection has used all its stream ids") from None
        except h2.exceptions.ProtocolError as exc:
            raise _Unanswered(f"the stream could not start ({type(exc).__name__})") from None
        stream.id = stream_id
        stream.started = self.reads
        self.streams[stream_id] = stream
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if body:
            stream.upload = memoryview(body)
            self._send_body(stream)
        self._flush()

    def consumed(self, stream: _Stream) -> None:
        """The caller read what ``stream`` had buffered: give the server its window back."""
        size, stream.unacknowledged = stream.unacknowledged, 0
        if size and not self.closed:
            self.h2.acknowledge_received_data(size, stream.id)
            self._flush()

    def cancel(self, stream: _Stream) -> None:
        """The caller no longer wants ``stream`` (abandoned mid-body, or cancelled): reset it and hand
        its unread bytes' window back; when nothing at all arrived on the connection since the stream
        started, find out whether the connection still lives (``PING``)."""
        stream.body.clear()
        self.consumed(stream)
        if self.streams.get(stream.id) is stream:
            self._abandon(stream)
            self._end(stream)
            if self.reads == stream.started:
                self._probe()
            self._flush()

    def _probe(self) -> None:
        """PING the server; close the connection when nothing arrives within ``PING_TIMEOUT``."""
        if self.ping_timer is not None or self.closed or self.pool._loop is None:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.ping(b"gtl-live")
        self.ping_timer = self.pool._loop.call_later(PING_TIMEOUT, self._probe_expired, self.reads)

    def _probe_expired(self, reads: int) -> None:
        """Silent since the PING: a dead path or a stalled server. No new stream goes here; the streams
        on it end by their own deadlines (the server may still answer them), then it closes."""
        self.ping_timer = None
        if self.reads == reads and not self.closed:
            self.draining = True
            if not self.streams and not self.reserved:
                self.close()
            self.pool._wake(self.key, everyone=True)  # waiters may open another connection

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.draining = True
            if self.transport is not None:
                self.transport.abort()  # connection_lost follows (and fails what is still open)

    def _abandon(self, stream: _Stream) -> None:
        stream.upload = None
        if not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)

    def _send_body(self, stream: _Stream) -> None:
        upload = stream.upload
        while upload:
            try:
                size = min(self.h2.local_flow_control_window(stream.id), self.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                stream.upload = None
                return
            if size <= 0:
                break  # the rest when the server opens its window (WindowUpdated)
            piece, upload = upload[:size], upload[size:]
            try:
                self.h2.send_data(stream.id, bytes(piece), end_stream=not upload)
            except h2.exceptions.ProtocolError:  # the stream (or the connection) ended meanwhile
                upload = None
                break
        stream.upload = upload or None
        if stream.upload:
            self.uploading[stream.id] = stream
        else:
            self.uploading.pop(stream.id, None)

    def _end(self, stream: _Stream) -> None:
        """``stream`` is over for this connection: its place is free."""
        if self.streams.pop(stream.id, None) is None:
            return
        self.uploading.pop(stream.id, None)
        if not self.streams and not self.reserved and self.draining:
            self.close()
        elif self._idle_if_unused() and self.pool._all_full():
            self.pool._wake(None, everyone=True)  # under the overall bound: another host may take its place
            return
        self.pool._wake(self.key, everyone=False)

    def _idle_if_unused(self) -> bool:
        """Start the idle timer when no stream runs or is promised; whether it is idle."""
        if self.streams or self.reserved or self.closed:
            return False
        if self.idle_timer is None and self.pool._loop is not None:
            self.idle_timer = self.pool._loop.call_later(self.pool.idle_timeout, self._idle_timeout)
        return True

    def _idle_timeout(self) -> None:
        self.idle_timer = None
        if not self.streams and not self.reserved:
            self.close()

    def _fail_streams(self, failure: Exception, unanswered: str = "the connection failed") -> None:
        streams = list(self.streams.values())
        self.streams.clear()  # (in place: the state machine counts it)
        self.uploading.clear()
        for stream in streams:
            stream.fail(failure, unanswered)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class _H2Response:
    """``engine.transport.HttpResponse`` over one stream."""

    __slots__ = ("_connection", "_inflater", "_stream", "headers", "status")

    def __init__(self, connection: _H2Connection, stream: _Stream) -> None:
        self._connection = connection
        self._stream = stream
        self.status = stream.status
        self.headers: Mapping[str, str] = stream.headers
        self._inflater = Inflater.for_headers(stream.headers)

    def chunks(self) -> AsyncIterator[bytes]:
        stream, connection = self._stream, self._connection
        return BufferedPieces(stream, self._inflater, lambda _size: connection.consumed(stream))

    async def aclose(self) -> None:
        stream = self._stream
        if not stream.complete and stream.failure is None:
            self._connection.cancel(stream)  # (which hands the unread bytes' window back too)
        else:
            stream.body.clear()
            self._connection.consumed(stream)  # unread bytes still hold the connection's window


class H2Transport:
    """Provider calls over HTTP/2 (module docstring); the pool belongs to the loop that uses it.

    ``max_connections`` bounds the open connections in all and ``max_connections_per_host`` those to
    one host (0: no bound); ``idle_timeout``: seconds a connection without streams is kept;
    ``ssl_context``: how ``https://`` servers are verified (default: the system's trust store); ALPN is
    set on it, and the HTTP/1.1 client for servers without HTTP/2 uses it too. The bounds apply to
    each protocol's connections apart.
    """

    def __init__(
        self,
        *,
        max_connections: int = 0,
        max_connections_per_host: int = 0,
        idle_timeout: float = IDLE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.idle_timeout = idle_timeout
        self._ssl = ssl_context  # for HTTP/2: offers h2 and http/1.1
        self._ssl_http1 = ssl_context  # for the HTTP/1.1 fallback: offers http/1.1 only, unless given
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: dict[Key, list[_H2Connection]] = {}
        self._open_total = 0
        self._waiters: deque[tuple[Key, asyncio.Future[None]]] = deque()
        self._targets: dict[str, RequestTarget] = {}
        self._generation = 0
        self._http1_hosts: set[Key] = set()  # servers that answered in HTTP/1.1
        self._http1: HttptoolsTransport | None = None

    def __repr__(self) -> str:
        return (
            f"H2Transport(max_connections={self.max_connections}, "
            f"max_connections_per_host={self.max_connections_per_host})"
        )

    async def send(self, request: HttpRequest, *, connect_timeout: float | None) -> HttpResponse:
        target = self._targets.get(request.url)
        if target is None:
            target = RequestTarget(request.url)
            if len(self._targets) >= URL_CACHE_SIZE:
                self._targets.clear()
            self._targets[request.url] = target
        if target.key in self._http1_hosts:
            try:
                return await self._over_http1(request, connect_timeout)
            except NegotiatedHttp2:  # (over a context given to both) the server speaks HTTP/2 now
                self._http1_hosts.discard(target.key)
        headers = _request_headers(request, target)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._adopt(loop)
        try:
            connection = await self._acquire(target, connect_timeout, loop)
        except _SpeaksHttp1:
            self._http1_hosts.add(target.key)
            return await self._over_http1(request, connect_timeout)
        stream = _Stream(loop.create_future())
        try:
            connection.start(stream, headers, request.body)
            await stream.head
        except _Unanswered as exc:
            raise ConnectFailed(str(exc)) from None
        except BaseException:
            connection.cancel(stream)  # cancelled (the first-byte timeout): the answer would come unasked
            raise
        return _H2Response(connection, stream)

    async def _over_http1(self, request: HttpRequest, connect_timeout: float | None) -> HttpResponse:
        if self._http1 is None:
            self._http1 = HttptoolsTransport(
                max_connections=self.max_connections,
                max_connections_per_host=self.max_connections_per_host,
                idle_timeout=self.idle_timeout,
                ssl_context=self._http1_context(),
            )
        return await self._http1.send(request, connect_timeout=connect_timeout)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(["h2", "http/1.1"])
        return self._ssl

    def _http1_context(self) -> ssl.SSLContext:
        if self._ssl_http1 is None:
            self._ssl_http1 = ssl.create_default_context()
            self._ssl_http1.set_alpn_protocols(["http/1.1"])
        return self._ssl_http1

    async def aclose(self) -> None:
        """Close every connection and wake every waiting request (with ``ConnectFailed``)."""
        if self._http1 is not None:
            await self._http1.aclose()
        waiters, self._waiters = self._waiters, deque()  # first: closing connections below wakes waiters
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the HTTP client was closed"))
        for connections in list(self._connections.values()):
            for connection in list(connections):
                if not connection.ready:  # still opening: its waiters fail now, its place is free
                    connection.settle(ConnectFailed("the HTTP client was closed"))
                    self._discard(connection)
                connection.close()

    # -- the pool

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a pool on ``loop``: the old loop's connections are dropped, never touched from this one."""
        self._connections, self._open_total, self._waiters = {}, 0, deque()
        self._generation += 1
        self._loop = loop

    async def _acquire(
        self, target: RequestTarget, connect_timeout: float | None, loop: asyncio.AbstractEventLoop
    ) -> _H2Connection:
        """A connection to ``target`` with room for one more stream, opened if need be and allowed,
        else the first to have room, in order of arrival — within ``connect_timeout``."""
        key = target.key
        deadline = None if connect_timeout is None else loop.time() + connect_timeout
        waited = False  # a request already queued goes before those that arrive after it
        while True:
            if not waited and self._queued(key):
                waited = True
                await self._wait(None, deadline, connect_timeout, loop, key=key)
                continue
            usable = [c for c in self._connections.get(key, ()) if c.usable()]
            connection = next((c for c in usable if c.room() > 0), None)
            # a server that allows no stream now (its limit 0) is waited for, not answered with more connections
            refusing = any(c.ready and c.h2.remote_settings.max_concurrent_streams == 0 for c in usable)
            if connection is None and not refusing and not self._has_room(key):
                self._close_idle_elsewhere(key)  # another host's idle connection gives its place up
            if connection is None and not refusing and self._has_room(key):
                connection = self._open(target, deadline, loop)
            if connection is not None and connection.ready:
                return connection
            if connection is not None:  # still opening: wait for it, a stream promised
                if await self._follow(connection, deadline, connect_timeout, loop):
                    return connection
                continue
            await self._wait(None, deadline, connect_timeout, loop, key=key, front=waited)
            waited = True

    async def _follow(
        self,
        connection: _H2Connection,
        deadline: float | None,
        connect_timeout: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> bool:
        """Wait for an opening ``connection`` with a stream promised; whether a stream on it is ours."""
        connection.reserved += 1
        granted = False
        try:
            granted = await self._wait(connection.followers, deadline, connect_timeout, loop)
        finally:
            connection.reserved -= 1
            if connection.ready:
                connection._idle_if_unused()  # (a stream started right after stops the timer again)
                if not granted and connection.room() > 0:
                    self._wake(connection.key, everyone=False)  # the stream promised to us: the next one's
        return granted and connection.ready and connection.usable()

    def _queued(self, key: Key) -> bool:
        """Whether a request to ``key`` waits in the pool's queue (and has not been woken yet)."""
        return any(waiting_key == key and not waiter.done() for waiting_key, waiter in self._waiters)

    def _open(self, target: RequestTarget, deadline: float | None, loop: asyncio.AbstractEventLoop) -> _H2Connection:
        """Count and start opening a connection to ``target`` (a task of its own, so one waiting
        request's cancellation does not fail the others waiting for it)."""
        key = target.key
        connection = _H2Connection(self, key, self._generation, tls=target.server_hostname is not None)
        self._connections.setdefault(key, []).append(connection)
        self._open_total += 1
        loop.create_task(self._connect(connection, target, deadline, loop))
        return connection

    async def _connect(
        self, connection: _H2Connection, target: RequestTarget, deadline: float | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        context = self._ssl_context() if target.server_hostname is not None else None
        opening = loop.create_task(
            loop.create_connection(
                lambda: connection, target.host, target.key[2], ssl=context, server_hostname=target.server_hostname
            )
        )
        expired: list[bool] = []
        timer = None if deadline is None else loop.call_at(deadline, cancel_for_time, opening, expired)
        failure: Exception | None = None
        try:
            await opening
        except BaseException as exc:
            if expired and isinstance(exc, asyncio.CancelledError):
                failure = ConnectTimeout(f"connect timeout to {target.host_header}")
            elif isinstance(exc, (OSError, ssl.SSLError, ValueError)):
                failure = ConnectFailed(f"{os_reason(exc)} ({target.host_header})")
            else:
                failure = ConnectFailed(f"the connection could not open ({type(exc).__name__})")
                if not isinstance(exc, Exception):
                    raise
        finally:
            if timer is not None:
                timer.cancel()
            if failure is None and connection.refusal is not None:
                refused = _SpeaksHttp1 if connection.http1 else ConnectFailed
                failure = refused(f"{connection.refusal} ({target.host_header})")
            if failure is not None:
                connection.settle(failure)
                connection.close()
                self._discard(connection)
            elif deadline is not None and not connection.ready:
                # the server's settings belong to opening the connection: within the same deadline
                loop.call_at(deadline, self._settings_overdue, connection, target)

    def _settings_overdue(self, connection: _H2Connection, target: RequestTarget) -> None:
        if connection.ready or connection.closed:
            return
        connection.settle(ConnectTimeout(f"no HTTP/2 settings from {target.host_header} within the connect timeout"))
        connection.close()
        self._discard(connection)

    async def _wait(
        self,
        followers: list[asyncio.Future[bool]] | None,
        deadline: float | None,
        connect_timeout: float | None,
        loop: asyncio.AbstractEventLoop,
        *,
        key: Key | None = None,
        front: bool = False,
    ) -> bool:
        """Wait to be woken — among a connection's ``followers`` (True: a stream on it is ours), or in
        the pool's queue for ``key`` — until ``deadline`` (a timer, no task: a cancellation is never
        swallowed). A waiter woken and then cancelled passes its turn on."""
        waiter: asyncio.Future[bool] = loop.create_future()
        if followers is not None:
            followers.append(waiter)
        elif front:  # woken, then found no room after all: first in line again
            assert key is not None
            self._waiters.appendleft((key, waiter))
        else:
            assert key is not None
            self._waiters.append((key, waiter))
        timer = None if deadline is None else loop.call_at(deadline, expire, waiter)
        try:
            return await waiter
        except Expired:
            if followers is not None:
                raise ConnectTimeout(
                    f"the connection did not open (no HTTP/2 settings) within the connect timeout ({connect_timeout} s)"
                ) from None
            raise ConnectTimeout(f"no free connection within the connect timeout ({connect_timeout} s)") from None
        except BaseException:
            if followers is None and waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake(key, everyone=False)  # woken, then cancelled before going on: the next one's turn
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if followers is not None:
                with contextlib.suppress(ValueError):
                    followers.remove(waiter)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((key, waiter))  # type: ignore[arg-type]

    def _all_full(self) -> bool:
        return bool(self.max_connections) and self._open_total >= self.max_connections

    def _has_room(self, key: Key) -> bool:
        """Whether another connection to ``key`` may open: the overall bound counts every open
        connection, the per-host one those that still take streams (a draining one only finishes)."""
        if self._all_full():
            return False
        if not self.max_connections_per_host:
            return True
        return sum(1 for c in self._connections.get(key, ()) if not c.draining) < self.max_connections_per_host

    def _close_idle_elsewhere(self, key: Key) -> None:
        """Under the overall bound, close a connection to another host that carries no stream."""
        if not self.max_connections or self._open_total < self.max_connections:
            return
        for other, connections in self._connections.items():
            for connection in connections:
                if other != key and connection.ready and not connection.streams and not connection.reserved:
                    self._discard(connection)  # its place is free now, before its transport has closed
                    connection.close()
                    return

    def _discard(self, connection: _H2Connection) -> None:
        """A connection closed (or never opened): out of the pool, its place free (once)."""
        if not connection.counted or connection.generation != self._generation:
            return
        connection.counted = False
        connections = self._connections.get(connection.key)
        if connections is not None:
            with contextlib.suppress(ValueError):
                connections.remove(connection)
            if not connections:
                del self._connections[connection.key]
        self._open_total = max(0, self._open_total - 1)
        self._wake(None, everyone=True)  # a place is free: for this host, or any under the overall bound

    def _wake(self, key: Key | None, *, everyone: bool) -> None:
        """Wake the first request waiting for ``key`` (a stream ended), or all of them (a connection
        closed or its settings changed: each looks again); ``None``: waiting for any host."""
        for waiting_key, waiter in self._waiters:
            if (key is None or waiting_key == key) and not waiter.done():
                waiter.set_result(True)
                if not everyone:
                    return


def _request_headers(request: HttpRequest, target: RequestTarget) -> list[tuple[bytes, bytes]]:
    """The request's pseudo-headers and headers, lower-case, without HTTP/1.1's connection headers."""
    check_request_headers(request.headers)
    authority = target.host_header
    fields: list[tuple[bytes, bytes]] = []
    names = set()
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered == "host":
            authority = value
            continue
        if lowered in _CONNECTION_SPECIFIC or lowered == "content-length":
            continue  # ours to say (the body is sent whole)
        names.add(lowered)
        fields.append((lowered.encode("ascii"), value.encode("ascii")))
    if "accept-encoding" not in names:
        fields.append((b"accept-encoding", b"gzip, deflate"))
    body = request.body or b""
    if body or request.method not in ("GET", "HEAD"):
        fields.append((b"content-length", str(len(body)).encode("ascii")))
    scheme = target.key[0].encode("ascii")
    pseudo = [
        (b":method", request.method.encode("ascii")),
        (b":scheme", scheme),
        (b":authority", authority.encode("ascii")),
        (b":path", target.path.encode("ascii")),
    ]
    return pseudo + fields


def _code_name(code: object) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error {code}"
