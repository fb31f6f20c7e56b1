"""Audit records in PostgreSQL (``gateway.audit_postgres``) against a real PostgreSQL 15: one chain per
replica, verification that finds every kind of tampering, and the spool while the server is away."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from gtl_nb.gateway.audit import GENESIS, _seal
from gtl_nb.gateway.audit_postgres import PostgresAuditSink, records_of, verify_postgres

REPO = Path(__file__).resolve().parents[3]


def _load_kit() -> Any:
    """``tests/postgres_server.py``, loaded once by path (its session server is shared by every module)."""
    name = "gtl_nb_tests_postgres_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "postgres_server.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


kit = _load_kit()
postgres_server = kit.postgres_server
postgres_url = kit.postgres_url


def record(index: int, principal: str = "ada") -> dict[str, Any]:
    """A record as ``AuditLog`` builds it (a few of its fields)."""
    return {
        "kind": "request",
        "time": f"2024-05-01T12:00:{index % 60:02d}.000Z",
        "session_id": f"s{index}",
        "trace_id": f"t{index}",
        "principal": principal,
        "status": "ok",
        "tokens_in": index,
        "cost": 0.001,
    }


def execute(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def two_chains(postgres_url: str, tmp_path: Path) -> tuple[str, str]:
    """Two replicas that wrote 40 records each at the same time, in batches; their chain ids."""
    sinks = [
        PostgresAuditSink(postgres_url, replica=name, spool_path=tmp_path / f"{name}.jsonl") for name in ("a", "b")
    ]

    def write(sink: PostgresAuditSink) -> None:
        for batch in range(8):
            assert sink.append([record(batch * 5 + i, sink.replica) for i in range(5)]) == 0

    threads = [threading.Thread(target=write, args=(sink,)) for sink in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sink in sinks:
        sink.close()
    return sinks[0].replica, sinks[1].replica


def test_each_replica_writes_a_chain_of_its_own_that_verifies(postgres_url: str, two_chains: tuple[str, str]):
    report = verify_postgres(postgres_url)
    assert report.ok, report.describe()
    assert (report.chains, report.records) == (2, 80)
    assert "every chain is intact" in report.describe()
    for replica in two_chains:
        records = records_of(postgres_url, replica)
        assert [r["seq"] for r in records] == list(range(1, 41))
        assert {r["replica"] for r in records} == {replica} and records[0]["prev"] == GENESIS
        assert [r["session_id"] for r in records] == [f"s{i}" for i in range(40)]
    heads = execute(postgres_url, "SELECT count FROM audit_chains ORDER BY replica")
    assert heads == [(40,), (40,)]


def _tampered(url: str, sql: str, *params: Any) -> list[tuple[str, str]]:
    execute(url, sql, *params)
    return [(problem.kind, problem.message) for problem in verify_postgres(url).problems]


def test_verification_finds_an_edited_record(postgres_url: str, two_chains: tuple[str, str]):
    a = two_chains[0]
    problems = _tampered(
        postgres_url, "UPDATE audit_records SET line = replace(line, '\"tokens_in\":7', '\"tokens_in\":0') "
        "WHERE replica = %s AND seq = 8", a,
    )  # fmt: skip
    assert problems == [("edited", f"chain {a}: record 8 was changed: its hash does not match its content")]


def test_verification_finds_a_record_rewritten_with_a_fresh_hash(postgres_url: str, two_chains: tuple[str, str]):
    a = two_chains[0]
    (line,) = execute(postgres_url, "SELECT line FROM audit_records WHERE replica = %s AND seq = 3", a)[0]
    forged = json.loads(line)
    forged["tokens_in"] = 999
    prev = forged.pop("prev")
    del forged["hash"]
    text = _seal(forged, prev)[0].decode().rstrip("\n")  # a valid hash of the altered record
    problems = _tampered(postgres_url, "UPDATE audit_records SET line = %s WHERE replica = %s AND seq = 3", text, a)
    assert problems == [("edited", f"chain {a}: record 4 does not chain to the record before it: that one was changed")]


def test_verification_finds_deleted_and_truncated_records(postgres_url: str, two_chains: tuple[str, str]):
    a, b = two_chains
    execute(postgres_url, "DELETE FROM audit_records WHERE replica = %s AND seq IN (10, 11)", a)
    problems = _tampered(postgres_url, "DELETE FROM audit_records WHERE replica = %s AND seq > 37", b)
    assert problems == [
        ("deleted", f"chain {a}: records 10-11 missing before record 12"),
        (
            "truncated",
            f"chain {b}: the chain ends at record 37 but its head counts 40: the last 3 record(s) were removed",
        ),
    ]


def test_verification_finds_a_moved_record_and_a_head_set_back(postgres_url: str, two_chains: tuple[str, str]):
    a, b = two_chains
    execute(postgres_url, "UPDATE audit_chains SET count = 39 WHERE replica = %s", b)
    moved = "UPDATE audit_records SET replica = %s, seq = 41 WHERE replica = %s AND seq = 40"
    problems = _tampered(postgres_url, moved, b, a)
    kinds = sorted(kind for kind, _ in problems)
    assert kinds == ["checkpoint", "edited", "truncated"]  # b: a stranger and a head set back; a: one record gone


def test_records_written_while_postgresql_is_away_are_spooled_and_written_once(postgres_url: str, tmp_path: Path):
    parts = urlsplit(postgres_url)
    away_url = urlunsplit(parts._replace(netloc=f"postgres:s3cret@127.0.0.1:{kit.free_port()}"))
    spool = tmp_path / "audit-spool.jsonl"
    away = PostgresAuditSink(away_url, replica="away", spool_path=spool, connect_timeout=2)
    assert away.append([record(i) for i in range(3)]) == 0  # nothing lost: spooled
    assert away.append([record(i) for i in range(3, 5)]) == 0
    reason = away.degraded_reason or ""
    assert "cannot be used" in reason and "s3cret" not in reason
    away.close()
    spooled = spool.read_bytes()
    assert len(spooled.splitlines()) == 5

    back = PostgresAuditSink(postgres_url, replica="back", spool_path=spool)  # drains what the other left
    assert back.append([record(9)]) == 0
    back.close()
    assert spool.read_bytes() == b""
    report = verify_postgres(postgres_url)
    assert report.ok, report.describe()
    assert (report.chains, report.records) == (2, 6)
    assert [r["session_id"] for r in records_of(postgres_url, away.replica)] == [f"s{i}" for i in range(5)]

    spool.write_bytes(spooled)  # as after a crash between the database's COMMIT and emptying the spool
    PostgresAuditSink(postgres_url, replica="again", spool_path=spool).close()
    assert spool.read_bytes() == b""
    replayed = verify_postgres(postgres_url)
    assert replayed.ok and replayed.records == 6  # written once


def test_an_empty_database_verifies_as_empty(postgres_url: str):
    report = verify_postgres(postgres_url)
    assert report.ok and (report.chains, report.records) == (0, 0)
