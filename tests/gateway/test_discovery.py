"""Discovery: ``connect("HOST:PORT")`` and ``connect("https://HOST:PORT")`` read ``/.well-known/gtl`` and use the
best transport that works, within a budget."""

from __future__ import annotations

import socket
import time

import pytest

import gtl_nb
from gtl_nb.engine.loop import shared_loop
from gtl_nb.gateway.listeners import Limits
from gtl_nb.protocol import AuthenticationError
from gtl_nb.protocol.errors import ConfigurationError, ProviderUnavailableError
from gtl_nb.transports.discovery import BUDGET, choose, document_urls
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
