"""The WebSocket client transport: ``connect("ws://HOST:PORT")``, many sessions over one socket.

Each WebSocket text message is one GTL frame (``transports.messages``); the socket is the gateway's
``/v1/gtl/ws``. The token travels in ``Authorization: Bearer`` and in ``hello``. Sessions, cancels and
a lost gateway behave as over stdio, through ``RemoteBackend``; after the socket drops, the next request
opens a new one.
"""

from __future__ import annotations

from gtl_nb.engine.loop import LoopThread
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.transports.channel import Channel
from gtl_nb.transports.messages import MessageChannel
from gtl_nb.transports.remote import RemoteBackend

__all__ = ["PATH", "ws_backend"]

PATH = "/v1/gtl/ws"


def ws_backend(endpoint: str, *, token: str | None = None, loop: LoopThread | None = None) -> RemoteBackend:
    """A ``RemoteBackend`` whose connection is a WebSocket to ``ws://HOST:PORT``."""
    scheme, _, rest = endpoint.partition("://")
    address = rest.split("/", 1)[0].split("?", 1)[0]
    if scheme != "ws" or not address:
        raise ConfigurationError(f"{endpoint!r} is not a WebSocket endpoint (ws://HOST:PORT)")
    url = f"ws://{address}{PATH}"

    async def dial() -> Channel:
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        socket = await connect(url, additional_headers=headers, max_size=DEFAULT_MAX_FRAME_BYTES + 1024)

        async def recv() -> str | bytes | None:
            return await socket.recv()

        return MessageChannel(recv, socket.send, socket.close, peer=address)

    return RemoteBackend(dial, label=f"ws gateway ({url})", token=token, loop=loop)


def ws_endpoint(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    verify: object = True,
    loop: LoopThread | None = None,
) -> RemoteBackend:
    """``transports.endpoints`` factory of ``ws://`` (the gateway accounts sessions to its token's principal)."""
    return ws_backend(endpoint, token=token, loop=loop)
