"""``/readyz`` tells everyone the state and the degraded parts' names, and only an operator why.

A degraded part's reason names the database's user, its host and port, the database's name and the
spool files' paths: a real GhostToken gateway (and a development one) whose ledger and audit chain are
on a PostgreSQL that refuses every connection shows them to a token holding ``metrics:read`` (or, on a
development gateway, to a loopback caller), and to nobody else — with the same status code either way.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import httpx
import pytest

from gtl_nb.gateway.local import start_gateway
from tests.gateway.conftest import jwt_echo_gateway, write_toml
from tests.postgres_refusing import RefusingPostgres, refusing_postgres

pytestmark = pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="psycopg is not installed")


def _stores_on(server: RefusingPostgres, folder: Path) -> dict[str, dict[str, Any]]:
    """The ledger and the audit chain on ``server``, each spooling beside the configuration."""
    return {
        "ledger": {"url": f"{server.url('ledgerdb')}?spool_path={folder / 'ledger-spool.sqlite3'}"},
        "gateway.audit": {"url": f"{server.url('auditdb')}?spool_path={folder / 'audit-spool.jsonl'}"},
    }


def _internal(server: RefusingPostgres, folder: Path) -> list[str]:
    """What an outsider must not read in ``/readyz``: the user, the host and port, the databases, the spools."""
    return ["postgres", f"127.0.0.1:{server.port}", str(server.port), "ledgerdb", "auditdb", str(folder), "refused-pw"]


def _get(url: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(url + "/readyz", headers=headers, timeout=10)


def test_only_a_metrics_reader_reads_why_the_stores_are_degraded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "READYZ_SECRET")
    with refusing_postgres() as server:
        tables = {
            "providers.echo": {},
            "gateway": {"auth": "jwt"},
            "gateway.jwt": {"issuer": "gtl-test", "secret_env": "READYZ_SECRET", "default_deployments": ["*"]},
            "gateway.http": {"port": 0},
            **_stores_on(server, tmp_path),
        }
        config = write_toml(tmp_path / "gtl.toml", tables)
        with start_gateway(config, env={"GTL_NB_LOG": ""}) as gateway:
            base = gateway.url("http")
            anyone = _get(base)
            user = _get(base, mint("chat:write", "models:read", "usage:read"))
            forged = _get(base, "not-a-token")
            operator = _get(base, mint("metrics:read"))
            admin = _get(base, mint("usage:admin", "session:admin"))  # administrators of other things
    for answer in (anyone, user, forged, admin):
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "degraded", "degraded": ["ledger", "audit"]}
        for secret in _internal(server, tmp_path):
            assert secret not in answer.text, (secret, answer.text)
    assert operator.status_code == 200
    reasons = operator.json()["degraded"]
    assert operator.json()["status"] == "degraded" and set(reasons) == {"ledger", "audit"}
    assert "the database system is starting up" in reasons["ledger"], reasons
    assert "refused-pw" not in operator.text  # (the password stays masked for the operator too)


def test_a_development_gateway_tells_its_loopback_callers_why(tmp_path: Path):
    """No GhostToken is checked: the callers are the loopback user's own (the gateway listens nowhere else)."""
    with refusing_postgres() as server:
        tables = {"providers.echo": {}, "gateway.http": {"port": 0}, **_stores_on(server, tmp_path)}
        config = write_toml(tmp_path / "gtl.toml", tables)
        with start_gateway(config, env={"GTL_NB_LOG": ""}) as gateway:
            answer = _get(gateway.url("http"))
    assert answer.status_code == 200
    assert answer.json()["status"] == "degraded"
    assert "the database system is starting up" in answer.json()["degraded"]["ledger"], answer.text


def test_the_reasons_need_the_callers_loopback_address_on_a_development_gateway():
    """(The rule itself: a development gateway is loopback only, so a caller from elsewhere came through
    something in front of it — a proxy — and is not the gateway's own user.)"""
    from gtl_nb.gateway.devauth import DevAuth
    from gtl_nb.gateway.readiness import may_read_reasons

    anyone = DevAuth("ann")
    assert may_read_reasons(anyone, None, "127.0.0.1", development=True)
    assert may_read_reasons(anyone, None, "::1", development=True)
    assert not may_read_reasons(anyone, None, "10.1.2.3", development=True)
    assert not may_read_reasons(anyone, None, None, development=True)
    guarded = DevAuth("ann", token="dev-secret")  # auth = "token": its token, as /metrics asks
    assert not may_read_reasons(guarded, None, "127.0.0.1", development=True)
    assert may_read_reasons(guarded, "dev-secret", "127.0.0.1", development=True)


def test_a_token_is_not_checked_while_no_token_can_pass():
    """While the revocation list was never read every token is refused, and each check logged an ERROR:
    a probe carrying a token filled the log at the default level. No token is asked then."""
    from types import SimpleNamespace

    from gtl_nb.gateway.readiness import may_read_reasons

    asked: list[object] = []

    class Checker:
        revocations = SimpleNamespace(loaded=False)

        def __call__(self, bearer: object) -> object:
            asked.append(bearer)
            raise AssertionError("the token was checked")

    assert may_read_reasons(Checker(), "a-token", "127.0.0.1", development=False) is False  # type: ignore[arg-type]
    assert asked == []
