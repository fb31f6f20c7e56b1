"""``%%gtl`` against the provider simulators: provider errors, failover, compare, tools, cache, options.

The deployments are configured the way a notebook user does it: a TOML file (``%gtl config file=``
or ``$GTL_NB_CONFIG``) naming each simulator's URL and the environment variable holding its key.
"""

from __future__ import annotations

import json
import re

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from gtl_nb import sim
from gtl_nb.completion import Comparison, Completion
from gtl_nb.notebook import widgets
from gtl_nb.notebook.magics import GTLCellError
from gtl_nb.protocol import RateLimitError, Token
from gtl_nb.safe_markdown import DOLLAR
from gtl_nb.sim import Fault
from gtl_nb.words import dollars

from .conftest import deployments, loaded_shell, mistake, run, session_of


@pytest.fixture(scope="module")
def sims():
    servers = {
        "good": sim.serve("openai", seed=1),
        "quota": sim.serve("openai", Fault.http(429, kind="quota")),
        "down": sim.serve("openai", Fault.http(500)),
        "claude": sim.serve("anthropic", seed=2),
        "rock": sim.serve("bedrock", seed=4),
    }
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def ip(tmp_path, monkeypatch, sims):
    types = {name: {"claude": "anthropic", "rock": "bedrock"}.get(name, "openai") for name in sims}
    config = deployments(sims, types).replace("[providers.rock]\n", '[providers.rock]\nregion = "us-east-1"\n')
    config += "[routing.retry]\nmax_attempts = 1\n" + "[cache]\nenabled = true\n"
    yield from loaded_shell(tmp_path, monkeypatch, config)


def last_body(server) -> dict:
    return json.loads(server.requests[-1].body)


def test_a_simulated_provider_answers_with_cost_and_the_options_reach_it(ip, sims):
    result, text = run(
        ip,
        "%%gtl good:gpt-4o-mini --system 'Be brief.' --temperature 0.3 --max-tokens 50\nTell me about Bergen",
    )
    assert result.success, text
    answer = ip.user_ns["_gtl"]
    assert answer.provider == "good" and answer.cost and answer.cost > 0
    assert "Tell me about Bergen" in answer.text
    body = last_body(sims["good"])
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["temperature"] == 0.3
    assert 50 in (body.get("max_tokens"), body.get("max_completion_tokens"))
    assert body["stream"] is True
    assert "good (gpt-4o-mini-2024-07-18)" in text  # the model that served it, as OpenAI names the alias


def test_no_stream_asks_the_provider_for_one_response(ip, sims):
    result, _ = run(ip, "%%gtl good:gpt-4o-mini --no-stream\nwhole answer")
    assert result.success
    assert last_body(sims["good"]).get("stream") in (None, False)


def test_a_provider_error_is_one_line_with_its_code_and_the_cell_fails(ip):
    result, text = run(ip, "%%gtl quota:gpt-4o-mini --out answer\nhello")
    assert isinstance(result.error_in_exec, GTLCellError)
    assert "Traceback" not in text
    assert "RATE_LIMIT [quota]: " in text
    assert re.search(r" · after \d+\.\d\d s$", str(result.error_in_exec))  # how long it took; nothing arrived
    error = ip.user_ns["_gtl"]
    assert isinstance(error, RateLimitError) and ip.user_ns["answer"] is error
    assert isinstance(error.completion, Completion)


def test_a_provider_error_is_said_once_and_what_arrived_before_it_stays(ip, sims):
    result, text = run(ip, "%%gtl quota:gpt-4o-mini\nhello")
    assert isinstance(result.error_in_exec, GTLCellError)
    assert text.count("RATE_LIMIT") == 1, text  # the cell's error line, not also the view's
    assert "-- " not in text  # no footer for an answer that never came
    sims["good"].set_faults(Fault.drop_after(3))  # some text, then the connection drops
    try:
        result, text = run(ip, "%%gtl good:gpt-4o-mini\nhello again")
    finally:
        sims["good"].set_faults(None)
    error = ip.user_ns["_gtl"]
    assert isinstance(result.error_in_exec, GTLCellError) and error.completion.text
    assert error.completion.text in text and text.count(error.code) == 1, text
    came = r" · after \d+ (tokens?|chunks?), \d+\.\d\d s$"  # how much came, how long
    assert re.search(came, str(result.error_in_exec))


def test_a_missing_key_is_a_usage_error_naming_the_variable(ip, tmp_path, monkeypatch):
    monkeypatch.delenv("SIM_KEY")
    result, text = run(ip, "%%gtl good:gpt-4o-mini\nhello")
    assert isinstance(result.error_in_exec, UsageError)
    assert "SIM_KEY" in str(result.error_in_exec)
    assert "Traceback" not in text


def test_providers_list_fails_over_to_the_next_deployment(ip, sims):
    result, text = run(ip, "%%gtl gpt-4o-mini --providers down,good\nhello")
    assert result.success, text
    answer = ip.user_ns["_gtl"]
    assert answer.provider == "good"
    assert answer.failovers and "down -> good" in answer.failovers[0]
    assert "failover" in text
    # the title says what answered, not only what was asked (the footer alone said so)
    assert re.search(r"== \S*gpt-4o-mini -> good:gpt-4o-mini-2024-07-18 ==", text), text


def test_no_cache_asks_again_where_the_cache_would_answer(ip, sims):
    cell = "%%gtl good:gpt-4o-mini --temperature 0\nsame question"
    run(ip, cell)
    before = len(sims["good"].requests)
    run(ip, cell)
    assert len(sims["good"].requests) == before  # answered from the cache
    assert ip.user_ns["_gtl"].usage.cache_hit
    run(ip, cell.replace("--temperature 0", "--temperature 0 --no-cache"))
    assert len(sims["good"].requests) == before + 1
    assert not ip.user_ns["_gtl"].usage.cache_hit


def test_compare_streams_every_model_and_a_failing_one_shows_its_code(ip, monkeypatch):
    seen: dict[str, list] = {}

    class Spy(widgets.ComparisonGrid):
        def on_event(self, model, event):
            seen.setdefault(model, []).append(event)
            super().on_event(model, event)

    monkeypatch.setattr(widgets, "ComparisonGrid", Spy)
    result, text = run(ip, "%%gtl --compare good:gpt-4o-mini quota:gpt-4o-mini claude-haiku-4-5 echo --out both\nhi")
    assert result.success, text  # one failure does not fail the cell
    comparison = ip.user_ns["_gtl"]
    assert isinstance(comparison, Comparison) and ip.user_ns["both"] is comparison
    assert isinstance(comparison.results["quota:gpt-4o-mini"], RateLimitError)
    for model in ("good:gpt-4o-mini", "claude-haiku-4-5", "echo"):
        assert isinstance(comparison.results[model], Completion)
        assert any(isinstance(e, Token) for e in seen[model])
        assert comparison.results[model].text.split(".")[0] in text
    assert "RATE_LIMIT" in text
    frame = comparison.to_dataframe()
    assert dict(zip(frame["model"], frame["error"].fillna(""), strict=True))["quota:gpt-4o-mini"] == "RATE_LIMIT"


def test_a_comparisons_dataframe_shows_cost_seconds_and_gaps_as_every_table_does(ip):
    from gtl_nb.analysis import Table, comparison_table

    result, text = run(ip, "%%gtl --compare good:gpt-4o-mini quota:gpt-4o-mini --out race\nhi")
    assert result.success, text
    race = ip.user_ns["race"]
    frame = race.to_dataframe()
    assert isinstance(frame, Table)  # the same class every analysis table is: the numbers stay numbers
    good = frame[frame["model"] == "good:gpt-4o-mini"].iloc[0]
    assert isinstance(good["cost"], float) and good["cost"] > 0 and isinstance(good["latency_s"], float)
    _, cell = run(ip, 'race.to_dataframe()[["model", "error", "cost", "latency_s"]]')  # as a notebook shows it
    row = next(line for line in cell.splitlines() if "good:gpt-4o-mini" in line)
    assert re.search(r"\$0\.\d+", row) and f"{good['latency_s']:.2f} s" in row
    assert "NaN" not in cell and "<NA>" not in cell  # the failed row's missing numbers are empty cells
    assert repr(comparison_table(race)) == repr(frame)


def test_endpoint_option_uses_a_client_for_that_endpoint(ip):
    result, _ = run(ip, "%%gtl echo --endpoint embedded://\nhi")
    assert result.success
    result, text = run(ip, "%%gtl echo --endpoint ftp://nowhere\nhi")
    assert isinstance(result.error_in_exec, UsageError)
    assert "ftp" in str(result.error_in_exec) and "Traceback" not in text


def test_chat_history_reaches_the_provider(ip, sims):
    run(ip, "%%gtl good:gpt-4o-mini --chat\nMy name is Ada.")
    run(ip, "%%gtl good:gpt-4o-mini --chat\nWhat is my name?")
    messages = last_body(sims["good"])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == "My name is Ada."


def test_live_model_listing_asks_the_provider(ip):
    frame = ip.run_line_magic("gtl", "models --live good")
    assert "gpt-4o-mini" in set(frame["model"])
    assert "nowhere" in mistake(ip, "%gtl models --live nowhere")


def test_usage_by_provider_counts_each_deployment(ip):
    run(ip, "%%gtl good:gpt-4o-mini\none")
    run(ip, "%%gtl quota:gpt-4o-mini\ntwo")
    frame = ip.run_line_magic("gtl", "usage --by provider")
    key = frame.columns[0]
    rows = {row[key]: row for row in frame.to_dict("records")}
    assert set(rows) >= {"good", "quota"}
    assert rows["good"]["cost"] > 0
    assert rows["quota"]["errors"] == 1


# -- tools ------------------------------------------------------------------------------------------

TOOLS = '''
def get_weather(city: str, days: int = 1) -> str:
    """Weather forecast for a city.

    Args:
        city: the city name
        days: how many days ahead
    """
    CALLS.append(("get_weather", city, days))
    return f"sunny in {city}"

def get_time(zone: str) -> str:
    """The time in a time zone."""
    CALLS.append(("get_time", zone))
    return "12:00"
CALLS = []
'''


def test_tools_run_the_models_calls_and_send_the_results_back(ip, sims):
    ip.run_cell(TOOLS)
    result, text = run(ip, "%%gtl good:gpt-4o-mini --tools get_weather,get_time\nUse get_weather for Oslo")
    assert result.success, text
    assert [c[0] for c in ip.user_ns["CALLS"]] == ["get_weather"]
    answer = ip.user_ns["_gtl"]
    assert answer.finish_reason == "stop" and "The tool returned" in answer.text
    assert text.count("[tool call]") == 1 and "[get_weather] -> sunny in" in text, text  # the call once, its result
    first, second = (json.loads(r.body) for r in sims["good"].requests[-2:])
    assert {t["function"]["name"] for t in first["tools"]} == {"get_weather", "get_time"}
    schema = next(t for t in first["tools"] if t["function"]["name"] == "get_weather")["function"]["parameters"]
    assert schema["required"] == ["city"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][2]["content"].startswith("sunny in")


@pytest.mark.parametrize("tool_cell", ["good:gpt-4o-mini", "claude:claude-haiku-4-5"])
def test_a_chat_goes_on_at_bedrock_after_a_tools_cell(ip, sims, tool_cell):
    """magics.md: the history is one conversation whatever the model. A ``--tools`` cell leaves tool calls
    and results in it; the next cells, at Bedrock without tools, are answered (Converse refuses tool blocks
    without a toolConfig: they go as text) — not every Bedrock cell failing until ``%gtl reset``."""
    ip.run_cell(TOOLS)
    run(ip, "%gtl config chat=on")
    result, text = run(ip, f"%%gtl {tool_cell} --tools get_weather\nUse get_weather for Oslo")
    assert result.success and [c[0] for c in ip.user_ns["CALLS"]] == ["get_weather"], text
    for prompt in ("summarise", "and once more, shorter"):
        result, text = run(ip, f"%%gtl rock:anthropic.claude-3-5-haiku-20241022-v1:0\n{prompt}")
        assert result.success, text
        assert prompt in ip.user_ns["_gtl"].text
        body = last_body(sims["rock"])
        assert "toolConfig" not in body
        said = json.dumps(body["messages"])
        assert "[tool call " in said and "get_weather" in said and "[tool result for " in said
        assert "sunny in" in said  # what the tool returned is still in the conversation


@pytest.mark.parametrize("stream", ["", " --no-stream"])
def test_a_tool_loops_answer_reports_the_whole_cells_tokens_and_cost(ip, sims, stream):
    ip.run_cell(TOOLS)
    with capture_output() as captured:
        result = ip.run_cell(f"%%gtl good:gpt-4o-mini --tools get_weather{stream} --out answer\nUse get_weather")
    assert result.success
    answer = ip.user_ns["_gtl"]
    calls, final = answer.steps  # the request that called the tool, then the one that answered
    assert calls.tool_calls and not final.tool_calls and answer.text == final.text
    assert answer.tokens_in == calls.tokens_in + final.tokens_in > final.tokens_in
    assert answer.tokens_out == calls.tokens_out + final.tokens_out
    assert answer.cost == pytest.approx(calls.cost + final.cost) and answer.cost > final.cost
    assert ip.user_ns["answer"] is answer
    shown = [out.data for out in captured.outputs if "text/markdown" in out.data]
    first, last = shown[0], shown[-1]  # the request that called the tool, and the final answer
    footer = f"{answer.tokens_in:,} in · {answer.tokens_out:,} out · {dollars(answer.cost)} · 2 requests"
    assert footer in last["text/plain"], last["text/plain"]
    assert footer.replace("$", DOLLAR) in last["text/markdown"]
    own = f"-- {calls.tokens_in:,} in · {calls.tokens_out:,} out · {dollars(calls.cost)} · first token"
    assert own in first["text/plain"] and "requests" not in first["text/plain"]  # its own numbers: none twice
    rows = session_of(ip).client().usage()  # what the ledger recorded of the cell, request by request
    cell = rows[rows["session_id"].isin([calls.session_id, final.session_id])]
    assert len(cell) == 2 and cell["tokens_in"].sum() == answer.tokens_in


def test_a_tool_loops_later_request_failing_keeps_the_earlier_requests_in_its_completion(ip, sims):
    """The second request of the loop fails: ``_gtl`` is its error, whose ``completion`` holds both
    requests (``steps``), as a cancelled loop's does — the first one's usage is not lost."""
    ip.run_cell(TOOLS)
    client = ip.magics_manager.registry["GTLMagics"].session.client()
    real_stream = client.stream
    sent: list[str] = []

    def then_down(model, messages, **kwargs):  # the answer to the tool's result goes to the failing one
        sent.append(model)
        return real_stream("down:gpt-4o-mini" if len(sent) > 1 else model, messages, **kwargs)

    client.stream = then_down
    try:
        result, _ = run(ip, "%%gtl good:gpt-4o-mini --no-stream --tools get_weather\nUse get_weather")
    finally:
        del client.stream
    assert isinstance(result.error_in_exec, GTLCellError) and len(sent) == 2
    error = ip.user_ns["_gtl"]
    first, failed = error.completion.steps
    assert first.tool_calls and first.tokens_in and failed.error is not None
    assert error.completion.tokens_in is None  # the failed request's usage is unknown: so is the total


def test_tools_dry_run_shows_calls_without_running_them(ip, sims):
    ip.run_cell(TOOLS)
    before = len(sims["good"].requests)
    result, text = run(ip, "%%gtl good:gpt-4o-mini --tools get_weather --tools-dry-run\nweather?")
    assert result.success, text
    assert ip.user_ns["CALLS"] == []
    assert len(sims["good"].requests) == before + 1
    assert "dry run" in text and text.count("[tool call") == 1, text  # the answer shows the call, once
    assert ip.user_ns["_gtl"].tool_calls


def test_max_steps_bounds_the_tool_rounds(ip):
    ip.run_cell(TOOLS)
    result, text = run(ip, "%%gtl echo --tools get_weather --max-steps 1\nweather?")
    assert result.success
    assert len(ip.user_ns["CALLS"]) == 1 and ip.user_ns["_gtl"].finish_reason == "stop"

    # echo calls tools only right after a user message: turn each tool result into one, and it keeps asking
    magics = ip.magics_manager.registry["GTLMagics"]
    client = magics.session.client()
    real_stream = client.stream
    calls = {"n": 0}

    def stubborn(model, messages, **kwargs):
        calls["n"] += 1
        messages = [*messages[:-1], {"role": "user", "content": "again"}] if messages[-1].role == "tool" else messages
        return real_stream(model, messages, **kwargs)

    client.stream = stubborn
    try:
        ip.user_ns["CALLS"].clear()
        result, text = run(ip, "%%gtl echo --no-stream --tools get_weather --max-steps 2\nweather?")
    finally:
        del client.stream
    assert result.success
    assert calls["n"] == 3 and len(ip.user_ns["CALLS"]) == 2
    assert "stopped after 2 tool round(s)" in text
    # each request whose calls ran shows its own numbers; the last (its calls not run) the cell's three
    steps = ip.user_ns["_gtl"].steps
    footers = [line for line in text.splitlines() if line.startswith("-- ")]
    assert [footer.split(" · ")[:2] for footer in footers[:2]] == [
        [f"-- {step.tokens_in} in", f"{step.tokens_out} out"] for step in steps[:2]
    ]
    assert f"-- {sum(step.tokens_in for step in steps)} in" in footers[-1] and "3 requests" in footers[-1]


def test_tools_must_be_callables_of_the_notebook(ip):
    cases = (
        ("%%gtl --tools nope\nhi", "'nope' is not defined"),
        ("%%gtl --tools x\nhi", "'x' is an int, not a function"),
    )
    ip.user_ns["x"] = 5
    for source, fragment in cases:
        assert fragment in mistake(ip, source)


def test_a_tool_that_raises_sends_the_error_back_to_the_model(ip):
    ip.run_cell("def broken(city: str):\n    raise RuntimeError('no network')\n")
    result, text = run(ip, "%%gtl echo --tools broken\nweather?")
    assert result.success
    assert "[broken] -> failed: RuntimeError: no network" in text, text
    assert "error: RuntimeError: no network" in ip.user_ns["_gtl"].text
    run(ip, "%gtl reset")
    run(ip, "%%gtl echo --chat --tools broken\nweather?")
    (result_message,) = [m for m in session_of(ip).history if m.role == "tool"]
    assert result_message.tool_error  # the model is told the call failed, in its provider's terms
    run(ip, "%gtl reset")
    ip.user_ns.pop("broken")


def test_python_words_are_reworded_for_a_notebook_in_linear_time():
    """``in_notebook_words`` runs on every error a notebook shows (a gateway's too): a message of many
    "[providers." pieces must not take quadratic time (the name's pattern took brackets: 176,000
    characters took 15 s)."""
    import time

    from gtl_nb.notebook.errors import in_notebook_words

    said = "unknown setting 'apikey' in [providers.openai] in the keyword arguments"
    assert in_notebook_words(said) == "unknown setting 'apikey' in `%gtl providers openai`"
    huge = "[providers." * 16_000
    started = time.perf_counter()
    assert in_notebook_words(huge) == huge
    assert time.perf_counter() - started < 1.0  # (quadratic: seconds; linear: milliseconds)
