"""The ``gtl gap`` command, driven through its handler with argv lists (and once as a module)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from datetime import datetime

import pytest

from gtl_nb.gap import from_json, from_markdown, parse_all, to_json, to_markdown, wrap_message
from gtl_nb.gap.cli import add_subcommands, load_messages, main


def run(argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_wrap_reads_stdin_and_prints_markdown_with_the_current_utc_time():
    before = datetime.now().astimezone()
    code, out, err = run(
        ["wrap", "--platform", "claude.ai", "--chat-id", "s1", "--thread", "t", "--model", "m", "--role", "user"],
        stdin="I think the system is slow.",
    )
    assert (code, err) == (0, "")
    wrapped = from_markdown(out)
    assert (wrapped.platform, wrapped.chat_id, wrapped.thread_id, wrapped.model, wrapped.role) == (
        "claude.ai", "s1", "t", "m", "user")  # fmt: skip
    assert wrapped.content == "I think the system is slow."
    assert wrapped.undefined == ("the_system",)
    assert wrapped.timestamp.endswith("Z")  # as %%gap writes it
    stamped = datetime.fromisoformat(wrapped.timestamp.replace("Z", "+00:00"))  # (Python 3.10 reads no Z)
    assert stamped.utcoffset().total_seconds() == 0
    assert abs((stamped - before).total_seconds()) < 60


def test_wrap_reads_a_file_and_prints_json(tmp_path):
    source = tmp_path / "note.txt"
    source.write_text("Use Redis.\n", encoding="utf-8")
    code, out, _err = run(
        ["wrap", str(source), "--platform", "chatgpt", "--chat-id", "c9", "--timestamp", "2024-01-01T00:00:00Z",
         "--parent", "c8", "--entity", "owner=ops team", "--to-json"]
    )  # fmt: skip
    assert code == 0
    wrapped = from_json(out)
    assert wrapped.content == "Use Redis.\n"
    assert wrapped.timestamp == "2024-01-01T00:00:00Z"
    assert wrapped.parent_messages == ("c8",)
    assert wrapped.entities["owner"].value == "ops team"
    assert "redis" in wrapped.entities


def test_wrap_without_chat_id_gets_a_fresh_one_and_no_detect_detects_nothing():
    code, out, _err = run(["wrap", "--platform", "p", "--no-detect", "--to-json"], stdin="The system.")
    wrapped = from_json(out)
    assert code == 0 and wrapped.chat_id.startswith("msg-") and wrapped.entities == {}


def test_wrap_rejects_a_bad_entity_argument():
    code, out, err = run(["wrap", "--platform", "p", "--entity", "novalue"], stdin="x")
    assert code == 1 and out == "" and "KEY=VALUE" in err


def test_transform_renders_for_the_target(tmp_path):
    wrapped = wrap_message("I fix my code.", "claude.ai", "m1", timestamp="2024-01-01T00:00:00Z")
    path = tmp_path / "msg.md"
    path.write_text(to_markdown(wrapped), encoding="utf-8")
    code, out, _err = run(["transform", str(path), "--to", "chatgpt"])
    assert code == 0
    assert out.startswith("# Context\n")
    assert out.endswith("\n\nThe AI assistant fixes the AI assistant's code.\n")


def test_transform_reads_json_too_and_separates_several_messages(tmp_path):
    lines = [to_json(wrap_message(f"msg {i}", "p", f"m{i}")) for i in range(2)]
    path = tmp_path / "msgs.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    code, out, _err = run(["transform", str(path), "--to", "generic"])
    assert code == 0 and out.count("Context from GAP-wrapped message") == 2 and "\n\n---\n\n" in out


def test_transform_unknown_platform_is_an_error(tmp_path):
    path = tmp_path / "msg.md"
    path.write_text(to_markdown(wrap_message("x", "p", "c")), encoding="utf-8")
    code, _out, err = run(["transform", str(path), "--to", "bard"])
    assert code == 1 and "claude.ai, chatgpt, gemini, copilot, perplexity, generic" in err


def test_parse_prints_json_lines_for_every_block():
    blocks = [wrap_message("one", "p", "a"), wrap_message("two\n[GAP:END]", "q", "b", role="user")]
    text = "intro\n" + "\n\nbetween\n\n".join(to_markdown(b) for b in blocks) + "\noutro"
    code, out, _err = run(["parse", "-"], stdin=text)
    assert code == 0
    assert [from_json(line) for line in out.splitlines()] == blocks


def test_parse_reports_malformed_input_with_its_line():
    code, out, err = run(["parse", "-"], stdin="ok\n[GAP:START]\nFrom: p | Thread: -\n")
    assert code == 1 and out == ""
    assert "gtl gap parse: error: line 2:" in err


def test_parse_of_a_file_without_gap_blocks_says_so_on_stderr_and_exits_1(tmp_path, capsys):
    from gtl_nb.cli import main as gtl_main

    path = tmp_path / "notes.md"
    path.write_text("# Notes\n\nplain markdown, [GAP:START] only inside a line\n", encoding="utf-8")
    assert gtl_main(["gap", "parse", str(path)]) == 1  # as grep does when nothing matches
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"gtl gap parse: no GAP blocks found in {path} (")
    assert err.count("\n") == 1 and "error" not in err  # a note: the file was read, and holds none
    code, out, err = run(["parse", "-"], stdin="")
    assert (code, out) == (1, "") and err.startswith("gtl gap parse: no GAP blocks found in standard input")


def test_parse_missing_file_is_an_error(tmp_path):
    code, _out, err = run(["parse", str(tmp_path / "absent.md")])
    assert code == 1 and "absent.md" in err


def conversation_text() -> str:
    first = wrap_message("The system uses PostgreSQL 14.", "claude.ai", "m1", thread_id="t")
    second = wrap_message("Is the API fast?", "chatgpt", "m2", thread_id="t", parent_messages=["m1"], role="user")
    return to_markdown(first) + "\n\n" + to_markdown(second)


def test_graph_prints_a_summary():
    code, out, _err = run(["graph", "-"], stdin=conversation_text())
    assert code == 0
    assert out.splitlines() == [
        "nodes: 8 (entity 3, message 2, platform 2, thread 1)",
        "edges: 9 (defined_in 1, in_thread 2, mentions 3, on_platform 2, reply_to 1)",
        "undefined entities: 2",
        "  the_api (thread t)",
        "  the_system (thread t)",
    ]


def test_graph_writes_node_link_json(tmp_path):
    jsonl = "\n".join(to_json(m) for m in parse_all(conversation_text()))
    out_path = tmp_path / "graph.json"
    code, out, _err = run(["graph", "-", "--out", str(out_path)], stdin=jsonl)
    assert code == 0 and out == f"wrote 8 nodes and 9 edges to {out_path}\n"
    data = json.loads(out_path.read_text(encoding="utf-8"))
    assert len(data["nodes"]) == 8 and len(data["edges"]) == 9


def test_graph_refuses_messages_without_ids():
    header = "From: p | Thread: -\nContext: user message from -\nEntities: none"
    block = f"[GAP:START]\n{header}\n[GAP:CONTENT]\nx\n[GAP:END]"
    code, _out, err = run(["graph", "-"], stdin=block)
    assert code == 1 and "no chat_id" in err


def test_load_messages_accepts_a_json_array_and_reports_bad_json_lines():
    messages = [wrap_message("a", "p", "x"), wrap_message("b", "p", "y")]
    array = "[" + ",".join(to_json(m) for m in messages) + "]"
    assert load_messages(array) == messages
    with pytest.raises(ValueError, match="line 2"):
        load_messages(to_json(messages[0]) + "\n{not json}\n")
    # the broken line may be the first: the next one says these are JSON lines, and line 1 is named
    broken_first = to_json(messages[0])[:-5] + "\n" + to_json(messages[1]) + "\n"
    with pytest.raises(ValueError, match="line 1: not valid JSON: Unterminated string"):
        load_messages(broken_first)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"a":' * 100_000, "[" + "1" * 5_000 + "]"],
    ids=["deep-array", "deep-object", "long-number"],
)
def test_transform_and_graph_report_hostile_json_as_an_error_line(text):
    # a file that looks like one JSON document is decoded within from_json's limits, not by json.loads alone
    for argv in (["transform", "-", "--to", "chatgpt"], ["graph", "-"]):
        code, _out, err = run(argv, stdin=text)
        assert code == 1 and err.startswith(f"gtl gap {argv[0]}: error: ") and "Traceback" not in err
        assert "nested deeper than 64" in err or "a number longer than" in err, err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{\n" + '  "a": [' * 100 + "1" + "]" * 100 + "\n}", "nested deeper than 64"),
        ('{\n  "gap_version": ' + "1" * 5_000 + "\n}", "a number longer than"),
        ('{\n  "gap_version": "0.1.0",\n  "message": {\n}', "not valid JSON"),
    ],
    ids=["deep", "long-number", "unclosed"],
)
def test_a_pretty_printed_document_is_reported_by_its_own_error(text, says):
    """An indented document spans lines, so it is not JSON lines: its error is its own, not the
    first line's ("Expecting property name", which sent the reader looking at line 1)."""
    with pytest.raises(ValueError, match=says):
        load_messages(text)
    code, _out, err = run(["graph", "-"], stdin=text)
    assert code == 1 and says in err and "Expecting property name" not in err, err


@pytest.mark.parametrize("kind", ["markdown", "json", "json-lines"])
def test_a_file_with_a_byte_order_mark_reads_like_one_without(tmp_path, kind):
    messages = [wrap_message("The system is slow", "claude.ai", "c1"), wrap_message("x", "p", "c2")]
    text = {
        "markdown": "\n".join(to_markdown(m) for m in messages),
        "json": "[" + ",".join(to_json(m) for m in messages) + "]",
        "json-lines": "\n".join(to_json(m) for m in messages),
    }[kind]
    path = tmp_path / "messages.txt"
    path.write_text(text, encoding="utf-8-sig")  # as Notepad saves it
    code, out, err = run(["transform", str(path), "--to", "generic"])
    assert (code, err) == (0, "") and out.count("Context from GAP-wrapped message") == 2


def test_add_subcommands_plugs_into_a_parent_parser():
    parser = argparse.ArgumentParser(prog="gtl")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["gap", "parse", "-"])
    out = io.StringIO()
    assert args.handler(args, stdin=io.StringIO(to_markdown(wrap_message("x", "p", "c"))), stdout=out) == 0
    assert from_json(out.getvalue()).content == "x"


def test_gap_without_a_subcommand_prints_help():
    code, _out, err = run([])
    assert code == 2 and "wrap" in err and "transform" in err


def test_module_entry_point_runs(tmp_path):
    path = tmp_path / "msg.md"
    path.write_text(to_markdown(wrap_message("I agree.", "claude.ai", "m1")), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "gtl_nb.gap.cli", "transform", str(path), "--to", "copilot"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.startswith("// Context from GAP-wrapped message\n")
    assert result.stdout.endswith("\n\nThe AI assistant agrees.\n")


def test_the_gtl_command_dispatches_to_gap(tmp_path, capsys):
    from gtl_nb.cli import main as gtl_main

    path = tmp_path / "msg.md"
    path.write_text(to_markdown(wrap_message("I agree.", "claude.ai", "m1")), encoding="utf-8")
    assert gtl_main(["gap", "parse", str(path)]) == 0
    assert from_json(capsys.readouterr().out).content == "I agree."
