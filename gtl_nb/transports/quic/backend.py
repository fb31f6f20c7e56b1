"""``quic://HOST:PORT``: the ``RemoteBackend`` whose connection is a ``QuicLink`` (``transports.endpoints`` entry)."""

from __future__ import annotations

from gtl_nb.engine.loop import LoopThread
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.transports.endpoints import split_endpoint
from gtl_nb.transports.quic.client import QuicLink
from gtl_nb.transports.quic.config import client_configuration
from gtl_nb.transports.remote import RemoteBackend

__all__ = ["parse_address", "quic_backend", "quic_endpoint"]


def parse_address(endpoint: str) -> tuple[str, int]:
    """``quic://HOST:PORT`` (``[v6]:PORT`` for IPv6) -> ``(host, port)``; a ``ConfigurationError`` otherwise."""
    _, address = split_endpoint(endpoint, ("quic",))
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{endpoint!r} is not a QUIC gateway address (quic://HOST:PORT)")
    return host, int(port)


def quic_backend(
    endpoint: str, *, token: str | None = None, verify: object = True, loop: LoopThread | None = None
) -> RemoteBackend:
    """A ``RemoteBackend`` whose connection is a ``QuicLink`` to ``quic://HOST:PORT``."""
    host, port = parse_address(endpoint)
    client_configuration(host, verify)  # a bad ``verify`` fails here, in connect(), not at the first request
    label = f"quic gateway at {host}:{port}"

    async def open_link() -> QuicLink:
        return QuicLink(host, port, token=token, verify=verify, label=label)

    backend = RemoteBackend(open_link=open_link, label=label, token=token, loop=loop)
    backend.transport = "quic"  # type: ignore[attr-defined]  # Client.transport
    # a program that ends without client.close() still closes the connection (its ping task would be left
    # pending, its socket open)
    backend.loop.close_at_exit(backend)
    return backend


def quic_endpoint(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    verify: object = True,
    loop: LoopThread | None = None,
) -> RemoteBackend:
    """``transports.endpoints`` factory of ``quic://`` (the gateway accounts sessions to its token's principal)."""
    return quic_backend(endpoint, token=token, verify=verify, loop=loop)
