"""GTL over QUIC, what goes on the wire besides the frames (sans-I/O: no asyncio, no aioquic).

* **ALPN** ``gtl/1``; TLS 1.3 always (QUIC has no plaintext form).
* **The control stream** is the client's first bidirectional stream (id 0): the hello exchange (the
  token travels in ``hello``), then the gateway's provider list, then it stays open until the
  connection ends. A connection-level ``error`` (``AUTH_FAILED``, no common version) arrives on it.
* **A session stream** is any later client bidirectional stream: the client writes one
  ``completion_request`` frame, perhaps one ``cancel`` later; the gateway writes that session's events
  and ends the stream (FIN) with the one terminal event. Frames are the codec's (one JSON object per
  line, ``max_frame_bytes`` each). ``RequestStream`` is the gateway's reading of such a stream,
  ``EventStream`` the client's (each event checked by a ``SessionStateMachine``).
* **Codes.** Resetting a session stream (or asking the peer to stop sending on it) with
  ``STREAM_CANCEL`` cancels the session. A connection the gateway closes carries the GTL error code
  as the QUIC application error code (``CLOSE_CODES``) and its message as the reason phrase, so a
  client learns why even when the control stream's last frame was lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES, frames_within
from gtl_nb.protocol.errors import (
    ERROR_CLASSES,
    ConfigurationError,
    GTLError,
    ProtocolError,
    ProviderUnavailableError,
)
from gtl_nb.protocol.frames import BadFrame, FrameReader
from gtl_nb.protocol.messages import Cancel, CompletionRequest, Done, Error, StreamEvent, WireMessage
from gtl_nb.transports.stream_reading import SessionStreamReader as EventStream
from gtl_nb.transports.stream_reading import stream_fault

__all__ = [
    "ALPN",
    "CLOSE_CODES",
    "CONTROL_STREAM_ID",
    "NO_ERROR",
    "STREAM_CANCEL",
    "STREAM_DONE",
    "EventStream",
    "RequestStream",
    "StreamViolation",
    "close_code",
    "closed_error",
    "frame",
    "is_terminal",
    "stream_fault",
]

ALPN = "gtl/1"
CONTROL_STREAM_ID = 0
"""The client's first bidirectional stream."""

NO_ERROR = 0x0
STREAM_CANCEL = 0x1
"""Reset / stop-sending code of a client that gives up on a session: the gateway cancels it."""
STREAM_DONE = 0x2
"""Stop-sending code of a gateway that no longer reads a session stream (its session ended)."""

CLOSE_CODES: dict[str, int] = {
    "INVALID_REQUEST": 0x101,
    "AUTH_FAILED": 0x102,
    "FORBIDDEN": 0x103,
    "OVERLOADED": 0x104,
    "PROVIDER_UNAVAILABLE": 0x105,
    "INTERNAL": 0x106,
}
"""GTL error code -> QUIC application error code of a connection closed for it (never renumbered)."""
_CLOSE_NAMES = {number: name for name, number in CLOSE_CODES.items()}
_CRYPTO_ERRORS = range(0x100, 0x200)  # QUIC transport codes CRYPTO_ERROR + TLS alert
_CERTIFICATE_ALERTS = range(42, 49)  # bad_certificate ... unknown_ca (RFC 8446 section 6)
_MAX_REASON = 512  # bytes of reason phrase: a close frame must fit in one packet


def frame(message: WireMessage, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """``message`` as a newline-terminated frame — a token or reasoning too long for one as several
    (``codec.frames_within``); ``FrameTooLargeError`` for anything else over ``max_frame_bytes``."""
    return frames_within(message, max_frame_bytes)


def close_code(error: GTLError | None) -> tuple[int, str]:
    """The QUIC application error code and reason phrase of a connection the gateway closes for ``error``."""
    if error is None:
        return NO_ERROR, ""
    code = CLOSE_CODES.get(error.code, CLOSE_CODES["INTERNAL"])
    return code, error.message.encode()[:_MAX_REASON].decode(errors="ignore")


def closed_error(error_code: int, reason: str, *, application: bool, label: str) -> GTLError:
    """Why a connection ended, from the client's side, as the error its sessions (or ``connect``) get.

    A refused server certificate is a ``ConfigurationError`` (as on every TLS transport: retrying cannot help).

    ``application`` is whether the peer closed with an application error code (``CLOSE_CODES``)
    rather than a QUIC transport code; ``label`` names the gateway.
    """
    if application and error_code in _CLOSE_NAMES:
        name = _CLOSE_NAMES[error_code]
        error = ERROR_CLASSES[name](reason or f"the {label} closed the connection ({name})")
        if name == "PROVIDER_UNAVAILABLE":
            error.retryable = True
        return error
    if application:
        why = f": {reason}" if reason else ""
        return ProviderUnavailableError(f"the {label} closed the connection{why}")
    if error_code in _CRYPTO_ERRORS:  # a TLS alert: retrying changes nothing
        alert = error_code - 0x100
        if alert in _CERTIFICATE_ALERTS:  # worded as the other TLS transports word it (endpoints.certificate_refused)
            return ConfigurationError(
                f"the {label} presented a certificate this client does not accept ({reason or f'alert {alert}'}): "
                "pass verify= the CA file that signed it (`gtl certs` writes ca.pem), and connect by a name the "
                "certificate lists"
            )
        return ProviderUnavailableError(
            f"TLS handshake with the {label} failed: {reason or f'alert {alert}'}", retryable=False
        )
    return ProviderUnavailableError(f"the connection to the {label} ended: {reason or f'QUIC error {error_code:#x}'}")


@dataclass(frozen=True)
class StreamViolation:
    """A session stream broke the rules: the error to send (or deliver) and the session it names."""

    error: ProtocolError
    session_id: str | None


RequestInput = CompletionRequest | Cancel | StreamViolation


class RequestStream:
    """The gateway's reading of one session stream: one ``completion_request``, then perhaps one ``cancel``.

    ``feed(data, end)`` returns the request, the cancel, or a ``StreamViolation`` (anything else, an
    undecodable or oversized frame, a stream that ended before its request); after a violation the
    stream is done and further input is ignored.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._reader = FrameReader(max_frame_bytes)
        self.request: CompletionRequest | None = None
        self.cancelled = False
        self.broken = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back."""
        return self._reader.pending_bytes

    def feed(self, data: bytes, end: bool = False) -> list[RequestInput]:
        if self.broken:
            return []
        items: list[RequestInput] = []
        for item in self._reader.feed(data) if data else []:
            items.append(self._take(item))
            if self.broken:
                return items
        if end:
            for bad in self._reader.close():
                items.append(self._take(bad))
                return items
            if self.request is None:
                items.append(self._violate(ProtocolError("the stream ended before its completion_request"), None))
        return items

    def _take(self, item: WireMessage | BadFrame) -> RequestInput:
        sid = self.request.session_id if self.request is not None else None
        if isinstance(item, BadFrame):
            return self._violate(item.error, sid or item.session_id)
        if self.request is None:
            if isinstance(item, CompletionRequest) and item.session_id:
                self.request = item
                return item
            what = "a completion_request without a session_id" if isinstance(item, CompletionRequest) else _kind(item)
            return self._violate(ProtocolError(f"a session stream starts with a completion_request, not {what}"), None)
        if isinstance(item, Cancel) and item.session_id == sid and not self.cancelled:
            self.cancelled = True
            return item
        return self._violate(
            ProtocolError(f"after its completion_request a session stream carries one cancel, not {_kind(item)}"), sid
        )

    def _violate(self, error: ProtocolError, sid: str | None) -> StreamViolation:
        self.broken = True
        return StreamViolation(error, sid)


def is_terminal(event: StreamEvent) -> bool:
    return isinstance(event, (Done, Error))


def _kind(message: object) -> str:
    config = getattr(type(message), "__struct_config__", None)
    return str(getattr(config, "tag", None) or type(message).__name__)
