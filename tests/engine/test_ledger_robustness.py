"""A request that ended never leaves its ledger row ``started``: implausible values from a provider,
and failures injected into the finishing step, still finish the row."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import gtl_nb
from gtl_nb.engine import ledger as ledger_module
from gtl_nb.engine.ledger import Ledger, LedgerStateError


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "ledger.sqlite3") as opened:
        yield opened


@pytest.mark.parametrize(
    "fields",
    [
        {"tokens_in": 10**20},
        {"tokens_out": -5},
        {"cached_tokens_in": 2**63},
        {"cache_write_tokens_in": -1},
        {"cache_write_tokens_in": True},
        {"cache_write_tokens_in": 2**64},
        {"cache_write_tokens_in": "12"},
        {"reasoning_tokens_out": 1.5},
        {"cost": float("nan")},
        {"cost": float("inf")},
        {"ttft_ms": "soon"},
        {"latency_ms": 10**400},
    ],
    ids=repr,
)
def test_implausible_numbers_are_stored_as_unknown_and_the_row_finishes(ledger: Ledger, fields, caplog):
    row = ledger.start(session_id="s", model="m")
    ledger.finish(row, status="ok", **fields)
    stored = ledger.row(row)
    assert stored["status"] == "ok"
    column = next(iter(fields))
    assert stored[column] is None or (column == "latency_ms" and stored[column] >= 0)
    assert "stored as unknown" in caplog.text


def test_text_that_sqlite_cannot_store_still_finishes_the_row(ledger: Ledger, caplog):
    row = ledger.start(session_id="s", model="m")
    ledger.finish(row, status="error", error_code="PROVIDER_UNAVAILABLE", model="bad\udc80model")
    stored = ledger.row(row)
    assert stored["status"] == "error" and stored["error_code"] == "PROVIDER_UNAVAILABLE"
    assert stored["end_time"] is not None
    assert "recording its status only" in caplog.text


@pytest.mark.parametrize("failure", [RuntimeError("boom"), OverflowError("big"), MemoryError(), KeyError("k")])
def test_any_failure_inside_the_finishing_update_still_finishes_the_row(ledger: Ledger, monkeypatch, failure):
    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(ledger_module, "_count", broken)  # the details step fails, whatever the exception
    row = ledger.start(session_id="s", model="m")
    ledger.finish(row, status="ok", tokens_in=3)
    assert ledger.row(row)["status"] == "ok"
    with pytest.raises(LedgerStateError):  # and the first outcome still wins
        ledger.finish(row, status="error")


def test_a_failing_details_statement_falls_back_to_the_status(ledger: Ledger, monkeypatch):
    monkeypatch.setattr(ledger_module, "_FINISH", "UPDATE no_such_table SET x = 1")
    row = ledger.start(session_id="s", model="m")
    ledger.finish(row, status="cancelled", error_code="CANCELLED")
    stored = ledger.row(row)
    assert stored["status"] == "cancelled" and stored["error_code"] == "CANCELLED"


class AbsurdUsage(BaseHTTPRequestHandler):
    """An OpenAI-shaped stream whose usage reports 10**20 prompt tokens."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        }
        usage = {**chunk, "choices": [], "usage": {"prompt_tokens": 10**20, "completion_tokens": 1}}
        body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_provider_reporting_an_absurd_token_count_leaves_a_finished_row(tmp_path: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), AbsurdUsage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = tmp_path / "ledger.sqlite3"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with gtl_nb.connect(providers={"openai": {"api_key": "k", "base_url": url}}, ledger=path, environ={}) as client:
            answer = client.complete("gpt-4o-mini", "hello")
    finally:
        server.shutdown()
        server.server_close()
    assert answer.text == "hi"
    row = Ledger(path).to_dataframe().iloc[0]
    assert row["status"] == "ok" and row["session_id"] == answer.session_id
    assert row["tokens_out"] == 1
