"""``gtl usage``: what the ledger recorded, summed by model, deployment, user, day or status, read
without disturbing (or creating) the file; and the ledger commands refuse ``--gateway``."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

import gtl_nb
from gtl_nb.cli import build_parser, main
from gtl_nb.protocol import InvalidRequestError


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger of three echo answers, two priced answers from the OpenAI simulator and one refusal."""
    path = tmp_path_factory.mktemp("usage") / "ledger.sqlite3"
    with gtl_nb.sim.running("openai") as url:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": url}},
            config={"ledger": {"path": str(path)}},
            environ={},
        )
        try:
            for prompt in ("one", "two", "three"):
                client.complete("echo", prompt)
            for prompt in ("four", "five"):
                client.complete("openai:gpt-4o-mini", prompt)
            with pytest.raises(InvalidRequestError):
                client.complete("echo", "six", tool_choice="required")  # no tools: refused, still a row
        finally:
            client.close()
    return path


def usage(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["usage", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_usage_sums_each_model_the_busiest_first_with_a_total(ledger, capsys):
    status, out, err = usage(capsys, "--ledger", str(ledger))
    assert status == 0 and f"gtl: read {ledger}" in err  # which file, apart from the table
    lines = out.splitlines()
    assert lines[0].split() == ["model", "requests", "errors", "cancelled", "tokens", "in", "tokens", "out", "cost"]
    echo, priced, total = lines[1].split(), lines[2].split(), lines[3].split()
    assert echo[:3] == ["echo", "4", "1"] and echo[-1] == "$0"  # free, as %gtl usage and the footers say it
    assert priced[:3] == ["gpt-4o-mini", "2", "0"] and float(priced[-1].lstrip("$")) > 0
    assert priced[-1] != "$0.0000" and len(priced[-1].split(".")[1]) == 6  # under a cent: six places, not $0.0000
    assert total[:3] == ["total", "6", "1"] and total[-1] == priced[-1]


def test_usage_as_json_writes_a_sums_cost_without_float_noise(ledger, tmp_path, capsys):
    """Summed binary floats carry noise in their last digits (0.1 + 0.2 is 0.30000000000000004): the
    JSON gives the cost to 12 decimal places, the finest the table ever shows, so a sum reads as money."""
    noisy = tmp_path / "noisy.sqlite3"
    with sqlite3.connect(ledger) as source, sqlite3.connect(noisy) as copy:
        source.backup(copy)
        ids = [row[0] for row in copy.execute("SELECT id FROM requests WHERE model = 'gpt-4o-mini' ORDER BY id")]
        for row_id, cost in zip(ids, (0.1, 0.2), strict=True):
            copy.execute("UPDATE requests SET cost = ? WHERE id = ?", (cost, row_id))
    status, out, _ = usage(capsys, "--ledger", str(noisy), "--json")
    assert status == 0
    line = next(line for line in out.splitlines() if '"gpt-4o-mini"' in line)
    assert '"cost": 0.3,' in line and json.loads(line)["cost"] == 0.3


def test_usage_as_json_agrees_with_the_rows(ledger, capsys):
    status, out, _ = usage(capsys, "--ledger", str(ledger), "--json", "--by", "status")
    groups = {group["status"]: group for group in map(json.loads, out.splitlines())}
    assert status == 0 and set(groups) == {"ok", "error"}
    with sqlite3.connect(ledger) as conn:
        tokens_in, cost = conn.execute("SELECT SUM(tokens_in), SUM(cost) FROM requests WHERE status = 'ok'").fetchone()
    assert groups["ok"]["requests"] == 5 and groups["ok"]["tokens_in"] == tokens_in
    assert groups["ok"]["cost"] == pytest.approx(cost)
    assert groups["error"] == {
        "status": "error",
        "requests": 1,
        "errors": 1,
        "cancelled": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
        "cost_unknown": 0,
        "cached_tokens_in": 0,
        "cache_write_tokens_in": 0,
    }


@pytest.mark.parametrize("by", ["deployment", "user", "day"])
def test_usage_groups_by_what_is_asked(ledger, capsys, by):
    status, out, _ = usage(capsys, "--ledger", str(ledger), "--by", by)
    assert status == 0 and out.splitlines()[0].startswith(by)
    assert out.splitlines()[-1].split()[:2] == ["total", "6"]


def test_usage_by_provider_is_by_deployment_as_in_the_notebook(ledger, capsys):
    # %gtl usage groups by provider by default: the same word works here, for the ledger's deployment
    status, out, _ = usage(capsys, "--ledger", str(ledger), "--by", "provider")
    assert status == 0
    assert out == usage(capsys, "--ledger", str(ledger), "--by", "deployment")[1]


def test_usage_by_error_code_hour_or_provider_type_as_the_notebook_groups(ledger, capsys):
    """Groupings only %gtl usage --by took: the terminal takes them too (one list, USAGE_GROUPINGS)."""
    status, out, _ = usage(capsys, "--ledger", str(ledger), "--by", "error_code", "--json")
    assert status == 0
    assert {group["error_code"]: group["requests"] for group in map(json.loads, out.splitlines())} == {
        "-": 5,  # the answers
        "INVALID_REQUEST": 1,  # the refusal
    }
    status, out, _ = usage(capsys, "--ledger", str(ledger), "--by", "provider_type", "--json")
    assert {group["provider_type"]: group["requests"] for group in map(json.loads, out.splitlines())} == {
        "echo": 3,
        "openai": 2,
        "-": 1,  # the refusal reached no provider
    }
    status, out, _ = usage(capsys, "--ledger", str(ledger), "--by", "hour")
    header, *hours, total = out.splitlines()
    assert status == 0 and header.startswith("hour ") and total.split()[:2] == ["total", "6"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:00", line[:16]) for line in hours), hours  # the UTC hour


def test_gtl_usage_takes_every_grouping_the_notebook_takes_and_no_other():
    from gtl_nb.engine.ledger_schema import USAGE_GROUPINGS
    from gtl_nb.notebook.args import usage_parser

    def by_choices(parser) -> set[str]:
        (option,) = [action for action in parser._actions if "--by" in action.option_strings]
        return set(option.choices)

    cli_usage = build_parser()._subparsers._group_actions[0].choices["usage"]
    assert by_choices(cli_usage) == by_choices(usage_parser()) == set(USAGE_GROUPINGS)


def test_a_window_without_requests_says_so(ledger, capsys):
    with sqlite3.connect(ledger) as conn:
        conn.execute("UPDATE requests SET time = time - 10 * 86400 WHERE model = 'gpt-4o-mini'")
    try:
        status, out, _ = usage(capsys, "--ledger", str(ledger), "--days", "1")
        assert status == 0 and "gpt-4o-mini" not in out and "echo" in out
    finally:
        with sqlite3.connect(ledger) as conn:
            conn.execute("UPDATE requests SET time = time + 10 * 86400 WHERE model = 'gpt-4o-mini'")
    empty = ledger.parent / "empty.sqlite3"
    sqlite3.connect(ledger).backup(target := sqlite3.connect(empty))
    target.execute("DELETE FROM requests")
    target.commit()
    target.close()
    status, out, err = usage(capsys, "--ledger", str(empty), "--days", "1")
    assert status == 0 and not out and "no requests recorded in the last 1 day(s)" in err


def test_no_ledger_yet_is_said_and_no_file_is_made(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the default file, not made yet
    monkeypatch.delenv("GTL_NB_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    status, out, err = usage(capsys)
    assert status == 0 and not out and "no usage recorded yet" in err
    assert not (tmp_path / "data").exists()


def test_a_configured_ledger_not_there_yet_names_where_it_was_configured(tmp_path, capsys, monkeypatch):
    """Nothing has run with it yet, or its name is mistyped: either way the message says which setting
    of which file named it (and makes no file)."""
    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\npath = "{tmp_path / "ledgr.sqlite3"}"\n')
    monkeypatch.setenv("GTL_NB_CONFIG", str(config))
    status, out, err = usage(capsys)
    assert status == 0 and not out
    assert f"no ledger at {tmp_path / 'ledgr.sqlite3'}; [ledger] path in {config} names it" in err
    assert not (tmp_path / "ledgr.sqlite3").exists()


def test_a_ledger_file_named_by_hand_that_is_not_there_is_an_error(tmp_path, capsys):
    missing = tmp_path / "none.sqlite3"  # most often a typo: never "no usage yet"
    status, out, err = usage(capsys, "--ledger", str(missing))
    assert status == 2 and not out and f"--ledger {missing}: no such file" in err
    assert not missing.exists()


def test_a_file_that_is_no_ledger_is_one_clear_line(tmp_path, capsys):
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE notes (text TEXT)").connection.close()
    status, _, err = usage(capsys, "--ledger", str(other))
    assert status == 2 and err.startswith("gtl: error:") and "cannot read it as a usage ledger" in err
    assert usage(capsys, "--ledger", str(other), "--days", "-1")[0] == 2
    text = tmp_path / "gtl.toml"
    text.write_text("[ledger]\npath = 'x'\n", encoding="utf-8")  # not a database at all
    status, _, err = usage(capsys, "--ledger", str(text))
    assert status == 2 and "cannot read it as a usage ledger" in err and "Traceback" not in err


def test_the_ledger_commands_refuse_a_gateway_given_on_the_command_line(ledger, capsys, monkeypatch):
    assert main(["--gateway", "ws://127.0.0.1:9", "ledger", "prune", "--ledger", str(ledger), "--days", "30"]) == 2
    assert "works on a ledger file on this machine, not a gateway's" in capsys.readouterr().err
    # usage asks the gateway instead; a file named beside it is one too many
    assert main(["--gateway", "ws://127.0.0.1:9", "usage", "--ledger", str(ledger)]) == 2
    assert "--gateway asks the gateway" in capsys.readouterr().err
    monkeypatch.setenv("GTL_NB_GATEWAY", "ws://127.0.0.1:9")  # set for complete and models: not a refusal
    assert main(["usage", "--ledger", str(ledger)]) == 0
    assert main(["--gateway", "", "usage", "--ledger", str(ledger)]) == 0  # an empty --gateway ($GW unset)


def test_rows_read_through_a_gateway_group_as_the_file_does(ledger):
    """``group_rows`` (for a gateway's rows) sums exactly as the SQL of a file does, every grouping."""
    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.engine.ledger_cli import GROUPINGS, _usage_groups, group_rows

    with Ledger(str(ledger)) as read:
        rows = read.rows()
    for by in GROUPINGS:
        assert group_rows(rows, by) == _usage_groups(ledger, GROUPINGS[by], None), by


def test_odd_rows_group_through_a_gateway_as_in_the_file(tmp_path):
    """Rows with no model, an empty model, an empty user, no cost: the same groups both ways."""
    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.engine.ledger_cli import GROUPINGS, _usage_groups, group_rows

    path = tmp_path / "odd.sqlite3"
    with Ledger(str(path)) as ledger:
        for session, user, model in (("a", "", None), ("b", "u", ""), ("c", "", "m"), ("d", "v", "m")):
            row = ledger.start(session_id=session, user=user, model=model)
            ledger.finish(row, status="ok", deployment="" if session == "b" else "x", tokens_in=2, tokens_out=3)
        rows = ledger.rows()
    for by in GROUPINGS:
        assert group_rows(rows, by) == _usage_groups(path, GROUPINGS[by], None), by


def test_a_ledger_in_a_folder_it_cannot_write_is_read_as_immutable(ledger, capsys, monkeypatch):
    """A stopped gateway's ledger, readable but in a folder this user cannot write: SQLite's read-only
    open of a WAL file needs a -shm file it cannot create there (played here by refusing that open)."""
    import gtl_nb.engine.ledger_cli as ledger_cli

    with sqlite3.connect(ledger) as conn:  # a stopped writer's file: every commit merged into it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    opened = []
    real = sqlite3.connect

    def connect(database, *args, **kwargs):
        opened.append(database)
        if "immutable=1" not in database:
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *args, **kwargs)

    monkeypatch.setattr(ledger_cli.sqlite3, "connect", connect)
    status, out, _ = usage(capsys, "--ledger", str(ledger))
    assert status == 0 and out.splitlines()[-1].split()[:2] == ["total", "6"]
    assert opened[-1].endswith("?mode=ro&immutable=1")
    wal = Path(f"{ledger}-wal")
    kept = wal.read_bytes() if wal.exists() else None
    wal.write_bytes(b"\0" * 32)  # a writer's commits not yet merged: reading the file alone would be wrong
    try:
        status, _, err = usage(capsys, "--ledger", str(ledger))
    finally:
        wal.unlink() if kept is None else wal.write_bytes(kept)
    assert status == 2 and "its writer's changes are still in ledger.sqlite3-wal" in err


def test_a_folder_given_as_the_ledger_is_said_to_be_one(tmp_path, capsys):
    status, _, err = usage(capsys, "--ledger", str(tmp_path))
    assert status == 2 and "is a folder" in err


def test_the_prompt_caches_reads_and_writes_show_when_it_did_anything(ledger, tmp_path, capsys):
    status, out, _ = usage(capsys, "--ledger", str(ledger))
    assert "from cache" not in out  # no caching in that ledger: the columns stay out of the way
    path = tmp_path / "cached.sqlite3"
    charter = " ".join(f"Clause {i}: the tide turns at {i % 24} o'clock." for i in range(200))
    asked = [{"role": "system", "content": charter, "cache_point": True}, {"role": "user", "content": "noon?"}]
    with gtl_nb.sim.running("anthropic") as url:
        client = gtl_nb.connect(
            providers={"anthropic": {"api_key": "sim-key", "base_url": url}},
            config={"ledger": {"path": str(path)}},
            environ={},
        )
        try:
            first = client.complete("anthropic:claude-sonnet-4-5", asked, max_tokens=20)
            second = client.complete("anthropic:claude-sonnet-4-5", asked, max_tokens=20)
        finally:
            client.close()
    status, out, _ = usage(capsys, "--ledger", str(path))
    header, row = out.splitlines()[:2]
    assert status == 0 and header.split()[-4:] == ["from", "cache", "to", "cache"]
    assert row.split()[-2:] == [f"{second.usage.cached_tokens_in:,}", f"{first.usage.cache_write_tokens_in:,}"]
    (group,) = map(json.loads, usage(capsys, "--ledger", str(path), "--json")[1].splitlines())
    assert group["cache_write_tokens_in"] == first.usage.cache_write_tokens_in > 1024


def test_a_ledger_an_older_release_wrote_is_read_as_it_is(ledger, tmp_path, capsys):
    older = tmp_path / "older.sqlite3"
    with sqlite3.connect(ledger) as source, sqlite3.connect(older) as copy:
        source.backup(copy)
        copy.execute("ALTER TABLE requests DROP COLUMN cache_write_tokens_in")  # before schema version 4
    status, out, _ = usage(capsys, "--ledger", str(older))
    assert status == 0 and out.splitlines()[-1].split()[:2] == ["total", "6"]
    with sqlite3.connect(older) as copy:  # read, never migrated
        assert "cache_write_tokens_in" not in {row[1] for row in copy.execute("PRAGMA table_info(requests)")}


def test_a_request_cancelled_mid_answer_without_usage_is_a_cost_unknown_not_a_free_one(tmp_path, capsys):
    """The provider bills what it generated before the cancel; with no usage reported the cost is
    unknown (marked), never $0. A request cancelled before its answer began cost nothing."""
    from gtl_nb.engine.ledger import Ledger

    path = tmp_path / "cancelled.sqlite3"
    with Ledger(str(path)) as ledger:
        for session, ttft in (("mid-answer", 120.0), ("queued", None)):
            row = ledger.start(session_id=session, user="u", model="gpt-4o-mini")
            ledger.finish(row, status="cancelled", error_code="CANCELLED", deployment="openai", ttft_ms=ttft)
    status, out, _ = usage(capsys, "--ledger", str(path))
    assert status == 0 and "$0*" in out
    assert "* 1 request(s) with no known cost" in out and "cancelled once the answer had begun" in out
    status, out, _ = usage(capsys, "--ledger", str(path), "--json")
    assert json.loads(out)["cost_unknown"] == 1


# -- by finish_reason (schema version 5) -------------------------------------------------------------------

REASONS = ("stop", "length", "tool_calls", "content_filter", "other")


def _reasons_ledger(path: Path) -> None:
    """Eight rows: every fourth an error (no reason), the others a reason each in turn."""
    from gtl_nb.engine.ledger import Ledger

    with Ledger(str(path)) as ledger:
        for n in range(8):
            row = ledger.start(session_id=f"s{n}", user="ada", model="m", now=1_700_000_000 + n)
            if n % 4 == 3:
                ledger.finish(row, status="error", error_code="OVERLOADED", cost=0.25)
            else:
                ledger.finish(row, status="ok", finish_reason=REASONS[n % len(REASONS)], tokens_out=n, cost=0.25)


def test_usage_groups_by_finish_reason(tmp_path, capsys):
    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.engine.ledger_cli import GROUPINGS, _usage_groups, group_rows

    path = tmp_path / "reasons.sqlite3"
    _reasons_ledger(path)
    status, out, _ = usage(capsys, "--ledger", str(path), "--by", "finish_reason", "--json")
    groups = {group["finish_reason"]: group for group in map(json.loads, out.splitlines())}
    assert status == 0 and {name: group["requests"] for name, group in groups.items()} == {
        "-": 2,  # the errors: no reason
        "stop": 2,
        "length": 2,
        "tool_calls": 1,
        "other": 1,
    }
    assert groups["-"]["errors"] == 2 and groups["length"]["errors"] == 0
    with Ledger(str(path)) as read:
        rows = read.rows()
    assert group_rows(rows, "finish_reason") == _usage_groups(path, GROUPINGS["finish_reason"], None)
    # a gateway of the release before sends rows without the key: one group of unknowns
    assert [group[:2] for group in group_rows([{"status": "ok"}] * 3, "finish_reason")] == [("-", 3)]
    status, out, _ = usage(capsys, "--ledger", str(path), "--by", "finish_reason")
    assert status == 0 and out.splitlines()[0].split()[:2] == ["finish_reason", "requests"]


def test_a_ledger_an_older_release_wrote_groups_by_finish_reason_as_unknown(tmp_path, capsys):
    path, older = tmp_path / "reasons.sqlite3", tmp_path / "older.sqlite3"
    _reasons_ledger(path)
    with sqlite3.connect(path) as source, sqlite3.connect(older) as copy:
        source.backup(copy)
        copy.execute("ALTER TABLE requests DROP COLUMN finish_reason")  # as schema version 4 left it
        copy.execute("PRAGMA user_version = 4")
    status, out, _ = usage(capsys, "--ledger", str(older), "--by", "finish_reason", "--json")
    (group,) = map(json.loads, out.splitlines())
    assert status == 0 and (group["finish_reason"], group["requests"], group["errors"]) == ("-", 8, 2)
    with sqlite3.connect(older) as copy:  # read, never migrated
        assert "finish_reason" not in {row[1] for row in copy.execute("PRAGMA table_info(requests)")}


def test_a_refused_request_that_named_no_model_shows_as_none_not_a_blank_row(tmp_path, capsys):
    """A gateway records a request refused for its model (none given, or no valid one) with the model
    ``""`` (``gateway.compat.intake.record_refused``): the table named its row with nothing at all."""
    from gtl_nb.engine.ledger import Ledger

    path = tmp_path / "refused.sqlite3"
    with Ledger(str(path)) as ledger:
        ledger.finish(ledger.start(session_id="ok", model="echo"), status="ok", deployment="echo")
        refused = ledger.start(session_id="refused", model="")
        ledger.finish(refused, status="error", error_code="INVALID_REQUEST")
        spaces = ledger.start(session_id="spaces", model="  ")  # a name of spaces: quoted, not blank either
        ledger.finish(spaces, status="error", error_code="MODEL_NOT_FOUND")
    status, out, _ = usage(capsys, "--ledger", str(path))
    header, *rows = out.splitlines()
    width = header.index("requests") - 2  # the group column's
    labels = [row[:width].rstrip() for row in rows if not row.startswith(("total", "*"))]  # the groups
    assert status == 0 and sorted(labels) == ["'  '", "(none)", "echo"]  # no row without a label
    _, out, _ = usage(capsys, "--ledger", str(path), "--json")  # the data as stored
    assert sorted(json.loads(line)["model"] for line in out.splitlines()) == ["", "  ", "echo"]


def test_control_characters_a_client_sent_are_shown_escaped_not_sent_to_the_terminal(tmp_path, capsys):
    """A request's model (bounded only by its length) or user is stored as sent; ``gtl usage`` printed it
    raw, so ESC sequences recoloured or cleared the operator's terminal and a newline forged a table line.
    The table shows them as escapes (``\\x1b``, ``\\n``); the ledger keeps what was sent."""
    from gtl_nb.engine.ledger import Ledger

    hostile = "gpt\x1b[2J\x1b[31m\nfake-model  999\r\x9b0m\u202e"
    path = tmp_path / "hostile.sqlite3"
    with Ledger(str(path)) as ledger:
        row = ledger.start(session_id="s\x1b]0;owned\x07", user="eve\x1b[8m", model=hostile)
        ledger.finish(row, status="ok", cost=0.5)
        stored = ledger.rows()[0]
    assert stored["model"] == hostile and stored["user"] == "eve\x1b[8m"  # the data as it came
    for by in ("model", "user"):
        status, out, _ = usage(capsys, "--ledger", str(path), "--by", by)
        assert status == 0
        assert not any(char in out for char in "\x1b\r\x9b\u202e\x07")
        assert len(out.splitlines()) == 3  # the header, the one group, the total: no forged line
    _, out, _ = usage(capsys, "--ledger", str(path), "--by", "model")
    assert r"gpt\x1b[2J\x1b[31m\nfake-model  999\r\x9b0m\u202e" in out
