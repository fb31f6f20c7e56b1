"""InterruptedRows: the rows crash recovery marked, kept until someone follows, then handed over as they come."""

from __future__ import annotations

import logging

import pytest

from gtl_nb.engine import ledger_interrupted
from gtl_nb.engine.ledger_interrupted import InterruptedRows


def _rows(*sessions: str) -> list[dict[str, object]]:
    return [{"session_id": session} for session in sessions]


def test_rows_wait_for_the_first_listener_then_flow_to_every_listener():
    rows = InterruptedRows()
    rows.add(_rows("a", "b"))
    rows.add([])
    assert rows.waiting() == 2
    first: list[list[dict[str, object]]] = []
    stop = rows.follow(first.append)
    assert first == [_rows("a", "b")] and rows.waiting() == 0
    second: list[list[dict[str, object]]] = []
    rows.follow(second.append)  # nothing waits any more: only what comes later
    rows.add(_rows("c"))
    assert first == [_rows("a", "b"), _rows("c")] and second == [_rows("c")]
    stop()
    stop()  # twice is harmless
    rows.add(_rows("d"))
    assert len(first) == 2 and second[-1] == _rows("d")


def test_a_failing_listener_neither_stops_the_others_nor_the_recovery(caplog: pytest.LogCaptureFixture):
    rows = InterruptedRows()

    def broken(batch: list[dict[str, object]]) -> None:
        raise RuntimeError("no room")

    kept: list[list[dict[str, object]]] = []
    rows.follow(broken)
    rows.follow(kept.append)
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        rows.add(_rows("a"))
    assert kept == [_rows("a")]
    assert "failed on 1 row(s)" in caplog.text


def test_without_a_listener_the_rows_kept_are_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(ledger_interrupted, "KEPT", 3)
    rows = InterruptedRows()
    with caplog.at_level(logging.WARNING, logger="gtl_nb"):
        rows.add(_rows("a", "b"))
        rows.add(_rows("c", "d", "e"))
        rows.add(_rows("f"))
    assert rows.waiting() == 3 and rows.overflow == 3
    assert caplog.text.count("nobody to record them") == 1  # said once
    handed: list[list[dict[str, object]]] = []
    rows.follow(handed.append)
    assert handed == [_rows("a", "b", "c")]


def test_rows_nobody_will_record_are_given_up_by_name(caplog: pytest.LogCaptureFixture):
    rows = InterruptedRows()
    rows.add(_rows(*(f"s{index}" for index in range(7))))
    with caplog.at_level(logging.ERROR):
        assert rows.give_up("the audit log could not open") == 7
        assert rows.give_up("again") == 0  # nothing waits any more: nothing said twice
    (said,) = [record.getMessage() for record in caplog.records]
    assert said == (
        "7 request(s) the ledger marked interrupted have no audit record (the audit log could not open): "
        "s0, s1, s2, s3, s4 and 2 more"
    )
    assert rows.waiting() == 0
