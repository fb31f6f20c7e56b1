"""``HttptoolsTransport``, the engine's default upstream client, against real loopback servers: the
keep-alive pool and its bounds, servers that close connections, compressed bodies, bounded heads and
pieces, flow control, TLS, and errors that never quote a header value. (tests/engine/test_runner.py
runs the runner's behaviour — timeouts, drops, cancellation, caps — over this client and aiohttp.)"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gtl_nb.engine import httptools_transport as module
from gtl_nb.engine.httptools_transport import HttptoolsTransport
from gtl_nb.engine.transport import ConnectFailed, ConnectionLost, ConnectTimeout, UnsendableRequest
from gtl_nb.providers.base import HttpRequest

CANARY = "sk-canary-7f3a"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """An asyncio server on loopback that counts the connections it accepted."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Server:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=ssl_context)
        self.port: int = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/v1/chat?x=1"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def request(url: str, body: bytes = b'{"a":1}', **headers: str) -> HttpRequest:
    return HttpRequest("POST", url, {"content-type": "application/json", **headers}, body)


async def fetch(transport: HttptoolsTransport, url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    response = await transport.send(request(url, **headers), connect_timeout=5)
    try:
        body = b"".join([chunk async for chunk in response.chunks()])
    finally:
        await response.aclose()
    return response.status, dict(response.headers), body


def answer(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    headers = b"".join(line + b"\r\n" for line in extra)
    return b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body) + headers + b"\r\n" + body


def keep_answering(server_of: Callable[[], Server], reply: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server_of().read_request(reader)
            writer.write(reply)
            await writer.drain()

    return handler


def answering_once_released(server_of: Callable[[], Server], release: asyncio.Event) -> Handler:
    """Each request answered ``ok`` once ``release`` is set (a connection held busy until then)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server_of().read_request(reader)
            await release.wait()
            writer.write(answer(b"ok"))
            await writer.drain()

    return handler


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_sequential_requests_share_one_kept_alive_connection_and_the_request_is_what_the_dialect_built():
    async def scenario() -> None:
        server = await Server(keep_answering(lambda: server, answer(b"hello"))).start()
        transport = HttptoolsTransport()
        try:
            for _ in range(5):
                assert await fetch(transport, server.url(), authorization="Bearer k") == (
                    200,
                    {"content-length": "5"},
                    b"hello",
                )
        finally:
            await transport.aclose()
            await server.close()
        assert server.accepted == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\n")
        assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in first
        assert b"\r\nauthorization: Bearer k\r\n" in first and b"\r\nContent-Length: 7\r\n" in first
        assert first.endswith(b'\r\n\r\n{"a":1}')

    run(scenario)


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error():
    async def scenario() -> None:
        async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(answer(b"ok"))  # keep-alive announced, then closed by the server's idle timer
            await writer.drain()

        server = await Server(once).start()
        transport = HttptoolsTransport()
        try:
            assert (await fetch(transport, server.url()))[2] == b"ok"
            await asyncio.sleep(0.05)
            assert (await fetch(transport, server.url()))[2] == b"ok"
        finally:
            await transport.aclose()
            await server.close()
        assert server.accepted == 2

    run(scenario)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_reused_connection_dropped_unanswered_is_retried_on_a_new_one_only_when_harmless(method):
    """A GET is sent again on a new connection; a POST is not (the server may have acted on it): the
    caller's ConnectFailed, and the engine's retry policy decides, as with aiohttp."""

    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(answer(b"first"))
            await writer.drain()
            await server.read_request(reader)  # the second request: dropped unanswered
            writer.transport.abort()

        server = await Server(handler).start()
        transport = HttptoolsTransport()

        async def ask() -> bytes:
            response = await transport.send(HttpRequest(method, server.url(), {}, b""), connect_timeout=5)
            try:
                return b"".join([chunk async for chunk in response.chunks()])
            finally:
                await response.aclose()

        try:
            assert await ask() == b"first"
            if method == "GET":
                assert await ask() == b"first"  # from a second connection
                assert server.accepted == 2 and len(server.requests) == 3
            else:
                with pytest.raises(ConnectFailed, match="closed before a response"):
                    await ask()
                assert server.accepted == 1 and len(server.requests) == 2  # sent once
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_connection_close_and_http_1_0_are_not_reused_and_a_body_without_length_ends_with_the_connection():
    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            if server.accepted == 1:
                writer.write(answer(b"closing", b"Connection: close"))
                await writer.drain()
                await server.read_request(reader)  # (a client that kept the connection would be answered)
                writer.write(answer(b"kept against the server's word"))
            else:
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
            await writer.drain()

        server = await Server(handler).start()
        transport = HttptoolsTransport()
        try:
            assert (await fetch(transport, server.url()))[2] == b"closing"
            assert (await fetch(transport, server.url()))[2] == b"until the end"
        finally:
            await transport.aclose()
            await server.close()
        assert server.accepted == 2

    run(scenario)


def test_chunked_bodies_interim_responses_and_error_statuses_arrive_as_sent():
    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
                for piece in (b"data: one\n\n", b"data: two\n\n"):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")

        server = await Server(handler).start()
        transport = HttptoolsTransport()
        try:
            for _ in range(2):
                status, headers, body = await fetch(transport, server.url())
                assert status == 429 and headers["retry-after"] == "3" and "link" not in headers
                assert body == b"data: one\n\ndata: two\n\n"
        finally:
            await transport.aclose()
            await server.close()
        assert server.accepted == 1

    run(scenario)


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send it
    ],
    ids=["gzip", "deflate", "raw-deflate"],
)
def test_compressed_bodies_are_inflated(encoding, compress):
    text = b"".join(b"token %d " % i for i in range(5000))

    async def scenario() -> None:
        server = await Server(
            keep_answering(lambda: server, answer(compress(text), b"Content-Encoding: " + encoding.encode()))
        ).start()
        transport = HttptoolsTransport()
        try:
            assert (await fetch(transport, server.url()))[2] == text
        finally:
            await transport.aclose()
            await server.close()
        assert b"\r\nAccept-Encoding: gzip, deflate\r\n" in server.requests[0]

    run(scenario)


def test_a_compression_bomb_inflates_in_bounded_pieces_and_a_corrupt_body_is_a_lost_connection():
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # ~8 KiB that inflate to 8 MiB

    async def scenario() -> None:
        replies = iter(
            [answer(bomb, b"Content-Encoding: gzip"), answer(b"\x1f\x8bnot gzip", b"Content-Encoding: gzip")]
        )

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(next(replies))

        server = await Server(handler).start()
        transport = HttptoolsTransport()
        try:
            response = await transport.send(request(server.url()), connect_timeout=5)
            sizes = [len(chunk) async for chunk in response.chunks()]
            await response.aclose()
            assert sum(sizes) == 8 * 1024 * 1024 and max(sizes) <= module.MAX_INFLATED
            response = await transport.send(request(server.url()), connect_timeout=5)
            with pytest.raises(ConnectionLost, match="corrupt"):
                async for _ in response.chunks():
                    pass
            await response.aclose()
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_an_oversized_or_malformed_head_is_a_failed_connection_that_quotes_nothing():
    async def scenario() -> None:
        replies = iter(
            [
                b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + CANARY.encode() * 10_000 + b"\r\n\r\n",
                b"NOT HTTP " + CANARY.encode() + b"\r\n\r\n",
            ]
        )

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(next(replies))
            await writer.drain()
            await reader.read()

        server = await Server(handler).start()
        transport = HttptoolsTransport()
        try:
            for expected in ("too large", "malformed"):
                with pytest.raises(ConnectFailed, match=expected) as caught:
                    await transport.send(request(server.url()), connect_timeout=5)
                assert CANARY not in str(caught.value)
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_slow_reader_pauses_the_connection_and_still_gets_every_byte():
    body = bytes(range(256)) * 8192  # 2 MiB

    async def scenario() -> None:
        server = await Server(keep_answering(lambda: server, answer(body))).start()
        transport = HttptoolsTransport()
        try:
            response = await transport.send(request(server.url()), connect_timeout=5)
            chunks = response.chunks()
            received = [await chunks.__anext__()]
            await asyncio.sleep(0.3)  # the server has sent everything by now: the client stopped reading
            assert response._exchange.buffered <= module.PAUSE_BYTES + 256 * 1024  # one read past the mark at most
            async for chunk in chunks:
                received.append(chunk)
            await response.aclose()
            assert b"".join(received) == body
            assert (await fetch(transport, server.url()))[2] == body  # the connection was kept: whole
        finally:
            await transport.aclose()
            await server.close()
        assert server.accepted == 1

    run(scenario)


def test_a_response_abandoned_mid_body_closes_its_connection():
    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await reader.read()  # until the client closes

        server = await Server(handler).start()
        transport = HttptoolsTransport()
        try:
            response = await transport.send(request(server.url()), connect_timeout=5)
            chunks = response.chunks()
            assert await chunks.__anext__() == b"first"
            await response.aclose()
            await chunks.aclose()
            response = await transport.send(request(server.url()), connect_timeout=5)
            await response.aclose()
        finally:
            await transport.aclose()
            await server.close()
        assert server.accepted == 2

    run(scenario)


def test_the_pool_bounds_open_connections_and_a_waiting_request_times_out_within_the_connect_timeout():
    async def scenario() -> None:
        release = asyncio.Event()
        server = await Server(answering_once_released(lambda: server, release)).start()
        transport = HttptoolsTransport(max_connections=1)
        try:
            first = asyncio.ensure_future(fetch(transport, server.url()))
            second = asyncio.ensure_future(fetch(transport, server.url()))
            await asyncio.sleep(0.1)
            assert server.accepted == 1 and not second.done()  # waiting for the only connection
            release.set()
            assert [(await first)[2], (await second)[2]] == [b"ok", b"ok"]
            release.clear()
            busy = asyncio.ensure_future(fetch(transport, server.url()))
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectTimeout, match="no free connection"):
                await transport.send(request(server.url()), connect_timeout=0.1)
            release.set()
            assert (await busy)[2] == b"ok"
        finally:
            await transport.aclose()
            await server.close()
        assert server.accepted == 1

    run(scenario)


def test_refused_and_unreachable_hosts_and_unsendable_requests():
    async def scenario() -> None:
        transport = HttptoolsTransport()
        server = await Server(keep_answering(lambda: server, answer(b""))).start()
        port = server.port
        await server.close()
        try:
            with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
                await transport.send(request(f"http://127.0.0.1:{port}/x"), connect_timeout=5)
            for url, message in [
                ("ftp://127.0.0.1/x", "http"),
                ("http://user:pw@127.0.0.1/x", "credentials"),
                ("http://127.0.0.1/x y", "illegal character"),
            ]:
                with pytest.raises(UnsendableRequest, match=message):
                    await transport.send(request(url), connect_timeout=5)
            with pytest.raises(UnsendableRequest, match="authorization") as caught:
                await transport.send(
                    request("http://127.0.0.1:1/x", authorization=CANARY + "\r\nx: 1"), connect_timeout=5
                )
            assert CANARY not in str(caught.value)
        finally:
            await transport.aclose()

    run(scenario)


def test_https_with_a_trusted_certificate_and_a_refused_untrusted_one(tmp_path: Path):
    from gtl_nb.gateway.certs import make_dev_certificates

    certs = make_dev_certificates(tmp_path / "certs")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(certs.certificate, certs.key)
    trusting = ssl.create_default_context(cafile=str(certs.ca))

    async def scenario() -> None:
        server = await Server(keep_answering(lambda: server, answer(b"secure"))).start(server_side)
        trusted = HttptoolsTransport(ssl_context=trusting)
        untrusted = HttptoolsTransport()  # the system's trust store: the development CA is not in it
        try:
            assert (await fetch(trusted, server.url("https")))[2] == b"secure"
            assert (await fetch(trusted, server.url("https")))[2] == b"secure"
            with pytest.raises(ConnectFailed):
                await untrusted.send(request(server.url("https")), connect_timeout=5)
        finally:
            await trusted.aclose()
            await untrusted.aclose()
            await server.close()

    run(scenario)


# -- found by review: each once a defect -------------------------------------------------------------


def test_an_idle_connection_to_one_host_makes_room_for_another_under_the_overall_bound():
    async def scenario() -> None:
        first = await Server(keep_answering(lambda: first, answer(b"a"))).start()
        second = await Server(keep_answering(lambda: second, answer(b"b"))).start()
        transport = HttptoolsTransport(max_connections=1)
        try:
            assert (await fetch(transport, first.url()))[2] == b"a"  # its connection stays idle
            response = await transport.send(request(second.url()), connect_timeout=1)
            assert b"".join([chunk async for chunk in response.chunks()]) == b"b"
            await response.aclose()
        finally:
            await transport.aclose()
            await first.close()
            await second.close()

    run(scenario)


def test_idle_connections_past_the_idle_timeout_are_closed_by_a_timer():
    async def scenario() -> None:
        server = await Server(keep_answering(lambda: server, answer(b"ok"))).start()
        transport = HttptoolsTransport(idle_timeout=0.1)
        try:
            await fetch(transport, server.url())
            assert transport._open_total == 1
            await asyncio.sleep(0.4)
            assert transport._open_total == 0 and not any(transport._idle.values())
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_waiter_woken_then_cancelled_passes_its_turn_on():
    async def scenario() -> None:
        release = asyncio.Event()
        server = await Server(answering_once_released(lambda: server, release)).start()
        transport = HttptoolsTransport(max_connections=1)
        try:
            busy = asyncio.ensure_future(fetch(transport, server.url()))
            await asyncio.sleep(0.05)
            woken_then_cancelled = asyncio.ensure_future(fetch(transport, server.url()))
            patient = asyncio.ensure_future(fetch(transport, server.url()))
            await asyncio.sleep(0.05)
            release.set()
            await busy  # its connection is free: the first waiter is woken ...
            woken_then_cancelled.cancel()  # ... and cancelled before it could take it
            assert (await asyncio.wait_for(patient, 2))[2] == b"ok"
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_compression_bomb_is_inflated_only_as_far_as_it_is_read():
    import tracemalloc

    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))

    async def scenario() -> None:
        server = await Server(keep_answering(lambda: server, answer(bomb, b"Content-Encoding: gzip"))).start()
        transport = HttptoolsTransport()
        try:
            response = await transport.send(request(server.url()), connect_timeout=5)
            while response._exchange.buffered < len(bomb) and not response._exchange.complete:
                await asyncio.sleep(0.01)  # the whole compressed body has arrived
            tracemalloc.start()
            chunks = response.chunks()
            first = await chunks.__anext__()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert len(first) <= module.MAX_INFLATED and peak < 4 * module.MAX_INFLATED
            await chunks.aclose()
            await response.aclose()
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_head_that_never_ends_is_cut_at_the_cap_as_it_arrives():
    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
            for _ in range(64):  # 4 MiB of one header value, never ended
                writer.write(b"v" * 65536)
                await writer.drain()
            await reader.read()

        server = await Server(handler).start()
        transport = HttptoolsTransport()
        try:
            with pytest.raises(ConnectFailed, match="too large"):
                await asyncio.wait_for(transport.send(request(server.url()), connect_timeout=5), 10)
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_trailers_upgrades_header_values_and_deflate_split_at_its_first_byte():
    raw_deflate = zlib.compressobj(wbits=-15)
    deflated = raw_deflate.compress(b"data: hello\n\n") + raw_deflate.flush()

    async def scenario() -> None:
        replies = iter(
            [
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\nContent-Type: evil/override\r\nX-Trailer: t\r\n\r\n",
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                answer(b"x", "X-Err: café  ".encode()),
                b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n" % len(deflated),
            ]
        )

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                reply = next(replies)
                writer.write(reply)
                if b"deflate" in reply:
                    writer.write(deflated[:1])  # the first byte alone: raw or wrapped is told from it
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(deflated[1:])
                await writer.drain()

        server = await Server(handler).start()
        transport = HttptoolsTransport()
        try:
            _, headers, body = await fetch(transport, server.url())
            assert body == b"ok" and headers["content-type"] == "text/event-stream" and "x-trailer" not in headers
            with pytest.raises(ConnectFailed, match="upgrade"):
                await transport.send(request(server.url()), connect_timeout=5)
            assert (await fetch(transport, server.url()))[1]["x-err"] == "café"
            assert (await fetch(transport, server.url()))[2] == b"data: hello\n\n"
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_closed_transport_opens_new_connections_for_later_requests():
    async def scenario() -> None:
        server = await Server(keep_answering(lambda: server, answer(b"ok"))).start()
        transport = HttptoolsTransport()
        try:
            await fetch(transport, server.url())
            await transport.aclose()
            assert (await fetch(transport, server.url()))[2] == b"ok"
        finally:
            await transport.aclose()
            await server.close()
        assert server.accepted == 2

    run(scenario)


def test_the_body_reader_hands_on_what_is_buffered_then_its_end_or_failure():
    from collections import deque
    from types import SimpleNamespace

    from gtl_nb.engine.http_parts import BufferedPieces

    async def scenario() -> None:
        taken: list[int] = []
        body = SimpleNamespace(body=deque([b"ab", b"cd"]), failure=None, complete=False, waiter=None)
        pieces = BufferedPieces(body, None, taken.append)
        known = set(asyncio.get_running_loop()._asyncgens)  # type: ignore[attr-defined]
        assert await pieces.__anext__() == b"abcd" and taken == [4]  # all that was buffered, in one piece
        assert set(asyncio.get_running_loop()._asyncgens) == known  # no async generator for the loop to track
        waiting = asyncio.ensure_future(pieces.__anext__())
        await asyncio.sleep(0)
        assert body.waiter is not None and not waiting.done()
        body.body.append(b"ef")
        body.waiter.set_result(None)
        assert await waiting == b"ef" and body.waiter is None
        body.failure = ConnectionLost("gone")
        with pytest.raises(ConnectionLost):
            await pieces.__anext__()
        ended = BufferedPieces(
            SimpleNamespace(body=deque(), failure=None, complete=True, waiter=None), None, taken.append
        )
        assert [piece async for piece in ended] == []
        closed = BufferedPieces(
            SimpleNamespace(body=deque([b"x"]), failure=None, complete=False, waiter=None), None, taken.append
        )
        await closed.aclose()
        assert [piece async for piece in closed] == []  # as a closed async generator: nothing more

    run(scenario)
