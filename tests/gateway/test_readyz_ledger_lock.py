"""``/readyz`` of a gateway whose SQLite ledger file another process keeps locked (``BEGIN EXCLUSIVE``):
requests are still answered, ``/readyz`` says the ledger is degraded — the file, how long, the spool its
writes go to meanwhile — and ``gtl_store_degraded{store="ledger"}`` says 1, until the lock goes; the
audit records follow their spooled rows, and every row arrives in the file, once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tests.ledger_locks import Holder

BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def test_readyz_says_the_ledger_is_degraded_while_another_process_holds_its_lock(tmp_path: Path):
    import httpx

    from gtl_nb.gateway.audit import read_records
    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import write_toml

    ledger = tmp_path / "ledger.sqlite3"
    audit = tmp_path / "audit.jsonl"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"path": str(ledger)},
            "providers.echo": {},
            "gateway.http": {"port": 0},
            "gateway.metrics": {"require_token": False},
            "gateway.audit": {"path": str(audit)},
        },
    )
    holder = None
    try:
        with start_gateway(config, env={"GTL_NB_LOG": "INFO"}) as gateway:
            base = gateway.url("http")

            def ask() -> int:
                return httpx.post(base + "/v1/chat/completions", json=BODY, timeout=30).status_code

            def ready() -> httpx.Response:
                return httpx.get(base + "/readyz", timeout=10)

            def metric() -> str:
                text = httpx.get(base + "/metrics", timeout=10).text
                return next(line for line in text.splitlines() if line.startswith('gtl_store_degraded{store="ledger"}'))

            assert ask() == 200 and ready().json() == {"status": "ready"}
            holder = Holder(ledger)
            assert [ask() for _ in range(3)] == [200, 200, 200]  # answered while the lock is held
            deadline = time.monotonic() + 30
            while ready().json()["status"] != "degraded":
                assert time.monotonic() < deadline, ready().text
                time.sleep(0.05)
            said = ready().json()["degraded"]
            assert list(said) == ["ledger"]
            assert str(ledger) in said["ledger"] and "locked by another process for" in said["ledger"]
            assert f"spooled in {ledger}-spool.jsonl" in said["ledger"]
            assert metric().endswith(" 1.0")
            deadline = time.monotonic() + 30  # spooled, the rows are safe: their audit records are written now
            while len([r for r in read_records(audit) if r.get("kind") == "request"]) < 4:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            holder.release()
            deadline = time.monotonic() + 30
            while ready().json()["status"] != "ready":
                assert time.monotonic() < deadline, ready().text
                time.sleep(0.05)
            assert metric().endswith(" 0.0")
            assert ask() == 200
            output = "".join(gateway.output)
        said_lock = [line for line in output.splitlines() if "write lock" in line]
        assert len(said_lock) == 2, said_lock  # one line as it began, one as it ended: not one per commit
        assert "WARNING" in said_lock[0] and "INFO" in said_lock[1]
    finally:
        if holder is not None:
            holder.release()
    conn = sqlite3.connect(ledger)
    try:
        sessions = [row[0] for row in conn.execute("SELECT session_id FROM requests WHERE status = 'ok'")]
    finally:
        conn.close()
    assert len(sessions) == 5 and len(set(sessions)) == 5
    records = [record for record in read_records(audit) if record.get("kind") == "request"]
    assert sorted(record["session_id"] for record in records) == sorted(sessions)
