"""Rows spooled under a mistyped ``[ledger]`` / ``[gateway.audit]`` url are not orphaned silently once the
URL is fixed: the next start names each spool file of another database with what waits in it and the
command that writes it into the configured database, which does so once (a second run adds nothing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from gtl_nb.cli import main as gtl
from gtl_nb.gateway.local import start_gateway
from tests.gateway.conftest import write_toml

pytestmark = pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="psycopg is not installed")

PASSWORD = "pg-canary-pw-spool-5e2a"
BODY = {"model": "echo", "messages": [{"role": "user", "content": "spooled under a typo"}]}


def _count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _config(folder: Path, url: str) -> Path:
    return write_toml(
        folder / "gtl.toml",
        {
            "ledger": {"url": url},
            "gateway.audit": {"url": url},
            "providers.echo": {},
            "gateway.http": {"port": 0},
        },
    )


def test_a_fixed_url_warns_of_the_typos_spools_and_drain_spool_writes_them_once(
    postgres_server: Any, postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    import psycopg

    role = "gtlspool"
    postgres_server.password_role(role, PASSWORD)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    parts = urlsplit(postgres_url)
    good = urlunsplit(("postgresql", f"{role}:{PASSWORD}@{parts.hostname}:{parts.port}", parts.path, "", ""))
    typo = urlunsplit(("postgresql", f"{role}:{PASSWORD}@{parts.hostname}:{parts.port}", parts.path + "x", "", ""))
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "GTL_NB_LOG": ""}
    data = tmp_path / "data" / "gtl_nb"

    (tmp_path / "typo").mkdir()
    with start_gateway(_config(tmp_path / "typo", typo), env=env) as gw:
        assert any(line.startswith("gtl gateway: ready, degraded: ledger, audit") for line in gw.output)
        for _ in range(3):
            assert httpx.post(gw.url("http") + "/v1/chat/completions", json=BODY, timeout=30).status_code == 200
    (ledger_spool,) = data.glob("postgres-spool-*.sqlite3")
    (audit_spool,) = data.glob("audit-spool-*.jsonl")

    (tmp_path / "fixed").mkdir()
    config = _config(tmp_path / "fixed", good)
    with start_gateway(config, env=env) as gw:
        ready = next(line for line in gw.output if line.startswith("gtl gateway: ready"))
        warned = [line for line in gw.output if "spooled for another database" in line]
        output = "".join(gw.output)
    assert ready.startswith("gtl gateway: ready (")  # the fixed URL works
    assert len(warned) == 2, output
    ledger_line = next(line for line in warned if str(ledger_spool) in line)
    assert "write(s) of ledger rows spooled for another database than [ledger] url names" in ledger_line
    assert f"gtl --config {config} ledger drain-spool {ledger_spool}" in ledger_line
    audit_line = next(line for line in warned if str(audit_spool) in line)
    assert "holds 3 audit record(s)" in audit_line and f"audit drain-spool {audit_spool}" in audit_line
    assert PASSWORD not in output
    assert _count(postgres_url, "requests") == 0

    for _ in range(2):  # a second drain finds nothing to write: nothing is doubled
        assert gtl(["--config", str(config), "ledger", "drain-spool", str(ledger_spool)]) == 0
        assert gtl(["--config", str(config), "audit", "drain-spool", str(audit_spool)]) == 0
        assert _count(postgres_url, "requests") == 3
        assert _count(postgres_url, "audit_records") == 3
    said = capsys.readouterr()
    assert "spooled write(s) written into" in said.out and PASSWORD not in said.out + said.err

    with start_gateway(config, env=env) as gw:
        assert not [line for line in gw.output if "spooled for another database" in line]
