"""Discovery: ``connect("HOST:PORT")`` and ``connect("https://HOST:PORT")`` read ``/.well-known/gtl`` and use the
best transport that works, within a budget."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.parse

import pytest

import gtl_nb
from gtl_nb.engine.loop import shared_loop
from gtl_nb.gateway.listeners import Limits
from gtl_nb.protocol import AuthenticationError
from gtl_nb.protocol.errors import ConfigurationError, ProviderUnavailableError
from gtl_nb.transports.discovery import BUDGET, Document, choose, document_urls, offered_urls
from tests.gateway.conftest import send_body
from tests.gateway.test_http import gateway, serving


def _closed_port() -> int:
    """A TCP port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_bare_loopback_address_finds_the_websocket_and_reconnects_after_a_drop(base_config):
    limits = Limits(max_frame_bytes=64 * 1024, idle_timeout=0.3)
    with serving(base_config, limits=limits) as served:
        address = served.url.partition("://")[2]
        with gtl_nb.connect(address) as client:  # https first (this listener is plaintext), then http on loopback
            assert client.transport == "ws"
            assert client.complete("echo", "found").text.count("found") == 1
            first = client.backend.channel
            # the gateway closes the connection once idle for 0.3 s (GatewayConnection looks at least once a second)
            time.sleep(1.5)
            assert client.complete("echo", "again").text.count("again") == 1  # a new connection, by itself
            assert client.backend.channel is not first


def test_an_offer_that_does_not_answer_is_skipped_within_the_budget(base_config):
    closed = _closed_port()
    offers = {"grpc": f"grpc://127.0.0.1:{closed}", "quic": f"quic://127.0.0.1:{closed}"}
    with serving(base_config, offers=offers) as served:
        address = served.url.partition("://")[2]
        started = time.monotonic()
        with gtl_nb.connect(address) as client:
            assert client.transport == "ws"  # QUIC and gRPC were offered first, but nothing answers there
            assert client.complete("echo", "skipped").text
        assert time.monotonic() - started < BUDGET + 1


def test_choose_takes_the_first_offer_that_starts(base_config):
    with gateway(base_config) as url:
        address = url.partition("://")[2]
        dead = f"ws://127.0.0.1:{_closed_port()}"
        offers = [("ws", dead), ("sse", f"sse://{address}"), ("http", url)]

        async def pick() -> str:
            backend = await choose(offers, try_timeout=1.0, deadline=time.monotonic() + 3)
            try:
                return backend.transport
            finally:
                await backend.aclose()

        assert shared_loop().run(pick(), timeout=10) == "sse"

        async def none_works() -> None:
            await choose([("ws", dead), ("http", f"http://127.0.0.1:{_closed_port()}")], try_timeout=1.0)

        with pytest.raises(ProviderUnavailableError) as failed:
            shared_loop().run(none_works(), timeout=10)
        assert dead in str(failed.value) and "cannot reach" in str(failed.value)


def test_a_refused_token_ends_discovery_at_once(base_config):
    with gateway(base_config, token="right-token") as url:
        address = url.partition("://")[2]
        with pytest.raises(AuthenticationError):
            gtl_nb.connect(address, token="wrong")
        with gtl_nb.connect(address, token="right-token") as client:
            assert client.transport == "ws"


def test_where_discovery_looks():
    assert document_urls("127.0.0.1:8787") == ["https://127.0.0.1:8787", "http://127.0.0.1:8787"]
    assert document_urls("[::1]:8787") == ["https://[::1]:8787", "http://[::1]:8787"]
    assert document_urls("localhost:8787") == ["https://localhost:8787", "http://localhost:8787"]
    # beyond loopback a gateway is reached over TLS only: never a silent fall back to plaintext
    assert document_urls("gateway.example:443") == ["https://gateway.example:443"]
    assert document_urls("https://gateway.example:443/x") == ["https://gateway.example:443"]


@pytest.mark.parametrize("endpoint", ["localhost", "127.0.0.1:http", "a/b:80", "host:0", "[::1:80", ":80"])
def test_what_is_not_host_port_is_a_clear_error(endpoint):
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        gtl_nb.connect(endpoint)


def test_the_embedded_client_says_so():
    with gtl_nb.connect(ledger=False) as client:
        assert client.transport == "embedded"


class _Document(http.server.BaseHTTPRequestHandler):
    """Serves ``server.document`` at every path (a hostile or careless gateway's discovery document)."""

    def do_GET(self) -> None:
        body = json.dumps(self.server.document).encode()  # type: ignore[attr-defined]
        send_body(self, 200, body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_document_cannot_make_the_client_run_a_command_or_send_its_token_elsewhere(tmp_path):
    marker = tmp_path / "ran"
    command = urllib.parse.quote(f"sh -c 'touch {marker}'")
    stranger = socket.create_server(("127.0.0.2", 0))  # a listener on another host: must never see the token
    stranger.settimeout(0.5)
    documents = {
        "ws": f"stdio://?command={command}",
        "sse": f"sse://127.0.0.2:{stranger.getsockname()[1]}",
        "grpc": "embedded://",
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Document)
    server.document = {"protocol": "gtl", "versions": ["1.0"], "transports": documents}  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ProviderUnavailableError, match="no transport"):
            gtl_nb.connect(f"127.0.0.1:{server.server_port}", token="secret-token")
        assert not marker.exists()
        with pytest.raises(socket.timeout):
            stranger.accept()
    finally:
        server.shutdown()
        stranger.close()


def test_offers_must_name_the_documents_host_and_over_tls_a_tls_scheme():
    document = Document(
        protocol="gtl",
        transports={
            "quic": "quic://gw.example:9",
            "grpc": "grpc://gw.example:8",
            "ws": "ws://elsewhere.example:7",
            "sse": "sses://gw.example:6",
        },
    )
    assert offered_urls(document, "https://gw.example:443") == [
        ("quic", "quic://gw.example:9"),
        ("sse", "sses://gw.example:6"),
    ]
    assert [name for name, _ in offered_urls(document, "http://GW.example:80")] == ["quic", "grpc", "sse"]


def test_no_gateway_found_names_each_url_once():
    import gtl_nb
    from gtl_nb.protocol.errors import ProviderUnavailableError

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ProviderUnavailableError) as refused:
        gtl_nb.connect(f"https://127.0.0.1:{port}")
    assert refused.value.message.count(f"https://127.0.0.1:{port}") == 1
