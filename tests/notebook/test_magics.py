"""``%%gtl`` and ``%gtl`` on the offline ``echo`` model, in an in-process IPython shell (``conftest``)."""

from __future__ import annotations

import os
import re
import signal
import threading
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import gtl_nb
from gtl_nb.analysis import Table
from gtl_nb.completion import Completion
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.local import start_gateway
from gtl_nb.notebook import load_ipython_extension, unload_ipython_extension, widgets
from gtl_nb.notebook.errors import GTLCellError
from gtl_nb.protocol import Token

from .conftest import loaded_shell, mistake, run, session_of


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """A shell with the extension freshly loaded, its own config file and ledger, no provider keys."""
    yield from loaded_shell(tmp_path, monkeypatch)


# -- loading ------------------------------------------------------------------------------------


def test_load_ext_registers_both_magics_and_unload_removes_them(ip):
    unload_ipython_extension(ip)
    ip.extension_manager.loaded.discard("gtl_nb")
    ip.run_line_magic("load_ext", "gtl_nb")
    assert "gtl" in ip.magics_manager.magics["cell"] and "gtl" in ip.magics_manager.magics["line"]
    assert "gap" in ip.magics_manager.magics["cell"] and "gap" in ip.magics_manager.magics["line"]
    ip.run_line_magic("unload_ext", "gtl_nb")
    assert "gtl" not in ip.magics_manager.magics["cell"]
    load_ipython_extension(ip)


def test_help_lists_subcommands_and_options(ip):
    _, text = run(ip, "%gtl")
    for sub in ("models", "usage", "config", "connect", "history", "reset"):
        assert f"%gtl {sub}" in text
    _, text = run(ip, "%%gtl --help\nignored")
    options = (
        "--system --temperature --max-tokens --no-stream --format --out --no-cache --endpoint --providers "
        "--chat --tools --max-steps --tools-dry-run --compare --context --cache-prompt --cache-ttl"
    )
    for option in options.split():
        assert option in text


OPTIONS = ("--system", "--temperature", "--compare", "--context", "--tools-dry-run")


@pytest.mark.parametrize("source", ["%%gtl --help", "%%gtl --help\n\n", "%%gtl gpt-4o -h", "%gtl help"])
def test_help_alone_in_a_cell_and_gtl_help_show_the_cell_options(ip, source):
    result, text = run(ip, source)
    assert result.success, text
    assert all(option in text for option in OPTIONS), text
    assert "cell body is empty" not in text


def test_a_gtl_cell_without_a_prompt_says_how_to_write_one(ip):
    assert "write the prompt in the cell" in mistake(ip, "%%gtl echo")


# -- asking -------------------------------------------------------------------------------------


def test_a_cell_goes_to_echo_by_default_and_the_footer_says_offline(ip):
    result, text = run(ip, "%%gtl\nWhat is GTL?")
    assert result.success, text
    answer = ip.user_ns["_gtl"]
    assert isinstance(answer, Completion)
    assert answer.text.startswith('You said: "What is GTL?"')
    assert answer.provider == "echo"
    assert "echo (offline)" in text
    assert answer.text in text


def test_the_model_may_also_be_given_as_an_option(ip):
    # `gtl complete` and `%gap` spell it --model: the cell takes that spelling too
    result, text = run(ip, "%%gtl --model echo\nWhat is GTL?")
    assert result.success and ip.user_ns["_gtl"].provider == "echo", text
    assert "give the model once" in mistake(ip, "%%gtl echo --model echo\nWhat is GTL?")


def test_the_default_model_comes_from_config_then_env_then_echo(ip, monkeypatch):
    calls = []
    client = session_of(ip).client()
    original = client.stream

    def spy(model, *args, **kwargs):
        calls.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(client, "stream", spy)
    run(ip, "%%gtl\nhi")
    monkeypatch.setenv("GTL_NB_MODEL", "echo:echo")
    run(ip, "%%gtl\nhi")
    run(ip, "%gtl config model=echo:echo-config")
    run(ip, "%%gtl\nhi")
    assert calls == ["echo", "echo:echo", "echo:echo-config"]
    _, text = run(ip, "%gtl config")
    assert "echo:echo-config" in text and "%gtl config model" in text


def test_the_stream_view_gets_the_events_live_and_the_final_completion(ip, monkeypatch):
    seen = []

    class Spy(widgets.StreamView):
        def on_event(self, event):
            seen.append(("event", event))
            super().on_event(event)

        def finish(self, result):
            seen.append(("finish", result))
            super().finish(result)

    monkeypatch.setattr(widgets, "StreamView", Spy)
    result, _ = run(ip, "%%gtl echo\nStream this please")
    assert result.success
    tokens = [e for kind, e in seen if kind == "event" and isinstance(e, Token)]
    assert len(tokens) > 3
    assert seen[-1] == ("finish", ip.user_ns["_gtl"])
    assert "".join(t.text for t in tokens) == ip.user_ns["_gtl"].text


def test_no_stream_displays_the_completion_itself(ip, monkeypatch):
    monkeypatch.setattr(widgets, "StreamView", None)  # must not be used
    result, text = run(ip, "%%gtl --no-stream --out answer\nNo streaming")
    assert result.success, text
    answer = ip.user_ns["answer"]
    assert answer is ip.user_ns["_gtl"]
    assert answer._repr_markdown_() in text


def test_stream_off_in_config_is_the_default_and_the_option_wins(ip, monkeypatch):
    run(ip, "%gtl config stream=off")
    monkeypatch.setattr(widgets, "StreamView", None)
    result, _ = run(ip, "%%gtl\nquiet")
    assert result.success
    monkeypatch.undo()
    result, _ = run(ip, "%%gtl --stream\nloud")
    assert result.success


def test_variables_are_inserted_and_other_braces_kept(ip):
    ip.user_ns["x"] = {"city": "Oslo"}
    result, text = run(ip, '%%gtl\nWeather in {x[city]}? Reply as {"temp": 1} with {{x}}')
    assert result.success, text
    assert ip.user_ns["_gtl"].text.startswith('You said: "Weather in Oslo? Reply as {"temp": 1} with {x}"')


def test_an_unknown_variable_is_a_usage_error_naming_it(ip):
    message = mistake(ip, "%%gtl\nTell me about {topic}")
    assert "'topic'" in message and "{{" in message and "}}" in message


def test_shell_quoting_keeps_a_quoted_system_prompt_whole(ip, monkeypatch):
    client = session_of(ip).client()
    sent = {}
    original = client.stream

    def spy(model, messages, **kwargs):
        sent.update(kwargs)
        return original(model, messages, **kwargs)

    monkeypatch.setattr(client, "stream", spy)
    result, text = run(ip, "%%gtl echo --system 'Be brief, and {x}' --temperature 0.2 --max-tokens 5\nhi")
    assert not result.success  # {x} is undefined: the system prompt is a template too
    ip.user_ns["x"] = "polite"
    result, text = run(ip, "%%gtl echo --system 'Be brief, and {x}' --temperature 0.2 --max-tokens 5 --no-cache\nhi")
    assert result.success, text
    assert sent["system"] == "Be brief, and polite"
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 5 and sent["cache"] is False
    assert ip.user_ns["_gtl"].truncated


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("%%gtl --temperature hot", "--temperature"),
        ("%%gtl --max-tokens 0", "--max-tokens"),
        ("%%gtl --format yaml", "yaml"),
        ("%%gtl --bogus", "--bogus"),
        ("%%gtl gpt-4o claude-haiku-4-5", "at most one MODEL"),
        ("%%gtl --out 1abc", "1abc"),
        ('%%gtl --system "unclosed', "quote"),
        ("%%gtl echo --compare echo", "after --compare"),
        ("%%gtl --compare echo echo:echo --tools f", "--tools"),
        ("%%gtl --tools-dry-run", "--tools"),
        ("%%gtl nosuchmodel", "unknown model 'nosuchmodel'"),
        ("%%gtl nosuchmodel --no-stream", "unknown model 'nosuchmodel'"),
        ("%%gtl --compare", "--compare"),
        ("%%gtl gpt-4o-mini", "OPENAI_API_KEY"),
    ],
)
def test_user_mistakes_are_one_line_with_the_fix(ip, line, fragment):
    assert fragment in mistake(ip, f"{line}\nhello")


def test_an_empty_cell_is_a_usage_error(ip):
    assert "empty" in mistake(ip, "%%gtl echo\n   \n")


def test_an_unknown_model_points_at_the_models_subcommand(ip):
    assert "%gtl models" in mistake(ip, "%%gtl echoo\nhi")


# -- formats ------------------------------------------------------------------------------------


def test_format_code_inserts_a_new_cell_with_the_code(ip, monkeypatch):
    inserted = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: inserted.append((text, replace)))
    result, text = run(ip, "%%gtl --format code\n```python\nprint('hi')\n```")  # echo quotes the fenced code
    assert result.success, text
    assert inserted == [("print('hi')", False)]
    assert "```python" in text and "no cell inserted" not in text


def test_format_code_on_a_prose_answer_inserts_nothing_and_says_so(ip, monkeypatch):
    inserted = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: inserted.append((text, replace)))
    result, text = run(ip, "%%gtl --format code --no-stream\nA Python function that reverses a string")
    assert result.success, text
    assert inserted == []  # echo's answer is a sentence: as a cell it would be a SyntaxError
    assert "the answer holds no code block (nor Python as written); no cell inserted" in text


@pytest.mark.parametrize(
    ("answer", "inserted"),
    [
        ("Here it is:\n```sql\nSELECT 1;\n```\nDone.", "SELECT 1;"),  # a fence: its body, any language
        ("def rev(s):\n    return s[::-1]\n", "def rev(s):\n    return s[::-1]"),  # unfenced, Python as written
        ("Reverse it with a slice: s[::-1].", None),  # a sentence
        ("```python\n```", None),  # an empty block
        ("Yes", None),  # one word or one value parses as Python, and is an answer, not code
        ("Paris\n", None),
        ("42", None),
        ("-1", None),
        ("print(s[::-1])", "print(s[::-1])"),  # one call is code
        ("-" * 200_000 + "1", None),  # nested past the parser's limits: no code, and no MemoryError
    ],
)
def test_code_to_insert_takes_code_and_nothing_else(answer, inserted):
    from gtl_nb.notebook.formats import code_to_insert

    assert code_to_insert(answer) == inserted


def test_format_json_and_text_show_the_answer_in_a_fenced_block(ip):
    result, text = run(ip, "%%gtl --format text --no-stream\nplain please")
    assert result.success
    assert "```text\nYou said" in text
    result, text = run(ip, "%%gtl --format json\nnot json")
    assert result.success
    assert "not valid JSON" in text
    assert isinstance(ip.user_ns["_gtl"], Completion) and not ip.user_ns["_gtl"].text.startswith("```")


def test_schema_asks_for_structured_output_of_a_notebook_class_and_shows_json(ip):
    ip.run_cell("from pydantic import BaseModel\nclass City(BaseModel):\n    name: str\n    population: int")
    result, bundles = shown_bundles(ip, "%%gtl --schema City --no-stream\nDescribe a harbour town")
    assert result.success
    answer = ip.user_ns["_gtl"]
    city = ip.user_ns["City"].model_validate_json(answer.text)  # the answer is JSON of the class
    assert isinstance(city.population, int)
    (bundle,) = bundles
    assert bundle["text/markdown"].startswith("```json\n{")
    sent = session_of(ip).client().request("echo", "x", response_format=ip.user_ns["City"]).response_format
    assert sent["json_schema"]["name"] == "City" and sent["json_schema"]["strict"] is True


def test_schema_mistakes_are_one_line_each(ip):
    assert "no variable 'Nowhere'" in mistake(ip, "%%gtl --schema Nowhere\nhi")
    assert "drop --format code" in mistake(ip, "%%gtl --schema Nowhere --format code\nhi")
    ip.user_ns["bare"] = {"type": "object", "properties": {"name": {"type": "string"}}}
    assert mistake(ip, "%%gtl --schema bare\nhi").startswith("--schema bare: response_format is {")
    assert "wrap it so" in mistake(ip, "%%gtl --compare echo echo --schema bare\nhi")  # before anything is sent


def shown_bundles(shell, source: str) -> tuple[Any, list[dict[str, str]]]:
    """Run a cell; its result and the outputs it displayed that have a markdown form."""
    with capture_output() as captured:
        result = shell.run_cell(source, store_history=True)
    return result, [dict(out.data) for out in captured.outputs if "text/markdown" in out.data]


@pytest.mark.parametrize("fmt", ["json", "code"])
def test_format_json_and_code_are_fenced_in_markdown_only_and_plain_in_text(ip, fmt, monkeypatch):
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: None)
    result, bundles = shown_bundles(ip, f'%%gtl --format {fmt} --no-stream\n```python\n{{"a": 1}}\n```')
    assert result.success
    (bundle,) = bundles
    plain = bundle["text/plain"]
    assert "```" not in plain and "-- " in plain, plain  # the body as written (or pretty-printed), the footer
    assert f"```{'json' if fmt == 'json' else 'python'}\n" in bundle["text/markdown"]
    assert ip.user_ns["_gtl"].text.startswith("You said")  # the answer itself, never the shown form


@pytest.mark.parametrize("stream", ["", " --no-stream"])
def test_format_text_is_fenced_in_markdown_only_and_plain_in_text(ip, stream):
    result, bundles = shown_bundles(ip, f"%%gtl --format text{stream}\nkeep *this* plain, $5")
    assert result.success
    (bundle,) = bundles
    answer = ip.user_ns["_gtl"].text
    assert "```text\n" + answer in bundle["text/markdown"]  # no markdown rendering: a preformatted block
    plain = bundle["text/plain"]
    assert "```" not in plain and answer in plain and "-- " in plain, plain  # the answer as written, and the footer


def test_format_json_pretty_prints_valid_json(ip, monkeypatch):
    from gtl_nb.notebook import magics

    completion = Completion(text='```json\n{"a": [1, 2]}\n```', session_id="s", provider="p", model="m",
                            finish_reason="stop")  # fmt: skip
    shown = magics._shown(completion, "json")
    assert shown.text == '{\n  "a": [\n    1,\n    2\n  ]\n}'  # the plain form: the JSON, no fence
    assert shown.text_markdown() == '```json\n{\n  "a": [\n    1,\n    2\n  ]\n}\n```'
    assert magics._code_of("Here:\n```js\nlet a = 1;\n```\nDone") == "let a = 1;"


# -- conversation mode ----------------------------------------------------------------------------


def test_chat_mode_keeps_the_history_across_cells_and_reset_clears_it(ip):
    run(ip, "%%gtl --chat\nfirst question")
    run(ip, "%%gtl --chat\nsecond question")
    session = session_of(ip)
    assert [m.role for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[2].content == "second question"
    assert session.history[3].content == ip.user_ns["_gtl"].text
    _, text = run(ip, "%gtl history")
    assert "first question" in text and "second question" in text
    _, text = run(ip, "%gtl reset")
    assert "4 messages" in text
    assert session.history == []
    _, text = run(ip, "%gtl history")
    assert "no conversation" in text


def test_chat_mode_from_config_and_cells_outside_it_leave_the_history_alone(ip):
    run(ip, "%%gtl\nnot kept")
    session = session_of(ip)
    assert session.history == []
    run(ip, "%gtl config chat=on")
    run(ip, "%%gtl\nkept")
    run(ip, "%%gtl --no-chat\nnot kept either")
    assert [m.content for m in session.history if m.role == "user"] == ["kept"]


def test_chat_history_is_sent_with_the_next_prompt(ip, monkeypatch):
    client = session_of(ip).client()
    sent = []
    original = client.stream
    monkeypatch.setattr(client, "stream", lambda m, msgs, **kw: sent.append(list(msgs)) or original(m, msgs, **kw))
    run(ip, "%gtl config chat=on")
    run(ip, "%%gtl\none")
    run(ip, "%%gtl\ntwo")
    assert [m.content for m in sent[1]][:1] == ["one"]
    assert [m.role for m in sent[1]] == ["user", "assistant", "user"]


def test_cache_prompt_marks_the_system_prompt_and_the_newest_turn(ip, monkeypatch):
    client = session_of(ip).client()
    sent: list[tuple[list[Any], dict[str, Any]]] = []
    original = client.stream
    monkeypatch.setattr(
        client, "stream", lambda m, msgs, **kw: sent.append((list(msgs), kw)) or original(m, msgs, **kw)
    )
    ip.user_ns["rules"] = "Answer in French."
    run(ip, "%%gtl --chat --cache-prompt --system {rules}\none")
    run(ip, "%%gtl --chat --cache-prompt --system {rules}\ntwo")
    first, second = sent
    assert [(m.role, m.cache_point) for m in first[0]] == [("system", True), ("user", True)]
    assert first[1]["system"] is None  # sent as the marked message instead
    assert [(m.role, m.cache_point) for m in second[0]] == [
        ("system", True),
        ("user", False),  # the conversation keeps no marks: each cell marks its own newest turn
        ("assistant", False),
        ("user", True),
    ]
    run(ip, "%%gtl --system {rules}\nthree")
    assert not any(m.cache_point for m in sent[-1][0]) and sent[-1][1]["system"] == "Answer in French."


def test_cache_prompt_against_anthropic_reads_the_document_the_second_time(ip, monkeypatch):
    from gtl_nb import sim

    with sim.running("anthropic") as url:
        monkeypatch.setenv("SIM_ANTHROPIC_KEY", "sim-key")
        run(ip, f"%gtl providers claude type=anthropic base_url={url} api_key_env=SIM_ANTHROPIC_KEY")
        ip.user_ns["charter"] = " ".join(f"Clause {i}: the tide turns at {i % 24} o'clock." for i in range(200))
        _, first = run(
            ip, "%%gtl claude:claude-sonnet-4-5 --cache-prompt --system {charter}\nWhich clause speaks of noon?"
        )
        _, second = run(ip, "%%gtl claude:claude-sonnet-4-5 --cache-prompt --system {charter}\nAnd of midnight?")
    assert "to prompt cache" in first and "from prompt cache" in second


def test_cache_ttl_keeps_the_document_an_hour_and_prices_its_write_so(ip, monkeypatch):
    from gtl_nb import sim

    with sim.running("anthropic") as url:
        monkeypatch.setenv("SIM_ANTHROPIC_KEY", "sim-key")
        run(ip, f"%gtl providers claude type=anthropic base_url={url} api_key_env=SIM_ANTHROPIC_KEY")
        ip.user_ns["charter"] = " ".join(f"Clause {i}: the bells ring at {i % 24} o'clock." for i in range(200))
        _, first = run(ip, "%%gtl claude:claude-sonnet-4-5 --cache-ttl 1h --system {charter}\nWhich clause is noon?")
        written = ip.user_ns["_gtl"]
        _, second = run(ip, "%%gtl claude:claude-sonnet-4-5 --cache-ttl 1h --system {charter}\nAnd midnight?")
    usage = written.usage
    assert usage.cache_write_1h_tokens_in == usage.cache_write_tokens_in > 1024  # system prompt and turn: an hour
    assert "to prompt cache for 1h" in first and "from prompt cache" in second
    fresh = usage.tokens_in - usage.cache_write_tokens_in
    # Sonnet 4.5: $3 per million fresh, $6 per million written for an hour, $15 per million out
    expected = (fresh * 0.003 + usage.cache_write_tokens_in * 0.006 + usage.tokens_out * 0.015) / 1000
    assert written.cost == pytest.approx(expected)
    assert "--cache-ttl" in mistake(ip, "%%gtl --cache-ttl 2h\nhi")


# -- subcommands ----------------------------------------------------------------------------------


def test_models_lists_what_the_notebook_can_use(ip):
    frame = ip.run_line_magic("gtl", "models")
    assert list(frame.columns)[:4] == ["deployment", "type", "model", "offline"]
    assert frame.to_dict("records")[0]["model"] == "echo"


def test_usage_of_a_ledger_with_no_request_yet_says_so(ip):
    """A new user's first ``%gtl usage``: an empty table alone (``Empty DataFrame``) read as a failure."""
    result, said = run(ip, "%gtl usage")
    assert result.success and result.result.empty
    assert "no requests recorded yet" in said, said
    run(ip, "%%gtl\none")
    assert "no requests recorded" not in run(ip, "%gtl usage")[1]


def test_usage_tables_come_from_the_ledger(ip):
    run(ip, "%%gtl\none")
    run(ip, "%%gtl\ntwo")
    groupings = ("provider", "deployment", "model", "day", "hour", "user", "status", "provider_type", "error_code")
    for by in (*groupings, "finish_reason"):
        frame = ip.run_line_magic("gtl", f"usage --by {by}")
        assert int(frame["requests"].sum()) == 2, by
    by_reason = ip.run_line_magic("gtl", "usage --by finish_reason")
    assert list(by_reason["finish_reason"]) == ["stop"]  # why both echo answers ended
    # deployment (gtl usage's and the ledger's name for what this calls provider) groups alike
    # — the same table, its unrouted requests labelled alike (usage_table's by="deployment" differs)
    by_deployment = ip.run_line_magic("gtl", "usage --by deployment")
    assert by_deployment.equals(ip.run_line_magic("gtl", "usage"))
    assert list(by_deployment["provider"]) == ["echo"]
    assert "--by" in mistake(ip, "%gtl usage --by week")
    # which ledger: the machine's file holds every kernel's and run's rows, not this notebook's alone
    _, said = run(ip, "%gtl usage")
    assert re.search(r"usage from the ledger \S+ledger\.sqlite3 \(every run that wrote it", said), said
    assert "--days N for recent ones" in said and "--days N" not in run(ip, "%gtl usage --days 1")[1]


def test_usage_since_and_days_narrow_the_table_as_gtl_usage_and_client_usage_do(ip):
    run(ip, "%%gtl\none")
    run(ip, "%%gtl\ntwo")
    for window in ("--days 1", "--since 2020-01-01", "--since 2020-01-01T00:00:00Z", "--since 1577836800"):
        assert int(ip.run_line_magic("gtl", f"usage {window}")["requests"].sum()) == 2, window
    for window, said in (("--days 1e-9", "in the last 1e-09 day(s)"), ("--since 2999-01-01", "since 2999-01-01")):
        result, text = run(ip, f"%gtl usage --by model {window}")
        assert result.success and result.result.empty and f"no requests recorded {said}" in text
    assert "--days must be more than 0, got 0" in mistake(ip, "%gtl usage --days 0")
    for days in ("inf", "1e400", "36500"):  # before any row could be written: every row, as meant
        assert int(ip.run_line_magic("gtl", f"usage --days {days}")["requests"].sum()) == 2, days
    for when in ("yesterday", "2026-01-01T00:00:00"):  # a time without its offset is ambiguous
        assert "--since: expected a day (2026-12-01, from midnight UTC)" in mistake(ip, f"%gtl usage --since {when}")
    assert "not allowed with argument --days" in mistake(ip, "%gtl usage --days 1 --since 2020-01-01")


def test_history_and_reset_refuse_words_they_would_ignore(ip):
    for command in ("history extra", "reset 5"):
        assert "takes no arguments" in mistake(ip, f"%gtl {command}")


def test_out_refuses_pythons_own_names(ip):
    # `--out __builtins__` was taken, and every later cell broke (len, print: "not subscriptable")
    assert "one of Python's own names" in mistake(ip, "%%gtl --out __builtins__\nhi")
    assert "one of Python's own names" in mistake(ip, "%%gap --out __name__\nhi")
    assert len([1, 2]) == 2 and run(ip, "x = len([1, 2])")[0].success


def test_config_shows_and_sets_and_refuses_unknown_settings(ip):
    _, text = run(ip, "%gtl config chat=on stream=off")
    assert "chat      on" in text and "stream    off" in text
    assert "unknown setting 'colour'" in mistake(ip, "%gtl config colour=blue")
    for key in ("chat", "stream"):  # the setting that was mistyped is named
        assert f"%gtl config: {key}= takes on or off, got 'maybe'" in mistake(ip, f"%gtl config {key}=maybe")
    assert "key=value" in mistake(ip, "%gtl config chat")


def test_config_file_switches_the_configuration_and_a_bad_file_is_one_line(ip, tmp_path):
    good = tmp_path / "team.toml"
    good.write_text('[providers.local]\ntype = "echo"\n[ledger]\nenabled = false\n')
    _, text = run(ip, f"%gtl config file={good}")
    assert str(good) in text and "local (echo" in text
    assert "ledger is off" in mistake(ip, "%gtl usage")
    bad = tmp_path / "bad.toml"
    bad.write_text("[providers.openai]\napi_kye = 1\n")
    assert "api_kye" in mistake(ip, f"%gtl config file={bad}")
    assert "local (echo" in run(ip, "%gtl config")[1]  # the good file is still in use


def test_configuration_mistakes_name_the_magic_the_user_typed(ip, tmp_path):
    # the engine words them for Python (config=, the keyword arguments): the notebook user typed neither
    missing = mistake(ip, f"%gtl config file={tmp_path / 'nope.toml'}")
    assert "does not exist" in missing and "(named by `%gtl config file=`)" in missing and "config=)" not in missing
    typo = mistake(ip, "%gtl providers openai apikey=X")
    assert "unknown key 'apikey' in `%gtl providers openai`" in typo and "did you mean 'api_key'" in typo
    assert "keyword arguments" not in typo
    wrong = mistake(ip, "%gtl providers local type=echo weight=heavy")
    assert wrong.startswith("`%gtl providers local`: weight must be") and "keyword arguments" not in wrong
    # shell-like splitting takes the quotes of options={"pace":0.2}: the value is no longer JSON
    unquoted = mistake(ip, '%gtl providers local type=echo options={"pace":0.2}')
    assert "is not JSON; quote the whole value" in unquoted and "options='{\"pace\": 0.2}'" in unquoted
    # a header's value may be a key: a pasted one that is not JSON is not quoted back
    pasted = mistake(ip, '%gtl providers local type=echo headers={"X-Team":"canary-7f3a"}')
    assert "headers is not JSON" in pasted and "canary-7f3a" not in pasted
    for empty in ("models=,,", "models=,"):  # a list of nothing: one line too, never argparse's traceback
        assert "expected a comma-separated list" in mistake(ip, f"%gtl providers local type=echo {empty}")


def test_a_compare_column_gives_the_notebook_advice_as_the_single_model_error_does(ip):
    _, text = run(ip, "%%gtl --compare echo ehco\nhi")
    assert "did you mean 'echo'? (`%gtl models` lists what is available)" in text
    assert "(`gtl models`" not in text  # the terminal's command, not the notebook's


def test_unknown_subcommand_is_a_usage_error(ip):
    assert "%%gtl" in mistake(ip, "%gtl tell me a joke")
    assert "did you mean" not in mistake(ip, "%gtl tell me a joke")


def test_a_misspelt_subcommand_or_choice_is_told_the_one_meant(ip):
    assert "unknown %gtl subcommand 'modles'; did you mean 'models'?" in mistake(ip, "%gtl modles")
    assert "invalid choice: 'modle'" in mistake(ip, "%gtl usage --by modle")
    assert "; did you mean 'model'?" in mistake(ip, "%gtl usage --by modle")
    assert "unknown %gap subcommand 'entites'; did you mean 'entities'?" in mistake(ip, "%gap entites")
    typo = mistake(ip, "%%gtl echo --temprature 0.5 --max_tokens=5\nhi")
    assert "--temprature: did you mean --temperature?" in typo and "--max_tokens: did you mean --max-tokens?" in typo
    assert "did you mean" not in mistake(ip, "%%gtl echo --zzz\nhi")  # nothing close: nothing guessed


# -- tokens and connect -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["%%gtl --token sk-123\nhi", "%%gtl --token=sk-123\nhi",
                                    "%gtl connect embedded:// --token sk-123"])  # fmt: skip
def test_a_literal_token_is_refused_with_a_reason(ip, source):
    message = mistake(ip, source)
    assert "refusing --token" in message and "saved in the notebook" in message
    assert "sk-123" not in message


def test_connect_to_a_network_url_is_one_clean_line(ip):
    message = mistake(ip, "%gtl connect ws://127.0.0.1:1")  # no gateway listens there
    assert "gateway" in message and "127.0.0.1:1" in message
    assert "embedded://" in run(ip, "%gtl config")[1]  # still connected as before


def test_tokens_come_from_the_environment_or_a_prompt_and_stay_out_of_the_notebook(ip, monkeypatch):
    seen = []
    real_connect = gtl_nb.connect

    def spy(endpoint="embedded://", token=None, **kwargs):  # the gateway "connected" to is the engine here
        seen.append((endpoint, token))
        return real_connect(ledger=False)

    gateway = "ws://127.0.0.1:9"
    monkeypatch.setattr(gtl_nb, "connect", spy)
    monkeypatch.setenv("GTL_TOKEN", "from-gtl-token")
    run(ip, f"%gtl connect {gateway}")
    monkeypatch.setenv("TEAM_TOKEN", "from-team-var")
    _, text1 = run(ip, f"%gtl connect {gateway} --token-env TEAM_TOKEN")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "from-prompt")
    _, text2 = run(ip, f"%gtl connect {gateway} --ask-token")
    result, _ = run(ip, "%gtl connect embedded://")  # the engine in the kernel is given no token
    assert result.success
    assert seen == [
        (gateway, "from-gtl-token"),
        (gateway, "from-team-var"),
        (gateway, "from-prompt"),
        ("embedded://", None),
    ]
    values = [repr(v) for v in ip.user_ns.values() if isinstance(v, str)]
    assert not any("from-" in v for v in values)
    assert "from-" not in text1 + text2
    refused = mistake(ip, "%gtl connect embedded:// --token-env NOPE_VAR")
    assert "NOPE_VAR" in refused and "--ask-token" in refused and "stays on" in refused


@pytest.mark.parametrize(
    "pasted", ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJDQU5BUlkifQ.MAGICCANARYSIG0123456789", "magiccanary_plain_token_12345"]
)
def test_a_token_pasted_for_its_variables_name_is_not_quoted(ip, pasted):
    refused = mistake(ip, f"%gtl connect embedded:// --token-env {pasted}")
    assert "--token-env names no variable" in refused and "--ask-token" in refused and "stays on" in refused
    assert "CANARY" not in refused.upper()


def test_a_connect_that_fails_says_where_the_notebook_stays(ip):
    refused = mistake(ip, "%gtl connect ws://127.0.0.1:1")  # nothing listens on port 1
    assert "cannot reach" in refused and "stays on embedded://" in refused
    assert "stays on embedded://" in mistake(ip, "%gtl connect nosuch://x")
    _, text = run(ip, "%gtl config")
    assert "embedded://" in text


def test_providers_are_configured_with_settings_never_with_literal_keys(ip):
    assert "api_key_env" in mistake(ip, "%gtl providers openai api_key=sk-123")
    assert "api_kye" in mistake(ip, "%gtl providers openai api_kye=X")
    _, text = run(ip, "%gtl providers local type=echo models=echo-a,echo-b")
    assert "local" in text
    frame = ip.run_line_magic("gtl", "models")
    assert "local" in set(frame["deployment"])
    run(ip, "%gtl providers local --remove")
    assert "local" not in set(ip.run_line_magic("gtl", "models")["deployment"])


def test_adding_a_deployment_keeps_those_the_environment_gave(ip, monkeypatch):
    """``%gtl providers`` adds a deployment: the ones ``OPENAI_API_KEY`` and friends imply stay beside it
    (the engine, given a providers list, would otherwise take it as the whole list)."""
    from gtl_nb import sim

    with sim.running("openai") as url:
        monkeypatch.setenv("OPENAI_API_KEY", "sim-key")
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        before = set(ip.run_line_magic("gtl", "models")["deployment"])
        assert "openai" in before
        _, text = run(ip, "%gtl providers local type=echo models=echo-a")
        assert "openai" in text and "local" in text
        _, answer = run(ip, "%%gtl openai:gpt-4o-mini\nstill here?")
        assert "openai" in answer
        run(ip, "%gtl providers local --remove")
        assert set(ip.run_line_magic("gtl", "models")["deployment"]) == before
        with sim.running("openai") as mine:  # a deployment of the same type: how the user wants openai reached
            monkeypatch.setenv("MY_KEY", "sim-key")
            _, text = run(ip, f"%gtl providers mine type=openai base_url={mine} api_key_env=MY_KEY")
            assert "mine" in text and "openai," not in text
            _, answer = run(ip, "%%gtl gpt-4o-mini\nwhich account?")
            assert "mine" in answer


def test_the_magic_line_gets_the_same_substitution_word_by_word(ip, monkeypatch):
    ip.user_ns["rules"] = "Be brief, and polite."
    ip.user_ns["deployment"] = {"name": "local"}
    client = session_of(ip).client()
    sent = {}
    original = client.stream
    monkeypatch.setattr(client, "stream", lambda m, msgs, **kw: sent.update(kw) or original(m, msgs, **kw))
    result, text = run(ip, "%%gtl echo --system {rules}\nhi")
    assert result.success, text
    assert sent["system"] == "Be brief, and polite."
    _, text = run(ip, "%gtl providers {deployment[name]} type=echo")
    assert "local" in text
    assert "'nope'" in mistake(ip, "%%gtl {nope}\nhi")
    assert "refusing --token" in mistake(ip, "%%gtl {rules} --token {rules}\nhi")


def test_a_dry_run_answer_is_not_added_to_the_conversation(ip):
    ip.run_cell("def lookup(key: str) -> str:\n    return key\n")
    _, text = run(ip, "%%gtl --chat --tools lookup --tools-dry-run\nlook it up")
    assert "not added to the conversation" in text
    assert session_of(ip).history == []
    ip.user_ns.pop("lookup")


def test_config_endpoint_reconnects_and_a_bad_one_keeps_the_old(ip):
    _, text = run(ip, "%gtl config endpoint=embedded://")
    assert "endpoint  embedded://" in text
    assert "ws://" in mistake(ip, "%gtl config endpoint=ws://127.0.0.1:9")
    assert "endpoint  embedded://" in run(ip, "%gtl config")[1]


# -- what the notebook shows ----------------------------------------------------------------------

BUDGET = "We have a $5 budget; the model costs $0.15 per 1M tokens. Is that enough?"


def shown_forms(shell, source):
    """Run a cell; its result and every markdown and HTML form it displayed (updates included)."""
    with capture_output() as captured:
        result = shell.run_cell(source, store_history=True)
    forms = [out.data[kind] for out in captured.outputs for kind in ("text/markdown", "text/html") if kind in out.data]
    return result, forms


@pytest.mark.parametrize(
    "source",
    [
        f"%%gtl\n{BUDGET}",
        f"%%gtl --no-stream\n{BUDGET}",
        f"%%gtl --compare echo echo:other\n{BUDGET}",
        f"%%gtl --chat\n{BUDGET}",
    ],
    ids=["stream", "no-stream", "compare", "chat"],
)
def test_dollars_in_an_answer_are_dollars_in_every_markdown_output_never_math(ip, source):
    result, forms = shown_forms(ip, source)
    assert result.success
    answers = [form for form in forms if "5 budget" in form]
    assert answers, forms
    for form in answers:
        # a bare "$" could pair with the next one into a LaTeX formula in JupyterLab
        assert "$" not in form, form
        assert "<span>&#36;</span>5 budget" in form and "<span>&#36;</span>0.15 per 1M" in form
    result = ip.user_ns["_gtl"]
    texts = [result.text] if isinstance(result, Completion) else [c.text for c in result.results.values()]
    assert all("$5 budget" in text and "$0.15 per 1M" in text for text in texts)  # the answer itself unchanged
    if "--chat" in source:
        _, forms = shown_forms(ip, "%gtl history")
        assert forms and all("$" not in form for form in forms) and "<span>&#36;</span>5" in forms[0]


def run_until_ctrl_c(shell, source: str, arrived: threading.Event) -> tuple[Any, str]:
    """Run ``source`` while a thread presses Ctrl-C once ``arrived`` is set (by the test's hook): a real
    SIGINT to this process, as Jupyter's "interrupt the kernel" sends, whatever the main thread waits on."""
    finished = threading.Event()

    def press() -> None:
        if arrived.wait(10) and not finished.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press)
    presser.start()
    try:
        return run(shell, source)
    finally:
        finished.set()  # never interrupt the test runner after the cell
        arrived.set()
        presser.join()


def test_ctrl_c_while_a_tool_function_runs_keeps_the_loop_so_far_and_says_so_in_one_line(ip):
    """The interrupt comes while the notebook's own function runs (a tool call's), not while a stream
    does: one line, no traceback, and ``_gtl`` the answers so far — not the previous cell's."""
    arrived = threading.Event()
    ip.user_ns["_gtl"] = "the previous cell's"
    ip.user_ns["tool_started"] = arrived

    ip.run_cell(
        "import time\ndef sleepy(key: str) -> str:\n    tool_started.set()\n    time.sleep(30)\n    return key\n"
    )
    try:
        result, text = run_until_ctrl_c(ip, "%%gtl --tools sleepy\nlook it up", arrived)
    finally:
        for name in ("sleepy", "tool_started"):
            ip.user_ns.pop(name)
    assert isinstance(result.error_in_exec, GTLCellError), text
    line = str(result.error_in_exec)
    assert line.startswith("cancelled while the notebook ran sleepy (tool round 1)"), line
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    answer = ip.user_ns["_gtl"]
    assert isinstance(answer, Completion) and [call.name for call in answer.tool_calls] == ["sleepy"]


def test_ctrl_c_while_streaming_keeps_the_partial_answer_and_says_so_in_one_line(ip, monkeypatch):
    run(ip, "%gtl providers echo type=echo options='{\"pace\": 0.05}'")  # an answer that takes seconds
    arrived = threading.Event()
    original = widgets.StreamView.on_event

    def on_event(view, event):
        original(view, event)
        if len(view.text.split()) >= 3:
            arrived.set()

    monkeypatch.setattr(widgets.StreamView, "on_event", on_event)
    result, text = run_until_ctrl_c(ip, "%%gtl --out partial\nTell me a long story", arrived)
    assert isinstance(result.error_in_exec, GTLCellError), text  # the cell fails, so "Run all" stops here
    line = str(result.error_in_exec)
    assert re.fullmatch(r"cancelled after \d+ chunks?, \d+\.\d s", line), line  # (echo sends no usage)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert text.count("cancelled after") == 1 and "[CANCELLED]" not in text and "-- ?" not in text
    answer = ip.user_ns["_gtl"]
    assert isinstance(answer, Completion) and answer.cancelled and answer.error.code == "CANCELLED"
    # the footer of a finished answer, as far as it got: what arrived, the time, the provider; marked cancelled
    count = int(line.split()[2])
    chunks = f"{count} chunk{'' if count == 1 else 's'} arrived"
    assert answer.footer() == f"{chunks} · {answer.latency:.2f} s · echo (offline) · cancelled"
    assert answer.latency >= float(line.split()[-2]) - 0.1
    assert f"\n-- {answer.footer()}" in text and f"<sub>{answer.footer()}</sub>" in text
    assert ip.user_ns["partial"] is answer
    full = session_of(ip).client().complete("echo", "Tell me a long story").text
    assert answer.text and full.startswith(answer.text) and answer.text != full
    assert answer.text in text  # the partial answer stays on screen
    usage = session_of(ip).client().usage()
    assert "cancelled" in set(usage["status"])


def test_ctrl_c_during_a_comparison_keeps_every_column_as_far_as_it_got(ip, monkeypatch):
    run(ip, "%gtl providers echo type=echo options='{\"pace\": 0.05}'")
    arrived = threading.Event()
    original = widgets.ComparisonGrid.on_event

    def on_event(grid, model, event):
        original(grid, model, event)
        if isinstance(event, Token):
            arrived.set()

    monkeypatch.setattr(widgets.ComparisonGrid, "on_event", on_event)
    result, text = run_until_ctrl_c(ip, "%%gtl --compare echo echo:other\nTell me a long story", arrived)
    assert isinstance(result.error_in_exec, GTLCellError), text
    assert re.fullmatch(r"cancelled after \d+\.\d s", str(result.error_in_exec))
    assert "Traceback" not in text
    comparison = ip.user_ns["_gtl"]
    assert all(isinstance(answer, Completion) and answer.cancelled for answer in comparison.results.values())
    table = comparison.to_dataframe()
    assert set(table["status"]) == {"cancelled"}
    assert dict(zip(table["model"], table["provider"], strict=True)) == {"echo": "echo", "echo:other": "echo"}
    assert table["latency_s"].notna().all()
    for answer in comparison.results.values():  # each column's footer: what arrived, marked cancelled
        footer = r"\d+ chunks? arrived · \d+\.\d\d s · echo \((other, )?offline\) · cancelled"
        assert re.fullmatch(footer, answer.footer())
        assert answer.footer() in text
    assert "**CANCELLED**" not in text  # said by each footer and the cell's line, not by an error line too


def test_config_model_is_checked_at_once_with_the_same_did_you_mean(ip):
    message = mistake(ip, "%gtl config model=gpt-4oo")
    assert "unknown model 'gpt-4oo'" in message and "did you mean 'gpt-4o'" in message and "%gtl models" in message
    assert session_of(ip).settings.model is None
    assert "gpt-4oo" in mistake(ip, "%gtl config chat=on model=gpt-4oo")
    assert session_of(ip).settings.chat is False  # nothing of a refused line is applied
    # a model served by a deployment the catalog does not list is routed, so it is accepted
    run(ip, "%gtl providers local type=ollama base_url=http://127.0.0.1:9")
    result, text = run(ip, "%gtl config model=local:my-finetune:7b")
    assert result.success, text
    assert session_of(ip).settings.model == "local:my-finetune:7b"
    # a known model whose provider is not set up yet: accepted, with what to do
    result, text = run(ip, "%gtl config model=gpt-4o")
    assert result.success and "OPENAI_API_KEY" in text
    assert session_of(ip).settings.model == "gpt-4o"


def test_models_show_prices_per_million_tokens_as_money(ip):
    run(ip, "%gtl providers openai type=openai api_key_env=HOME")
    table = ip.run_line_magic("gtl", "models")
    assert isinstance(table, Table)
    row = table[table["model"] == "gpt-4o-mini"].iloc[0]
    assert row["input_per_1m"] == pytest.approx(0.15) and row["output_per_1m"] == pytest.approx(0.60)
    shown = repr(table[["model", "input_per_1m", "output_per_1m"]])
    assert re.search(r"gpt-4o-mini\s+\$0\.15\s+\$0\.60", shown), shown
    assert "<NA>" not in repr(table) and "None" not in repr(table)
    assert "<span>&#36;</span>0.15" in table._repr_html_()  # each dollar apart: no MathJax formula


def test_the_magics_run_on_a_gateway_and_usage_shows_its_rows(ip, tmp_path):
    """``%gtl connect`` to a gateway (a child process with its own ledger): ``%%gtl`` runs there,
    ``%%gtl --endpoint`` picks a client for one cell, and ``%gtl usage`` reads the gateway's ledger."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'[ledger]\npath = "{tmp_path / "gateway-ledger.sqlite3"}"\n')
    with start_gateway(config) as gateway:
        url = gateway.url("ws")
        _, text = run(ip, f"%gtl connect {url}")
        assert f"connected to {url}" in text
        run(ip, "%%gtl echo\nover the gateway")
        run(ip, f"%%gtl echo --endpoint {gateway.url('http')}\none cell over plain HTTP")
        frame = ip.run_line_magic("gtl", "usage --by model")
        assert int(frame["requests"].sum()) == 2  # both rows are the gateway's, none the notebook's own
        shown = run(ip, "%gtl usage")[1]  # no token: not "your token's requests"
        assert "(the requests of its development principal, which every caller without a token shares)" in shown
        assert "endpoint  ws://" in run(ip, "%gtl config")[1]
    rows = Ledger(tmp_path / "gateway-ledger.sqlite3").rows()
    assert len(rows) == 2 and not (tmp_path / "ledger.sqlite3").exists()


def jwt_gateway(tmp_path, monkeypatch, scopes: tuple[str, ...]) -> tuple[Any, str]:
    """A gateway configuration that checks GhostTokens (its own ledger), and a token for ann with ``scopes``."""
    from gtl_nb.gateway.tokens.mint import mint_token

    secret = "n" * 40
    monkeypatch.setenv("GTL_TEST_NB_SECRET", secret)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[ledger]\npath = "{tmp_path / "gateway-ledger.sqlite3"}"\n'
        '[gateway]\nauth = "jwt"\n'
        '[gateway.jwt]\nissuer = "gtl-test"\nsecret_env = "GTL_TEST_NB_SECRET"\ndefault_deployments = ["*"]\n'
    )
    return config, mint_token(secret, subject="ann", scopes=scopes, lifetime=600, issuer="gtl-test")


def test_a_kernel_started_with_the_gateways_variables_is_on_the_gateway(tmp_path, monkeypatch):
    """The ``gtl`` command's $GTL_NB_GATEWAY and $GTL_TOKEN serve the notebook too: a kernel restarted
    with them set is back on the gateway (it fell back to the embedded engine and the machine's own
    ledger, silently); ``%gtl config`` says where the endpoint came from, ``%gtl usage`` which ledger."""
    config, token = jwt_gateway(tmp_path, monkeypatch, ("chat:write", "usage:read"))
    with start_gateway(config) as gateway:
        shells = loaded_shell(tmp_path / "kernel", monkeypatch)
        (tmp_path / "kernel").mkdir()
        shell = next(shells)
        try:
            monkeypatch.setenv("GTL_NB_GATEWAY", gateway.url("http"))
            monkeypatch.setenv("GTL_TOKEN", token)
            unload_ipython_extension(shell)
            load_ipython_extension(shell)  # what a restarted kernel does
            assert f"endpoint  {gateway.url('http')}  ($GTL_NB_GATEWAY)" in run(shell, "%gtl config")[1]
            run(shell, "%%gtl echo\nover the gateway")
            _, shown = run(shell, "%gtl usage")
            assert f"usage from the gateway at {gateway.url('http')} (your token's requests)" in shown
            result, shown = run(shell, "%gtl usage --all-users")  # everyone's needs usage:admin
            assert not result.success and "usage:admin" in shown, shown
        finally:
            shells.close()
    assert len(Ledger(tmp_path / "gateway-ledger.sqlite3").rows()) == 1
    assert not (tmp_path / "kernel" / "ledger.sqlite3").exists()  # nothing went to a ledger of its own


def test_a_kernel_on_a_gateway_without_a_token_shows_its_settings_and_the_way_out(tmp_path, monkeypatch):
    """$GTL_NB_GATEWAY set and no token: every magic used to fail alike, ``%gtl config`` (where a user
    looks to see why) included, and ``%gtl connect`` said the notebook "stays on" the address that had
    just failed. The settings show, and each refusal names the two ways out."""
    config, token = jwt_gateway(tmp_path, monkeypatch, ("chat:write",))
    monkeypatch.delenv("GTL_TOKEN", raising=False)
    monkeypatch.delenv("GTL_NB_TOKEN", raising=False)
    with start_gateway(config) as gateway:
        url = gateway.url("ws")
        shells = loaded_shell(tmp_path / "kernel", monkeypatch)
        (tmp_path / "kernel").mkdir()
        shell = next(shells)
        try:
            monkeypatch.setenv("GTL_NB_GATEWAY", url)
            unload_ipython_extension(shell)
            load_ipython_extension(shell)  # a kernel started with the variable
            result, shown = run(shell, "%gtl config")
            assert result.success, shown
            assert f"endpoint  {url}  ($GTL_NB_GATEWAY)" in shown and "not connected: AUTH_FAILED" in shown
            assert "%gtl connect embedded://" in shown
            result, shown = run(shell, "%%gtl echo\nhi")
            assert not result.success and "%gtl connect embedded://" in shown and "--token-env VAR" in shown
            result, shown = run(shell, f"%gtl connect {url}")  # the same address, still no token
            assert not result.success and f"stays on {url}" not in shown and "%gtl connect embedded://" in shown
            monkeypatch.setenv("TEAM_TOKEN", token)
            assert run(shell, f"%gtl connect {url} --token-env TEAM_TOKEN")[0].success
            result, shown = run(shell, "%%gtl echo\nwith a token now")
            assert result.success and "with a token now" in shown, shown
            result, shown = run(shell, "%%gtl gpt-9\nan unknown model")  # the notebook's way to the list
            assert not result.success and "`%gtl models` lists what this gateway serves" in shown, shown
            assert "client.models()" not in shown
        finally:
            shells.close()


def test_a_gateway_client_follows_its_token_variable_set_or_changed_later(tmp_path, monkeypatch):
    """A kernel on a gateway whose first cell failed for want of a token, then ``os.environ["GTL_TOKEN"]``
    set in a cell, then replaced by another user's: each next cell sends what the variable holds, and
    a change is said in one line naming the variable, never the token. A token read with ``--token-env
    VAR`` follows VAR alike; a variable emptied takes nothing away."""
    from gtl_nb.gateway.tokens.mint import mint_token

    config, ann = jwt_gateway(tmp_path, monkeypatch, ("chat:write",))
    bob = mint_token("n" * 40, subject="bob", scopes=("chat:write",), lifetime=600, issuer="gtl-test")
    cid = mint_token("n" * 40, subject="cid", scopes=("chat:write",), lifetime=600, issuer="gtl-test")
    monkeypatch.delenv("GTL_TOKEN", raising=False)
    monkeypatch.delenv("GTL_NB_TOKEN", raising=False)
    with start_gateway(config) as gateway:
        url = gateway.url("ws")
        shells = loaded_shell(tmp_path / "kernel", monkeypatch)
        (tmp_path / "kernel").mkdir()
        shell = next(shells)
        try:
            monkeypatch.setenv("GTL_NB_GATEWAY", url)
            unload_ipython_extension(shell)
            load_ipython_extension(shell)
            assert not run(shell, "%%gtl echo\nno token yet")[0].success
            monkeypatch.setenv("GTL_TOKEN", ann)  # what the user does in a cell: os.environ[...] = ...
            result, shown = run(shell, "%%gtl echo\nas ann")
            assert result.success and "settings changed" not in shown, shown  # (nothing was connected)
            monkeypatch.setenv("GTL_TOKEN", bob)  # another token, a renewed one
            result, shown = run(shell, "%%gtl echo\nas bob")
            assert result.success, shown
            assert f"settings changed ($GTL_TOKEN): reconnected to {url}" in shown
            result, shown = run(shell, "%%gtl echo\nstill bob")  # nothing changed: nothing said
            assert result.success and "settings changed" not in shown
            monkeypatch.setenv("TEAM_TOKEN", ann)
            assert run(shell, f"%gtl connect {url} --token-env TEAM_TOKEN")[0].success
            monkeypatch.setenv("GTL_TOKEN", cid)  # not this token's source now
            assert "settings changed" not in run(shell, "%%gtl echo\nann by TEAM_TOKEN")[1]
            monkeypatch.setenv("TEAM_TOKEN", cid)
            result, shown = run(shell, "%%gtl echo\ncid by TEAM_TOKEN")
            assert result.success and f"settings changed ($TEAM_TOKEN): reconnected to {url}" in shown, shown
            monkeypatch.setenv("TEAM_TOKEN", "")  # emptied: the token in memory stays
            result, shown = run(shell, "%%gtl echo\ncid still")
            assert result.success and "settings changed" not in shown, shown
            for token in (ann, bob, cid):
                assert token not in shown
            forged = bob[:-4] + "AAAA"  # a token the gateway refuses: whose it was is said, not what
            monkeypatch.setenv("TEAM_TOKEN", forged)
            result, shown = run(shell, "%%gtl echo\nrefused")
            assert not result.success and "AUTH_FAILED" in shown, shown
            assert "(the token sent was $TEAM_TOKEN's, which changed since the last cell)" in shown, shown
            assert forged not in shown and forged[-12:] not in shown
        finally:
            shells.close()
    users = [(row["user"], row["status"]) for row in Ledger(tmp_path / "gateway-ledger.sqlite3").rows()]
    assert [user for user, status in users if status == "ok"] == ["ann", "bob", "bob", "ann", "cid", "cid"], users


def test_models_on_a_gateway_that_lists_none_to_this_token_says_why(ip, tmp_path, monkeypatch):
    config, token = jwt_gateway(tmp_path, monkeypatch, ("chat:write",))
    monkeypatch.setenv("TEAM_TOKEN", token)
    with start_gateway(config) as gateway:
        run(ip, f"%gtl connect {gateway.url('ws')} --token-env TEAM_TOKEN")
        result, text = run(ip, "%gtl models")
        # a second connect without a token source keeps the first token, and says so
        assert "(with the token given before)" in run(ip, f"%gtl connect {gateway.url('http')}")[1]
        assert run(ip, "%gtl connect embedded://")[1].strip() == "connected to embedded://"  # it takes no token
    assert "no models listed" in text and "models:read" in text
    assert len(result.result) == 0


def test_models_on_a_gateway_that_went_away_says_so_rather_than_its_old_list(ip, tmp_path):
    from tests.gateway.conftest import write_toml
    from tests.gateway.test_http import serving

    config = write_toml(tmp_path / "gtl.toml", {"ledger": {"path": str(tmp_path / "ledger.sqlite3")}})
    with serving(config) as served:
        run(ip, f"%gtl connect {served.url}")
        assert "echo" in set(ip.run_line_magic("gtl", "models")["deployment"])
    try:
        result, text = run(ip, "%gtl models")  # the gateway has stopped: said, not its stale list
        assert isinstance(result.error_in_exec, GTLCellError) and "cannot reach the http gateway" in text
    finally:
        run(ip, "%gtl connect embedded://")


def test_a_notebook_with_its_own_deployments_can_still_use_a_gateway(ip, tmp_path):
    from tests.gateway.conftest import write_toml
    from tests.gateway.test_http import serving

    run(ip, "%gtl providers local type=echo")
    config = write_toml(tmp_path / "gtl.toml", {"ledger": {"path": str(tmp_path / "ledger.sqlite3")}})
    try:
        with serving(config) as served:
            result, text = run(ip, f"%%gtl echo --endpoint {served.url}\nhi")  # (it said: takes no providers=)
            assert result.success, text
            _, said = run(ip, f"%gtl connect {served.url}")
            assert "connected to" in said and "local added with %gtl providers" in said
            assert "local" not in set(ip.run_line_magic("gtl", "models")["deployment"])  # the gateway's list
            # set-up made on the gateway is still checked now, not when the notebook comes back
            assert "nosuchtype" in mistake(ip, "%gtl providers bogus type=nosuchtype")
            assert "nope.toml" in mistake(ip, f"%gtl config file={tmp_path / 'nope.toml'}")
            run(ip, "%gtl connect embedded")  # bare, as connect() reads it: the engine here, with its own
        assert "local" in set(ip.run_line_magic("gtl", "models")["deployment"])  # back, with its own
    finally:
        run(ip, "%gtl connect embedded://")
        run(ip, "%gtl providers local --remove")


def test_a_gateway_that_wants_a_token_is_told_how_to_give_one_in_a_notebook(ip, tmp_path, monkeypatch):
    """The gateway words its advice for Python callers (connect's token argument): a notebook user
    reads the magic's own way to send a token."""
    config, _ = jwt_gateway(tmp_path, monkeypatch, ("chat:write",))
    monkeypatch.delenv("GTL_TOKEN", raising=False)
    monkeypatch.delenv("GTL_NB_TOKEN", raising=False)
    with start_gateway(config) as gateway:
        refused = mistake(ip, f"%gtl connect {gateway.url('ws')}")
    assert "%gtl connect URL --token-env VAR" in refused and "gtl_nb.connect" not in refused
    assert "stays on embedded://" in refused


def test_a_cancelled_answer_names_its_deployment_only_when_routing_had_one():
    """Cut short before its ``done`` and without a failover, an answer's deployment is known only when
    routing had one candidate: with several, a strategy or a breaker chose, and guessing the first
    could name one the request never went to."""
    from gtl_nb.notebook.gtl_cell import _cut_short

    partial = Completion(text="Once", session_id="s", provider=None, model=None, finish_reason=None)
    one = [("east", "openai", "gpt-4o")]
    assert _cut_short(partial, one, 1.5).provider == "east"
    assert _cut_short(partial, one, 1.5).model == "gpt-4o" and _cut_short(partial, one, 1.5).latency_ms == 1500
    several = [("east", "openai", "gpt-4o"), ("west", "openai", "gpt-4o")]
    assert _cut_short(partial, several, 1.5).provider is None


def test_reasoning_effort_and_budget_reach_the_provider_and_config_sets_the_default(ip, monkeypatch):
    from gtl_nb import sim

    with sim.serve("anthropic") as served:
        monkeypatch.setenv("SIM_ANTHROPIC_KEY", "sim-key")
        run(ip, f"%gtl providers claude type=anthropic base_url={served.base_url} api_key_env=SIM_ANTHROPIC_KEY")

        def thinking(options: str) -> Any:
            outcome, _ = run(ip, f"%%gtl claude:claude-sonnet-4-5 --max-tokens 20000 {options}\nWhy is the sky blue?")
            assert outcome.success and not ip.user_ns["_gtl"].reasoning  # thought, not shown
            return served.requests[-1].json.get("thinking")

        assert thinking("--reasoning-effort HIGH") == {"type": "enabled", "budget_tokens": 16384}
        assert thinking("--reasoning-budget 3000") == {"type": "enabled", "budget_tokens": 3000}
        assert thinking("") is None  # neither: the deployment's own (no thinking unasked)
        _, shown = run(ip, "%gtl config reasoning_effort=Low")
        assert re.search(r"^reasoning_effort +low$", shown, re.M)
        assert thinking("") == {"type": "enabled", "budget_tokens": 2048}  # the notebook's default
        assert thinking("--reasoning-budget 0") is None  # a cell's own replaces the default's pair
        assert thinking("--reasoning-effort max") == {"type": "enabled", "budget_tokens": 32768}
        _, shown = run(ip, "%gtl config reasoning_effort=")
        assert re.search(r"^reasoning_effort +unset", shown, re.M) and thinking("") is None
    said = mistake(ip, "%%gtl --reasoning-effort huge\nhi")
    assert "unknown reasoning effort 'huge'; choose one of none, minimal, low, medium, high, xhigh, max" in said
    assert "expected a number of at least 0, got -5" in mistake(ip, "%%gtl --reasoning-budget -5\nhi")
    said = mistake(ip, "%gtl config reasoning_effort=loud")
    assert "%gtl config: reasoning_effort=loud: unknown reasoning effort 'loud'" in said
    assert session_of(ip).settings.reasoning_effort is None  # a refused line changes nothing


def test_a_cell_refused_before_any_answer_leaves_its_error_as_gtl_never_an_older_answer(ip):
    result, text = run(ip, "%%gtl echo --out kept\nThe first answer.")
    assert result.success, text
    first = ip.user_ns["_gtl"]
    for line, code in [
        ("%%gtl echoo --out kept", "MODEL_NOT_FOUND"),  # no deployment serves it: refused before anything is sent
        ("%%gtl echo --temperature 7 --out kept", "INVALID_REQUEST"),  # checked before the request is sent
        ("%%gtl echo --compare echo echo:echo --tools f --out kept", None),  # options read, refused together
    ]:
        message = mistake(ip, f"{line}\nrefused")
        gtl = ip.user_ns["_gtl"]
        assert gtl is not first and isinstance(gtl, Exception)
        assert ip.user_ns["kept"] is gtl  # --out names the cell's result, which is this error
        if code is not None:  # the engine's error itself, its one line said in the notebook's words
            assert gtl.code == code
        else:
            assert str(gtl) == message
    mistake(ip, "%%gtl --no-such-option\nrefused")  # its options unread: _gtl is the error, --out unknown
    assert isinstance(ip.user_ns["_gtl"], Exception) and "--no-such-option" in str(ip.user_ns["_gtl"])
    result, text = run(ip, "%%gtl echo\nA new answer.")
    assert result.success and "new answer" in ip.user_ns["_gtl"].text


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("""headers='{"Authorization": "Bearer sim-key"}'""", "header 'Authorization'"),
        ("""headers='{"x-api-key": "sk-ant-123"}'""", "header 'x-api-key'"),
        ("""headers='{"api-key": "abc123"}'""", "header 'api-key'"),
        ("""headers='{"X-Goog-Api-Key": "AIza123"}'""", "header 'X-Goog-Api-Key'"),
        ("""headers='{"X-Auth-Token": "t0ken"}'""", "header 'X-Auth-Token'"),
        ("""options='{"api_key": "sk-proj-abcdef1234567890"}'""", "option 'api_key'"),
        ("""options='{"azure_ad_token": "eyJabc"}'""", "option 'azure_ad_token'"),
        # names in other spellings, and a value that says it is a credential under any name
        ("""headers='{"X-Authorization": "k3y-one"}'""", "header 'X-Authorization'"),
        ("""headers='{"x-auth": "k3y-two"}'""", "header 'x-auth'"),
        ("""headers='{"X-ApiKey": "k3y-three"}'""", "header 'X-ApiKey'"),
        ("""headers='{"authToken": "k3y-four"}'""", "header 'authToken'"),
        ("""headers='{"X-Team": "Bearer k3y-five"}'""", "header 'X-Team'"),
        ("""options='{"apiKey": "k3y-six"}'""", "option 'apiKey'"),
        ("""options='{"accessToken": "k3y-seven"}'""", "option 'accessToken'"),
    ],
)
def test_a_credential_header_or_option_typed_in_a_cell_is_refused_without_quoting_it(ip, setting, named):
    """A header or option holding a key is saved in the notebook as ``api_key=`` would be: refused like it,
    naming the header, never its value; the deployment is not added."""
    refused = mistake(ip, f"%gtl providers y type=openai_compatible base_url=http://127.0.0.1:9/v1 {setting}")
    assert named in refused and "saved in the notebook" in refused and "api_key_env=VAR" in refused
    value = setting.split('": "')[1].split('"')[0]
    assert value not in refused
    assert "y" not in session_of(ip).providers


def test_headers_and_options_that_hold_no_credential_are_taken(ip):
    run_ok = run(
        ip,
        "%gtl providers y type=openai_compatible base_url=http://127.0.0.1:9/v1 "
        """headers='{"OpenAI-Project": "proj_1"}' options='{"max_tokens": 5, "keep_alive": "5m"}'""",
    )
    assert run_ok[0].success, run_ok[1]
    assert session_of(ip).providers["y"]["headers"] == {"OpenAI-Project": "proj_1"}


def test_a_base_url_with_credentials_is_refused_with_the_notebooks_way_to_give_a_key(ip):
    refused = mistake(ip, "%gtl providers z type=openai_compatible base_url=http://user:sk-secret@127.0.0.1:1/v1")
    assert "sk-secret" not in refused and "user:password@" in refused
    assert "api_key_env=VAR" in refused and "%gtl config file=PATH" in refused
    assert "header in headers" not in refused and "in api_key or" not in refused


def test_a_cells_endpoint_that_fails_says_the_notebook_stays_where_it_was(ip):
    """A cell's own ``--endpoint`` is not the notebook's: its failure says the notebook stays on its
    endpoint, not that the notebook is on the failed one, and offers no token option the cell lacks."""
    refused = mistake(ip, "%%gtl echo --endpoint http://127.0.0.1:1\nx")  # nothing listens on port 1
    assert "cannot reach" in refused and "this cell's --endpoint" in refused
    assert "the notebook stays on embedded://" in refused
    assert "the notebook's endpoint is http://127.0.0.1:1" not in refused and "connects again" not in refused
    assert "endpoint  embedded://" in run(ip, "%gtl config")[1]
    assert run(ip, "%%gtl echo\nstill here")[0].success


def test_compare_says_a_model_named_twice_is_compared_once(ip):
    result, text = run(ip, "%%gtl --compare echo echo:echo echo\nhi")
    assert result.success, text
    assert "--compare: echo named more than once, compared once (one column each)" in text
    assert list(ip.user_ns["_gtl"].results) == ["echo", "echo:echo"]
    _, text = run(ip, "%%gtl --compare echo echo:echo\nhi")
    assert "named more than once" not in text
