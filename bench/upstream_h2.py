"""HTTP/2 cleartext with prior knowledge (h2c) for the bench's fake upstream, ``bench.upstream``.

``bench.upstream.UpstreamProtocol`` reads a connection's first bytes; when they are the HTTP/2 client preface it
hands the transport to ``H2UpstreamProtocol`` here, with every byte read so far. The answers are the HTTP/1.1
ones: ``POST …/chat/completions`` (query ignored) with a JSON body gets ``answer_shape(body)`` — a whole
``chat.completion`` (``application/json`` with a ``content-length``) or the server-sent events of a stream
(``text/event-stream``, the events as they are: HTTP/2 DATA frames need no chunk framing), both from the same
``AnswerCache``; with ``--pace S`` the role event and the first token go at once and each later event ``S``
seconds after the one before, from one task per stream. Other paths or methods get ``404``, a body that is not
a JSON object ``400``.

The protocol work is the sans-I/O ``h2`` package's ``H2Connection``: bytes from the socket are fed to it, their
events handled, and then ``data_to_send()`` is written in one ``write``; a paced task's tick drives it the same
way (its write shared with the other ticks of the moment, see below).
What ``h2`` leaves to its user, and how it is done here:

* Concurrency: the scale benchmark multiplexes 10,000 streams over a few connections, so the server's first
  SETTINGS frame advertises ``MAX_CONCURRENT_STREAMS`` 100,000 (h2's own default is 100). The value goes into
  the settings object before ``initiate_connection``, so it is in force at once; a later ``update_settings``
  would only apply once the client acknowledged it, and h2 would refuse streams beyond 100 until then.
* Inbound flow control: the connection's receive window is raised to 16 MiB so large request bodies flow,
  and every DATA frame is acknowledged (``acknowledge_received_data``) as it is appended to its stream's body;
  h2 then sends WINDOW_UPDATEs as it sees fit.
* Body cap: a body past ``bench.upstream._BODY_LIMIT`` is answered ``413`` at once and, as soon as that answer
  is fully sent, the stream is reset with ``NO_ERROR`` — RFC 9113 §8.1's way for a server to answer before the
  request is complete and ask the client to stop sending. The rest of that body is acknowledged and dropped.
* Outbound flow control: ``send_data`` is never given more than ``min(local_flow_control_window, max frame
  size)`` bytes; what does not fit waits in the stream's pending buffer and goes on after a WINDOW_UPDATE (one
  on stream 0 resumes every waiting stream) or a SETTINGS change (a larger ``INITIAL_WINDOW_SIZE`` widens the
  streams' windows without any WindowUpdated event). END_STREAM rides on the last byte.
* Cost at scale: h2 walks every stream of the connection to count the open ones each time a stream opens,
  which made 10,000 streams on one connection quadratic; ``_Connection`` does that walk once per 256 new
  streams instead. A paced tick does not write at once: the ticks of one connection that wake together share
  one ``write`` at the end of the loop iteration.
* Resets and errors: a client's RST_STREAM cancels that stream's paced task and drops its pending data; GOAWAY
  or a lost connection cancels every task of the connection. A stream that turns out closed while answering
  (a reset already on its way) is dropped alone; any other h2 ``ProtocolError`` ends the connection after
  writing what h2 queued (its GOAWAY).
"""

from __future__ import annotations

import asyncio

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings

from bench.upstream import _BODY_LIMIT, AnswerCache, answer_shape

MAX_CONCURRENT_STREAMS = 100_000
CONNECTION_WINDOW = 16 * 1024 * 1024
"""The connection-level receive window the server opens (the RFC's initial one is 64 KiB - 1)."""
_DEFAULT_WINDOW = 65_535

Headers = list[tuple[bytes, bytes]]

_STREAM_HEADERS: Headers = [
    (b":status", b"200"),
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]


def _headers(status: bytes, content_type: bytes, body: bytes) -> Headers:
    return [(b":status", status), (b"content-type", content_type), (b"content-length", b"%d" % len(body))]


_NOT_FOUND_BODY = b"not found"
_NOT_FOUND = _headers(b"404", b"text/plain", _NOT_FOUND_BODY)
_BAD_REQUEST_BODY = b"bad request"
_BAD_REQUEST = _headers(b"400", b"text/plain", _BAD_REQUEST_BODY)
_TOO_LARGE_BODY = b"request body too large"
_TOO_LARGE = _headers(b"413", b"text/plain", _TOO_LARGE_BODY)


class _Connection(H2Connection):
    """An ``H2Connection`` that counts its open streams by walking them only now and then. h2 computes
    ``open_inbound_streams`` for every new stream by walking every stream it holds (that walk is also where it
    forgets closed ones): quadratic, and half of the upstream's CPU with 10,000 streams on one connection. Here
    the walk runs once every ``RECOUNT_EVERY`` new streams, or on each one near the limit; in between, each call
    — one per stream about to open — adds one to the last count, an upper bound, so the limit still holds."""

    RECOUNT_EVERY = 256

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        self._open_bound = 0
        self._since_recount = 0

    @property
    def open_inbound_streams(self) -> int:
        near_limit = self._open_bound + self.RECOUNT_EVERY >= self.local_settings.max_concurrent_streams
        if near_limit or self._since_recount >= self.RECOUNT_EVERY:
            self._open_bound = super().open_inbound_streams
            self._since_recount = 0
        self._since_recount += 1
        count = self._open_bound
        self._open_bound += 1  # the stream this call is asked about opens next
        return count


class _Stream:
    """One request/response exchange: the request as it arrives, the response bytes not yet sent."""

    __slots__ = ("body", "end", "method", "path", "pending", "request_done", "task", "too_large")

    def __init__(self, method: bytes, path: bytes) -> None:
        self.method = method
        self.path = path
        self.body = bytearray()
        self.too_large = False  # answered 413: the rest of the body is dropped
        self.request_done = False  # the client ended its side
        self.pending = bytearray()  # response bytes waiting for flow-control window
        self.end = False  # END_STREAM goes with the last pending byte
        self.task: asyncio.Task[None] | None = None  # the paced writer, if any


class H2UpstreamProtocol(asyncio.Protocol):
    """One HTTP/2 connection: many concurrent streams, each answered from the cache (or paced)."""

    def __init__(self, cache: AnswerCache, pace: float) -> None:
        self.cache = cache
        self.pace = pace
        self.transport: asyncio.Transport | None = None
        # outbound headers are this module's constants, already valid and lowercase: skip h2's per-send checks
        config = H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.conn = _Connection(config)
        self.streams: dict[int, _Stream] = {}
        self.blocked: dict[int, None] = {}  # streams with pending bytes and no window, in arrival order
        self.flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # replaced before initiate_connection so the values are in force from the first frame (see the docstring)
        self.conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.MAX_HEADER_LIST_SIZE: H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            for event in self.conn.receive_data(data):
                self._handle(event)
        except ProtocolError:
            self._abort()
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._cancel_all()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _flush_soon(self) -> None:
        """Flush once the tasks woken in this loop iteration have run: paced streams of one connection tick
        together, and one ``write`` (one system call) for all of them costs far less than one each."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush()

    def _abort(self) -> None:
        """A connection error: write what h2 queued (its GOAWAY) and close."""
        self._cancel_all()
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _cancel_all(self) -> None:
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.blocked.clear()

    def _handle(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._on_data(event)
        elif isinstance(event, RequestReceived):
            headers = dict(event.headers)  # bytes → bytes (header_encoding None)
            self.streams[event.stream_id] = _Stream(headers.get(b":method", b""), headers.get(b":path", b""))
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.request_done = True
                if not stream.too_large:  # a 413 is answered (or being answered) already
                    self._answer(event.stream_id, stream)
        elif isinstance(event, WindowUpdated):
            if event.stream_id == 0:
                self._resume_blocked()
            elif event.stream_id in self.blocked:
                self._pump(event.stream_id, self.streams[event.stream_id])
        elif isinstance(event, RemoteSettingsChanged):
            # INITIAL_WINDOW_SIZE or MAX_FRAME_SIZE may have grown: h2 reports no WindowUpdated for that
            self._resume_blocked()
        elif isinstance(event, StreamReset):
            self._drop(event.stream_id)
        elif isinstance(event, ConnectionTerminated):
            self._abort()
        # the rest (SETTINGS and PING acknowledgements, priorities, trailers) needs nothing from us

    def _on_data(self, event: DataReceived) -> None:
        # acknowledged at once: the bytes are consumed (kept or dropped) right here
        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.too_large:
            return
        if len(stream.body) + len(event.data) > _BODY_LIMIT:
            stream.too_large = True
            stream.body = bytearray()
            # the same frame may have ended the request: then no reset is needed once the 413 is out
            stream.request_done = event.stream_ended is not None
            self._respond(event.stream_id, stream, _TOO_LARGE, _TOO_LARGE_BODY)
            return
        stream.body += event.data

    def _answer(self, stream_id: int, stream: _Stream) -> None:
        """Answer a complete request, as ``UpstreamProtocol._answer`` does over HTTP/1.1."""
        if stream.method != b"POST" or not stream.path.split(b"?", 1)[0].endswith(b"/chat/completions"):
            self._respond(stream_id, stream, _NOT_FOUND, _NOT_FOUND_BODY)
            return
        body, stream.body = bytes(stream.body), bytearray()
        try:
            streamed, tokens, include_usage = answer_shape(body)
        except (ValueError, TypeError, AttributeError):
            self._respond(stream_id, stream, _BAD_REQUEST, _BAD_REQUEST_BODY)
            return
        if not streamed:
            answer = self.cache.body(tokens)
            self._respond(stream_id, stream, _headers(b"200", b"application/json", answer), answer)
        elif self.pace <= 0:
            self._respond(stream_id, stream, _STREAM_HEADERS, self.cache.events_at_once(tokens, include_usage))
        else:
            events = self.cache.events(tokens, include_usage)
            # the role event and the first token at once, so the time to first token is the path's own
            if self._respond(stream_id, stream, _STREAM_HEADERS, events[0] + events[1], end=False):
                stream.task = asyncio.get_running_loop().create_task(self._paced(stream_id, stream, events[2:]))

    async def _paced(self, stream_id: int, stream: _Stream, events: list[bytes]) -> None:
        """Send a stream's later events ``pace`` seconds apart (cancelled by a reset or the connection's end)."""
        last = len(events) - 1
        for index, event in enumerate(events):
            await asyncio.sleep(self.pace)
            try:
                sent = self._send(stream_id, stream, event, end=index == last)
            except ProtocolError:
                self._abort()
                return
            self._flush_soon()
            if not sent:
                return  # the stream turned out closed and was dropped

    def _respond(self, stream_id: int, stream: _Stream, headers: Headers, body: bytes, end: bool = True) -> bool:
        """Send the response headers and ``body`` (ending the stream with ``end``); ``False`` when the stream
        turned out closed and was dropped."""
        try:
            self.conn.send_headers(stream_id, headers)
        except StreamClosedError:
            self._drop(stream_id)
            return False
        return self._send(stream_id, stream, body, end)

    def _send(self, stream_id: int, stream: _Stream, data: bytes, end: bool) -> bool:
        """Queue ``data`` on the stream and send what flow control allows; ``False`` if the stream was dropped."""
        stream.pending += data
        stream.end = end
        return self._pump(stream_id, stream)

    def _pump(self, stream_id: int, stream: _Stream) -> bool:
        """Send the stream's pending bytes, at most one window-and-frame-sized DATA frame at a time; what does
        not fit waits in ``blocked`` for a WINDOW_UPDATE. ``False`` if the stream was dropped."""
        conn = self.conn
        pending = stream.pending
        try:
            while pending or stream.end:
                size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if pending and size <= 0:
                    self.blocked[stream_id] = None
                    return True
                chunk = bytes(pending[:size])
                del pending[:size]
                last = stream.end and not pending
                conn.send_data(stream_id, chunk, end_stream=last)
                if last:
                    self._finish(stream_id, stream)
                    return True
        except StreamClosedError:
            self._drop(stream_id)
            return False
        self.blocked.pop(stream_id, None)
        return True

    def _finish(self, stream_id: int, stream: _Stream) -> None:
        """The response is fully sent; a request still arriving (a 413) is told to stop with NO_ERROR."""
        self.blocked.pop(stream_id, None)
        self.streams.pop(stream_id, None)
        if not stream.request_done:
            try:
                self.conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)
            except StreamClosedError:
                pass  # the client's END_STREAM or RST_STREAM crossed it: nothing left to stop

    def _resume_blocked(self) -> None:
        """Pump every waiting stream, oldest first, until the connection window is spent again."""
        for stream_id in list(self.blocked):
            if self.conn.outbound_flow_control_window <= 0:
                break  # the rest keep waiting, in order, for the next connection-level update
            stream = self.streams.get(stream_id)
            if stream is None:
                self.blocked.pop(stream_id, None)
            else:
                self._pump(stream_id, stream)

    def _drop(self, stream_id: int) -> None:
        """Forget a stream the client reset (or that turned out closed): no more sends, no more ticks."""
        stream = self.streams.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        if stream is not None and stream.task is not None and stream.task is not asyncio.current_task():
            stream.task.cancel()
