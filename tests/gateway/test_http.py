"""The gateway over HTTP: sessions through ``connect("http://...")`` / ``sse://``, raw endpoints, refusals."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.http import bind, serve_http
from gtl_nb.gateway.listeners import Limits, ListenerSettings, Shutdown, TlsFiles
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol import AuthenticationError, Done, GTLError, ProviderUnavailableError, Token, Tool, ToolCallEvent
from gtl_nb.protocol.errors import ConfigurationError, RateLimitError, VersionMismatchError
from tests.gateway.conftest import LONG_PROMPT, MODEL, SIM_KEY, send_body, write_toml
from tests.ledger_wait import rows_when

REQUEST = {
    "type": "completion_request",
    "session_id": "s1",
    "model": "echo",
    "messages": [{"role": "user", "content": "hi"}],
}


@dataclass
class Served:
    """A running HTTP listener: its URL, its loop, and how to stop it from the test's thread."""

    url: str
    loop: asyncio.AbstractEventLoop
    shutdown: Shutdown
    engine: Any
    stopped: threading.Event

    def begin_shutdown(self) -> None:
        """``shutdown.begin()`` on the listener's loop (what the gateway does on SIGTERM)."""
        self.loop.call_soon_threadsafe(self.shutdown.begin)

    def call(self, coroutine: Any, timeout: float = 10) -> Any:
        """Run ``coroutine`` on the listener's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def serving(
    config: Path,
    *,
    token: str | None = None,
    tls: TlsFiles | None = None,
    limits: Limits | None = None,
    offers: dict[str, str] | None = None,
    compression: bool = True,
    grace: float = 30.0,
) -> Iterator[Served]:
    """``serve_http`` on a loop thread of this process, as ``gateway.server`` runs it. On exit the listener is
    cancelled (unless it already stopped after ``begin_shutdown``): it has stopped and its rows are complete."""
    settings = load_settings(config=str(config))
    options = GatewaySettings.from_settings(settings)
    environ = {"GTL_NB_DEV_TOKEN": token} if token else {}
    authenticate = DevAuth.from_settings("token" if token else "none", principal="http-test", environ=environ)
    listener = ListenerSettings("http", host="127.0.0.1", port=0, tls=tls)
    limits = limits or Limits(max_frame_bytes=options.max_frame_bytes)
    shutdown = Shutdown(grace=grace)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stopped = threading.Event()
    found: dict[str, Any] = {}

    async def main() -> None:
        engine = build_engine(settings, audience=GATEWAY)  # as gateway.server builds it
        found["engine"] = engine
        found["task"] = asyncio.current_task()

        def on_ready(url: str) -> None:
            found["url"] = url
            ready.set()

        try:
            await serve_http(
                engine,
                listener,
                authenticate=authenticate,
                limits=limits,
                shutdown=shutdown,
                ready=on_ready,
                offers=(lambda: dict(offers)) if offers is not None else None,
                compression=compression,
            )
        finally:
            await engine.aclose()
            ready.set()

    def run() -> None:
        try:
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(main())
        finally:
            stopped.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10) and "url" in found, "the listener did not start"
    try:
        yield Served(found["url"], loop, shutdown, found["engine"], stopped)
    finally:
        if not stopped.is_set():
            loop.call_soon_threadsafe(found["task"].cancel)
        thread.join(20)
        loop.close()


@contextmanager
def gateway(config: Path, *, token: str | None = None, **options: Any) -> Iterator[str]:
    """``serving(...)``'s URL, for tests that need nothing else."""
    with serving(config, token=token, **options) as served:
        yield served.url


@pytest.fixture(scope="module")
def base_url(base_config: Path) -> Iterator[str]:
    with gateway(base_config) as url:
        yield url


@pytest.mark.parametrize("scheme", ["http", "sse"])
def test_streaming_text_through_connect(base_url, scheme):
    address = base_url.partition("://")[2]
    with gtl_nb.connect(f"{scheme}://{address}") as client:
        assert client.complete("echo", "Hello over HTTP").text.count("Hello over HTTP") == 1
        tokens = [event.text for event in client.stream(f"openai:{MODEL}", "Say something") if isinstance(event, Token)]
        assert len(tokens) > 1
        assert client.complete(f"openai:{MODEL}", "Say something").text == "".join(tokens)
        assert "openai" in [info.provider for info in client.providers()]


def test_the_provider_list_is_asked_each_time_and_a_closed_client_says_so(base_url):
    client = gtl_nb.connect(base_url)
    assert "openai" in [info.provider for info in client.providers()]
    client.close()
    with pytest.raises(ConfigurationError, match="this client is closed"):
        client.providers()  # (it raised httpx's own RuntimeError)


def test_a_gateway_that_stops_answering_is_unreachable_within_the_open_timeout(base_url):
    """A listener that answers the first provider list and then accepts without a word: asked again,
    the list is a ``PROVIDER_UNAVAILABLE`` after ``open_timeout``, not a bare TimeoutError later."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def serve() -> None:
        first = True
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            if first:  # relay one answer from the real gateway, then go silent
                first = False
                conn.recv(65536)
                body = httpx.get(f"{base_url}/v1/gtl/providers").content
                head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                conn.sendall(head.encode() + body)

    threading.Thread(target=serve, daemon=True).start()
    try:
        client = gtl_nb.connect(f"http://127.0.0.1:{port}")
        client.backend.open_timeout = 1.0  # (the default waits longer)
        held[0].close()  # the kept-alive connection goes: the next ask opens one that stays silent
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="cannot reach"):
            client.providers()
        assert time.monotonic() - started < 4.0
        client.close()
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_the_breakers_query_says_when_a_provider_that_sent_retry_after_may_be_tried_again(tmp_path):
    """A 429 asking for two minutes opened the circuit: the gateway's snapshot (``client.breakers()``
    over the connection) says the circuit reopens then, not after the 30 s cooldown."""
    with sim.serve("openai", faults=sim.Fault.http(429, retry_after=120), api_key=SIM_KEY) as limited:
        config = write_toml(
            tmp_path / "gtl.toml",
            {
                "providers.limited": {"type": "openai", "api_key": SIM_KEY, "base_url": limited.base_url},
                "routing.retry": {"max_attempts": 1},
                "routing.breaker": {"failure_threshold": 1, "cooldown": 30},
                "ledger": {"path": str(tmp_path / "ledger.sqlite3")},
            },
        )
        with gateway(config) as url, gtl_nb.connect(url) as client:
            with pytest.raises(RateLimitError):
                client.complete(f"limited:{MODEL}", "hi")
            with pytest.raises(ProviderUnavailableError, match="every circuit is open") as refused:
                client.complete(f"limited:{MODEL}", "again")
            shown = client.breakers()["limited"]
    assert (shown["state"], shown["provider_retry_after"]) == ("open", 120.0)
    assert 110 < shown["retry_in"] <= 120 and 110 < refused.value.retry_after <= 120
    assert len(limited.requests) == 1


def test_a_bad_provider_key_is_auth_failed(base_url):
    with gtl_nb.connect(base_url) as client, pytest.raises(AuthenticationError) as caught:
        client.complete(f"badkey:{MODEL}", "refused")
    assert caught.value.code == "AUTH_FAILED"


def test_non_streamed_answer_is_one_json_object(base_url):
    response = httpx.post(f"{base_url}/v1/gtl", json={**REQUEST, "stream": False})
    assert response.status_code == 200
    body = response.json()
    assert body["session_id"] == "s1"
    assert body["events"][-1]["type"] == "done"
    assert "hi" in "".join(event.get("text", "") for event in body["events"] if event["type"] == "token")


def test_streamed_answer_is_ndjson_frames(base_url):
    with httpx.stream("POST", f"{base_url}/v1/gtl", json=REQUEST) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        frames = [json.loads(line) for line in response.iter_lines() if line]
    assert frames[-1]["type"] == "done" and all(frame["session_id"] == "s1" for frame in frames)


def test_sse_answer_is_events(base_url):
    with httpx.stream("POST", f"{base_url}/v1/gtl/sse", json=REQUEST) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    assert "event: done" in lines


def test_a_request_without_a_session_id_is_given_one(base_url):
    """An empty ``session_id`` is a connection-level ``error``'s: a session's frames must never carry it.
    One request per HTTP call has no other session to tell apart, so the gateway names it, as gRPC's
    ``Complete`` does, on every endpoint (it ran with frames whose ``session_id`` was ``""``)."""
    nameless = {**REQUEST, "session_id": ""}
    with httpx.stream("POST", f"{base_url}/v1/gtl", json=nameless) as response:
        frames = [json.loads(line) for line in response.iter_lines() if line]
    with httpx.stream("POST", f"{base_url}/v1/gtl/sse", json=nameless) as response:
        sse = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    body = httpx.post(f"{base_url}/v1/gtl", json={**nameless, "stream": False}).json()
    for events in (frames, sse, body["events"]):
        assert events[-1]["type"] == "done"
        (session_id,) = {event["session_id"] for event in events}
        assert session_id
    assert body["session_id"] == body["events"][0]["session_id"]
    assert len({frames[0]["session_id"], sse[0]["session_id"], body["session_id"]}) == 3


def test_the_gtl_version_header_is_negotiated(base_url):
    """The spec's negotiation (``Client: GTL-Version: 1.0``, ``Server: GTL-Version: 1.0, 1.1``) on the
    endpoints whose sessions have no hello: the gateway says what it speaks and refuses a request that
    names none of it (it served any, as if it were 1.0)."""
    newer = httpx.post(f"{base_url}/v1/gtl", json=REQUEST, headers={"GTL-Version": "2.0"})
    assert newer.status_code == 400 and newer.headers["gtl-version"] == "1.0"
    assert newer.json()["code"] == "INVALID_REQUEST" and "no common GTL version" in newer.json()["message"]
    sse = httpx.post(f"{base_url}/v1/gtl/sse", json=REQUEST, headers={"GTL-Version": "2.0"})
    query = httpx.post(
        f"{base_url}/v1/gtl/query",
        json={"type": "query", "query_id": "q", "name": "breakers"},
        headers={"GTL-Version": "2.0"},
    )
    providers = httpx.get(f"{base_url}/v1/gtl/providers", headers={"GTL-Version": "2.0"})
    assert sse.status_code == query.status_code == providers.status_code == 400
    with httpx.stream("POST", f"{base_url}/v1/gtl", json=REQUEST, headers={"GTL-Version": "1.0, 1.1"}) as response:
        assert response.status_code == 200 and response.headers["gtl-version"] == "1.0"
        assert json.loads(list(response.iter_lines())[-1])["type"] == "done"
    whole = httpx.post(f"{base_url}/v1/gtl", json={**REQUEST, "stream": False})  # no header: served as before
    assert whole.status_code == 200 and whole.headers["gtl-version"] == "1.0"
    assert httpx.get(f"{base_url}/v1/gtl/providers").headers["gtl-version"] == "1.0"
    # several header lines are one list (a proxy may join them or not), and an empty one names nothing
    lines = [("GTL-Version", "2.0"), ("GTL-Version", "1.0")]
    assert httpx.get(f"{base_url}/v1/gtl/providers", headers=httpx.Headers(lines)).status_code == 200
    assert httpx.get(f"{base_url}/v1/gtl/providers", headers={"GTL-Version": ""}).status_code == 200
    assert httpx.get(f"{base_url}/v1/gtl/providers", headers={"GTL-Version": ","}).status_code == 200


def _raw_answer(url: str, request: bytes) -> bytes:
    """What the listener writes back for ``request`` sent as is, until it closes the connection."""
    host, _, port = url.partition("://")[2].rpartition(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        with suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
    return answer


def test_every_refusal_of_a_gtl_endpoint_says_the_gtl_version(base_config):
    """The spec's negotiation holds on every answer, not only on the good ones: a refused token, a body
    that is not JSON, too large or the wrong frame, a wrong method, and what the listener answers itself
    (a request that is not HTTP, an unknown transfer coding) all say the versions the gateway speaks."""
    query = {"type": "query", "query_id": "q", "name": "breakers"}
    with gateway(base_config, token="right-token") as url:
        wrong = {"authorization": "Bearer wrong"}
        right = {"authorization": "Bearer right-token"}
        refused = [
            httpx.post(f"{url}/v1/gtl", json=REQUEST, headers=wrong),
            httpx.post(f"{url}/v1/gtl/sse", json=REQUEST),  # no token at all
            httpx.post(f"{url}/v1/gtl/query", json=query, headers=wrong),
            httpx.get(f"{url}/v1/gtl/providers", headers=wrong),
        ]
        assert [response.status_code for response in refused] == [401] * 4
        big = {**REQUEST, "messages": [{"role": "user", "content": "x" * (80 * 1024)}]}
        chunked = (piece for piece in [json.dumps(big).encode()])  # no content-length: refused while read
        bodies = [
            httpx.post(f"{url}/v1/gtl", content=b"{not json", headers=right),
            httpx.post(f"{url}/v1/gtl/sse", json=big, headers=right),
            httpx.post(f"{url}/v1/gtl", content=chunked, headers=right),
            httpx.post(f"{url}/v1/gtl/query", json=REQUEST, headers=right),  # not a query frame
            httpx.post(f"{url}/v1/gtl", json=query, headers=right),  # not a completion_request
            httpx.get(f"{url}/v1/gtl", headers=right),  # the wrong method
        ]
        assert [response.status_code for response in bodies] == [400, 413, 413, 400, 400, 405]
        for response in refused + bodies:
            assert response.headers.get("gtl-version") == "1.0", (response.request.url, response.status_code)
            assert response.json()["type"] == "error"
        not_http = _raw_answer(url, b"NOT HTTP AT ALL\r\n\r\n")
        coding = _raw_answer(
            url,
            b"POST /v1/gtl HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        )
        for raw, status in ((not_http, b"400"), (coding, b"501")):
            head = raw.partition(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 " + status) and b"\r\ngtl-version: 1.0" in head, raw[:300]


def test_the_http_client_names_its_version_and_refuses_a_gateway_without_it():
    """``connect("http://…")`` sends ``GTL-Version`` and reads the gateway's: one that speaks none of the
    client's versions is a ``VersionMismatchError`` at ``connect``, not requests misread later."""
    seen: list[str | None] = []

    class Newer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("gtl-version"))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("gtl-version", "2.0, 2.1")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Newer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(VersionMismatchError, match=r"speaks GTL 2.0, 2.1; this client speaks 1.0"):
            gtl_nb.connect(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["1.0"]


def test_refusals_have_their_statuses(base_url):
    assert httpx.post(f"{base_url}/v1/gtl", content=b"{not json").status_code == 400
    big = {**REQUEST, "messages": [{"role": "user", "content": "x" * (80 * 1024)}]}
    response = httpx.post(f"{base_url}/v1/gtl", json=big)
    assert response.status_code == 413
    assert response.json()["code"] == "INVALID_REQUEST"


def test_a_frame_refused_for_its_values_is_answered_under_the_session_id_it_claimed(base_url):
    hot = httpx.post(f"{base_url}/v1/gtl", json={**REQUEST, "session_id": "s-mine", "temperature": 5})
    assert hot.status_code == 400
    assert (hot.json()["session_id"], hot.json()["code"]) == ("s-mine", "INVALID_REQUEST")
    assert "temperature" in hot.json()["message"]
    nameless = httpx.post(f"{base_url}/v1/gtl", json={**REQUEST, "session_id": 7, "temperature": "hot"})
    assert nameless.status_code == 400 and nameless.json()["session_id"] == ""  # nothing to claim


def test_unknown_paths_methods_and_malformed_http_are_gtl_errors(base_url):
    """Every refusal of the listener is one GTL ``error`` as a JSON body, not Starlette's or uvicorn's plain text."""
    missing = httpx.get(f"{base_url}/v2/nothing")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    assert missing.json()["type"] == "error" and missing.json()["code"] == "INVALID_REQUEST"
    assert "/v1/gtl/sse" in missing.json()["message"] and "/.well-known/gtl" in missing.json()["message"]
    scraped = httpx.get(f"{base_url}/metrics")  # metrics off here: the 404 says how they are turned on
    assert scraped.status_code == 404 and "turns them on in [gateway.metrics]" in scraped.json()["message"]
    wrong = httpx.get(f"{base_url}/v1/gtl")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["code"] == "INVALID_REQUEST" and "POST /v1/gtl" in wrong.json()["message"]
    assert httpx.delete(f"{base_url}/healthz").json()["code"] == "INVALID_REQUEST"
    host, _, port = base_url.partition("://")[2].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        malformed = sock.recv(4096)
    assert malformed.startswith(b"HTTP/1.1 400") and b"application/json" in malformed
    assert json.loads(malformed.partition(b"\r\n\r\n")[2])["code"] == "INVALID_REQUEST"
    with socket.create_connection((host, int(port)), timeout=5) as sock:  # a WebSocket to nowhere
        sock.sendall(
            b"GET /v2/nothing HTTP/1.1\r\nhost: gateway\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        upgrade = sock.recv(4096)
    assert upgrade.startswith(b"HTTP/1.1 404") and b'"code":"INVALID_REQUEST"' in upgrade
    # the compatible endpoints keep their own answers: only paths nobody serves get the GTL error
    assert httpx.get(f"{base_url}/v1/models").status_code == 200
    unsupported = httpx.post(f"{base_url}/v1/embeddings", json={"input": "x"})
    assert unsupported.status_code == 404 and isinstance(unsupported.json()["error"], dict)


def test_discovery_and_health(base_url):
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/readyz").status_code == 200
    found = httpx.get(f"{base_url}/.well-known/gtl").json()
    address = base_url.partition("://")[2]
    assert found["protocol"] == "gtl" and "1.0" in found["versions"]
    # only this listener is offered, best first, each as the URL connect() takes
    assert list(found["transports"].items()) == [
        ("ws", f"ws://{address}"),
        ("sse", f"sse://{address}"),
        ("http", f"http://{address}"),
    ]
    assert found["paths"]["http"] == "/v1/gtl"


def test_non_streamed_status_says_how_the_session_ended(base_url):
    refused = httpx.post(f"{base_url}/v1/gtl", json={**REQUEST, "stream": False, "model": f"badkey:{MODEL}"})
    assert refused.status_code == 502  # the provider refused the gateway's key; the caller's token was fine
    assert refused.json()["events"][-1]["code"] == "AUTH_FAILED"
    unknown = httpx.post(f"{base_url}/v1/gtl", json={**REQUEST, "stream": False, "model": "no-such-model"})
    assert unknown.status_code == 404 and unknown.json()["events"][-1]["code"] == "MODEL_NOT_FOUND"


def test_a_bad_dev_token_is_401(base_config):
    with gateway(base_config, token="right-token") as url:
        response = httpx.post(f"{url}/v1/gtl", json=REQUEST, headers={"authorization": "Bearer wrong"})
        assert response.status_code == 401 and response.json()["code"] == "AUTH_FAILED"
        with pytest.raises(AuthenticationError):
            gtl_nb.connect(url, token="wrong")
        with gtl_nb.connect(url, token="right-token") as client:
            assert client.complete("echo", "let in").text.count("let in") == 1


def test_a_client_leaving_mid_stream_leaves_a_cancelled_row(write_config, tmp_path, sims, relay_to):
    ledger = tmp_path / "rows.sqlite"
    relay = relay_to(sims.slow)
    config = write_config(
        ledger=ledger, providers={"slow": {"type": "openai", "api_key": SIM_KEY, "base_url": relay.url + "/v1"}}
    )
    with gateway(config) as url, gtl_nb.connect(url) as client:
        stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
        for event in stream:
            if isinstance(event, Token):
                break
        stream.close()
        sid = stream.session_id
        assert relay.cut.wait(10)  # the gateway closed the upstream response while it still runs
    rows = rows_when(ledger, session_id=sid)
    assert [row["status"] for row in rows] == ["cancelled"]


def test_plaintext_binds_to_loopback_only():
    with pytest.raises(ConfigurationError):
        bind("0.0.0.0", 0)


def test_gtl_serve_http_answers_curl_style_requests(base_config):
    base_config.chmod(0o600)  # it holds a provider key: kept private, as the start's warning would ask
    command = [sys.executable, "-m", "gtl_nb.gateway", "--http", "127.0.0.1:0", "--config", str(base_config)]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        line = child.stderr.readline()  # the readiness line
        assert "listening on http://127.0.0.1:" in line
        url = line.rsplit(" ", 1)[1].strip()
        assert httpx.post(f"{url}/v1/gtl", json={**REQUEST, "stream": False}).json()["events"][-1]["type"] == "done"
    finally:
        child.terminate()
        assert child.wait(15) in (0, -15)  # uvicorn ends on SIGTERM by re-raising it once it has shut down


def test_unknown_schemes_are_refused_with_the_known_ones():
    with pytest.raises(GTLError, match=r"unknown endpoint scheme 'gopher'.*grpc://"):
        gtl_nb.connect("gopher://127.0.0.1:1")


def test_accepted_connections_turn_nagle_off():
    """The listener's accepted sockets get TCP_NODELAY (asyncio skips sockets whose protocol number is 0,
    as ``socket.create_server``'s are): with Nagle on, each kept-alive request after the first waited for
    the client's delayed ACK, ~40 ms."""
    import socket as socket_module
    from types import SimpleNamespace

    from gtl_nb.gateway.http import _no_delay, bind

    listener = bind("127.0.0.1", 0)
    with listener, socket_module.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY) == 0
            _no_delay(SimpleNamespace(get_extra_info=lambda name: accepted if name == "socket" else None))
            assert accepted.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY) != 0
        assert client  # the client end stays open until the check is done


@pytest.mark.parametrize("scheme", ["http", "sse"])
@pytest.mark.parametrize("kind", ["text", "tool call"])
def test_an_answer_longer_than_a_frame_arrives_whole_in_several_tokens(tmp_path, scheme, kind):
    """A long answer not streamed is one token: over HTTP/SSE, as on every transport, it goes as several
    frames of at most the gateway's max_frame_bytes, never an error; any other long event (a tool call's
    arguments) goes whole, as it always did."""
    import json as json_module
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.gateway.conftest import write_toml

    text = "A long quay, 港 and harbour. " * 400  # ~12 KB: three frames of 4 KiB
    arguments = json_module.dumps({"notes": text[:6000]})
    call = {"id": "call_1", "type": "function", "function": {"name": "log", "arguments": arguments}}
    message = {"role": "assistant", "content": text} if kind == "text" else {"role": "assistant", "tool_calls": [call]}
    finish = "stop" if kind == "text" else "tool_calls"

    class Upstream(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            body = json_module.dumps(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "model": "m",
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 900, "total_tokens": 903},
                }
            ).encode()
            send_body(self, 200, body)

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{upstream.server_port}/v1"
        config = write_toml(
            tmp_path / "gtl.toml",
            {
                "providers.up": {"type": "openai", "api_key": "k", "base_url": base},
                "gateway": {"max_frame_bytes": 4096},
                "ledger": {"path": str(tmp_path / "ledger.sqlite3")},
            },
        )
        with serving(config, limits=Limits(max_frame_bytes=4096)) as served:
            address = served.url.partition("://")[2]
            with gtl_nb.connect(f"{scheme}://{address}") as client:
                tools = [Tool(name="log", parameters={"type": "object"})] if kind == "tool call" else None
                events = list(client.stream("up:m", "hi", stream=False, tools=tools))
        assert isinstance(events[-1], Done), events[-1]
        tokens = [event.text for event in events if isinstance(event, Token)]
        if kind == "text":
            assert "".join(tokens) == text and len(tokens) >= 3
        else:
            (called,) = [event for event in events if isinstance(event, ToolCallEvent)]
            assert called.function.arguments == arguments
    finally:
        upstream.shutdown()


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_a_prompt_passed_alone_is_told_it_was_read_as_the_model_on_a_gateway_too(base_url, scheme):
    from gtl_nb.protocol.errors import InvalidRequestError

    with gtl_nb.connect(base_url.replace("http://", f"{scheme}://")) as client:
        with pytest.raises(InvalidRequestError, match=r"'hello there' was read as the model"):
            client.complete("hello there")
        # a model the gateway lists, by itself or by its deployment, is told only that the messages are empty
        for named in ("echo", MODEL, f"openai:{MODEL}", "openai"):
            with pytest.raises(InvalidRequestError, match="messages is empty: pass a prompt string"):
                client.complete(named)
