"""``H2Transport`` (``[upstream] client = "h2"``) against real HTTP/2 servers on loopback: many streams
on one connection, the server's stream limit, flow control both ways, streams and connections that
end badly, GOAWAY, abandoned streams, compressed bodies, TLS with ALPN, and errors that never quote a
header value."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import h2.errors
import pytest

from gtl_nb.engine import h2_transport as module
from gtl_nb.engine.h2_transport import H2Transport
from gtl_nb.engine.transport import ConnectFailed, ConnectionLost, ConnectTimeout, UnsendableRequest
from gtl_nb.providers.base import HttpRequest
from tests.engine.h2_server import H2Server, Request

CANARY = "sk-canary-h2-5e1d"


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def request(url: str, body: bytes = b'{"q":1}', headers: dict[str, str] | None = None) -> HttpRequest:
    return HttpRequest(
        method="POST",
        url=url,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {CANARY}", **(headers or {})},
        body=body,
    )


async def fetch(transport: H2Transport, url: str, body: bytes = b'{"q":1}') -> tuple[int, dict[str, str], bytes]:
    response = await transport.send(request(url, body), connect_timeout=5)
    data = b"".join([piece async for piece in response.chunks()])
    await response.aclose()
    return response.status, dict(response.headers), data


async def answer_json(req: Request, body: bytes = b'{"ok":true}') -> None:
    req.connection.respond(req, 200, [("content-type", "application/json"), ("X-Upper", "v ")])
    await req.connection.send(req, body, end=True)


def paced(pieces: list[bytes], pace: float) -> Callable[[Request], Awaitable[None]]:
    async def handler(req: Request) -> None:
        req.connection.respond(req, 200, [("content-type", "text/event-stream")])
        for piece in pieces:
            await req.connection.send(req, piece)
            await asyncio.sleep(pace)
        await req.connection.send(req, b"", end=True)

    return handler


def test_a_whole_answer_with_the_request_as_http2_wants_it():
    async def scenario() -> None:
        server = await H2Server(answer_json).start()
        transport = H2Transport()
        try:
            status, headers, body = await fetch(transport, server.url(), b'{"hello":"world"}')
            assert (status, body) == (200, b'{"ok":true}')
            assert headers["content-type"] == "application/json" and headers["x-upper"] == "v"
            seen = server.stats.requests[0]
            assert seen.body == b'{"hello":"world"}'
            assert seen.headers[b":method"] == b"POST" and seen.headers[b":scheme"] == b"http"
            assert seen.headers[b":authority"] == f"127.0.0.1:{server.port}".encode()
            assert seen.headers[b":path"] == b"/v1/chat/completions?x=1"
            assert (
                seen.headers[b"content-length"] == b"17"
                and seen.headers[b"authorization"] == f"Bearer {CANARY}".encode()
            )
            assert b"accept-encoding" in seen.headers
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_many_concurrent_streams_share_one_connection_and_arrive_in_order():
    pieces = [b"data: %d\n\n" % i for i in range(5)]

    async def scenario() -> None:
        server = await H2Server(paced(pieces, 0.01)).start()
        transport = H2Transport()
        try:
            results = await asyncio.gather(*(fetch(transport, server.url()) for _ in range(300)))
            assert all(body == b"".join(pieces) for _, _, body in results)
            assert server.stats.connections == 1 and server.stats.most_active > 100
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_the_servers_stream_limit_is_kept_and_more_connections_open_only_within_the_bound():
    async def scenario() -> None:
        server = await H2Server(paced([b"x"], 0.05), max_streams=4).start()
        bounded = H2Transport(max_connections_per_host=1)
        try:
            await fetch(bounded, server.url())  # the server's settings are known from here on
            results = await asyncio.gather(*(fetch(bounded, server.url()) for _ in range(12)))
            assert all(body == b"x" for _, _, body in results)
            assert server.stats.connections == 1 and server.stats.most_active == 4
        finally:
            await bounded.aclose()
        server.stats.most_active = 0
        unbounded = H2Transport()
        try:
            await fetch(unbounded, server.url())
            await asyncio.gather(*(fetch(unbounded, server.url()) for _ in range(12)))
            assert server.stats.connections == 1 + 3  # (one more for the first request of this client)
        finally:
            await unbounded.aclose()
            await server.close()

    run(scenario)


def test_a_burst_before_the_connection_opens_waits_for_it_instead_of_opening_its_own():
    async def scenario() -> None:
        server = await H2Server(answer_json).start()
        transport = H2Transport()
        try:
            await asyncio.gather(*(fetch(transport, server.url()) for _ in range(60)))
            assert server.stats.connections == 1
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_request_body_larger_than_every_window_arrives_whole():
    big = bytes(range(256)) * (3 * 1024 * 4)  # 3 MiB: past the 64 KiB stream window a server starts with

    async def scenario() -> None:
        async def echo_size(req: Request) -> None:
            req.connection.respond(req, 200)
            await req.connection.send(req, str(len(req.body)).encode() + (b"!" if req.body == big else b"?"), end=True)

        server = await H2Server(echo_size).start()
        transport = H2Transport()
        try:
            assert (await fetch(transport, server.url(), big))[2] == str(len(big)).encode() + b"!"
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_an_unread_stream_buffers_at_most_its_window_then_reads_on():
    body = b"z" * (2 * 1024 * 1024)

    async def scenario() -> None:
        async def flood(req: Request) -> None:
            req.connection.respond(req, 200)
            await req.connection.send(req, body, end=True)

        server = await H2Server(flood).start()
        transport = H2Transport()
        try:
            response = await transport.send(request(server.url()), connect_timeout=5)
            await asyncio.sleep(0.3)  # the server sends what the window lets it, then waits
            buffered = sum(len(piece) for piece in response._stream.body)  # type: ignore[attr-defined]
            assert 0 < buffered <= module.STREAM_WINDOW
            data = b"".join([piece async for piece in response.chunks()])
            assert data == body
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_reset_stream_fails_alone_and_the_connection_carries_on():
    async def scenario() -> None:
        async def handler(req: Request) -> None:
            kind = req.body
            if kind == b"refuse":
                req.connection.reset(req, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            req.connection.respond(req, 200)
            await req.connection.send(req, b"part")
            if kind == b"cut":
                await asyncio.sleep(0.05)
                req.connection.reset(req)
                return
            await req.connection.send(req, b" whole", end=True)

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            with pytest.raises(ConnectFailed, match="REFUSED_STREAM"):
                await transport.send(request(server.url(), b"refuse"), connect_timeout=5)
            response = await transport.send(request(server.url(), b"cut"), connect_timeout=5)
            with pytest.raises(ConnectionLost, match="INTERNAL_ERROR"):
                async for _ in response.chunks():
                    pass
            assert (await fetch(transport, server.url(), b"ok"))[2] == b"part whole"
            assert server.stats.connections == 1
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_goaway_fails_the_streams_the_server_did_not_take_and_the_next_request_opens_a_new_connection():
    async def scenario() -> None:
        gate = asyncio.Event()

        async def handler(req: Request) -> None:
            if req.body == b"first":
                req.connection.respond(req, 200)
                await gate.wait()
                await req.connection.send(req, b"finished", end=True)
                return
            if req.connection is server.connections[0]:
                return  # the second: left unanswered, then declared not taken
            await answer_json(req)

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            first = await transport.send(request(server.url(), b"first"), connect_timeout=5)
            second = asyncio.ensure_future(transport.send(request(server.url(), b"second"), connect_timeout=5))
            while len(server.stats.requests) < 2:
                await asyncio.sleep(0.01)
            server.connections[0].goaway(last_stream_id=first._stream.id)  # type: ignore[attr-defined]
            with pytest.raises(ConnectFailed, match="went away"):
                await second
            gate.set()
            assert b"".join([piece async for piece in first.chunks()]) == b"finished"
            assert (await fetch(transport, server.url()))[2] == b'{"ok":true}'
            assert server.stats.connections == 2
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_connection_dropped_before_the_head_or_mid_body():
    async def scenario() -> None:
        async def handler(req: Request) -> None:
            if req.body == b"mid":
                req.connection.respond(req, 200)
                await req.connection.send(req, b"some")
                await asyncio.sleep(0.05)
            req.connection.drop()

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            with pytest.raises(ConnectFailed):
                await transport.send(request(server.url(), b"head"), connect_timeout=5)
            response = await transport.send(request(server.url(), b"mid"), connect_timeout=5)
            with pytest.raises(ConnectionLost):
                async for _ in response.chunks():
                    pass
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_an_abandoned_or_cancelled_stream_is_reset_and_its_connection_kept():
    async def scenario() -> None:
        async def handler(req: Request) -> None:
            if req.body == b"silent":
                await asyncio.sleep(10)
                return
            await paced([b"a", b"b", b"c"], 0.05)(req)

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            response = await transport.send(request(server.url()), connect_timeout=5)
            async for _ in response.chunks():
                break
            await response.aclose()
            waiting = asyncio.ensure_future(transport.send(request(server.url(), b"silent"), connect_timeout=5))
            await asyncio.sleep(0.1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await asyncio.sleep(0.1)
            codes = [code for _, code in server.stats.client_resets]
            assert codes == [h2.errors.ErrorCodes.CANCEL, h2.errors.ErrorCodes.CANCEL]
            assert (await fetch(transport, server.url()))[2] == b"abc"
            assert server.stats.connections == 1
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_gzip_body_is_inflated():
    text = b'{"answer":"' + b"abc" * 10_000 + b'"}'

    async def scenario() -> None:
        async def handler(req: Request) -> None:
            req.connection.respond(req, 200, [("content-encoding", "gzip")])
            await req.connection.send(req, gzip.compress(text), end=True)

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            assert (await fetch(transport, server.url()))[2] == text
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_malformed_answer_fails_the_call_and_no_error_quotes_a_key():
    async def scenario() -> None:
        async def handler(req: Request) -> None:
            if req.body == b"headers":
                req.connection.respond(req, 200, [(f"x-{i}", "v") for i in range(module.MAX_HEADERS + 5)])
                return
            req.connection.write_raw(b"\x00\x00\x04\x01\x04\x00\x00\x00\x01garbage that is no frame")

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            with pytest.raises(ConnectFailed, match="too many headers") as too_many:
                await transport.send(request(server.url(), b"headers"), connect_timeout=5)
            with pytest.raises((ConnectFailed, ConnectionLost)) as garbage:
                await transport.send(request(server.url(), b"garbage"), connect_timeout=5)
            for failure in (too_many.value, garbage.value):
                assert CANARY not in str(failure)
            with pytest.raises(UnsendableRequest) as bad_value:
                await transport.send(request(server.url(), headers={"X-Key": CANARY + "\n"}), connect_timeout=5)
            assert CANARY not in str(bad_value.value)
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_refused_connection_fails_every_request_waiting_for_it():
    async def scenario() -> None:
        transport = H2Transport()
        failures = await asyncio.gather(
            *(transport.send(request("http://127.0.0.1:9/x"), connect_timeout=5) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(failure, ConnectFailed) for failure in failures)
        await transport.aclose()

    run(scenario)


def test_an_idle_connection_is_closed_after_the_idle_timeout():
    async def scenario() -> None:
        server = await H2Server(answer_json).start()
        transport = H2Transport(idle_timeout=0.1)
        try:
            await fetch(transport, server.url())
            await asyncio.sleep(0.3)
            assert server.connections[0].transport is None  # closed by the client
            await fetch(transport, server.url())
            assert server.stats.connections == 2
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


class Http1Server:
    """A plain HTTP/1.1 server, as a local model server is: it answers the HTTP/2 preface with a 400
    (as a malformed request) and closes; it answers a request with ``b"h1"``."""

    def __init__(self, *, split: bool = False) -> None:
        self.split = split  # the answer to the preface in two writes, cut inside "HTTP/"
        self.connections = 0
        self.prefaces = 0
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Http1Server:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    if head.startswith(b"PRI * HTTP/2.0"):
                        self.prefaces += 1
                        refusal = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        if self.split:
                            writer.write(refusal[:3])
                            await writer.drain()
                            await asyncio.sleep(0.05)
                        writer.write(refusal[3:] if self.split else refusal)
                        await writer.drain()
                        return
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    self.requests.append(await reader.readexactly(length))
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nh1")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/api/chat"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_a_cleartext_server_without_h2c_is_called_over_http1_once_and_remembered():
    async def scenario() -> None:
        server = await Http1Server().start()
        transport = H2Transport()
        try:
            for _ in range(3):
                assert (await fetch(transport, server.url(), b"once"))[2] == b"h1"
            # the preface was tried once; every request reached the server exactly once
            assert server.prefaces == 1 and server.requests == [b"once"] * 3
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_https_negotiates_h2_and_a_server_choosing_http1_by_alpn_is_called_over_it(tmp_path: Path):
    from gtl_nb.gateway.certs import make_dev_certificates

    certs = make_dev_certificates(tmp_path / "certs")

    def server_context(protocols: list[str]) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs.certificate, certs.key)
        context.set_alpn_protocols(protocols)
        return context

    async def scenario() -> None:
        good = await H2Server(answer_json).start(server_context(["h2"]))
        old = await Http1Server().start(server_context(["http/1.1"]))
        transport = H2Transport(ssl_context=ssl.create_default_context(cafile=str(certs.ca)))
        untrusting = H2Transport()  # the system's trust store: the development CA is not in it
        try:
            assert (await fetch(transport, good.url("https")))[2] == b'{"ok":true}'
            assert good.stats.requests[0].headers[b":scheme"] == b"https"
            assert (await fetch(transport, old.url("https")))[2] == b"h1"
            assert (await fetch(transport, old.url("https")))[2] == b"h1"
            assert old.prefaces == 0 and len(old.requests) == 2 and old.connections <= 2  # (+ the ALPN probe)
            with pytest.raises(ConnectFailed):
                await untrusting.send(request(good.url("https")), connect_timeout=5)
        finally:
            await transport.aclose()
            await untrusting.aclose()
            await good.close()
            await old.close()

    run(scenario)


def test_the_setting_builds_it():
    from gtl_nb.engine.settings import UpstreamSettings

    transport = UpstreamSettings(client="h2", max_connections=3).transport()
    assert isinstance(transport, H2Transport) and transport.max_connections == 3


# -- through the engine: its runner (timeouts, cancellation) over this client ----------------------------

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "wire" / "openai" / "stream-text-after-tool-result.sse"


def engine_over_h2(url: str, first_byte: float = 5.0):  # type: ignore[no-untyped-def]
    from engine_kit import make_engine

    from gtl_nb.engine import Timeouts
    from gtl_nb.providers.base import Deployment

    deployment = Deployment(name="o", type="openai", base_url=url, api_key=CANARY, models=("gpt-4o-mini",))
    return make_engine(
        {"o": deployment},
        timeouts=Timeouts(connect=2, first_byte=first_byte, idle=2),
        routing={"retry": {"max_attempts": 1}},
        http_transport=H2Transport(),
    )


def completion_request():  # type: ignore[no-untyped-def]
    from gtl_nb.protocol import CompletionRequest, Message

    return CompletionRequest(
        session_id="s1", model="gpt-4o-mini", messages=[Message(role="user", content="hi")], stream=True
    )


def recorded_text() -> str:
    import json

    text = []
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


def test_a_recorded_openai_stream_through_the_engine_over_http2():
    from gtl_nb.protocol import Done, Token

    wire = FIXTURE.read_bytes()

    async def scenario() -> None:
        async def replay(req: Request) -> None:
            req.connection.respond(req, 200, [("content-type", "text/event-stream")])
            for start in range(0, len(wire), 97):  # pieces that split events
                await req.connection.send(req, wire[start : start + 97])
            await req.connection.send(req, b"", end=True)

        server = await H2Server(replay).start()
        engine = engine_over_h2(f"http://127.0.0.1:{server.port}/v1")
        try:
            events = [event async for event in engine.stream(completion_request())]
        finally:
            await engine.aclose()
            await server.close()
        assert isinstance(events[-1], Done), events[-1]
        assert "".join(e.text for e in events if isinstance(e, Token)) == recorded_text()
        seen = server.stats.requests[0]
        assert seen.headers[b":path"] == b"/v1/chat/completions"
        assert seen.headers[b"authorization"] == f"Bearer {CANARY}".encode()

    run(scenario)


def test_the_first_byte_timeout_resets_the_stream_and_says_so():
    from gtl_nb.protocol import Error

    async def scenario() -> None:
        async def silent(req: Request) -> None:
            await asyncio.sleep(10)

        server = await H2Server(silent).start()
        engine = engine_over_h2(f"http://127.0.0.1:{server.port}/v1", first_byte=0.3)
        try:
            events = [event async for event in engine.stream(completion_request())]
            await asyncio.sleep(0.1)
        finally:
            await engine.aclose()
            await server.close()
        error = events[-1]
        assert isinstance(error, Error) and error.code == "TIMEOUT" and "first-byte" in error.message
        assert CANARY not in error.message
        assert [code for _, code in server.stats.client_resets] == [h2.errors.ErrorCodes.CANCEL]

    run(scenario)


def test_the_state_machine_forgets_closed_streams_without_walking_them_for_each_new_one():
    async def scenario() -> None:
        server = await H2Server(answer_json).start()
        transport = H2Transport()
        try:
            for _ in range(3):
                await asyncio.gather(*(fetch(transport, server.url()) for _ in range(300)))
            (connection,) = [c for cs in transport._connections.values() for c in cs]  # type: ignore[attr-defined]
            # 900 streams ended: h2 keeps at most those open at its last walk (300) and those since
            assert len(connection.h2.streams) <= 300 + module._Multiplexer.FORGET_EVERY
            assert server.stats.connections == 1
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


# -- found by review: each once a defect ---------------------------------------------------------------


def test_abandoned_unread_answers_give_their_window_back_to_the_connection():
    payload = b"q" * (200 * 1024)

    async def scenario() -> None:
        async def handler(req: Request) -> None:
            req.connection.respond(req, 200)
            if req.body == b"small":
                await req.connection.send(req, b"hello", end=True)
                return
            await req.connection.send(req, payload, end=req.body == b"whole")

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            for kind in (b"cut", b"whole") * 50:  # 100 x 200 KiB unread: six times the connection's window
                response = await transport.send(request(server.url(), kind), connect_timeout=5)
                while sum(len(piece) for piece in response._stream.body) < len(payload):  # type: ignore[attr-defined]
                    await asyncio.sleep(0.001)
                await response.aclose()
            assert (await fetch(transport, server.url(), b"small"))[2] == b"hello"
            assert server.stats.connections == 1
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_connection_that_stops_answering_is_closed_after_a_ping_and_the_next_call_opens_another(monkeypatch):
    monkeypatch.setattr(module, "PING_TIMEOUT", 0.3)

    async def scenario() -> None:
        async def handler(req: Request) -> None:
            if req.connection is server.connections[0] and req.body == b"wedge":
                req.connection.transport.pause_reading()  # type: ignore[union-attr]
                return  # and never answers, nor PINGs back
            await answer_json(req)

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            await fetch(transport, server.url())
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(transport.send(request(server.url(), b"wedge"), connect_timeout=5), 0.3)
            await asyncio.sleep(0.6)  # the PING went unanswered
            assert (await fetch(transport, server.url()))[2] == b'{"ok":true}'
            assert server.stats.connections == 2
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_server_that_never_sends_its_settings_times_out_and_is_not_waited_for_again():
    async def scenario() -> None:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            await reader.read()  # reads the preface and says nothing

        accepted: list[asyncio.StreamWriter] = []
        mute_server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = mute_server.sockets[0].getsockname()[1]
        transport = H2Transport()
        try:
            for _ in range(2):
                with pytest.raises(ConnectTimeout, match=r"did not open|no HTTP/2 settings"):
                    await transport.send(request(f"http://127.0.0.1:{port}/v1"), connect_timeout=0.3)
            assert len(accepted) == 2 and transport._open_total == 0  # type: ignore[attr-defined]
        finally:
            await transport.aclose()
            for writer in accepted:
                writer.close()
            mute_server.close()

    run(scenario)


def test_a_server_allowing_no_stream_is_waited_for_not_flooded_with_connections():
    async def scenario() -> None:
        server = await H2Server(answer_json, max_streams=0).start()
        transport = H2Transport(idle_timeout=0.2)
        try:
            with pytest.raises(ConnectTimeout):
                await transport.send(request(server.url()), connect_timeout=0.4)
            # one connection, and one more only after the first closed as idle (once there were hundreds)
            assert server.stats.connections <= 2
            await asyncio.sleep(0.4)
            assert transport._open_total == 0  # type: ignore[attr-defined]  # closed once idle
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_goaway_and_the_kept_streams_data_in_one_write_still_finish_those_streams():
    from hyperframe.frame import GoAwayFrame

    async def scenario() -> None:
        async def handler(req: Request) -> None:
            req.connection.respond(req, 200)
            await req.connection.send(req, b"first ")
            await asyncio.sleep(0.05)
            goaway = GoAwayFrame(0)
            goaway.last_stream_id = req.stream_id
            req.connection.h2.send_data(req.stream_id, b"rest", end_stream=True)
            req.connection.write_raw(goaway.serialize() + req.connection.h2.data_to_send())

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            assert (await fetch(transport, server.url()))[2] == b"first rest"
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_an_upload_waiting_for_window_goes_on_when_the_servers_settings_open_it():
    import h2.settings

    body = b"u" * 1000

    async def scenario() -> None:
        async def handler(req: Request) -> None:
            req.connection.respond(req, 200)
            await req.connection.send(req, b"%d" % len(req.body), end=True)

        server = await H2Server(handler, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100}).start()
        transport = H2Transport()
        try:
            await fetch(transport, server.url(), b"x")  # settings known: a 100-byte window per stream
            sending = asyncio.ensure_future(fetch(transport, server.url(), body))
            await asyncio.sleep(0.1)
            connection = server.connections[0]
            connection.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65_535})
            connection.flush()
            assert (await asyncio.wait_for(sending, 3))[2] == b"1000"
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_the_request_header_table_stays_small_whatever_the_server_allows():
    import h2.settings

    async def scenario() -> None:
        server = await H2Server(answer_json, settings={h2.settings.SettingCodes.HEADER_TABLE_SIZE: 2**31 - 1}).start()
        transport = H2Transport()
        try:
            for number in range(300):
                response = await transport.send(
                    request(server.url(), headers={"X-Sig": f"{number:064d}"}), connect_timeout=5
                )
                await response.aclose()
            (connection,) = [c for cs in transport._connections.values() for c in cs]  # type: ignore[attr-defined]
            assert connection.h2.encoder.header_table_size <= module.HPACK_TABLE
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_under_the_overall_bound_a_request_to_another_host_gets_the_place_an_idle_connection_frees():
    async def scenario() -> None:
        first = await H2Server(paced([b"a"], 0.2)).start()
        second = await H2Server(answer_json).start()
        transport = H2Transport(max_connections=1)
        try:
            busy = asyncio.ensure_future(fetch(transport, first.url()))
            await asyncio.sleep(0.05)
            other = await asyncio.wait_for(fetch(transport, second.url()), 3)
            assert other[2] == b'{"ok":true}' and (await busy)[2] == b"a"
        finally:
            await transport.aclose()
            await first.close()
            await second.close()

    run(scenario)


def test_closing_the_client_while_a_connection_opens_fails_its_waiters_and_frees_its_place():
    async def scenario() -> None:
        server = await H2Server(answer_json).start()
        transport = H2Transport(max_connections=1)
        try:
            waiting = asyncio.ensure_future(transport.send(request(server.url()), connect_timeout=5))
            await asyncio.sleep(0)  # the connection is opening
            await transport.aclose()
            with pytest.raises(ConnectFailed):
                await asyncio.wait_for(waiting, 2)
            assert transport._open_total == 0  # type: ignore[attr-defined]
            assert (await fetch(transport, server.url()))[2] == b'{"ok":true}'
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_draining_connection_does_not_hold_the_hosts_place():
    async def scenario() -> None:
        gate = asyncio.Event()

        async def handler(req: Request) -> None:
            if req.body == b"long":
                req.connection.respond(req, 200)
                req.connection.goaway(last_stream_id=req.stream_id)
                await gate.wait()
                await req.connection.send(req, b"done", end=True)
                return
            await answer_json(req)

        server = await H2Server(handler).start()
        transport = H2Transport(max_connections_per_host=1)
        try:
            long = await transport.send(request(server.url(), b"long"), connect_timeout=5)
            await asyncio.sleep(0.05)  # the GOAWAY arrived: that connection only finishes
            assert (await asyncio.wait_for(fetch(transport, server.url()), 3))[2] == b'{"ok":true}'
            gate.set()
            assert b"".join([piece async for piece in long.chunks()]) == b"done"
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_burst_waiting_for_an_opening_connection_is_served_in_order_of_arrival():
    async def scenario() -> None:
        server = await H2Server(paced([b"x"], 0.05), max_streams=2).start()
        transport = H2Transport()
        try:
            await asyncio.gather(*(fetch(transport, server.url(), b"%d" % n) for n in range(6)))
            first = server.connections[0]
            assert sorted(r.body for r in server.stats.requests if r.connection is first) == [b"0", b"1"]
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_an_http1_answer_to_the_preface_split_inside_its_first_word_is_still_recognised():
    async def scenario() -> None:
        server = await Http1Server(split=True).start()
        transport = H2Transport()
        try:
            assert (await fetch(transport, server.url(), b"once"))[2] == b"h1"
            assert server.prefaces == 1 and server.requests == [b"once"]
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_stalled_server_is_pinged_and_its_connection_drained_not_cut(monkeypatch):
    monkeypatch.setattr(module, "PING_TIMEOUT", 0.2)

    async def scenario() -> None:
        release = asyncio.Event()

        async def handler(req: Request) -> None:
            if req.body == b"trigger":
                req.connection.transport.pause_reading()  # type: ignore[union-attr]  # a stalled server
                await release.wait()
                req.connection.transport.resume_reading()  # type: ignore[union-attr]
                return
            if req.body == b"held":
                await release.wait()
            await answer_json(req)

        server = await H2Server(handler).start()
        transport = H2Transport()
        try:
            await fetch(transport, server.url())
            held = [asyncio.ensure_future(fetch(transport, server.url(), b"held")) for _ in range(5)]
            await asyncio.sleep(0.05)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(transport.send(request(server.url(), b"trigger"), connect_timeout=5), 0.1)
            await asyncio.sleep(0.4)  # the PING went unanswered: no new stream goes to that connection
            assert (await fetch(transport, server.url()))[2] == b'{"ok":true}'
            assert server.stats.connections == 2
            release.set()  # the stalled server answers: the streams it held finish on the drained connection
            assert [result[2] for result in await asyncio.gather(*held)] == [b'{"ok":true}'] * 5
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_closing_the_client_fails_the_requests_queued_for_a_place_and_sends_none_of_them():
    async def scenario() -> None:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # takes the preface, never sends its settings

        mute_server = await asyncio.start_server(mute, "127.0.0.1", 0)
        mute_port = mute_server.sockets[0].getsockname()[1]
        other = await H2Server(answer_json).start()
        transport = H2Transport(max_connections=1)
        try:
            opening = asyncio.ensure_future(
                transport.send(request(f"http://127.0.0.1:{mute_port}/v1"), connect_timeout=5)
            )
            await asyncio.sleep(0.05)  # its connection holds the one place, waiting for settings
            queued = asyncio.ensure_future(transport.send(request(other.url(), b"queued"), connect_timeout=5))
            await asyncio.sleep(0.05)
            await transport.aclose()
            for waiting in (opening, queued):
                with pytest.raises(ConnectFailed, match="closed"):
                    await waiting
            await asyncio.sleep(0.1)
            assert other.stats.requests == [] and other.stats.connections == 0
        finally:
            await transport.aclose()
            await other.close()
            mute_server.close()

    run(scenario)


def test_under_a_bound_requests_are_served_in_order_of_arrival():
    async def scenario() -> None:
        server = await H2Server(paced([b"x"], 0.1), max_streams=1).start()
        transport = H2Transport(max_connections_per_host=1)
        try:
            await fetch(transport, server.url(), b"warm")
            first = asyncio.ensure_future(fetch(transport, server.url(), b"A"))
            await asyncio.sleep(0.02)
            queued = [asyncio.ensure_future(fetch(transport, server.url(), name)) for name in (b"B", b"C")]
            await asyncio.sleep(0.02)
            late = asyncio.ensure_future(fetch(transport, server.url(), b"D"))
            await asyncio.gather(first, *queued, late)
            assert [r.body for r in server.stats.requests] == [b"warm", b"A", b"B", b"C", b"D"]
        finally:
            await transport.aclose()
            await server.close()

    run(scenario)


def test_a_host_remembered_as_http1_that_now_chooses_h2_by_alpn_is_called_over_http2(tmp_path: Path):
    from gtl_nb.engine.http_parts import NegotiatedHttp2
    from gtl_nb.engine.httptools_transport import HttptoolsTransport
    from gtl_nb.gateway.certs import make_dev_certificates

    certs = make_dev_certificates(tmp_path / "certs")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(certs.certificate, certs.key)
    server_side.set_alpn_protocols(["h2"])

    async def scenario() -> None:
        server = await H2Server(answer_json).start(server_side)
        offering_both = ssl.create_default_context(cafile=str(certs.ca))
        offering_both.set_alpn_protocols(["h2", "http/1.1"])
        http1 = HttptoolsTransport(ssl_context=offering_both)
        transport = H2Transport(ssl_context=ssl.create_default_context(cafile=str(certs.ca)))
        try:
            with pytest.raises(NegotiatedHttp2):  # never HTTP/1.1 bytes on an HTTP/2 connection
                await http1.send(request(server.url("https")), connect_timeout=5)
            transport._http1_hosts.add(("https", "127.0.0.1", server.port))  # type: ignore[attr-defined]
            assert (await fetch(transport, server.url("https")))[2] == b'{"ok":true}'
            assert not transport._http1_hosts  # type: ignore[attr-defined]
        finally:
            await http1.aclose()
            await transport.aclose()
            await server.close()

    run(scenario)
