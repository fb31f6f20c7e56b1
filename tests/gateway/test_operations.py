"""The audit log and ``/metrics`` wired into ``gtl serve``: one request through a real gateway process
shows in the metrics and leaves one audit record whose chain ``gtl audit verify`` accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol.errors import PermissionDeniedError
from tests.gateway.conftest import write_toml


def test_a_request_is_counted_in_metrics_and_audited_once(tmp_path):
    audit = tmp_path / "audit.jsonl"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"path": str(tmp_path / "ledger.sqlite")},
            "providers.echo": {},
            "providers.slowecho": {"type": "echo"},
            "providers.slowecho.options": {"pace": 0.05},
            "gateway.http": {"port": 0},
            "gateway.audit": {"path": str(audit), "fsync": False},
            "gateway.metrics": {"require_token": False},
        },
    )
    with start_gateway(config) as gateway:
        with gtl_nb.connect(gateway.url("ws")) as client:
            answer = client.complete("echo", "count me, audit me")
            stream = client.stream("slowecho:echo", "a session still open while /metrics is read")
            next(iter(stream))
            during = httpx.get(gateway.url("http") + "/metrics", timeout=10).text
            stream.close()
        scraped = httpx.get(gateway.url("http") + "/metrics", timeout=10)
        assert scraped.status_code == 200
        assert 'gtl_requests_total{model="echo",provider="echo",status="ok"} 1.0' in scraped.text
        assert 'gtl_requests_total{model="echo",provider="slowecho",status="cancelled"} 1.0' in scraped.text
        assert 'gtl_open_sessions{transport="ws"} 1.0' in during  # one open session, counted by transport
        assert 'gtl_open_sessions{transport="ws"} 0.0' in scraped.text
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [record for record in records if record.get("session_id") == answer.session_id]
    assert len(mine) == 1 and mine[0]["status"] == "ok"
    assert "count me" not in audit.read_text()  # prompts stay out at the default verbosity
    verified = subprocess.run(
        [sys.executable, "-m", "gtl_nb", "audit", "verify", "--log", str(audit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_scraper_token_needs_metrics_read_and_nothing_else(tmp_path, monkeypatch):
    """``/metrics`` with ``require_token``: the ``metrics:read`` scope alone opens it; a user's
    ``chat:write``/``models:read`` token is refused with 403, and the scraper's token runs no completion."""
    from gtl_nb.gateway.tokens.mint import mint_token

    secret = "s" * 40
    monkeypatch.setenv("GTL_TEST_SCRAPE_SECRET", secret)
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"path": str(tmp_path / "ledger.sqlite")},
            "providers.echo": {},
            "gateway": {"auth": "jwt"},
            "gateway.jwt": {"issuer": "gtl-test", "secret_env": "GTL_TEST_SCRAPE_SECRET"},
            "gateway.http": {"port": 0},
            "gateway.metrics": {"require_token": True},
        },
    )

    def token(*scopes: str) -> str:
        return mint_token(secret, subject="scraper", scopes=scopes, lifetime=600, issuer="gtl-test")

    with start_gateway(config) as gateway:
        url = gateway.url("http") + "/metrics"
        scraper = {"authorization": f"Bearer {token('metrics:read')}"}
        assert httpx.get(url, headers=scraper, timeout=10).status_code == 200
        user = {"authorization": f"Bearer {token('chat:write', 'models:read', 'usage:read')}"}
        refused = httpx.get(url, headers=user, timeout=10)
        assert refused.status_code == 403 and "metrics:read" in refused.text
        scraping = gtl_nb.connect(gateway.url("ws"), token=token("metrics:read"))
        with scraping as client, pytest.raises(PermissionDeniedError, match="chat:write"):
            client.complete("echo", "a scraper may not chat")


def test_refused_tokens_are_counted_by_reason_on_every_transport_and_never_shown(tmp_path, monkeypatch):
    """Each token the gateway refuses — on ``/v1/gtl``, the OpenAI-compatible endpoint through the official
    SDK, a WebSocket's hello and ``/metrics`` itself — adds one to ``gtl_token_refusals_total`` under its
    fixed reason word; the tokens themselves appear nowhere in the scrape."""
    import openai

    from gtl_nb.gateway.tokens.mint import mint_token
    from gtl_nb.protocol.errors import AuthenticationError

    secret = "s" * 40
    monkeypatch.setenv("GTL_TEST_REFUSALS_SECRET", secret)
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"path": str(tmp_path / "ledger.sqlite")},
            "providers.echo": {},
            "gateway": {"auth": "jwt"},
            "gateway.jwt": {"issuer": "gtl-test", "secret_env": "GTL_TEST_REFUSALS_SECRET"},
            "gateway.http": {"port": 0},
            "gateway.metrics": {"require_token": True},
        },
    )

    def token(signer: str = secret, **options: Any) -> str:
        scopes = ["chat:write", "metrics:read"]
        return mint_token(signer, subject="someone", scopes=scopes, issuer="gtl-test", **options)

    forged = token("f" * 40, lifetime=600)  # signed with another secret: the canary of this test
    expired = token(lifetime=60, now=1_700_000_000)
    with start_gateway(config) as gateway:
        http = gateway.url("http")
        body = {"type": "completion_request", "session_id": "s1", "model": "echo", "messages": []}
        for bearer in (forged, "not-a-token"):
            answer = httpx.post(http + "/v1/gtl", json=body, headers={"authorization": f"Bearer {bearer}"}, timeout=10)
            assert answer.status_code == 401, answer.text
        sdk = openai.OpenAI(base_url=http + "/v1", api_key=expired, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(AuthenticationError), gtl_nb.connect(gateway.url("ws"), token=forged) as client:
            client.complete("echo", "refused at hello")
        assert httpx.post(http + "/v1/gtl", json=body, timeout=10).status_code == 401  # no token at all
        for _ in range(3):  # an orchestrator's probes, without a token: no refused token among them
            assert httpx.get(http + "/readyz", timeout=10).status_code == 200
        forged_scrape = httpx.get(http + "/metrics", headers={"authorization": f"Bearer {forged}"}, timeout=10)
        assert forged_scrape.status_code == 401
        scraped = httpx.get(http + "/metrics", headers={"authorization": f"Bearer {token(lifetime=600)}"}, timeout=10)
    assert scraped.status_code == 200
    counted = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in scraped.text.splitlines()
        if line.startswith("gtl_token_refusals_total{")
    }
    assert counted == {"bad-signature": 3.0, "malformed": 1.0, "expired": 1.0, "missing": 1.0}, counted
    assert forged not in scraped.text and expired not in scraped.text and forged.split(".")[2] not in scraped.text


def test_listing_models_outright_without_models_read_is_refused_not_empty(tmp_path, monkeypatch):
    """``GET /v1/models`` (what both SDKs' ``models.list()`` call) with a token that lacks ``models:read``
    is a 403 naming the scope, in each SDK's error shape: an empty list would read as "this gateway
    serves nothing". With the scope it lists the models."""
    import anthropic
    import openai

    from tests.gateway.conftest import jwt_echo_gateway

    config, token = jwt_echo_gateway(tmp_path, monkeypatch, "GTL_TEST_MODELS_SECRET")
    with start_gateway(config) as gateway:
        base = gateway.url("http")
        chat_only = openai.OpenAI(base_url=base + "/v1", api_key=token("chat:write"), max_retries=0)
        with pytest.raises(openai.PermissionDeniedError, match="models:read"):
            chat_only.models.list()
        with pytest.raises(openai.PermissionDeniedError, match="models:read"):
            chat_only.models.retrieve("echo")
        assert chat_only.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        claude = anthropic.Anthropic(base_url=base, api_key=token("chat:write"), max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError, match="models:read"):
            claude.models.list()
        reader = openai.OpenAI(base_url=base + "/v1", api_key=token("models:read"), max_retries=0)
        assert "echo" in [model.id for model in reader.models.list()]
