"""``gateway.offload`` on the connection transports: a frame that completes more than ``OFF_LOOP_BYTES``
is decoded in a worker thread on WebSocket, gRPC, stdio and QUIC (a smaller one on the loop), a later
frame of the same connection (or QUIC stream) never overtakes it, and a bad frame gives the same events
wherever it was decoded."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import pytest

from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway import offload, quic
from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.offload import OFF_LOOP_BYTES, InTurn, OffloadedFrames
from gtl_nb.gateway.sessions import GatewayConnection
from gtl_nb.gateway.stdio import serve_stdio
from gtl_nb.protocol import messages as m
from gtl_nb.protocol.codec import decode, encode
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.protocol.connection_events import ProtocolViolation
from gtl_nb.transports.framed import FramedConnection
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc.mapping import from_proto, to_frame
from gtl_nb.transports.grpc.stream import SESSION_METHOD
from gtl_nb.transports.quic.wire import frame as quic_frame
from tests.gateway.conftest import write_toml
from tests.gateway.test_grpc import grpc_gateway
from tests.gateway.test_http import gateway as http_gateway
from tests.gateway.test_quic import Collector, open_raw, quic_gateway, raw_peer

MODEL = "local:echo"
MANY = 10_000  # one-letter messages: a ~300 KB frame, over OFF_LOOP_BYTES
SLOW = 0.3


def request(session_id: str, count: int = 1) -> m.CompletionRequest:
    return m.CompletionRequest(
        session_id=session_id, model=MODEL, messages=[m.Message(role="user", content="x")] * count
    )


def line(message: Any) -> bytes:
    return encode(message) + b"\n"


@pytest.fixture(scope="module")
def echo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("offload-frames")
    return write_toml(directory / "gtl.toml", {"providers.local": {"type": "echo"}, "ledger": {"enabled": False}})


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of what the gateway runs in a worker thread (``offload._in_worker``, recorded), each handed
    over ``SLOW`` seconds late: a frame behind it arrives meanwhile, and must still wait its turn."""
    names: list[str] = []
    in_worker = offload._in_worker

    async def recording(function: Any, *args: Any) -> Any:
        names.append(getattr(function, "__name__", None) or function.func.__name__)
        await asyncio.sleep(SLOW)
        return await in_worker(function, *args)

    monkeypatch.setattr(offload, "_in_worker", recording)
    return names


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sessions the gateway started, in the order it took their requests (every transport)."""
    order: list[str] = []
    start, quic_start = GatewayConnection._start, quic._Connection.start

    def recording(self: Any, request: m.CompletionRequest) -> Any:
        order.append(request.session_id)
        return start(self, request)

    def quic_recording(self: Any, session: Any, request: m.CompletionRequest) -> None:
        order.append(request.session_id)
        quic_start(self, session, request)

    monkeypatch.setattr(GatewayConnection, "_start", recording)
    monkeypatch.setattr(quic._Connection, "start", quic_recording)
    return order


def test_a_read_completing_a_large_frame_is_decoded_in_a_worker_with_the_same_events():
    """Against ``FramedConnection`` (every frame decoded on the loop): the same events in the same order —
    a large bad frame ending its session with the same error, the small frames after it behind it —
    whether the bytes come as one read per frame (WebSocket, gRPC) or in 64 KiB pieces (stdio)."""
    bad = request("bad", MANY)
    broken = encode(bad).replace(b'"role":"user"', b'"role":"nobody"', 1) + b"\n"  # a large bad frame
    stream = [
        line(m.Hello(versions=["1.0"])),
        broken,
        line(request("big", MANY)),
        line(request("small")),
        line(m.Cancel(session_id="big")),
    ]
    assert len(broken) > OFF_LOOP_BYTES

    def pieces(data: bytes, size: int) -> list[bytes]:
        return [data[at : at + size] for at in range(0, len(data), size)]

    class Reads:
        def __init__(self, reads: list[bytes]) -> None:
            self.reads = [*reads, b""]
            self.peer = "test"

        async def read(self) -> bytes:
            return self.reads.pop(0)

        def write(self, data: bytes) -> None:
            pass

        async def drain(self) -> None:
            pass

    async def events(kind: type[FramedConnection], reads: list[bytes]) -> tuple[list[str], set[str]]:
        threads: set[str] = set()
        connection = GTLConnection("server")
        feed = connection.reader.feed

        def noted(data: bytes) -> Any:
            threads.add(threading.current_thread().name)
            return feed(data)

        connection.reader.feed = noted  # type: ignore[method-assign]
        seen = []
        async for event in kind(connection, Reads(reads)).events():  # type: ignore[arg-type]
            if isinstance(event, ProtocolViolation):
                seen.append(f"violation {event.session_id} {event.error.message}")
            else:
                seen.append(repr(event))
        return seen, threads

    for reads in (stream, pieces(b"".join(stream), 64 * 1024)):
        on_loop, loop_threads = asyncio.run(events(FramedConnection, reads))
        offloaded, threads = asyncio.run(events(OffloadedFrames, reads))
        assert offloaded == on_loop
        assert any("violation bad" in seen and "nobody" in seen for seen in offloaded)
        assert loop_threads == {"MainThread"}
        assert any(name.startswith("gtl-convert") for name in threads) and "MainThread" in threads


def test_a_streams_reads_and_calls_wait_for_a_read_in_a_worker():
    """``InTurn`` (QUIC's streams): a read completing a large frame goes to a worker; the reads and the calls
    (a reset, a stop) taken meanwhile run after it, in order; a small read alone runs at once, on the loop."""

    large, small = b"x" * OFF_LOOP_BYTES + b"\n", b"{}\n"

    async def main() -> tuple[list[Any], str]:
        done: list[Any] = []
        where: list[str] = []

        def read(data: bytes, end: bool) -> int:
            where.append(threading.current_thread().name)
            return len(data)

        reads = InTurn(read, done.append, lambda: 0, name="test", most_waiting=1 << 20, failed=failures.append)
        reads.take(small, False)
        assert done == [len(small)] and not reads.busy
        reads.take(large, False)
        reads.take(small, True)
        reads.later(lambda: done.append("reset"))
        assert reads.busy and done == [len(small)]
        while reads.busy:
            await asyncio.sleep(0.01)
        reads.later(lambda: done.append("at once"))
        return done, where[1]

    failures: list[Any] = []
    done, large_thread = asyncio.run(main())
    assert done == [len(small), len(large), len(small), "reset", "at once"]
    assert large_thread.startswith("gtl-convert") and failures == []


def test_what_waits_behind_a_read_in_a_worker_is_bounded_and_a_failing_read_is_said():
    """A stream's transport does not see what waits here (QUIC's windows grow with what arrives): past
    ``most_waiting`` bytes the reads stop and ``failed`` hears OVERLOADED; a read that raises in the
    worker is ``failed``'s INTERNAL, as a callback raising on the loop ends the connection — not a
    stream left without an answer."""
    large = b"x" * OFF_LOOP_BYTES + b"\n"

    async def flooded() -> tuple[list[Any], list[Any]]:
        done: list[Any] = []
        failures: list[Any] = []
        reads = InTurn(
            lambda data, end: len(data), done.append, lambda: 0, name="t", most_waiting=1000, failed=failures.append
        )
        reads.take(large, False)
        for _ in range(3):
            reads.take(b"y" * 400, False)  # the third passes 1,000 bytes waiting behind the large one
        reads.take(b"z", False)  # (stopped: dropped, not read at once)
        await asyncio.sleep(0.2)
        return done, failures

    done, failures = asyncio.run(flooded())
    assert [error.code for error in failures] == ["OVERLOADED"] and done == []

    async def broken() -> list[Any]:
        failures: list[Any] = []

        def read(data: bytes, end: bool) -> int:
            raise MemoryError("planted")

        reads = InTurn(read, print, lambda: 0, name="t", most_waiting=1 << 20, failed=failures.append)
        reads.take(large, False)
        while reads.busy:
            await asyncio.sleep(0.01)
        return failures

    assert [error.code for error in asyncio.run(broken())] == ["INTERNAL"]


def test_websocket(echo_config, handed, started):
    from websockets.sync.client import connect as ws_connect

    with (
        http_gateway(echo_config) as url,
        ws_connect(url.replace("http://", "ws://") + "/v1/gtl/ws", max_size=None) as socket_,
    ):
        socket_.send(json.dumps({"type": "hello", "versions": ["1.0"]}))
        socket_.send(encode(request("big", MANY)).decode())
        socket_.send(encode(request("small")).decode())  # right behind it: must not start first
        ended: dict[str, str] = {}
        while len(ended) < 2:
            message = decode(socket_.recv(timeout=30))
            if isinstance(message, (m.Done, m.Error)):
                ended[message.session_id] = type(message).__name__
    assert ended == {"big": "Done", "small": "Done"}
    assert handed == ["feed"]  # the large frame only
    assert started == ["big", "small"]


def test_grpc(echo_config, handed, started):
    with grpc_gateway(echo_config) as served, grpc.insecure_channel(served.address) as channel:
        session = channel.stream_stream(SESSION_METHOD, lambda f: f.SerializeToString(), pb.ServerFrame.FromString)
        frames: queue.Queue[Any] = queue.Queue()
        for message in (m.Hello(versions=["1.0"]), request("big", MANY), request("small")):
            frames.put(to_frame(message, pb.ClientFrame))
        ended: dict[str, str] = {}
        for reply in session(iter(frames.get, None), timeout=30):
            message = from_proto(reply)
            if isinstance(message, (m.Done, m.Error)):
                ended[message.session_id] = type(message).__name__
                if len(ended) == 2:
                    break
        frames.put(None)
    assert ended == {"big": "Done", "small": "Done"}
    # the message read into its JSON frame, then that frame decoded: both in a worker
    assert handed == ["_frame_of", "feed"]
    assert started == ["big", "small"]


@contextmanager
def stdio_gateway(config: Path) -> Iterator[tuple[int, int]]:
    """``serve_stdio`` on a loop thread of this process, over two pipes: (the fd to write frames to, the fd
    to read the gateway's from). Closing the first ends the connection; on exit the gateway has returned."""
    to_gateway_r, to_gateway_w = os.pipe()
    from_gateway_r, from_gateway_w = os.pipe()
    settings = load_settings(config=str(config))
    authenticate = DevAuth.from_settings("none", principal="stdio-test", environ={})
    loop = asyncio.new_event_loop()

    def run() -> None:
        with suppress(asyncio.CancelledError):
            loop.run_until_complete(
                serve_stdio(settings, authenticate=authenticate, frames_fd=from_gateway_w, in_fd=to_gateway_r)
            )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield to_gateway_w, from_gateway_r
    finally:
        with suppress(OSError):
            os.close(to_gateway_w)
        thread.join(15)
        loop.close()
        os.close(from_gateway_r)


def test_stdio(echo_config, handed, started):
    with stdio_gateway(echo_config) as (to_gateway, from_gateway):
        stream = line(m.Hello(versions=["1.0"])) + line(request("big", MANY)) + line(request("small"))
        os.write(to_gateway, stream)  # (the pipe takes it in pieces: the gateway reads 64 KiB at a time)
        ended: dict[str, str] = {}
        buffer = b""
        with os.fdopen(os.dup(from_gateway), "rb", buffering=0) as replies:
            while len(ended) < 2:
                chunk = replies.read(65536)
                assert chunk, "the gateway closed its end"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for text in lines:
                    message = decode(text)
                    if isinstance(message, (m.Done, m.Error)):
                        ended[message.session_id] = type(message).__name__
        os.close(to_gateway)
    assert ended == {"big": "Done", "small": "Done"}
    assert handed == ["feed"]
    assert started == ["big", "small"]


def test_quic(echo_config, certs, handed, started):
    """A session stream's large request is decoded in a worker, and the cancel behind it on the same stream
    waits for it: the session starts, then the cancel ends it or crosses its end (had the cancel gone
    first, the stream would have been refused, INVALID_REQUEST: it does not start with a request)."""

    async def main() -> tuple[list[Any], list[Any]]:
        async with raw_peer(served.url, certs) as (peer, _quic):
            big = Collector()
            stream_id = peer.open_stream(big)
            peer.write(stream_id, quic_frame(request("big", MANY)))
            small = open_raw(peer, quic_frame(request("small")), end=True)
            await asyncio.sleep(SLOW / 2)  # the request is being decoded (late): the cancel comes in a read of its own
            peer.write(stream_id, quic_frame(m.Cancel(session_id="big")))
            await asyncio.wait_for(big.ended.wait(), 30)
            await asyncio.wait_for(small.ended.wait(), 30)
            return big.frames(), small.frames()

    with quic_gateway(echo_config, certs) as served:
        big, small = asyncio.run(main())
    assert isinstance(big[-1], m.Done) or (isinstance(big[-1], m.Error) and big[-1].code == "CANCELLED"), big[-1]
    assert isinstance(small[-1], m.Done)
    assert handed == ["<lambda>"]  # the session stream's read, its request only
    assert sorted(started) == ["big", "small"]  # (two streams: either may start first)


def test_quic_a_connection_ending_while_a_request_is_decoded_lets_the_request_go(echo_config, certs, monkeypatch):
    """The client ends the connection while its whole request is in a worker: the decode is dropped, and
    so are the request's arrival count and timer (its timer refused the stream of a dead connection
    minutes later, counting it a bad stream, and kept the decoded request alive until then)."""
    gate = threading.Event()

    async def held(function: Any, *args: Any) -> Any:  # the workers busy with others' frames
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
        return function(*args)

    monkeypatch.setattr(offload, "_in_worker", held)
    refused: list[str] = []
    give_up = quic._Session._give_up

    def giving_up(self: Any, refusal: m.Error, **kwargs: Any) -> None:
        refused.append(refusal.code)
        give_up(self, refusal, **kwargs)

    monkeypatch.setattr(quic._Session, "_give_up", giving_up)
    connections: list[Any] = []
    accept = quic._Gateway.accept

    def accepting(self: Any, *args: Any, **kwargs: Any) -> Any:
        peer = accept(self, *args, **kwargs)
        connections.extend(self.connections)
        return peer

    monkeypatch.setattr(quic._Gateway, "accept", accepting)

    async def main() -> None:
        async with raw_peer(served.url, certs) as (peer, _quic):
            open_raw(peer, quic_frame(request("big", 5_000)), end=True)
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.5)

    with quic_gateway(echo_config, certs, header_timeout=1.0) as served:
        asyncio.run(main())
        gate.set()
        (connection,) = set(connections)
        assert connection.arriving == 0 and not connection.requests_arriving
        threading.Event().wait(2.5)  # past the request's deadline
    assert refused == []
