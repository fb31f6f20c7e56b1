"""The seam between the engine and an HTTP client: one method, ``send``.

The engine's runner (``engine.http.HttpRunner``) owns timeouts, body caps and decoding; a transport
only puts a dialect's ``HttpRequest`` on the wire and hands back the status, the headers and the body
as an async iterator of chunks. ``HttptoolsTransport`` (``engine.httptools_transport``) is the default;
``AiohttpTransport`` and ``HttpxTransport`` are the alternatives, chosen by ``[upstream] client``;
another client can be measured by passing it to ``build_engine(http_transport=...)`` without touching
the engine.

A transport reports failures with the exceptions below (never its library's own), so the runner can
tell a refused connection from one lost mid-body, and a request that is not valid HTTP (an illegal
header value, which may be a key: the message must not quote it) from a network fault.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol, runtime_checkable

from gtl_nb.providers.base import HttpRequest

__all__ = [
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionLost",
    "HttpResponse",
    "HttpTransport",
    "TransportError",
    "UnsendableRequest",
    "check_request_headers",
    "check_request_url",
]


class TransportError(Exception):
    """A transport could not complete an exchange; the subclasses say how."""


class ConnectTimeout(TransportError):
    """No connection within the connect timeout."""


class ConnectFailed(TransportError):
    """The connection was refused, reset or closed before a response began."""


class ConnectionLost(TransportError):
    """The connection ended in the middle of the response body."""


class UnsendableRequest(TransportError):
    """The request is not valid HTTP (an illegal header value, a bad URL). Never retried; the message
    names the kind of fault only, never a header's value."""


@runtime_checkable
class HttpResponse(Protocol):
    """A response whose body has not been read yet."""

    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, decoded of any content encoding, in the pieces the network delivers.
        Raises ``ConnectionLost`` when the connection ends mid-body."""
        ...

    async def aclose(self) -> None:
        """Release the connection (reading the rest of the body is not required)."""
        ...


@runtime_checkable
class HttpTransport(Protocol):
    """Sends request descriptions; one instance is shared by every session of an engine."""

    async def send(self, request: HttpRequest, *, connect_timeout: float | None) -> HttpResponse:
        """Send ``request`` and return once the response headers have arrived."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...


_TOKEN_CHARACTERS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""What a header name may contain (RFC 9110's ``token``)."""


def check_request_headers(headers: Mapping[str, str]) -> None:
    """Refuse a header no HTTP peer should take, before anything is sent: a name that is not an RFC 9110
    token, a non-ASCII value, or a line break or NUL in a value (header injection). The message names
    the header, never its value (a key may be in it)."""
    for name, value in headers.items():
        if not name or not _TOKEN_CHARACTERS.issuperset(name):
            raise UnsendableRequest("an illegal header name")  # (names come from the configuration)
        if not value.isascii() or "\r" in value or "\n" in value or "\0" in value:
            raise UnsendableRequest(f"an illegal value in the {name!r} header")


def check_request_url(url: str) -> None:
    """Refuse a URL with a non-ASCII, whitespace or control character (the dialects percent-encode
    what they put in one); the message never quotes it (Gemini's ``?key=``)."""
    if not url.isascii() or any(ord(char) <= 0x20 or char == "\x7f" for char in url):
        raise UnsendableRequest("an illegal character in the URL")
