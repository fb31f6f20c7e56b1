"""The engine and its HTTP runner against real loopback sockets that misbehave on purpose.

A tiny line-based test dialect keeps these tests about the runner (timeouts, dropped connections,
error bodies, failover, event-order enforcement), independent of any real provider's format.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import ClassVar

import msgspec
import pytest
from engine_kit import make_engine

from gtl_nb.engine import Engine, Timeouts
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.protocol import (
    CompletionRequest,
    Done,
    Error,
    Message,
    SessionStateMachine,
    Status,
    Token,
    Usage,
)
from gtl_nb.providers import registry
from gtl_nb.providers.base import Deployment, HttpRequest, error_event


class LineDecoder:
    """``t:<text>`` lines are tokens, ``u`` is usage, ``done`` ends (``done:<model>``: naming the model that
    served it); anything else breaks order on purpose."""

    def __init__(self, request: CompletionRequest) -> None:
        self.request = request
        self.buffer = b""
        self.ended = False

    def feed(self, chunk: bytes) -> list:
        self.buffer += chunk
        events = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            sid = self.request.session_id
            if line.startswith(b"t:"):
                events.append(Token(session_id=sid, text=line[2:].decode()))
            elif line == b"u":
                events.append(Usage(session_id=sid, tokens_in=1, tokens_out=1))
            elif line == b"done" or line.startswith(b"done:"):
                self.ended = True
                events.append(Done(session_id=sid, model=line[5:].decode() or None))
        return events

    def close(self) -> list:
        if self.ended:
            return []
        return [
            Error(
                session_id=self.request.session_id,
                code="PROVIDER_UNAVAILABLE",
                message="stream ended early",
                retryable=True,
            )
        ]


class LineDialect:
    name: ClassVar[str] = "lines"

    def build_request(self, request, deployment, *, now):
        return HttpRequest("POST", f"{deployment.base_url}/chat", {"content-type": "text/plain"}, b"hi")

    def response_decoder(self, request, deployment):
        return LineDecoder(request)

    def decode_error(self, request, deployment, status, headers, body):
        return error_event(
            request,
            deployment,
            "OVERLOADED" if status == 503 else "INVALID_REQUEST",
            body.decode(),
            http_status=status,
        )


registry.register("lines", LineDialect())


class ScriptedServer:
    """A loopback TCP server whose behaviour per connection is a function of the socket."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)  # listening before the thread starts: ready, no sleeps
        self.behaviour = behaviour
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                self.behaviour(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"


def run(engine: Engine, request: CompletionRequest) -> list:
    async def collect():
        try:
            return [event async for event in engine.stream(request)]
        finally:
            await engine.aclose()

    events = asyncio.run(collect())
    machine = SessionStateMachine(request.session_id)
    for event in events:
        machine.advance(event)
    machine.end_of_stream()
    return events


def request(**kw) -> CompletionRequest:
    return CompletionRequest(
        session_id="s1", model=kw.pop("model", "m"), messages=[Message(role="user", content="hi")], **kw
    )


CLIENTS = ("httptools", "aiohttp")
_client = {"name": CLIENTS[0]}


@pytest.fixture(autouse=True, params=CLIENTS)
def upstream_client(request: pytest.FixtureRequest) -> str:
    """Every test here runs once per upstream HTTP client (``[upstream] client``): the runner's
    behaviour must not depend on which one carries the bytes."""
    _client["name"] = request.param
    return request.param


def transport() -> object:
    from gtl_nb.engine.settings import UpstreamSettings

    return UpstreamSettings(client=_client["name"]).transport()


def engine_for(*deployments: Deployment, timeouts: Timeouts | None = None) -> Engine:
    return make_engine(
        {d.name: d for d in deployments},
        timeouts=timeouts or Timeouts(connect=2, first_byte=0.5, idle=0.3),
        routing={"retry": {"max_attempts": 1}},  # these tests are about one attempt each
        http_transport=transport(),
    )


def lines(name: str, url: str) -> Deployment:
    return Deployment(name=name, type="lines", base_url=url, models=("m",))


@pytest.fixture
def server_factory():
    servers = []

    def make(behaviour):
        server = ScriptedServer(behaviour)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_a_good_stream(server_factory):
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:hel", b"lo\nt: world\nu\ndone\n") + b"0\r\n\r\n"))
    events = run(engine_for(lines("a", server.url)), request())
    assert "".join(e.text for e in events if isinstance(e, Token)) == "hello world"
    done = events[-1]
    assert isinstance(done, Done) and done.provider == "a" and done.model == "m"
    assert done.latency_ms is not None and done.ttft_ms is not None


@pytest.mark.parametrize(
    "served",
    ["sk-canary-0123456789abcdef", "m-SK-CANARY-0123456789ABCDEF", "sk-canary-01234…cdef"],
    ids=["the-key", "in-capitals", "masked"],
)
def test_a_served_model_name_quoting_the_deployments_key_is_replaced_by_the_model_asked_for(server_factory, served):
    # whoever answers at the deployment's address chooses the served model's name; it reaches the
    # caller (a gateway's clients), the ledger and the audit log, so one quoting the key is not used
    key = "sk-canary-0123456789abcdef"
    body = f"t:hi\ndone:{served}\n".encode()
    server = server_factory(lambda c: c.sendall(HEAD + chunked(body) + b"0\r\n\r\n"))
    deployment = dataclasses.replace(lines("a", server.url), api_key=key)
    done = run(engine_for(deployment), request())[-1]
    assert isinstance(done, Done) and done.model == "m"


def test_a_served_model_name_is_kept_when_it_quotes_no_key(server_factory):
    body = b"t:hi\ndone:m-2026-01-01\n"
    server = server_factory(lambda c: c.sendall(HEAD + chunked(body) + b"0\r\n\r\n"))
    deployment = dataclasses.replace(lines("a", server.url), api_key="sk-canary-0123456789abcdef")
    done = run(engine_for(deployment), request())[-1]
    assert isinstance(done, Done) and done.model == "m-2026-01-01"


def test_connection_refused_is_provider_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    events = run(engine_for(lines("a", f"http://127.0.0.1:{port}")), request())
    error = events[-1]
    assert isinstance(error, Error) and error.code == "PROVIDER_UNAVAILABLE" and error.retryable
    assert error.provider == "a" and "cannot reach" in error.message


def test_a_gateways_client_learns_the_deployment_not_the_address_it_could_not_reach(caplog):
    """For a gateway's audience the error names the deployment only (the network behind a gateway is
    its operator's); the address and the transport's reason go to the gateway's log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = engine_for(lines("a", f"http://127.0.0.1:{port}"))
    engine.set_audience(GATEWAY)
    with caplog.at_level("WARNING", logger="gtl_nb"):
        events = run(engine, request())
    error = events[-1]
    assert isinstance(error, Error) and error.code == "PROVIDER_UNAVAILABLE" and error.retryable
    assert error.message == "cannot reach deployment 'a'" and error.provider == "a"
    assert str(port) not in repr(events)
    assert f"deployment a: cannot reach http://127.0.0.1:{port}: " in caplog.text

    engine = engine_for(lines("a", f"http://127.0.0.1:{port}"))  # the embedded client's user runs it: both
    error = run(engine, request())[-1]
    assert error.message.startswith(f"cannot reach http://127.0.0.1:{port}: ")


def test_a_gateways_model_listing_names_the_deployment_not_the_address(caplog):
    """The ``models`` query's failure is worded like a completion's (the same ``HttpRunner.unreachable``)."""
    from gtl_nb.protocol.errors import ProviderUnavailableError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    openai = Deployment(name="internal", type="openai", api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1")

    async def listing(audience: str) -> str:
        engine = engine_for(openai)
        engine.set_audience(audience)
        try:
            with pytest.raises(ProviderUnavailableError) as failed:
                await engine.list_models("internal")
            return failed.value.message
        finally:
            await engine.aclose()

    with caplog.at_level("WARNING", logger="gtl_nb"):
        assert asyncio.run(listing(GATEWAY)) == "cannot list models from deployment 'internal'"
    assert f"cannot list models from http://127.0.0.1:{port}" in caplog.text
    assert asyncio.run(listing("embedded")).startswith(f"cannot list models from http://127.0.0.1:{port}: ")


def test_no_response_hits_the_first_byte_timeout(server_factory):
    release = threading.Event()
    server = server_factory(lambda c: release.wait(5))
    try:
        events = run(engine_for(lines("a", server.url)), request())
    finally:
        release.set()
    error = events[-1]
    assert isinstance(error, Error) and error.code == "TIMEOUT" and "first-byte" in error.message


def test_a_stall_mid_stream_hits_the_idle_timeout(server_factory):
    release = threading.Event()

    def stall(conn):
        conn.sendall(HEAD + chunked(b"t:partial\n"))
        release.wait(5)

    server = server_factory(stall)
    try:
        events = run(engine_for(lines("a", server.url)), request())
    finally:
        release.set()
    error = events[-1]
    assert isinstance(error, Error) and error.code == "TIMEOUT" and "idle" in error.message


def test_a_connection_dropped_mid_stream_is_an_error_not_a_truncation(server_factory):
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:partial\n")))
    events = run(engine_for(lines("a", server.url)), request())
    assert [e.text for e in events if isinstance(e, Token)] == ["partial"]
    error = events[-1]
    assert isinstance(error, Error) and error.code == "PROVIDER_UNAVAILABLE"


def test_an_error_status_goes_through_the_dialects_error_mapping(server_factory):
    body = b"busy"
    server = server_factory(
        lambda c: c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\n" + body)
    )
    events = run(engine_for(lines("a", server.url)), request())
    error = events[-1]
    assert (
        isinstance(error, Error) and error.code == "OVERLOADED" and error.http_status == 503 and error.message == "busy"
    )


def test_failover_to_the_next_provider_discards_the_partial_answer(server_factory):
    broken = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:half an answ\n")))
    healthy = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:whole answer\nu\ndone\n") + b"0\r\n\r\n"))
    engine = engine_for(lines("a", broken.url), lines("b", healthy.url))
    events = run(engine, request(providers=["a", "b"]))
    failover = [e for e in events if isinstance(e, Status) and e.state == "failover"]
    assert len(failover) == 1
    assert failover[0].from_provider == "a" and failover[0].to_provider == "b"
    assert "PROVIDER_UNAVAILABLE" in failover[0].reason
    from gtl_nb.protocol import Transcript

    transcript = Transcript()
    for event in events:
        transcript.add(event)
    assert transcript.text == "whole answer"
    assert events[-1].provider == "b"


def test_a_non_retryable_error_does_not_fail_over(server_factory):
    bad = server_factory(lambda c: c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad"))
    good = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:x\nu\ndone\n") + b"0\r\n\r\n"))
    events = run(engine_for(lines("a", bad.url), lines("b", good.url)), request(providers=["a", "b"]))
    assert not any(isinstance(e, Status) and e.state == "failover" for e in events)
    assert isinstance(events[-1], Error) and events[-1].code == "INVALID_REQUEST"


def test_a_provider_breaking_the_event_order_ends_with_internal_error(server_factory):
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"u\nt:late token\ndone\n") + b"0\r\n\r\n"))
    events = run(engine_for(lines("a", server.url)), request())
    error = events[-1]
    assert isinstance(error, Error) and error.code == "INTERNAL" and "broke the event order" in error.message


def test_cancelling_closes_the_upstream_response(server_factory):
    closed = threading.Event()

    def slow(conn):
        conn.sendall(HEAD + chunked(b"t:first\n"))
        conn.settimeout(5)
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        closed.set()

    server = server_factory(slow)
    engine = engine_for(lines("a", server.url), timeouts=Timeouts(connect=2, first_byte=5, idle=5))

    async def main():
        seen = []

        async def consume():
            async for event in engine.stream(request()):
                seen.append(event)

        task = asyncio.ensure_future(consume())
        while not any(isinstance(e, Token) for e in seen):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.aclose()

    asyncio.run(main())
    assert closed.wait(5), "the upstream connection was left open after cancellation"


def test_an_http_date_retry_after_reaches_the_dialect_as_seconds(server_factory):
    import email.utils
    import time as _time

    when = email.utils.formatdate(_time.time() + 120, usegmt=True)
    seen = {}

    class Capturing(LineDialect):
        def decode_error(self, request, deployment, status, headers, body):
            seen.update(headers)
            return super().decode_error(request, deployment, status, headers, body)

    registry.register("lines-capture", Capturing())
    server = server_factory(
        lambda c: c.sendall(f"HTTP/1.1 503 Busy\r\nRetry-After: {when}\r\nContent-Length: 0\r\n\r\n".encode())
    )
    deployment = Deployment(name="a", type="lines-capture", base_url=server.url, models=("m",))
    run(engine_for(deployment), request())
    assert 100 < float(seen["retry-after"]) <= 121


def test_a_decoder_that_raises_ends_the_session_with_internal_error(server_factory, tmp_path):
    from gtl_nb.engine.ledger import Ledger

    class Exploding(LineDialect):
        def response_decoder(self, request, deployment):
            decoder = LineDecoder(request)

            def feed(chunk):
                raise ValueError("decoder bug")

            decoder.feed = feed
            return decoder

    registry.register("lines-exploding", Exploding())
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:x\n") + b"0\r\n\r\n"))
    ledger = Ledger(tmp_path / "l.sqlite3")
    engine = make_engine(
        {"a": Deployment(name="a", type="lines-exploding", base_url=server.url, models=("m",))},
        ledger=ledger,
        routing={"retry": {"max_attempts": 1}},
        http_transport=transport(),
    )
    events = run(engine, request())
    error = events[-1]
    assert isinstance(error, Error) and error.code == "INTERNAL" and "decoder bug" in error.message
    row = ledger.to_dataframe().iloc[0]
    assert row["status"] == "error" and row["error_code"] == "INTERNAL"


def test_a_bug_while_choosing_the_source_ends_the_session_with_one_internal_error(tmp_path, caplog):
    # ``_source`` runs after ``queued`` is out and before any batch of the answer: a bug there (here in
    # ordering two targets) must still end the session once, with its row, and be logged with its trace
    from gtl_nb.engine.ledger import Ledger

    ledger = Ledger(tmp_path / "l.sqlite3")
    deployments = {name: lines(name, "http://127.0.0.1:9") for name in ("a", "b")}
    engine = make_engine(deployments, ledger=ledger, http_transport=transport())

    async def broken_ordering(request, targets):
        raise RuntimeError("ordering bug")

    engine._ordered = broken_ordering
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        events = run(engine, request(providers=["a", "b"]))
    assert [type(e).__name__ for e in events] == ["Status", "Error"]
    assert events[0].state == "queued"
    assert events[-1].code == "INTERNAL" and "ordering bug" in events[-1].message
    assert any("failed inside the engine" in r.getMessage() and r.exc_info for r in caplog.records)
    rows = ledger.to_dataframe()
    assert len(rows) == 1 and rows.iloc[0]["status"] == "error" and rows.iloc[0]["error_code"] == "INTERNAL"


def test_a_runaway_response_body_is_cut_off(server_factory):
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:" + b"x" * 5000) + b"0\r\n\r\n"))
    engine = make_engine(
        {"a": lines("a", server.url)},
        routing={"retry": {"max_attempts": 1}},
        max_response_bytes=1024,
        http_transport=transport(),
    )
    events = run(engine, request())
    error = events[-1]
    assert isinstance(error, Error) and "larger than 1024 bytes" in error.message


# -- one timer per stream (``_ReadDeadline``): moved on by each read, re-armed when it fires early ----


def test_an_idle_timeout_shorter_than_the_first_byte_one_still_holds(server_factory):
    # the timer armed for the first byte (5 s) must be brought forward for the idle timeout (0.3 s)
    release = threading.Event()

    def stall_after_one(conn):
        conn.sendall(HEAD + chunked(b"t:first\n"))
        release.wait(5)

    server = server_factory(stall_after_one)
    timeouts = Timeouts(connect=2, first_byte=5, idle=0.3)
    try:
        started = time.monotonic()
        events = run(engine_for(lines("a", server.url), timeouts=timeouts), request())
        took = time.monotonic() - started
    finally:
        release.set()
    error = events[-1]
    assert isinstance(error, Error) and error.code == "TIMEOUT" and "idle timeout (0.3 s)" in error.message
    assert took < 3  # the idle timeout, not the first-byte one
    assert [e.text for e in events if isinstance(e, Token)] == ["first"]


def test_a_stream_that_keeps_coming_is_never_cut_by_the_timer(server_factory):
    # chunks every 0.1 s for well over the idle timeout: the timer fires at due times already passed
    # by later reads, re-arms itself, and never cuts the stream
    def trickle(conn):
        conn.sendall(HEAD)
        for index in range(12):
            conn.sendall(chunked(b"t:%d\n" % index))
            time.sleep(0.1)
        conn.sendall(chunked(b"done\n") + b"0\r\n\r\n")

    server = server_factory(trickle)
    events = run(engine_for(lines("a", server.url), timeouts=Timeouts(connect=2, first_byte=2, idle=0.3)), request())
    assert isinstance(events[-1], Done), events[-1]
    assert [e.text for e in events if isinstance(e, Token)] == [str(index) for index in range(12)]


def test_a_slow_reader_between_reads_is_not_timed(server_factory):
    # the whole answer arrives at once; the consumer holds the stream longer than the idle timeout
    # after each token: only the reads are timed, not the consumer
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:a\n", b"t:b\n", b"t:c\n", b"done\n") + b"0\r\n\r\n"))
    engine = engine_for(lines("a", server.url), timeouts=Timeouts(connect=2, first_byte=2, idle=0.2))

    async def slowly() -> list:
        events = []
        try:
            async for event in engine.stream(request()):
                events.append(event)
                if isinstance(event, Token):
                    await asyncio.sleep(0.35)
        finally:
            await engine.aclose()
        return events

    events = asyncio.run(slowly())
    assert isinstance(events[-1], Done), events[-1]
    assert [e.text for e in events if isinstance(e, Token)] == ["a", "b", "c"]


# -- hardening: one first-byte deadline, and requests that cannot be put on the wire --------------


def test_first_byte_is_one_deadline_for_headers_and_the_first_chunk(server_factory):
    # headers at 0.3 s and the first chunk 0.3 s later: each alone is under first_byte = 0.5 s,
    # together they are over it
    release = threading.Event()

    def slow_head_then_slow_body(conn):
        release.wait(0.3)
        conn.sendall(HEAD)
        release.wait(0.3)
        conn.sendall(chunked(b"t:late\ndone\n") + b"0\r\n\r\n")

    server = server_factory(slow_head_then_slow_body)
    try:
        events = run(
            engine_for(lines("a", server.url), timeouts=Timeouts(connect=2, first_byte=0.5, idle=5)), request()
        )
    finally:
        release.set()
    error = events[-1]
    assert isinstance(error, Error) and error.code == "TIMEOUT", events
    assert "first-byte timeout (0.5 s)" in error.message
    assert not [e for e in events if isinstance(e, Token)]


CANARY = "sk-canary-0123456789abcdef"


class KeyedLineDialect(LineDialect):
    """The line dialect, sending the deployment's key as a bearer token (as real dialects do)."""

    name: ClassVar[str] = "keyed-lines"

    def build_request(self, request, deployment, *, now):
        headers = {"authorization": f"Bearer {deployment.api_key}"}
        return HttpRequest("POST", f"{deployment.base_url}/chat", headers, b"hi")


registry.register("keyed-lines", KeyedLineDialect())


@pytest.mark.parametrize("key", [CANARY + "\n", CANARY + "\r\nx-injected: 1", CANARY + "é"])
def test_a_key_that_cannot_go_in_a_header_is_a_configuration_fault_that_never_quotes_it(server_factory, key, caplog):
    # keys are validated when configured; this is the runner's own line of defence for keys that
    # reach it another way (a plugin's configuration, a deployment built by hand)
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"done\n") + b"0\r\n\r\n"))
    deployment = Deployment(name="a", type="keyed-lines", base_url=server.url, models=("m",), api_key=key)
    with caplog.at_level("DEBUG", logger="gtl_nb"):
        events = run(engine_for(deployment), request())
    error = events[-1]
    assert isinstance(error, Error) and error.code == "INVALID_REQUEST" and not error.retryable, events
    assert "cannot be sent" in error.message and "credentials" in error.message
    assert "canary" not in repr(events) and "canary" not in caplog.text


@pytest.mark.parametrize("name", ["x-key:injected", "bad name", "", "x-ü"])
def test_a_header_name_no_http_peer_takes_is_refused_before_sending(server_factory, name):
    from gtl_nb.engine.transport import UnsendableRequest
    from gtl_nb.providers.base import HttpRequest

    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"done\n") + b"0\r\n\r\n"))

    async def send() -> None:
        client = transport()
        try:
            await client.send(HttpRequest("POST", server.url + "/x", {name: "v"}, b"{}"), connect_timeout=5)
        finally:
            await client.aclose()

    with pytest.raises(UnsendableRequest, match="header name"):
        asyncio.run(send())


class _CloseFails:
    """An upstream transport whose responses read fine and fail when closed."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    async def send(self, request, *, connect_timeout):  # type: ignore[no-untyped-def]
        response = await self.inner.send(request, connect_timeout=connect_timeout)  # type: ignore[attr-defined]

        class Response:
            status, headers = response.status, response.headers

            def chunks(self):  # type: ignore[no-untyped-def]
                return response.chunks()

            async def aclose(self) -> None:
                await response.aclose()
                raise OSError("the socket could not be closed")

        return Response()

    async def aclose(self) -> None:
        await self.inner.aclose()  # type: ignore[attr-defined]


def test_a_response_that_fails_to_close_after_its_answer_leaves_the_answer_done(server_factory, caplog):
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"hello\n", b"done\n") + b"0\r\n\r\n"))
    engine = make_engine(
        {"a": lines("a", server.url)},
        timeouts=Timeouts(connect=2, first_byte=0.5, idle=0.3),
        routing={"retry": {"max_attempts": 1}},
        http_transport=_CloseFails(transport()),
    )
    with caplog.at_level("ERROR", logger="gtl_nb"):
        events = run(engine, request())
    assert isinstance(events[-1], Done), events
    assert [type(e) for e in events].count(Done) == 1 and not any(isinstance(e, Error) for e in events)
    assert "closing the response" in caplog.text


def _batches(engine: Engine, message: CompletionRequest, **kwargs) -> list[list]:
    async def collect():
        try:
            return [list(batch) async for batch in engine.stream_batches(message, **kwargs)]
        finally:
            await engine.aclose()

    return asyncio.run(collect())


def test_a_burst_read_at_once_goes_through_the_engine_as_one_batch_and_the_end_comes_alone(server_factory):
    def behaviour(conn: socket.socket) -> None:
        conn.sendall(HEAD + chunked(b"t:a\nt:b\nt:c\nu\n"))  # one read: four events
        time.sleep(0.05)
        conn.sendall(chunked(b"done\n") + b"0\r\n\r\n")

    server = server_factory(behaviour)
    batches = _batches(engine_for(lines("a", server.url)), request())
    assert all(batches), batches  # never an empty batch
    kinds = [[type(event).__name__ for event in batch] for batch in batches]
    assert kinds == [["Status"], ["Status"], ["Token", "Token", "Token", "Usage"], ["Done"]], kinds
    assert [batch[0].state for batch in batches[:2]] == ["queued", "streaming"]


def _runner_batches(engine: Engine, deployment: Deployment) -> list[list[str]]:
    """The kinds of events in each batch ``HttpRunner.run`` hands the engine, for one request."""

    async def collect():
        try:
            return [
                [type(e).__name__ for e in batch]
                async for batch in engine.http.run(LineDialect(), request(), deployment)
            ]
        finally:
            await engine.aclose()

    return asyncio.run(collect())


def test_done_read_with_the_bodys_end_goes_down_with_that_reads_events(server_factory, upstream_client):
    # the whole answer in one read, the body's end included (a fast upstream; a stream's last read):
    # one step, not a second read to learn the body ended (an aiohttp body cannot say so: two steps)
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:a\nt:b\nu\ndone\n") + b"0\r\n\r\n"))
    deployment = lines("a", server.url)
    batches = _runner_batches(engine_for(deployment), deployment)
    if upstream_client == "httptools":
        assert batches == [["Token", "Token", "Usage", "Done"]]
    else:
        assert batches == [["Token", "Token", "Usage"], ["Done"]]
    # the session's contract is unchanged: the end alone in the last batch
    kinds = [[type(event).__name__ for event in batch] for batch in _batches(engine_for(deployment), request())]
    assert kinds == [["Status"], ["Status"], ["Token", "Token", "Usage"], ["Done"]], kinds


def test_done_before_the_body_ends_waits_for_the_end(server_factory):
    first_read = threading.Event()  # the body's end is sent only once the runner handed on what came before it

    def behaviour(conn: socket.socket) -> None:
        conn.sendall(HEAD + chunked(b"t:a\ndone\n"))
        first_read.wait(10)
        conn.sendall(b"0\r\n\r\n")

    server = server_factory(behaviour)
    deployment = lines("a", server.url)
    engine = engine_for(deployment)

    async def collect():
        batches = []
        try:
            async for batch in engine.http.run(LineDialect(), request(), deployment):
                batches.append([type(event).__name__ for event in batch])
                first_read.set()
            return batches
        finally:
            await engine.aclose()

    assert asyncio.run(collect()) == [["Token"], ["Done"]]


def test_batched_and_one_by_one_streams_are_the_same_events(server_factory):
    body = HEAD + chunked(b"t:a\nt:b\n", b"u\ndone\n") + b"0\r\n\r\n"
    server = server_factory(lambda c: c.sendall(body))
    flat = [event for batch in _batches(engine_for(lines("a", server.url)), request()) for event in batch]
    one_by_one = run(engine_for(lines("a", server.url)), request())
    strip = [msgspec.structs.replace(e, ttft_ms=None, latency_ms=None) if isinstance(e, Done) else e for e in flat]
    expected = [
        msgspec.structs.replace(e, ttft_ms=None, latency_ms=None) if isinstance(e, Done) else e for e in one_by_one
    ]
    assert strip == expected


def test_the_events_read_with_the_end_reach_the_caller_before_the_row_is_completed(server_factory):
    """The end of a stream often arrives in the same read as its last tokens; the tokens are handed on
    before the engine awaits the row's completion, so a cancel during it loses none of them."""
    server = server_factory(lambda c: c.sendall(HEAD + chunked(b"t:a\nt:b\nu\ndone\n") + b"0\r\n\r\n"))
    engine = engine_for(lines("a", server.url))
    received: list = []
    seen_at_finish: list[list[str]] = []
    engine.hooks.subscribe(
        lambda event: (
            seen_at_finish.append([type(e).__name__ for e in received])
            if type(event).__name__ == "RequestFinished"
            else None
        )
    )

    async def collect():
        try:
            async for batch in engine.stream_batches(request()):
                received.extend(batch)
        finally:
            await engine.aclose()

    asyncio.run(collect())
    assert seen_at_finish == [["Status", "Status", "Token", "Token", "Usage"]]
    assert isinstance(received[-1], Done)


def test_the_answer_read_with_done_reaches_the_caller_before_the_breaker_and_cache_bookkeeping():
    """A local provider's answer arrives in one batch with its ``done``; a cancel while the success
    is recorded (a shared breaker store that is slow) must not lose the answer, and the row keeps its
    usage."""
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.hooks import RequestFinished
    from gtl_nb.engine.session import run_session

    engine = make_engine({"e": Deployment(name="e", type="echo", models=("m",))})
    breakers = engine.stores.breakers
    record_success = breakers.record_success

    async def slowly(name: str):
        await asyncio.sleep(0.5)
        return await record_success(name)

    breakers.record_success = slowly
    finished: list[RequestFinished] = []
    engine.hooks.subscribe(lambda event: finished.append(event) if isinstance(event, RequestFinished) else None)
    sent: list = []
    message = CompletionRequest(session_id="s1", model="e:m", messages=[Message(role="user", content="hello there")])

    async def main() -> None:
        session = asyncio.ensure_future(run_session(engine, message, RequestContext(principal="p"), sent.append))
        await asyncio.sleep(0.1)
        session.cancel()
        with pytest.raises(asyncio.CancelledError):
            await session
        await engine.aclose()

    asyncio.run(main())
    kinds = [type(event).__name__ for event in sent]
    assert kinds.count("Token") > 1 and "Usage" in kinds, kinds
    assert isinstance(sent[-1], Error) and sent[-1].code == "CANCELLED"
    assert [(row.status, row.tokens_out is not None) for row in finished] == [("cancelled", True)]


class _DoneMidRead:
    """A decoder written to the protocol alone: ``done`` in the middle of one read, then more, and its
    replay state completed only by a later read (``pd``)."""

    def __init__(self, request: CompletionRequest) -> None:
        self.request = request
        self.provider_data = None

    def feed(self, chunk: bytes) -> list:
        sid = self.request.session_id
        events: list = []
        for line in chunk.decode().splitlines():
            if line.startswith("t:"):
                events.append(Token(session_id=sid, text=line[2:]))
            elif line == "done":
                events.append(Done(session_id=sid))
            elif line == "pd":
                self.provider_data = {"sig": "x"}
        return events

    def close(self) -> list:
        return []


class _DoneMidReadDialect(LineDialect):
    name: ClassVar[str] = "done-mid-read"

    def response_decoder(self, request, deployment):
        return _DoneMidRead(request)


registry.register("done-mid-read", _DoneMidReadDialect())


def test_done_in_the_middle_of_a_read_is_still_held_to_the_end_of_the_body(server_factory, caplog):
    def behaviour(conn: socket.socket) -> None:
        conn.sendall(HEAD + chunked(b"t:a\ndone\nt:late\n"))
        time.sleep(0.05)
        conn.sendall(chunked(b"pd\n") + b"0\r\n\r\n")

    server = server_factory(behaviour)
    deployment = Deployment(name="a", type="done-mid-read", base_url=server.url, models=("m",))
    with caplog.at_level("WARNING", logger="gtl_nb"):
        events = run(engine_for(deployment), request())
    assert [type(e).__name__ for e in events] == ["Status", "Status", "Token", "Done"]
    assert events[-1].provider_data == {"sig": "x"}  # complete only once the body ended
    assert "Token after done ignored" in caplog.text


class _ChattyAfterDone:
    """A local provider whose generator goes on, without a pause, after its ``done``."""

    def generate(self, request: CompletionRequest):
        sid = request.session_id
        yield 0.0, Token(session_id=sid, text="all")
        yield 0.0, Done(session_id=sid)
        while True:  # never ends: nothing after done may be read
            yield 0.0, Token(session_id=sid, text="more")


registry.register("chatty-after-done", _ChattyAfterDone())


def test_a_local_providers_events_after_its_done_are_never_read():
    engine = make_engine({"c": Deployment(name="c", type="chatty-after-done", models=("m",))})
    events = run(engine, request(model="c:m"))
    assert [type(e).__name__ for e in events] == ["Status", "Status", "Token", "Done"]


def test_nothing_left_at_the_end_of_a_body_holds_nothing_back() -> None:
    from gtl_nb.engine.http import _held_back
    from gtl_nb.providers.base import Deployment

    assert _held_back([], None, Deployment(name="d", type="openai", api_key="k")) == (None, [])
