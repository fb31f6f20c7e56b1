"""The gateway over gRPC: ``serve_grpc`` on a loopback port, ``connect("grpc://...")`` and the raw generated stub.

Each gateway runs in this process on a loop thread of its own (``grpc_gateway``), except where the test
needs a gateway process to die (``gateway_process``); every test waits for the ``ready`` callback,
never for a sleep. Upstream is the OpenAI simulator of ``conftest``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.certs import make_dev_certificates
from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.grpc import serve_grpc
from gtl_nb.gateway.listeners import ListenerSettings, Shutdown, TlsFiles
from gtl_nb.gateway.proxies import TrustedProxies
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol import AuthenticationError, Token
from gtl_nb.protocol import messages as m
from gtl_nb.protocol.codec import decode, encode
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.protocol.errors import (
    CancelledError,
    ConfigurationError,
    GTLError,
    InvalidRequestError,
    OverloadedError,
    ProviderUnavailableError,
)
from gtl_nb.protocol.negotiation import FEATURES
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc
from gtl_nb.transports.grpc.mapping import from_proto, to_frame, to_proto
from gtl_nb.transports.grpc.stream import HIGH_WATER_BYTES, SESSION_METHOD, GrpcStreamChannel, status_error
from tests.gateway.conftest import LONG_PROMPT, MODEL, SIM_KEY
from tests.ledger_wait import rows_when

# -- an in-process gateway -----------------------------------------------------------------------------


@dataclasses.dataclass
class Gateway:
    """A running ``serve_grpc``: its URL, its shutdown signal and the tokens its ``authenticate`` saw."""

    url: str
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    shutdown: Shutdown
    logins: list[str | None]
    task: asyncio.Task[None]

    @property
    def address(self) -> str:
        return self.url.partition("://")[2]

    def begin_shutdown(self) -> None:
        self.loop.call_soon_threadsafe(self.shutdown.begin)

    def cancel(self) -> None:
        """Cancel ``serve_grpc`` (what its caller does to stop at once)."""
        self.loop.call_soon_threadsafe(self.task.cancel)

    def stopped(self, timeout: float) -> bool:
        """Whether ``serve_grpc`` returned within ``timeout`` seconds."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


@contextmanager
def grpc_gateway(
    config: Path, *, token: str | None = None, tls: TlsFiles | None = None, grace: float = 30.0, **limits: Any
) -> Iterator[Gateway]:
    """``serve_grpc`` on 127.0.0.1, port 0, on a loop thread; on exit it has stopped and its rows are complete."""
    settings = load_settings(config=str(config))
    bounds = dataclasses.replace(GatewaySettings.from_settings(settings).limits, **limits)
    environ = {"GTL_NB_DEV_TOKEN": token} if token else {}
    auth = DevAuth.from_settings("token" if token else "none", principal="grpc-test", environ=environ)
    logins: list[str | None] = []

    def authenticate(offered: str | None) -> Any:
        logins.append(offered)
        return auth(offered)

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    found: dict[str, Any] = {}

    async def main() -> None:
        found["task"] = asyncio.current_task()
        found["shutdown"] = shutdown = Shutdown(grace=grace)
        engine = build_engine(settings, audience=GATEWAY)  # as gateway.server builds it

        def on_ready(url: str) -> None:
            found["url"] = url
            ready.set()

        try:
            listener = ListenerSettings("grpc", host="127.0.0.1", port=0, tls=tls)
            await serve_grpc(
                engine, listener, authenticate=authenticate, limits=bounds, shutdown=shutdown, ready=on_ready
            )
        finally:
            ready.set()
            await engine.aclose()

    def run() -> None:
        with suppress(asyncio.CancelledError):
            loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10) and "url" in found, "the gateway did not start"
    try:
        yield Gateway(found["url"], loop, thread, found["shutdown"], logins, found["task"])
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(found["task"].cancel)
        thread.join(15)
        loop.close()


@pytest.fixture(scope="module")
def gateway(base_config: Path) -> Iterator[Gateway]:
    with grpc_gateway(base_config) as running:
        yield running


@pytest.fixture
def channel(gateway: Gateway) -> Iterator[grpc.Channel]:
    """A plain (synchronous) gRPC channel to the module's gateway."""
    with grpc.insecure_channel(gateway.address) as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.GTLStub:
    """The generated stub: what any other language gets from gtl.proto."""
    return pb_grpc.GTLStub(channel)


def request(text: str, *, session_id: str = "s1", model: str = "echo") -> m.CompletionRequest:
    return m.CompletionRequest(session_id=session_id, model=model, messages=[m.Message(role="user", content=text)])


# -- sessions through connect() --------------------------------------------------------------------------


def test_streaming_text_through_connect(gateway):
    with gtl_nb.connect(gateway.url) as client:
        assert client.complete("echo", "Hello over gRPC").text.count("Hello over gRPC") == 1
        tokens = [event.text for event in client.stream(f"openai:{MODEL}", "Say something") if isinstance(event, Token)]
        assert len(tokens) > 1
        assert client.complete(f"openai:{MODEL}", "Say something").text == "".join(tokens)
        assert "openai" in [info.provider for info in client.providers()]
        with pytest.raises(AuthenticationError):  # the provider refused the deployment's key: a session error
            client.complete(f"badkey:{MODEL}", "refused")


def test_twenty_concurrent_sessions_share_one_stream(gateway):
    logins = len(gateway.logins)
    first_token: dict[int, float] = {}
    done: dict[int, float] = {}

    def watch(i: int) -> Callable[[Any], None]:
        def on_event(event: Any) -> None:
            if isinstance(event, Token):
                first_token.setdefault(i, time.monotonic())
            elif isinstance(event, m.Done):
                done[i] = time.monotonic()

        return on_event

    with gtl_nb.connect(gateway.url) as client:
        channel = client.backend.channel

        async def twenty() -> list[str]:
            sessions = (
                client.acomplete(f"slow:{MODEL}", f"Say something {i}", max_tokens=20, on_event=watch(i))
                for i in range(20)
            )
            return [result.text for result in await asyncio.gather(*sessions)]

        texts = asyncio.run(twenty())
        assert len(texts) == 20 and all(texts)
        assert client.backend.channel is channel  # one Session call carried them all
    assert len(gateway.logins) == logins + 1  # one hello: one connection
    assert len(first_token) == len(done) == 20
    assert max(first_token.values()) < min(done.values())  # every session streamed before any ended


def test_a_cancel_reaches_the_upstream_and_the_ledger(write_config, tmp_path, sims, relay_to):
    relay = relay_to(sims.slow)
    ledger = tmp_path / "rows.sqlite"
    config = write_config(
        providers={"slow": {"type": "openai", "api_key": "sim-key", "base_url": relay.url + "/v1"}}, ledger=ledger
    )
    with grpc_gateway(config) as running, gtl_nb.connect(running.url) as client:
        stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
        for event in stream:
            if isinstance(event, Token):
                break
        stream.close()
        assert isinstance(stream.transcript.events[-1], m.Error)
        assert stream.transcript.events[-1].code == "CANCELLED"
        assert relay.cut.wait(5), "the gateway did not hang up on the provider"
        rows = rows_when(ledger, session_id=stream.session_id)
        assert [row["status"] for row in rows] == ["cancelled"]  # complete before the client was told


def test_a_refused_dev_token(write_config, caplog):
    caplog.set_level("DEBUG", logger="gtl_nb")
    with grpc_gateway(write_config(), token="right-token") as running:
        with pytest.raises(AuthenticationError) as caught:
            gtl_nb.connect(running.url, token="wrong-token")
        assert "wrong-token" not in str(caught.value)
        with pytest.raises(AuthenticationError):
            gtl_nb.connect(running.url)
        with gtl_nb.connect(running.url, token="right-token") as client:
            assert client.complete("echo", "let in").text.count("let in") == 1
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.GTLStub(channel)
            for call, message in (
                (stub.Complete, to_proto(request("hi"))),
                (stub.ListProviders, pb.ListProvidersRequest()),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call(message, metadata=(("authorization", "Bearer wrong-token"),), timeout=10)
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
                assert "wrong-token" not in refused.value.details()
                rebuilt = status_error(refused.value.code(), refused.value.details(), where="gateway")
                assert isinstance(rebuilt, AuthenticationError)
            good = stub.ListProviders(pb.ListProvidersRequest(), metadata=(("authorization", "Bearer right-token"),))
            assert good.providers
    assert "refused" in caplog.text and "wrong-token" not in caplog.text and "right-token" not in caplog.text


def test_grpcs_with_a_gtl_certs_ca(write_config, tmp_path):
    certs = make_dev_certificates(tmp_path / "certs")
    other = make_dev_certificates(tmp_path / "other")
    with grpc_gateway(write_config(), tls=TlsFiles(certs.certificate, certs.key)) as running:
        assert running.url.startswith("grpcs://127.0.0.1:")
        with gtl_nb.connect(running.url, verify=str(certs.ca)) as client:
            assert client.complete("echo", "over TLS").text.count("over TLS") == 1
        with pytest.raises(ConfigurationError, match="unable to get local issuer certificate"):
            gtl_nb.connect(running.url, verify=str(other.ca))
        with pytest.raises(ConfigurationError, match="CA file"):
            gtl_nb.connect(running.url, verify=False)
        plain = running.url.replace("grpcs://", "grpc://")
        with pytest.raises(ProviderUnavailableError, match="connect with grpcs://"):  # plaintext to a TLS port
            gtl_nb.connect(plain)


def test_an_oversized_request_ends_only_its_session(gateway):
    big = "x" * (80 * 1024)  # the gateway's limit is 64 KiB
    with gtl_nb.connect(gateway.url) as client:
        channel = client.backend.channel
        with pytest.raises(InvalidRequestError, match="maximum frame size"):
            client.complete("echo", big)
        assert client.complete("echo", "still here").text.count("still here") == 1
        assert client.backend.channel is channel


def test_the_gateway_refuses_an_oversized_frame_itself(gateway, stub):
    """A client that ignores the announced limit: a frame just over it ends its session, a huge one the call."""
    frames: queue.Queue[Any] = queue.Queue()
    frames.put(to_frame(m.Hello(versions=["1.0"]), pb.ClientFrame))
    frames.put(to_frame(request("y" * (80 * 1024), session_id="big"), pb.ClientFrame))
    frames.put(to_frame(request("small", session_id="small"), pb.ClientFrame))
    replies = stub.Session(iter(frames.get, None), timeout=20)
    ended: dict[str, m.Error | m.Done] = {}
    for reply in replies:
        message = from_proto(reply)
        if isinstance(message, (m.Done, m.Error)):
            ended[message.session_id] = message
            if len(ended) == 2:
                break
    frames.put(None)
    assert isinstance(ended["big"], m.Error) and ended["big"].code == "INVALID_REQUEST"
    assert isinstance(ended["small"], m.Done)
    huge = to_proto(request("z" * (400 * 1024)))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Complete(huge, timeout=10)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert isinstance(status_error(refused.value.code(), refused.value.details(), where="gateway"), InvalidRequestError)


def test_bad_frames_end_their_session_then_the_connection(channel):
    def serialize(frame: Any) -> bytes:
        return frame if isinstance(frame, bytes) else frame.SerializeToString()

    session = channel.stream_stream(SESSION_METHOD, serialize, pb.ServerFrame.FromString)
    frames: queue.Queue[Any] = queue.Queue()
    frames.put(to_frame(m.Hello(versions=["1.0"]), pb.ClientFrame))
    broken = to_frame(request("no role", session_id="bad"), pb.ClientFrame)
    broken.completion_request.messages[0].ClearField("role")  # a required field unset: the mapping refuses it
    frames.put(broken)
    replies = session(iter(frames.get, None), timeout=20)
    seen = []
    for reply in replies:
        message = from_proto(reply)
        seen.append(message)
        if isinstance(message, m.Error) and message.session_id == "bad":
            assert message.code == "INVALID_REQUEST" and "role" in message.message
            frames.put(to_frame(request("fine", session_id="ok"), pb.ClientFrame))
        if isinstance(message, m.Done):
            frames.put(b"\xff\xff not a protobuf")  # a bad frame without a session
            frames.put(broken)  # the third: the connection ends
        if isinstance(message, m.Error) and not message.session_id:
            break
    frames.put(None)
    assert [type(message).__name__ for message in seen if isinstance(message, (m.Done, m.Error))][-1] == "Error"
    assert any(isinstance(message, m.Done) and message.session_id == "ok" for message in seen)
    assert "bad frames" in seen[-1].message


@pytest.mark.parametrize(
    ("first", "words"),
    [
        (b"", "a ClientFrame without a message"),
        (b"\xff\xff\xff", "malformed gRPC message: not a valid gtl.v1.ClientFrame protobuf"),
        (pb.ClientFrame(completion_request=pb.CompletionRequest(session_id="r", messages=[pb.ChatMessage()])), "role"),
    ],
)
def test_a_refused_grpc_message_is_described_in_protobufs_terms(channel, first, words):
    """A message that is no ``ClientFrame`` the mapping reads is refused in gRPC's terms: what was wrong
    with the protobuf message — never "not JSON", "truncated", or the stand-in frame the connection reads."""

    def serialize(frame: Any) -> bytes:
        return frame if isinstance(frame, bytes) else frame.SerializeToString()

    session = channel.stream_stream(SESSION_METHOD, serialize, pb.ServerFrame.FromString)
    replies = [from_proto(reply) for reply in session(iter([first]), timeout=20)]
    errors = [reply for reply in replies if isinstance(reply, m.Error)]
    assert errors, replies
    said = errors[0].message
    assert errors[0].code == "INVALID_REQUEST" and words in said
    for leaked in ("JSON", "truncated", "transport_refused", "grpc_frame_refused", "{"):
        assert leaked not in said


def test_the_raw_stub_calls_complete_and_list_providers(stub):
    providers = [from_proto(info) for info in stub.ListProviders(pb.ListProvidersRequest(), timeout=10).providers]
    assert {"echo", "openai", "slow"} <= {info.provider for info in providers}
    result = stub.Complete(to_proto(request("Hello from any language")), timeout=10)
    events = [from_proto(event) for event in result.events]
    assert isinstance(events[-1], m.Done)
    assert "Hello from any language" in "".join(event.text for event in events if isinstance(event, m.Token))
    unnamed = to_proto(m.CompletionRequest(session_id="", model="echo", messages=[m.Message(role="user", content="x")]))
    assert from_proto(stub.Complete(unnamed, timeout=10).events[-1]).session_id  # the gateway named it


def test_a_query_travels_over_the_session_stream(stub):
    frames: queue.Queue[Any] = queue.Queue()
    frames.put(to_frame(m.Hello(versions=["1.0"], features=list(FEATURES)), pb.ClientFrame))
    frames.put(to_frame(m.Query(query_id="q1", name="breakers"), pb.ClientFrame))
    answer = None
    for reply in stub.Session(iter(frames.get, None), timeout=10):
        answer = from_proto(reply)
        if isinstance(answer, m.Answer):
            break
    frames.put(None)
    assert isinstance(answer, m.Answer) and answer.query_id == "q1" and "echo" in answer.result["breakers"]


# -- the client's half-close: no more requests, answers still read ---------------------------------------------


def test_a_half_closed_session_call_runs_its_sessions_to_their_end(write_config, tmp_path):
    """The generated stub called the ordinary way — a request iterator whose end is gRPC's half-close, right
    after the requests — gets each session's whole answer and its ``done``, then the call ends ``OK``; the
    ledger rows say ``ok``."""
    ledger = tmp_path / "rows.sqlite"
    hello = to_frame(m.Hello(versions=["1.0"]), pb.ClientFrame)
    fast = to_frame(request("Say something", session_id="fast", model=f"openai:{MODEL}"), pb.ClientFrame)
    slow = to_frame(request("Say something", session_id="slow", model=f"slow:{MODEL}"), pb.ClientFrame)
    with grpc_gateway(write_config(ledger=ledger)) as running, grpc.insecure_channel(running.address) as channel:
        call = pb_grpc.GTLStub(channel).Session(iter([hello, fast, slow]), timeout=60)
        messages = [from_proto(reply) for reply in call]
        assert call.code() is grpc.StatusCode.OK
    ends = {message.session_id: message for message in messages if isinstance(message, (m.Done, m.Error))}
    assert sorted(ends) == ["fast", "slow"]
    assert all(isinstance(end, m.Done) for end in ends.values()), ends
    for sid in ("fast", "slow"):
        assert any(isinstance(message, Token) and message.session_id == sid for message in messages)
        assert [row["status"] for row in rows_when(ledger, session_id=sid)] == ["ok"]


def test_done_writing_on_a_grpc_aio_call_lets_sessions_and_queries_finish(gateway):
    """grpc.aio's ``done_writing()`` with a streaming session and a query under way: both are answered, and the
    call ends ``OK`` once nothing runs."""

    async def main() -> tuple[list[Any], grpc.StatusCode]:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            call = pb_grpc.GTLStub(channel).Session()
            await call.write(to_frame(m.Hello(versions=["1.0"], features=list(FEATURES)), pb.ClientFrame))
            streaming = request("Say something", session_id="aio", model=f"slow:{MODEL}")
            await call.write(to_frame(streaming, pb.ClientFrame))
            await call.write(to_frame(m.Query(query_id="q1", name="breakers"), pb.ClientFrame))
            await call.done_writing()
            received = []
            while (reply := await call.read()) is not grpc.aio.EOF:
                received.append(from_proto(reply))
            return received, await call.code()

    received, code = asyncio.run(main())
    assert code is grpc.StatusCode.OK
    ends = [message for message in received if isinstance(message, (m.Done, m.Error)) and message.session_id]
    assert [(type(end).__name__, end.session_id) for end in ends] == [("Done", "aio")]
    assert [message.query_id for message in received if isinstance(message, m.Answer)] == ["q1"]


def test_closing_a_client_with_a_running_stream_cancels_it_on_the_gateway(write_config, tmp_path):
    """``client.close()`` while a session streams: the session is cancelled on the gateway (its row says so) —
    the client cancels it before the end of its requests, which no longer cancels anything by itself."""
    ledger = tmp_path / "rows.sqlite"
    with grpc_gateway(write_config(ledger=ledger)) as running:
        client = gtl_nb.connect(running.url)
        stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
        for event in stream:
            if isinstance(event, Token):
                break
        client.close()
        rows = rows_when(ledger, session_id=stream.session_id)
    assert [row["status"] for row in rows] == ["cancelled"]


class CountingRelay:
    """A loopback TCP relay that counts the bytes going each way."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.up = 0
        self.down = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pump, args=(downstream, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, way: str) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                with self._lock:
                    setattr(self, way, getattr(self, way) + len(data))
                sink.sendall(data)
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def counted(self, run: Callable[[], None]) -> tuple[int, int]:
        """Bytes (up, down) that ``run`` sent through the relay."""
        with self._lock:
            up, down = self.up, self.down
        run()
        with self._lock:
            return self.up - up, self.down - down

    def close(self) -> None:
        self._listener.close()


def test_gzip_is_negotiated_not_forced(gateway):
    relay = CountingRelay(int(gateway.address.rpartition(":")[2]))
    prompt = "the same words again and again " * 1500  # 46 KB that compress well

    def session(query: str) -> Callable[[], None]:
        def run() -> None:
            with gtl_nb.connect(f"grpc://{relay.address}{query}") as client:
                assert client.complete(f"openai:{MODEL}", prompt).text

        return run

    def unary(compressed: bool) -> Callable[[], None]:
        def run() -> None:
            options = {"compression": grpc.Compression.Gzip} if compressed else {}
            metadata = (("gtl-compression", "gzip"),) if compressed else ()
            with grpc.insecure_channel(relay.address, **options) as channel:
                result = pb_grpc.GTLStub(channel).Complete(to_proto(request(prompt)), metadata=metadata, timeout=10)
                assert isinstance(from_proto(result.events[-1]), m.Done)

        return run

    try:
        plain_up, _ = relay.counted(session(""))
        gzip_up, _ = relay.counted(session("?compression=gzip"))
        _, plain_down = relay.counted(unary(False))
        _, gzip_down = relay.counted(unary(True))
    finally:
        relay.close()
    assert plain_up > len(prompt) and plain_down > len(prompt)  # nothing is compressed unless asked
    assert gzip_up * 4 < plain_up and gzip_down * 4 < plain_down
    with pytest.raises(ConfigurationError, match="gzip"):
        gtl_nb.connect(f"{gateway.url}?compression=brotli")


def test_connections_per_address_are_limited(write_config):
    with grpc_gateway(write_config(), max_connections_per_address=1) as running:
        first = gtl_nb.connect(running.url)
        try:
            with pytest.raises(OverloadedError, match="open connections"):
                gtl_nb.connect(running.url)
        finally:
            first.close()
        with gtl_nb.connect(running.url) as again:  # the first one's call has ended: its place is free
            assert again.complete("echo", "room again").text


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` (a state the gateway reaches by itself), failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _refused(call: Callable[[], Any]) -> GTLError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    return status_error(refused.value.code(), refused.value.details(), where="gateway")


def test_every_call_counts_against_the_per_address_cap_over_any_number_of_connections(write_config):
    """The cap bounds what one address holds open, as on HTTP, where each request needs a connection.
    Only ``Session`` calls were counted: ``Complete`` and ``ListProviders`` calls — one HTTP/2
    connection carries hundreds, and a client may open any number of connections — each held an
    upstream call (or waited minutes for its request message) with no bound per address."""
    held = sim.serve("openai", faults=sim.Fault.stall(seconds=60), api_key=SIM_KEY)  # answers nothing
    config = write_config(providers={"held": {"type": "openai", "api_key": SIM_KEY, "base_url": held.base_url}})
    stalled = to_proto(request("wait", model=f"held:{MODEL}"))
    with (
        held,
        grpc_gateway(config, max_connections_per_address=2) as running,
        grpc.insecure_channel(running.address, options=[("grpc.use_local_subchannel_pool", 1)]) as one,
        grpc.insecure_channel(running.address, options=[("grpc.use_local_subchannel_pool", 1)]) as two,
    ):
        first = pb_grpc.GTLStub(one).Complete.future(stalled, timeout=30)
        _until(lambda: len(held.requests) == 1, "the first call upstream")
        second = pb_grpc.GTLStub(two).Complete.future(stalled, timeout=30)  # another HTTP/2 connection
        _until(lambda: len(held.requests) == 2, "the second call upstream")
        try:
            stub = pb_grpc.GTLStub(one)
            over = [
                _refused(lambda: stub.Complete(to_proto(request("third")), timeout=10)),  # a stream more on `one`
                _refused(lambda: stub.ListProviders(pb.ListProvidersRequest(), timeout=10)),
            ]
            with pytest.raises(OverloadedError, match="open connections"):
                gtl_nb.connect(running.url)  # a Session counts with them
            assert all(isinstance(error, OverloadedError) and "already has 2" in error.message for error in over)
            assert len(held.requests) == 2  # the refused calls went nowhere
        finally:
            first.cancel()
        # the cancelled call's place is free again; the second still holds its own
        _until(lambda: _lists(pb_grpc.GTLStub(two)), "a call to be let in after one ended")
        second.cancel()


def test_a_refused_dial_always_hears_the_gateway_s_refusal(write_config):
    """The client writes its hello before the gateway's answer (nginx over TLS needs that); a gateway refusing
    the call meanwhile (here: the per-address cap) could leave grpc.aio reporting ``INTERNAL`` "Internal error
    from Core" in place of its status — about one dial in ten. Every dial hears ``OVERLOADED`` instead."""
    from gtl_nb.transports.grpc.client import open_session

    async def dials(address: str) -> list[str]:
        hello = GTLConnection("client").data_to_send()
        heard = []
        for _ in range(40):
            try:
                channel = await open_session(address, hello=hello)
            except GTLError as exc:
                heard.append(exc.code)
            else:
                heard.append("opened")
                await channel.aclose()
        return heard

    with grpc_gateway(write_config(), max_connections_per_address=1) as running, gtl_nb.connect(running.url):
        heard = asyncio.run(dials(running.address))  # the client above holds the address's one call
    assert set(heard) == {"OVERLOADED"}, heard


def test_behind_a_trusted_proxy_each_forwarded_client_is_capped_and_the_proxy_itself_is_not(write_config):
    held = sim.serve("openai", faults=sim.Fault.stall(seconds=60), api_key=SIM_KEY)
    config = write_config(providers={"held": {"type": "openai", "api_key": SIM_KEY, "base_url": held.base_url}})
    stalled = to_proto(request("wait", model=f"held:{MODEL}"))
    client = (("x-forwarded-for", "203.0.113.9"),)
    trusted = TrustedProxies.parse(["127.0.0.1"])
    with (
        held,
        grpc_gateway(config, max_connections_per_address=1, trusted_proxies=trusted) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.GTLStub(channel)
        calls = [stub.Complete.future(stalled, timeout=30, metadata=client)]
        _until(lambda: len(held.requests) == 1, "the forwarded client's call upstream")
        try:
            over = _refused(lambda: stub.ListProviders(pb.ListProvidersRequest(), timeout=10, metadata=client))
            other = (("x-forwarded-for", "203.0.113.10"),)  # another client behind the same proxy: its own count
            assert stub.ListProviders(pb.ListProvidersRequest(), timeout=10, metadata=other).providers
            calls += [stub.Complete.future(stalled, timeout=30) for _ in range(2)]  # the proxy's own calls
            _until(lambda: len(held.requests) == 3, "the proxy's own calls upstream")
        finally:
            for call in calls:
                call.cancel()
    assert isinstance(over, OverloadedError) and "203.0.113.9 already has 1" in over.message


def _lists(stub: pb_grpc.GTLStub) -> bool:
    """Whether a ``ListProviders`` call is let in (``False``: refused by the cap)."""
    try:
        return bool(stub.ListProviders(pb.ListProvidersRequest(), timeout=10).providers)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return False
        raise


def test_a_session_that_never_says_hello_is_closed_after_the_header_timeout(write_config):
    with grpc_gateway(write_config(), header_timeout=0.5) as running, grpc.insecure_channel(running.address) as channel:
        silent: queue.Queue[Any] = queue.Queue()
        started = time.monotonic()
        replies = [from_proto(reply) for reply in pb_grpc.GTLStub(channel).Session(iter(silent.get, None), timeout=10)]
        silent.put(None)
        assert time.monotonic() - started < 5
        assert isinstance(replies[-1], m.Error) and "no hello" in replies[-1].message


# -- a gateway that goes away ----------------------------------------------------------------------------

SERVE = """
import asyncio, sys
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.grpc import serve_grpc
from gtl_nb.gateway.listeners import Limits, ListenerSettings, Shutdown

async def main(config, port):
    engine = build_engine(load_settings(config=config))
    await serve_grpc(engine, ListenerSettings("grpc", port=port), authenticate=DevAuth("grpc-test"),
                     limits=Limits(), shutdown=Shutdown(), ready=lambda url: print(url, flush=True))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@contextmanager
def gateway_process(config: Path, port: int = 0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A gateway in a child process; yields it and its URL once it printed that it accepts calls."""
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(config), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        started, _, _ = select.select([process.stdout], [], [], 30)  # its ready line, or its end
        url = process.stdout.readline().strip() if started else ""  # type: ignore[union-attr]
        assert url.startswith("grpc://"), "the gateway process did not start"
        yield process, url
    finally:
        process.kill()
        process.wait(10)


def test_a_gateway_that_dies_mid_stream_is_a_retryable_error_and_the_next_request_reconnects(base_config):
    with gateway_process(base_config) as (process, url), gtl_nb.connect(url) as client:
        stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
        for event in stream:
            if isinstance(event, Token):
                break
        process.kill()
        killed = time.monotonic()
        last = list(stream)[-1]
        assert time.monotonic() - killed < 5
        assert isinstance(last, m.Error) and last.code == "PROVIDER_UNAVAILABLE" and last.retryable
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError) as caught:  # nobody listens: at once, naming the address
            client.complete("echo", "anyone?")
        assert time.monotonic() - started < 5 and url.partition("://")[2] in str(caught.value)
        assert caught.value.retryable
        with gateway_process(base_config, int(url.rpartition(":")[2])):
            assert client.complete("echo", "back again").text.count("back again") == 1


# -- shutdown ------------------------------------------------------------------------------------------------


def test_shutdown_lets_a_running_stream_finish_and_refuses_new_ones(write_config, tmp_path):
    ledger = tmp_path / "rows.sqlite"
    with grpc_gateway(write_config(ledger=ledger), grace=20) as running, gtl_nb.connect(running.url) as client:
        stream = client.stream(f"slow:{MODEL}", "Say something", max_tokens=20)
        assert isinstance(next(stream), m.Status)
        running.begin_shutdown()
        with pytest.raises(ProviderUnavailableError, match="shutting down"):  # a new session on the open stream
            client.complete("echo", "too late")
        with pytest.raises(ProviderUnavailableError):  # a new connection
            gtl_nb.connect(running.url)
        events = list(stream)
        assert isinstance(events[-1], m.Done)
        assert running.stopped(10)  # once the stream ended, not after the 20 s grace
    rows = rows_when(ledger, session_id=stream.session_id)
    assert [row["status"] for row in rows] == ["ok"]


@pytest.mark.parametrize("how", ["grace runs out", "serve_grpc cancelled"])
def test_a_stream_beyond_the_grace_is_cancelled_and_its_row_completed(write_config, tmp_path, how):
    ledger = tmp_path / "rows.sqlite"
    with grpc_gateway(write_config(ledger=ledger), grace=0.5) as running, gtl_nb.connect(running.url) as client:
        stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
        for event in stream:
            if isinstance(event, Token):
                break
        if how == "grace runs out":
            running.begin_shutdown()
        else:
            running.cancel()
        last = list(stream)[-1]
        assert isinstance(last, m.Error) and last.code == "CANCELLED", last
        assert "the gateway shutting down" in last.message
        with pytest.raises(CancelledError):
            stream.result()
        assert running.stopped(10)
    rows = rows_when(ledger, session_id=stream.session_id)
    assert [row["status"] for row in rows] == ["cancelled"]


def test_cancelling_serve_grpc_during_the_grace_ends_its_sessions_at_once(write_config, tmp_path):
    """The gateway's second signal: a graceful stop with a long grace is under way when ``serve_grpc`` is
    cancelled; the running stream ends within moments, not after the grace.

    Its provider is paced at half a second a chunk (a stream of half a minute): the stream must still be
    running when ``serve_grpc`` is cancelled, and on a loaded CI machine the refused second connection once
    took the ~4 s the usual ``slow`` stream lasts."""
    ledger = tmp_path / "rows.sqlite"
    with sim.serve("openai", seed=3, api_key=SIM_KEY, pace=0.5) as glacial:
        providers = {"slow": {"type": "openai", "api_key": SIM_KEY, "base_url": glacial.base_url}}
        config = write_config(providers=providers, ledger=ledger)
        stream = _cancelled_during_the_grace(config)
    rows = rows_when(ledger, session_id=stream.session_id)
    assert [row["status"] for row in rows] == ["cancelled"]


def _cancelled_during_the_grace(config: Path) -> Any:
    """A ``slow`` stream, the gateway's graceful stop begun, then ``serve_grpc`` cancelled: the stream ends
    ``CANCELLED`` within two seconds (returned, for its row)."""
    with grpc_gateway(config, grace=60) as running, gtl_nb.connect(running.url) as client:
        stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
        for event in stream:
            if isinstance(event, Token):
                break
        running.begin_shutdown()
        with pytest.raises(ProviderUnavailableError):  # refused by serve_grpc's stop: the grace has begun
            gtl_nb.connect(running.url)
        cancelled_at = time.monotonic()
        running.cancel()
        last = list(stream)[-1]
        seconds = time.monotonic() - cancelled_at
        assert isinstance(last, m.Error) and last.code == "CANCELLED", last
        assert "the gateway shutting down" in last.message
        assert seconds < 2.0, f"the stream ran {seconds:.1f} s after serve_grpc was cancelled"
        assert running.stopped(5)
    return stream


def test_the_status_details_rebuild_the_gtl_error():
    assert isinstance(status_error(grpc.StatusCode.UNAVAILABLE, "gone", where="x"), ProviderUnavailableError)
    assert status_error(grpc.StatusCode.UNAVAILABLE, "gone", where="x").retryable
    overloaded = status_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED: too many", where="x")
    assert isinstance(overloaded, OverloadedError) and overloaded.message == "too many"
    assert isinstance(status_error(grpc.StatusCode.UNAUTHENTICATED, None, where="x"), AuthenticationError)
    assert isinstance(status_error(grpc.StatusCode.DATA_LOSS, "?", where="x"), GTLError)


# -- the stream channel on its own -------------------------------------------------------------------------


def frames_of(*messages: Any) -> bytes:
    return b"".join(encode(message) + b"\n" for message in messages)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_drain_waits_while_the_call_takes_no_more_messages():
    async def run() -> None:
        room = asyncio.Event()
        sent: list[bytes] = []

        async def send(data: bytes) -> None:  # gRPC's flow control holding the writer
            await room.wait()
            sent.append(data)

        channel = GrpcStreamChannel(asyncio.Event().wait, send, role="server")
        filler = "x" * 64 * 1024  # 20 messages of 64 KiB: past the bytes the outbox holds before drain waits
        count = HIGH_WATER_BYTES // len(filler) + 4
        channel.write(frames_of(*(m.Token(session_id="s", text=f"{i} {filler}") for i in range(count))))
        draining = asyncio.ensure_future(channel.drain())
        await settle()
        assert not draining.done() and not sent  # the session would wait here
        room.set()
        await asyncio.wait_for(draining, 5)
        await channel.aclose()
        assert [from_proto(pb.ServerFrame.FromString(data)).text for data in sent] == [
            f"{i} {filler}" for i in range(count)
        ]

    asyncio.run(run())


def test_an_event_grpc_cannot_carry_ends_its_session_instead():
    async def run() -> None:
        sent: list[bytes] = []

        async def send(data: bytes) -> None:
            sent.append(data)

        channel = GrpcStreamChannel(asyncio.Event().wait, send, role="server")
        too_big = m.Usage(session_id="s", tokens_in=2**70)  # beyond int64
        channel.write(frames_of(m.Status(session_id="s", state="streaming"), too_big, m.Done(session_id="s")))
        channel.write(frames_of(m.Token(session_id="t", text="other sessions go on")))
        await channel.aclose()
        messages = [from_proto(pb.ServerFrame.FromString(data)) for data in sent]
        assert [type(message).__name__ for message in messages] == ["Status", "Error", "Token"]
        assert messages[1].code == "INTERNAL" and messages[1].session_id == "s"

    asyncio.run(run())


def test_a_call_that_ends_with_a_status_ends_every_session_with_its_error():
    async def run() -> None:
        async def receive() -> Any:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Socket closed"
            )

        async def send(data: bytes) -> None:
            pass

        channel = GrpcStreamChannel(receive, send, role="client", where="grpc gateway (grpc://h:1)")
        ended = decode(await channel.read())
        assert await channel.read() == b""
        assert isinstance(ended, m.Error) and ended.session_id == ""  # the whole connection
        assert ended.code == "PROVIDER_UNAVAILABLE" and ended.retryable and "Socket closed" in ended.message

    asyncio.run(run())


@pytest.mark.parametrize("asks", [True, False])
def test_frames_share_a_message_only_with_a_client_that_asked(base_config, asks):
    """A raw ``Session`` call: with ``gtl-frames: batch`` the gateway says so in its initial metadata
    and sends a session's events in fewer messages than frames (``ServerFrame.more``); a client that
    did not ask gets one frame per message, as before."""
    from gtl_nb.transports.grpc.stream import BATCH_KEY, BATCH_VALUE

    async def session(target: str) -> tuple[dict[str, Any], list[pb.ServerFrame]]:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.stream_stream(SESSION_METHOD)(metadata=((BATCH_KEY, BATCH_VALUE),) if asks else ())
            initial = dict(await call.initial_metadata())
            request = m.CompletionRequest(
                session_id="s1", model=f"openai:{MODEL}", messages=[m.Message(role="user", content="Say something")]
            )
            for message in (m.Hello(versions=["1.0"]), request):
                await call.write(to_frame(message, pb.ClientFrame).SerializeToString())
            received: list[pb.ServerFrame] = []
            while not received or (received[-1].more or [received[-1]])[-1].WhichOneof("message") not in (
                "done",
                "error",
            ):
                data = await call.read()
                assert data is not grpc.aio.EOF
                received.append(pb.ServerFrame.FromString(data))
            await call.done_writing()
            return initial, received

    with grpc_gateway(base_config) as gateway:
        initial, received = asyncio.run(session(gateway.address))
    frames = [frame for message in received for frame in (message, *message.more)]
    kinds = [frame.WhichOneof("message") for frame in frames]
    assert kinds[0] == "hello" and kinds[-1] == "done" and kinds.count("token") > 1
    assert (initial.get(BATCH_KEY) == BATCH_VALUE) is asks
    assert (len(received) < len(frames)) is asks  # the simulator's chunks arrive together
