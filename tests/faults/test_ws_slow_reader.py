"""A WebSocket client that never reads holds the gateway to a few MB, whatever the size of its events.

The gateway's WebSocket channel queues frames for its sender and makes sessions wait (``drain``) once
the queue is past a high-water mark. Counting messages, that mark lets a client that stops reading pin
64 frames — 16 MB of 256 KB tokens, or half a gigabyte of 8 MiB ones. Counted in bytes it is bounded.

An upstream of the test's own streams OpenAI chunks of 256 KB of text, without end; four sessions on
one non-reading socket pull from it. The gateway runs in this process (``in_process``), so the test
measures what it buffers for the socket: the frames its channel holds (written to it, not yet handed to
the WebSocket) plus its socket's transport write buffer. The operating system's socket buffers are not
the gateway's and are not counted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import socket
import string
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from gtl_nb.transports import messages
from tests.faults.conftest import SIM_KEY, gateway_file, in_process, token, wait_until

CHUNK_TEXT = 256 * 1024
"""Characters of text in each upstream chunk: each becomes one GTL token frame of about this size."""
SESSIONS = 4
FEW_MB = 4 * 1024 * 1024
"""What the gateway may hold for the socket: the mark, one frame per session beyond it, the transport's buffer."""


class EndlessUpstream(ThreadingHTTPServer):
    """``POST /v1/chat/completions``: an OpenAI stream of ``CHUNK_TEXT``-character chunks that never ends
    (each handler thread writes until the gateway closes the connection)."""

    daemon_threads = True

    def __init__(self) -> None:
        rng = random.Random(7)
        text = "".join(rng.choice(string.ascii_letters) for _ in range(CHUNK_TEXT))  # no word breaks: one token
        chunk = {
            "id": "chatcmpl-endless",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
        data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
        self.chunk = b"%x\r\n%s\r\n" % (len(data), data)
        self.stop = threading.Event()
        super().__init__(("127.0.0.1", 0), _EndlessHandler)


class _EndlessHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EndlessUpstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            while not self.server.stop.is_set():
                self.wfile.write(self.server.chunk)  # blocks while the gateway does not read
        except OSError:
            pass  # the gateway closed the connection: its session ended
        self.close_connection = True


class CountingChannel(messages.MessageChannel):
    """The gateway's WebSocket channel, counting the frame bytes written to it and handed to the socket."""

    made: list[CountingChannel] = []

    def __init__(
        self,
        recv: Callable[[], Awaitable[str | bytes | None]],
        send: Callable[[str], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
        *,
        peer: str | None = None,
        joins_frames: bool = False,
    ) -> None:
        self.written = 0
        self.handed = 0

        async def counted(text: str) -> None:
            await send(text)  # returns once the WebSocket wrote the message to its transport
            self.handed += len(text) - text.count("\n")  # (frames joined into one message: their bytes)

        super().__init__(recv, counted, close, peer=peer, joins_frames=joins_frames)
        CountingChannel.made.append(self)

    def write(self, data: bytes) -> None:
        self.written += len(data) - data.count(b"\n")  # the frames without their separators
        super().write(data)

    @property
    def held(self) -> int:
        """Frame bytes written to the channel and not yet handed to the WebSocket."""
        return self.written - self.handed


@pytest.fixture
def upstream() -> Iterator[EndlessUpstream]:
    server = EndlessUpstream()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def _transport_bytes(port: int) -> int:
    """The write buffers of the gateway's asyncio transports on its listening port (its clients' sockets)."""
    total = 0
    for thing in gc.get_objects():
        try:
            if not isinstance(thing, asyncio.WriteTransport) or thing.is_closing():
                continue
        except ReferenceError:  # a weak proxy whose object is gone
            continue
        sockname = thing.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2 and sockname[1] == port:
            total += thing.get_write_buffer_size()
    return total


def test_a_websocket_client_that_never_reads_holds_only_a_few_mb(
    tmp_path: Path, upstream: EndlessUpstream, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(messages, "MessageChannel", CountingChannel)
    monkeypatch.setattr(CountingChannel, "made", [])
    base_url = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
    tables = {"providers.endless": {"type": "openai", "api_key": SIM_KEY, "base_url": base_url}}
    with in_process(gateway_file(tmp_path, tables)) as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        url = gateway.url.replace("http://", "ws://") + "/v1/gtl/ws"
        headers = {"authorization": f"Bearer {token()}"}
        # compression off: the frames cost on the wire what they cost in the gateway; max_queue=1: the
        # client's own reader stops after one message, so the socket fills and the gateway must hold back
        with ws_connect(
            url, additional_headers=headers, compression=None, max_queue=1, max_size=None, close_timeout=1
        ) as socket_:
            socket_.send(json.dumps({"type": "hello", "versions": ["1.0"]}))
            for i in range(SESSIONS):
                request = {
                    "type": "completion_request",
                    "session_id": f"unread-{i}",
                    "model": "endless:gpt-4o-mini",
                    "messages": [{"role": "user", "content": "Say a lot."}],
                }
                socket_.send(json.dumps(request))
            [channel] = wait_until(
                lambda: CountingChannel.made, timeout=10, what="the gateway's channel for the socket"
            )

            def held() -> int:
                return channel.held + asyncio.run_coroutine_threadsafe(
                    _on_loop(_transport_bytes, port), gateway.loop
                ).result(10)

            samples = _until_steady(held)
            socket_.socket.shutdown(socket.SHUT_RDWR)  # leave at once: no closing handshake the gateway must read
            assert channel.written > 4 * CHUNK_TEXT, "the sessions never streamed"
            assert samples[-1] <= FEW_MB, (
                f"the gateway holds {samples[-1] / 2**20:.1f} MiB for a client that does not read "
                f"({channel.held / 2**20:.1f} MiB of frames queued; samples {[round(s / 2**20, 1) for s in samples]})"
            )


async def _on_loop(function: Callable[[int], int], argument: int) -> int:
    """Run ``function`` on the gateway's loop, so its transports are not written while they are read."""
    return function(argument)


def _until_steady(
    measure: Callable[[], int], *, every: float = 0.25, steady: int = 6, timeout: float = 30.0
) -> list[int]:
    """Sample ``measure`` until it stops changing (``steady`` equal samples in a row) or ``timeout`` passes."""
    samples = [measure()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (len(samples) >= steady and len(set(samples[-steady:])) == 1):
        time.sleep(every)
        samples.append(measure())
    return samples
