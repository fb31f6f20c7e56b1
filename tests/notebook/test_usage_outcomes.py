"""``gtl usage`` and ``%gtl usage`` count a ledger's failed and cancelled requests by one rule
(``ledger_schema.usage_outcome``): errors are ``error`` and ``interrupted`` rows, cancelled ones a
column of their own, never errors (docs/ledger.md, "Reading it")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from gtl_nb.cli import main
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.ledger_schema import FINAL_STATUSES

from .conftest import loaded_shell, run

#: (session, status, ttft_ms, cost): every way a request ends, twice over for cancelled (before and
#: after its answer began) and once with no price, so each count has something to tell apart
ROWS = (
    ("answered", "ok", 80.0, 0.25),
    ("answered-unpriced", "ok", 90.0, None),
    ("refused", "error", None, None),
    ("stopped-early", "cancelled", None, None),
    ("stopped-mid-answer", "cancelled", 120.0, None),
    ("process-died", "interrupted", None, None),
)


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A notebook whose configured ledger holds ``ROWS`` (and one request still running)."""
    with Ledger(str(tmp_path / "ledger.sqlite3")) as ledger:
        for session, status, ttft_ms, cost in ROWS:
            row = ledger.start(session_id=session, user="ada", model="gpt-4o-mini")
            code = {"error": "OVERLOADED", "cancelled": "CANCELLED", "interrupted": "INTERRUPTED"}.get(status)
            ledger.finish(row, status=status, error_code=code, deployment="openai", ttft_ms=ttft_ms, cost=cost)
        ledger.start(session_id="still-running", user="ada", model="gpt-4o-mini")
    yield from loaded_shell(tmp_path, monkeypatch)


def test_gtl_usage_and_the_magic_count_errors_and_cancelled_requests_alike(ip, tmp_path, capsys):
    status = main(["usage", "--ledger", str(tmp_path / "ledger.sqlite3"), "--json"])
    assert status == 0
    (cli,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    result, text = run(ip, "%gtl usage --by model")
    assert result.success, text
    (magic,) = result.result.to_dict("records")
    # docs/ledger.md: errors are the rows that ended in an error or were interrupted; a cancelled request
    # is a request, not an error
    said = {"ok": ("ok",), "errors": ("error", "interrupted"), "cancelled": ("cancelled",)}
    expected = {outcome: sum(row[1] in statuses for row in ROWS) for outcome, statuses in said.items()}
    assert (cli["requests"], magic["requests"]) == (len(ROWS) + 1, len(ROWS) + 1)  # the running one too
    for outcome in ("errors", "cancelled"):
        assert cli[outcome] == magic[outcome] == expected[outcome], outcome
    assert magic["ok"] == expected["ok"]
    # what cost something and has no known cost: the unpriced answer, and the one cancelled mid-answer
    assert cli["cost_unknown"] == magic["unpriced"] == 2
    assert "failed" not in result.result.columns  # one word for one count, the ledger's


def test_every_final_status_has_exactly_one_count():
    from gtl_nb.engine.ledger_schema import USAGE_OUTCOMES, usage_outcome

    counted = [status for statuses in USAGE_OUTCOMES.values() for status in statuses]
    assert sorted(counted) == sorted(FINAL_STATUSES)
    assert usage_outcome("started") is None and usage_outcome(None) is None


def test_the_terminal_table_has_a_cancelled_column_beside_the_errors(ip, tmp_path, capsys):
    assert main(["usage", "--ledger", str(tmp_path / "ledger.sqlite3")]) == 0
    header, row, total, *_ = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["model", "requests", "errors", "cancelled"]
    assert row.split()[:4] == ["gpt-4o-mini", "7", "2", "2"] and total.split()[:4] == ["total", "7", "2", "2"]
