"""The WebSocket client transport: ``connect("ws://HOST:PORT")`` or ``wss://``, many sessions over one socket.

The client offers the ``gtl.ndjson`` subprotocol: a gateway that accepts it may put several GTL frames,
newline-separated, in one text message (``transports.messages``); otherwise each message is one frame.
The socket is the gateway's ``/v1/gtl/ws``. The token travels in ``Authorization: Bearer`` and in
``hello``. Sessions, cancels and a lost gateway behave as over stdio, through ``RemoteBackend``; after
the socket drops, the next request opens a new one. A gateway stopped at once (a second SIGTERM) closes
the socket with 1012 after cancelling its sessions: they end ``CANCELLED``, as their ledger rows say,
not as a lost connection.

The client offers permessage-deflate (the gateway accepts it unless told not to); ``?compression=none``
on the URL does not offer it. ``wss://`` verifies the gateway's certificate as ``verify`` says
(``transports.endpoints.tls_context``); a refused certificate is a ``ConfigurationError`` saying so.
A client the program never closed is closed when the interpreter exits (``LoopThread.close_at_exit``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from gtl_nb.engine.loop import LoopThread
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES, decode, encode
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    GTLError,
    ProtocolError,
    ProviderUnavailableError,
    error_from_event,
)
from gtl_nb.protocol.messages import Error
from gtl_nb.transports.channel import Channel
from gtl_nb.transports.endpoints import parse_endpoint, tls_context, tls_hint, tls_refused
from gtl_nb.transports.messages import NDJSON_SUBPROTOCOL, MessageChannel
from gtl_nb.transports.remote import RemoteBackend
from gtl_nb.words import missing_package

__all__ = ["PATH", "SCHEMES", "ws_backend"]

PATH = "/v1/gtl/ws"
SCHEMES = ("ws", "wss")
SHUTDOWN_END = encode(
    Error(session_id="", code="CANCELLED", message="cancelled by the gateway shutting down (WebSocket close 1012)")
)
"""The connection-level ``error`` a socket closed with 1012 (service restart) reads as: each live session ends
``CANCELLED``, as the gateway recorded it, rather than as a lost connection."""


def ws_backend(
    endpoint: str, *, token: str | None = None, loop: LoopThread | None = None, verify: Any = True
) -> RemoteBackend:
    """A ``RemoteBackend`` whose connection is a WebSocket to ``ws://HOST:PORT`` or ``wss://HOST:PORT``."""
    scheme, address, compression = parse_endpoint(endpoint, SCHEMES)
    try:  # here, not at the first dial: a missing extra is said by connect(), with its install line
        import websockets.asyncio.client  # noqa: F401
    except ImportError as exc:
        said = missing_package(exc, f"the {scheme}:// transport", "gateway")
        if said is None:
            raise
        raise ConfigurationError(said) from None
    url = f"{scheme}://{address}{PATH}"
    label = f"{scheme} gateway ({url})"
    context = tls_context(verify) if scheme == "wss" else None
    reached = False  # an upgrade has succeeded once: a later failure is no TLS mix-up

    async def dial() -> Channel:
        nonlocal reached
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus, WebSocketException
        from websockets.frames import CloseCode

        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        options: dict[str, Any] = {"ssl": context} if context is not None else {}
        try:
            socket = await connect(
                url,
                additional_headers=headers,
                max_size=DEFAULT_MAX_FRAME_BYTES + 1024,
                compression="deflate" if compression else None,
                subprotocols=[NDJSON_SUBPROTOCOL],  # type: ignore[list-item]
                **options,
            )
        except InvalidStatus as exc:  # refused before the upgrade: the body is one GTL error
            raise _refusal(exc.response.status_code, exc.response.body, label) from None
        except OSError as exc:
            raise tls_refused(exc, label, scheme) or exc from None  # RemoteBackend reports the rest
        except WebSocketException as exc:
            # no valid HTTP answer to the first upgrade: most often a TLS listener reached with ws://
            hint = tls_hint(scheme) if isinstance(exc, InvalidMessage) and not reached else ""
            raise ProviderUnavailableError(f"the {label} did not accept a WebSocket: {exc}{hint}") from None
        reached = True

        told_shutdown = False

        async def recv() -> str | bytes | None:
            nonlocal told_shutdown
            try:
                return await socket.recv()
            except ConnectionClosed as exc:
                # the gateway's listener closes with 1012 when it is stopped at once: it has cancelled every
                # session of the socket (their rows say so), it just had no time to say it — say it here, once
                if exc.rcvd is None or exc.rcvd.code != CloseCode.SERVICE_RESTART or told_shutdown:
                    raise
                told_shutdown = True
                return SHUTDOWN_END

        async def close() -> None:
            try:
                await socket.close()  # the closing handshake: up to websockets' close_timeout
            except asyncio.CancelledError:  # given up on (a closing loop): the socket must not stay open
                socket.transport.abort()
                raise

        joins = socket.subprotocol == NDJSON_SUBPROTOCOL
        channel = MessageChannel(recv, socket.send, close, peer=address, joins_frames=joins)
        channel.extensions = tuple(str(extension.name) for extension in socket.protocol.extensions)
        return channel

    backend = RemoteBackend(dial, label=label, token=token, loop=loop)
    backend.transport = scheme  # type: ignore[attr-defined]
    # a program that ends without client.close() still closes the socket (its tasks would be left pending)
    backend.loop.close_at_exit(backend)
    return backend


def _refusal(status: int, body: bytes | None, label: str) -> GTLError:
    """The GTL error a refused upgrade carries (429 one connection too many, 503 shutting down, …)."""
    if status == 431:  # the head is too large for the WebSocket parser: only the token can make it so
        return AuthenticationError(f"the {label} refused the request head as too large (HTTP 431): the token is")
    try:
        event = decode(body or b"")
    except ProtocolError:
        hint = _tls_hint(status, body)
        return ProviderUnavailableError(f"the {label} refused the WebSocket with HTTP {status}{hint}")
    if isinstance(event, Error):
        return error_from_event(event)
    return ProviderUnavailableError(f"the {label} refused the WebSocket with HTTP {status}")


def _tls_hint(status: int, body: bytes | None) -> str:
    """A hint for plain ``ws://`` sent to a port that speaks TLS: nginx answers it 400 saying so (its HTML
    page, or the project's template's JSON "this port speaks TLS")."""
    said = (body or b"")[:2048].lower()
    if status == 400 and (b"https port" in said or b"speaks tls" in said):
        return ": that port speaks TLS; connect with wss://"
    return ""


def ws_endpoint(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    verify: object = True,
    loop: LoopThread | None = None,
) -> RemoteBackend:
    """``transports.endpoints`` factory of ``ws://`` and ``wss://`` (the gateway accounts sessions to its
    token's principal)."""
    return ws_backend(endpoint, token=token, loop=loop, verify=verify)
