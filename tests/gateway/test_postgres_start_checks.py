"""What a gateway with a PostgreSQL ledger or audit log says at start about mistakes an operator can
make there: a libpq option's value misspelt (refused like a misspelt option name)."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gtl_nb.engine.stores.postgres_pool import GATEWAY_TABLES, parse_postgres_url
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol.errors import ConfigurationError
from tests.gateway.conftest import write_toml

pytestmark = pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="psycopg is not installed")

PASSWORD = "pg-canary-pw-41d7"


@pytest.mark.parametrize(
    ("query", "said"),
    [
        (
            "sslmode=requir",
            (
                "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full, not 'requir'; "
                "did you mean 'require'?"
            ),
        ),
        ("target_session_attrs=readwrite", "target_session_attrs must be one of"),
        ("connect_timeout=soon", "connect_timeout must be a whole number"),
    ],
)
@pytest.mark.parametrize("table", ["ledger", "gateway.audit"])
def test_a_misspelt_libpq_value_refuses_the_start_like_a_misspelt_option_name(tmp_path, table, query, said):
    """``sslmode=requir`` was a degraded start ("connection is bad: invalid sslmode value") whose rows
    spooled for ever, while ``applicaton_name=x`` refused the start: libpq checks values only when it
    connects. No server is needed to tell: the start is refused before any connection."""
    url = f"postgresql://gtl:{PASSWORD}@127.0.0.1:1/gtl?application_name=gtl-gateway&{query}"
    tables = {"providers.echo": {}, "gateway.http": {"port": 0}, table: {"url": url}}
    with pytest.raises(ConfigurationError) as refused:
        start_gateway(write_toml(tmp_path / "gtl.toml", tables)).stop()  # (stopped, should it start)
    message = str(refused.value)
    assert "is not a valid PostgreSQL URL" in message and said in message
    assert PASSWORD not in message


def test_good_libpq_values_pass():
    for query in ("sslmode=verify-full", "target_session_attrs=read-write", "connect_timeout=3", "keepalives=1"):
        assert parse_postgres_url(f"postgresql://gtl@127.0.0.1:1/gtl?{query}").shown


# -- the role's privileges (docs/deploy.md, "Database role") -----------------------------------------------


def _role_url(server: Any, database_url: str, role: str, password: str) -> str:
    """``database_url`` as a login role of its own, which may not create tables in schema public."""
    import psycopg

    server.password_role(role, password)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    parts = urlsplit(database_url)
    return f"postgresql://{role}:{password}@{parts.hostname}:{parts.port}{parts.path}"


def _admin(database_url: str, statement: str) -> Any:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else None


def _gateway_tables(folder: Path, url: str) -> Path:
    return write_toml(
        folder / "gtl.toml",
        {
            "ledger": {"url": f"{url}?spool_path={folder / 'ledger-spool.sqlite3'}"},
            "gateway.audit": {"url": f"{url}?spool_path={folder / 'audit-spool.jsonl'}"},
            "providers.echo": {},
            "gateway.http": {"port": 0},
        },
    )


def test_a_role_that_may_not_create_the_tables_degrades_both_stores_with_the_grant_to_run(
    postgres_server: Any, postgres_url: str, tmp_path: Path
):
    """The ledger spooled while the audit log refused the start, neither naming the fix. Now both degrade
    (as for credentials the server refuses: mended on the server, completions go on), the ready line names
    the GRANT, and once it is run the replica creates its tables and drains both spools."""
    role = f"gtlro_{os.getpid()}"
    url = _role_url(postgres_server, postgres_url, role, PASSWORD)
    with start_gateway(_gateway_tables(tmp_path, url), env={"GTL_NB_LOG": ""}) as gateway:
        ready = next(line for line in gateway.output if line.startswith("gtl gateway: ready"))
        assert ready.startswith("gtl gateway: ready, degraded: ledger, audit")
        assert f"GRANT CREATE ON SCHEMA public TO {role}, or let the tables' owner start the first replica" in ready
        body = {"model": "echo", "messages": [{"role": "user", "content": "before the grant"}]}
        assert httpx.post(gateway.url("http") + "/v1/chat/completions", json=body, timeout=30).status_code == 200
        _admin(postgres_url, f"GRANT CREATE ON SCHEMA public TO {role}")
        deadline = time.monotonic() + 60
        while True:
            found = _admin(
                postgres_url,
                "SELECT (SELECT count(*) FROM pg_tables WHERE tablename = 'requests'),"
                " (SELECT count(*) FROM pg_tables WHERE tablename = 'audit_records')",
            )[0]
            if found == (1, 1):
                rows = _admin(
                    postgres_url, "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM audit_records)"
                )
                if rows[0][0] >= 1 and rows[0][1] >= 1:
                    break
            assert time.monotonic() < deadline, f"the spools were not drained after the GRANT: {found}"
            time.sleep(0.2)
        output = "".join(gateway.output)
    assert PASSWORD not in output


def test_a_role_with_the_tables_privileges_only_starts_ready_and_a_read_only_role_reads_usage(
    postgres_server: Any, postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Once the tables' owner has made them, a replica's role needs no CREATE: SELECT, INSERT, UPDATE and
    DELETE on them (``CREATE TABLE IF NOT EXISTS`` of the version table asked for CREATE every start)."""
    from gtl_nb.cli import main
    from gtl_nb.engine.stores.postgres_pool import run_once
    from gtl_nb.engine.stores.postgres_schema import AUDIT_MIGRATIONS, LEDGER_MIGRATIONS, migrate

    for component, migrations in (("ledger", LEDGER_MIGRATIONS), ("audit", AUDIT_MIGRATIONS)):
        run_once(postgres_url, lambda conn, c=component, m=migrations: migrate(conn, c, m), name="owner")
    writer, reader = f"gtlrw_{os.getpid()}", f"gtlrd_{os.getpid()}"
    url = _role_url(postgres_server, postgres_url, writer, PASSWORD)
    read_url = _role_url(postgres_server, postgres_url, reader, PASSWORD)
    status, _ = main(["usage", "--ledger", read_url]), None
    refused = capsys.readouterr().err
    assert status != 0 and "GRANT SELECT, INSERT, UPDATE, DELETE ON requests" in refused and reader in refused
    assert PASSWORD not in refused
    _admin(postgres_url, f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(GATEWAY_TABLES)} TO {writer}")
    _admin(postgres_url, f"GRANT SELECT ON gtl_schema_version, requests, audit_records, audit_chains TO {reader}")
    with start_gateway(_gateway_tables(tmp_path, url), env={"GTL_NB_LOG": ""}) as gateway:
        ready = next(line for line in gateway.output if line.startswith("gtl gateway: ready"))
        assert ready.startswith("gtl gateway: ready (")  # not degraded
        body = {"model": "echo", "messages": [{"role": "user", "content": "with DML only"}]}
        assert httpx.post(gateway.url("http") + "/v1/chat/completions", json=body, timeout=30).status_code == 200
    assert main(["usage", "--ledger", read_url]) == 0
    assert PASSWORD not in capsys.readouterr().err
