"""A gateway request cancelled while its budget is being counted: the default counter lives in the
ledger's own file, which another process holds, so the count waits; the client cancels the session
there. It still leaves one ledger row (``cancelled``), one audit record naming what was asked, and the
open-sessions gauge back where it was — as any cancelled request."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
from websockets.sync.client import connect as ws_connect

from gtl_nb.gateway.audit import read_records
from gtl_nb.gateway.local import start_gateway
from tests.gateway.conftest import write_toml
from tests.ledger_wait import rows_when


def test_a_request_cancelled_while_its_budget_is_counted_leaves_its_row_and_audit_record(tmp_path):
    ledger, audit = tmp_path / "ledger.sqlite", tmp_path / "audit.jsonl"
    tables = {
        "ledger": {"path": str(ledger)},
        "budgets": {"requests_per_minute": 5},
        "gateway.http": {"port": 0},
        "gateway.audit": {"path": str(audit), "fsync": False},
        "gateway.metrics": {"require_token": False},
    }
    gateway = start_gateway(write_toml(tmp_path / "gtl.toml", tables))
    try:
        base = gateway.url("http")
        with ws_connect(base.replace("http://", "ws://") + "/v1/gtl/ws") as socket_:
            socket_.send(json.dumps({"type": "hello", "versions": ["1.0"]}))
            assert json.loads(socket_.recv(timeout=10))["type"] == "hello"
            other = sqlite3.connect(ledger, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process holds the file: the count waits
            try:
                request = {"type": "completion_request", "session_id": "s-cut", "model": "echo", "stream": True}
                socket_.send(json.dumps({**request, "messages": [{"role": "user", "content": "hi"}]}))
                time.sleep(0.5)  # the session is being counted
                socket_.send(json.dumps({"type": "cancel", "session_id": "s-cut"}))
                frames = [json.loads(socket_.recv(timeout=10))]
                while frames[-1]["type"] not in ("done", "error"):
                    frames.append(json.loads(socket_.recv(timeout=10)))
            finally:
                other.execute("COMMIT")
                other.close()
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "CANCELLED"
        rows = rows_when(ledger, session_id="s-cut")
        assert [(row["status"], row["error_code"], row["model"]) for row in rows] == [
            ("cancelled", "CANCELLED", "echo")
        ]
        exposition = httpx.get(base + "/metrics", timeout=10).text
        assert 'gtl_open_sessions{transport="ws"} 0.0' in exposition
    finally:
        gateway.stop()
    records = [record for record in read_records(audit) if record.get("session_id") == "s-cut"]
    assert [(r["status"], r["error_code"], r["requested_model"]) for r in records] == [
        ("cancelled", "CANCELLED", "echo")
    ]
