"""Which transport serves which URL scheme: ``gtl_nb.connect(endpoint)`` looks the scheme up here.

Every entry names a factory ``(endpoint, *, token, user, verify, loop) -> Backend`` in a module that is
imported only when its scheme is used (gRPC and QUIC need their extras). ``user`` matters to ``stdio``
only (it becomes the child gateway's principal); a network gateway accounts sessions to its token's
principal. ``verify`` is for the TLS schemes: ``True`` (the system's trust store), a CA file
(``gtl certs`` writes ``ca.pem``), or ``False`` (no verification; for a throw-away test only).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["TLS_SCHEMES", "Endpoint", "backend_for", "schemes", "split_endpoint"]


@dataclass(frozen=True)
class Endpoint:
    """One scheme's factory, by import path, and the extra that provides its library."""

    factory: str
    extra: str | None = None


_ENDPOINTS: dict[str, Endpoint] = {
    "stdio": Endpoint("gtl_nb.transports.stdio:stdio_endpoint"),
    "http": Endpoint("gtl_nb.transports.http:http_endpoint", "gateway"),
    "https": Endpoint("gtl_nb.transports.http:http_endpoint", "gateway"),
    "sse": Endpoint("gtl_nb.transports.http:http_endpoint", "gateway"),
    "sses": Endpoint("gtl_nb.transports.http:http_endpoint", "gateway"),
    "ws": Endpoint("gtl_nb.transports.ws:ws_endpoint", "gateway"),
    "wss": Endpoint("gtl_nb.transports.ws:ws_endpoint", "gateway"),
    "grpc": Endpoint("gtl_nb.transports.grpc.client:grpc_endpoint", "grpc"),
    "grpcs": Endpoint("gtl_nb.transports.grpc.client:grpc_endpoint", "grpc"),
    "quic": Endpoint("gtl_nb.transports.quic:quic_endpoint", "quic"),
}

TLS_SCHEMES = frozenset({"https", "sses", "wss", "grpcs", "quic"})
"""Schemes whose connection is always TLS (``verify=`` applies)."""


def schemes() -> tuple[str, ...]:
    """Every scheme ``connect`` accepts besides ``embedded``."""
    return tuple(_ENDPOINTS)


def split_endpoint(endpoint: str, schemes_: tuple[str, ...] | None = None) -> tuple[str, str]:
    """``"grpc://127.0.0.1:7443/x?y"`` -> ``("grpc", "127.0.0.1:7443")``; a ``ConfigurationError`` for no host."""
    scheme, sep, rest = endpoint.partition("://")
    address = rest.split("/", 1)[0].split("?", 1)[0]
    if not sep or not address or (schemes_ is not None and scheme not in schemes_):
        wanted = " or ".join(f"{s}://HOST:PORT" for s in (schemes_ or (scheme,)))
        raise ConfigurationError(f"{endpoint!r} is not a gateway address ({wanted})")
    return scheme, address


def backend_for(
    endpoint: str, *, token: str | None = None, user: str | None = None, verify: Any = True, loop: Any = None
) -> Any:
    """The ``Backend`` of ``endpoint``'s scheme (raises ``ConfigurationError`` for an unknown one)."""
    scheme = endpoint.split("://", 1)[0]
    entry = _ENDPOINTS.get(scheme)
    if entry is None:
        known = ", ".join(f"{name}://" for name in ("embedded", *_ENDPOINTS))
        raise ConfigurationError(f"unknown endpoint scheme {scheme!r} in {endpoint!r} (known: {known})")
    module_name, _, function = entry.factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if entry.extra is None or (exc.name or "").startswith("gtl_nb"):  # our own bug, not a missing extra
            raise
        raise ConfigurationError(
            f"the {scheme}:// transport needs {exc.name}: pip install 'gtl_nb[{entry.extra}]'"
        ) from None
    return getattr(module, function)(endpoint, token=token, user=user, verify=verify, loop=loop)
