"""GTL over QUIC end to end: a real ``serve_quic`` on 127.0.0.1 (UDP port 0, TLS 1.3 with a ``gtl certs``
CA), the OpenAI simulator upstream, clients through ``gtl_nb.connect("quic://...")`` and raw aioquic
peers for what a well-behaved client never does (garbage, no hello, a reader that stops reading)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.connection import QuicConnection

import gtl_nb
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.certs import DevCertificates, make_dev_certificates
from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.listeners import ListenerSettings, Shutdown, TlsFiles
from gtl_nb.gateway.quic import serve_quic
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol import (
    AuthenticationError,
    Cancel,
    CompletionRequest,
    Done,
    Error,
    GTLConnection,
    Message,
    Token,
)
from gtl_nb.protocol.codec import decode
from gtl_nb.protocol.errors import (
    ConfigurationError,
    FrameTooLargeError,
    InvalidRequestError,
    OverloadedError,
    ProviderUnavailableError,
)
from gtl_nb.transports.quic.backend import parse_address
from gtl_nb.transports.quic.config import client_configuration
from gtl_nb.transports.quic.peer import QuicPeer
from gtl_nb.transports.quic.wire import CLOSE_CODES, STREAM_CANCEL, frame
from tests.gateway.conftest import LONG_PROMPT, MODEL, SIM_KEY, base_providers, gateway_tables, write_toml
from tests.ledger_wait import rows_when

REPO = Path(__file__).resolve().parents[2]


# -- an in-process gateway -------------------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    """A ``serve_quic`` running on a loop thread of this process."""

    url: str
    loop: asyncio.AbstractEventLoop
    shutdown: Shutdown
    thread: threading.Thread

    def begin_shutdown(self) -> None:
        async def begin() -> None:
            self.shutdown.begin()

        asyncio.run_coroutine_threadsafe(begin(), self.loop).result(5)

    def stopped(self, timeout: float) -> bool:
        """Whether ``serve_quic`` returned (and the engine closed) within ``timeout`` seconds."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


@contextmanager
def quic_gateway(
    config: Path, certs: DevCertificates, *, token: str | None = None, grace: float = 30.0, **limits: Any
) -> Iterator[Served]:
    """``serve_quic`` with ``config``'s engine and limits (``limits`` overrides some); on exit it has stopped."""
    settings = load_settings(config=str(config))
    options = GatewaySettings.from_settings(settings)
    environ = {"GTL_NB_DEV_TOKEN": token} if token else {}
    authenticate = DevAuth.from_settings("token" if token else "none", principal="quic-test", environ=environ)
    listener = ListenerSettings("quic", tls=TlsFiles(certs.certificate, certs.key))
    shutdown = Shutdown(grace=grace)
    loop = asyncio.new_event_loop()
    urls: list[str] = []
    ready = threading.Event()
    task: list[asyncio.Task[None]] = []

    async def main() -> None:
        task.append(asyncio.current_task())  # type: ignore[arg-type]
        engine = build_engine(settings, audience=GATEWAY)  # as gateway.server builds it

        def on_ready(url: str) -> None:
            urls.append(url)
            ready.set()

        try:
            await serve_quic(
                engine,
                listener,
                authenticate=authenticate,
                limits=dataclasses.replace(options.limits, **limits),
                shutdown=shutdown,
                ready=on_ready,
            )
        finally:
            await engine.aclose()

    def run() -> None:
        with suppress(asyncio.CancelledError):
            loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    served = Served(urls[0], loop, shutdown, thread)
    try:
        yield served
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(task[0].cancel)
        thread.join(15)
        loop.close()


@pytest.fixture(scope="module")
def quic_config(tmp_path_factory: pytest.TempPathFactory, sims: Any) -> Path:
    """The shared deployments (a 64 KiB frame limit) and ``paced``: echo at 20 ms a token, for sessions that
    must overlap (the simulator serves about ten streams at once)."""
    directory = tmp_path_factory.mktemp("quic")
    providers = {**base_providers(sims), "echo": {"type": "echo"}, "paced": {"type": "echo"}}
    tables = gateway_tables(providers, directory / "ledger.sqlite")
    tables["providers.paced.options"] = {"pace": 0.02}
    return write_toml(directory / "gtl.toml", tables)


@pytest.fixture(scope="module")
def served(quic_config: Path, certs: DevCertificates) -> Iterator[Served]:
    with quic_gateway(quic_config, certs) as gateway:
        yield gateway


def connect(url: str, certs: DevCertificates, **kwargs: Any) -> gtl_nb.Client:
    return gtl_nb.connect(url, verify=str(certs.ca), **kwargs)


def first_token(stream: Iterator[Any]) -> None:
    for event in stream:
        if isinstance(event, Token):
            return
    raise AssertionError("the stream ended before its first token")


def rows(ledger: Path, session_id: str) -> list[dict[str, Any]]:
    return rows_when(ledger, session_id=session_id)


# -- a raw QUIC peer ----------------------------------------------------------------------------------------


class Collector:
    """A stream listener that keeps what arrives (``changed`` is set on every arrival)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = asyncio.Event()
        self.changed = asyncio.Event()

    def data_received(self, data: bytes, end: bool) -> None:
        self.data += data
        self.changed.set()
        if end:
            self.ended.set()

    def reset_received(self, code: int) -> None:
        self.ended.set()

    def stop_received(self, code: int) -> None:
        pass

    def frames(self) -> list[Any]:
        return [decode(line) for line in bytes(self.data).split(b"\n") if line]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


class HoldingConnection(QuicConnection):
    """A client connection that grants no more flow-control credit on the streams in ``held``: a
    reader that stopped reading them (aioquic itself grants credit as data arrives)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held: set[int] = set()

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if stream.stream_id not in self.held:
            super()._write_stream_limits(builder, space, stream)


@asynccontextmanager
async def raw_peer(
    url: str, certs: DevCertificates, *, hello: bool = True, max_stream_data: int | None = None
) -> AsyncIterator[tuple[QuicPeer, HoldingConnection]]:
    """A QUIC connection to the gateway; with ``hello`` the control stream's exchange is done."""
    host, port = parse_address(url)
    configuration = client_configuration(host, str(certs.ca))
    if max_stream_data is not None:
        configuration.max_stream_data = max_stream_data
    quic = HoldingConnection(configuration=configuration)
    transport, peer = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicPeer(quic), remote_addr=(host, port)
    )
    try:
        peer.connect((host, port))
        await asyncio.wait_for(asyncio.shield(peer.handshake), 5)
        control = Collector()
        control_id = peer.open_stream(control)
        if hello:
            peer.write(control_id, GTLConnection("client").data_to_send())
            await control.wait_until(lambda: b'"provider":""' in control.data)
        yield peer, quic
    finally:
        peer.close()
        transport.close()


def open_raw(peer: QuicPeer, data: bytes, *, end: bool = False) -> Collector:
    collector = Collector()
    peer.write(peer.open_stream(collector), data, end=end)
    return collector


def request(model: str, prompt: str, session_id: str) -> CompletionRequest:
    return CompletionRequest(session_id=session_id, model=model, messages=[Message(role="user", content=prompt)])


# -- through connect() ----------------------------------------------------------------------------------------


def test_streaming_text_through_connect(served, certs):
    with connect(served.url, certs) as client:
        assert client.complete("echo", "Hello over QUIC").text.count("Hello over QUIC") == 1
        tokens = [event.text for event in client.stream(f"openai:{MODEL}", "Say something") if isinstance(event, Token)]
        assert len(tokens) > 1
        assert client.complete(f"openai:{MODEL}", "Say something").text == "".join(tokens)
        assert "openai" in [info.provider for info in client.providers()]
        with pytest.raises(AuthenticationError):  # the provider refused its key: the session's own error
            client.complete(f"badkey:{MODEL}", "refused")


def test_twenty_concurrent_sessions_share_one_connection(served, certs):
    with connect(served.url, certs) as client:
        client.complete("echo", "open the connection")
        link = client.backend.link
        order: list[tuple[str, int]] = []

        async def one(i: int) -> None:
            first = True
            async for event in client.astream("paced:echo", f"Say something about {i}"):
                if isinstance(event, Token) and first:
                    order.append(("first token", i))
                    first = False
                elif isinstance(event, Done):
                    order.append(("done", i))

        async def main() -> None:
            await asyncio.gather(*(one(i) for i in range(20)))

        asyncio.run(main())
        assert client.backend.link is link  # one QUIC connection carried them all
    assert sorted(i for kind, i in order if kind == "done") == list(range(20))
    first_done = [kind for kind, _ in order].index("done")
    assert first_done == 20  # every session was streaming before any of them ended


def test_a_cancel_or_a_reset_stream_reaches_the_upstream(write_config, sims, relay_to, certs, tmp_path):
    ledger = tmp_path / "rows.sqlite"
    relays = [relay_to(sims.slow), relay_to(sims.slow)]
    providers = {
        f"relayed{i}": {"type": "openai", "api_key": SIM_KEY, "base_url": relay.url + "/v1"}
        for i, relay in enumerate(relays)
    }
    with quic_gateway(write_config(providers=providers, ledger=ledger), certs) as gateway:
        with connect(gateway.url, certs) as client:
            stream = client.stream(f"relayed0:{MODEL}", LONG_PROMPT)
            first_token(stream)
            stream.close()  # a cancel frame on the session's stream
            error = stream.transcript.error
            assert error is not None and (error.code, error.message) == ("CANCELLED", "cancelled by the client")
            assert relays[0].cut.wait(5), "the gateway left the upstream response open after the cancel"
            assert client.complete("echo", "still connected").text.count("still connected") == 1

        async def reset_one() -> None:
            async with raw_peer(gateway.url, certs) as (peer, _quic):
                held = Collector()
                stream_id = peer.open_stream(held)
                peer.write(stream_id, frame(request(f"relayed1:{MODEL}", LONG_PROMPT, "reset")))
                await held.wait_until(lambda: b'"type":"token"' in held.data)
                peer.reset(stream_id, STREAM_CANCEL)  # no cancel frame: the reset alone cancels
                assert await asyncio.to_thread(relays[1].cut.wait, 5)

        asyncio.run(reset_one())
    for session_id in (stream.session_id, "reset"):
        (row,) = rows(ledger, session_id)
        assert (row["status"], row["error_code"]) == ("cancelled", "CANCELLED")


def test_the_dev_token_is_checked(quic_config, certs):
    with quic_gateway(quic_config, certs, token="right-token") as gateway:
        with pytest.raises(AuthenticationError) as caught:
            connect(gateway.url, certs, token="wrong-token")
        assert "wrong-token" not in str(caught.value)
        with pytest.raises(AuthenticationError):
            connect(gateway.url, certs)
        with connect(gateway.url, certs, token="right-token") as client:
            assert client.complete("echo", "let in").text.count("let in") == 1


def test_a_certificate_from_another_ca_is_refused(served, tmp_path):
    other = make_dev_certificates(tmp_path / "other")
    with pytest.raises(ConfigurationError) as caught:  # as on every TLS transport: retrying cannot help
        gtl_nb.connect(served.url, verify=str(other.ca))
    assert "certificate" in caught.value.message and "unable to get local issuer certificate" in caught.value.message
    with gtl_nb.connect(served.url, verify=False) as client:  # a throw-away test's choice
        assert client.complete("echo", "unverified").text


def test_an_oversized_request_is_refused_and_the_connection_carries_on(served, certs):
    with connect(served.url, certs) as client:
        client.complete("echo", "first")
        link = client.backend.link
        with pytest.raises(InvalidRequestError):
            client.complete("echo", "x" * (80 * 1024))  # the gateway's limit is 64 KiB
        assert client.complete("echo", "after").text.count("after") == 1
        assert client.backend.link is link


def test_session_and_connection_limits(quic_config, certs):
    limits = {"max_sessions_per_connection": 1, "max_connections_per_address": 1}
    with quic_gateway(quic_config, certs, **limits) as gateway, connect(gateway.url, certs) as client:
        stream = client.stream("paced:echo", "this session holds the one slot of the connection, " * 3)
        first_token(stream)
        with pytest.raises(OverloadedError) as caught:
            client.complete("echo", "one too many")
        assert caught.value.retryable
        with pytest.raises(OverloadedError):
            connect(gateway.url, certs)  # a second connection from 127.0.0.1
        assert isinstance(list(stream)[-1], Done)


# -- raw peers ----------------------------------------------------------------------------------------------


def test_a_slow_reader_holds_its_own_session_only(served, certs, quic_config):
    ledger = quic_config.parent / "ledger.sqlite"
    window = 16 * 1024
    big = request("echo", "word " * 8000, "held")  # echoed back as about 0.5 MB of token frames
    beside = request("paced:echo", "a session beside the held one, " * 4, "beside")

    async def main() -> None:
        async with raw_peer(served.url, certs, max_stream_data=window) as (peer, quic):
            held = Collector()
            held_id = peer.open_stream(held)
            quic.held.add(held_id)  # this reader never reads beyond its first window
            peer.write(held_id, frame(big))
            other = open_raw(peer, frame(beside))
            await asyncio.wait_for(other.ended.wait(), 20)
            assert isinstance(other.frames()[-1], Done)  # it streamed for a second beside the held session
            assert 0 < len(held.data) <= window and not held.ended.is_set()
            # the held session's engine stopped pulling: without back-pressure echo would have finished long ago
            assert [row["status"] for row in rows_when(ledger, session_id="held", settled=False)] == ["started"]
            quic.held.discard(held_id)
            peer.transmit()
            await asyncio.wait_for(held.ended.wait(), 20)
            events = held.frames()
            assert isinstance(events[-1], Done)
            assert "".join(event.text for event in events if isinstance(event, Token)).count("word") >= 8000

    asyncio.run(main())


@pytest.mark.parametrize("code", ["INTERNAL", "RATE_LIMIT", "PROVIDER_UNAVAILABLE"])
def test_a_clients_error_frame_on_the_control_stream_cancels_its_sessions(served, certs, quic_config, code):
    # the client going away, whatever code it writes: its running session's row says cancelled, never
    # that the gateway or its provider failed
    ledger = quic_config.parent / "ledger.sqlite"
    sid = f"gave-up-{code}"

    async def main() -> None:
        async with raw_peer(served.url, certs) as (peer, _quic):
            session = open_raw(peer, frame(request("paced:echo", "a session the client gives up on, " * 8, sid)))
            await session.wait_until(lambda: any(isinstance(each, Token) for each in session.frames()))
            words = "client-chosen words\n\x1b[31mforged"
            peer.write(0, frame(Error(session_id="", code=code, message=words)))  # the control stream
            await asyncio.wait_for(session.ended.wait(), 20)

    asyncio.run(main())
    assert [(row["status"], row["error_code"]) for row in rows_when(ledger, session_id=sid)] == [
        ("cancelled", "CANCELLED")
    ]


def test_bad_streams_get_an_error_on_their_own_stream_and_the_third_closes_the_connection(served, certs):
    async def main() -> None:
        async with raw_peer(served.url, certs) as (peer, _quic):
            good = open_raw(peer, frame(request(f"openai:{MODEL}", "Say something", "good")))
            garbage = open_raw(peer, b"this is not a frame\n")
            await asyncio.wait_for(garbage.ended.wait(), 5)
            assert [(type(e), e.code) for e in garbage.frames()] == [(Error, "INVALID_REQUEST")]
            await asyncio.wait_for(good.ended.wait(), 10)
            assert isinstance(good.frames()[-1], Done)  # the good stream was not disturbed
            cancel_first = open_raw(peer, frame(Cancel(session_id="early")))
            await asyncio.wait_for(cancel_first.ended.wait(), 5)
            assert [e.code for e in cancel_first.frames()] == ["INVALID_REQUEST"]
            open_raw(peer, b'{"type": "completion_request", "session_id": "cut"', end=True)  # the third
            await asyncio.wait_for(peer.wait_closed(), 5)
            assert peer.terminated is not None and peer.terminated.error_code == CLOSE_CODES["INVALID_REQUEST"]

    asyncio.run(main())


@pytest.mark.parametrize("mistake", ["a second request", "a cancel for another session", "garbage after the request"])
def test_a_bad_stream_ends_its_running_session_invalid_request_on_the_wire_and_in_its_row(
    write_config, certs, tmp_path, mistake
):
    """A stream whose session runs and that then carries something else than one request (then one cancel):
    its session ends ``INVALID_REQUEST`` — on the wire and in its ledger row, as on WebSocket and gRPC."""
    ledger = tmp_path / "rows.sqlite"
    sid = "bad-" + mistake.replace(" ", "-")
    first = frame(request(f"slow:{MODEL}", LONG_PROMPT, sid))
    after = {
        "a second request": frame(request("echo", "again", sid + "-2")),
        "a cancel for another session": frame(Cancel(session_id="another")),
        "garbage after the request": b"garbage, not a frame\n",
    }[mistake]

    async def main(url: str) -> list[Any]:
        async with raw_peer(url, certs) as (peer, _quic):
            collector = Collector()
            stream_id = peer.open_stream(collector)
            peer.write(stream_id, first)
            await collector.wait_until(lambda: b'"type":"status"' in collector.data)  # it runs
            peer.write(stream_id, after, end=True)
            await asyncio.wait_for(collector.ended.wait(), 10)
            return collector.frames()

    with quic_gateway(write_config(ledger=ledger), certs) as running:
        frames = asyncio.run(main(running.url))
    ends = [event for event in frames if isinstance(event, (Done, Error))]
    assert [(type(end), end.code) for end in ends] == [(Error, "INVALID_REQUEST")], frames  # type: ignore[union-attr]
    assert [(row["status"], row["error_code"]) for row in rows(ledger, sid)] == [("error", "INVALID_REQUEST")]


def test_a_session_before_hello_is_refused_and_a_silent_client_is_closed(quic_config, certs):
    with quic_gateway(quic_config, certs, header_timeout=0.5) as gateway:

        async def main() -> None:
            async with raw_peer(gateway.url, certs, hello=False) as (peer, _quic):
                early = open_raw(peer, frame(request("echo", "too early", "early")))
                await asyncio.wait_for(early.ended.wait(), 5)
                assert [e.code for e in early.frames()] == ["INVALID_REQUEST"]
                await asyncio.wait_for(peer.wait_closed(), 5)
                assert peer.terminated is not None
                assert peer.terminated.error_code == CLOSE_CODES["PROVIDER_UNAVAILABLE"]
                assert "no hello" in peer.terminated.reason_phrase

        asyncio.run(main())


@asynccontextmanager
async def hello_less_peer(url: str, certs: DevCertificates) -> AsyncIterator[tuple[QuicPeer, int, Collector]]:
    """A QUIC connection whose control stream is opened and sent nothing yet (no hello)."""
    host, port = parse_address(url)
    quic = QuicConnection(configuration=client_configuration(host, str(certs.ca)))
    transport, peer = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicPeer(quic), remote_addr=(host, port)
    )
    try:
        peer.connect((host, port))
        await asyncio.wait_for(asyncio.shield(peer.handshake), 5)
        control = Collector()
        yield peer, peer.open_stream(control), control
    finally:
        peer.close()
        transport.close()


def test_a_client_that_sends_no_hello_has_one_implied(quic_config, certs):
    """The spec has no hello: a first control frame that is something else implies one (1.0, no features,
    no answer, no provider list) and is read as usual — here a request on the wrong stream, refused on
    its own — and then a session stream is served."""
    with quic_gateway(quic_config, certs) as gateway:

        async def main() -> tuple[list[Any], list[Any]]:
            async with hello_less_peer(gateway.url, certs) as (peer, control_id, control):
                peer.write(control_id, frame(request("echo", "on the control stream", "misplaced")))
                await control.wait_until(lambda: b"misplaced" in control.data)
                session = open_raw(peer, frame(request("echo", "served", "s1")), end=True)
                await asyncio.wait_for(session.ended.wait(), 10)
                return control.frames(), session.frames()

        on_control, on_session = asyncio.run(main())
    assert [(type(f), f.session_id, f.code) for f in on_control] == [(Error, "misplaced", "INVALID_REQUEST")]
    assert "a stream of its own" in on_control[0].message  # and no hello answer, no provider list before it
    assert isinstance(on_session[-1], Done) and not any(isinstance(f, Error) for f in on_session)


def test_a_hello_less_client_of_a_gateway_that_needs_a_token_is_told_where_it_goes(quic_config, certs):
    with quic_gateway(quic_config, certs, token="right-token") as gateway:

        async def main() -> tuple[list[Any], Any]:
            async with hello_less_peer(gateway.url, certs) as (peer, control_id, control):
                peer.write(control_id, frame(request("echo", "no token", "s1")))
                await asyncio.wait_for(peer.wait_closed(), 10)
                return control.frames(), peer.terminated

        said, terminated = asyncio.run(main())
    assert terminated is not None and terminated.error_code == CLOSE_CODES["AUTH_FAILED"]
    # its request is answered first, with the refusal (not "goes on a stream of its own"), then the connection
    assert [(type(f), f.session_id, f.code) for f in said] == [(Error, "s1", "AUTH_FAILED"), (Error, "", "AUTH_FAILED")]
    for refusal in said:
        assert 'send it as token in a {"type":"hello","versions":["1.0"],"token":"..."} frame' in refusal.message
        assert "right-token" not in refusal.message


def test_a_session_stream_before_hello_is_told_where_hello_and_its_token_go(quic_config, certs):
    """A hello-less client that opens a session stream first (the control stream never written) is told,
    on that stream, where hello — and the token — goes."""
    with quic_gateway(quic_config, certs, token="right-token") as gateway:

        async def main() -> list[Any]:
            async with hello_less_peer(gateway.url, certs) as (peer, _, _):
                session = open_raw(peer, frame(request("echo", "no hello", "s1")), end=True)
                await asyncio.wait_for(session.ended.wait(), 10)
                return session.frames()

        said = asyncio.run(main())
    assert [(type(f), f.session_id, f.code) for f in said] == [(Error, "s1", "INVALID_REQUEST")]
    assert "before the hello exchange on the control stream (the connection's first stream" in said[0].message
    assert '{"type":"hello","versions":["1.0"],"token":"..."} there first' in said[0].message


# -- the gateway stops ----------------------------------------------------------------------------------------


def test_shutdown_lets_a_running_stream_finish_and_refuses_new_work(quic_config, certs):
    with quic_gateway(quic_config, certs) as gateway, connect(gateway.url, certs) as client:
        stream = client.stream("paced:echo", "a running session finishes during the grace period, " * 3)
        first_token(stream)
        gateway.begin_shutdown()
        with pytest.raises(ProviderUnavailableError) as caught:
            client.complete("echo", "too late")
        assert caught.value.retryable and "shutting down" in caught.value.message
        with pytest.raises(ProviderUnavailableError):
            connect(gateway.url, certs)  # no new connection either
        assert isinstance(list(stream)[-1], Done)  # the running session finished
        assert gateway.stopped(10)  # and then serve_quic returned


def test_after_the_grace_period_running_sessions_end_cancelled(quic_config, certs):
    with quic_gateway(quic_config, certs, grace=0.3) as gateway, connect(gateway.url, certs) as client:
        stream = client.stream("paced:echo", "this session outlasts the grace period, " * 10)
        first_token(stream)
        gateway.begin_shutdown()
        end = list(stream)[-1]
        assert isinstance(end, Error)
        assert (end.code, end.message) == ("CANCELLED", "cancelled by the gateway shutting down")
        assert gateway.stopped(10)
    (row,) = rows(quic_config.parent / "ledger.sqlite", stream.session_id)
    assert (row["status"], row["error_code"]) == ("cancelled", "CANCELLED")


SERVER_SCRIPT = """
import asyncio, sys
from pathlib import Path
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.listeners import Limits, ListenerSettings, Shutdown, TlsFiles
from gtl_nb.gateway.quic import serve_quic

async def main(config, cert, key, port):
    engine = build_engine(load_settings(config=config))
    listener = ListenerSettings("quic", port=int(port), tls=TlsFiles(Path(cert), Path(key)))
    await serve_quic(engine, listener, authenticate=DevAuth("killed"), limits=Limits(), shutdown=Shutdown(),
                     ready=lambda url: print(url, flush=True))

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_killed_gateway_is_noticed_within_5_s_and_its_restart_is_used(quic_config, certs, tmp_path):
    script = tmp_path / "quic_gateway.py"
    script.write_text(SERVER_SCRIPT, encoding="utf-8")

    def start(port: int) -> tuple[subprocess.Popen[str], str]:
        command = [sys.executable, str(script), str(quic_config), str(certs.certificate), str(certs.key), str(port)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert process.stdout is not None
        return process, process.stdout.readline().strip()  # the ready line: the port is bound

    process, url = start(0)
    try:
        with connect(url, certs) as client:
            stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
            first_token(stream)
            process.kill()  # no CONNECTION_CLOSE: only the missing answers to the pings tell
            process.wait()
            killed = time.monotonic()
            rest = list(stream)
            assert time.monotonic() - killed < 5
            assert isinstance(rest[-1], Error)
            assert (rest[-1].code, rest[-1].retryable) == ("PROVIDER_UNAVAILABLE", True)
            process, again = start(int(url.rsplit(":", 1)[1]))
            assert again == url
            assert client.complete("echo", "are you there again?").text.count("are you there again?") == 1
    finally:
        process.kill()
        process.wait()


def test_an_address_without_a_gateway_fails_fast_naming_it(certs):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(ProviderUnavailableError) as caught:
        connect(f"quic://127.0.0.1:{port}", certs)
    assert f"127.0.0.1:{port}" in caught.value.message and caught.value.retryable


def test_a_token_longer_than_a_frame_goes_as_several_frames_of_its_text():
    """The QUIC framing cuts a token too long for one frame, as every GTL connection does
    (``codec.frames_within``); anything else over the limit is refused."""
    text = "a quay, 港 " * 100
    frames = frame(Token(session_id="s1", text=text), 300).splitlines()
    assert len(frames) > 3 and all(len(piece) <= 300 for piece in frames)
    assert "".join(decode(piece).text for piece in frames) == text  # type: ignore[union-attr]
    with pytest.raises(FrameTooLargeError):
        frame(Error(session_id="s1", code="INTERNAL", message="x" * 400), 300)


def test_a_request_trickling_in_or_piling_up_is_refused_and_its_bytes_let_go(quic_config, certs):
    """As an HTTP request: a session stream's request must arrive within ``header_timeout`` (then at
    32 KiB/s), and the requests still arriving on one connection hold at most four frames' worth —
    a stream fed a byte every few seconds was held until the connection's idle timeout, and 128
    streams of partial frames held up to a GiB."""
    with quic_gateway(quic_config, certs, header_timeout=0.5, max_frame_bytes=64 * 1024) as gateway:

        async def main() -> None:
            async with raw_peer(gateway.url, certs) as (peer, _quic):
                slow = open_raw(peer, b'{"type": "completion_request", "session_id": "slow", ')
                await asyncio.wait_for(slow.ended.wait(), 5)
                assert [(e.code, e.retryable) for e in slow.frames()] == [("TIMEOUT", True)]
                assert "did not arrive within 0.5 s" in slow.frames()[0].message
                piling = [open_raw(peer, b'{"type": "completion_request", "pad": "' + b"x" * 60_000) for _ in range(6)]
                await asyncio.sleep(1.0)  # (each stream's bytes have arrived; none is late yet)
                refused = [c.frames() for c in piling if c.ended.is_set()]
                assert refused and all(
                    [(e.code, e.retryable) for e in frames] == [("OVERLOADED", True)] for frames in refused
                )
                assert "hold more than 262,144 bytes" in refused[0][0].message and len(refused) <= 2
            async with raw_peer(gateway.url, certs) as (peer, _quic):  # (the streams left above end up late)
                good = open_raw(peer, frame(request("echo", "still served", "good")))
                await asyncio.wait_for(good.ended.wait(), 10)
                assert isinstance(good.frames()[-1], Done)

        asyncio.run(main())
