"""The audit log: records fed by a real engine's hooks, the hash chain and what ``verify`` catches,
rotation and retention, crash recovery, the writer's queue, verbosity, ``gtl audit`` — and canaries
that never reach a record or a log line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from gtl_nb import sim
from gtl_nb.engine import ledger_writer
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.hooks import Hooks, RequestFinished, RequestStarted
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway import audit_cli
from gtl_nb.gateway.audit import (
    BATCH,
    AuditLog,
    AuditSettings,
    Checkpoint,
    checkpoint_path,
    read_records,
    rotated_files,
    segment_path,
    verify,
)
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import CompletionRequest, Message

KEY_CANARY = "sk-canary-PROVIDERKEY-5d1e9c0b7a"  # a fake provider key the simulators accept
PROMPT_CANARY = "PROMPT-CANARY-3b9f61"
TOKEN_CANARY = "gtl.TOKEN-CANARY.c4e1a7f0"  # stands for a GhostToken: never written anywhere
NOW = 1_750_000_000.0
CONTEXT = RequestContext(
    principal="ann",
    tenant="acme",
    key_id="jti-0001",
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    peer="127.0.0.1:50123",
    scopes=frozenset({"chat:write"}),
)


# -- a real engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimpleNamespace]:
    """``good`` answers; ``flaky`` answers every request with 503 (retried, then failed over)."""
    good = sim.serve("openai", seed=3, api_key=KEY_CANARY)
    flaky = sim.serve("openai", sim.Fault.http(503), seed=3, api_key=KEY_CANARY)
    yield SimpleNamespace(good=good, flaky=flaky)
    good.close()
    flaky.close()


async def _no_sleep(seconds: float) -> None:
    return None


def make_engine(upstream: SimpleNamespace, hooks: Hooks | None = None) -> Engine:
    providers = {
        "echo": {"type": "echo"},
        "openai": {"type": "openai", "api_key": KEY_CANARY, "base_url": upstream.good.base_url},
        "flaky": {"type": "openai", "api_key": KEY_CANARY, "base_url": upstream.flaky.base_url},
        "badkey": {"type": "openai", "api_key": "sk-wrong-key-0000000000", "base_url": upstream.good.base_url},
    }
    settings = load_settings(providers=providers, environ={})
    return build_engine(settings, ledger=False, hooks=hooks, sleep=_no_sleep)


def request(session_id: str, model: str, **fields: Any) -> CompletionRequest:
    content = f"Say hello. {PROMPT_CANARY}"
    metadata = {"authorization": f"Bearer {TOKEN_CANARY}"}  # what a careless logger would copy
    return CompletionRequest(
        session_id=session_id,
        model=model,
        messages=[Message(role="user", content=content)],
        metadata=metadata,
        **fields,
    )


MIXED = [
    request("ok-1", "echo"),
    request("failover-1", "gpt-4o-mini", providers=["flaky", "openai"], max_tokens=20),
    request("error-1", "gpt-4o-mini", provider="badkey"),
    request("missing-1", "no-such-model-xyz"),
]


def drive(engine: Engine, requests: list[CompletionRequest], context: RequestContext = CONTEXT) -> list[Any]:
    """Run each request to its end; the last event of each."""

    async def main() -> list[Any]:
        ends = []
        for message in requests:
            last = None
            async for event in engine.stream(message, context=context):
                last = event
            ends.append(last)
        await engine.aclose()
        return ends

    return asyncio.run(main())


def records(path: Path) -> list[dict[str, Any]]:
    """Every record of the log at ``path``, oldest first (rotated files, then the current one)."""
    found = rotated_files(path)
    files = [found[number] for number in sorted(found)] + ([path] if path.exists() else [])
    return [record for file in files for record in read_records(file)]


def all_bytes(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file())


def test_one_record_per_request_from_a_real_engine(tmp_path, upstream):
    log_path = tmp_path / "audit.jsonl"
    engine = make_engine(upstream)
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine, wall_clock=lambda: NOW)
    ends = drive(engine, MIXED)
    audit.close()
    assert [type(end).__name__ for end in ends] == ["Done", "Done", "Error", "Error"]

    written = records(log_path)
    assert [r["session_id"] for r in written] == ["ok-1", "failover-1", "error-1", "missing-1"]  # once each
    assert [r["seq"] for r in written] == [1, 2, 3, 4]
    ok, failover, error, missing = written
    for record in written:
        assert record["kind"] == "request"
        assert record["time"] == "2025-06-15T15:06:40.000Z"
        assert (record["principal"], record["tenant"], record["key_id"]) == ("ann", "acme", "jti-0001")
        assert (record["peer"], record["trace_id"]) == (CONTEXT.peer, CONTEXT.trace_id)
        assert record["duration_ms"] is not None and record["duration_ms"] >= 0
        assert "prompt" not in record and "answer" not in record
    assert ok["status"] == "ok" and (ok["deployment"], ok["provider"], ok["model"]) == ("echo", "echo", "echo")
    assert ok["tokens_in"] > 0 and ok["tokens_out"] > 0 and ok["failover_path"] == ["echo"]

    assert failover["status"] == "ok" and failover["deployment"] == "openai" and failover["provider"] == "openai"
    assert failover["failover_path"] == ["flaky", "openai"]
    assert failover["failover_reasons"] == ["OVERLOADED"]
    assert failover["retries"] >= 1 and failover["cost"] > 0 and failover["tokens_out"] > 0

    assert (error["status"], error["error_code"], error["deployment"]) == ("error", "AUTH_FAILED", "badkey")
    assert error["tokens_in"] is None and error["retries"] == 0
    assert (missing["status"], missing["error_code"], missing["deployment"]) == ("error", "MODEL_NOT_FOUND", None)
    assert missing["requested_model"] == "no-such-model-xyz"
    assert verify(log_path).ok


def test_canaries_reach_no_record_and_no_log_line_at_the_default_verbosity(tmp_path, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    log_path = tmp_path / "audit" / "audit.jsonl"
    engine = make_engine(upstream)
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine)
    drive(engine, MIXED)
    audit.close()
    written = all_bytes(log_path.parent)
    assert len(records(log_path)) == len(MIXED)
    for canary in (KEY_CANARY, PROMPT_CANARY, TOKEN_CANARY):
        assert canary.encode() not in written
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for canary in (KEY_CANARY, TOKEN_CANARY):
        assert canary not in logged


def _killed_gateway_row(ledger_path: Path, session_id: str, **columns: Any) -> None:
    """A ``started`` row of a gateway process that is gone (this pid, another process identity)."""
    import platform
    import sqlite3

    values = {
        "time": NOW - 2.5,
        "time_utc": "2025-06-15T15:06:37.500Z",
        "session_id": session_id,
        "status": "started",
        "pid": os.getpid(),
        "proc_start": "linux:gone:1",
        "hostname": platform.node() or "localhost",
        **columns,
    }
    connection = sqlite3.connect(ledger_path)
    with connection:
        connection.execute(
            f"INSERT INTO requests ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            tuple(values.values()),
        )
    connection.close()


def test_requests_interrupted_by_a_kill_get_their_record_when_the_ledger_is_recovered(tmp_path):
    """A gateway killed mid-request leaves its rows ``started`` and no record; the next start's recovery
    marks the rows ``interrupted`` and the audit log writes one record for each, from what the row knows."""
    from gtl_nb.engine.ledger import Ledger

    ledger_path = tmp_path / "ledger.sqlite3"
    Ledger(ledger_path).close()  # the schema
    _killed_gateway_row(
        ledger_path,
        "killed-1",
        user="ann",
        tenant="acme",
        key_id="jti-0001",
        trace_id=CONTEXT.trace_id,
        model="gpt-4o-mini",
    )
    _killed_gateway_row(ledger_path, "killed-2", user="bo", deployment="openai", provider_type="openai", model="gpt-4o")
    settings = load_settings(providers={"echo": {"type": "echo"}}, environ={})
    engine = build_engine(settings, ledger=str(ledger_path))  # opening the ledger recovers the two rows
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine, wall_clock=lambda: NOW)
    drive(engine, [request("after", "echo")])
    audit.close()

    first, second, after = records(log_path)
    assert [r["session_id"] for r in (first, second, after)] == ["killed-1", "killed-2", "after"]
    assert [r["status"] for r in (first, second, after)] == ["interrupted", "interrupted", "ok"]
    assert first["recovered"] is True and second["recovered"] is True and "recovered" not in after
    assert (first["principal"], first["tenant"], first["key_id"]) == ("ann", "acme", "jti-0001")
    assert (first["trace_id"], first["model"], first["deployment"]) == (CONTEXT.trace_id, "gpt-4o-mini", None)
    assert (second["principal"], second["deployment"], second["provider"], second["model"]) == (
        "bo",
        "openai",
        "openai",
        "gpt-4o",
    )
    for record in (first, second):
        assert record["error_code"] is None and record["tokens_in"] is None and record["cost"] is None
        assert record["duration_ms"] > 0  # from the row's start to the recovery that ended it
        assert record["peer"] is None and record["failover_path"] == [] and record["retries"] == 0
    ledger_rows = {row["session_id"]: row for row in Ledger(ledger_path).rows()}
    assert {name: row["status"] for name, row in ledger_rows.items()} == {
        "killed-1": "interrupted",
        "killed-2": "interrupted",
        "after": "ok",
    }
    assert verify(log_path).ok


def test_a_record_reaches_the_file_only_once_its_ledger_row_is_committed(tmp_path):
    """A request ends before its row is committed (the ledger's group commit); its record waits for that
    commit, so a gateway killed in between leaves neither, never a record without its row. Here another
    writer holds the ledger's lock while requests end — a refusal and an answer —; each record is checked,
    as it is appended, against the rows in the file then; after the lock is let go both land."""
    import sqlite3

    from gtl_nb.engine.ledger import Ledger

    ledger_path = tmp_path / "ledger.sqlite3"
    Ledger(ledger_path).close()  # the schema
    settings = load_settings(providers={"echo": {"type": "echo"}}, environ={})
    engine = build_engine(settings, ledger=str(ledger_path))
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine, wall_clock=lambda: NOW)
    files = audit._files
    assert files is not None
    appended: list[tuple[str, str | None]] = []  # (session, its row's status in the file as it was appended)
    real_append = files.append

    def witnessed(batch: list[dict[str, Any]]) -> int:
        reader = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
        try:
            for record in batch:
                if record.get("kind") == "request":
                    found = reader.execute(
                        "SELECT status FROM requests WHERE session_id = ?", (record["session_id"],)
                    ).fetchone()
                    appended.append((record["session_id"], found[0] if found else None))
        finally:
            reader.close()
        return real_append(batch)

    files.append = witnessed  # type: ignore[method-assign]
    other = sqlite3.connect(ledger_path, isolation_level=None)  # another process's writer, holding the lock

    async def main() -> list[Any]:
        ends = []
        other.execute("BEGIN IMMEDIATE")
        try:
            for message in (request("answered", "echo"), request("refused", "no-such-model-xyz")):
                last = None
                async for event in engine.stream(message, context=CONTEXT):
                    last = event
                ends.append(last)
            # the records would be appended within a window or two if they did not wait for their rows
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and not appended:
                await asyncio.sleep(0.02)
        finally:
            other.execute("COMMIT")
            other.close()
        await engine.aclose()
        return ends

    ends = asyncio.run(main())
    audit.close()
    assert [type(end).__name__ for end in ends] == ["Done", "Error"]
    assert appended == [("answered", "ok"), ("refused", "error")]
    assert [(r["session_id"], r["status"]) for r in records(log_path)] == [("answered", "ok"), ("refused", "error")]
    assert verify(log_path).ok


def test_a_start_the_audit_log_refuses_names_the_recovered_requests_left_without_a_record(tmp_path, caplog):
    """The engine and the audit log open at the same time; opening the ledger marks a killed gateway's
    rows ``interrupted`` at once. When the audit log then refuses to start (a tampered chain), those rows
    will never be handed over again: the log says which requests have no record, rather than nothing."""
    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.gateway.server import open_parts

    ledger_path = tmp_path / "ledger.sqlite3"
    Ledger(ledger_path).close()
    _killed_gateway_row(ledger_path, "killed-1", user="ann")
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 3)
    rewrite(log_path, lambda lines: [lines[0], lines[2]])
    settings = load_settings(
        providers={"echo": {"type": "echo"}}, config={"ledger": {"path": str(ledger_path)}}, environ={}
    )
    gateway = SimpleNamespace(metrics=None, audit={"path": str(log_path)}, base=tmp_path, tracing=None)
    with caplog.at_level(logging.ERROR), pytest.raises(ConfigurationError, match="failed verification"):
        asyncio.run(open_parts(settings, gateway))  # type: ignore[arg-type]
    said = [record.getMessage() for record in caplog.records if "no audit record" in record.getMessage()]
    assert said == [
        "1 request(s) the ledger marked interrupted have no audit record (the audit log could not open): killed-1"
    ]
    assert [row["status"] for row in Ledger(ledger_path).rows()] == ["interrupted"]


def test_rows_a_replica_recovers_while_the_gateway_runs_are_recorded_on_its_loop(tmp_path):
    """A PostgreSQL replica's lease keeper recovers rows on the ledger's own thread, any time: each batch
    is handed to the loop that feeds the hooks, and recorded there like every other record."""
    from gtl_nb.engine.ledger_interrupted import InterruptedRows

    rows = InterruptedRows()
    ledger = SimpleNamespace(interrupted=rows)  # what the PostgreSQL ledger offers
    log_path = tmp_path / "audit.jsonl"
    seen_on: list[threading.Thread] = []

    async def main() -> None:
        audit = AuditLog(AuditSettings(path=log_path, fsync=False), wall_clock=lambda: NOW)
        audit.follow_interrupted(ledger)  # on this loop, as ``watch`` does
        recorded = audit.record_interrupted

        def spy(batch: list[dict[str, Any]]) -> None:
            seen_on.append(threading.current_thread())
            recorded(batch)

        audit.record_interrupted = spy  # type: ignore[method-assign]
        keeper = threading.Thread(target=rows.add, args=([{"session_id": "elsewhere", "user": "cy", "end_time": NOW}],))
        keeper.start()
        keeper.join()
        for _ in range(100):
            if seen_on:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(audit.close)
        rows.add([{"session_id": "after-close"}])  # unsubscribed: waits for another listener

    asyncio.run(main())
    assert seen_on == [threading.main_thread()]
    (record,) = records(log_path)
    assert (record["session_id"], record["principal"], record["status"]) == ("elsewhere", "cy", "interrupted")
    assert record["time"] == "2025-06-15T15:06:40.000Z" and record["duration_ms"] is None
    assert rows.waiting() == 1


HANDLE = object()  # one request's hook handle (its events share it)


@dataclass(frozen=True)
class StartedWithRequest(RequestStarted):
    """``RequestStarted`` with the request, as the hook may carry it (docs/operations.md)."""

    request: CompletionRequest | None = None


@dataclass(frozen=True)
class FinishedWithAnswer(RequestFinished):
    """``RequestFinished`` with the answer and the time to first token (docs/operations.md)."""

    answer: str | None = None
    ttft_ms: float | None = None


def finished(session_id: str, principal: str = "ann", **fields: Any) -> RequestFinished:
    values: dict[str, Any] = dict(
        session_id=session_id,
        context=RequestContext(principal=principal, key_id="jti-0001"),
        status="ok",
        error_code=None,
        deployment="echo",
        model="echo",
        tokens_in=4,
        tokens_out=27,
        cost=0.0,
        latency_ms=1.5,
        cache_hit=False,
    )
    values.update(fields)
    kind = FinishedWithAnswer if {"answer", "ttft_ms"} & set(fields) else RequestFinished
    return kind(**values)


@pytest.mark.parametrize("verbosity", ["metadata", "full"])
def test_prompts_and_answers_only_at_full_verbosity_and_the_token_never(tmp_path, verbosity):
    log_path = tmp_path / "audit.jsonl"
    message = request("s1", "echo")
    with AuditLog(AuditSettings(path=log_path, verbosity=verbosity, fsync=False)) as audit:
        audit(StartedWithRequest(session_id="s1", context=CONTEXT, model="echo", request=message, handle=HANDLE))
        audit(finished("s1", answer=f"Hello! {PROMPT_CANARY}", ttft_ms=12.5, handle=HANDLE))
    (record,) = records(log_path)
    assert record["ttft_ms"] == 12.5
    written = all_bytes(tmp_path)
    assert TOKEN_CANARY.encode() not in written  # request metadata is never written, at any verbosity
    if verbosity == "metadata":
        assert PROMPT_CANARY.encode() not in written and "prompt" not in record
    else:
        assert record["prompt"] == [{"role": "user", "content": f"Say hello. {PROMPT_CANARY}"}]
        assert record["answer"] == f"Hello! {PROMPT_CANARY}"


def test_a_full_record_keeps_the_start_size_and_hash_of_a_huge_prompt_or_answer(tmp_path):
    """One caller's 8 MB prompt made a 16 MB record that rotated the log by itself: a dozen pushed every
    earlier file out. A record keeps at most ``FULL_TEXT_BYTES`` of each, and how to match the rest."""
    import hashlib

    from gtl_nb.gateway.audit import FULL_TEXT_BYTES

    log_path = tmp_path / "audit.jsonl"
    huge = "word " * 400_000
    message = CompletionRequest(session_id="s1", model="echo", messages=[Message(role="user", content=huge)])
    with AuditLog(AuditSettings(path=log_path, verbosity="full", fsync=False)) as audit:
        audit(StartedWithRequest(session_id="s1", context=CONTEXT, model="echo", request=message, handle=HANDLE))
        audit(finished("s1", answer=huge, handle=HANDLE))
    (record,) = records(log_path)
    assert log_path.stat().st_size < 3 * FULL_TEXT_BYTES
    for kept, whole in ((record["prompt"], msgspec.json.encode(message.messages)), (record["answer"], huge.encode())):
        assert kept["truncated"] is True and kept["bytes"] == len(whole)
        assert kept["sha256"] == hashlib.sha256(whole).hexdigest() and kept["start"].startswith(('[{"role"', "word"))


def test_full_verbosity_records_what_a_real_engine_was_asked_and_answered(tmp_path, upstream):
    """The engine's own hooks carry the request and, when a subscriber wants it, the answer's text (after
    a failover, only the answer that was kept)."""
    log_path = tmp_path / "audit.jsonl"
    engine = make_engine(upstream)
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False, verbosity="full"), engine)
    ends = drive(engine, MIXED[:2])
    audit.close()
    assert [type(end).__name__ for end in ends] == ["Done", "Done"]
    echo, failover = records(log_path)
    assert echo["prompt"] == [{"role": "user", "content": f"Say hello. {PROMPT_CANARY}"}]
    assert PROMPT_CANARY in echo["answer"]  # echo repeats the prompt
    assert failover["answer"] and failover["failover_path"] == ["flaky", "openai"]
    assert TOKEN_CANARY not in log_path.read_text()


def test_reasons_keep_the_error_code_and_never_the_message(tmp_path):
    from gtl_nb.engine.hooks import AttemptStarted, FailedOver, RetryScheduled

    log_path = tmp_path / "audit.jsonl"
    with AuditLog(AuditSettings(path=log_path, fsync=False)) as audit:
        audit(RequestStarted(session_id="s1", context=CONTEXT, model="gpt-4o-mini", handle=HANDLE))
        audit(AttemptStarted(session_id="s1", deployment="a", model="m", attempt=1, handle=HANDLE))
        audit(
            RetryScheduled(
                session_id="s1", deployment="a", attempt=2, delay=0.1, reason=f"TIMEOUT: {KEY_CANARY}", handle=HANDLE
            )
        )
        audit(AttemptStarted(session_id="s1", deployment="a", model="m", attempt=2, handle=HANDLE))
        audit(
            FailedOver(
                session_id="s1",
                from_deployment="a",
                to_deployment="b",
                reason=f"AUTH_FAILED: {KEY_CANARY}",
                handle=HANDLE,
            )
        )
        audit(AttemptStarted(session_id="s1", deployment="b", model="m", attempt=1, handle=HANDLE))
        audit(FailedOver(session_id="s1", from_deployment="b", to_deployment="c", reason=KEY_CANARY, handle=HANDLE))
        audit(finished("s1", deployment="c", handle=HANDLE))
    (record,) = records(log_path)
    assert record["failover_path"] == ["a", "b"] and record["retries"] == 1
    assert record["failover_reasons"] == ["AUTH_FAILED", "OTHER"]
    assert KEY_CANARY.encode() not in all_bytes(tmp_path)


def test_a_refused_request_that_took_a_running_sessions_id_leaves_that_sessions_record_whole(tmp_path):
    """Ids are the clients': a request refused at a cap with a running session's id overwrote, then
    took, that session's pending record — its failover path and requested model were lost."""
    from gtl_nb.engine.hooks import AttemptStarted, FailedOver

    running, refused = object(), object()
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(AuditSettings(path=log_path, fsync=False)) as audit:
        audit(RequestStarted(session_id="s1", context=CONTEXT, model="gpt-4o-mini", handle=running))
        audit(AttemptStarted(session_id="s1", deployment="a", model="m", attempt=1, handle=running))
        audit(RequestStarted(session_id="s1", context=CONTEXT, model="echo", refused=True, handle=refused))
        audit(finished("s1", status="error", error_code="OVERLOADED", deployment=None, refused=True, handle=refused))
        audit(
            FailedOver(session_id="s1", from_deployment="a", to_deployment="b", reason="TIMEOUT: slow", handle=running)
        )
        audit(finished("s1", deployment="b", handle=running))
    refused_record, running_record = records(log_path)
    assert refused_record["requested_model"] == "echo" and refused_record["failover_path"] == []
    assert running_record["requested_model"] == "gpt-4o-mini" and running_record["failover_path"] == ["a"]


def test_two_running_sessions_of_one_id_keep_their_own_records(tmp_path):
    """Two running requests that share an id (two connections, two tenants): each one's record has
    its own requested model, failover path and retries, whichever ends first."""
    from gtl_nb.engine.hooks import AttemptStarted, RetryScheduled

    first, second = object(), object()
    acme, beta = RequestContext(principal="ann", tenant="acme"), RequestContext(principal="ann", tenant="beta")
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(AuditSettings(path=log_path, fsync=False)) as audit:
        audit(RequestStarted(session_id="s1", context=acme, model="model-a", handle=first))
        audit(AttemptStarted(session_id="s1", deployment="a", model="m", attempt=1, handle=first))
        audit(RequestStarted(session_id="s1", context=beta, model="model-b", handle=second))
        audit(AttemptStarted(session_id="s1", deployment="b", model="m", attempt=1, handle=second))
        audit(RetryScheduled(session_id="s1", deployment="a", attempt=2, delay=0.1, reason="TIMEOUT", handle=first))
        audit(finished("s1", context=beta, deployment="b", handle=second))
        audit(finished("s1", context=acme, deployment="a", handle=first))
    ended_first, ended_last = records(log_path)
    assert (ended_first["tenant"], ended_first["requested_model"]) == ("beta", "model-b")
    assert (ended_first["failover_path"], ended_first["retries"]) == (["b"], 0)
    assert (ended_last["tenant"], ended_last["requested_model"]) == ("acme", "model-a")
    assert (ended_last["failover_path"], ended_last["retries"]) == (["a"], 1)


# -- the chain and verify ---------------------------------------------------------------------------


def write_log(path: Path, count: int, *, start: int = 0, **options: Any) -> AuditSettings:
    """``count`` request records appended to the log at ``path`` (opened and closed once)."""
    settings = AuditSettings(path=path, fsync=False, **options)
    with AuditLog(settings, wall_clock=lambda: NOW) as audit:
        for index in range(start, start + count):
            audit(finished(f"s{index}"))
    return settings


def kinds(path: Path) -> list[str]:
    return [problem.kind for problem in verify(path).problems]


def rewrite(path: Path, change: Any) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(change(lines)))


@pytest.fixture
def chain(tmp_path) -> Path:
    """A log of 12 records in 6 files (2 records each: 5 rotated, the current one)."""
    path = tmp_path / "audit.jsonl"
    write_log(path, 12, max_bytes=1200)
    assert sorted(rotated_files(path)) == [1, 2, 3, 4, 5]
    report = verify(path)
    assert report.ok, report.describe()
    assert report.records == 12 and report.files[-1] == "audit.jsonl" and report.last_seq == 12
    return path


def test_each_line_hashes_its_own_bytes_and_links_to_the_one_before(chain):
    first, second = records(chain)[:2]
    assert first["prev"] == "0" * 64 and second["prev"] == first["hash"]
    point = Checkpoint.read(checkpoint_path(chain))
    assert point is not None and (point.count, point.head, point.file) == (12, records(chain)[-1]["hash"], chain.name)


def test_an_edited_record_is_found_with_its_file_and_line(chain):
    rewrite(chain, lambda lines: [lines[0].replace(b'"principal":"ann"', b'"principal":"bob"'), *lines[1:]])
    report = verify(chain)
    (problem,) = report.problems
    assert (problem.kind, problem.file, problem.line, problem.seq) == ("edited", "audit.jsonl", 1, 11)
    assert "audit.jsonl line 1 (record 11)" in report.describe()


def test_an_edited_record_with_its_hash_recomputed_breaks_the_link_after_it(chain):
    import hashlib

    segment = segment_path(chain, 3)
    line = segment.read_bytes().splitlines(keepends=True)[0]
    body = line.rstrip(b"\n").replace(b'"tokens_out":27', b'"tokens_out":2')
    cut = body.rindex(b',"hash":"')
    forged = body[:cut] + b',"hash":"' + hashlib.sha256(body[:cut] + b"}").hexdigest().encode() + b'"}\n'
    rewrite(segment, lambda lines: [forged, *lines[1:]])
    (problem,) = verify(chain).problems
    assert (problem.kind, problem.file, problem.line) == ("edited", segment.name, 2)
    assert "does not chain" in problem.message


def test_a_deleted_record_is_found(chain):
    rewrite(segment_path(chain, 2), lambda lines: lines[1:])
    (problem,) = verify(chain).problems
    assert (problem.kind, problem.file, problem.line) == ("deleted", "audit.jsonl.2", 1)
    assert "record 3 missing" in problem.message


def test_a_truncated_file_is_found(chain):
    rewrite(chain, lambda lines: [lines[0], lines[1][:40]])  # cut in the middle of the last record
    assert sorted(kinds(chain)) == ["torn", "truncated"]
    rewrite(chain, lambda lines: lines[:1])  # the last record gone, at a line boundary
    assert kinds(chain) == ["truncated"]
    chain.write_bytes(b"")
    assert kinds(chain) == ["truncated"]
    assert "the last 2 record(s) were removed" in verify(chain).describe()


def test_a_rotated_file_cut_short_is_not_mistaken_for_a_crash(chain):
    rewrite(segment_path(chain, 2), lambda lines: [lines[0], lines[1][:-30]])
    assert "truncated" in kinds(chain) and not verify(chain).ok


@pytest.mark.parametrize("number", [1, 3, 5])
def test_a_removed_rotated_file_is_found(chain, number):
    segment_path(chain, number).unlink()
    report = verify(chain)
    assert report.problems[0].kind == "missing_file" and report.problems[0].file == f"audit.jsonl.{number}"
    assert not report.ok


def test_a_replaced_checkpoint_is_found(tmp_path, chain):
    cp = checkpoint_path(chain)
    older = cp.read_bytes()
    write_log(chain, 3, start=12, max_bytes=1200)
    assert verify(chain).ok
    point = Checkpoint.read(cp)
    cp.write_bytes(older)  # an older checkpoint put back
    report = verify(chain)
    assert not report.ok and {p.kind for p in report.problems} == {"ahead"}  # and the files rotated since
    assert "checkpoint was replaced with an older one" in report.describe()

    assert point is not None
    cp.write_bytes(Checkpoint(**{**point.__dict__, "head": "ab" * 32}).encode())  # a forged head
    assert kinds(chain) == ["checkpoint"]

    other = tmp_path / "other" / "audit.jsonl"
    write_log(other, 3, start=100)
    cp.write_bytes(checkpoint_path(other).read_bytes())  # another log's checkpoint
    assert "checkpoint" in kinds(chain)
    cp.write_bytes(b'{"version": 1, "count": "many"}')
    assert kinds(chain)[0] == "checkpoint"
    cp.unlink()
    assert kinds(chain)[0] == "checkpoint" and "missing" in verify(chain).describe()


def test_an_old_checkpoint_far_behind_is_not_excused_as_a_crash(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    older = checkpoint_path(path).read_bytes()
    write_log(path, BATCH + 5, start=2)
    checkpoint_path(path).write_bytes(older)
    assert kinds(path) == ["checkpoint"]


def test_an_empty_place_verifies_as_an_empty_log(tmp_path):
    report = verify(tmp_path / "audit.jsonl")
    assert report.ok and report.records == 0


# -- rotation, retention ---------------------------------------------------------------------------


def test_rotation_keeps_backups_files_and_the_chain_verifies(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 20, max_bytes=1200, backups=3)
    assert sorted(rotated_files(path)) == [7, 8, 9]
    assert all(file.stat().st_size <= 1200 for file in [path, *rotated_files(path).values()])
    report = verify(path)
    assert report.ok, report.describe()
    assert report.records == 8 and [r["seq"] for r in records(path)] == list(range(13, 21))
    point = Checkpoint.read(checkpoint_path(path))
    assert point is not None and (point.first_segment, point.base_seq, point.rotations) == (7, 12, 9)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # intact means the records kept are whole: the verdict says the first twelve are gone (rotation pushed
    # them out — a caller sending refused requests fast could, and verify said only "intact")
    assert "it begins at record 13: the 12 records before it were in older files, removed by rotation" in (
        report.describe()
    )


def test_backups_zero_keeps_only_the_current_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 9, max_bytes=1200, backups=0)
    assert rotated_files(path) == {} and verify(path).ok and len(records(path)) == 1
    assert "removed by rotation" in verify(path).describe()


def test_a_log_that_never_rotated_says_nothing_of_rotation(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 5, max_bytes=1 << 20, backups=3)
    assert verify(path).ok and "rotation" not in verify(path).describe()


def test_retention_removes_rotated_files_older_than_retention_days(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 12, max_bytes=1200, backups=100)
    old = NOW - 3 * 86400
    for number in (1, 2, 3):
        os.utime(segment_path(path, number), (old, old))
    for number in (4, 5):
        os.utime(segment_path(path, number), (NOW - 3600, NOW - 3600))
    settings = AuditSettings(path=path, fsync=False, max_bytes=1200, backups=100, retention_days=2)
    AuditLog(settings, wall_clock=lambda: NOW).close()  # retention runs when the log opens
    assert sorted(rotated_files(path)) == [4, 5]
    assert verify(path).ok and [r["seq"] for r in records(path)] == list(range(7, 13))


# -- crashes, the writer, the lock ----------------------------------------------------------------------


def test_a_torn_last_line_is_a_crash_artefact_repaired_and_recorded_on_the_next_start(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    partial = b'{"v":1,"seq":4,"kind":"request","time":"2025'
    with path.open("ab") as handle:
        handle.write(partial)  # the writer died mid-line
    report = verify(path)
    assert kinds(path) == ["torn"] and report.problems[0].after_crash
    assert "abrupt stop" in report.describe()
    write_log(path, 1, start=3)
    assert verify(path).ok
    recovery = records(path)[3]
    assert (recovery["kind"], recovery["torn_bytes"], recovery["adopted"]) == ("recovery", len(partial), 0)
    assert records(path)[-1]["session_id"] == "s3"


def ahead_of_its_checkpoint(path: Path) -> Path:
    """A log of five records whose checkpoint says three: as if the writer died before its last checkpoint."""
    write_log(path, 3)
    checkpointed = checkpoint_path(path).read_bytes()
    write_log(path, 2, start=3)
    checkpoint_path(path).write_bytes(checkpointed)
    return path


def test_records_written_after_the_last_checkpoint_are_adopted_on_the_next_start(tmp_path):
    path = ahead_of_its_checkpoint(tmp_path / "audit.jsonl")
    assert kinds(path) == ["ahead"]
    write_log(path, 1, start=5)
    assert verify(path).ok
    assert [r.get("adopted") for r in records(path) if r["kind"] == "recovery"] == [2]


def test_a_tampered_log_is_left_alone_and_the_writer_refuses_to_start(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    rewrite(path, lambda lines: [lines[0], lines[2]])
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="failed verification") as refused:
        AuditLog(AuditSettings(path=path, fsync=False))
    assert "record 2 missing" in str(refused.value)
    assert path.read_bytes() == before


def test_a_second_writer_on_the_same_log_is_refused(tmp_path):
    settings = AuditSettings(path=tmp_path / "audit.jsonl", fsync=False)
    with AuditLog(settings), pytest.raises(ConfigurationError, match="another process"):
        AuditLog(settings)
    AuditLog(settings).close()  # free again once the first one closed


def test_close_writes_everything_queued_with_fsync_on(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditSettings(path=path, max_bytes=64 * 1024))
    for index in range(600):  # more than two batches
        audit(finished(f"s{index}"))
    audit.close()
    audit.close()  # idempotent
    assert [r["session_id"] for r in records(path)] == [f"s{i}" for i in range(600)]
    assert verify(path).ok


def test_a_full_queue_drops_records_and_says_how_many_in_the_chain(tmp_path, monkeypatch, caplog):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditSettings(path=path, fsync=False, queue_size=1))
    entered, release = threading.Event(), threading.Event()
    append = audit._files.append

    def held(batch: list[dict[str, Any]]) -> int:
        entered.set()
        release.wait(10)
        return append(batch)

    monkeypatch.setattr(audit._files, "append", held)
    audit(finished("s0"))
    assert entered.wait(10)  # the writer holds s0; the queue has room for one more
    audit(finished("s1"))
    audit(finished("s2"))  # dropped
    audit(finished("s3"))  # dropped
    assert audit.dropped == 2
    release.set()
    audit.close()
    written = records(path)
    assert [(r["kind"], r.get("session_id"), r.get("count")) for r in written] == [
        ("request", "s0", None),
        ("dropped", None, 2),
        ("request", "s1", None),
    ]
    assert verify(path).ok and "dropping records" in caplog.text
    assert audit.dropped == 0  # accounted for by the dropped record
    audit(finished("late"))  # after close: counted, never written
    assert audit.dropped == 1


# -- settings ------------------------------------------------------------------------------------


def test_settings_from_the_table(tmp_path):
    settings = AuditSettings.from_table(
        {"path": "logs/audit.jsonl", "max_bytes": 4096, "backups": 2, "retention_days": 30, "verbosity": "full"},
        base=tmp_path,
    )
    assert settings.path == tmp_path / "logs" / "audit.jsonl" and settings.enabled
    assert (settings.max_bytes, settings.backups, settings.retention_days, settings.verbosity) == (
        4096,
        2,
        30.0,
        "full",
    )
    assert not AuditSettings.from_table(None, base=tmp_path).enabled
    assert AuditSettings.from_table({}, base=tmp_path, environ={"XDG_DATA_HOME": str(tmp_path)}).path.name == (
        "audit.jsonl"
    )
    for table, words in [
        ({"verbosty": "full"}, "unknown key 'verbosty'"),
        ({"verbosity": "everything"}, "verbosity"),
        ({"max_bytes": 10}, "max_bytes"),
        ({"backups": -1}, "backups"),
        ({"retention_days": 0}, "retention_days"),
        ({"fsync": "yes"}, "fsync"),
        ({"group_commit_ms": 0}, "group_commit_ms"),
        ({"group_commit_ms": 5000}, "group_commit_ms"),
        ({"group_commit_ms": True}, "group_commit_ms"),
    ]:
        with pytest.raises(ConfigurationError, match=words):
            AuditSettings.from_table(table, base=tmp_path)


def test_the_writer_gathers_records_for_group_commit_ms(tmp_path, monkeypatch):
    assert AuditSettings.from_table({}, base=tmp_path).group_commit == 0.02
    settings = AuditSettings.from_table({"path": "a.jsonl", "fsync": False, "group_commit_ms": 1000}, base=tmp_path)
    assert settings.group_commit == 1.0
    audit = AuditLog(settings)
    batches: list[int] = []
    write = audit._write
    monkeypatch.setattr(audit, "_write", lambda records: (batches.append(len(records)), write(records))[1])
    try:
        audit._enqueue({"kind": "test", "n": 0, "time": "t"})
        audit.flush()  # written at once (the writer was idle); busy now, it looks again in a second
        before = len(batches)
        for number in range(5):
            audit._enqueue({"kind": "test", "n": number + 1, "time": "t"})
            time.sleep(0.02)  # a write each at the old 5 ms window
        audit.flush()
        assert len(batches) - before == 1 and batches[-1] == 5
    finally:
        audit.close()


def test_a_window_longer_than_the_checkpoint_interval_is_not_cut_short(tmp_path, monkeypatch):
    """Records arriving steadily are written once per ``group_commit_ms`` even when it is longer than
    ``CHECKPOINT_EVERY`` (the checkpoint's wait must not cut every window to 50 ms)."""
    table = {"path": "a.jsonl", "fsync": False, "group_commit_ms": 500}
    audit = AuditLog(AuditSettings.from_table(table, base=tmp_path))
    batches: list[int] = []
    write = audit._write
    monkeypatch.setattr(audit, "_write", lambda records: (batches.append(len(records)), write(records))[1])
    try:
        for number in range(60):  # 1.2 s of records, one every 20 ms
            audit._enqueue({"kind": "test", "n": number, "time": "t"})
            time.sleep(0.02)
        audit.flush()
    finally:
        audit.close()
    assert sum(batches) == 60
    assert len(batches) <= 6, batches  # ~1.2 s / 0.5 s windows, the first record's own and the flush's (24 at 50 ms)


def test_a_half_full_queue_wakes_a_lingering_writer(tmp_path, monkeypatch):
    # a window of 30 s (longer than a configuration may ask for): the writer looks again only then
    audit = AuditLog(AuditSettings(path=tmp_path / "a.jsonl", fsync=False, queue_size=10, group_commit=30.0))
    written: list[int] = []
    write = audit._write
    monkeypatch.setattr(audit, "_write", lambda records: (written.append(len(records)), write(records))[1])
    try:
        audit._enqueue({"kind": "test", "n": 0, "time": "t"})  # wakes the idle writer: written at once
        deadline = time.monotonic() + 10
        while not written:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for number in range(1, 6):  # the fifth fills half the queue: the busy writer is woken
            audit._enqueue({"kind": "test", "n": number, "time": "t"})
        while sum(written) < 6:
            assert time.monotonic() < deadline, written  # long before its next look, 30 s on
            time.sleep(0.01)
    finally:
        audit.close()
    assert audit.dropped == 0


# -- gtl audit ---------------------------------------------------------------------------------------


def gtl_audit(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gtl")
    audit_cli.add_subcommands(parser.add_subparsers())
    args = parser.parse_args(["audit", *argv])
    return args.handler(args)


def test_gtl_audit_verify_exits_1_with_what_is_wrong_and_where(chain, capsys):
    assert gtl_audit("verify", "--log", str(chain)) == 0
    assert "chain is intact" in capsys.readouterr().out
    segment_path(chain, 2).unlink()
    assert gtl_audit("verify", "--log", str(chain)) == 1
    assert "the rotated file audit.jsonl.2 is missing" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="no audit log"):
        gtl_audit("verify", "--log", str(chain.parent / "nothing.jsonl"))


def test_gtl_audit_tail_prints_the_last_records_across_a_rotation(chain, capsysbinary):
    assert gtl_audit("tail", "--log", str(chain), "-n", "3") == 0
    printed = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    assert [record["seq"] for record in printed] == [10, 11, 12]


def test_flush_waits_for_every_record_queued_before_it_even_after_drops(tmp_path):
    """A ``dropped`` record the writer adds is not one of the queued records: ``flush`` still waits for those."""
    log = AuditLog(AuditSettings(path=tmp_path / "audit.jsonl", fsync=False, queue_size=1))
    try:
        log._enqueue({"kind": "test", "n": 1, "time": "t"})
        log._enqueue({"kind": "test", "n": 2, "time": "t"})  # the queue is full: dropped, and counted
        log.flush()
        log._enqueue({"kind": "test", "n": 3, "time": "t"})
        log.flush()
        written = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert [record.get("n") for record in written if record["kind"] == "test"] == [1, 3]
        assert [record["count"] for record in written if record["kind"] == "dropped"] == [1]
    finally:
        log.close()


# -- the checkpoint: written when due, not per batch ----------------------------------------------------


def test_the_checkpoint_is_written_when_due_not_per_batch_and_never_lags_more_than_a_batch(tmp_path, monkeypatch):
    """A checkpoint costs a write, a rename and two fsyncs: it follows the records every
    ``CHECKPOINT_EVERY`` seconds, and after ``BATCH`` records at most, whatever the clock says."""
    from gtl_nb.gateway import audit as module

    path = tmp_path / "audit.jsonl"
    files = module._ChainFiles(AuditSettings(path=path, fsync=False), lambda: NOW)
    written: list[int] = []
    real = module._write_atomic

    def counting(target: Path, data: bytes, *, fsync: bool) -> None:
        real(target, data, fsync=fsync)
        written.append(json.loads(data)["count"])

    monkeypatch.setattr(module, "_write_atomic", counting)
    monkeypatch.setattr(module, "CHECKPOINT_EVERY", 3600.0)  # never due by time in this test
    record = {"kind": "test", "time": "t"}
    try:
        for _ in range(100):  # 100 batches of 7: one checkpoint per BATCH records, not one per batch
            files.append([dict(record) for _ in range(7)])
            lag = files.point.count - (written[-1] if written else 0)
            assert lag <= BATCH
            report = verify(path)
            assert report.ok or [p.kind for p in report.problems] == ["ahead"]  # what a crash here would leave
        assert written == [BATCH * n for n in range(1, 700 // BATCH + 1)]
        files.sync()
        assert written[-1] == 700 and verify(path).ok
        files.sync()
        assert len(written) == 700 // BATCH + 1  # nothing new: not written again
    finally:
        files.close()


def test_the_checkpoint_catches_up_when_records_stop_and_at_flush_and_close(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditSettings(path=path, fsync=False))
    try:
        audit(finished("s1"))
        deadline = time.monotonic() + 10
        while Checkpoint.read(checkpoint_path(path)).count != 1:  # without a flush: within CHECKPOINT_EVERY
            assert time.monotonic() < deadline, "the checkpoint never followed the last record"
            threading.Event().wait(0.01)
        audit(finished("s2"))
        audit.flush()
        assert Checkpoint.read(checkpoint_path(path)).count == 2 and verify(path).ok
        audit(finished("s3"))
    finally:
        audit.close()
    assert Checkpoint.read(checkpoint_path(path)).count == 3 and verify(path).ok


def test_flush_returns_while_records_keep_coming(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditSettings(path=path, fsync=False, queue_size=100_000))
    stop = threading.Event()

    def produce() -> None:
        index = 0
        while not stop.is_set():
            audit(finished(f"load{index}"))
            index += 1

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        threading.Event().wait(0.1)
        audit(finished("mine"))
        flusher = threading.Thread(target=audit.flush)
        flusher.start()
        flusher.join(5)
        assert not flusher.is_alive(), "flush waited for the load to stop"
        assert Checkpoint.read(checkpoint_path(path)).count >= 1
    finally:
        stop.set()
        producer.join()
        audit.close()
    assert verify(path).ok


def test_the_recovery_record_is_checkpointed_without_waiting_for_traffic(tmp_path):
    path = ahead_of_its_checkpoint(tmp_path / "audit.jsonl")
    audit = AuditLog(AuditSettings(path=path, fsync=False))
    try:
        assert verify(path).ok  # the recovery record is written and checkpointed: nothing "ahead"
    finally:
        audit.close()


def test_a_checkpoint_the_disk_refused_is_written_again_when_it_takes_it(tmp_path, monkeypatch):
    from gtl_nb.gateway import audit as module

    path = tmp_path / "audit.jsonl"
    refusals = [OSError(28, "No space left on device")]
    real = module._write_atomic

    def flaky(target: Path, data: bytes, *, fsync: bool) -> None:
        if refusals and target == checkpoint_path(path):
            raise refusals.pop()
        real(target, data, fsync=fsync)

    audit = AuditLog(AuditSettings(path=path, fsync=False))
    monkeypatch.setattr(module, "_write_atomic", flaky)
    monkeypatch.setattr(module, "RETRY_EVERY", 0.05)
    try:
        audit(finished("s1"))
        audit.flush()
        deadline = time.monotonic() + 10
        while Checkpoint.read(checkpoint_path(path)).count != 1 or audit.degraded_reason:
            assert time.monotonic() < deadline, audit.degraded_reason
            threading.Event().wait(0.02)
        assert verify(path).ok
    finally:
        audit.close()


def test_gtl_audit_verify_on_a_log_a_running_gateway_writes_is_intact(tmp_path, monkeypatch, capsys):
    """Its newest records may not be checkpointed yet: that is not a crash, and exit 0 says the chain is
    intact (a monitor running ``verify`` must not fire on a live log); once it stops, a lag is a crash."""
    from gtl_nb.gateway import audit as module

    monkeypatch.setattr(module, "CHECKPOINT_EVERY", 3600.0)  # the writer never checkpoints by time here
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditSettings(path=path, fsync=False))
    try:
        audit(finished("s1"))
        audit.flush()
        audit(finished("s2"))
        deadline = time.monotonic() + 10
        while len(records(path)) < 2:  # written, not checkpointed
            assert time.monotonic() < deadline
            threading.Event().wait(0.01)
        assert module.being_written(path)
        assert [p.kind for p in verify(path).problems] == ["ahead"]
        assert gtl_audit("verify", "--log", str(path)) == 0
        out = capsys.readouterr().out
        assert "the chain is intact" in out and "a running gateway is writing it" in out
    finally:
        audit.close()
    assert not module.being_written(path)
    checkpointed = checkpoint_path(path).read_bytes()
    audit = AuditLog(AuditSettings(path=path, fsync=False))
    audit(finished("s3"))
    audit.close()
    checkpoint_path(path).write_bytes(checkpointed)  # as after a crash: the checkpoint lags the log
    assert gtl_audit("verify", "--log", str(path)) == 1
    assert "what an abrupt stop leaves" in capsys.readouterr().err


def test_records_still_waiting_for_a_stuck_ledger_at_close_are_written_not_lost(tmp_path, monkeypatch, caplog):
    """Another writer holds the ledger's lock past the audit log's close: its records waited ROW_WAIT for
    their rows and were then dropped — the audit log lost them; they are written now, the log says why."""
    import sqlite3

    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.gateway import audit as audit_module

    monkeypatch.setattr(audit_module, "ROW_WAIT", 0.3)
    monkeypatch.setattr(ledger_writer, "BLOCKED_AFTER", 3600.0)  # the writer never spools: the ledger is stuck
    ledger_path = tmp_path / "ledger.sqlite3"
    Ledger(ledger_path).close()
    settings = load_settings(providers={"echo": {"type": "echo"}}, environ={})
    engine = build_engine(settings, ledger=str(ledger_path))
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine, wall_clock=lambda: NOW)
    other = sqlite3.connect(ledger_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # held through the audit log's close

    async def answer() -> None:
        async for _ in engine.stream(request("stuck", "echo"), context=CONTEXT):
            pass

    try:
        asyncio.run(answer())
        with caplog.at_level(logging.WARNING, logger="gtl_nb"):
            audit.close()
        assert [(r["session_id"], r["status"]) for r in records(log_path)] == [("stuck", "ok")]
        assert "written without their ledger rows committed" in caplog.text
    finally:
        other.execute("COMMIT")
        other.close()

    async def close() -> None:
        await engine.aclose()

    asyncio.run(close())
    assert [row["session_id"] for row in Ledger(ledger_path).rows()] == ["stuck"]  # the row landed after all


def test_records_past_max_held_waiting_for_a_stuck_ledger_are_written_without_waiting_for_their_rows(
    tmp_path, monkeypatch, caplog
):
    """Another writer holds the ledger's lock: the records held for their rows grow no further than
    ``max_held`` — past it the oldest is written without waiting (one warning, ``degraded_reason``); once the
    ledger commits again the rest follow their rows (one line), each record once and the chain whole."""
    import sqlite3

    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.gateway import audit as audit_module

    monkeypatch.setattr(audit_module, "ROW_WAIT", 0.3)  # a flush's wait for held records, while locked
    monkeypatch.setattr(ledger_writer, "BLOCKED_AFTER", 3600.0)  # the writer never spools: the ledger is stuck
    ledger_path = tmp_path / "ledger.sqlite3"
    Ledger(ledger_path).close()
    settings = load_settings(providers={"echo": {"type": "echo"}}, environ={})
    engine = build_engine(settings, ledger=str(ledger_path))
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog.for_engine(AuditSettings(path=log_path, fsync=False), engine, wall_clock=lambda: NOW, max_held=3)
    other = sqlite3.connect(ledger_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the ledger commits nothing until it is let go
    sessions = [f"s{index}" for index in range(7)]

    async def answer(session: str) -> None:
        async for _ in engine.stream(request(session, "echo"), context=CONTEXT):
            pass

    async def answer_all() -> None:
        for session in sessions:
            await answer(session)

    try:
        with caplog.at_level(logging.INFO, logger="gtl_nb.gateway"):
            asyncio.run(answer_all())
            audit.flush()  # what is queued is written (the held ones stay held: ROW_WAIT)
            assert [r["session_id"] for r in records(log_path)] == sessions[:4]  # the oldest, not waiting
            assert audit.degraded_reason is not None and "4 were written without waiting" in audit.degraded_reason
            other.execute("COMMIT")
            engine_ledger = engine.stores.ledger

            async def flush_ledger() -> None:
                await engine_ledger.flush()

            asyncio.run(flush_ledger())
            audit.flush()
            assert audit.degraded_reason is None
        said = [r for r in caplog.records if "wait for their" in r.getMessage()]
        assert [r.levelname for r in said] == ["WARNING", "INFO"], [r.getMessage() for r in said]
        assert "4 were written without waiting" in said[1].getMessage()
    finally:
        if other.in_transaction:
            other.execute("COMMIT")
        other.close()
        audit.close()

    async def close() -> None:
        await engine.aclose()

    asyncio.run(close())
    assert sorted(r["session_id"] for r in records(log_path)) == sessions  # each once
    assert verify(log_path).ok
    assert sorted(row["session_id"] for row in Ledger(ledger_path).rows()) == sessions
