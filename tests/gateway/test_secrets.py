"""Secrets never leave the gateway: a provider that quotes the key it refused, a canary key, and every
place a key could surface — the client's error on each transport, the non-streamed HTTP body, the
``models`` query's error, the ledger, ``/metrics``, the audit log, the gateway's own output at DEBUG, and what
it prints when it dies: a fatal signal's stack dump, a failed start."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator

import httpx
import pytest

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol.errors import ConfigurationError, GTLError
from tests.gateway.conftest import send_body, write_toml

HEADER_CANARY = "canary-proxy-header-0b8e61d27c4a"  # a proxy's key, sent as a configured extra header
CANARY = "canary-provider-key-7f3a9c1e5b2d4f60"  # not shaped like any known key: only exact scrubbing catches it
MASKED = f"{CANARY[:8]}*******{CANARY[-4:]}"  # how OpenAI quotes a refused key: its first 8 and last 4 characters


class _Quoting(http.server.BaseHTTPRequestHandler):
    """An OpenAI-shaped provider that refuses every key and quotes it back in full (some do) and masked
    (as OpenAI does)."""

    def _refuse(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        proxy_key = self.headers.get("x-proxy-key")
        if proxy_key:  # a proxy in front of the provider that quotes its own key in a request error
            error = {"message": f"model not allowed for proxy key {proxy_key}", "type": "invalid_request_error"}
            send_body(self, 400, json.dumps({"error": error}).encode())
            return
        key = self.headers.get("authorization", "")[7:]
        error = {
            "message": f"Incorrect API key provided: {key}. Shown masked: {key[:8]}*******{key[-4:]}.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
        body = json.dumps({"error": error}).encode()
        send_body(self, 401, body)

    do_POST = _refuse
    do_GET = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def leaky_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGateway]:
    provider = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quoting)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    directory = tmp_path_factory.mktemp("secrets")
    tables = {
        "providers.leaky": {
            "type": "openai",
            "api_key": CANARY,
            "base_url": f"http://127.0.0.1:{provider.server_port}/v1",
        },
        "providers.proxied": {
            "type": "openai",
            "api_key": "sk-not-the-point",
            "base_url": f"http://127.0.0.1:{provider.server_port}/v1",
            "headers": {"X-Proxy-Key": HEADER_CANARY},
        },
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(directory / "ledger.sqlite")},
        "gateway.http": {"port": 0},
        "gateway.audit": {"path": str(directory / "audit.jsonl"), "fsync": False},
        "gateway.metrics": {"require_token": False},
    }
    gateway = start_gateway(write_toml(directory / "gtl.toml", tables), env={"GTL_NB_LOG": "DEBUG"})
    try:
        yield gateway
    finally:
        gateway.stop()
        provider.shutdown()


@pytest.mark.parametrize("scheme", ["http", "sse", "ws"])
def test_a_quoted_key_is_scrubbed_from_what_clients_see(leaky_gateway, scheme):
    with gtl_nb.connect(leaky_gateway.url(scheme)) as client:
        with pytest.raises(GTLError) as refused:
            client.complete("leaky:gpt-4o-mini", "hello")
        assert refused.value.code == "AUTH_FAILED"
        assert CANARY not in str(refused.value)
        assert CANARY[:8] not in str(refused.value) and MASKED not in str(refused.value)
        # the provider's words would read as if the client's own key were wrong: the client is told whose it is
        assert "Incorrect API key" not in str(refused.value)
        assert "refused the gateway's own credentials" in str(refused.value) and "'leaky'" in str(refused.value)
        assert "your token was accepted" in str(refused.value)
        with pytest.raises(GTLError) as listing:
            client.list_models("leaky")
        assert CANARY not in str(listing.value) and CANARY[:8] not in str(listing.value)
        # the model list's refusal too: the provider's words about the key (in whatever form it quotes
        # it: scrubbing finds only the forms it knows) are the operator's, not the client's
        assert listing.value.code == "AUTH_FAILED" and "Incorrect API key" not in str(listing.value)
        assert "refused the gateway's own credentials" in str(listing.value) and "'leaky'" in str(listing.value)


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_a_quoted_header_credential_is_scrubbed_from_what_clients_see(leaky_gateway, scheme):
    """A request error keeps the provider's words (they say what to change) — but not a configured header's
    value quoted in them: a proxy's or API manager's key is a credential like the deployment's key."""
    with gtl_nb.connect(leaky_gateway.url(scheme)) as client, pytest.raises(GTLError) as refused:
        client.complete("proxied:gpt-4o-mini", "hello")
    assert refused.value.code == "INVALID_REQUEST", refused.value
    assert "model not allowed for proxy key [redacted]" in str(refused.value)
    assert HEADER_CANARY not in str(refused.value)


def test_the_key_is_nowhere_in_bodies_ledger_or_output(leaky_gateway):
    request = {
        "type": "completion_request",
        "session_id": "s-secret",
        "model": "leaky:gpt-4o-mini",
        "stream": False,
        "messages": [{"role": "user", "content": "hi"}],
    }
    answer = httpx.post(leaky_gateway.url("http") + "/v1/gtl", json=request, timeout=30)
    assert answer.status_code == 502 and CANARY not in answer.text and CANARY[:8] not in answer.text
    proxied = {**request, "session_id": "s-header-secret", "model": "proxied:gpt-4o-mini"}
    answer = httpx.post(leaky_gateway.url("http") + "/v1/gtl", json=proxied, timeout=30)
    assert answer.status_code == 400 and HEADER_CANARY not in answer.text and "[redacted]" in answer.text
    metrics = httpx.get(leaky_gateway.url("http") + "/metrics", timeout=30)
    assert "gtl_requests_total" in metrics.text and CANARY not in metrics.text
    assert leaky_gateway.stop() == 0
    audit = (leaky_gateway.config.parent / "audit.jsonl").read_text()  # type: ignore[union-attr]
    assert '"status": "error"' in audit or '"status":"error"' in audit
    assert CANARY not in audit and CANARY[:8] not in audit
    rows = Ledger(leaky_gateway.config.parent / "ledger.sqlite").rows()  # type: ignore[union-attr]
    assert rows and CANARY not in json.dumps(rows) and CANARY[:8] not in json.dumps(rows)
    assert CANARY not in "".join(leaky_gateway.output) and CANARY[:8] not in "".join(leaky_gateway.output)
    for place in (audit, json.dumps(rows), "".join(leaky_gateway.output)):
        assert HEADER_CANARY not in place
    # the operator reads the provider's own words in the gateway's log, scrubbed
    refusals = [line for line in leaky_gateway.output if "refused the gateway's credentials" in line]
    assert refusals and all("Incorrect API key provided: [redacted]" in line for line in refusals)


def _keyed_tables(directory, port: int, api_key: str) -> dict[str, dict[str, object]]:
    return {
        "providers.keyed": {"type": "openai", "api_key": api_key, "base_url": f"http://127.0.0.1:{port}/v1"},
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(directory / "ledger.sqlite")},
        "gateway.http": {"port": 0},
    }


@pytest.mark.parametrize("bad", ["\nX-Injected: 1", "\u00e9"], ids=["newline", "non-ascii"])
def test_a_key_no_header_can_carry_stops_the_start_without_being_quoted(tmp_path, bad):
    """A key with a character no HTTP header may carry (a stray newline from a pasted file): the
    gateway refuses to start, naming the table and the position, never the key."""
    with pytest.raises(ConfigurationError) as refused:
        start_gateway(write_toml(tmp_path / "gtl.toml", _keyed_tables(tmp_path, 9, CANARY + bad)))
    assert "[providers.keyed]" in str(refused.value) and CANARY not in str(refused.value)


def test_crash_output_holds_no_key(tmp_path):
    """What a dying gateway prints: a fatal signal's stack dump (faulthandler) while a request is under
    way, and a start that fails (its port taken) — neither quotes the configured key."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    provider = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quoting)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    config = write_toml(tmp_path / "gtl.toml", _keyed_tables(tmp_path, provider.server_port, CANARY))
    try:
        gateway = start_gateway(config, env={"GTL_NB_LOG": "DEBUG", "PYTHONFAULTHANDLER": "1"})
        with gtl_nb.connect(gateway.url("ws")) as client, pytest.raises(GTLError):
            client.complete("keyed:gpt-4o-mini", "hello")
        gateway.process.send_signal(signal.SIGABRT)
        gateway.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while "Fatal Python error" not in "".join(gateway.output) and time.monotonic() < deadline:
            time.sleep(0.05)  # the reader thread drains stderr after the exit
        dump = "".join(gateway.output)
        assert "Fatal Python error" in dump and CANARY not in dump
    finally:
        provider.shutdown()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        tables = _keyed_tables(tmp_path, 9, CANARY)
        tables["gateway.http"] = {"port": taken.getsockname()[1]}
        failed = subprocess.run(
            [sys.executable, "-m", "gtl_nb", "serve", "--config", str(write_toml(tmp_path / "taken.toml", tables))],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "GTL_NB_LOG": "DEBUG"},
            check=False,
        )
    assert failed.returncode != 0 and "address" in (failed.stdout + failed.stderr).lower()
    assert CANARY not in failed.stdout + failed.stderr


def test_an_unreachable_upstreams_address_stays_with_the_operator(tmp_path):
    """A gateway's clients learn which deployment could not be reached, never its address (the network
    behind a gateway is the operator's); the gateway's log says where and why."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    tables = _keyed_tables(tmp_path, port, "sk-test")
    tables["providers.internal"] = tables.pop("providers.keyed")
    gateway = start_gateway(write_toml(tmp_path / "gtl.toml", tables))
    try:
        for scheme in ("http", "ws"):
            with gtl_nb.connect(gateway.url(scheme)) as client, pytest.raises(GTLError) as failed:
                client.complete("internal:gpt-4o-mini", "hello")
            assert failed.value.code == "PROVIDER_UNAVAILABLE"
            assert "cannot reach deployment 'internal'" in str(failed.value) and str(port) not in str(failed.value)
        compatible = httpx.post(
            gateway.url("http") + "/v1/chat/completions",
            json={"model": "internal:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert compatible.status_code == 502 and str(port) not in compatible.text
    finally:
        gateway.stop()
    assert f"cannot reach http://127.0.0.1:{port}" in "".join(gateway.output)


@pytest.mark.parametrize(
    ("said", "told"),
    [
        (
            "Rate limit reached for gpt-4o in organization org-AbCdEf0123456789XyZ01234 on tokens per min",
            "Rate limit reached for gpt-4o in organization org-[redacted] on tokens per min",
        ),
        ("project proj_AbCdEf0123456789XyZ01234 is over its budget", "project proj_[redacted] is over its budget"),
        (
            "This request would exceed the rate limit for your organization (a22cf6e6-a940-4d5b-9c3e-0123456789ab) of "
            "1,000,000 input tokens per minute",
            "This request would exceed the rate limit for your organization ([redacted]) of 1,000,000 input tokens "
            "per minute",
        ),
        (
            "User: arn:aws:iam::123456789012:user/gateway-svc is not authorized to perform: bedrock:InvokeModel",
            "User: arn:aws:[redacted] is not authorized to perform: bedrock:InvokeModel",
        ),
        # the caller's own words, not an account: left alone
        ("The model `proj_summarizer` does not exist", "The model `proj_summarizer` does not exist"),
        ("see org-settings for your limits", "see org-settings for your limits"),
    ],
)
def test_a_gateways_clients_never_read_the_operators_account_ids(said, told):
    from gtl_nb.engine.caller_errors import without_account_ids
    from gtl_nb.protocol.messages import Error

    assert without_account_ids(Error(session_id="s", code="RATE_LIMIT", message=said)).message == told
