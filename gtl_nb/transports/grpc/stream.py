"""GTL over one gRPC bidirectional stream: the ``Channel`` both halves of the gRPC transport run on.

``GTLConnection`` speaks newline-separated JSON frames; the ``Session`` call of ``gtl.proto`` carries
one protobuf frame per gRPC message (``ClientFrame`` from the client, ``ServerFrame`` from the
gateway). ``GrpcStreamChannel`` converts between the two, so ``FramedConnection`` with
``GatewayConnection`` (gateway) or ``ClientLink`` (client) does all the protocol work — hello, many
sessions, cancels, bad frames, one terminal event per session — exactly as on every other transport.

* **Writes.** The bytes the connection produced are split into frames; each is decoded, wrapped with
  ``mapping.to_frame`` and serialized at once (so a frame that cannot be carried is known in the
  writer's own step), then one sender task writes the messages to the call in order, each write
  waiting on gRPC's flow control. ``drain()`` waits while more than ``HIGH_WATER_BYTES`` are
  queued (bytes, not messages: a count of messages let a stalled peer pin 32 frames of 8 MiB), so a
  peer that stops reading holds every session at its next drain (the per-session
  back-pressure of ``FramedConnection``) once gRPC's own window (a few megabytes) is full.
* **A peer that reads nothing** (``write_timeout``, the gateway's): a write that has not completed
  after that many seconds, plus its message's size at ``MIN_WRITE_RATE`` — gRPC completes a message's
  write once HTTP/2 flow control let all of it out, and says nothing of the bytes before — ends the
  call as a peer that left would: nothing more is sent, the outbox is dropped, and the reads end
  (``b""``), so the connection cancels its sessions. One ``INFO`` line says why. A slow reader is not
  cut: each message it takes starts the count again, and a large message is given the time a reader
  of ``MIN_WRITE_RATE`` needs (as the gateway gives a peer's own messages: ``MIN_MESSAGE_RATE``).
* **Reads.** Each message is parsed (``FromString``), mapped (``from_proto``) and handed to the
  connection as one JSON frame plus ``\\n``. A message that does not parse or map becomes a *bad
  frame*: a deliberately unterminated JSON object whose ``type`` and ``session_id`` stand where the
  connection's frame reader looks for them (``protocol.frames.refused_frame``), so the connection ends that
  session and counts the frame toward ``max_bad_frames``, as for a bad JSON frame. Its error message is
  the mapping's reason in protobuf's terms (``a ClientFrame without a message``, ``invalid gtl.v1.Error:
  code: …``), which names the field, never the value — nothing of JSON or of the stand-in. The end of the stream, a
  cancelled call and a broken one read as ``b""`` — except, with ``on_half_close`` (the gateway), the end of
  the client's requests (gRPC's half-close: it sends no more, it still reads): ``read()`` then calls
  ``on_half_close`` once and waits, so the connection's sessions run to their end; it returns ``b""``
  when the call ends under it (a write stalled past ``write_timeout``) — the gateway closes the
  connection itself once nothing runs. With ``convert`` (the gateway) each message is
  read by ``read()`` itself, through ``convert`` — which reads a large one in a worker thread — one
  message at a time, in the order they came.
* **A frame this end cannot send** (a value the proto cannot carry, ``mapping``): the gateway sends
  an ``INTERNAL`` error for that session (or an ``answer`` with that error for a query) in its place
  and drops the session's later frames; the client hands its own connection an ``INVALID_REQUEST``
  error for the request (or query), as if the gateway had answered — nothing reached the gateway.
* **The gateway's limit.** The gateway announces its frame limit in the call's initial metadata
  (``MAX_FRAME_KEY``); the client refuses a larger frame the same way, so one oversized request ends
  only its own session and the stream carries on.
* **How the call ended** (client). A call that ended with a status other than OK is handed to the
  connection as a connection-level ``error`` (``status_error``): every live session gets it.

The gateway puts the GTL code first in a status's details (``status_details``: ``"AUTH_FAILED: …"``),
so ``status_error`` rebuilds the same ``GTLError`` class on the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import grpc
import msgspec

from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES, decode, encode
from gtl_nb.protocol.errors import (
    ERROR_CLASSES,
    CancelledError,
    GTLError,
    InvalidRequestError,
    OverloadedError,
    ProtocolError,
    ProviderUnavailableError,
    error_class,
)
from gtl_nb.protocol.frames import REFUSED_START, refused_frame
from gtl_nb.protocol.messages import Answer, CompletionRequest, Done, Error, WireMessage
from gtl_nb.transports.channel import CLOSE_WAIT
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc.mapping import FRAME_ONEOF, from_proto, to_frame
from gtl_nb.words import with_article

__all__ = [
    "COMPRESSION_KEY",
    "HIGH_WATER_BYTES",
    "MAX_FRAME_KEY",
    "MESSAGE_SLACK",
    "SESSION_METHOD",
    "GrpcStreamChannel",
    "status_details",
    "status_error",
]

log = get_logger("transports.grpc")

SESSION_METHOD = "/gtl.v1.GTL/Session"
"""The full name of the bidirectional call (``gtl.proto``: ``service GTL``, ``rpc Session``)."""
MAX_FRAME_KEY = "gtl-max-frame-bytes"
"""Initial metadata of a ``Session`` call: the largest JSON frame the gateway accepts."""
COMPRESSION_KEY = "gtl-compression"
"""Call metadata asking the gateway to compress its answers (value ``gzip``)."""
BATCH_KEY, BATCH_VALUE = "gtl-frames", "batch"
"""Call metadata a client sends to take several frames per gRPC message (``ServerFrame.more``); the
gateway answers with the same pair in its initial metadata when it will send them."""
BATCH_BYTES = 64 * 1024
"""Most bytes of a gRPC message of several frames (a frame longer than this goes alone)."""
_MORE_TAG = bytes([(pb.ServerFrame.DESCRIPTOR.fields_by_name["more"].number << 3) | 2])
"""``ServerFrame.more``'s key: a serialized frame followed by entries of it is one longer frame."""
MIN_WRITE_RATE = 32 * 1024
"""Bytes a second the peer is assumed to take at the least: a message's write may take ``write_timeout``
plus its size at this rate (an 8 MiB frame: 256 s more) before the peer counts as reading nothing."""
HIGH_WATER_BYTES = 1024 * 1024
"""Bytes of serialized messages queued before ``drain()`` waits."""
MESSAGE_SLACK = 64 * 1024
"""Bytes a gRPC message may exceed ``max_frame_bytes`` by: a frame's protobuf form is about as long
as its JSON form, so the exact limit is left to the JSON check and gRPC only bounds the memory."""

Role = Literal["client", "server"]
Receive = Callable[[], Awaitable[Any]]
"""The next message of the call as bytes; ``grpc.aio.EOF`` (or ``None``) at its end."""
Send = Callable[[bytes], Awaitable[None]]
Convert = Callable[[int, Callable[[bytes], bytes], bytes], Awaitable[bytes]]
"""``convert(size, read, message)``: ``read(message)`` for a message of ``size`` bytes, run where the
caller chooses (the gateway: a large one in a worker thread, ``gateway.offload.converted``)."""

_FRAME_TYPES = {"client": (pb.ClientFrame, pb.ServerFrame), "server": (pb.ServerFrame, pb.ClientFrame)}
"""role -> (what this end sends, what it receives)."""

# -- statuses ------------------------------------------------------------------------------------------

_STATUS_CODES = {
    grpc.StatusCode.UNAUTHENTICATED: "AUTH_FAILED",
    grpc.StatusCode.PERMISSION_DENIED: "FORBIDDEN",
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_REQUEST",
    grpc.StatusCode.FAILED_PRECONDITION: "INVALID_REQUEST",
    grpc.StatusCode.OUT_OF_RANGE: "INVALID_REQUEST",
    grpc.StatusCode.NOT_FOUND: "INVALID_REQUEST",
    grpc.StatusCode.UNIMPLEMENTED: "INVALID_REQUEST",
    grpc.StatusCode.DEADLINE_EXCEEDED: "TIMEOUT",
    grpc.StatusCode.CANCELLED: "CANCELLED",
}
"""Statuses without a GTL code in their details; anything else not here is ``PROVIDER_UNAVAILABLE``."""


def status_details(error: GTLError) -> str:
    """The details of a gRPC status standing for ``error``: ``"CODE: message"``."""
    return f"{error.code}: {error.message}"


def status_error(code: grpc.StatusCode, details: str | None, *, where: str) -> GTLError:
    """The ``GTLError`` a non-OK status stands for; ``where`` names the gateway in the message.

    Details that start with a GTL code (``status_details``) give that class. Otherwise the status
    decides: ``RESOURCE_EXHAUSTED`` is ``INVALID_REQUEST`` for a message over the peer's size limit
    and ``OVERLOADED`` otherwise; ``UNAVAILABLE`` and the statuses not in the table are a retryable
    ``PROVIDER_UNAVAILABLE``.
    """
    text = details or code.name
    prefix, sep, rest = text.partition(": ")
    if sep and prefix in ERROR_CLASSES:
        return error_class(prefix)(rest)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "larger than max" in text:
            return InvalidRequestError(f"the {where} refused a message larger than its limit ({text})")
        return OverloadedError(f"the {where} is overloaded ({text})")
    if code is grpc.StatusCode.CANCELLED:
        return CancelledError(f"the {where} cancelled the call ({text})")
    gtl_code = _STATUS_CODES.get(code)
    if gtl_code is None:
        return ProviderUnavailableError(f"the stream to the {where} broke: {code.name}: {text}")
    return error_class(gtl_code)(f"the {where} answered {code.name}: {text}")


class _Unread:
    """A received message not yet read into its JSON frame(s): ``read()`` hands it to ``convert``."""

    __slots__ = ("message",)

    def __init__(self, message: bytes) -> None:
        self.message = message


# -- the channel ---------------------------------------------------------------------------------------


class GrpcStreamChannel:
    """A ``Channel`` over one ``Session`` call (see the module docstring).

    ``receive``/``send`` are the call's own (``context.read``/``context.write`` on the gateway,
    ``call.read``/``call.write`` on the client; messages are raw bytes). ``role`` says which frames
    go which way. ``peer_max_frame_bytes`` (client) is the gateway's announced limit. ``close`` runs
    after the last message was written (the client half-closes, waits for the status and closes its
    gRPC channel). ``where`` names the other end in error messages.
    """

    def __init__(
        self,
        receive: Receive,
        send: Send,
        *,
        role: Role,
        peer: str | None = None,
        where: str = "peer",
        peer_max_frame_bytes: int | None = None,
        max_json_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        close: Callable[[], Awaitable[None]] | None = None,
        batches: bool = False,
        convert: Convert | None = None,
        write_timeout: float = math.inf,
        on_half_close: Callable[[], object] | None = None,
    ) -> None:
        self.peer = peer
        self.on_half_close = on_half_close
        """Called once when the peer ended its messages (see the module docstring); ``None``: that end reads
        as ``b""``, the peer gone."""
        self.half_closed = False
        """Whether the peer ended its messages while the call goes on (with ``on_half_close`` only)."""
        self.batches = batches and role == "server"
        """Whether the frames waiting for the sender go out together (``ServerFrame.more``)."""
        self.role = role
        self.where = where
        self.peer_max_frame_bytes = peer_max_frame_bytes
        self.broken = False
        """Whether a write found the call ended (nothing more is sent)."""
        self._receive = receive
        self._send = send
        self._close = close
        self._max_json_bytes = max_json_bytes
        self._outgoing, self._incoming = _FRAME_TYPES[role]
        self._pending = b""  # an incomplete frame of a write (the connection writes whole frames)
        self._outbox: deque[bytes] = deque()  # serialized messages the sender has not written yet
        self._outbox_bytes = 0
        self._sender: asyncio.Task[None] | None = None
        self._stopping_sender = False
        self._queued = asyncio.Event()  # the sender has work (or should stop)
        self._room = asyncio.Event()  # the outbox went down to HIGH_WATER_BYTES (or the call broke)
        self._inbox: deque[bytes | _Unread] = deque()  # frames for read(): received, or refusals made here
        self._convert = convert
        self._receiving: asyncio.Future[Any] | None = None
        self._reader: asyncio.Future[None] | None = None  # what read() waits on
        self._finished = False  # the call's end was read
        self._closed = False
        self._dropping: set[str] = set()  # sessions the gateway ended in place of a frame it could not send
        self._write_timeout = write_timeout
        self._writing_until: float | None = None  # (loop time) when the write under way has taken too long
        self._stall_timer: asyncio.TimerHandle | None = None

    # -- reads ---------------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next frame(s) for the connection; ``b""`` once the call ended."""
        while not self._inbox:
            if self._finished:
                return b""
            if self.half_closed:  # nothing more comes: wait for the call's end (_end_reads)
                hook, self.on_half_close = self.on_half_close, None
                if hook is not None:
                    asyncio.get_running_loop().call_soon(hook)
            elif self._receiving is None:
                # the receive runs as a task of its own: gRPC raises CancelledError for a call
                # cancelled under us, which must not be taken for this reader being cancelled,
                # and a refusal made by write() must be able to wake the reader meanwhile
                self._receiving = asyncio.ensure_future(self._receive())
                self._receiving.add_done_callback(self._received)
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        item = self._inbox.popleft()
        if type(item) is _Unread:  # read in turn: a later message waits behind it, as on the wire
            assert self._convert is not None
            return await self._convert(len(item.message), self._frame_of, item.message)
        return item  # type: ignore[return-value]

    def _received(self, received: asyncio.Future[Any]) -> None:
        if self._receiving is received:
            self._receiving = None
        self._take(received)
        self._wake()

    def _wake(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _take(self, received: asyncio.Future[Any]) -> None:
        """Turn what one receive gave into frames for the connection (or the end)."""
        if received.cancelled():
            self._finished = True
            return
        error = received.exception()
        if error is not None:
            self._finished = True
            if self.role == "client" and isinstance(error, grpc.aio.AioRpcError):
                ended = status_error(error.code(), error.details(), where=self.where)
                self._inbox.append(encode(ended.to_event("")) + b"\n")  # session_id "": the whole connection
            return
        data = received.result()
        if data is None or data is grpc.aio.EOF:
            if self.on_half_close is not None and not self.broken and not self._closed:
                self.half_closed = True  # the peer sends no more but still reads
            else:
                self._finished = True
            return
        self._inbox.append(self._frame_of(data) if self._convert is None else _Unread(data))

    def _frame_of(self, data: bytes) -> bytes:
        """One message as its JSON frame(s) — a ``ServerFrame`` may carry more after its own — or as a
        bad frame naming its session when it cannot be read."""
        try:
            frame = self._incoming.FromString(data)
        except Exception as exc:  # any protobuf failure on outside bytes is one bad frame
            name = self._incoming.DESCRIPTOR.full_name
            return _bad_frame(f"malformed gRPC message: not a valid {name} protobuf ({type(exc).__name__})")
        more = getattr(frame, "more", None)
        if not more:
            return self._json_of(frame)
        if len(data) > BATCH_BYTES:  # a gateway batches at most this much: refuse before expanding it
            return _bad_frame(f"a ServerFrame carrying more frames is longer than {BATCH_BYTES} bytes")
        frames = [self._json_of(frame)]
        for extra in more:
            if extra.more:
                frames.append(_bad_frame("a frame in ServerFrame.more carries more frames itself"))
                break
            frames.append(self._json_of(extra))
            if frames[-1].startswith(_BAD_FRAME_START):
                break  # one bad frame ends the message: the rest is not worth expanding
        return b"".join(frames)

    def _json_of(self, frame: Any) -> bytes:
        case = frame.WhichOneof(FRAME_ONEOF)
        try:
            return encode(from_proto(frame, max_json_bytes=self._max_json_bytes)) + b"\n"
        except ProtocolError as exc:
            inner = getattr(frame, case) if case else None
            session_id = getattr(inner, "session_id", None) if inner is not None else None
            return _bad_frame(exc.message, case, session_id)

    # -- writes --------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue the frames in ``data`` as gRPC messages (never blocks; dropped once the call ended)."""
        if not data or self.broken or self._closed:
            return
        *frames, self._pending = (self._pending + data).split(b"\n")
        for frame in frames:
            if frame.strip():
                self._put(frame)
        if self._outbox:
            self._queued.set()
            if self._sender is None:
                self._sender = asyncio.get_running_loop().create_task(self._pump(), name="gtl-grpc-sender")

    def _put(self, frame: bytes) -> None:
        try:
            message = decode(frame, max_bytes=len(frame))
        except ProtocolError as exc:  # our own connection wrote it: a value the wire refuses, built by hand
            self._unreadable(frame, exc)
            return
        session_id = getattr(message, "session_id", "")
        if session_id in self._dropping:
            if isinstance(message, (Done, Error)):
                self._dropping.discard(session_id)
            return
        limit = self.peer_max_frame_bytes
        if limit is not None and len(frame) > limit and self.role == "client":
            size = f"the {_kind(message)} frame of {len(frame)} bytes exceeds the maximum frame size of {limit} bytes"
            self._refuse(message, f"{size} that the {self.where} accepts")
            return
        try:
            data = to_frame(message, self._outgoing, max_json_bytes=self._max_json_bytes).SerializeToString()
        except ProtocolError as exc:
            if self.role == "client":
                self._refuse(message, f"the {_kind(message)} cannot be sent over gRPC: {exc.message}")
                return
            replacement = self._replacement(message, exc)
            if replacement is None:
                return
            data = replacement
        self._outbox.append(data)
        self._outbox_bytes += len(data)

    def _unreadable(self, frame: bytes, exc: ProtocolError) -> None:
        """A frame this end wrote but cannot read back — a request built by hand with a value the wire
        refuses (``max_tokens`` 0, a temperature of 5): the client answers its session (or query) as
        the gateway would have, so the caller gets its error instead of waiting forever; anything
        else is dropped, and logged."""
        try:
            raw = msgspec.json.decode(frame)  # (our own encoder wrote it: bounded by its own limits)
        except (msgspec.DecodeError, RecursionError):
            raw = None
        kind = raw.get("type") if isinstance(raw, dict) else None
        session_id, query_id = (raw.get("session_id"), raw.get("query_id")) if isinstance(raw, dict) else (None, None)
        reason = f"the {kind or 'frame'} cannot be sent: {exc.message}"
        if self.role == "client" and kind == "completion_request" and isinstance(session_id, str) and session_id:
            self._answer(Error(session_id=session_id, code="INVALID_REQUEST", message=reason))
        elif self.role == "client" and kind == "query" and isinstance(query_id, str) and query_id:
            self._answer(
                Answer(query_id=query_id, error=Error(session_id=query_id, code="INVALID_REQUEST", message=reason))
            )
        else:
            log.error("dropped a frame this end could not read back: %s", exc.message)

    def _refuse(self, message: WireMessage, reason: str) -> None:
        """Client: answer a request (or query) the gateway will never see, as the gateway would have."""
        session_id, query_id = getattr(message, "session_id", ""), getattr(message, "query_id", "")
        if isinstance(message, CompletionRequest):
            self._answer(Error(session_id=session_id, code="INVALID_REQUEST", message=reason))
        elif query_id:
            self._answer(
                Answer(query_id=query_id, error=Error(session_id=query_id, code="INVALID_REQUEST", message=reason))
            )
        else:
            log.warning("dropped a %s: %s", _kind(message), reason)

    def _replacement(self, message: WireMessage, exc: ProtocolError) -> bytes | None:
        """Gateway: what goes out instead of a message gRPC cannot carry (``None``: nothing)."""
        kind = _kind(message)
        log.warning("%s cannot be sent over gRPC: %s", with_article(kind), exc.message)
        reason = f"the gateway cannot send {with_article(kind)} over gRPC"
        session_id, query_id = getattr(message, "session_id", ""), getattr(message, "query_id", "")
        if session_id:
            if not isinstance(message, (Done, Error)):
                self._dropping.add(session_id)  # its later events would follow its end
            replacement: Any = Error(session_id=session_id, code="INTERNAL", message=reason)
        elif query_id:  # a question must still be answered
            replacement = Answer(query_id=query_id, error=Error(session_id=query_id, code="INTERNAL", message=reason))
        else:
            return None  # provider_info or a connection-level error: nothing waits for it
        return bytes(to_frame(replacement, self._outgoing).SerializeToString())

    def _answer(self, message: Any) -> None:
        """Hand the local connection ``message`` as if the peer had sent it."""
        self._inbox.append(encode(message) + b"\n")
        self._wake()

    async def _pump(self) -> None:
        """The one writer of the call: the outbox in order, each write waiting on gRPC's flow control
        (with ``batches``, every message waiting in one write, up to ``BATCH_BYTES``)."""
        while True:
            while self._outbox:
                message, size = self._next_message()
                self._write_begins(len(message))
                try:
                    await self._send(message)
                except asyncio.CancelledError:
                    if self._stopping_sender:
                        raise
                    self._break()  # gRPC raises CancelledError for a call cancelled under us
                    return
                except Exception:  # the call ended: reads report it
                    self._break()
                    return
                finally:
                    self._writing_until = None
                self._outbox_bytes -= size
                if self._outbox_bytes <= HIGH_WATER_BYTES:
                    self._room.set()
            if self._closed:
                return
            self._queued.clear()
            await self._queued.wait()

    def _write_begins(self, size: int) -> None:
        """Count the write of ``size`` bytes about to wait on flow control: it may take ``write_timeout``
        plus its size at ``MIN_WRITE_RATE`` (one timer for a run of writes: ``_check_stall``)."""
        if not math.isfinite(self._write_timeout):
            return
        loop = asyncio.get_running_loop()
        self._writing_until = until = loop.time() + self._write_timeout + size / MIN_WRITE_RATE
        if self._stall_timer is None:
            self._stall_timer = loop.call_at(until, self._check_stall)

    def _check_stall(self) -> None:
        """End the call if the write under way has outlived its bound (see the module)."""
        self._stall_timer = None
        until = self._writing_until
        if until is None or self.broken or self._closed:  # no write waits: the next one arms the timer again
            return
        loop = asyncio.get_running_loop()
        if until > loop.time():  # a later write: its own bound
            self._stall_timer = loop.call_at(until, self._check_stall)
            return
        log.info(
            "ending the gRPC call from %s: it read none of what was written to it for %g s (%d bytes wait)",
            self.peer or "?",
            self._write_timeout,
            self._outbox_bytes,
        )
        self._break()
        self._end_reads()
        sender = self._sender
        if sender is not None and not sender.done():  # its write never completes: nothing more is sent
            self._stopping_sender = True
            sender.cancel()

    def _end_reads(self) -> None:
        """The call is over for this end: ``read()`` returns ``b""`` (what arrived and was not read is dropped)."""
        self._finished = True
        self._inbox.clear()
        if self._receiving is not None and not self._receiving.done():
            self._receiving.cancel()
        self._wake()

    def _next_message(self) -> tuple[bytes, int]:
        """The next gRPC message off the outbox and the outbox bytes it takes: one frame, or with
        ``batches`` the frames behind it appended as ``more`` entries (serialized frames concatenate)."""
        outbox = self._outbox
        first = outbox.popleft()
        most = min(BATCH_BYTES, self._max_json_bytes)  # never more than the frame limit it announced
        parts, size, length = [first], len(first), len(first)
        while self.batches and outbox:
            entry = _MORE_TAG + _varint(len(outbox[0]))
            if length + len(entry) + len(outbox[0]) > most:
                break
            extra = outbox.popleft()
            parts += (entry, extra)
            size += len(extra)
            length += len(entry) + len(extra)
        return (first if len(parts) == 1 else b"".join(parts)), size

    def _break(self) -> None:
        self.broken = True
        self._outbox.clear()
        self._outbox_bytes = 0
        self._room.set()

    def has_room(self) -> bool:
        """Whether ``drain()`` would return at once (``FramedConnection.drain_when_full`` asks per event)."""
        return self._outbox_bytes <= HIGH_WATER_BYTES or self.broken

    async def drain(self) -> None:
        """Wait while more than ``HIGH_WATER_BYTES`` wait for the sender."""
        while self._outbox_bytes > HIGH_WATER_BYTES and not self.broken:
            self._room.clear()
            await self._room.wait()

    def abandon(self) -> None:
        """Drop what is queued and stop the sender: the call is given up before it started (a failed dial)."""
        self._closed = True
        self._break()
        sender = self._sender
        if sender is not None and not sender.done():
            self._stopping_sender = True
            sender.cancel()

    async def aclose(self) -> None:
        """Send what is queued (within ``CLOSE_WAIT`` seconds), then close this side (idempotent)."""
        if self._closed:
            return
        self._closed = True
        sender = self._sender
        if sender is not None and not sender.done():
            self._queued.set()  # it returns once the outbox is empty
            await asyncio.wait({sender}, timeout=CLOSE_WAIT)  # a peer not reading gives up the rest
            if not sender.done():
                self._stopping_sender = True
                sender.cancel()
                await asyncio.wait({sender})
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._close is not None:
            with contextlib.suppress(Exception):
                await self._close()
        if self._receiving is not None and not self._receiving.done():
            self._receiving.cancel()


_BAD_FRAME_START = REFUSED_START


def _bad_frame(reason: str, case: str | None = None, session_id: str | None = None) -> bytes:
    """Bytes the connection's frame reader refuses as one bad frame of ``session_id``, its error saying
    ``reason`` (``protocol.frames.refused_frame``; see the module docstring)."""
    return refused_frame(reason, case, session_id)


def _kind(message: object) -> str:
    return str(getattr(type(message).__struct_config__, "tag", None) or type(message).__name__)


def _varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint (a length prefix)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
