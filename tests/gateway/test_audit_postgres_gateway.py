"""The PostgreSQL audit log wired into the gateway (``[gateway.audit] url``), against a real PostgreSQL 15
(``tests/postgres_server.py``): a real gateway writes one record per request — failed and refused ones
too — to its chain, ``gtl audit verify --url`` accepts it and then names a row edited in SQL, no key,
token or password reaches a row or a message, the table's keys and their errors, ``degraded_reason``
while the server is away and after the spool drained, a clean close that loses nothing (and stays
short when the server stopped answering), and a spool write the disk refused, counted by a
``dropped`` record."""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.hooks import RequestFinished
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway import audit_cli
from gtl_nb.gateway.audit import AuditLog, AuditSettings, audit_log_of, verify
from gtl_nb.gateway.audit_postgres import verify_postgres
from gtl_nb.gateway.local import start_gateway
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import CompletionRequest, Message
from tests.gateway.conftest import send_body, write_toml

KEY_CANARY = "canary-audit-provider-key-8e2b4d6f0a1c"  # the quoting provider sends it back in its error
PASSWORD_CANARY = "pw-canary-41d7"  # the test server trusts loopback: any password connects
SECRET = "audit-jwt-secret-" + "s" * 32


kit = sys.modules["gtl_nb_tests_postgres_server"]  # the PostgreSQL kit, loaded by tests/conftest.py


@pytest.fixture
def secret_url(postgres_url: str) -> str:
    """The test database's URL with a password in it, the way an operator writes one."""
    return postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD_CANARY}@", 1)


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Ask the database directly, as an administrator (or an intruder) would."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def gtl_audit(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gtl")
    audit_cli.add_subcommands(parser.add_subparsers())
    args = parser.parse_args(["audit", *argv])
    return int(args.handler(args))


class _Quoting(http.server.BaseHTTPRequestHandler):
    """An OpenAI-shaped provider that refuses every request and quotes the key it was sent."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        sent = self.headers.get("authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": {"message": f"bad key {sent}", "type": "invalid_request_error"}}).encode()
        send_body(self, 401, body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def quoting_provider() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quoting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def _post(gateway: Any, token: str, session_id: str, model: str) -> httpx.Response:
    request = {
        "type": "completion_request",
        "session_id": session_id,
        "model": model,
        "stream": False,
        "messages": [{"role": "user", "content": "audit this"}],
    }
    headers = {"authorization": f"Bearer {token}"}
    return httpx.post(gateway.url("http") + "/v1/gtl", json=request, headers=headers, timeout=30)


# -- a real gateway ------------------------------------------------------------------------------------


def test_a_gateway_writes_one_record_per_request_to_postgresql_and_verify_catches_an_edit(
    tmp_path, secret_url, postgres_url, quoting_provider, monkeypatch
):
    from gtl_nb.gateway.tokens.mint import mint_token

    monkeypatch.setenv("GTL_TEST_AUDIT_SECRET", SECRET)
    audit_file = tmp_path / "audit.jsonl"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"path": str(tmp_path / "ledger.sqlite")},
            "providers.echo": {},
            "providers.leaky": {"type": "openai", "api_key": KEY_CANARY, "base_url": quoting_provider},
            "routing.retry": {"max_attempts": 1},
            "gateway": {"auth": "jwt"},
            "gateway.jwt": {
                "issuer": "gtl-test",
                "secret_env": "GTL_TEST_AUDIT_SECRET",
                "default_deployments": ["*"],
            },
            "gateway.http": {"port": 0},
            # both destinations: the database, and the local file as well
            "gateway.audit": {
                "url": secret_url,
                "path": str(audit_file),
                "replica": "gw-one",
                "spool_path": str(tmp_path / "spool.jsonl"),
                "fsync": False,
            },
        },
    )
    token = mint_token(SECRET, subject="ann", scopes=["chat:write"], lifetime=600, issuer="gtl-test")
    gateway = start_gateway(config, env={"GTL_NB_LOG": "DEBUG"})
    try:
        assert _post(gateway, token, "pg-ok", "echo").status_code == 200
        assert _post(gateway, token, "pg-failed", "leaky:gpt-4o-mini").status_code >= 400  # AUTH_FAILED upstream
        assert _post(gateway, token, "pg-refused", "no-such-model-xyz").status_code >= 400  # no route
    finally:
        assert gateway.stop() == 0  # graceful: the writer drains into PostgreSQL before the exit

    rows = sql(postgres_url, "SELECT replica, seq, line FROM audit_records ORDER BY seq")
    records = {json.loads(line)["session_id"]: json.loads(line) for _, _, line in rows}
    assert sorted(records) == ["pg-failed", "pg-ok", "pg-refused"]  # one record per request, nothing else
    (replica,) = {replica for replica, _, _ in rows}
    assert replica.startswith("gw-one:") and [seq for _, seq, _ in rows] == [1, 2, 3]
    assert records["pg-ok"]["status"] == "ok" and records["pg-ok"]["provider"] == "echo"
    assert (records["pg-failed"]["status"], records["pg-failed"]["error_code"]) == ("error", "AUTH_FAILED")
    assert records["pg-refused"]["status"] == "error" and records["pg-refused"]["error_code"]
    assert {record["principal"] for record in records.values()} == {"ann"}
    assert {record["key_id"] for record in records.values()} == {_jti(token)}  # the token's id, never the token
    written = json.dumps(rows) + json.dumps(sql(postgres_url, "SELECT * FROM audit_chains"), default=str)
    file_text = audit_file.read_text()
    for canary in (KEY_CANARY, token, PASSWORD_CANARY, "audit this"):
        assert canary not in written and canary not in file_text
    assert KEY_CANARY not in "".join(gateway.output) and PASSWORD_CANARY not in "".join(gateway.output)
    assert [json.loads(line)["session_id"] for line in file_text.splitlines()] == ["pg-ok", "pg-failed", "pg-refused"]
    assert verify(audit_file).ok  # the file's own chain

    def gtl(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gtl_nb", "audit", "verify", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    passed = gtl("--url", secret_url)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert f"chain {replica}" in passed.stdout and "3 records" in passed.stdout and "intact" in passed.stdout
    assert PASSWORD_CANARY not in passed.stdout + passed.stderr and "***" in passed.stdout
    from_config = gtl("--config", str(config))  # [gateway.audit]: the file and the database
    assert from_config.returncode == 0, from_config.stdout + from_config.stderr
    assert "matches its checkpoint" in from_config.stdout and "every chain is intact" in from_config.stdout

    (seq,) = sql(
        postgres_url,
        'UPDATE audit_records SET line = replace(line, \'"status":"error"\', \'"status":"ok"\') '
        "WHERE session_id = 'pg-failed' RETURNING seq",
    )[0]
    caught = gtl("--url", secret_url)
    assert caught.returncode == 1
    assert f"chain {replica}: record {seq} was changed: its hash does not match its content" in caught.stderr
    assert PASSWORD_CANARY not in caught.stdout + caught.stderr


# -- configuration -------------------------------------------------------------------------------------


def test_the_url_keys_read_from_the_table(tmp_path):
    url = f"postgresql://audit:{PASSWORD_CANARY}@db.internal:5432/gtl"
    only = AuditSettings.from_table({"url": url, "replica": "gw-1", "spool_path": "spool/a.jsonl"}, base=tmp_path)
    assert only.path is None and only.url == url  # no path: PostgreSQL only, no default file
    assert (only.replica, only.spool_path) == ("gw-1", tmp_path / "spool" / "a.jsonl")
    assert only.shown_url == "postgresql://audit:***@db.internal:5432/gtl"
    assert PASSWORD_CANARY not in repr(only) and PASSWORD_CANARY not in only.where
    both = AuditSettings.from_table({"url": url, "path": "audit.jsonl"}, base=tmp_path)
    assert both.path == tmp_path / "audit.jsonl" and both.url == url
    assert AuditSettings.from_table({}, base=tmp_path).url is None  # the file log, as before
    with pytest.raises(ConfigurationError, match="needs a path"):
        AuditSettings(path=None)
    assert PASSWORD_CANARY not in repr(GatewaySettings(audit={"url": url}))  # the table as written, too


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"url": f"mysql://root:{PASSWORD_CANARY}@db/gtl"}, "mysql:// is not a database the audit log can use"),
        ({"url": f"redis://:{PASSWORD_CANARY}@cache:6379/0"}, "accepted: postgresql://"),
        ({"url": f"admin:{PASSWORD_CANARY}@db/gtl"}, "is not a URL"),
        ({"url": f"admin:{PASSWORD_CANARY}@db://x"}, "its scheme is not a database"),
        ({"url": f"postgresql://u:{PASSWORD_CANARY}@db:port/gtl"}, "not a valid PostgreSQL URL"),
        ({"url": f"postgresql://u:{PASSWORD_CANARY}@db/gtl?lease=30"}, "lease is an option of the PostgreSQL ledger"),
        ({"url": 5}, "url must be a string"),
        ({"replica": "gw-1"}, "replica belongs to the PostgreSQL audit log"),
        ({"url": "postgresql://db/gtl", "replica": "gw one"}, "replica must be 1 to 64 letters"),
        ({"url": "postgresql://db/gtl?replica=a", "replica": "b"}, "replica is given twice"),
        ({"url": "postgresql://db/gtl", "spool_path": ""}, "spool_path must be a non-empty string"),
    ],
)
def test_a_bad_url_table_is_a_configuration_error_that_never_quotes_the_password(tmp_path, table, words):
    with pytest.raises(ConfigurationError, match=words) as refused:
        AuditSettings.from_table(table, base=tmp_path)
    assert PASSWORD_CANARY not in str(refused.value)


# -- degraded while PostgreSQL is away, and the clean close ----------------------------------------------


def _finished(session_id: str) -> RequestFinished:
    return RequestFinished(
        session_id=session_id,
        context=RequestContext(principal="ann", key_id="jti-1"),
        status="ok",
        error_code=None,
        deployment="echo",
        model="echo",
        tokens_in=3,
        tokens_out=5,
        cost=0.0,
        latency_ms=1.0,
        cache_hit=False,
    )


def _ask(engine: Any, session_id: str) -> None:
    async def main() -> None:
        request = CompletionRequest(session_id=session_id, model="echo", messages=[Message(role="user", content="hi")])
        async for _ in engine.stream(request, context=RequestContext(principal="ann")):
            pass

    asyncio.run(main())


def test_degraded_reason_while_postgresql_is_away_and_none_once_the_spool_drained(
    tmp_path, postgres_server, secret_url, postgres_url
):
    from gtl_nb.gateway.audit_postgres import verify_postgres

    engine = build_engine(load_settings(providers={"echo": {"type": "echo"}}, environ={}), ledger=False)
    spool = tmp_path / "spool.jsonl"
    settings = AuditSettings(url=secret_url, spool_path=spool, fsync=False)
    audit = AuditLog.for_engine(settings, engine)
    stopped = False
    try:
        assert audit_log_of(engine) is audit and audit.degraded_reason is None  # what /readyz reads
        _ask(engine, "before")
        audit.flush()
        postgres_server.stop("fast")
        stopped = True
        _ask(engine, "while-away")
        audit.flush()
        reason = audit.degraded_reason or ""
        assert "audit records wait in" in reason and str(spool) in reason and "cannot be used" in reason
        assert PASSWORD_CANARY not in reason and "\n" not in reason
        # a stopped server refuses at once: said so, not "no answer within 5 s" (a hung network's words) —
        # also by the tries after the first, when the pool holds no connection and waits to try again
        reasons = {reason}
        watch_until = time.monotonic() + 8  # the back-off's first tries (0.5, 1, 2, 4 s)
        while time.monotonic() < watch_until:
            reasons.add(audit.degraded_reason or "")
            time.sleep(0.1)
        assert all("refused" in each.lower() and "no answer within" not in each for each in reasons), reasons
        assert spool.stat().st_size > 0
        postgres_server.restart()
        stopped = False
        deadline = time.monotonic() + 60
        while audit.degraded_reason is not None:  # no new request: the writer's retry drains the spool
            assert time.monotonic() < deadline, audit.degraded_reason
            time.sleep(0.2)
        assert spool.stat().st_size == 0
    finally:
        if stopped:
            postgres_server.restart()
        audit.close()
        asyncio.run(engine.aclose())
    assert audit_log_of(engine) is None  # closed
    report = verify_postgres(postgres_url)
    assert report.ok and report.records == 2, report.describe()
    lines = [json.loads(line) for (line,) in sql(postgres_url, "SELECT line FROM audit_records ORDER BY seq")]
    assert [line["session_id"] for line in lines] == ["before", "while-away"]


def test_an_idle_audit_log_notices_postgresql_going_away_without_a_record(
    tmp_path, postgres_server, postgres_url, monkeypatch
):
    """With no traffic the writer still asks the database every ``probe_every`` seconds, so an outage
    shows in ``degraded_reason`` (``/readyz``) as the ledger's does — and clears once it answers.
    (Before: the audit's readiness came only from its last write, ready all along.)"""
    from gtl_nb.gateway import audit_postgres

    monkeypatch.setattr(audit_postgres, "PROBE_EVERY", 0.3, raising=False)
    engine = build_engine(load_settings(providers={"echo": {"type": "echo"}}, environ={}), ledger=False)
    audit = AuditLog.for_engine(AuditSettings(url=postgres_url, spool_path=tmp_path / "spool.jsonl"), engine)
    stopped = False
    try:
        _ask(engine, "before")
        audit.flush()
        assert audit.degraded_reason is None
        postgres_server.stop("fast")
        stopped = True
        deadline = time.monotonic() + 15
        while audit.degraded_reason is None:
            assert time.monotonic() < deadline, "the idle audit log never noticed PostgreSQL had gone"
            time.sleep(0.1)
        assert "cannot be used" in audit.degraded_reason
        postgres_server.restart()
        stopped = False
        deadline = time.monotonic() + 30
        while audit.degraded_reason is not None:
            assert time.monotonic() < deadline, audit.degraded_reason
            time.sleep(0.1)
    finally:
        if stopped:
            postgres_server.restart()
        audit.close()
        asyncio.run(engine.aclose())
    assert verify_postgres(postgres_url).records == 1


def _gateway_on_postgres(tmp_path: Any, url: str) -> Any:
    """A gateway whose ledger and audit log are both in PostgreSQL at ``url`` (renewing its lease every
    second), logging at INFO."""
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"url": f"{url}?renew=1&lease=3&spool_path={tmp_path / 'ledger-spool.sqlite3'}"},
            "providers.echo": {},
            "gateway.http": {"port": 0},
            "gateway.audit": {"url": url, "replica": "gw-pg", "spool_path": str(tmp_path / "spool.jsonl")},
        },
    )
    return start_gateway(config, env={"GTL_NB_LOG": "INFO"})


def _chat(gateway: Any) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gateway.url("http") + "/v1/chat/completions", json=body, timeout=30).status_code == 200


def _readyz(gateway: Any) -> dict[str, Any]:
    answer = httpx.get(gateway.url("http") + "/readyz", timeout=10)
    assert answer.status_code == 200
    return dict(answer.json())


def test_readyz_of_an_idle_gateway_names_the_ledger_and_the_audit_while_postgresql_is_stopped(
    tmp_path, postgres_server, postgres_url
):
    """docs/deploy.md: PostgreSQL stopped, no traffic — ``/readyz`` says ``degraded``, ``ledger`` and
    ``audit``; ``ready`` again once it is back. (Before: ``["ledger"]`` only, until a record failed.)"""
    gateway = _gateway_on_postgres(tmp_path, postgres_url)
    stopped = False
    try:
        _chat(gateway)
        deadline = time.monotonic() + 15
        while _readyz(gateway) != {"status": "ready"}:
            assert time.monotonic() < deadline, _readyz(gateway)
            time.sleep(0.1)
        postgres_server.stop("fast")
        stopped = True
        deadline = time.monotonic() + 20  # the ledger's lease keeper (1 s) and the audit's probe (5 s)
        while sorted(_readyz(gateway).get("degraded", [])) != ["audit", "ledger"]:
            assert time.monotonic() < deadline, _readyz(gateway)
            time.sleep(0.2)
        assert _readyz(gateway)["status"] == "degraded"
        postgres_server.restart()
        stopped = False
        deadline = time.monotonic() + 30
        while _readyz(gateway) != {"status": "ready"}:
            assert time.monotonic() < deadline, _readyz(gateway)
            time.sleep(0.2)
    finally:
        if stopped:
            postgres_server.restart()
        assert gateway.stop() == 0


def test_a_gateway_whose_postgresql_connections_were_terminated_stays_ready_and_writes_each_row_once(
    tmp_path, postgres_url
):
    """``pg_terminate_backend`` of every connection the gateway holds (what a restart, a failover or a
    PgBouncer idle kill does to them) while PostgreSQL stays up: the next writes are done on new
    connections — no outage logged, ``/readyz`` ready, nothing spooled, each ledger row and audit
    record once, and ``gtl audit verify --url`` accepts the chain. (Before: a WARNING outage for the
    ledger and the audit, ``/readyz`` degraded, both detoured through their spools.)"""
    gateway = _gateway_on_postgres(tmp_path, postgres_url)
    try:
        for _ in range(3):
            _chat(gateway)
        time.sleep(1.5)  # the audit's records and the ledger's rows written: the pools hold idle connections
        ended = sql(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name LIKE 'gtl_nb %'",
        )
        assert len(ended) >= 2  # the ledger's and the audit's
        seen = []
        for _ in range(3):
            _chat(gateway)
            seen.append(_readyz(gateway))
        time.sleep(2.5)  # the lease keeper's renewals and the writers' batches on the closed connections
        seen.append(_readyz(gateway))
    finally:
        assert gateway.stop() == 0
    assert seen == [{"status": "ready"}] * 4
    said = "".join(gateway.output)
    assert "cannot be used" not in said and "answers again" not in said and "WARNING" not in said, said
    assert "ledger postgresql://" in said and "audit postgresql://" in said  # each retried on a new connection
    rows = sql(postgres_url, "SELECT count(*), count(DISTINCT (replica, replica_seq)), min(status) FROM requests")
    assert rows == [(6, 6, "ok")]
    assert gtl_audit("verify", "--url", postgres_url) == 0
    report = verify_postgres(postgres_url)
    assert report.ok and (report.chains, report.records) == (1, 6), report.describe()


def test_close_writes_everything_queued_to_postgresql_and_a_failing_file_holds_nothing_back(
    tmp_path, postgres_url, caplog
):
    from gtl_nb.gateway.audit_postgres import verify_postgres

    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditSettings(path=path, url=postgres_url, spool_path=tmp_path / "spool.jsonl", fsync=False))
    assert audit._files is not None
    refusing = {"on": True}
    append = audit._files.append

    def disk_full(records: list[dict[str, Any]]) -> int:
        if refusing["on"]:
            raise OSError(28, "No space left on device")
        return append(records)

    audit._files.append = disk_full  # type: ignore[method-assign]
    audit(_finished("lost-in-file"))
    audit.flush()
    refusing["on"] = False
    for index in range(600):  # more than two batches, closed at once
        audit(_finished(f"s{index}"))
    audit.close()
    database = [json.loads(line) for (line,) in sql(postgres_url, "SELECT line FROM audit_records ORDER BY seq")]
    assert [r["session_id"] for r in database] == ["lost-in-file", *(f"s{i}" for i in range(600))]
    assert verify_postgres(postgres_url).ok
    in_file = [json.loads(line) for line in path.read_text().splitlines()]
    assert (in_file[0]["kind"], in_file[0]["count"]) == ("dropped", 1)  # the file's own chain says what it lost
    assert [r["session_id"] for r in in_file[1:]] == [f"s{i}" for i in range(600)]
    assert verify(path).ok and "a destination failed" in caplog.text


def quick_sinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``[gateway.audit] url`` opens gives up on a server after 1 s (connecting, or writing a batch)."""
    from gtl_nb.gateway import audit_postgres

    class Quick(audit_postgres.PostgresAuditSink):
        def __init__(self, url: str, **options: Any) -> None:
            super().__init__(url, connect_timeout=1.0, write_timeout=1.0, **options)

    monkeypatch.setattr(audit_postgres, "PostgresAuditSink", Quick)


def test_a_spool_write_the_disk_refused_is_counted_by_a_dropped_record_and_the_chain_verifies(
    tmp_path, postgres_url, monkeypatch
):
    from gtl_nb.gateway import audit_postgres
    from gtl_nb.gateway.audit_postgres import PostgresAuditSink, records_of, verify_postgres

    quick_sinks(monkeypatch)
    away_url = f"postgresql://postgres@127.0.0.1:{kit.free_port()}/{postgres_url.rsplit('/', 1)[1]}"
    spool = tmp_path / "spool.jsonl"
    audit = AuditLog(AuditSettings(url=away_url, spool_path=spool, fsync=False))
    refusing = {"on": False}
    write_all = audit_postgres._write_all

    def disk_full(fd: int, data: bytes) -> None:  # half a line reaches the disk, then it is full
        if not refusing["on"]:
            return write_all(fd, data)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_postgres, "_write_all", disk_full)
    try:
        audit(_finished("first"))
        audit.flush()
        refusing["on"] = True
        audit(_finished("lost"))
        audit.flush()
        assert audit.dropped == 1
        refusing["on"] = False
        audit(_finished("after"))
        audit.flush()
        assert audit.dropped == 0  # counted in the chain by a "dropped" record
    finally:
        audit.close()
    PostgresAuditSink(postgres_url, spool_path=spool).close()  # writes what the spool holds
    report = verify_postgres(postgres_url)
    assert report.ok and report.records == 3, report.describe()
    (chain,) = report.per_chain
    kept = records_of(postgres_url, chain.replica)
    assert [(r["seq"], r["kind"], r.get("session_id"), r.get("count")) for r in kept] == [
        (1, "request", "first", None),
        (2, "dropped", None, 1),
        (3, "request", "after", None),
    ]


frozen = kit.frozen  # PostgreSQL stopped with SIGSTOP (tests/postgres_server.py)


def test_close_with_postgresql_frozen_is_short_and_loses_nothing(tmp_path, postgres_server, postgres_url, monkeypatch):
    from gtl_nb.gateway.audit_postgres import PostgresAuditSink, records_of, verify_postgres

    quick_sinks(monkeypatch)
    spool = tmp_path / "spool.jsonl"
    audit = AuditLog(AuditSettings(url=postgres_url, spool_path=spool, fsync=False))
    audit(_finished("before"))
    audit.flush()
    with frozen(postgres_server):
        for index in range(600):  # three batches
            audit(_finished(f"s{index}"))
        started = time.monotonic()
        audit.close()
        took = time.monotonic() - started
    # a batch waits write_timeout, the next ones go to the spool (back-off), close tries once more
    # (write_timeout), then the pool and the loop close within a few seconds
    assert took < 2 * 1.0 + 5.0, took
    assert audit.dropped == 0 and spool.stat().st_size > 0  # kept in the spool
    PostgresAuditSink(postgres_url, spool_path=spool).close()
    report = verify_postgres(postgres_url)
    assert report.ok and report.records == 601, report.describe()
    (chain,) = report.per_chain
    assert [r["session_id"] for r in records_of(postgres_url, chain.replica)] == [
        "before",
        *(f"s{i}" for i in range(600)),
    ]


# -- gtl audit with --url ------------------------------------------------------------------------------


def test_gtl_audit_tail_and_verify_read_postgresql(tmp_path, postgres_url, secret_url, capsysbinary):
    with pytest.raises(ConfigurationError, match="no audit records"):
        gtl_audit("verify", "--url", secret_url)
    for replica in ("left", "right"):
        settings = AuditSettings(url=postgres_url, replica=replica, spool_path=tmp_path / f"{replica}.jsonl")
        with AuditLog(settings) as audit:
            for index in range(3):
                audit(_finished(f"{replica}-{index}"))
    assert gtl_audit("tail", "--url", secret_url, "-n", "2", "--replica", "left") == 0
    tail = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    assert [record["session_id"] for record in tail] == ["left-1", "left-2"]
    with pytest.raises(
        ConfigurationError, match=r"no audit records of replica 'lfet' \(replicas with records: left, right\)"
    ):
        gtl_audit("tail", "--url", secret_url, "--replica", "lfet")  # a typo is not "no records"
    assert gtl_audit("verify", "--url", secret_url) == 0
    out = capsysbinary.readouterr().out.decode()
    assert "6 in 2 chains" in out and out.count("3 records") == 2 and PASSWORD_CANARY not in out
    with pytest.raises(ConfigurationError, match="give --url"):
        gtl_audit("tail", "--log", str(tmp_path / "audit.jsonl"), "--replica", "left")
    with pytest.raises(ConfigurationError, match="--follow reads a file log"):
        gtl_audit("tail", "--url", secret_url, "-f")
    away = f"postgresql://postgres:{PASSWORD_CANARY}@127.0.0.1:{kit.free_port()}/gtl?connect_timeout=2"
    with pytest.raises(ConfigurationError, match="cannot be used") as unreachable:
        gtl_audit("verify", "--url", away)
    assert PASSWORD_CANARY not in str(unreachable.value)


def test_a_wrong_password_is_named_in_the_ready_line(tmp_path, postgres_server, postgres_url):
    """A typo in PGPASSWORD (or the URL) leaves the ledger and the audit log spooling for good; the
    start said only "ready" (the WARNINGs above it, /readyz's 200 "degraded"). The ready line — what
    ``systemctl status`` and ``docker logs`` show first — now names the degraded parts and the server's
    own reason, never the password."""
    from urllib.parse import urlsplit, urlunsplit

    postgres_server.password_role("gtl_ready_pw", "the-right-one")
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(netloc=f"gtl_ready_pw:canary-READY-wrong@127.0.0.1:{parts.port}"))
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "providers.echo": {},
            "ledger": {"url": f"{url}?spool_path={tmp_path / 'ledger-spool.sqlite3'}"},
            "gateway.http": {"port": 0},
            "gateway.audit": {"url": f"{url}?spool_path={tmp_path / 'audit-spool.jsonl'}"},
        },
    )
    with start_gateway(config) as gateway:
        (ready,) = [line for line in gateway.output if line.startswith("gtl gateway: ready")]
    assert ready.startswith("gtl gateway: ready, degraded: ledger, audit — "), ready
    assert 'password authentication failed for user "gtl_ready_pw"' in ready, ready
    assert ready.count("password authentication failed") == 1, ready  # one cause, said once
    assert "canary-READY-wrong" not in "".join(gateway.output)


def test_a_gateway_whose_stores_answer_says_ready_alone(tmp_path, postgres_url):
    config = write_toml(
        tmp_path / "gtl.toml",
        {"providers.echo": {}, "ledger": {"url": postgres_url}, "gateway.http": {"port": 0}},
    )
    with start_gateway(config) as gateway:
        (ready,) = [line for line in gateway.output if line.startswith("gtl gateway: ready")]
    assert ready.startswith("gtl gateway: ready (event loop "), ready
