"""The default ``HttpTransport``: one pooled ``httpx.AsyncClient`` per event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import httpx

from gtl_nb.engine.transport import ConnectFailed, ConnectionLost, ConnectTimeout, UnsendableRequest
from gtl_nb.providers.base import HttpRequest

__all__ = ["HttpxTransport"]


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = dict(response.headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():  # decoded: providers gzip JSON bodies
                yield chunk
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxTransport:
    """Pooled HTTP/1.1 over httpx; the pool is created lazily on the loop that uses it."""

    def __init__(self, *, max_connections: int | None = 100, max_keepalive_connections: int | None = 20) -> None:
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
        )
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            # a pool belongs to the loop that opened its connections (the engine's loop thread)
            self._client_loop = loop
            self._client = httpx.AsyncClient(
                limits=self._limits, timeout=httpx.Timeout(None), follow_redirects=False, trust_env=False
            )
        return self._client

    async def send(self, request: HttpRequest, *, connect_timeout: float | None) -> _HttpxResponse:
        client = self._get_client()
        try:
            built = client.build_request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.body,
                timeout=httpx.Timeout(None, connect=connect_timeout),
            )
        except (UnicodeError, ValueError, httpx.HTTPError, httpx.InvalidURL) as exc:
            raise UnsendableRequest(type(exc).__name__) from None
        try:
            response = await client.send(built, stream=True)
        except httpx.ConnectTimeout:
            raise ConnectTimeout(f"connect timeout ({connect_timeout} s)") from None
        except (httpx.LocalProtocolError, httpx.InvalidURL) as exc:  # an illegal header value: the message quotes it
            raise UnsendableRequest(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
