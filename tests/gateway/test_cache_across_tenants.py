"""``[cache] scope`` on a real GhostToken gateway: one tenant never reads another's cached answer (a
``cached`` status, cost 0, would tell it that the other asked the same question, and hand it an answer
the other's key paid for); one tenant's principals do, by default. The in-process cache and the one
replicas share in Redis alike."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gtl_nb.gateway.local import start_gateway
from tests.gateway.conftest import jwt_echo_gateway

QUESTION = {"type": "completion_request", "session_id": "", "model": "echo", "temperature": 0, "stream": False}


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    from tests.redis_server import RedisServer, find_redis_server

    if importlib.util.find_spec("redis") is None or find_redis_server() is None:
        pytest.skip("redis-server or redis-py is not installed")
    server = RedisServer.start(tmp_path / "redis")
    try:
        yield server.url
    finally:
        server.stop()


def asker(base: str, mint: Callable[..., str]) -> Callable[..., bool]:
    """``ask(subject, tenant=None)``: the one question as that principal; whether it came from the cache."""

    def ask(subject: str, tenant: str | None = None, question: str = "the same question") -> bool:
        claims: dict[str, Any] = {"tenant": tenant} if tenant else {}
        token = mint("chat:write", subject=subject, **claims)
        body = {**QUESTION, "messages": [{"role": "user", "content": question}]}
        answer = httpx.post(f"{base}/v1/gtl", json=body, headers={"authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        events = answer.json()["events"]
        hit = any(event["type"] == "status" and event["state"] == "cached" for event in events)
        usage = [event for event in events if event["type"] == "usage"]
        assert bool(usage and usage[-1].get("cache_hit")) is hit and (not hit or usage[-1]["cost"] == 0)
        return hit

    return ask


def gateway_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: dict[str, Any]) -> Any:
    tmp_path.mkdir(exist_ok=True)
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "CACHE_SCOPE_SECRET", {"cache": {"enabled": True, **cache}})
    return start_gateway(config), mint


@pytest.mark.parametrize("backend", ["memory://", "redis"])
def test_two_tenants_never_share_an_entry_and_one_tenants_principals_do(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
):
    url = request.getfixturevalue("redis_url") if backend == "redis" else backend
    started, mint = gateway_with(tmp_path, monkeypatch, {"backend": url})  # the default scope: "tenant"
    with started as gateway:
        ask = asker(gateway.url("http"), mint)
        assert not ask("ann", "acme")
        assert not ask("bob", "globex")  # the same question from another tenant: asked upstream again
        assert ask("cat", "acme")  # another of acme's principals: acme's own answer
        assert ask("bob", "globex")
        assert not ask("dan") and not ask("eve")  # no tenant: each principal its own
        assert ask("dan")


def test_scope_principal_and_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started, mint = gateway_with(tmp_path / "p", monkeypatch, {"scope": "principal"})
    with started as gateway:
        ask = asker(gateway.url("http"), mint)
        assert [ask("ann", "acme"), ask("cat", "acme"), ask("ann", "acme")] == [False, False, True]
        assert not ask("ann", "globex")  # another tenant's "ann" is another principal
    started, mint = gateway_with(tmp_path / "s", monkeypatch, {"scope": "shared"})
    with started as gateway:
        ask = asker(gateway.url("http"), mint)
        assert [ask("ann", "acme"), ask("bob", "globex")] == [False, True]
