"""The gateway killed with SIGKILL while requests end fast: the audit log never holds a record whose
ledger row did not land.

A request the gateway refuses (here a ``RATE_LIMIT``: a user whose budget allows no request) or answers
fast (the echo generator) ends within the ledger's group-commit window; its row is queued when the
request ends and written up to ``group_commit_ms`` later. A gateway child process (``gtl serve``, JWT
auth, ledger and audit on) serves a stream of both kinds from several clients and is killed with
SIGKILL at a random moment once both kinds have been answered, four times over on the same files (the
ledger's commit window widened to 200 ms, so each kill lands in one); a last start recovers the rows of the
dead processes. Then every ``request`` record of the audit log names a session that has its row, with
the same outcome (``interrupted`` for a row the recovery marked), and no session has two records; every
row of a dead process is final or ``interrupted``. (A row without a record is allowed: a crash loses
the records not yet written, docs/operations.md.)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import USER, audit_records, gateway_file, ledger_rows, start, token

ROUNDS = 4
CLIENTS = 6
LIMITED = "flooder"
"""The user whose every request is refused (``requests_per_minute = 0``)."""
FINAL = {"ok", "error", "cancelled", "interrupted"}
START_WAIT = 60.0
"""Seconds the clients may take to have their first answers on a loaded machine (a bound, not a figure)."""


def _request(session_id: str) -> dict[str, object]:
    return {
        "type": "completion_request",
        "session_id": session_id,
        "model": "echo:echo-1",
        "messages": [{"role": "user", "content": f"say {session_id}"}],
    }


async def _client(
    http: httpx.AsyncClient, base: str, name: str, subject: str, stop: asyncio.Event, ended: Counter[str]
) -> None:
    """Send one request after another until ``stop`` (or the gateway is gone), counting in ``ended``
    (by subject) those whose end arrived."""
    headers = {"authorization": f"Bearer {token(subject)}"}
    while not stop.is_set():
        session_id = f"{name}-{ended[name]:05d}"
        try:
            async with http.stream("POST", base + "/v1/gtl/sse", json=_request(session_id), headers=headers) as sent:
                async for line in sent.aiter_lines():
                    if line.startswith("data: ") and json.loads(line[len("data: ") :]).get("type") in ("done", "error"):
                        break
        except httpx.HTTPError:
            return
        ended[name] += 1
        ended[subject] += 1


async def _traffic_then_kill(base: str, pid: int, after: float) -> int:
    """Clients of both users send requests; once each user has had answers (waited for, not timed),
    SIGKILL the gateway ``after`` seconds later."""
    stop = asyncio.Event()
    ended: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=2 * CLIENTS)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30), limits=limits) as http:
        tasks = [
            asyncio.ensure_future(_client(http, base, f"{subject}-{os.getpid()}-{pid}-{i}", subject, stop, ended))
            for i in range(CLIENTS)
            for subject in (USER, LIMITED)
        ]
        deadline = time.monotonic() + START_WAIT
        while min(ended[USER], ended[LIMITED]) < CLIENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(after)
        os.kill(pid, signal.SIGKILL)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return ended[USER] + ended[LIMITED]


@pytest.mark.slow
def test_no_audit_record_outlives_its_ledger_row_after_sigkill(tmp_path: Path):
    tables = {
        # a ledger commit window ten times the default (the audit log keeps its 20 ms): the rows of the
        # requests that end in it are queued for that long, so a kill lands in one in every round
        "ledger": {"path": str(tmp_path / "ledger.sqlite"), "group_commit_ms": 200},
        "providers.echo": {"type": "echo"},
        "budgets": {"users": {LIMITED: {"requests_per_minute": 0}}},
    }
    config = gateway_file(tmp_path, tables)
    ledger = tmp_path / "ledger.sqlite"
    audit = tmp_path / "audit.jsonl"
    dead: list[int] = []
    sent = 0
    for _ in range(ROUNDS):
        gateway = start(config)
        pid = gateway.process.pid
        try:
            sent += asyncio.run(_traffic_then_kill(gateway.url("http"), pid, random.uniform(0.0, 1.0)))
        finally:
            gateway.kill()
        dead.append(pid)
    assert sent > 0, "no request ended before the kills"

    last = start(config)  # recovers the dead processes' rows (and records them)
    assert last.stop() == 0

    rows = ledger_rows(ledger)
    of_dead = [row for row in rows if row["pid"] in dead]
    assert of_dead, "no row of the killed gateways reached the file"
    assert {row["status"] for row in of_dead} <= FINAL, Counter(row["status"] for row in of_dead)
    statuses = Counter(row["status"] for row in of_dead)
    codes = Counter(row["error_code"] for row in of_dead)
    assert statuses["ok"] > 0 and codes["RATE_LIMIT"] > 0, (statuses, codes)  # both kinds were served

    records = audit_records(audit)
    per_session = Counter(record["session_id"] for record in records)
    twice = sorted(session for session, count in per_session.items() if count > 1)
    assert twice == [], f"sessions with two audit records: {twice[:10]}"
    by_session = {row["session_id"]: row for row in rows}
    orphans = sorted(record["session_id"] for record in records if record["session_id"] not in by_session)
    assert orphans == [], f"{len(orphans)} audit records whose ledger row never landed: {orphans[:10]}"
    differ = [
        (record["session_id"], record["status"], by_session[record["session_id"]]["status"])
        for record in records
        if record["status"] != by_session[record["session_id"]]["status"]
    ]
    assert differ == [], f"audit records and rows that disagree: {differ[:10]}"
