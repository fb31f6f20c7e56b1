"""A scripted HTTP/2 server on loopback for the tests of ``engine.h2_transport``: h2c with prior
knowledge, or TLS with ALPN. Each request, once its body has arrived, is answered by the test's own
coroutine, which may misbehave on purpose (reset the stream, go away, drop the connection)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame


@dataclass
class Request:
    connection: ServerConnection
    stream_id: int
    headers: dict[bytes, bytes]
    body: bytes


Handler = Callable[[Request], Awaitable[None]]


@dataclass
class Stats:
    connections: int = 0
    active: int = 0
    most_active: int = 0
    requests: list[Request] = field(default_factory=list)
    client_resets: list[tuple[int, int]] = field(default_factory=list)  # (stream id, error code)


class ServerConnection(asyncio.Protocol):
    def __init__(self, handler: Handler, stats: Stats, max_streams: int, settings: dict[int, int]) -> None:
        self.handler = handler
        self.stats = stats
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.max_streams = max_streams
        self.settings = settings
        self.transport: asyncio.Transport | None = None
        self.bodies: dict[int, bytearray] = {}
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.window_opened = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.connections += 1
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams},
        )
        self.h2.initiate_connection()
        if self.settings:  # the others as a second SETTINGS frame (h2 applies them once the client acks)
            self.h2.update_settings(self.settings)
        self.h2.increment_flow_control_window(8 * 1024 * 1024)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.drop()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.heads[event.stream_id] = dict(event.headers)
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                request = Request(
                    self, event.stream_id, self.heads.pop(event.stream_id), bytes(self.bodies.pop(event.stream_id))
                )
                self.stats.requests.append(request)
                self.stats.active += 1
                self.stats.most_active = max(self.stats.most_active, self.stats.active)
                task = asyncio.get_running_loop().create_task(self._answer(request))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(event, h2.events.StreamReset):
                self.stats.client_resets.append((event.stream_id, event.error_code))
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_opened.set()
        self.flush()

    async def _answer(self, request: Request) -> None:
        try:
            await self.handler(request)
        except (h2.exceptions.StreamClosedError, ConnectionError):
            pass
        finally:
            self.stats.active -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for task in list(self.tasks):
            task.cancel()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- what a handler does

    def respond(
        self, request: Request, status: int = 200, headers: list[tuple[str, str]] = (), end: bool = False
    ) -> None:  # type: ignore[assignment]
        fields = [(b":status", str(status).encode())] + [(k.encode(), v.encode()) for k, v in headers]
        self.h2.send_headers(request.stream_id, fields, end_stream=end)
        self.flush()

    async def send(self, request: Request, payload: bytes, end: bool = False) -> None:
        """Send ``payload`` as the windows allow, waiting for the client to open them."""
        view = memoryview(payload)
        while True:
            if self.transport is None:
                raise ConnectionError("gone")
            size = min(self.h2.local_flow_control_window(request.stream_id), self.h2.max_outbound_frame_size, len(view))
            if size <= 0 and view:
                self.window_opened.clear()
                await self.window_opened.wait()
                continue
            self.h2.send_data(request.stream_id, bytes(view[:size]), end_stream=end and size == len(view))
            self.flush()
            view = view[size:]
            if not view:
                return

    def reset(self, request: Request, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        self.h2.reset_stream(request.stream_id, code)
        self.flush()

    def goaway(self, last_stream_id: int) -> None:
        """A graceful GOAWAY, written by hand: h2's ``close_connection`` would stop this side from
        finishing the streams it keeps."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        self.write_raw(frame.serialize())

    def write_raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class H2Server:
    """``handler`` answers each request; ``max_streams`` is the SETTINGS_MAX_CONCURRENT_STREAMS it sends."""

    def __init__(self, handler: Handler, *, max_streams: int = 1000, settings: dict[int, int] | None = None) -> None:
        self.handler = handler
        self.max_streams = max_streams
        self.settings = settings or {}
        self.stats = Stats()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections: list[ServerConnection] = []

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> H2Server:
        def make() -> ServerConnection:
            connection = ServerConnection(self.handler, self.stats, self.max_streams, self.settings)
            self.connections.append(connection)
            return connection

        self.server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/v1/chat/completions?x=1"

    async def close(self) -> None:
        for connection in self.connections:
            connection.drop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
