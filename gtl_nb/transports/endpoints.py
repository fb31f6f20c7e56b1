"""Which transport serves which URL scheme: ``gtl_nb.connect(endpoint)`` looks the scheme up here.

Every entry names a factory ``(endpoint, *, token, user, verify, loop) -> Backend`` in a module that is
imported only when its scheme is used (gRPC and QUIC need their extras). ``user`` matters to ``stdio``
only (it becomes the child gateway's principal); a network gateway accounts sessions to its token's
principal. ``verify`` is for the TLS schemes: ``True`` (the system's trust store), a CA file
(``gtl certs`` writes ``ca.pem``), or ``False`` (no verification; for a throw-away test only);
``tls_context(verify)`` turns it into the client's ``ssl.SSLContext``.

``https://HOST:PORT`` and a bare ``HOST:PORT`` go to discovery (``transports.discovery``; ``https://HOST:PORT/v1/gtl``
is the HTTP transport over TLS itself), which reads
the gateway's ``/.well-known/gtl`` and picks the best transport it offers. Every backend made here
carries ``transport``: the scheme its sessions travel over (``Client.transport``).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import install_extra

__all__ = [
    "TLS_SCHEMES",
    "Endpoint",
    "backend_for",
    "certificate_refused",
    "mistyped_scheme",
    "open_backend",
    "parse_endpoint",
    "schemes",
    "split_endpoint",
    "tls_context",
]


@dataclass(frozen=True)
class Endpoint:
    """One scheme's factory, by import path, and the extra that provides its library; ``opener``: a
    coroutine function that makes the backend and opens it (where making it already needs I/O), for
    ``open_backend``."""

    factory: str
    extra: str | None = None
    opener: str | None = None


_ENDPOINTS: dict[str, Endpoint] = {
    "stdio": Endpoint("gtl_nb.transports.stdio:stdio_endpoint"),
    "http": Endpoint("gtl_nb.transports.http:http_endpoint", "gateway"),
    "https": Endpoint(
        "gtl_nb.transports.discovery:discovery_endpoint", "gateway", "gtl_nb.transports.discovery:discover"
    ),
    "sse": Endpoint("gtl_nb.transports.http:http_endpoint", "gateway"),
    "sses": Endpoint("gtl_nb.transports.http:http_endpoint", "gateway"),
    "ws": Endpoint("gtl_nb.transports.ws:ws_endpoint", "gateway"),
    "wss": Endpoint("gtl_nb.transports.ws:ws_endpoint", "gateway"),
    "grpc": Endpoint("gtl_nb.transports.grpc.client:grpc_endpoint", "grpc"),
    "grpcs": Endpoint("gtl_nb.transports.grpc.client:grpc_endpoint", "grpc"),
    "quic": Endpoint("gtl_nb.transports.quic:quic_endpoint", "quic"),
}

_DISCOVERY = _ENDPOINTS["https"]
"""A bare ``HOST:PORT`` (no scheme)."""

TLS_SCHEMES = frozenset({"https", "sses", "wss", "grpcs", "quic"})
"""Schemes whose connection is always TLS (``verify=`` applies)."""


def tls_context(verify: Any) -> ssl.SSLContext:
    """The client's TLS context for ``verify``: ``True`` (the system's trust store), a CA file (PEM), ``False``
    (no verification at all) or an ``ssl.SSLContext`` of the caller's own."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        return ssl.create_default_context()
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, (str, os.PathLike)):
        try:
            return ssl.create_default_context(cafile=os.fspath(verify))
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigurationError(f"verify={os.fspath(verify)!r} is not a readable CA file (PEM): {why}") from None
    raise ConfigurationError(
        f"verify= takes True (the system's trust store), a CA file path or False, not {type(verify).__name__}"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def certificate_refused(exc: BaseException, label: str) -> ConfigurationError | None:
    """The error to raise when ``exc`` (or what caused it) is a refused server certificate, else ``None``."""
    for current in _chain(exc):
        if isinstance(current, ssl.SSLCertVerificationError):
            why = current.verify_message or current.reason or "certificate verify failed"
            advice = _CERTIFICATE_ADVICE.get(current.verify_code, _TRUST_AND_NAME)
            said = f"the {label} presented a certificate this client does not accept ({why})"
            return ConfigurationError(f"{said}: {advice}")
    return None


_TRUST_AND_NAME = (
    "pass verify= the CA file that signed it (`gtl certs` writes ca.pem), and connect by a name the certificate lists"
)
_TRUST = "pass verify= the CA file that signed it (`gtl certs` writes ca.pem)"
_NAME = "connect by a name the certificate lists (`gtl certs --name` adds one)"
_CERTIFICATE_ADVICE = {
    9: "it is not valid yet: check the clocks of this machine and the gateway's",  # X509_V_ERR_CERT_NOT_YET_VALID
    10: "the gateway needs a new one (`gtl certs DIR` makes a development pair)",  # X509_V_ERR_CERT_HAS_EXPIRED
    18: _TRUST,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: _TRUST,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: _TRUST,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: _TRUST,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    62: _NAME,  # X509_V_ERR_HOSTNAME_MISMATCH
    64: _NAME,  # X509_V_ERR_IP_ADDRESS_MISMATCH
}
"""What to do about a refused certificate, by OpenSSL's verify code; another code gets ``_TRUST_AND_NAME``."""


_TLS_TWIN = {"http": "https", "sse": "sses", "ws": "wss", "grpc": "grpcs"}
_PLAIN_TWIN = {tls: plain for plain, tls in _TLS_TWIN.items()}


def tls_refused(exc: BaseException, label: str, scheme: str) -> ConfigurationError | None:
    """The error to raise when ``exc`` is a TLS set-up mistake — a refused server certificate
    (``certificate_refused``), or a server that answered a TLS client in plain text (OpenSSL's "wrong
    version number": ``scheme`` asks for TLS of a plaintext port) — else ``None``."""
    refused = certificate_refused(exc, label)
    if refused is not None:
        return refused
    if not answered_in_plain_text(exc):
        return None
    plain = _PLAIN_TWIN.get(scheme.lower())
    instead = f"connect with {plain}://" if plain else "connect without TLS"
    return ConfigurationError(
        f"the {label} answered in plain text, not TLS (OpenSSL: wrong version number): that port serves "
        f"no TLS; {instead}, or to the port its TLS listener uses"
    )


def answered_in_plain_text(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is OpenSSL's "wrong version number": a TLS client answered
    in plain text, by a port that serves no TLS."""
    return any(
        isinstance(current, ssl.SSLError) and "WRONG_VERSION_NUMBER" in f"{current.reason} {current}".upper()
        for current in _chain(exc)
    )


def tls_hint(scheme: str) -> str:
    """What to add to the failure of a plaintext connection that the server closed without an answer —
    what a TLS listener does with plaintext: the scheme to use instead (``""`` for a TLS scheme). An
    HTTP/1.1 scheme also names ``grpc://``: a gRPC listener answers HTTP/1.1 with HTTP/2 frames, which
    the client reads as no answer either."""
    twin = _TLS_TWIN.get(scheme.lower())
    if not twin:
        return ""
    grpc = "; if it is the gateway's gRPC listener, with grpc://" if scheme.lower() != "grpc" else ""
    return f"; if that port serves TLS, connect with {twin}://{grpc}"


HTTP1_ANSWER_MARK = "http1.x server"
"""What gRPC's details say when a plaintext dial met an HTTP/1.1 server (the gateway's HTTP listener)."""


def http1_hint(details: str) -> str:
    """What to add to a gRPC dial that met an HTTP/1.1 server: the schemes of the HTTP listener."""
    if HTTP1_ANSWER_MARK not in details.lower():
        return ""
    return (
        ": that port answers HTTP/1.1, not gRPC: if it is the gateway's HTTP listener, connect with "
        "http://, sse:// or ws://"
    )


def schemes() -> tuple[str, ...]:
    """Every scheme ``connect`` accepts besides ``embedded``."""
    return tuple(_ENDPOINTS)


_CREDENTIALS_REFUSED = (
    "a gateway address carries no credentials (user:password@ is not used, and would be shown in errors); "
    "give the gateway's token with token= (the gtl command: $GTL_TOKEN)"
)
_QUERY_REFUSED = (
    "a gateway address's query takes compression=none alone; this one holds something else, not shown as it "
    "may be a token (gtl_nb never sends one in a URL): give the gateway's token with token= (the gtl command: "
    "$GTL_TOKEN)"
)
MAX_ADDRESS_CHARS = 2048
"""The longest gateway address taken: an error may quote the address, and none is longer."""


def unusable_address(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be a gateway address whatever its scheme, quoting none of it: longer than
    any address (``MAX_ADDRESS_CHARS``), or holding what may be a password — an ``@`` anywhere but in a
    ``stdio://`` path (``https://user:pa/ss@HOST``: a check of the authority alone stops at the ``/``,
    and the rest would be echoed by the error of whatever read it next), or a query with anything but
    ``compression=`` (``?token=…``: no part of it is quoted, since a bare ``?eyJ…`` is a token too)."""
    if len(endpoint) > MAX_ADDRESS_CHARS:
        return f"a gateway address is at most {MAX_ADDRESS_CHARS:,} characters; this one has {len(endpoint):,}"
    scheme, separator, _ = endpoint.partition("://")
    is_path = separator and scheme.lower() == "stdio"  # (a file's name may hold any character)
    if "@" in endpoint and not is_path:
        return _CREDENTIALS_REFUSED
    _, asks, query = endpoint.partition("?")
    if asks and not is_path:  # ?token=…, ?access_token=…, a bare ?eyJ…: quoted by the next error that read it
        for item in query.partition("#")[0].split("&"):
            if item and item.partition("=")[0] != "compression":
                return _QUERY_REFUSED
    return None


# a scheme name, then anything but "://" between it and the rest: http//HOST, http:/HOST, grpc:://HOST
_MALFORMED_SEPARATOR = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9]*)(?P<sep>:*/{0,2})(?P<rest>.*)", re.DOTALL)


def mistyped_scheme(endpoint: str) -> str | None:
    """Why ``endpoint`` is refused when it starts with a known scheme's name but mistypes the ``://``
    after it, naming the URL it was probably meant to be (``http//HOST:PORT`` -> ``http://HOST:PORT``);
    ``None`` for anything else."""
    match = _MALFORMED_SEPARATOR.fullmatch(endpoint.strip())
    if match is None or match["sep"] in ("", "://"):
        return None
    scheme, sep, rest = match["scheme"].lower(), match["sep"], match["rest"]
    if scheme not in ("embedded", *_ENDPOINTS):
        return None
    refused = unusable_address(endpoint)  # never echoed: too long, or what looks like a password
    if refused is not None:
        return refused
    said = _clipped(endpoint.strip())
    if scheme != "embedded" and not rest:
        return f"{said!r} is not a gateway address: a scheme is followed by :// and the gateway's HOST:PORT"
    if scheme == "stdio":  # its path: what followed the colon, slashes and all (stdio:/etc/x is /etc/x)
        path = sep.lstrip(":") + rest if ":" in sep else rest
        rest = "/" + path.lstrip("/") if path.startswith("/") else path
    meant = _clipped(f"{scheme}://{rest}")
    return f"{said!r} is not a gateway address: a scheme is followed by :// (did you mean {meant!r}?)"


def _clipped(text: str, keep: int = 80) -> str:
    """``text`` as an error quotes it: at most ``keep`` characters (it is the caller's, of any length)."""
    return text if len(text) <= keep else text[:keep] + "…"


def split_endpoint(endpoint: str, schemes_: tuple[str, ...] | None = None) -> tuple[str, str]:
    """``"grpc://127.0.0.1:7443/x?y"`` -> ``("grpc", "127.0.0.1:7443")``; a ``ConfigurationError`` for no host."""
    scheme, sep, rest = endpoint.partition("://")
    address = rest.split("/", 1)[0].split("?", 1)[0]
    if not sep or not address or (schemes_ is not None and scheme not in schemes_):
        wanted = " or ".join(f"{s}://HOST:PORT" for s in (schemes_ or (scheme,)))
        raise ConfigurationError(f"{endpoint!r} is not a gateway address ({wanted})")
    return scheme, address


def parse_endpoint(endpoint: str, schemes: tuple[str, ...]) -> tuple[str, str, bool]:
    """``(scheme, host:port, compression)`` of a gateway URL in one of ``schemes``; the one query option is
    ``compression=none`` (no gzip, no permessage-deflate)."""
    scheme, _, rest = endpoint.partition("://")
    location, _, query = rest.partition("?")
    address = location.split("/", 1)[0]
    if scheme not in schemes or not address:
        forms = " or ".join(f"{name}://HOST:PORT" for name in schemes)
        raise ConfigurationError(f"{endpoint!r} is not a gateway address ({forms})")
    compression = True
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key != "compression" or value not in ("none", "auto"):
            raise ConfigurationError(
                f"{endpoint!r}: the only query option is compression=none (responses uncompressed), not {item!r}"
            )
        compression = value != "none"
    return scheme, address, compression


def backend_for(
    endpoint: str, *, token: str | None = None, user: str | None = None, verify: Any = True, loop: Any = None
) -> Any:
    """The ``Backend`` of ``endpoint``'s scheme (raises ``ConfigurationError`` for an unknown one); a bare
    ``HOST:PORT`` goes to discovery."""
    scheme, entry = _entry_of(endpoint)
    backend = _imported(entry.factory, entry, scheme)(endpoint, token=token, user=user, verify=verify, loop=loop)
    return _named(backend, scheme)


async def open_backend(
    endpoint: str, *, token: str | None = None, user: str | None = None, verify: Any = True, loop: Any
) -> Any:
    """``backend_for``'s twin for a coroutine (``gtl_nb.aconnect``): the backend of ``endpoint`` on
    ``loop`` — which may be the very loop running this coroutine — and its connection opened (for
    discovery: the gateway read and the best transport chosen), all awaited here."""
    scheme, entry = _entry_of(endpoint)
    if entry.opener is not None:
        opener = _imported(entry.opener, entry, scheme)
        return _named(await opener(endpoint, token=token, user=user, verify=verify, loop=loop), scheme)
    backend = backend_for(endpoint, token=token, user=user, verify=verify, loop=loop)
    try:
        await backend.start()
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the start is the one to see
            await backend.aclose()
        raise
    return backend


def _entry_of(endpoint: str) -> tuple[str, Endpoint]:
    """``endpoint``'s scheme (``""`` for a bare ``HOST:PORT``) and its entry, or a ``ConfigurationError``."""
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
    unusable = unusable_address(endpoint)  # said without the address: too long, or a password in it
    if unusable is not None:
        raise ConfigurationError(unusable)
    if scheme not in ("stdio", "embedded"):
        _check_host(endpoint.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0], endpoint)
    entry = _ENDPOINTS.get(scheme) if scheme else _DISCOVERY
    if scheme == "https":
        path = _path_of(endpoint)
        if path == HTTP_ENDPOINT_PATH:  # the HTTP transport over TLS, asked for by its path
            return scheme, _ENDPOINTS["http"]
        if path not in ("", "/.well-known/gtl"):  # discovery would drop it without a word
            raise ConfigurationError(
                f"{endpoint!r}: https://HOST:PORT finds the best transport (discovery) and "
                f"https://HOST:PORT{HTTP_ENDPOINT_PATH} is the HTTP transport over TLS; another path means "
                "neither (server-sent events over TLS: sses://HOST:PORT, WebSocket: wss://HOST:PORT)"
            )
    if entry is None:
        mistyped = mistyped_scheme(endpoint)  # http:://HOST: "http:" is no scheme, "http" was meant
        if mistyped is not None:
            raise ConfigurationError(mistyped)
        raise ConfigurationError(_unknown_scheme(scheme, endpoint))
    return scheme, entry


HTTP_ENDPOINT_PATH = "/v1/gtl"
"""The gateway's one-POST-per-session path: ``https://HOST:PORT/v1/gtl`` is that transport over TLS, where
``https://HOST:PORT`` alone is discovery (which may choose another); ``http://`` is the transport either way."""


def _path_of(endpoint: str) -> str:
    """``endpoint``'s path without its trailing slashes (``""`` for none), query and fragment aside."""
    rest = endpoint.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0]
    return ("/" + rest.partition("/")[2]).rstrip("/")


def _check_host(authority: str, endpoint: str) -> None:
    """A ``ConfigurationError`` for a host no name lookup could take (a label over 63 characters, one
    empty, a character IDNA refuses), before a connection's resolver raises its codec's own error."""
    host = authority
    if host.startswith("["):  # an IPv6 literal: the resolver's to judge
        return
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        host.encode("idna")
    except UnicodeError:
        raise ConfigurationError(
            f"{_clipped(endpoint)!r}: {_clipped(host, 40)!r} is not a host name (a dot-separated label is empty "
            "or longer than 63 characters, or holds a character no host name may)"
        ) from None


def _unknown_scheme(scheme: str, endpoint: str) -> str:
    """Why ``endpoint``'s ``scheme`` is refused: the known ones, and for a mistyped one (``htp``,
    ``grcp``) the URL it was probably meant to be. The address is quoted, clipped, only when it holds no
    ``@`` (a password typed with a ``/`` in it gets past the authority's check)."""
    schemes = ("embedded", *_ENDPOINTS)
    known = ", ".join(f"{name}://" for name in schemes)
    shown = "" if "@" in endpoint else f" in {_clipped(endpoint)!r}"
    # only a word that can be a scheme (RFC 3986: a letter, then letters, digits, + - .) is compared,
    # and only a short one (difflib's work grows with its length)
    close: list[str] = []
    a_word = 0 < len(scheme) <= 16 and scheme.isascii() and scheme[0].isalpha()
    if a_word and all(char.isalnum() or char in "+-." for char in scheme):
        word = scheme.lower()  # (a known scheme is never its own correction: embedded:// reaches here)
        close = [name for name in difflib.get_close_matches(word, schemes, n=1, cutoff=0.6) if name != word]
    meant = ""
    if close:  # the whole URL corrected when the address may be quoted, else the scheme alone
        url = f"{close[0]}://" + (endpoint.split("://", 1)[1] if shown else "")
        meant = f" (did you mean {_clipped(url)!r}?)"
    return f"unknown endpoint scheme {_clipped(scheme, 16)!r}{shown}{meant}; known: {known}"


def _imported(path: str, entry: Endpoint, scheme: str) -> Any:
    """The function ``module:name`` of ``entry``, or a ``ConfigurationError`` naming the extra it needs."""
    module_name, _, function = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if entry.extra is None or (exc.name or "").startswith("gtl_nb"):  # our own bug, not a missing extra
            raise
        raise ConfigurationError(f"the {scheme}:// transport needs {exc.name}: {install_extra(entry.extra)}") from None
    return getattr(module, function)


def _named(backend: Any, scheme: str) -> Any:
    """``backend`` with ``transport`` set to ``scheme`` (a backend that names its transport itself
    keeps its name; discovery's says which one it chose)."""
    if scheme and getattr(backend, "transport", None) is None:
        with contextlib.suppress(AttributeError):
            backend.transport = scheme
    return backend
