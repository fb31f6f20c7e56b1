"""Retention: the oldest finished rows go by age or beyond a row count, never a started row nor one
a budget may still count; the writer prunes when it opens and at most hourly; by hand too."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import Ledger, LedgerValueError
from gtl_nb.engine.ledger_cli import add_subcommands
from gtl_nb.engine.ledger_retention import Pruned, Retention, keep_since, prune, prune_file
from gtl_nb.engine.settings import load_settings
from gtl_nb.engine.stores.sqlite import SqliteUsageLedger
from gtl_nb.protocol.errors import ConfigurationError

DAY, HOUR = 86400.0, 3600.0
NOW = 1_700_049_600.0  # 2023-11-15T12:00:00Z
ADA = RequestContext(principal="ada")


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def add(ledger: Ledger, session: str, age: float, status: str = "ok") -> None:
    """A row started ``age`` seconds before NOW (finished with ``status`` unless ``started``)."""
    row = ledger.start(session_id=session, user="ada", model="m", now=NOW - age)
    if status != "started":
        ledger.finish(row, status=status, now=NOW - age + 1)


def sessions(ledger: Ledger) -> list[str]:
    return [row["session_id"] for row in ledger.rows()]


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "ledger.sqlite3") as opened:
        yield opened


def test_rows_budgets_may_count_are_kept_from_the_previous_utc_day_on():
    assert keep_since(NOW) == NOW - 36 * HOUR  # 2023-11-14T00:00Z
    assert keep_since(NOW + 13 * HOUR) == NOW - 12 * HOUR  # the next day: its previous day began at NOW - 12 h


def test_finished_rows_older_than_the_days_go_and_started_ones_stay(ledger: Ledger):
    add(ledger, "three days", 3 * DAY)
    add(ledger, "started long ago", 10 * DAY, status="started")
    add(ledger, "interrupted", 2 * DAY, status="interrupted")
    add(ledger, "yesterday", 30 * HOUR)  # older than a day, but a budget may still count it
    add(ledger, "recent", HOUR)
    assert prune(ledger, Retention(days=30), now=NOW) == Pruned(0, 0)
    assert prune(ledger, Retention(days=1), now=NOW) == Pruned(by_age=2)
    assert sessions(ledger) == ["started long ago", "yesterday", "recent"]


def test_beyond_max_rows_the_oldest_finished_rows_go(ledger: Ledger):
    for index, (age, status) in enumerate(
        [(10 * DAY, "ok"), (9 * DAY, "started"), (8 * DAY, "ok"), (7 * DAY, "error"), (HOUR, "ok"), (HOUR, "ok")]
    ):
        add(ledger, f"r{index}", age, status)
    add(ledger, "r6", HOUR, "cancelled")
    assert prune(ledger, Retention(max_rows=3), now=NOW) == Pruned(by_size=3)
    assert sessions(ledger) == ["r1", "r4", "r5", "r6"]  # the newest three, and the started one


def test_max_rows_never_deletes_rows_a_budget_may_count(ledger: Ledger):
    for index in range(5):
        add(ledger, f"today {index}", HOUR)
    assert prune(ledger, Retention(max_rows=1), now=NOW) == Pruned(0, 0)
    assert len(sessions(ledger)) == 5


def test_large_prunes_run_in_small_transactions(ledger: Ledger):
    statements: list[str] = []
    for index in range(12):
        add(ledger, f"old {index}", 5 * DAY)
    add(ledger, "new", HOUR)
    ledger.transaction(lambda conn: conn.set_trace_callback(statements.append))
    assert prune(ledger, Retention(days=2), now=NOW, chunk=5) == Pruned(by_age=12)
    assert sessions(ledger) == ["new"]
    assert sum(statement.startswith("DELETE") for statement in statements) == 3  # 5 + 5 + 2


def test_the_writer_prunes_when_it_opens_and_then_at_most_hourly(tmp_path: Path):
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as setup:
        add(setup, "ancient", 5 * DAY)
        add(setup, "edge", 2 * DAY - 10 * 60)  # within two days for ten more minutes
        add(setup, "stuck", 5 * DAY, status="started")
    clock = Clock()
    store = SqliteUsageLedger(path, clock=clock, retention=Retention(days=2))

    async def request(name: str) -> list[str]:
        row = await store.start(session_id=name, context=ADA, model="m")
        await store.finish(row, status="ok")
        return [row["session_id"] for row in await store.rows()]  # after the prune that was due

    try:
        assert asyncio.run(request("r1")) == ["edge", "stuck", "r1"]  # pruned when it opened
        clock.now += HOUR / 2  # "edge" is past two days now, but a prune is not due yet
        assert asyncio.run(request("r2")) == ["edge", "stuck", "r1", "r2"]
        clock.now += HOUR / 2
        assert asyncio.run(request("r3")) == ["stuck", "r1", "r2", "r3"]
    finally:
        store.close()


def test_pruning_by_hand_and_giving_the_space_back(tmp_path: Path):
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as setup:
        setup.transaction(
            lambda conn: conn.executemany(
                "INSERT INTO requests (time, time_utc, status, model) VALUES (?, '', 'ok', ?)",
                [(NOW - 5 * DAY, "m" * 200) for _ in range(2000)],
            )
        )
        add(setup, "kept", HOUR)
    assert prune_file(path, Retention(days=1), now=NOW) == Pruned(by_age=2000)
    assert _freelist(path) > 0  # the pages are free inside the file
    assert prune_file(path, Retention(days=1), now=NOW, vacuum=True) == Pruned(0, 0)
    assert _freelist(path) == 0
    with Ledger(path) as after:
        assert sessions(after) == ["kept"]


def _freelist(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    finally:
        conn.close()


# -- settings ------------------------------------------------------------------------------------


def test_retention_is_off_unless_configured():
    assert load_settings(environ={}).ledger.retention is None
    settings = load_settings(environ={}, ledger={"retention_days": 30, "max_rows": 1_000_000})
    assert settings.ledger.retention == Retention(days=30, max_rows=1_000_000)
    assert load_settings(environ={}, ledger={"max_rows": 5000}).ledger.retention == Retention(max_rows=5000)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"retention_days": 0.5}, "retention_days must be at least 1"),
        ({"retention_days": -3}, "retention_days must not be negative"),
        ({"retention_days": "30"}, "retention_days must be a number"),
        ({"retention_days": True}, "retention_days must be a number"),
        ({"max_rows": 0}, "max_rows must be at least 1"),
        ({"max_rows": 10.5}, "max_rows must be an integer"),
        ({"max_row": 10}, "did you mean 'max_rows'"),
    ],
)
def test_bad_retention_settings_name_the_key(table: dict[str, object], message: str):
    with pytest.raises(ConfigurationError, match=rf"\[ledger\].*{message}"):
        load_settings(environ={}, ledger=table)


@pytest.mark.parametrize("arguments", [{"days": 0.5}, {"days": True}, {"max_rows": 0}, {"max_rows": 2.0}])
def test_a_retention_made_in_code_is_checked_too(arguments: dict[str, object]):
    with pytest.raises(LedgerValueError):
        Retention(**arguments)  # type: ignore[arg-type]
    assert not Retention().enabled


# -- by hand: gtl ledger prune -----------------------------------------------------------------------


def gtl_ledger(*argv: str) -> int:
    """Run ``gtl ledger ...`` through the subcommand's own parser (as ``gtl`` registers it)."""
    parser = argparse.ArgumentParser(prog="gtl")
    parser.add_argument("--config")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.handler(args))


def test_the_command_prunes_by_its_options_or_the_configured_retention(tmp_path: Path, capsys):
    path = tmp_path / "ledger.sqlite3"
    now = time.time()
    with Ledger(path) as setup:
        for index, age in enumerate([40 * DAY, 10 * DAY, HOUR]):
            setup.finish(setup.start(session_id=f"r{index}", model="m", now=now - age), status="ok", now=now - age)
    assert gtl_ledger("ledger", "prune", "--ledger", str(path), "--days", "30") == 0
    assert f"{path}: deleted 1 row(s) by age and 0 by size" in capsys.readouterr().out
    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\npath = "{path}"\nretention_days = 5\n', encoding="utf-8")
    assert gtl_ledger("--config", str(config), "ledger", "prune", "--vacuum") == 0
    assert "deleted 1 row(s) by age and 0 by size, then vacuumed" in capsys.readouterr().out
    with Ledger(path) as after:
        assert sessions(after) == ["r2"]


def test_the_command_says_when_there_is_nothing_to_prune_by(tmp_path: Path, capsys):
    from gtl_nb.cli import main

    path = tmp_path / "ledger.sqlite3"
    assert main(["ledger", "prune", "--ledger", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gtl: error: nothing to prune by") and "give --days or --max-rows" in err  # as every error
    with pytest.raises(ConfigurationError, match="--days must be at least 1"):
        gtl_ledger("ledger", "prune", "--ledger", str(path), "--days", "0.5")


def test_the_command_says_a_file_that_is_no_ledger_is_the_callers_mistake_as_usage_does(tmp_path: Path, capsys):
    from gtl_nb.cli import main

    wrong = tmp_path / "notes.sqlite3"
    wrong.write_bytes(b"these are my notes, not a database\n" * 100)
    assert main(["usage", "--ledger", str(wrong)]) == 2
    said_by_usage = capsys.readouterr().err
    assert main(["ledger", "prune", "--max-rows", "1", "--ledger", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err == said_by_usage and "cannot read it as a usage ledger" in err and "INTERNAL" not in err
    assert wrong.read_bytes().startswith(b"these are my notes")  # untouched


def test_the_command_refuses_a_ledger_file_that_is_not_there_rather_than_making_one(tmp_path: Path, capsys):
    # a typo in a cron job's --ledger made an empty file and said "deleted 0 row(s)" for ever
    missing = tmp_path / "ledgr.sqlite3"
    with pytest.raises(ConfigurationError, match=r"--ledger .*ledgr\.sqlite3: no such file"):
        gtl_ledger("ledger", "prune", "--ledger", str(missing), "--days", "3")
    assert not missing.exists()


def test_the_command_refuses_a_configured_ledger_file_that_is_not_there(tmp_path: Path, capsys, monkeypatch):
    """A typo in ``[ledger] path`` is as likely as in ``--ledger``: refused, naming the path and the file
    that set it, and no empty ledger made; with no ledger configured, a default file not made yet is only
    said to hold nothing to prune."""
    from gtl_nb.cli import main

    missing = tmp_path / "ledgr.sqlite3"
    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\npath = "{missing}"\nretention_days = 5\n', encoding="utf-8")
    assert main(["--config", str(config), "ledger", "prune"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gtl: error: ") and f"[ledger] path in {config} names {missing}: no such file" in err
    with pytest.raises(ConfigurationError, match=r"\[ledger\] url in .*gtl\.toml names .*ledgr\.sqlite3: no such"):
        config.write_text(f'[ledger]\nurl = "sqlite:///{missing}"\nretention_days = 5\n', encoding="utf-8")
        gtl_ledger("--config", str(config), "ledger", "prune")
    monkeypatch.setenv("GTL_NB_CONFIG", str(config))  # named by the environment: the same refusal
    with pytest.raises(ConfigurationError, match=r"ledgr\.sqlite3: no such file"):
        gtl_ledger("ledger", "prune")
    assert not missing.exists()

    monkeypatch.delenv("GTL_NB_CONFIG")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no user configuration: the default file
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert gtl_ledger("ledger", "prune", "--days", "3") == 0
    assert "no ledger at" in capsys.readouterr().err


def test_a_prune_that_deletes_nothing_says_which_rows_are_never_pruned(tmp_path: Path, capsys):
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as setup:
        for index in range(5):
            setup.finish(setup.start(session_id=f"today{index}", model="m"), status="ok")
    assert gtl_ledger("ledger", "prune", "--ledger", str(path), "--max-rows", "2") == 0
    out = capsys.readouterr().out
    assert "deleted 0 row(s) by age and 0 by size" in out and "current and previous UTC day" in out
