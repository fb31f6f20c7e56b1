"""A sans-I/O GTL connection in h11's shape: every transport is a thin loop around one of these.

It reads no clock and opens no socket; timeouts and the socket belong to the transport::

    conn = GTLConnection("client", token=...)        # or GTLConnection("server")
    write(conn.data_to_send())                        # the client's hello is queued at construction
    conn.receive_data(read())                         # b"" when the peer closed
    while (event := conn.next_event()) is not NEED_DATA and event is not CONNECTION_CLOSED:
        handle(event)                                 # may call conn.send(message) -> bytes to write
    write(conn.data_to_send())                        # replies the protocol itself produced

**Outgoing bytes** form one ordered stream with two doors: ``send(message)`` returns every byte now
due (replies queued by the connection first, then the message's frame) and ``data_to_send()`` returns
what is queued. Whichever is called, each byte comes out once and in order, so a transport that
writes whatever either returns never reorders a reply and a message. The connection queues bytes of
its own for: the hello exchange, the ``error`` that ends a session the client broke (server), the
``cancel`` of a session the server broke (client), and the final connection-level ``error``.

**The connection**::

    HANDSHAKE ──hello exchanged (or implied)──▶ OPEN ──close(), EOF, connection error, Nth bad frame──▶ CLOSED
        │  no common version; on a client, anything but hello                                          ▲
        └──────────────────────────────────────────────────────────────────────────────────────────────┘

The client's hello (``versions``, ``features``, ``token``) is queued when it is built; the server
answers with the highest common version and the common features (``negotiation.negotiate``), or —
with nothing in common — with a connection-level ``error`` (``session_id`` ``""``) the client reads
before the end. Until the exchange completes neither side may send or receive anything else.

**The spec's peer sends no hello** (GTL 1.0 has none: its requests are its first frames). A server
whose first frame from the client is anything but ``hello`` takes the client to have sent one offering
``implied_versions`` (the transport's ``GTL-Version`` header, where it has one, else 1.0) and no
features, then reads that frame as any other: ``HandshakeComplete`` with ``implicit=True``, and no
answer is sent (the client asked nothing). With no common version the connection ends as after a
hello. A first frame that does not decode is one bad frame of an implied hello when it says it is a
message other than ``hello``, and ends the connection as before when it says nothing readable.

**A session** (keyed by ``session_id``; many at once) starts with the client's ``completion_request``
and ends with exactly one ``done`` or ``error``; the server's events in between are checked by a
``SessionStateMachine`` on both sides (on send by the server, on receipt by the client)::

    (none) ──completion_request──▶ LIVE ──cancel (client)──▶ LIVE, cancelled ──done|error──▶ (ended)
                                     │ ─────────────────────done|error───────────────────────▲
                                     └─bad frame / violation─▶ ABANDONED ──its terminal──▶ (ended)

A ``cancel`` changes nothing in the order: the server's events stay legal until its one terminal
event (a ``CANCELLED`` error, or a ``done`` that crossed the cancel). A cancel for a session that
is not live is ignored on both sides (it may have crossed the end).

**Request extensions** (``protocol.extensions``): each request field beyond GTL 1.0 (``stop``,
``parts``, ``tool_error``, …) is a feature; ``send`` refuses (``UnsupportedFeatureError``) a
``completion_request`` that uses one the server's answer did not name, rather than have the server
drop it. A server serves whatever fields it knows, offered or not.

**Queries** (feature ``query``, an extension of GTL 1.0): a client may send ``query`` (a fresh
``query_id`` each) once the server agreed to the feature; the server answers each pending one with
exactly one ``answer``. An answer nobody asked for is a bad frame; when the connection ends, every
pending query gets an ``answer`` whose ``error`` is the connection's end.

**Bad frames.** A frame that does not decode, or a message out of order (an event for an unknown
session, a second ``completion_request`` for a live id, an event after the end, a message of the
wrong direction, a second hello), is one *bad frame*: ``next_event()`` reports a
``ProtocolViolation`` and, when the frame's session is known (for an undecodable frame it is read
from the frame's first bytes, see ``frames.py``), ends that session: the local side gets an
``error`` event for it (``INVALID_REQUEST`` on a server — the client is at fault — ``INTERNAL`` on
a client), the server also sends that ``error`` to the client, and the client sends the server a
``cancel``. The session is then *abandoned*: its remaining traffic (the server's frames on a client,
the application's ``send`` calls on a server) is dropped until its terminal event. Until then a
server answers a ``completion_request`` reusing its id with a retryable ``INVALID_REQUEST`` of that
request alone (not a bad frame): as a new session it would receive the old one's late events. The
``max_bad_frames``-th bad frame ends the connection with a connection-level error.

**The end.** Whatever ends the connection, every session still live gets one ``error`` event (on a
client the server's connection-level error; ``PROVIDER_UNAVAILABLE`` on a client and ``CANCELLED`` on a
server at the peer's EOF; the local error given to ``close``), then ``ConnectionTerminated``. On a
server a client's connection-level ``error`` is the client going away whatever its code: its sessions
end ``CANCELLED`` (the client cannot make them read as the gateway's or a provider's failure), and
``ConnectionTerminated`` carries a ``CANCELLED`` error quoting the client's code and the start of its
message, escaped (``client_gave_up``) — for a log line, never a row; after that
``next_event()`` returns ``CONNECTION_CLOSED``. ``send`` then returns nothing for messages that
expect no answer (events, cancels), and raises for a ``completion_request``.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import msgspec

from gtl_nb.protocol.codec import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME_BYTES, encode, frames_within
from gtl_nb.protocol.connection_events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    ConnectionEvent,
    ConnectionTerminated,
    HandshakeComplete,
    ProtocolViolation,
    Sentinel,
)
from gtl_nb.protocol.errors import (
    ERROR_CLASSES,
    CancelledError,
    ConfigurationError,
    GTLError,
    ProtocolError,
    SessionStateError,
    VersionMismatchError,
    error_from_event,
    escaped,
)
from gtl_nb.protocol.extensions import EXTENSION_FEATURES, check_request, missing_extensions
from gtl_nb.protocol.frames import BadFrame, FrameReader, ReadFrame
from gtl_nb.protocol.messages import (
    TERMINAL_EVENTS,
    Answer,
    Cancel,
    CompletionRequest,
    Done,
    Error,
    Hello,
    ProviderInfo,
    Query,
    Reasoning,
    Status,
    Token,
    ToolCallEvent,
    Usage,
    WireMessage,
)
from gtl_nb.protocol.negotiation import (
    FEATURES,
    IMPLIED_VERSION,
    SUPPORTED_VERSIONS,
    check_answer,
    client_hello,
    negotiate,
)
from gtl_nb.protocol.session import SessionState, SessionStateMachine

Role = Literal["client", "server"]
DEFAULT_MAX_BAD_FRAMES = 3
STREAM_EVENT_TYPES = (Status, Token, Reasoning, ToolCallEvent, Usage, Done, Error)
# the same, for ``type(message) in …`` on the per-event paths (the event types refuse subclasses)
_SESSION_EVENTS = frozenset(STREAM_EVENT_TYPES)
_RECENTLY_ENDED = 256  # ids remembered only to say "after its end" rather than "unknown"
_EOF = object()  # the peer's end of stream, in the inbox after its last frame


class ConnectionState(enum.Enum):
    """Where a connection is (the module docstring draws the transitions)."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class GTLConnection:
    """One end of a GTL connection: many sessions, the hello exchange, cancels, limits, no I/O.

    ``role`` is ``"client"`` or ``"server"``. ``versions`` and ``features`` are what this end
    supports; ``token`` (client only) travels in the hello for transports without headers.
    ``max_frame_bytes`` bounds every frame both ways (``FrameTooLargeError``); ``max_bad_frames`` is
    the number of bad frames from the peer that ends the connection. ``implied_versions`` (server only):
    what a client that sends no hello is taken to offer (its ``GTL-Version`` header). See the module docstring.
    """

    def __init__(
        self,
        role: Role,
        *,
        versions: Sequence[str] = SUPPORTED_VERSIONS,
        features: Iterable[str] = FEATURES,
        token: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_bad_frames: int = DEFAULT_MAX_BAD_FRAMES,
        implied_versions: Sequence[str] = (IMPLIED_VERSION,),
    ) -> None:
        if role not in ("client", "server"):
            raise ConfigurationError(f"role must be 'client' or 'server', not {role!r}")
        if token is not None and role == "server":
            raise ConfigurationError("only a client sends a token in its hello")
        if max_frame_bytes < 1 or max_bad_frames < 1:
            raise ConfigurationError("max_frame_bytes and max_bad_frames must be at least 1")
        self.role: Role = role
        self.max_frame_bytes = max_frame_bytes
        self.send_limit = max_frame_bytes
        """The largest frame ``send`` produces: ``max_frame_bytes``, or the server's smaller limit once its
        hello answer named one."""
        self.max_bad_frames = max_bad_frames
        self.state = ConnectionState.HANDSHAKE
        self.version: str | None = None
        self.features: tuple[str, ...] = ()
        self.missing_extensions: frozenset[str] = frozenset(EXTENSION_FEATURES)
        """The request extensions the hello exchange did not agree to (``protocol.extensions``): a client
        refuses a request that uses one. Empty — nothing to check — once a peer that knows them all agreed."""
        self.bad_frames = 0
        self._versions = tuple(versions)
        self._implied_versions = tuple(implied_versions) or (IMPLIED_VERSION,)
        self._features = tuple(features)
        # past max_bad_frames bad frames the connection is closed: the rest of what arrived is not decoded
        self._reader = FrameReader(max_frame_bytes, max_depth=max_depth, max_refused=max_bad_frames)
        self._inbox: deque[ReadFrame | object] = deque()  # decoded on receipt, applied by next_event
        self._events: deque[ConnectionEvent] = deque()
        self._out = bytearray()
        self._live: dict[str, SessionStateMachine] = {}
        self._cancelled: set[str] = set()
        self._abandoned: set[str] = set()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._queries: set[str] = set()  # asked and not yet answered
        self._eof = False
        self._offer: Hello | None = None
        if role == "client":
            self._offer = client_hello(self._versions, self._features, token)
            self._out += self._frame(self._offer)

    # -- the application's side ------------------------------------------------------------------

    @property
    def live_sessions(self) -> frozenset[str]:
        """The sessions started and not yet ended (as this end sees them)."""
        return frozenset(self._live)

    @property
    def closed(self) -> bool:
        """Whether the connection ended (its remaining events may still be waiting in ``next_event``)."""
        return self.state is ConnectionState.CLOSED

    def send(self, message: WireMessage) -> bytes:
        """Frame ``message`` for the peer and return every byte now due, replies queued before it first.

        Raises ``ProtocolError`` (``SessionStateError`` for an order problem, ``FrameTooLargeError``
        over ``max_frame_bytes``) for a message this end may not send now; nothing changes then.
        A cancel of a session that is not live, and anything but a ``completion_request`` after the
        connection ended, add nothing.
        """
        if type(message) in _SESSION_EVENTS and self.role == "server" and self.state is ConnectionState.OPEN:
            # the bulk of every stream: a session's event, framed, checked, and sent with nothing copied
            frame = self._frame(message)
            if not self._server_sends(message):
                return self.data_to_send()
            if not self._out:
                return frame
            self._out += frame
            return self.data_to_send()
        if isinstance(message, Hello):
            raise ProtocolError("the connection sends hello itself (see its versions, features and token)")
        if self.state is ConnectionState.CLOSED:
            if isinstance(message, CompletionRequest):
                raise ProtocolError(f"cannot start session {message.session_id!r}: the connection is closed")
            return self.data_to_send()
        if self.state is ConnectionState.HANDSHAKE:
            raise ProtocolError(f"cannot send {_kind(message)} before the hello exchange completed")
        frame = self._frame(message)  # first: an unencodable message must change nothing
        keep = self._client_sends(message) if self.role == "client" else self._server_sends(message)
        if keep:
            self._out += frame
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """The bytes the connection queued on its own (hello, protocol replies), once each."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand over bytes read from the peer; ``b""`` means the peer closed its side.

        Frames are decoded now and applied by ``next_event()``. Bytes arriving after the connection
        ended are ignored; bytes after ``b""`` are a ``ProtocolError`` (a transport bug).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"receive_data() takes bytes, not {type(data).__name__}")
        if self._eof:
            if data:
                raise ProtocolError("receive_data() called with data after the end of the stream")
            return
        if not data:
            self._eof = True
        if self.closed:
            return
        if data:
            self._inbox.extend(self._reader.feed(bytes(data)))
        else:
            self._inbox.extend(self._reader.close())
            self._inbox.append(_EOF)

    @property
    def reader(self) -> FrameReader:
        """The reader ``receive_data`` decodes the peer's bytes with (``receive_frames``)."""
        return self._reader

    def receive_frames(self, frames: Iterable[ReadFrame]) -> None:
        """Hand over frames that ``reader.feed(data)`` decoded from the peer's bytes outside this call —
        a transport may decode a large frame elsewhere (the gateway: in a worker thread, with nothing
        else touching the reader meanwhile). Exactly what ``receive_data(data)`` does with them: applied
        by ``next_event()`` in stream order; ignored once the connection ended; after ``b""`` a
        ``ProtocolError``."""
        if self._eof:
            raise ProtocolError("receive_frames() called with frames after the end of the stream")
        if not self.closed:
            self._inbox.extend(frames)

    def next_event(self) -> ConnectionEvent | Sentinel:
        """The next event from the peer (or produced by the connection), ``NEED_DATA`` or ``CONNECTION_CLOSED``."""
        events, inbox = self._events, self._inbox
        while not events:
            if self.state is ConnectionState.CLOSED:
                return CONNECTION_CLOSED
            if not inbox:
                return NEED_DATA
            self._apply(inbox.popleft())
        return events.popleft()

    def close(self, error: GTLError | None = None) -> bytes:
        """End the connection from this side and return the last bytes to write.

        With ``error`` the peer is told why (a connection-level ``error``); every live session gets
        ``error`` (or ``CANCELLED``) locally, then ``ConnectionTerminated``. Closing twice is harmless.
        """
        if not self.closed:
            if error is not None:
                self._queue(_connection_error(error.code, error.message))

            def ended(sid: str) -> Error:
                if error is None:
                    return Error(session_id=sid, code="CANCELLED", message="the connection was closed")
                return error.to_event(sid)

            self._terminate(error, by_peer=False, session_error=ended)
        return self.data_to_send()

    # -- what this end sends -----------------------------------------------------------------------

    def _client_sends(self, message: WireMessage) -> bool:
        if isinstance(message, CompletionRequest):
            sid = message.session_id
            if not sid:
                raise ProtocolError("a completion_request needs a non-empty session_id")
            if sid in self._live or sid in self._abandoned:  # the caller's mistake (INVALID_REQUEST), not ours
                raise ProtocolError(
                    f"session {sid!r} is still live on this connection: give each running request its own "
                    "session_id (or leave it out: a new one is made)"
                )
            if self.missing_extensions:  # an older server: it would drop a field it does not know, silently
                check_request(message, self.missing_extensions)
            self._live[sid] = SessionStateMachine(sid)
            return True
        if isinstance(message, Cancel):
            if message.session_id not in self._live or message.session_id in self._cancelled:
                return False  # ended (the cancel crossed its end), never started, or already cancelled
            self._cancelled.add(message.session_id)
            return True
        if isinstance(message, Query):
            if not message.query_id or message.query_id in self._queries:
                raise SessionStateError(f"query {message.query_id!r} needs an id no pending query has")
            if "query" not in self.features:
                raise ProtocolError("the server did not agree to the query feature (an older gateway)")
            self._queries.add(message.query_id)
            return True
        raise ProtocolError(f"a client does not send {_kind(message)} messages (they go from server to client)")

    def _server_sends(self, message: WireMessage) -> bool:
        kind = type(message)
        if kind not in _SESSION_EVENTS:
            if isinstance(message, ProviderInfo):  # (these two may be subclassed: isinstance, off the hot path)
                return True
            if isinstance(message, Answer):
                if message.query_id not in self._queries:
                    raise SessionStateError(f"answer to query {message.query_id!r}, which is not pending")
                self._queries.discard(message.query_id)
                return True
            raise ProtocolError(f"a server does not send {_kind(message)} messages (they go from client to server)")
        sid = message.session_id
        if sid in self._abandoned:  # the connection already ended it: the application's late events go nowhere
            if kind in TERMINAL_EVENTS:
                self._abandoned.discard(sid)
            return False
        machine = self._live.get(sid)
        if machine is None:
            if not sid:
                raise ProtocolError("an event needs a session_id; end the whole connection with close(error)")
            raise SessionStateError(f"{_kind(message)} for {self._describe(sid)} session {sid!r}")
        if machine.advance(message) is SessionState.ENDED:
            self._forget(sid)
        return True

    # -- what the peer sent ------------------------------------------------------------------------

    def _apply(self, item: ReadFrame | object) -> None:
        if type(item) in _SESSION_EVENTS and self.state is ConnectionState.OPEN and item.session_id:  # type: ignore[attr-defined]
            # the bulk of every stream, asked first: an event of one session (not a connection-level error)
            if self.role == "client":
                self._from_server(item)  # type: ignore[arg-type]
            else:
                self._from_client(item)  # type: ignore[arg-type]
            return
        if item is _EOF:
            self._peer_closed()
        elif isinstance(item, BadFrame):
            if self.state is ConnectionState.HANDSHAKE:
                if self._offer is None and item.message_type not in (None, "hello"):
                    # a spec peer's first message, refused: hello is implied, and the frame is one bad frame
                    if self._implied_hello():
                        self._violation(
                            item.error, item.session_id, kind=item.message_type, fault=item.session_id_fault
                        )
                else:
                    self._fail(item.error)
            else:
                self._violation(item.error, item.session_id, kind=item.message_type, fault=item.session_id_fault)
        elif isinstance(item, Error) and not item.session_id:
            if self.role == "server":  # the client going away, whatever it calls it
                gave_up = client_gave_up(item)
                self._terminate(
                    gave_up,
                    by_peer=True,
                    session_error=lambda sid: Error(session_id=sid, code="CANCELLED", message=_CLIENT_ENDED),
                )
            else:
                self._terminate(
                    error_from_event(item),
                    by_peer=True,
                    session_error=lambda sid: msgspec.structs.replace(item, session_id=sid),
                )
        elif self.state is ConnectionState.HANDSHAKE:
            self._handshake(item)  # type: ignore[arg-type]
        elif self.role == "server":
            self._from_client(item)  # type: ignore[arg-type]
        else:
            self._from_server(item)  # type: ignore[arg-type]

    def _handshake(self, message: WireMessage) -> None:
        if not isinstance(message, Hello):
            if self._offer is None:  # a peer that speaks the spec alone: hello is implied, then the frame is read
                if self._implied_hello():
                    self._apply(message)
                return
            self._fail(ProtocolError(f"expected hello before anything else, got {_kind(message)}"))
            return
        try:
            if self._offer is None:
                agreed = negotiate(message, self._versions, self._features)
            else:
                agreed = check_answer(self._offer, message)
        except VersionMismatchError as exc:
            self._fail(exc)
            return
        if self._offer is None:
            agreed = msgspec.structs.replace(agreed, max_frame_bytes=self.max_frame_bytes)
            self._queue(agreed)  # the server's answer, with the largest frame it accepts
        elif message.max_frame_bytes is not None and 0 < message.max_frame_bytes < self.send_limit:
            self.send_limit = message.max_frame_bytes  # a larger request is refused here, not by the server
        self.state = ConnectionState.OPEN
        self.version = agreed.version
        self.features = tuple(agreed.features)
        self.missing_extensions = missing_extensions(self.features)
        token = message.token if self.role == "server" else None
        self._events.append(HandshakeComplete(agreed.version or "", self.features, message, token))

    def _implied_hello(self) -> bool:
        """A server's connection whose first frame is not ``hello`` (the spec has none): the client is taken
        to have sent ``hello`` offering ``implied_versions`` and no features. Nothing is sent back (the
        client asked nothing); ``HandshakeComplete.implicit`` says so. Whether it opened."""
        offer = Hello(versions=list(self._implied_versions), features=[])
        try:
            agreed = negotiate(offer, self._versions, ())
        except VersionMismatchError as exc:
            self._fail(exc)
            return False
        self.state = ConnectionState.OPEN
        self.version = agreed.version
        self.features = ()
        self.missing_extensions = missing_extensions(self.features)
        self._events.append(HandshakeComplete(agreed.version or "", (), offer, None, implicit=True))
        return True

    def _from_client(self, message: WireMessage) -> None:
        if isinstance(message, CompletionRequest):
            sid = message.session_id
            if not sid:  # "" is the connection's own id: no session's error could answer it
                fault = 'has an empty session_id ("")'
                self._violation(
                    ProtocolError(f"a completion_request {fault}"), None, kind="completion_request", fault=fault
                )
            elif sid in self._live:
                self._violation(SessionStateError(f"a second completion_request for live session {sid!r}"), sid)
            elif sid in self._abandoned:
                # ended on the wire (the client was told) but the application still ends it: as a new live
                # session, the old one's late events — its terminal one — would go to the new one
                self._queue(_still_ending(sid))
            else:
                self._live[sid] = SessionStateMachine(sid)
                self._events.append(message)
        elif isinstance(message, Cancel):
            sid = message.session_id
            if sid in self._live and sid not in self._cancelled:  # otherwise it crossed the end: ignore
                self._cancelled.add(sid)
                self._events.append(message)
        elif isinstance(message, Query):
            if not message.query_id or message.query_id in self._queries:
                self._violation(ProtocolError(f"query {message.query_id!r} reuses a pending id"), None)
            else:
                self._queries.add(message.query_id)
                self._events.append(message)
        elif isinstance(message, Hello):
            self._violation(ProtocolError("a second hello"), None)
        else:
            sid = getattr(message, "session_id", None)
            error = ProtocolError(f"{_kind(message)} goes from server to client; a client may not send it")
            self._violation(error, sid, kind=_kind(message))

    def _from_server(self, message: WireMessage) -> None:
        kind = type(message)
        if kind in _SESSION_EVENTS:
            sid = message.session_id  # type: ignore[union-attr]
            if sid in self._abandoned:
                if kind in TERMINAL_EVENTS:
                    self._abandoned.discard(sid)
                return
            machine = self._live.get(sid)
            if machine is None:
                error = SessionStateError(f"{_kind(message)} for {self._describe(sid)} session {sid!r}")
                self._violation(error, sid, kind=_kind(message))
                return
            try:
                state = machine.advance(message)  # type: ignore[arg-type]
            except SessionStateError as exc:
                self._violation(exc, sid, kind=_kind(message))
                return
            if state is SessionState.ENDED:
                self._forget(sid)
            self._events.append(message)
        elif isinstance(message, ProviderInfo):
            self._events.append(message)
        elif isinstance(message, Answer):
            if message.query_id in self._queries:
                self._queries.discard(message.query_id)
                self._events.append(message)
            else:
                self._violation(ProtocolError(f"answer to query {message.query_id!r}, which is not pending"), None)
        elif isinstance(message, Hello):
            self._violation(ProtocolError("a second hello"), None)
        else:
            sid = getattr(message, "session_id", None)
            error = ProtocolError(f"{_kind(message)} goes from client to server; a server may not send it")
            self._violation(error, sid, kind=_kind(message))

    # -- bad frames and the end --------------------------------------------------------------------

    def _violation(
        self, error: ProtocolError, sid: str | None, *, kind: str | None = None, fault: str | None = None
    ) -> None:
        """One bad frame: report it, end its session, and end the connection at the limit (or at once:
        a request whose session cannot be told, which could be answered no other way). ``fault``: what is
        wrong with the session_id of a frame whose id could not be read (``frames.session_id_fault``)."""
        self.bad_frames += 1
        self._events.append(ProtocolViolation(error, sid or None, self.bad_frames))
        if fault is not None and not sid and self.role == "server" and kind == "completion_request":
            # a request whose session cannot be read cannot be answered on its own: the client would wait
            # for ever. Ending the connection is the one answer it gets (its sessions end with this error)
            self._fail(ProtocolError(_nameless_request(fault, error)))
            return
        if sid:
            if self.role == "client":
                self._abandon_on_client(sid, error, peer_ended=kind in ("done", "error"))
            else:
                self._abandon_on_server(sid, error, request_like=kind in (None, "completion_request"))
        if self.bad_frames >= self.max_bad_frames:
            peer = "server" if self.role == "client" else "client"
            last = error.message
            self._fail(ProtocolError(f"{self.bad_frames} bad frames from the {peer}; closing (the last: {last})"))

    def _abandon_on_client(self, sid: str, error: ProtocolError, *, peer_ended: bool) -> None:
        if sid in self._live:
            self._forget(sid)
            self._events.append(self._fault(sid, error))
        elif sid in self._abandoned:
            if peer_ended:
                self._abandoned.discard(sid)
            return
        if not peer_ended:  # the server may still be producing it: ask it to stop, drop what comes
            self._abandoned.add(sid)
            self._queue(Cancel(session_id=sid))

    def _abandon_on_server(self, sid: str, error: ProtocolError, *, request_like: bool) -> None:
        if sid in self._live:
            self._forget(sid)
            self._abandoned.add(sid)
            event = self._fault(sid, error)
            self._events.append(event)  # tells the application to stop working on it
            self._queue(event)
        elif request_like:  # most likely a request the client now waits on: answer it
            self._queue(self._fault(sid, error))

    def _fault(self, sid: str, error: GTLError) -> Error:
        """The session's end when the peer broke the protocol: the server blames the request."""
        code = "INVALID_REQUEST" if self.role == "server" else "INTERNAL"
        return Error(session_id=sid, code=code, message=error.message)

    def _fail(self, error: ProtocolError) -> None:
        """This end gives up on the peer: tell it why, end every live session."""
        self._queue(self._fault("", error))
        self._terminate(error, by_peer=False, session_error=lambda sid: self._fault(sid, error))

    def _peer_closed(self) -> None:
        error: GTLError | None = None
        if self.state is ConnectionState.HANDSHAKE and self.role == "client":
            error = ProtocolError("the server closed the connection before answering hello")

        def ended(sid: str) -> Error:
            if self.role == "server":
                return Error(session_id=sid, code="CANCELLED", message="the client closed the connection")
            message = "the server closed the connection before the session ended"
            return Error(session_id=sid, code="PROVIDER_UNAVAILABLE", message=message, retryable=True)

        self._terminate(error, by_peer=True, session_error=ended)

    def _terminate(self, error: GTLError | None, *, by_peer: bool, session_error: Callable[[str], Error]) -> None:
        self._events.extend(session_error(sid) for sid in self._live)
        if self.role == "client":  # every pending question gets its answer: the connection's end
            self._events.extend(Answer(query_id=qid, error=session_error(qid)) for qid in sorted(self._queries))
        self._queries.clear()
        self._live.clear()
        self._cancelled.clear()
        self._abandoned.clear()
        self._inbox.clear()
        self.state = ConnectionState.CLOSED
        self._events.append(ConnectionTerminated(error, by_peer))

    # -- helpers ------------------------------------------------------------------------------------

    def _frame(self, message: WireMessage) -> bytes:
        # (a token or reasoning too long for one frame goes as several: codec.frames_within)
        return frames_within(message, self.send_limit)

    def _queue(self, message: WireMessage) -> None:
        self._out += encode(message) + b"\n"  # the connection's own replies are small: no size check

    def _forget(self, sid: str) -> None:
        del self._live[sid]
        self._cancelled.discard(sid)
        self._ended[sid] = None
        if len(self._ended) > _RECENTLY_ENDED:
            self._ended.popitem(last=False)

    def _describe(self, sid: str) -> str:
        return "ended" if sid in self._ended else "unknown"


def _nameless_request(fault: str, error: ProtocolError) -> str:
    """The words that end a connection for a ``completion_request`` whose session cannot be told: what was
    wrong with its id (``fault``), why that ends the connection, what to do; and the frame's other fault,
    when the decoder refused it for something else too (a temperature out of range beside an empty id)."""
    words = (
        f"closing the connection: a completion_request {fault}. Every answer names its session, and "
        'session_id "" names the connection itself, so no error could answer that request alone; '
        "give each request a non-empty session_id of its own"
    )
    said = error.message
    if fault not in said and "`session_id`" not in said and "$.session_id`" not in said:  # (the id's own words)
        words += f" (the frame was refused for this too: {said})"
    return words


def _still_ending(sid: str) -> Error:
    """The answer to a request for an id whose session the connection ended while the server still ends
    it: the request alone is refused (retryable, not a bad frame — the client did see that end)."""
    message = f"session {sid!r} is still ending on the server; send the request again, or under a new id"
    return Error(session_id=sid, code="INVALID_REQUEST", message=message, retryable=True)


_CLIENT_ENDED = "the client ended the connection"
_QUOTED = 200  # characters of a client's own words a server's log line quotes at most


def client_gave_up(error: Error) -> CancelledError:
    """What a server makes of a client's connection-level ``error``: the client went away (``CANCELLED``),
    its code and the start of its message quoted, escaped, cut — words a log line may show, never the
    cause of the sessions' end."""
    code = escaped(str(error.peer_code or error.code)[:_QUOTED])  # a code the server does not know, as written
    words = str(error.message)
    said = escaped(words[:_QUOTED]) + ("…" if len(words) > _QUOTED else "")
    return CancelledError(f"{_CLIENT_ENDED} with an error frame (its code {code}: {said})")


def _connection_error(code: str, message: str) -> Error:
    """A connection-level ``error``: ``session_id`` ``""`` ends the whole connection."""
    return Error(session_id="", code=code if code in ERROR_CLASSES else "INTERNAL", message=message)  # type: ignore[arg-type]


def _kind(message: object) -> str:
    config = getattr(type(message), "__struct_config__", None)
    return str(getattr(config, "tag", None) or type(message).__name__)
