"""The reload report a gateway keeps beside its pid file, and ``gtl reload``'s wait on it
(``gateway.reload_report``): what counts as the answer to one SIGHUP, and what is not a report."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gtl_nb.engine.hooks import Hooks, ReloadRefused
from gtl_nb.gateway.main import _reloading
from gtl_nb.gateway.reload_report import (
    MAX_LINE_CHARS,
    MAX_REPORT_BYTES,
    ReloadReport,
    ReloadReporter,
    read_report,
    report_path,
    wait_for_reload,
)
from gtl_nb.protocol.errors import ConfigurationError


def test_the_report_sits_beside_the_pid_file_and_says_nothing_before_a_reload(tmp_path: Path) -> None:
    path = report_path(tmp_path / "gateway.pid")
    assert path == tmp_path / "gateway.pid.reload"
    ReloadReporter(path, pid=4242)
    assert read_report(path) == ReloadReport(pid=4242)
    assert [entry.name for entry in tmp_path.iterdir()] == ["gateway.pid.reload"]  # nothing left aside


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"signals": 1}',  # no pid
        b'{"pid": -1}',
        b'{"pid": true}',
        b'{"pid": 1, "signals": "2"}',
        b'{"pid": 1, "running": "no"}',
        b'{"pid": 1, "line": 7}',
        b"[" * 100_000,
        b'{"pid": 1, "line": "' + b"x" * MAX_REPORT_BYTES + b'"}',
    ],
)
def test_what_is_not_a_report_reads_as_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "gateway.pid.reload"
    path.write_bytes(content)
    assert read_report(path) is None
    assert read_report(tmp_path / "missing.reload") is None


def test_a_long_refusal_is_cut_in_the_report(tmp_path: Path) -> None:
    reporter = ReloadReporter(tmp_path / "g.pid.reload", pid=7)
    reporter.signalled()
    reporter.finished(reporter.starting(), ok=False, line="x" * (MAX_LINE_CHARS * 3), again=False)
    found = read_report(tmp_path / "g.pid.reload")
    assert found is not None and found.ok is False and len(found.line or "") == MAX_LINE_CHARS


def test_a_report_it_cannot_write_is_said_once_and_serving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gtl_nb")
    reporter = ReloadReporter(tmp_path / "no-such-folder" / "g.pid.reload", pid=7)
    reporter.signalled()
    reporter.finished(reporter.starting(), ok=True, line="reloaded", again=False)
    said = [record.getMessage() for record in caplog.records if "reload report" in record.getMessage()]
    assert len(said) == 1 and "gtl reload will not see" in said[0]
    assert reporter.state.covered == 1 and reporter.state.ok is True  # the counts go on


def test_remove_leaves_another_gateways_report(tmp_path: Path) -> None:
    path = tmp_path / "g.pid.reload"
    ours = ReloadReporter(path, pid=7)
    ReloadReporter(path, pid=8)  # another gateway took the pid file (and its report) over
    ours.remove()
    assert read_report(path) == ReloadReport(pid=8)
    ReloadReporter(path, pid=7).remove()
    assert not path.exists()


def _waiting(path: Path, *, after: int, states: list[dict[str, Any]], alive: bool = True) -> ReloadReport | None:
    """``wait_for_reload`` while the report goes through ``states``, one per pause."""
    pending = list(states)

    def sleep(_: float) -> None:
        if pending:
            path.write_text(json.dumps(pending.pop(0)), encoding="utf-8")

    ticks = iter(range(10_000))
    return wait_for_reload(
        path, pid=7, after=after, timeout=50, alive=lambda _: alive, clock=lambda: float(next(ticks)), sleep=sleep
    )


def test_the_answer_is_a_reload_that_began_after_the_signal_with_none_queued(tmp_path: Path) -> None:
    path = tmp_path / "g.pid.reload"
    path.write_text(json.dumps({"pid": 7, "signals": 3, "covered": 3, "ok": True, "line": "old"}), encoding="utf-8")
    found = _waiting(
        path,
        after=3,
        states=[
            {"pid": 7, "signals": 4, "covered": 3, "running": True, "ok": True, "line": "old"},  # signal taken
            # a reload that began before this signal (covers 4 of 5), another queued behind it: not yet
            {"pid": 7, "signals": 5, "covered": 4, "running": True, "ok": True, "line": "the one before"},
            {"pid": 8, "signals": 9, "covered": 9, "running": False, "ok": True, "line": "another gateway"},
            {"pid": 7, "signals": 5, "covered": 5, "running": False, "ok": False, "line": "reload refused: …"},
        ],
    )
    assert found is not None and found.ok is False and found.line == "reload refused: …"


def test_no_answer_from_a_gateway_that_died_or_took_too_long(tmp_path: Path) -> None:
    path = tmp_path / "g.pid.reload"
    path.write_text(json.dumps({"pid": 7, "signals": 1, "covered": 1}), encoding="utf-8")
    assert _waiting(path, after=1, states=[], alive=False) is None
    assert _waiting(path, after=1, states=[]) is None  # the clock passes the timeout


class _SlowReloader:
    """A reloader whose reads wait for the test, and whose second file is refused."""

    def __init__(self) -> None:
        self.engine = SimpleNamespace(hooks=Hooks())
        self.reading = threading.Event()
        self.release = threading.Event()
        self.reads = 0

    def prepare(self) -> SimpleNamespace:  # in a worker thread
        self.reads += 1
        if self.reads == 1:
            self.reading.set()
            assert self.release.wait(10)
        return SimpleNamespace(read=self.reads, not_renewed=None, restart=())

    def apply(self, prepared: SimpleNamespace) -> str:
        if prepared.read > 1:
            raise ConfigurationError("[routing] unknown strategy 'fastest'")
        return "reloaded the configuration: 1 deployment"


def test_signals_during_a_reload_are_answered_by_the_reload_after_it(tmp_path: Path) -> None:
    """Two SIGHUPs while a reload reads: one more reload runs after it, and only its outcome answers them."""

    async def scenario() -> tuple[list[ReloadReport], list[Any]]:
        reloader = _SlowReloader()
        events: list[Any] = []
        reloader.engine.hooks.subscribe(events.append)
        reporter = ReloadReporter(tmp_path / "g.pid.reload", pid=os.getpid())
        handle = _reloading(reloader, reporter)
        states = []
        finish = reporter.finished

        def finished(*args: Any, **kwargs: Any) -> None:
            finish(*args, **kwargs)
            states.append(reporter.state)

        reporter.finished = finished  # type: ignore[method-assign]
        handle()  # the first reload starts (in a task) and reads the file
        while not reloader.reading.is_set():
            await asyncio.sleep(0.005)
        handle()
        handle()  # both queue one more, which reads after them
        states.append(reporter.state)
        reloader.release.set()
        for _ in range(500):
            await asyncio.sleep(0.01)
            if reporter.state.covered == 3 and not reporter.state.running:
                break
        return states, events

    states, events = asyncio.run(scenario())
    assert states[0].signals == 3 and states[0].running
    finished = [state for state in states if state.ok is not None]
    assert finished[0].ok is True and finished[0].covered == 1 and finished[0].running  # one more queued
    assert states[-1] == ReloadReport(
        pid=os.getpid(),
        signals=3,
        covered=3,
        running=False,
        ok=False,
        line="reload refused, still serving the previous configuration: [routing] unknown strategy 'fastest'",
        at=states[-1].at,
    )
    assert events == [ReloadRefused("[routing] unknown strategy 'fastest'")]


def test_a_line_that_is_not_utf8_is_reported_and_later_reloads_still_are(tmp_path: Path) -> None:
    # a refusal quoting a path with a byte that is not UTF-8 (a lone surrogate in Python's text)
    reporter = ReloadReporter(tmp_path / "g.pid.reload", pid=7)
    reporter.signalled()
    reporter.finished(reporter.starting(), ok=False, line="cannot read /etc/gtl/\udcff.toml", again=False)
    found = read_report(tmp_path / "g.pid.reload")
    assert found is not None and found.line == "cannot read /etc/gtl/\\udcff.toml" and found.covered == 1
    reporter.signalled()
    assert read_report(tmp_path / "g.pid.reload").signals == 2  # type: ignore[union-attr]


def test_the_report_is_written_through_a_file_of_its_own_never_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    for name in (".g.pid.reload.7.tmp", ".g.pid.reload.8.tmp", ".g.pid.reload.tmp"):  # names one might guess
        (tmp_path / name).symlink_to(victim)
    ReloadReporter(tmp_path / "g.pid.reload", pid=7).signalled()
    assert victim.read_text(encoding="utf-8") == "keep me"
    assert read_report(tmp_path / "g.pid.reload") is not None


def test_a_sighup_while_the_gateway_starts_is_noted_not_fatal() -> None:
    """Until the event loop handles SIGHUP (the gateway reading its file, opening its stores), one is
    counted — the gateway reloads once it is up — and after the loop it is ignored."""
    import signal

    from gtl_nb.gateway.main import _EarlySignals

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        early = _EarlySignals()
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        assert early.count == 2  # (Python runs the handler before the next bytecode: the test still runs)
        assert not early.stopping  # a reload asked for, not a stop
        early.ignore()
        os.kill(os.getpid(), signal.SIGHUP)
        assert early.count == 2 and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
