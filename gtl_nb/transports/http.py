"""The HTTP client transport: ``connect("http://HOST:PORT")``, ``sse://``, and their TLS forms ``sses://``
(and ``https://`` once discovery chose plain HTTP, ``transports.discovery``).

Each session is one ``POST`` to the gateway (``/v1/gtl`` with NDJSON frames back, or ``/v1/gtl/sse``
with server-sent events); the token goes in ``Authorization: Bearer``. The provider list comes from
``GET /v1/gtl/providers``, fetched by ``start()`` (so a gateway that is not there fails in
``connect``). Every request names the versions the client speaks in ``GTL-Version`` (the spec's
negotiation, there being no hello); a gateway whose own ``GTL-Version`` names none of them is a
``VersionMismatchError`` at ``connect``. The provider list's ``GTL-Features`` header names the features
the gateway knows (none when it has no such header): a request using an extension field it did not
name is refused before it is sent (``protocol.extensions``), as on a connection. Cancelling a session
hears the gateway's end first, as on a connection (``HttpBackend._cancel``: the answer's status, a
refusal read whole, a ``200`` stream sent the ``cancel`` query and read to its end, each within
``CANCEL_WAIT``); failing that it closes the response, which the gateway takes as a cancel: the engine
cancels upstream and the ledger row says cancelled. The provider questions the protocol cannot carry
are answered as ``RemoteBackend`` answers them (docs/gateway.md).

Responses may come gzip-encoded (httpx asks for it and decodes each piece as it arrives, so a
stream stays live); ``?compression=none`` on the URL asks for them uncompressed. TLS follows
``verify`` (``transports.endpoints.tls_context``); a refused certificate is a ``ConfigurationError``
saying so.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from gtl_nb.engine.loop import LoopThread
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES, decode, encode
from gtl_nb.protocol.errors import (
    ConfigurationError,
    GTLError,
    InvalidRequestError,
    ProtocolError,
    ProviderUnavailableError,
    VersionMismatchError,
    error_from_event,
)
from gtl_nb.protocol.extensions import check_request, degraded, missing_extensions
from gtl_nb.protocol.messages import Answer, CompletionRequest, Done, Error, ProviderInfo, Query, StreamEvent
from gtl_nb.protocol.negotiation import (
    FEATURES_HEADER,
    VERSION_HEADER,
    features_from_header,
    header_value,
    negotiate_header,
)
from gtl_nb.transports.endpoints import parse_endpoint, tls_context, tls_hint, tls_refused
from gtl_nb.transports.link import CANCEL_WAIT, Deliver
from gtl_nb.transports.remote import RemoteBackend
from gtl_nb.transports.stream_reading import SessionStreamReader, stream_fault
from gtl_nb.transports.unreached import unreached_reason

__all__ = ["SCHEMES", "HttpBackend", "http_backend"]

UNKNOWN_SESSION_GRACE = 0.25
"""Seconds a cancelled session's response is still read after the gateway answered the ``cancel`` query
"no such session": enough for an end already on its way, short for a session on another replica."""


async def _first_of(task: asyncio.Future[None], waiting: Any) -> None:
    """Return once ``task`` is done or ``waiting`` (an awaitable) finished, whichever first."""
    other = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({task, other}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        other.cancel()


SCHEMES = ("http", "https", "sse", "sses")
_TLS = ("https", "sses")


MAX_FRAME_HEADER = "x-gtl-max-frame-bytes"
"""The header of the gateway's ``GET /v1/gtl/providers`` that says how large a request body it takes."""


class HttpBackend(RemoteBackend):
    """A ``Backend`` whose sessions are HTTP requests to a gateway (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        sse: bool = False,
        token: str | None = None,
        loop: LoopThread | None = None,
        verify: Any = True,
        compression: bool = True,
    ) -> None:
        secure = base_url.startswith("https:")
        scheme = ("sses" if secure else "sse") if sse else ("https" if secure else "http")
        super().__init__(_no_dial, label=f"{scheme} gateway ({base_url})", token=token, loop=loop)
        self.base_url = base_url
        self.sse = sse
        self.transport = scheme
        """The scheme sessions travel over (``Client.transport``)."""
        self.compression = compression
        self._ssl = tls_context(verify) if secure else None
        self._http: Any = None
        self._fetched = False
        self._send_limit = DEFAULT_MAX_FRAME_BYTES  # the gateway's, once its provider list said
        self.features: tuple[str, ...] = ()
        """The features the gateway's provider list named in ``GTL-Features`` (without the header, a gateway
        older than it: the first flags, ``negotiation.features_from_header``)."""
        self.missing_extensions = missing_extensions(())
        """The request extensions the gateway did not name: a request using one is refused here."""

    def __repr__(self) -> str:  # never the token
        return f"<HttpBackend {self.label}>"

    @property
    def channel(self) -> None:
        return None

    def _client(self) -> Any:
        import httpx

        if self._http is None:
            headers = {"authorization": f"Bearer {self._token}"} if self._token is not None else {}
            headers[VERSION_HEADER] = header_value()  # the spec's negotiation: no hello over HTTP
            if not self.compression:
                headers["accept-encoding"] = "identity"
            timeout = httpx.Timeout(self.open_timeout, read=None)
            options: dict[str, Any] = {"verify": self._ssl} if self._ssl is not None else {}
            self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, **options)
        return self._http

    async def start(self) -> None:
        """Fetch the provider list (once: discovery may have fetched it already)."""
        if not self._fetched:
            await self._fetch_providers()

    async def _fetch_providers(self) -> None:
        import httpx

        if self._closed:
            raise ConfigurationError(f"this client is closed; connect to the {self.label} again")
        try:  # a bounded read: a gateway that accepts and never answers is one that cannot be reached
            response = await self._client().get("/v1/gtl/providers", timeout=self.open_timeout)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code != 200:
            raise _failure(response.status_code, response.content, self.label, self.transport)
        _check_versions(response.headers.get(VERSION_HEADER), self.label)
        self._providers = msgspec.json.decode(response.content, type=list[ProviderInfo])
        said = response.headers.get(MAX_FRAME_HEADER, "")
        if said.isdigit() and 0 < int(said) < self._send_limit:
            self._send_limit = int(said)
        # no hello over HTTP: the provider list's answer is where the client learns what the gateway knows
        self.features = features_from_header(response.headers.get(FEATURES_HEADER))
        self.missing_extensions = missing_extensions(self.features)
        self._fetched = True

    def _unreachable(self, exc: Exception, *, lost: bool = False) -> GTLError:
        """The error of a request that could not reach the gateway (``lost``: one that failed on the way)."""
        import httpx

        # closed unanswered at first contact: what a TLS listener does to plain HTTP (a gateway that
        # answered before and then closed a connection is not one)
        closed = isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError))
        hint = tls_hint(self.transport) if closed and not lost and not self._fetched else ""
        what = "lost the" if lost else "cannot reach the"
        reason = unreached_reason(exc)
        return tls_refused(exc, self.label, self.transport) or ProviderUnavailableError(
            f"{what} {self.label}: {reason.rstrip('.') if hint else reason}{hint}"
        )

    def providers(self) -> list[ProviderInfo]:
        """The gateway's ``provider_info`` list, asked again each time (one ``GET``: a reloaded
        gateway's list, and a gateway that went away is said to be gone, not shown as it was); from
        the loop thread itself, the list last fetched."""
        if not self.loop.in_loop_thread:
            self.loop.run(self._fetch_providers(), timeout=self.open_timeout + 5)
        return list(self._providers)

    answers_queries = True
    """The gateway's ``POST /v1/gtl/query`` answers ``query`` frames (``usage``, ``breakers``, ``models``)."""

    async def _current(self) -> Any:
        """The HTTP backend is its own link: each session and each query is a request of its own."""
        if self._closed:
            raise ConfigurationError(f"this client is closed; connect to the {self.label} again")
        return self

    async def query(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask the gateway ``name`` (as ``ClientLink.query``), one ``POST /v1/gtl/query``."""
        import httpx

        body = encode(Query(query_id="q1", name=name, params=params or {}))
        try:
            response = await self._client().post(
                "/v1/gtl/query", content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code != 200:
            raise _failure(response.status_code, response.content, self.label, self.transport)
        answer = decode(response.content, max_bytes=DEFAULT_MAX_FRAME_BYTES)
        if not isinstance(answer, Answer):
            raise ProviderUnavailableError(f"the {self.label} answered the {name} query with {type(answer).__name__}")
        if answer.error is not None:
            raise error_from_event(answer.error)
        return answer.result or {}

    async def session(self, request: CompletionRequest, deliver: Deliver) -> None:
        sid = request.session_id
        ended = False

        def once(event: StreamEvent) -> None:
            nonlocal ended
            if not ended:
                ended = isinstance(event, (Done, Error))
                deliver(event)

        answered = asyncio.Event()  # the gateway's answer began: its status is known
        status: list[int] = []
        # the request runs in a task of its own, so a cancel of the caller does not cut it off before the
        # gateway's end is known (``_cancel``)
        exchange = asyncio.ensure_future(self._exchange(request, once, answered, status))
        try:
            await asyncio.shield(exchange)
        except asyncio.CancelledError:
            await self._cancel(sid, exchange, answered, status)
            once(Error(session_id=sid, code="CANCELLED", message="cancelled by the caller"))
            raise

    async def _cancel(
        self, sid: str, exchange: asyncio.Future[None], answered: asyncio.Event, status: list[int]
    ) -> None:
        """The caller cancelled: tell the gateway and hear its end, as the other transports do (a
        ``cancel``, then up to ``CANCEL_WAIT`` for the session's terminal event) — whatever the gateway
        recorded, the caller hears: the refusal that was on its way (a cap's ``OVERLOADED``, a
        ``RATE_LIMIT``), a ``done`` that crossed the cancel, or ``CANCELLED``.

        Over HTTP a session has no channel for a ``cancel``: closing its response is one. So the answer's
        status is waited for first (the gateway answers at once, a refusal or the stream's ``200``); a
        refusal is read to its end; a ``200`` stream gets the ``cancel`` query (the token that started the
        session needs no scope for it) and is read on until its end. A gateway that does not take the query
        (one from before that, to a token without ``session:write``) gets its response closed, which
        cancels the session there, and the caller hears ``CANCELLED``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT  # one wait in all (three in a row made a cancel take 9 s)

        def left() -> float:
            return max(0.0, deadline - loop.time())

        try:
            await asyncio.wait_for(_first_of(exchange, answered.wait()), left())
            if not exchange.done() and status and status[0] == 200:
                try:
                    await asyncio.wait_for(self.query("cancel", {"session_id": sid}), left())
                except InvalidRequestError:
                    # not running where the query went: ended already (its end is on its way, in a moment) —
                    # or running on another replica behind a proxy that spreads requests, which only closing
                    # its response reaches (waiting the whole CANCEL_WAIT let it generate, billed, for 3 s)
                    deadline = min(deadline, loop.time() + UNKNOWN_SESSION_GRACE)
            await asyncio.wait_for(asyncio.shield(exchange), left())
        except (asyncio.TimeoutError, GTLError):
            pass  # no end in time, or no cancel the gateway takes: closing the response cancels it
        except asyncio.CancelledError:  # cancelled again: stop waiting
            pass
        finally:
            if not exchange.done():
                exchange.cancel()  # leaving the request closes the response: the gateway cancels
            await asyncio.gather(exchange, return_exceptions=True)

    async def _exchange(
        self, request: CompletionRequest, once: Deliver, answered: asyncio.Event, status: list[int]
    ) -> None:
        """One ``POST`` of ``request``, its events delivered through ``once`` (which ends the session)."""
        import httpx

        sid = request.session_id
        path = "/v1/gtl/sse" if self.sse else "/v1/gtl"
        ended = False
        try:
            if self._closed:
                raise ConfigurationError(f"this client is closed; connect to the {self.label} again")
            if self.missing_extensions:  # an older gateway would drop the field and answer another request
                request = degraded(request, self.missing_extensions)  # (unless the field changes no answer)
                check_request(request, self.missing_extensions)
            body = encode(msgspec.structs.replace(request, stream=True))
            if len(body) > self._send_limit:  # refused here: the gateway would close mid-upload
                raise InvalidRequestError(
                    f"completion_request frame of {len(body)} bytes exceeds the maximum frame size of "
                    f"{self._send_limit} bytes"
                )
            headers = {"content-type": "application/json"}
            async with self._client().stream("POST", path, content=body, headers=headers) as response:
                status.append(response.status_code)
                answered.set()
                if response.status_code != 200:
                    raise _failure(response.status_code, await response.aread(), self.label, self.transport)
                # only this session's stream events, in a legal order, each frame within the limit
                reading = SessionStreamReader(sid)
                payloads = SseData(DEFAULT_MAX_FRAME_BYTES) if self.sse else None
                async for chunk in response.aiter_bytes():
                    try:
                        data = chunk if payloads is None else payloads.feed(chunk)
                    except ProtocolError as exc:
                        once(stream_fault(sid, exc))
                        return
                    events, violation = reading.feed(data)
                    for event in events:
                        once(event)
                    if violation is not None:
                        once(stream_fault(sid, violation))
                        return
                    if reading.ended:
                        ended = True
                        break
            if not ended:
                raise ProviderUnavailableError(f"the {self.label} ended the response before the session ended")
        except GTLError as exc:
            once(exc.to_event(sid))
        except httpx.HTTPError as exc:
            once(self._unreachable(exc, lost=True).to_event(sid))

    def describe(self) -> str:
        return f"remote {self.label} providers=[{', '.join(info.provider for info in self._providers)}]"

    async def aclose(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.aclose()


class SseData:
    """The ``data:`` payloads of a server-sent event stream, as NDJSON frames, fed a chunk at a time.

    A line longer than ``max_line`` (a frame's limit, plus the field name) is a ``ProtocolError``: the
    partial line is the only buffer, and it stays bounded."""

    def __init__(self, max_line: int) -> None:
        self._partial = bytearray()
        self._max_line = max_line + 64

    def feed(self, chunk: bytes) -> bytes:
        # the common small-chunk case appends, never re-copies the partial line (find: ``in`` on bytes
        # formats, then discards, a TypeError before it searches)
        if chunk.find(b"\n") < 0:
            self._partial += chunk
            self._check()
            return b""
        data = bytes(self._partial) + chunk if self._partial else chunk
        *lines, rest = data.split(b"\n")
        self._partial = bytearray(rest)
        self._check()
        return b"".join(line[5:].strip() + b"\n" for line in lines if line.startswith(b"data:"))

    def _check(self) -> None:
        if len(self._partial) > self._max_line:
            raise ProtocolError(f"a server-sent event line longer than {self._max_line} bytes")


def _check_versions(spoken: str | None, label: str) -> None:
    """``VersionMismatchError`` unless the gateway's ``GTL-Version`` (absent from a gateway older than the
    header: it spoke 1.0) names a version this client speaks."""
    if spoken is None:
        return
    try:
        negotiate_header(spoken)
    except VersionMismatchError:
        raise VersionMismatchError(
            f"the {label} speaks GTL {spoken[:200]}; this client speaks {header_value()}"
        ) from None


_SECURE_TWIN = {"http": "https", "sse": "sses"}


def _failure(status: int, body: bytes, label: str, transport: str = "") -> GTLError:
    """The error a refused request carries in its body, or one naming the status (for plain HTTP sent to
    a TLS port — nginx's, or the gateway's own TLS listener, answer it 400 "this port speaks TLS" — the
    scheme to use)."""
    try:
        event = decode(body)
    except ProtocolError:
        twin = _SECURE_TWIN.get(transport)
        if status == 400 and twin and b"speaks tls" in body[:2048].lower():
            return ProviderUnavailableError(
                f"the {label} answered HTTP 400: that port speaks TLS; connect with {twin}://"
            )
        return ProviderUnavailableError(f"the {label} answered HTTP {status}")
    if isinstance(event, Error):
        return error_from_event(event)
    return ProviderUnavailableError(f"the {label} answered HTTP {status}")


async def _no_dial() -> Any:
    raise ProviderUnavailableError("an HTTP gateway has no byte stream to dial")


def http_backend(
    endpoint: str, *, token: str | None = None, loop: LoopThread | None = None, verify: Any = True
) -> HttpBackend:
    """The backend of ``http://``, ``https://``, ``sse://`` or ``sses://HOST:PORT`` (an ``sse://`` gateway is
    served over http, ``sses://`` over https)."""
    scheme, address, compression = parse_endpoint(endpoint, SCHEMES)
    base = f"{'https' if scheme in _TLS else 'http'}://{address}"
    return HttpBackend(
        base, sse=scheme.startswith("sse"), token=token, loop=loop, verify=verify, compression=compression
    )


def http_endpoint(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    verify: object = True,
    loop: LoopThread | None = None,
) -> HttpBackend:
    """``transports.endpoints`` factory of ``http://``, ``sse://`` and ``sses://`` (sessions count to the token's
    principal)."""
    return http_backend(endpoint, token=token, loop=loop, verify=verify)
