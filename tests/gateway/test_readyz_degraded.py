"""``/readyz`` of a gateway whose Redis budget store goes away and comes back: requests keep being
answered (under local limits), ``/readyz`` says ``degraded`` with the budgets' reason — never the
server's password — and ``gtl_store_degraded`` says 1, until Redis answers again."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

CANARY = "canary-pw-91b7"
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def _redis_server(folder: Path):
    from tests.redis_server import RedisServer, find_redis_server

    if importlib.util.find_spec("redis") is None or find_redis_server() is None:
        pytest.skip("redis-server or redis-py is not installed")
    return RedisServer.start(folder, password=CANARY)


def test_readyz_says_the_budgets_are_degraded_while_redis_is_away(tmp_path: Path):
    import httpx

    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import write_toml

    server = _redis_server(tmp_path / "redis")
    try:
        config = write_toml(
            tmp_path / "gtl.toml",
            {
                "ledger": {"path": str(tmp_path / "ledger.sqlite3")},
                "budgets": {"requests_per_minute": 1000, "backend": server.url},
                "providers.echo": {},
                "gateway.http": {"port": 0},
                "gateway.metrics": {"require_token": False},
            },
        )
        with start_gateway(config, env={"GTL_NB_LOG": ""}) as gateway:  # the default level: WARNING
            base = gateway.url("http")

            def ask() -> int:
                return httpx.post(base + "/v1/chat/completions", json=BODY, timeout=30).status_code

            def ready() -> httpx.Response:
                return httpx.get(base + "/readyz", timeout=10)

            assert ask() == 200 and ready().json() == {"status": "ready"}
            server.stop()
            assert [ask() for _ in range(3)] == [200, 200, 200]  # no request fails because Redis is away
            degraded = ready()
            assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"
            assert set(degraded.json()["degraded"]) == {"budgets"}
            reason = degraded.json()["degraded"]["budgets"]
            assert f"redis://:***@127.0.0.1:{server.port}/0" in reason and "counted by this replica alone" in reason
            assert CANARY not in degraded.text
            metrics = httpx.get(base + "/metrics", timeout=10).text
            assert 'gtl_store_degraded{store="budgets"} 1.0' in metrics
            assert 'gtl_store_degraded{store="cache"} 0.0' in metrics
            server.restart()
            deadline = time.monotonic() + 20
            while ready().json()["status"] != "ready":  # a probe asks every second, with or without traffic
                assert time.monotonic() < deadline, ready().text
                time.sleep(0.1)
            assert ask() == 200
            assert 'gtl_store_degraded{store="budgets"} 0.0' in httpx.get(base + "/metrics", timeout=10).text
            output = "".join(gateway.output)
        warnings = [line for line in output.splitlines() if "WARNING" in line and "budgets: Redis at" in line]
        # this Redis keeps nothing across a restart: the principal's usage is rebuilt from the ledger, once
        rebuilt = [line for line in warnings if "had lost the usage of 'root': rebuilt from the ledger" in line]
        assert len(rebuilt) == 1, warnings
        warnings = [line for line in warnings if line not in rebuilt]
        # one for the outage (not one per request), and one for its end: at the default level an
        # operator sees Redis come back as it saw it go
        assert len(warnings) == 2, warnings
        assert "is unreachable" in warnings[0] and "counted by this replica alone" in warnings[0]
        assert "answers again after" in warnings[1] and "limits are counted in Redis again" in warnings[1]
        assert CANARY not in output
    finally:
        server.stop()


def test_readyz_collects_every_part_that_says_it_is_degraded(monkeypatch: pytest.MonkeyPatch):
    """The engine's four stores and its flights, the revocation list behind a reload's swappable
    authenticator, and the engine's audit log; a part that is fine, or has no reason, is left out."""
    from types import SimpleNamespace

    from gtl_nb.gateway import audit
    from gtl_nb.gateway.readiness import degraded_parts as _degraded
    from gtl_nb.gateway.reload import SwappableAuthenticator

    def part(reason: str | None) -> SimpleNamespace:
        return SimpleNamespace(degraded_reason=reason)

    stores = SimpleNamespace(ledger=None, budgets=part("budgets reason"), cache=part(None), breakers=object())
    engine = SimpleNamespace(stores=stores, flights=part("flights reason"))
    logs = {id(engine): part("audit records wait in the spool")}
    monkeypatch.setattr(audit, "audit_log_of", lambda of: logs.get(id(of)))
    authenticator = SimpleNamespace(revocations=part("revocations reason"))
    assert _degraded(engine, SwappableAuthenticator(authenticator)) == {  # type: ignore[arg-type]
        "budgets": "budgets reason",
        "coalescing": "flights reason",
        "revocations": "revocations reason",
        "audit": "audit records wait in the spool",
    }
    logs.clear()  # no audit log; an authenticator without a revocation list
    assert _degraded(engine, lambda token: None) == {  # type: ignore[arg-type]
        "budgets": "budgets reason",
        "coalescing": "flights reason",
    }


def test_the_ready_line_names_the_redis_stores_that_fail_their_first_look(tmp_path: Path):
    # a Redis that does not answer at start is said where the operator looks first, as a PostgreSQL
    # ledger that cannot be reached is: "ready, degraded: budgets, cache, breakers, ...", not "ready"
    import socket

    import httpx

    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import write_toml

    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py is not installed")
    with socket.socket() as holder:  # a port where nothing listens (taken, then let go)
        holder.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{holder.getsockname()[1]}/0"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"path": str(tmp_path / "ledger.sqlite3")},
            "budgets": {"requests_per_minute": 1000, "backend": dead},
            "cache": {"enabled": True, "backend": dead},
            "routing.breaker": {"backend": dead},
            "providers.echo": {},
            "gateway.http": {"port": 0},
        },
    )
    with start_gateway(config, env={"GTL_NB_LOG": ""}) as gateway:
        output = "".join(gateway.output)
        ready = [line for line in output.splitlines() if line.startswith("gtl gateway: ready")]
        assert len(ready) == 1, output
        assert ready[0].startswith("gtl gateway: ready, degraded: budgets, cache, breakers"), ready[0]
        assert "unreachable" in ready[0], ready[0]
        answer = httpx.get(gateway.url("http") + "/readyz", timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == "degraded", answer.text
        assert {"budgets", "cache", "breakers"} <= set(answer.json()["degraded"])
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(gateway.url("http") + "/v1/chat/completions", json=body, timeout=30).status_code == 200
