"""Every documented ``[gateway]`` key has its effect, shown on a real gateway (a child process on
loopback), never in the parsed configuration.

``docs/configuration.md``'s gateway tables are walked; a documented key without a check here fails
the first test (the rest of the configuration is proven in tests/engine/test_config_keys.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol import Error, Token
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    GTLError,
    InvalidRequestError,
    OverloadedError,
)
from tests.gateway.conftest import LONG_PROMPT, MODEL, base_providers, write_toml
from tests.gateway.test_tracing import (
    OtlpReceiver,
    run_gateway_reading_stderr,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def documented_gateway_keys() -> set[str]:
    """``gateway.key`` and ``gateway.<listener>.key`` for every row of the gateway key tables."""
    keys: set[str] = set()
    sections: list[str] = []
    in_table = False
    for line in DOCS.read_text().splitlines():
        if line.startswith("#"):
            sections = re.findall(r"`\[(gateway[a-z_.]*)\]`", line)
            in_table = False
        elif line.startswith("| Key |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and sections and not line.startswith("| ---"):
            key = line.split("|")[1].strip().strip("`")
            keys.update(f"{section}.{key}" for section in sections)
    return keys


@pytest.fixture
def config(tmp_path, sims) -> Callable[..., Path]:
    """``config(gateway={...}, http={...}, grpc=..., quic=...)``: a gateway file with the simulators."""

    def write(gateway: dict | None = None, **listeners: dict) -> Path:
        tables = {f"providers.{name}": spec for name, spec in base_providers(sims).items()}
        tables["ledger"] = {"path": str(tmp_path / "ledger.sqlite")}
        tables["routing.retry"] = {"max_attempts": 1}
        tables["gateway"] = dict(gateway or {})
        for transport, table in listeners.items():
            tables[f"gateway.{transport}"] = table
        return write_toml(tmp_path / "gtl.toml", tables)

    return write


def _stdio_config(tmp_path, **gateway) -> Path:
    return write_toml(tmp_path / "stdio.toml", {"gateway": gateway, "ledger": {"enabled": False}})


# -- [gateway] ---------------------------------------------------------------------------------------


def gateway_auth(tmp_path, **_):
    path = _stdio_config(tmp_path, auth="token")
    previous = os.environ.get("GTL_NB_DEV_TOKEN")
    os.environ["GTL_NB_DEV_TOKEN"] = "dev-token-for-the-test"  # the child gateway inherits it
    try:
        with pytest.raises(AuthenticationError):
            gtl_nb.connect(f"stdio://{path}", token="not-the-token")
        remote = gtl_nb.connect(f"stdio://{path}", token="dev-token-for-the-test")
        assert remote.complete("echo", "hi").text
        remote.close()
    finally:
        if previous is None:
            os.environ.pop("GTL_NB_DEV_TOKEN", None)
        else:
            os.environ["GTL_NB_DEV_TOKEN"] = previous


def gateway_max_frame_bytes(tmp_path, **_):
    remote = gtl_nb.connect(f"stdio://{_stdio_config(tmp_path, max_frame_bytes=5000)}")
    try:
        with pytest.raises(InvalidRequestError, match="maximum frame size of 5000 bytes"):
            remote.complete("echo", "x" * 8000)
        assert remote.complete("echo", "a small one still works").text
    finally:
        remote.close()


def gateway_max_sessions_per_connection(tmp_path, config, **_):
    path = config(gateway={"max_sessions_per_connection": 2})
    with gtl_nb.connect(f"stdio://{path}") as client:

        async def three() -> list[object]:
            calls = [client.acomplete(f"slow:{MODEL}", LONG_PROMPT) for _ in range(2)]
            calls.append(client.acomplete("echo", "the third"))
            return await asyncio.gather(*calls, return_exceptions=True)

        first, second, third = asyncio.run(three())
        assert isinstance(third, OverloadedError) and third.retryable
        assert first.text and second.text  # type: ignore[union-attr]


def gateway_max_sessions_per_principal(tmp_path, config, **_):
    # (tests/gateway/test_sessions_per_principal.py: across every transport, and the places given back)
    with start_gateway(config(gateway={"max_sessions_per_principal": 1})) as served:
        first, second = gtl_nb.connect(served.url("ws")), gtl_nb.connect(served.url("sse"))
        try:
            held = first.stream(f"slow:{MODEL}", LONG_PROMPT)
            next(event for event in held if isinstance(event, Token))
            with pytest.raises(OverloadedError, match="max_sessions_per_principal"):
                second.complete("echo", "the development gateway's one principal, over another connection")
            held.close()
        finally:
            first.close()
            second.close()


def _healthz_from(url: str, source: str) -> tuple[socket.socket, bytes]:
    """A kept-alive connection from ``source`` and its answer to ``GET /healthz``."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock, sock.recv(4096)


def gateway_trusted_proxies(tmp_path, config, **_):
    path = config(gateway={"max_connections_per_address": 2, "trusted_proxies": ["127.0.0.1"]})
    with start_gateway(path) as served:
        url = served.url("http")
        opened = []
        try:
            for source, allowed in (("127.0.0.1", 4), ("127.0.0.2", 2)):
                answers = []
                for _ in range(allowed + (source != "127.0.0.1")):
                    sock, answer = _healthz_from(url, source)
                    opened.append(sock)
                    answers.append(answer.split(b"\r\n", 1)[0])
                if source == "127.0.0.1":  # the proxy's connections are not capped
                    assert answers == [b"HTTP/1.1 200 OK"] * allowed
                else:  # anyone else's are
                    assert answers == [b"HTTP/1.1 200 OK"] * allowed + [b"HTTP/1.1 429 Too Many Requests"]
        finally:
            for sock in opened:
                sock.close()
        forwarded = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
        through_proxy = httpx.get(url + "/.well-known/gtl", headers=forwarded, timeout=10).json()
        assert through_proxy["transports"]["ws"].startswith("wss://")
        untrusted = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
        with untrusted:
            assert (
                untrusted.get(url + "/.well-known/gtl", headers=forwarded)
                .json()["transports"]["ws"]
                .startswith("ws://")
            )


def gateway_event_loop(tmp_path, config, **_):
    for choice, expected in (
        (
            "asyncio",
            "gtl gateway: ready (event loop asyncio; no token checked: every client that reaches it is trusted)",
        ),
        ("uvloop", "gtl gateway: ready (event loop uvloop "),
    ):
        with start_gateway(config(gateway={"event_loop": choice})) as served:
            assert any(line.startswith(expected) for line in served.output), served.output
            with gtl_nb.connect(served.url("ws")) as client:
                assert client.complete("echo", f"on {choice}").text
    with pytest.raises(ConfigurationError, match="event_loop"):
        start_gateway(config(gateway={"event_loop": "trio"}))


def gateway_advertise(tmp_path, config, **_):
    advertised = {"grpc": "grpcs://gw.example.com:443", "quic": "quic://gw.example.com:8789"}
    path = config(gateway={"advertise": advertised}, http={"port": 0}, grpc={"port": 0})
    with start_gateway(path) as served:
        document = httpx.get(served.url("http") + "/.well-known/gtl", timeout=10).json()
    assert document["transports"]["grpc"] == advertised["grpc"]
    assert "quic" not in document["transports"], "a listener this gateway does not run is not offered"
    # not advertised: offered to a client that reaches the listener itself, not through a proxy
    with start_gateway(
        config(gateway={"allowed_hosts": ["gw.example.com"]}, http={"port": 0}, grpc={"port": 0})
    ) as served:
        url = served.url("http")
        direct = httpx.get(url + "/.well-known/gtl", timeout=10).json()["transports"]
        forwarded = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
        proxied = httpx.get(url + "/.well-known/gtl", headers=forwarded, timeout=10).json()["transports"]
        other_port = {"host": "gw.example.com:443"}
        renamed = httpx.get(url + "/.well-known/gtl", headers=other_port, timeout=10).json()["transports"]
    assert direct["grpc"] == served.url("grpc")
    assert "grpc" not in proxied and "grpc" not in renamed and renamed["ws"] == "ws://gw.example.com:443"
    with pytest.raises(ConfigurationError, match="advertise"):
        start_gateway(config(gateway={"advertise": {"ws": "ws://elsewhere"}}))


def gateway_allowed_hosts(tmp_path, config, **_):
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    with start_gateway(config(gateway={"allowed_hosts": ["devbox.test"]})) as served:
        url = served.url("http") + "/v1/chat/completions"
        assert httpx.post(url, json=body, headers={"host": "devbox.test"}, timeout=30).status_code == 200
        refused = httpx.post(url, json=body, headers={"host": "elsewhere.test"}, timeout=30)
        assert refused.status_code == 403 and "allowed_hosts" in refused.json()["error"]["message"]  # (OpenAI's shape)


def gateway_max_connections_per_address(tmp_path, config, **_):
    with start_gateway(config(gateway={"max_connections_per_address": 2})) as served:
        url = served.url("ws")
        kept = [gtl_nb.connect(url), gtl_nb.connect(url)]
        try:
            with pytest.raises(GTLError):
                gtl_nb.connect(url)
            kept.pop().close()
            with gtl_nb.connect(url) as again:  # a place was freed
                assert again.complete("echo", "in again").text
        finally:
            for client in kept:
                client.close()


def gateway_max_connections(tmp_path, config, **_):
    # the HTTP and gRPC listeners share 6 connections: 3 each; from several addresses, so the
    # per-address cap is not what refuses
    path = config(gateway={"max_connections": 6}, http={"port": 0}, grpc={"port": 0})
    with start_gateway(path) as served:
        url = served.url("http")
        opened = []
        try:
            answers = []
            for number in range(4):
                sock, answer = _healthz_from(url, f"127.0.0.{2 + number}")
                opened.append(sock)
                answers.append(answer)
            assert [answer.split(b"\r\n", 1)[0] for answer in answers[:3]] == [b"HTTP/1.1 200 OK"] * 3
            assert answers[3].startswith(b"HTTP/1.1 503") and b"\r\nretry-after: 1\r\n" in answers[3].lower()
            with gtl_nb.connect(served.url("grpc")) as other_listener:  # its own share is untouched
                assert other_listener.complete("echo", "still served").text
        finally:
            for sock in opened:
                sock.close()
    # more than the descriptor limit allows: lowered, and said at the default log level
    said = "".join(run_gateway_reading_stderr(config(gateway={"max_connections": 10_000_000}), "lowered"))
    assert "max_connections 10000000 is more than the file-descriptor limit allows" in said, said


def gateway_header_timeout(tmp_path, config, **_):
    with start_gateway(config(gateway={"header_timeout": 0.5})) as served:
        port = served.ports["http"]
        with socket.create_connection(("127.0.0.1", port)) as silent:
            silent.sendall(b"POST /v1/gtl HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the head
            silent.settimeout(10)
            started = time.monotonic()
            assert silent.recv(65536) is not None  # a 408 or the end: either way, closed soon
            while silent.recv(65536):
                pass
            assert time.monotonic() - started < 5


def gateway_idle_timeout(tmp_path, config, **_):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with start_gateway(config(gateway={"idle_timeout": 0.5})) as served:
        with connect(served.url("ws") + "/v1/gtl/ws") as socket_:
            socket_.send('{"type":"hello","versions":["1.0"]}')
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                while True:
                    socket_.recv(timeout=10)
            assert time.monotonic() - started < 5
        with gtl_nb.connect(served.url("ws")) as client:  # a client whose connection idled out reconnects
            assert client.complete("echo", "one").text
            time.sleep(1.0)
            assert client.complete("echo", "two, on a new connection").text


def gateway_write_timeout(tmp_path, config, **_):
    from gtl_nb.protocol import CompletionRequest, Message
    from gtl_nb.protocol.codec import encode
    from tests.gateway.test_unfinished_budget import _upgraded
    from tests.network.conftest import ws_frame, ws_hello

    # eight echo answers of ~64 KB to a client that reads none of them (a 4 KiB receive buffer) fill the
    # gateway's buffers: with write_timeout = 1 it resets the connection soon after; with 30, it does not
    requests = [
        CompletionRequest(session_id=f"unread-{n}", model="echo", messages=[Message("user", "word " * 40_000)])
        for n in range(8)
    ]
    frames = ws_hello() + b"".join(ws_frame(encode(request).strip()) for request in requests)
    for timeout, reset in ((1.0, True), (30.0, False)):
        with (
            start_gateway(config(gateway={"write_timeout": timeout})) as served,
            _upgraded(served.url("http"), receive_buffer=4096) as unread,
        ):
            unread.sendall(frames)
            # with 1 s it ends once the buffers are full and a second has passed: on a loaded machine the
            # answers take a while to fill them, so wait for it (up to 20 s); with 30 s, 3 s show it held
            deadline = time.monotonic() + (20.0 if reset else 3.0)
            while True:
                state = unread.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
                if state in (7, 8) or time.monotonic() >= deadline:  # TCP_CLOSE or TCP_CLOSE_WAIT: the gateway's end
                    break
                time.sleep(0.2)
        assert (state in (7, 8)) is reset, (timeout, state)


def gateway_max_unfinished_bytes(tmp_path, config, **_):
    from tests.gateway.test_unfinished_budget import _upgraded
    from tests.network.conftest import gtl_errors, wait_closed, ws_frame, ws_hello, ws_messages

    held = 900 * 1024  # 836 KiB of each counts (64 KiB are the connection's own): three fit in 3 MiB, not four
    gateway = {"max_frame_bytes": 1024 * 1024, "max_unfinished_bytes": 3 * 1024 * 1024}
    with start_gateway(config(gateway=gateway)) as served:
        holders = [_upgraded(served.url("http")) for _ in range(4)]
        try:
            for sock in holders:
                sock.sendall(ws_hello() + ws_frame(b" " * held, fin=False))
            outcomes = [wait_closed(sock, 2) for sock in holders]
        finally:
            for sock in holders:
                sock.close()
    assert [outcome.how == "open" for outcome in outcomes] == [True, True, True, False]
    assert gtl_errors(ws_messages(outcomes[3].data))[-1].code == "OVERLOADED"


def gateway_shutdown_grace(tmp_path, config, **_):
    served = start_gateway(config(gateway={"shutdown_grace": 0.5}))
    try:
        with gtl_nb.connect(served.url("ws")) as client:
            stream = iter(client.stream(f"slow:{MODEL}", LONG_PROMPT))
            assert any(isinstance(event, Token) for event in stream)
            started = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            *_, last = stream  # a stream ends with its error event (it does not raise)
            assert isinstance(last, Error) and last.code == "CANCELLED" and "shutting down" in last.message
            assert time.monotonic() - started < 5
        assert served.process.wait(10) == 0
    finally:
        served.kill()
    rows = Ledger(tmp_path / "ledger.sqlite").rows()
    assert [row["status"] for row in rows] == ["cancelled"]


# -- the listener tables -----------------------------------------------------------------------------


def listeners_where_they_are_told(tmp_path, config, certs, **_):
    """``host`` and ``port`` of each listener (a port taken from a bound socket, then freed)."""
    ports = {}
    for kind, transport in ((socket.SOCK_STREAM, "http"), (socket.SOCK_STREAM, "grpc"), (socket.SOCK_DGRAM, "quic")):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            ports[transport] = probe.getsockname()[1]
    tls = {"tls_cert": str(certs.certificate), "tls_key": str(certs.key)}
    path = config(
        http={"host": "127.0.0.1", "port": ports["http"]},
        grpc={"host": "127.0.0.1", "port": ports["grpc"]},
        quic={"host": "127.0.0.1", "port": ports["quic"], **tls},
    )
    with start_gateway(path) as served:
        assert served.ports == ports
        for scheme in ("http", "ws", "grpc", "quic"):
            extra = {"verify": str(certs.ca)} if scheme == "quic" else {}
            with gtl_nb.connect(served.url(scheme), **extra) as client:
                assert client.complete("echo", f"over {scheme}").text


def listeners_with_tls(tmp_path, config, certs, **_):
    """``tls_cert`` and ``tls_key``: https/wss/sses on the HTTP port, grpcs, and QUIC."""
    tls = {"tls_cert": str(certs.certificate), "tls_key": str(certs.key)}
    path = config(http={"port": 0, **tls}, grpc={"port": 0, **tls}, quic={"port": 0, **tls})
    with start_gateway(path) as served:
        assert served.url("http").startswith("https://") and served.url("grpc").startswith("grpcs://")
        for scheme in ("sses", "wss", "grpcs", "quic"):
            with gtl_nb.connect(served.url(scheme), verify=str(certs.ca)) as client:
                assert client.complete("echo", f"over {scheme}").text


def listeners_insecure(tmp_path, config, **_):
    """Without ``insecure`` a plaintext listener beyond loopback is refused before anything binds; with
    it (and GhostTokens: a gateway checking no token never leaves loopback), the gateway goes as far as
    binding — to an address this machine does not have, so nothing is exposed."""
    jwt = {"issuer": "gtl-test", "secret_env": "GTL_TEST_JWT_SECRET"}
    env = {"GTL_TEST_JWT_SECRET": "s" * 48}
    for transport in ("http", "grpc"):
        with pytest.raises(ConfigurationError, match="loopback only"):
            start_gateway(config(**{transport: {"host": "192.0.2.1", "port": 0}}), http=None)
        with pytest.raises(ConfigurationError, match="checks no GhostToken"):
            start_gateway(config(**{transport: {"host": "192.0.2.1", "port": 0, "insecure": True}}), http=None)
        exposed = config(
            gateway={"auth": "jwt"}, jwt=jwt, **{transport: {"host": "192.0.2.1", "port": 0, "insecure": True}}
        )
        with pytest.raises(ConfigurationError, match=r"cannot listen on 192\.0\.2\.1"):
            start_gateway(exposed, http=None, env=env)
    with pytest.raises(ConfigurationError, match="QUIC always runs over TLS"):  # insecure never means plaintext QUIC
        start_gateway(config(quic={"port": 0, "insecure": True}), http=None)


# -- [gateway.tracing] -------------------------------------------------------------------------------


def tracing_enabled_endpoint_service_name(tmp_path, config, **_):
    """``enabled``, ``endpoint`` (a bare collector address) and ``service_name``: a span per request at
    that collector; without ``enabled`` none, even with an ``OTEL_*`` variable naming the collector."""
    collector = OtlpReceiver()
    try:
        on = config(tracing={"enabled": True, "endpoint": collector.url, "service_name": "gw-under-test"})
        with start_gateway(on) as served, gtl_nb.connect(served.url("ws")) as client:
            assert client.complete("echo", "traced").text
        (span,) = collector.spans()  # the gateway stopped gracefully: its exporter was flushed
        assert span.name == "chat echo" and span.resource["service.name"] == "gw-under-test"
        assert collector.paths == {"/v1/traces"}
        collector.clear()
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url + "/v1/traces"}
        off = config(tracing={"endpoint": collector.url})
        with start_gateway(off, env=env) as served, gtl_nb.connect(served.url("ws")) as client:
            assert client.complete("echo", "not traced").text
        assert collector.bodies == []
    finally:
        collector.close()


def tracing_exporter(tmp_path, config, **_):
    """``console``: one JSON line per span on standard error; ``none``: no exporter of the gateway's own
    (spans go to the global provider, none here), so the collector an ``OTEL_*`` variable names gets nothing."""
    lines = run_gateway_reading_stderr(config(tracing={"enabled": True, "exporter": "console"}), "to the console")
    spans = [json.loads(line) for line in lines if line.startswith("{")]
    assert [span["name"] for span in spans] == ["chat echo"]
    assert spans[0]["attributes"]["gen_ai.provider.name"] == "echo"
    collector = OtlpReceiver()
    try:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url + "/v1/traces"}
        global_only = config(tracing={"enabled": True, "exporter": "none"})
        with start_gateway(global_only, env=env) as served, gtl_nb.connect(served.url("ws")) as client:
            assert client.complete("echo", "to the global provider").text
        assert collector.bodies == []
    finally:
        collector.close()


def tracing_capture_content(tmp_path, config, **_):
    """``capture_content``: the prompt and the answer on the span when true, neither by default."""
    marker = "the-secret-plan-41"
    collector = OtlpReceiver()
    try:
        for capture in (True, False):
            table = {"enabled": True, "endpoint": collector.url, "capture_content": capture}
            with start_gateway(config(tracing=table)) as served, gtl_nb.connect(served.url("ws")) as client:
                answer = client.complete("echo", f"Tell me {marker}").text
            (span,) = collector.spans()
            if capture:
                assert marker in span.attributes["gen_ai.input.messages"]
                assert json.loads(span.attributes["gen_ai.output.messages"])[0]["parts"][0]["content"] == answer
            else:
                assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for key in span.attributes)
                assert marker.encode() not in b"".join(collector.bodies)
            collector.clear()
    finally:
        collector.close()


# -- the table ---------------------------------------------------------------------------------------

LISTENERS = ("http", "grpc", "quic")
EFFECTS: dict[str, Callable[..., None]] = {
    "gateway.auth": gateway_auth,
    "gateway.max_frame_bytes": gateway_max_frame_bytes,
    "gateway.max_sessions_per_connection": gateway_max_sessions_per_connection,
    "gateway.max_sessions_per_principal": gateway_max_sessions_per_principal,
    "gateway.max_connections_per_address": gateway_max_connections_per_address,
    "gateway.header_timeout": gateway_header_timeout,
    "gateway.idle_timeout": gateway_idle_timeout,
    "gateway.write_timeout": gateway_write_timeout,
    "gateway.max_unfinished_bytes": gateway_max_unfinished_bytes,
    "gateway.shutdown_grace": gateway_shutdown_grace,
    "gateway.trusted_proxies": gateway_trusted_proxies,
    "gateway.advertise": gateway_advertise,
    "gateway.allowed_hosts": gateway_allowed_hosts,
    "gateway.max_connections": gateway_max_connections,
    "gateway.event_loop": gateway_event_loop,
    **{
        f"gateway.{t}.{key}": listeners_where_they_are_told
        for t in ("http", "grpc", "quic")
        for key in ("host", "port")
    },
    **{f"gateway.{t}.{key}": listeners_with_tls for t in ("http", "grpc", "quic") for key in ("tls_cert", "tls_key")},
    **{f"gateway.{t}.insecure": listeners_insecure for t in ("http", "grpc", "quic")},
    "gateway.tracing.enabled": tracing_enabled_endpoint_service_name,
    "gateway.tracing.endpoint": tracing_enabled_endpoint_service_name,
    "gateway.tracing.service_name": tracing_enabled_endpoint_service_name,
    "gateway.tracing.exporter": tracing_exporter,
    "gateway.tracing.capture_content": tracing_capture_content,
}


def test_every_documented_gateway_key_has_a_check():
    documented = documented_gateway_keys()
    assert "gateway.max_frame_bytes" in documented and "gateway.quic.port" in documented, documented
    assert sorted(documented - set(EFFECTS)) == [], "documented gateway keys without a proven effect"
    assert sorted(set(EFFECTS) - documented) == [], "checks for gateway keys the docs do not list"


@pytest.mark.slow
@pytest.mark.parametrize("check", sorted(set(EFFECTS.values()), key=lambda f: f.__name__), ids=lambda f: f.__name__)
def test_the_key_has_its_effect(check, tmp_path, config, certs):
    check(tmp_path=tmp_path, config=config, certs=certs)
