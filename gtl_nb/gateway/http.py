"""The gateway over HTTP: one session per request, on one TCP port (Starlette on uvicorn).

Endpoints (docs/gateway.md):

* ``POST /v1/gtl`` — the body is one ``completion_request``. ``stream: true`` answers with a chunked
  ``application/x-ndjson`` body of GTL frames, one per line, ending with the session's ``done`` or
  ``error``; ``stream: false`` answers with one JSON object ``{"session_id": ..., "events": [...]}``.
* ``POST /v1/gtl/sse`` — the same session as server-sent events (``event: <type>``, ``data: <frame>``).
* ``GET /v1/gtl/providers`` — the gateway's ``provider_info`` list as a JSON array.
* ``GET /healthz`` (the process answers), ``GET /readyz`` (the engine is built), ``GET /.well-known/gtl``
  (the transport URLs this listener offers and the protocol versions).

The token is ``Authorization: Bearer <token>``, checked by the same ``authenticate`` hook as stdio;
a refused token is ``401`` with an ``AUTH_FAILED`` error body. A body over ``max_frame_bytes`` is
``413``; a body that is not a ``completion_request`` is ``400``. Once a session runs, the status is
``200`` and the session's own ``error`` (a provider's ``AUTH_FAILED``, …) is its last event.

A client that disconnects mid-stream cancels the session: the engine closes the upstream response and
completes the ledger row as cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine, SessionEnd
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import decode, encode
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    FrameTooLargeError,
    GTLError,
    InvalidRequestError,
)
from gtl_nb.protocol.messages import CompletionRequest, Done, Error, StreamEvent
from gtl_nb.protocol.negotiation import SUPPORTED_VERSIONS

__all__ = ["bind", "build_app", "serve_http", "session_events"]

log = get_logger("gateway.http")
NDJSON = "application/x-ndjson"


async def session_events(
    engine: Engine, request: CompletionRequest, context: RequestContext
) -> AsyncIterator[StreamEvent]:
    """One session's events over ``engine.stream``, ending with exactly one ``done`` or ``error``.

    Closing or cancelling the iterator cancels the session (the ledger row says cancelled)."""
    recorded = SessionEnd()
    ended = False
    try:
        async with aclosing(engine.stream(request, context=context, ending=recorded)) as events:
            async for event in events:
                ended = isinstance(event, (Done, Error))
                yield event
    except Exception as exc:  # a bug must still end the session
        log.exception("session %s failed in the gateway", request.session_id)
        if not ended:
            yield Error(session_id=request.session_id, code="INTERNAL", message=f"{type(exc).__name__}: {exc}")


def _error_response(exc: GTLError, status: int, session_id: str = "") -> Any:
    from starlette.responses import Response

    return Response(encode(exc.to_event(session_id)), status_code=status, media_type="application/json")


class _SessionResponse:
    """An ASGI response that streams a session and cancels it when the client disconnects."""

    def __init__(self, events: AsyncIterator[StreamEvent], media_type: str, render: Callable[[StreamEvent], bytes]):
        self.events = events
        self.media_type = media_type
        self.render = render

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def pump() -> None:
            async with aclosing(self.events) as events:  # type: ignore[type-var]
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", self.media_type.encode()), (b"cache-control", b"no-store")],
                    }
                )
                async for event in events:
                    await send({"type": "http.response.body", "body": self.render(event), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watching):
                task.cancel()
            await asyncio.gather(pumping, watching, return_exceptions=True)
        if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
            log.info("client went away mid-stream: %s", pumping.exception())


def _ndjson(event: StreamEvent) -> bytes:
    return encode(event) + b"\n"


def _sse(event: StreamEvent) -> bytes:
    tag = str(event.__struct_config__.tag)
    return b"event: " + tag.encode() + b"\ndata: " + encode(event) + b"\n\n"


def build_app(engine: Engine, *, authenticate: Authenticate, max_body_bytes: int, base_url: Callable[[], str]) -> Any:
    """The Starlette application of one gateway listener."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    def context_of(request: Request) -> RequestContext:
        header = request.headers.get("authorization")
        token = header[7:].strip() if header and header[:7].lower() == "bearer " else None
        context = authenticate(token)
        peer = f"{request.client.host}:{request.client.port}" if request.client else None
        return dataclasses.replace(context, peer=peer)

    async def read_request(request: Request) -> CompletionRequest:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise FrameTooLargeError(f"the body of {length} bytes exceeds the maximum of {max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise FrameTooLargeError(f"the body exceeds the maximum of {max_body_bytes} bytes")
        message = decode(bytes(body), max_bytes=max_body_bytes)
        if not isinstance(message, CompletionRequest):
            raise InvalidRequestError(f"the body must be a completion_request, not {type(message).__name__}")
        return message

    async def completion(request: Request, *, sse: bool) -> Any:
        try:
            context = context_of(request)
        except AuthenticationError as exc:
            return _error_response(exc, 401)
        try:
            message = await read_request(request)
        except FrameTooLargeError as exc:
            return _error_response(InvalidRequestError(exc.message), 413)
        except GTLError as exc:
            return _error_response(InvalidRequestError(exc.message), 400)
        events = session_events(engine, message, context)
        if sse:
            return _SessionResponse(events, "text/event-stream", _sse)
        if message.stream:
            return _SessionResponse(events, NDJSON, _ndjson)
        collected: list[bytes] = []
        async with aclosing(events) as stream:  # type: ignore[type-var]
            async for event in stream:
                collected.append(encode(event))
        body = (
            b'{"session_id":' + msgspec.json.encode(message.session_id) + b',"events":[' + b",".join(collected) + b"]}"
        )
        return Response(body, media_type="application/json")

    async def post_gtl(request: Request) -> Any:
        return await completion(request, sse=False)

    async def post_sse(request: Request) -> Any:
        return await completion(request, sse=True)

    async def providers(request: Request) -> Any:
        try:
            context_of(request)
        except AuthenticationError as exc:
            return _error_response(exc, 401)
        return Response(msgspec.json.encode(engine.provider_info()), media_type="application/json")

    async def healthz(request: Request) -> Any:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Any:
        return JSONResponse({"status": "ready"})

    async def discovery(request: Request) -> Any:
        base = base_url()
        host = base.partition("://")[2]
        return JSONResponse(
            {
                "protocol": "gtl",
                "versions": list(SUPPORTED_VERSIONS),
                "transports": {
                    "http": f"{base}/v1/gtl",
                    "sse": f"{base}/v1/gtl/sse",
                    "ws": f"ws://{host}/v1/gtl/ws",
                },
                "client_endpoints": [f"http://{host}", f"sse://{host}", f"ws://{host}"],
            }
        )

    async def websocket(socket_: WebSocket) -> None:
        """``/v1/gtl/ws``: one GTL connection, many sessions; the header's token counts as hello's."""
        from gtl_nb.gateway.sessions import GatewayConnection
        from gtl_nb.protocol.connection import GTLConnection
        from gtl_nb.transports.framed import FramedConnection
        from gtl_nb.transports.messages import MessageChannel

        header = socket_.headers.get("authorization")
        bearer = header[7:].strip() if header and header[:7].lower() == "bearer " else None
        await socket_.accept()

        async def recv() -> str | bytes | None:
            message = await socket_.receive()
            if message["type"] == "websocket.disconnect":
                return None
            return message.get("text") if message.get("text") is not None else message.get("bytes")

        async def close() -> None:
            await socket_.close()

        peer = f"{socket_.client.host}:{socket_.client.port}" if socket_.client else None
        channel = MessageChannel(recv, socket_.send_text, close, peer=peer)
        framed = FramedConnection(GTLConnection("server", max_frame_bytes=max_body_bytes), channel)
        try:
            await GatewayConnection(
                engine, framed, authenticate=lambda token: authenticate(bearer if bearer is not None else token)
            ).run()
        finally:
            await channel.aclose()

    return Starlette(
        routes=[
            WebSocketRoute("/v1/gtl/ws", websocket),
            Route("/v1/gtl", post_gtl, methods=["POST"]),
            Route("/v1/gtl/sse", post_sse, methods=["POST"]),
            Route("/v1/gtl/providers", providers, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/.well-known/gtl", discovery, methods=["GET"]),
        ]
    )


def bind(host: str, port: int, *, insecure: bool = False) -> socket.socket:
    """The listening socket; a plaintext listener binds to loopback only unless ``insecure``."""
    if not insecure and host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigurationError(
            f"a plaintext listener binds to loopback only (127.0.0.1, ::1); add --insecure to listen on {host}"
        )
    return socket.create_server((host, port))


async def serve_http(
    engine: Engine,
    sock: socket.socket,
    *,
    authenticate: Authenticate,
    max_body_bytes: int,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``sock`` until cancelled; ``ready(base_url)`` is called once it accepts requests."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    app = build_app(engine, authenticate=authenticate, max_body_bytes=max_body_bytes, base_url=lambda: base)
    config = uvicorn.Config(app, http="h11", lifespan="off", log_config=None, access_log=False, ws="auto")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        if ready is not None:
            ready(base)  # the socket listens already: a request now waits in its backlog
        await asyncio.shield(serving)
    finally:
        if not serving.done():
            server.should_exit = True
            await asyncio.wait({serving}, timeout=5)
            serving.cancel()
