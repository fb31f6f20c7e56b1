"""Audit records in PostgreSQL (``gateway.audit_postgres``) against a real PostgreSQL 15: one chain per
replica, verification that finds every kind of tampering, the spool while the server is away, a spool
write the disk cuts short, and a server that stops answering (SIGSTOP) without holding the writer, its
close, or the other processes sharing the spool."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from store_kit import lose_each_answer_once

from gtl_nb.gateway import audit_postgres
from gtl_nb.gateway.audit import GENESIS, _seal
from gtl_nb.gateway.audit_postgres import PostgresAuditSink, records_of, verify_postgres

REPO = Path(__file__).resolve().parents[3]


kit = sys.modules["gtl_nb_tests_postgres_server"]  # the PostgreSQL kit, loaded by tests/conftest.py


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


def test_verification_finds_the_searched_copies_of_a_record_edited(postgres_url: str, two_chains: tuple[str, str]):
    """The indexed columns (``principal``, ``session_id``, ``trace_id``, ``time``, ``kind``) are what an
    auditor's SQL searches by: edited, they hid a record from a search, or pinned it on someone else,
    and ``gtl audit verify --url`` said "intact". They must say what the sealed line says."""
    a, b = two_chains
    execute(
        postgres_url,
        "UPDATE audit_records SET principal = 'mallory', session_id = 'x', trace_id = 'y' "
        "WHERE replica = %s AND seq = 10",
        a,
    )
    problems = _tampered(
        postgres_url, "UPDATE audit_records SET time = '2020-01-01T00:00:00.000Z', kind = NULL "
        "WHERE replica = %s AND seq = 2", b,
    )  # fmt: skip
    assert problems == [
        (
            "edited",
            f"chain {a}: record 10's session_id, trace_id, principal columns of the table differ from its "
            "sealed line: the copies searches read were changed (the line is the evidence)",
        ),
        (
            "edited",
            f"chain {b}: record 2's time, kind columns of the table differ from its sealed line: the copies "
            "searches read were changed (the line is the evidence)",
        ),
    ]
    assert not verify_postgres(postgres_url).ok


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


def test_a_pooled_connection_the_server_closed_is_replaced_and_no_record_is_spooled_or_doubled(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """The sink's idle connections closed by the server (a restart, ``pg_terminate_backend``, a
    proxy's idle kill) while it is up: the next batch fails once on its pooled connection and is
    written on a new one — no outage logged, not degraded, nothing spooled, each record once and the
    chain whole. (Before: a WARNING outage, ``degraded_reason`` set, the batch detoured via the spool.)"""
    caplog.set_level(logging.INFO)
    spool = tmp_path / "audit-spool.jsonl"
    sink = PostgresAuditSink(postgres_url, replica="stale", spool_path=spool)
    try:
        assert sink.append([record(i) for i in range(3)]) == 0
        ended = execute(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()",
        )
        assert ended
        assert sink.append([record(i) for i in range(3, 5)]) == 0
        assert sink.degraded_reason is None
        assert not spool.exists() or spool.read_bytes() == b""
    finally:
        sink.close()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == []
    assert any("done on a new one" in r.getMessage() for r in caplog.records)
    report = verify_postgres(postgres_url)
    assert report.ok and (report.chains, report.records) == (1, 5), report.describe()
    assert [r["session_id"] for r in records_of(postgres_url, sink.replica)] == [f"s{i}" for i in range(5)]


def test_a_batch_retried_after_its_commit_reached_the_server_doubles_no_record(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """Each batch is committed, its connection lost before the answer, and the same sealed lines
    written again on a new connection: each record once, the head where it was, the chain whole."""
    caplog.set_level(logging.WARNING)
    sink = PostgresAuditSink(postgres_url, replica="twice", spool_path=tmp_path / "audit-spool.jsonl")
    lost = lose_each_answer_once(sink._connections, monkeypatch)
    try:
        for batch in range(3):
            assert sink.append([record(batch * 2 + i) for i in range(2)]) == 0
        assert sink.degraded_reason is None
    finally:
        sink.close()
    assert len(lost) == 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    report = verify_postgres(postgres_url)
    assert report.ok and (report.chains, report.records) == (1, 6), report.describe()
    assert execute(postgres_url, "SELECT count FROM audit_chains") == [(6,)]  # verify: it matches the last record


def test_an_empty_database_verifies_as_empty(postgres_url: str):
    report = verify_postgres(postgres_url)
    assert report.ok and (report.chains, report.records) == (0, 0)


# -- a spool write the disk cuts short ----------------------------------------------------------------


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, written: int) -> dict[str, bool]:
    """The spool's next writes put ``written`` bytes on disk, then fail as a full disk does (while ``on``)."""
    switch = {"on": True}
    write_all = audit_postgres._write_all

    def cut_short(fd: int, data: bytes) -> None:
        if not switch["on"]:
            return write_all(fd, data)
        os.write(fd, data[:written])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_postgres, "_write_all", cut_short)
    return switch


def test_a_spool_write_cut_short_loses_only_its_records_and_the_chain_stays_whole(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    parts = urlsplit(postgres_url)
    away_url = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{kit.free_port()}"))
    spool = tmp_path / "spool.jsonl"
    away = PostgresAuditSink(away_url, replica="away", spool_path=spool, connect_timeout=1, fsync=False)
    assert away.append([record(1)]) == 0
    size = spool.stat().st_size
    disk = _disk_full_after(monkeypatch, 40)
    assert away.append([record(2), record(3)]) == 2  # reported lost ...
    assert spool.stat().st_size == size  # ... and cut back: no partial line to swallow the next record
    disk["on"] = False
    assert away.append([record(4)]) == 0
    assert away.append([record(5)]) == 0
    assert [json.loads(line)["seq"] for line in spool.read_bytes().splitlines()] == [1, 2, 3]  # 2 and 3 not sealed
    away.close()

    PostgresAuditSink(postgres_url, replica="back", spool_path=spool).close()  # drains what "away" left
    report = verify_postgres(postgres_url)
    assert report.ok and report.records == 3, report.describe()  # the chain skips nothing: no gap, no edit
    assert [r["session_id"] for r in records_of(postgres_url, away.replica)] == ["s1", "s4", "s5"]


@pytest.mark.parametrize("committed", [False, True], ids=["not-committed", "committed"])
def test_a_lost_batch_that_may_have_reached_postgresql_keeps_its_numbers(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed: bool
):
    """The connection breaks during a batch (the COMMIT may or may not have happened) and the disk
    refuses the spool: the records are lost, and their numbers stay taken — verify shows a gap (or
    nothing, when they were committed), never an edited record."""
    sink = PostgresAuditSink(postgres_url, replica="r", spool_path=tmp_path / "spool.jsonl", fsync=False)
    assert sink.append([record(1)]) == 0
    write = sink._write

    async def broken(lines: list[Any]) -> None:
        if committed:
            await write(lines)
        raise OSError(errno.ECONNRESET, "server closed the connection unexpectedly")

    monkeypatch.setattr(sink, "_write", broken)
    disk = _disk_full_after(monkeypatch, 10)
    assert sink.append([record(2)]) == 1
    monkeypatch.setattr(sink, "_write", write)
    disk["on"] = False
    assert sink.append([record(3)]) == 0  # spooled (back-off), then written by close
    sink.close()
    report = verify_postgres(postgres_url)
    kinds = [(problem.kind, problem.message) for problem in report.problems]
    if committed:
        assert report.ok and report.records == 3, report.describe()
    else:
        assert kinds == [("deleted", f"chain {sink.replica}: record 2 missing before record 3")]
    assert [r["seq"] for r in records_of(postgres_url, sink.replica)] == ([1, 2, 3] if committed else [1, 3])


# -- a server that stops answering --------------------------------------------------------------------


frozen = kit.frozen  # PostgreSQL stopped with SIGSTOP (tests/postgres_server.py)


def test_a_frozen_postgresql_holds_append_and_close_for_write_timeout_at_most(
    postgres_server: Any, postgres_url: str, tmp_path: Path
):
    spool = tmp_path / "spool.jsonl"
    sink = PostgresAuditSink(postgres_url, replica="f", spool_path=spool, write_timeout=1.0, fsync=False)
    assert sink.append([record(1)]) == 0  # a pooled connection exists now
    with frozen(postgres_server):
        started = time.monotonic()
        assert sink.append([record(2)]) == 0  # spooled after write_timeout
        assert time.monotonic() - started < 2.5
        assert "no answer within 1 s" in (sink.degraded_reason or "")
        started = time.monotonic()
        assert sink.append([record(3)]) == 0  # backing off: straight to the spool
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        sink.close()  # one more try (write_timeout), then the pool and the loop, bounded
        assert time.monotonic() - started < 1.0 + 5.0
    PostgresAuditSink(postgres_url, replica="g", spool_path=spool).close()
    report = verify_postgres(postgres_url)
    assert report.ok and report.records == 3, report.describe()
    assert not list(tmp_path.glob("spool.jsonl.*"))  # every taken spool written and removed


def test_a_frozen_postgresql_leaves_no_psycopg_warning_in_the_log(
    postgres_server: Any, postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """The sink names the outage once itself. The statement its write timeout cut short is cancelled by
    psycopg, whose cancel request a frozen server never answers: psycopg's own warning about it ("query
    cancellation failed: cancellation timeout expired", printed bare on stderr by a gateway) stays out."""
    caplog.set_level(logging.WARNING)
    sink = PostgresAuditSink(postgres_url, replica="q", spool_path=tmp_path / "spool.jsonl", write_timeout=1.0)
    try:
        assert sink.append([record(1)]) == 0  # a pooled connection exists now
        with frozen(postgres_server):
            assert sink.append([record(2)]) == 0  # spooled after write_timeout; psycopg cancels the statement
            time.sleep(6.5)  # its cancel request times out after 5 s
    finally:
        sink.close()
    warned = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warned if record.name.startswith("psycopg")] == []
    assert [record.getMessage() for record in warned if "cannot be used" in record.getMessage()] != []


_OTHER_PROCESS = """
import json, sys, time
from gtl_nb.gateway.audit_postgres import PostgresAuditSink
sink = PostgresAuditSink(sys.argv[1], replica="other", spool_path=sys.argv[2], connect_timeout=1, fsync=False)
started = time.monotonic()
lost = sink.append([{"kind": "request", "time": "2024-05-01T12:00:00.000Z", "session_id": "other"}])
appended = time.monotonic() - started
started = time.monotonic()
sink.close()
print(json.dumps({"lost": lost, "append": appended, "close": time.monotonic() - started}))
"""


def test_processes_sharing_a_spool_never_wait_for_a_drain_writing_to_postgresql(
    postgres_server: Any, postgres_url: str, tmp_path: Path
):
    """One process drains the spool into a server that stopped answering; another process appends to
    the same spool meanwhile (and tries to drain it, into a server it cannot reach) without waiting for it."""
    spool = tmp_path / "spool.jsonl"
    parts = urlsplit(postgres_url)
    away_url = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{kit.free_port()}"))
    away = PostgresAuditSink(away_url, replica="away", spool_path=spool, connect_timeout=1, fsync=False)
    assert away.append([record(1)]) == 0  # the spool holds a record
    drainer = PostgresAuditSink(postgres_url, replica="drainer", spool_path=spool, write_timeout=60, fsync=False)
    # (opening drained it: spool one more)
    assert away.append([record(2)]) == 0
    outcome: list[int] = []
    with frozen(postgres_server):
        writing = threading.Thread(target=lambda: outcome.append(drainer.append([record(3)])))
        writing.start()  # takes the spool, then waits for the frozen server
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("spool.jsonl.*.draining")):
            assert time.monotonic() < deadline, "the drain did not take the spool"
            time.sleep(0.01)
        other = subprocess.run(
            [sys.executable, "-c", _OTHER_PROCESS, away_url, str(spool)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert writing.is_alive()  # the drain still waits for PostgreSQL ...
    assert other.returncode == 0, other.stderr
    times = json.loads(other.stdout)
    assert times["lost"] == 0 and times["append"] < 1.0 and times["close"] < 3.0, times  # ... the other did not
    writing.join(timeout=30)
    assert outcome == [0]
    drainer.close()
    away.close()
    PostgresAuditSink(postgres_url, replica="last", spool_path=spool).close()
    report = verify_postgres(postgres_url)
    assert report.ok, report.describe()
    sessions = sorted(
        json.loads(line)["session_id"] for (line,) in execute(postgres_url, "SELECT line FROM audit_records")
    )
    assert sessions == ["other", "s1", "s2", "s3"]  # each once
    assert not list(tmp_path.glob("spool.jsonl.*"))


def test_taken_spools_a_drain_leaves_are_written_by_the_next_and_a_live_drains_is_left_alone(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fcntl = pytest.importorskip("fcntl")
    parts = urlsplit(postgres_url)
    away_url = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{kit.free_port()}"))
    spool = tmp_path / "spool.jsonl"
    away = PostgresAuditSink(away_url, replica="away", spool_path=spool, connect_timeout=1, fsync=False)
    assert away.append([record(1), record(2)]) == 0
    stopped = tmp_path / "spool.jsonl.00000000000000000001.dead0000.draining"  # a drain whose process died
    spool.rename(stopped)
    assert away.append([record(3)]) == 0
    live = tmp_path / "spool.jsonl.00000000000000000002.live0000.draining"  # a drain still writing it
    spool.rename(live)
    held = os.open(live, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        assert away.append([record(4)]) == 0
        sink = PostgresAuditSink(postgres_url, replica="next", spool_path=spool, fsync=False)  # adopts the dead one
        assert not stopped.exists() and live.exists()
        assert [r["session_id"] for r in records_of(postgres_url, away.replica)] == ["s1", "s2", "s4"]

        write = sink._write

        async def refused(lines: list[Any]) -> None:
            if lines:
                raise OSError(errno.ECONNRESET, "server closed the connection unexpectedly")
            await write(lines)

        assert away.append([record(5)]) == 0
        monkeypatch.setattr(sink, "_write", refused)
        assert sink.append([record(6)]) == 0  # the drain fails: its file stays, the record is spooled
        left = sorted(tmp_path.glob("spool.jsonl.*.draining"))
        assert len(left) == 2 and live in left
        monkeypatch.setattr(sink, "_write", write)
    finally:
        os.close(held)  # the live drain "died" too
    sink.close()  # writes every file left, oldest first, and the spool
    away.close()
    assert not list(tmp_path.glob("spool.jsonl.*")) and spool.read_bytes() == b""
    report = verify_postgres(postgres_url)
    assert report.ok and report.records == 6, report.describe()
    assert [r["session_id"] for r in records_of(postgres_url, away.replica)] == [f"s{i}" for i in range(1, 6)]


def test_an_application_name_in_the_url_names_the_audit_connections(postgres_url: str, tmp_path: Path):
    """libpq's options pass through: pg_stat_activity shows the URL's application_name, not ours."""
    sink = PostgresAuditSink(
        f"{postgres_url}?application_name=gtl-audit", replica="named", spool_path=tmp_path / "named.jsonl"
    )
    try:
        assert sink.append([record(0)]) == 0
        names = execute(
            postgres_url,
            "SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()",
        )
    finally:
        sink.close()
    assert names == [("gtl-audit",)]


def test_a_wrong_password_is_the_reason_the_audit_records_wait(postgres_server: Any, postgres_url: str, tmp_path: Path):
    """/readyz's audit reason says PostgreSQL refused the password, not only that the pool timed out."""
    postgres_server.password_role("gtl_audit_pw", "the-right-one")
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(netloc=f"gtl_audit_pw:canary-audit-WRONG@127.0.0.1:{parts.port}"))
    sink = PostgresAuditSink(url, replica="refused", spool_path=tmp_path / "refused.jsonl", connect_timeout=1)
    try:
        sink.append([record(0)])
        reason = sink.degraded_reason or ""
    finally:
        sink.close()
    assert 'password authentication failed for user "gtl_audit_pw"' in reason
    assert "canary-audit-WRONG" not in reason


@pytest.mark.timeout(300)
def test_a_refused_password_ends_the_audit_logs_first_contact_at_once(
    postgres_server: Any, postgres_url: str, tmp_path: Path
):
    """As the ledger's: timeouts of an hour, and the sink still opens, degraded with the server's words."""
    postgres_server.password_role("gtl_audit_fast", "the-right-one")
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(netloc=f"gtl_audit_fast:canary-audit-FAST@127.0.0.1:{parts.port}"))
    sink = PostgresAuditSink(
        url, replica="fast", spool_path=tmp_path / "fast.jsonl", connect_timeout=3600, write_timeout=3600
    )
    try:
        cause = sink.degraded_cause or ""
    finally:
        sink.close()
    assert 'password authentication failed for user "gtl_audit_fast"' in cause, cause
    assert "canary-audit-FAST" not in cause


def test_a_stopped_server_is_said_to_refuse_not_to_be_silent(postgres_url: str, tmp_path: Path):
    """/readyz said "no answer within 5 s" of a server that refused the connection at once (the write's
    bound ran out while the pool waited for a connection it could not make): an operator then looks for
    a hung network instead of a stopped server."""
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{kit.free_port()}"))
    sink = PostgresAuditSink(url, replica="stopped", spool_path=tmp_path / "stopped.jsonl", write_timeout=1.0)
    try:
        sink.append([record(0)])
        reason = sink.degraded_reason or ""
    finally:
        sink.close()
    assert "refused" in reason.lower() and "no answer within" not in reason, reason


def test_a_record_holding_a_nul_neither_stops_the_log_nor_reads_as_edited(postgres_url: str, tmp_path: Path):
    """A caller's session id with a NUL in it: PostgreSQL's text refused the record's column, the sink took
    it for the database being away, and every record behind it stayed in the spool, retry after retry."""
    sink = PostgresAuditSink(postgres_url, replica="nul", spool_path=tmp_path / "nul.jsonl")
    try:
        odd = {**record(2), "session_id": "evil\x00id"}
        for batch in ([record(1)], [odd], [record(3)]):
            sink.append(batch)
        assert sink.degraded_reason is None
    finally:
        sink.close()
    rows = execute(postgres_url, "SELECT session_id FROM audit_records WHERE replica LIKE 'nul%' ORDER BY seq")
    assert rows == [("s1",), ("evil\ufffdid",), ("s3",)]
    report = verify_postgres(postgres_url)
    assert report.ok, report.describe()
    lines = execute(postgres_url, "SELECT line FROM audit_records WHERE replica LIKE 'nul%' ORDER BY seq")
    assert json.loads(lines[1][0])["session_id"] == "evil\x00id"  # the sealed line keeps it as it was
