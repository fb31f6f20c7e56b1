"""Discovery: ``connect("https://HOST:PORT")`` and ``connect("HOST:PORT")`` find the best transport a gateway offers.

1. **The document.** The client reads ``GET /.well-known/gtl`` (docs/gateway.md): the transports the
   gateway offers, each with the URL ``connect`` takes, and the protocol versions. ``https://`` reads
   it over TLS (``verify=`` applies). A bare ``HOST:PORT`` tries ``https://`` first and then plain
   ``http://`` only when HOST is a loopback address or ``localhost``: a plaintext gateway listens on
   loopback only, and a client never falls back to plaintext across a network. A refused certificate
   stops there (the server does speak TLS; a plaintext retry would not help).
2. **The choice.** The offered transports are tried in the spec's order — QUIC, gRPC, WebSocket,
   SSE, HTTP — each try being the backend's ``start()`` (for the connection-based ones: hello and the
   provider list), at most ``TRY_TIMEOUT`` seconds each and ``BUDGET`` seconds in all, the document
   included. The first that works is used. One whose module or extra is missing, that cannot connect
   or that times out is skipped; a refused token (``AUTH_FAILED``) ends discovery at once, since every
   transport would refuse it. When none works, the error names each try and why it failed.
3. **The result** is the chosen transport's own backend, started; ``Client.transport`` says which
   (``"quic"``, ``"wss"``, …). It behaves exactly as when connected to that URL directly: a dropped
   connection is reopened by the next request (discovery is not repeated).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from typing import Any

import msgspec

from gtl_nb.engine.loop import LoopThread, shared_loop
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import (
    ConfigurationError,
    GTLError,
    ProviderUnavailableError,
    RequestError,
    VersionMismatchError,
)
from gtl_nb.protocol.negotiation import SUPPORTED_VERSIONS
from gtl_nb.transports.endpoints import (
    answered_in_plain_text,
    backend_for,
    certificate_refused,
    parse_endpoint,
    tls_context,
)
from gtl_nb.transports.unreached import NOTHING_LISTENS, unreached_reason

__all__ = [
    "BUDGET",
    "ORDER",
    "TRY_TIMEOUT",
    "choose",
    "discover",
    "discovery_endpoint",
    "document_urls",
    "is_host_port",
    "read_document",
]

log = get_logger("transports.discovery")

ORDER = ("quic", "grpc", "ws", "sse", "http")
"""The spec's order of preference."""
BUDGET = 5.0
"""Seconds discovery may take in all: the document and every try."""
TRY_TIMEOUT = 2.0
"""Seconds one transport's ``start()`` may take (a QUIC packet into a firewall gets no answer at all)."""
MAX_DOCUMENT_BYTES = 64 * 1024
WELL_KNOWN = "/.well-known/gtl"


class Document(msgspec.Struct, frozen=True):
    """The part of ``/.well-known/gtl`` a client reads (other fields are ignored)."""

    protocol: str
    versions: list[str] = []
    transports: dict[str, str] = {}


def split_host_port(text: str) -> tuple[str, int] | None:
    """``("host", port)`` of ``"host:port"`` or ``"[::1]:port"``; ``None`` for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host, int(port)
    if any(ch in host for ch in ":/?#@[] \t\r\n\\"):
        return None
    return host, int(port)


def is_host_port(text: str) -> bool:
    """Whether ``text`` is a bare ``HOST:PORT`` (what ``connect`` sends to discovery)."""
    return split_host_port(text) is not None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def document_urls(endpoint: str) -> list[str]:
    """Where to look for the document: ``https://HOST:PORT`` as given; for a bare ``HOST:PORT``, https and
    then, for a loopback HOST only, plain http."""
    if "://" in endpoint:
        _, address, _ = parse_endpoint(endpoint, ("https",))
        return [f"https://{address}"]
    parsed = split_host_port(endpoint)
    if parsed is None:
        raise ConfigurationError(f"{endpoint!r} is not HOST:PORT")
    return [f"https://{endpoint}"] + ([f"http://{endpoint}"] if _is_loopback(parsed[0]) else [])


async def read_document(base_url: str, *, verify: Any = True, timeout: float = BUDGET) -> Document:
    """The gateway's discovery document at ``base_url``."""
    import httpx

    options: dict[str, Any] = {"verify": tls_context(verify)} if base_url.startswith("https:") else {}
    label = f"gateway at {base_url}"
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, **options) as http,
            http.stream("GET", base_url + WELL_KNOWN) as got,
        ):
            if got.status_code != 200:
                raise ProviderUnavailableError(f"the {label} answered {WELL_KNOWN} with HTTP {got.status_code}")
            body = bytearray()
            async for chunk in got.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ProviderUnavailableError(f"the {label} sent a {WELL_KNOWN} over {MAX_DOCUMENT_BYTES} bytes")
    except httpx.HTTPError as exc:
        # (a port that answers TLS in plain text is not refused here: discovery may go on to plain HTTP)
        hint = "; that port serves no TLS: connect with http://" if answered_in_plain_text(exc) else ""
        if isinstance(exc, httpx.RemoteProtocolError) and base_url.startswith("http:"):
            # an answer that is no HTTP/1.1: a gRPC listener's HTTP/2 frames
            hint = "; that port does not answer HTTP/1.1: if it is the gateway's gRPC listener, connect with grpc://"
        raise certificate_refused(exc, label) or ProviderUnavailableError(
            f"cannot reach the {label}: {unreached_reason(exc)}{hint}"
        ) from None
    try:
        document = msgspec.json.decode(bytes(body), type=Document)
    except msgspec.DecodeError as exc:
        raise ProviderUnavailableError(f"the {label} sent a {WELL_KNOWN} that is not a GTL document: {exc}") from None
    if document.protocol != "gtl":
        raise ProviderUnavailableError(f"the {label} describes protocol {document.protocol!r}, not gtl")
    if document.versions and not set(document.versions) & set(SUPPORTED_VERSIONS):
        raise VersionMismatchError(
            f"the {label} speaks GTL {', '.join(document.versions)}; this client speaks {', '.join(SUPPORTED_VERSIONS)}"
        )
    return document


OFFER_SCHEMES: dict[str, tuple[str, ...]] = {
    "quic": ("quic",),
    "grpc": ("grpc", "grpcs"),
    "ws": ("ws", "wss"),
    "sse": ("sse", "sses"),
    "http": ("http", "https"),
}
"""The schemes an offer of each transport may name: network schemes only — never ``stdio://``, whose
URL is a command the client would run."""
_TLS = frozenset({"quic", "grpcs", "wss", "sses", "https"})


def offered_urls(document: Document, base_url: str | None = None) -> list[tuple[str, str]]:
    """``(transport, url)`` of every offer this client knows and trusts, in ``ORDER``.

    A document is the gateway's word about itself, so an offer must point back at the same host, with a
    scheme of its transport; a document read over TLS offers TLS only (a plaintext offer would hand the
    token to whoever sits on the path). Anything else is skipped (and logged)."""
    offers = []
    host = _host_of(base_url) if base_url else None
    secure = base_url is not None and base_url.startswith("https:")
    for name in ORDER:
        url = document.transports.get(name)
        if url is None:
            continue
        scheme = url.partition("://")[0].lower()
        trusted = scheme in OFFER_SCHEMES[name] and (host is None or _host_of(url) == host)
        if not trusted or (secure and scheme not in _TLS):
            kind = "TLS " if secure else ""
            log.warning("discovery: skipped the %s offer %r: not a %sURL of %s", name, url, kind, host)
            continue
        offers.append((name, url))
    return offers


def _host_of(url: str) -> str:
    """The host of ``scheme://host:port/...``, lower-case, without brackets."""
    authority = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    if authority.startswith("["):  # an IPv6 literal
        return authority[1:].split("]", 1)[0].lower()
    return authority.split(":", 1)[0].lower()


async def _start(name: str, url: str, *, token: str | None, user: str | None, verify: Any, loop: LoopThread) -> Any:
    """One try: the transport's backend, started (closed again when the start fails)."""
    if name == "http":  # https:// is discovery's own scheme: the plain-HTTP transport is made directly
        from gtl_nb.transports.http import http_backend

        backend = http_backend(url, token=token, loop=loop, verify=verify)
    else:
        backend = backend_for(url, token=token, user=user, verify=verify, loop=loop)
    try:
        await backend.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await backend.aclose()
        raise
    return backend


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ImportError):
        return f"not available here ({exc.name or exc})"
    if isinstance(exc, GTLError):
        return exc.message or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


async def choose(
    offers: list[tuple[str, str]],
    *,
    token: str | None = None,
    user: str | None = None,
    verify: Any = True,
    loop: LoopThread | None = None,
    deadline: float | None = None,
    try_timeout: float = TRY_TIMEOUT,
    where: str = "the gateway",
) -> Any:
    """The first of ``offers`` (``(transport, url)``, best first) whose backend starts before ``deadline``
    (``time.monotonic()``); see the module docstring for what is skipped and what stops the search."""
    loop = loop or shared_loop()
    deadline = time.monotonic() + BUDGET if deadline is None else deadline
    failures: list[str] = []
    for index, (name, url) in enumerate(offers):
        left = deadline - time.monotonic()
        if left <= 0:
            failures.append("not tried for lack of time: " + ", ".join(u for _, u in offers[index:]))
            break
        timeout = min(try_timeout, left)
        try:
            backend = await asyncio.wait_for(
                _start(name, url, token=token, user=user, verify=verify, loop=loop), timeout
            )
        except RequestError:
            raise  # the token (or the request itself) is refused: every other transport would refuse it too
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("discovery: %s did not work: %s", url, _why(exc, timeout))
            failures.append(f"{url}: {_why(exc, timeout)}")
            continue
        log.info("discovery: using %s", url)
        return backend
    tried = "; ".join(failures) or "it offers no transport this client knows"
    raise ProviderUnavailableError(f"no transport of {where} worked: {tried}")


async def discover(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    verify: Any = True,
    loop: LoopThread | None = None,
    budget: float = BUDGET,
    try_timeout: float = TRY_TIMEOUT,
) -> Any:
    """The started backend of the best transport the gateway at ``endpoint`` (``https://HOST:PORT`` or a bare
    ``HOST:PORT``) offers."""
    deadline = time.monotonic() + budget
    bases = document_urls(endpoint)
    failures: list[str] = []
    for base in bases:
        try:
            document = await read_document(base, verify=verify, timeout=max(0.1, deadline - time.monotonic()))
        except (ConfigurationError, VersionMismatchError):
            raise  # a refused certificate or a version this client cannot speak: no other form would help
        except GTLError as exc:
            failures.append(exc.message if base in exc.message else f"{base}: {exc.message}")  # the URL once
            continue
        return await choose(
            offered_urls(document, base),
            token=token,
            user=user,
            verify=verify,
            loop=loop,
            deadline=deadline,
            try_timeout=try_timeout,
            where=f"the gateway at {base}",
        )
    if failures and all(failure.endswith(NOTHING_LISTENS) for failure in failures):  # said once, not per form
        raise ProviderUnavailableError(f"found no GTL gateway at {endpoint}: {NOTHING_LISTENS}")
    said = "; ".join(failures)
    where = "" if endpoint in said else f" at {endpoint}"
    raise ProviderUnavailableError(f"found no GTL gateway{where}: {said}")


def discovery_endpoint(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    verify: Any = True,
    loop: LoopThread | None = None,
) -> Any:
    """``transports.endpoints`` factory of ``https://`` and of a bare ``HOST:PORT``: discovers, then returns the
    chosen transport's backend, already started."""
    loop = loop or shared_loop()
    return loop.run(discover(endpoint, token=token, user=user, verify=verify, loop=loop), timeout=BUDGET + 5)
