"""The one error hierarchy of gtl_nb.

::

    GTLError                              every error gtl_nb raises
    ├── ProtocolError (ValueError)        a frame or event sequence that breaks the spec
    │   ├── FrameTooLargeError
    │   ├── UnknownMessageTypeError
    │   ├── VersionMismatchError
    │   ├── UnsupportedFeatureError     a request field the peer did not agree to (INVALID_REQUEST)
    │   └── SessionStateError
    ├── ConfigurationError (ValueError)   a caller mistake in set-up: unknown key, missing credential
    ├── RequestError                      the request itself is wrong (never retried, never failed over)
    │   ├── InvalidRequestError             INVALID_REQUEST
    │   ├── ContextLengthExceededError      CONTEXT_LENGTH_EXCEEDED
    │   ├── ModelNotFoundError              MODEL_NOT_FOUND
    │   ├── AuthenticationError             AUTH_FAILED
    │   ├── PermissionDeniedError           FORBIDDEN
    │   ├── ContentFilteredError            CONTENT_FILTERED
    │   ├── BudgetExceededError             BUDGET_EXCEEDED
    │   └── RateLimitError                  RATE_LIMIT (retryable unless the quota is exhausted)
    ├── RemoteError                       the provider or the network failed
    │   ├── OverloadedError                 OVERLOADED
    │   ├── ProviderUnavailableError        PROVIDER_UNAVAILABLE
    │   ├── ProviderTimeoutError            TIMEOUT
    │   └── InternalError                   INTERNAL
    └── CancelledError                    CANCELLED

Each protocol error code maps to exactly one class (``ERROR_CLASSES``) and back (``cls.code``);
``error_from_event`` turns an ``error`` event into its exception and ``GTLError.to_event`` the
reverse. Backend exceptions (httpx, sockets) are translated at the engine boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from gtl_nb.protocol.messages import Error


def escaped(text: str) -> str:
    """``text`` with every character a terminal or log reader would act on or not show (a newline, ESC,
    a C1 control, a bidi override) as its Python escape — ``\\n``, ``\\x1b``, ``\\u202e`` — so a peer's
    words cannot forge a log line. The protocol layer's copy of ``gtl_nb.words.shown_in_terminal`` (this
    layer imports nothing else of gtl_nb); both are held to the same results by a test."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class GTLError(Exception):
    """Base of every gtl_nb error. Coded errors carry the fields of the GTL ``error`` event."""

    code: ClassVar[str] = "INTERNAL"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        retryable: bool | None = None,
        provider: str | None = None,
        retry_after: float | None = None,
        http_status: int | None = None,
        session_id: str | None = None,
        peer_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = self.default_retryable if retryable is None else retryable
        self.provider = provider
        self.retry_after = retry_after
        self.http_status = http_status
        self.session_id = session_id
        self.peer_code = peer_code
        """The code of a peer's ``error`` that this side does not know (this error is then ``INTERNAL``)."""

    def __str__(self) -> str:
        # what a log line or a terminal shows of the error: a peer's words (its code, its message, the
        # provider it names) may hold ESC, newlines or bidi overrides, so each is shown ``escaped``
        where = f" [{escaped(str(self.provider))}]" if self.provider else ""
        unknown = f" (the peer's code {escaped(str(self.peer_code))})" if self.peer_code else ""
        return f"{self.code}{unknown}{where}: {escaped(str(self.message))}"

    def to_event(self, session_id: str | None = None) -> Error:
        """This error as a GTL ``error`` event."""
        from gtl_nb.protocol.messages import Error

        code = self.code if self.code in ERROR_CLASSES else "INTERNAL"
        return Error(
            session_id=session_id or self.session_id or "",
            code=code,  # type: ignore[arg-type]
            message=self.message,
            retryable=self.retryable,
            provider=self.provider,
            retry_after=self.retry_after,
            http_status=self.http_status,
            peer_code=self.peer_code,
        )


class ProtocolError(GTLError, ValueError):
    """A frame or an event sequence that breaks the GTL spec."""

    code = "INVALID_REQUEST"


class FrameTooLargeError(ProtocolError):
    """A frame is larger than the configured maximum."""


class UnknownMessageTypeError(ProtocolError):
    """A frame's ``type`` is not a GTL message type."""


class VersionMismatchError(ProtocolError):
    """Version negotiation found no common protocol version."""


class UnsupportedFeatureError(ProtocolError):
    """A request uses a GTL extension the peer did not agree to in ``hello`` (``protocol.extensions``):
    refused before it is sent, since the peer would drop the field and answer another request."""

    def __init__(self, message: str = "", *, field: str = "", feature: str = "") -> None:
        super().__init__(message)
        self.field = field
        """Where in the request: ``"stop"``, ``"messages[2].tool_error"``."""
        self.feature = feature
        """The ``hello`` feature it needs."""


class SessionStateError(ProtocolError):
    """Events of a session arrived in an order the spec does not allow."""

    code = "INTERNAL"


class ConfigurationError(GTLError, ValueError):
    """A set-up mistake: unknown configuration key, missing credential, unknown provider."""

    code = "INVALID_REQUEST"

    def __str__(self) -> str:  # a set-up mistake is read by a person: the message says it all
        return self.message


class RequestError(GTLError):
    """The request is wrong or not allowed; sending it again unchanged will not help."""


class InvalidRequestError(RequestError):
    code = "INVALID_REQUEST"


class ContextLengthExceededError(RequestError):
    code = "CONTEXT_LENGTH_EXCEEDED"


class ModelNotFoundError(RequestError):
    code = "MODEL_NOT_FOUND"


class AuthenticationError(RequestError):
    code = "AUTH_FAILED"


class PermissionDeniedError(RequestError):
    code = "FORBIDDEN"


class ContentFilteredError(RequestError):
    code = "CONTENT_FILTERED"


class BudgetExceededError(RequestError):
    code = "BUDGET_EXCEEDED"


class RateLimitError(RequestError):
    """Too many requests. Retryable, except a quota that is exhausted for the period."""

    code = "RATE_LIMIT"
    default_retryable = True


class RemoteError(GTLError):
    """The provider or the network failed."""


class OverloadedError(RemoteError):
    code = "OVERLOADED"
    default_retryable = True


class ProviderUnavailableError(RemoteError):
    code = "PROVIDER_UNAVAILABLE"
    default_retryable = True


class ProviderTimeoutError(RemoteError):
    code = "TIMEOUT"
    default_retryable = True


class InternalError(RemoteError):
    code = "INTERNAL"


class CancelledError(GTLError):
    """The session was cancelled (by the caller, or an interrupted kernel)."""

    code = "CANCELLED"


ERROR_CLASSES: dict[str, type[GTLError]] = {
    cls.code: cls
    for cls in (
        RateLimitError,
        AuthenticationError,
        PermissionDeniedError,
        InvalidRequestError,
        ContextLengthExceededError,
        ModelNotFoundError,
        ContentFilteredError,
        OverloadedError,
        ProviderUnavailableError,
        ProviderTimeoutError,
        CancelledError,
        BudgetExceededError,
        InternalError,
    )
}


def error_class(code: str) -> type[GTLError]:
    """The exception class of a protocol error code (``INTERNAL`` for an unknown one)."""
    return ERROR_CLASSES.get(code, InternalError)


def error_from_event(event: Error) -> GTLError:
    """The exception that an ``error`` event stands for."""
    return error_class(event.code)(
        event.message,
        retryable=event.retryable,
        provider=event.provider,
        retry_after=event.retry_after,
        http_status=event.http_status,
        session_id=event.session_id,
        peer_code=event.peer_code,
    )
