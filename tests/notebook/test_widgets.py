"""The live views: streaming, coalesced redraws, failover, errors, final outputs, threads, fallbacks."""

from __future__ import annotations

import html
import re
import threading

import pytest

import gtl_nb
from gtl_nb import gap, sim
from gtl_nb.completion import Comparison, Completion
from gtl_nb.notebook import widgets
from gtl_nb.notebook.throttle import Throttle
from gtl_nb.notebook.widgets import WIDGET_VIEW, ComparisonGrid, EntityEditor, StreamView
from gtl_nb.protocol import (
    Done,
    Error,
    GTLError,
    InternalError,
    OverloadedError,
    ProviderTimeoutError,
    RateLimitError,
    Status,
    Token,
    Usage,
)
from gtl_nb.protocol.session import Transcript
from gtl_nb.safe_markdown import no_math_html, no_math_markdown

SID = "sess_test"


@pytest.fixture
def echo_client():
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.01}}}, ledger=False, environ={})
    yield client
    client.close()


def text_of(fragment: str) -> str:
    """The text inside a live fragment's ``.gtl-text`` element."""
    match = re.search(r'<div class="gtl-text"[^>]*>(.*?)</div>', fragment, re.S)
    assert match, fragment
    return html.unescape(match.group(1))


def record_values(widget) -> list[str]:
    values: list[str] = []
    widget.observe(lambda change: values.append(change["new"]), "value")
    return values


def completion_of(*events) -> Completion:
    transcript = Transcript(session_id=SID)
    for event in events:
        transcript.add(event)
    return Completion.from_transcript(transcript, "echo")


def tokens(*texts):
    return [Token(session_id=SID, text=t) for t in texts]


# -- the throttle --------------------------------------------------------------------------------


def test_throttle_draws_the_first_request_at_once_and_folds_a_burst_into_one_trailing_draw():
    drawn = threading.Event()
    times: list[float] = []

    def draw():
        import time

        times.append(time.monotonic())
        if len(times) == 2:
            drawn.set()

    throttle = Throttle(draw, min_interval=0.05)
    for _ in range(200):
        throttle.request()
    assert throttle.draws == 1  # the first one, immediately
    assert drawn.wait(5), "the trailing draw never came"
    assert throttle.draws == 2
    assert times[1] - times[0] >= 0.045
    throttle.close()
    assert throttle.draws == 3


def test_throttle_close_cancels_the_pending_draw_and_draws_the_final_state_once():
    calls: list[str] = []
    throttle = Throttle(lambda: calls.append("live"), min_interval=60)
    throttle.request()
    throttle.request()  # schedules a trailing draw a minute away
    throttle.close(lambda: calls.append("final"))
    throttle.close(lambda: calls.append("final again"))
    throttle._fire()  # a timer that slipped through must not draw after the final state
    throttle.request()
    assert calls == ["live", "final"]


# -- StreamView ------------------------------------------------------------------------------------


def test_many_events_are_coalesced_into_a_few_redraws(shell):
    view = StreamView("echo", min_interval=30, live=True)
    view.display()
    values = record_values(view.widget)
    for event in tokens(*(f"w{i} " for i in range(1000))):
        view.on_event(event)
    assert view.redraws == 1  # the first token showed at once; the rest wait for the quiet period
    assert text_of(values[-1]) == "w0 "
    assert view.text == "".join(f"w{i} " for i in range(1000))
    view.finish(completion_of(*tokens(*(f"w{i} " for i in range(1000))), Done(session_id=SID)))
    assert view.redraws == 2  # ... and the final state was drawn anyway
    final = shell.display_pub.outputs[-1][0]
    assert "w999" in final["text/markdown"] and "w999" in final["text/plain"]


def test_a_real_echo_stream_shows_partial_text_then_the_final_answer_with_its_footer(shell, echo_client):
    view = StreamView("echo", min_interval=0.0, live=True)
    view.display()
    values = record_values(view.widget)
    stream = echo_client.stream("echo", "tell me about widgets", on_event=view.on_event)
    for _event in stream:
        pass
    result = stream.result()
    view.finish(result)

    partial = [text_of(v) for v in values]
    assert any(p and p != result.text and result.text.startswith(p) for p in partial)
    assert partial[-1] == result.text
    first, *updates, final = shell.display_pub.outputs
    # the live area: the widget view with an empty text/plain, later turned into the empty text/plain alone
    assert set(first[0]) == {WIDGET_VIEW, "text/plain"} and first[0]["text/plain"] == ""
    assert updates == [({"text/plain": ""}, first[1], True)]
    # the final answer, as a new output with markdown and plain text
    assert final[2] is False and set(final[0]) == {"text/markdown", "text/plain"}
    assert no_math_markdown(result.text) in final[0]["text/markdown"]  # (its quotes escaped: never live HTML)
    assert no_math_html(result.footer()) in final[0]["text/markdown"]
    assert "echo (offline)" in final[0]["text/markdown"]
    assert final[0]["text/plain"].endswith("-- " + result.footer())
    assert 'class="gtl-stream gtl-final" data-model="echo"' in final[0]["text/markdown"]
    assert view.widget is not None and view.widget.comm is None  # closed: nothing left live
    assert view.text == result.text


def test_a_failover_clears_the_partial_text_and_notes_the_switch():
    with (
        sim.running("openai", faults=sim.Fault.drop_after(4), pace=0.01) as broken,
        sim.running("anthropic", pace=0.01) as healthy,
    ):
        client = gtl_nb.connect(
            providers={
                "openai": {"api_key": "sim-key", "base_url": broken},
                "anthropic": {"api_key": "sim-key", "base_url": healthy},
            },
            ledger=False,
            environ={},
        )
        view = StreamView("gpt-4o-mini", min_interval=0.0, live=False)
        seen: list[tuple[str, str]] = []

        def on_event(event):
            view.on_event(event)
            if isinstance(event, Status) and event.state == "failover":
                seen.append((view.text, str(view)))

        try:
            stream = client.stream(
                "gpt-4o-mini", "hi", providers=["openai", "anthropic:claude-sonnet-4-5"], on_event=on_event
            )
            for _event in stream:
                pass
            result = stream.result()
        finally:
            client.close()
    assert len(seen) == 1
    text_after_failover, shown = seen[0]
    assert text_after_failover == ""
    assert "failover: openai -> anthropic" in shown
    view.finish(result)
    assert view.text == result.text
    bundle = view._repr_mimebundle_()
    assert "failover: openai -&gt; anthropic" in bundle["text/markdown"]
    assert "failover: openai -> anthropic" in bundle["text/plain"]


def test_a_failover_note_and_footer_keep_a_providers_long_words_short():
    # a provider's whole message ran to several wrapped lines in the footer's small print
    said = (
        "OVERLOADED: That model is currently overloaded with other requests. You can retry your request, "
        "or contact us through our help center at help.openai.com if the error persists."
    )
    view = StreamView("m", min_interval=0.0, live=False)
    view.on_event(Status(session_id=SID, state="failover", from_provider="a", to_provider="b", reason=said))
    (note,) = view._frame().notes
    assert note.startswith("failover: a -> b: OVERLOADED: That model") and note.endswith("…")
    completion = Completion("", "s", "b", "m", "stop", failovers=[f"a -> b: {said}"])
    assert "help.openai.com" not in completion.footer() and completion.failovers[0].endswith("persists.")
    assert note == "failover: " + completion.footer().split("failover: ", 1)[1]  # worded alike
    # on one line (a blank line would end the footer's small print), and cut mid-word when it must
    body = Completion("", "s", "b", "m", "stop", failovers=['a -> b: E: upstream said\n\n{"error": 1}'])
    assert body.footer().endswith('failover: a -> b: E: upstream said {"error": 1}')
    unbroken = Completion("", "s", "b", "m", "stop", failovers=["a -> b: E: " + "y" * 150]).footer()
    assert unbroken.count("y") > 50 and unbroken.endswith("…")


def test_a_synthetic_failover_resets_the_live_fragment():
    view = StreamView("m", min_interval=0.0, live=False)
    for event in tokens("old ", "text"):
        view.on_event(event)
    view.on_event(Status(session_id=SID, state="failover", from_provider="a", to_provider="b", reason="OVERLOADED"))
    fragment = view._frame().html[0]
    assert text_of(fragment) == ""
    assert "failover: a -&gt; b: OVERLOADED" in fragment
    view.on_event(Token(session_id=SID, text="new"))
    assert view.text == "new"


def test_an_error_event_shows_its_code_live_and_in_the_final_state():
    view = StreamView("gpt-4o", min_interval=0.0, live=False)
    view.on_event(Token(session_id=SID, text="partial"))
    view.on_event(Error(session_id=SID, code="RATE_LIMIT", message="slow down", provider="openai"))
    assert "<b>RATE_LIMIT</b>: slow down" in view._frame().html[0]
    exc = RateLimitError("slow down", provider="openai")
    view.finish(exc)
    bundle = view._repr_mimebundle_()
    assert "**RATE_LIMIT**: slow down" in bundle["text/markdown"]
    assert "[RATE_LIMIT] slow down" in bundle["text/plain"]
    assert "partial" in bundle["text/markdown"]  # what arrived before the error is kept
    # an error's footer says how far the answer got and when (done's latency never came)
    assert re.search(r"after 1 token, \d+\.\d\d s", bundle["text/plain"]), bundle["text/plain"]


def test_an_error_that_is_the_first_event_is_timed_from_the_request():
    """Over a remote transport a refusal after a wait (a 503 after 2 s) is often the only event: timed
    from it, the footer read 'after 0.00 s', an instant failure."""
    view = StreamView("gpt-4o", min_interval=0.0, live=False)
    view._answer.started -= 2.0  # the request began two seconds ago
    view.on_event(Error(session_id=SID, code="TIMEOUT", message="no answer", provider="gw"))
    view.finish(ProviderTimeoutError("no answer", provider="gw"))
    footer = re.search(r"after (\d+\.\d\d) s", view._repr_mimebundle_()["text/plain"])
    assert footer is not None and float(footer.group(1)) >= 2.0


def test_a_real_provider_error_shows_the_gtl_code(shell):
    with sim.running("openai", faults=sim.Fault.http(401)) as url:
        client = gtl_nb.connect(providers={"openai": {"api_key": "sim-key", "base_url": url}}, ledger=False, environ={})
        view = StreamView("gpt-4o-mini", live=True)
        view.display()
        try:
            stream = client.stream("gpt-4o-mini", "hi", on_event=view.on_event)
            for _event in stream:
                pass
            with pytest.raises(GTLError) as caught:
                stream.result()
        finally:
            client.close()
    view.finish(caught.value)
    final = shell.display_pub.outputs[-1][0]
    assert f"**{caught.value.code}**" in final["text/markdown"]
    assert f"[{caught.value.code}]" in final["text/plain"]


def test_the_bundle_carries_the_widget_view_while_live_and_the_text_forms_always(shell):
    view = StreamView("echo", live=True)
    view.on_event(Token(session_id=SID, text="so far"))
    live = view._repr_mimebundle_()
    assert {WIDGET_VIEW, "text/markdown", "text/plain"} <= set(live)
    assert "so far" in live["text/markdown"] and "so far" in live["text/plain"]
    view.finish(completion_of(Token(session_id=SID, text="so far, done"), Done(session_id=SID, provider="echo")))
    final = view._repr_mimebundle_()
    assert set(final) == {"text/markdown", "text/plain"}
    assert "so far, done" in final["text/markdown"]


def test_final_markdown_keeps_times_in_maskable_form_and_no_ids(shell):
    done = Done(session_id=SID, provider="echo", model="echo", ttft_ms=212.0, latency_ms=1400.0)
    usage = Usage(session_id=SID, tokens_in=3, tokens_out=5, cost=0.0)
    view = StreamView("echo", live=True)
    view.display()
    view.finish(completion_of(Token(session_id=SID, text="hi"), usage, done))
    markdown = shell.display_pub.outputs[-1][0]["text/markdown"]
    assert "first token 0.21 s · 1.40 s" in markdown
    assert SID not in markdown and "model_id" not in markdown


def test_finish_before_display_and_display_after_finish_show_the_final_state(shell):
    view = StreamView("echo", live=True)
    view.finish(completion_of(Token(session_id=SID, text="early"), Done(session_id=SID)))
    assert shell.display_pub.outputs == []
    view.display()
    [(bundle, _transient, update)] = shell.display_pub.outputs
    assert not update and "early" in bundle["text/markdown"]


def test_display_mode_updates_a_display_handle_then_shows_the_final_answer(shell, echo_client):
    view = StreamView("echo", min_interval=0.0, live=False)
    assert view.mode == "display"
    view.display()
    result = echo_client.complete("echo", "a display handle", on_event=view.on_event)
    view.finish(result)
    outputs = shell.display_pub.outputs
    first, final = outputs[0], outputs[-1]
    assert first[0] == {"text/plain": ""} and not first[2]  # what nbval records; updates fill it in
    live_updates = [o for o in outputs[1:-1] if o[0].get("text/html")]
    assert live_updates and all(o[2] and o[1] == first[1] for o in live_updates)
    assert outputs[-2] == ({"text/plain": ""}, first[1], True)
    assert no_math_markdown(result.text) in final[0]["text/markdown"] and not final[2]


def test_without_ipython_the_view_prints_the_tokens_then_the_footer(monkeypatch, capsys, echo_client):
    monkeypatch.setattr(widgets, "_frontend", lambda: "none")
    view = StreamView("echo", min_interval=0.0)
    assert view.mode == "print"
    view.display()
    stream = echo_client.stream("echo", "print me", on_event=view.on_event)
    for _event in stream:
        pass
    result = stream.result()
    view.finish(result)
    out = capsys.readouterr().out
    assert out == result.text + "\n-- " + result.footer() + "\n"


def test_without_ipython_live_false_prints_an_error_with_its_code(monkeypatch, capsys):
    monkeypatch.setattr(widgets, "_frontend", lambda: "none")
    view = StreamView("gpt-4o", live=False)
    view.display()
    view.on_event(Error(session_id=SID, code="TIMEOUT", message="too slow"))
    view.finish(ProviderTimeoutError("too slow"))
    assert "[TIMEOUT] too slow" in capsys.readouterr().out


def test_live_none_picks_widgets_only_in_a_kernel(monkeypatch):
    for where, mode in (("kernel", "widget"), ("shell", "display"), ("terminal", "print"), ("none", "print")):
        monkeypatch.setattr(widgets, "_frontend", lambda where=where: where)
        assert StreamView().mode == mode
        assert StreamView(live=False).mode == ("display" if where in ("kernel", "shell") else "print")


def test_events_from_other_threads_are_safe_and_the_final_state_comes_last(shell):
    view = StreamView("echo", min_interval=0.001, live=True)
    view.display()
    values = record_values(view.widget)
    start = threading.Barrier(5)
    errors: list[BaseException] = []

    def feed(n: int) -> None:
        try:
            start.wait()
            for i in range(300):
                view.on_event(Token(session_id=SID, text=f"{n}:{i} "))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=feed, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(view.text.split()) == 1200
    view.finish(completion_of(Token(session_id=SID, text="final words"), Done(session_id=SID)))
    seen = len(values)
    view.on_event(Token(session_id=SID, text="late"))  # after finish: ignored, nothing redrawn
    assert len(values) == seen
    assert view.text == "final words"
    assert shell.display_pub.outputs[-1][0]["text/plain"].startswith("== echo ==\nfinal words")


def test_finish_racing_with_a_stream_of_events_draws_the_final_state_last(shell):
    view = StreamView("echo", min_interval=0.0005, live=True)
    view.display()
    order: list[str] = []
    view.widget.observe(lambda change: order.append("live"), "value")
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            view.on_event(Token(session_id=SID, text="x"))

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        while "live" not in order:
            threading.Event().wait(0.001)
        view.finish(completion_of(Token(session_id=SID, text="the end"), Done(session_id=SID)))
        order.append("final")
    finally:
        stop.set()
        thread.join()
    assert order[-1] == "final"
    assert shell.display_pub.outputs[-1][0]["text/plain"] == "== echo ==\nthe end"  # no provider, no "-- ?" footer


# -- ComparisonGrid -------------------------------------------------------------------------------------


def test_the_grid_streams_every_column_at_once_and_ends_with_a_ranked_summary(shell):
    with sim.running("openai", pace=0.02) as oa, sim.running("anthropic", pace=0.02) as an:
        client = gtl_nb.connect(
            providers={
                "openai": {"api_key": "sim-key", "base_url": oa},
                "anthropic": {"api_key": "sim-key", "base_url": an},
                "echo": {"options": {"pace": 0.02}},
            },
            ledger=False,
            environ={},
        )
        models = ["gpt-4o-mini", "claude-sonnet-4-5", "echo", "no-such-model"]
        grid = ComparisonGrid(models, min_interval=0.0, live=True)
        grid.display()
        columns = {model: record_values(cell) for model, cell in zip(models, grid._surface.cells, strict=True)}
        try:
            comparison = client.compare(models, "compare us", on_event=grid.on_event)
        finally:
            client.close()
    grid.finish(comparison)

    for model in models[:3]:
        answer = comparison.results[model]
        partial = [text_of(v) for v in columns[model]]
        assert any(p and p != answer.text and answer.text.startswith(p) for p in partial), model
        assert all(f'data-model="{model}"' in v for v in columns[model])
        assert grid.text(model) == answer.text
    final = shell.display_pub.outputs[-1][0]
    markdown, plain = final["text/markdown"], final["text/plain"]
    for model in models[:3]:
        assert f'class="gtl-stream gtl-final" data-model="{model}"' in markdown
        assert no_math_markdown(comparison.results[model].text) in markdown
    assert "**MODEL_NOT_FOUND**" in markdown and "[MODEL_NOT_FOUND]" in plain
    # the summary: one row per model, ranked, as a markdown table and in plain text
    assert list(grid.summary["model"])[-1] == "no-such-model"
    assert sorted(grid.summary["model"]) == sorted(models)
    header = "| model | provider | status | error | tokens_in | tokens_out | cost |"
    assert header in markdown
    # the price is a dollar MathJax cannot pair with another into a formula
    row = r"\| echo \| echo \| ok \|  \| \d+ \| \d+ \| <span>&#36;</span>0 \| \d+\.\d\d s \| \d+\.\d\d s \|"
    assert re.search(row, markdown)
    assert "no-such-model" in plain.splitlines()[-1]


def test_a_failed_column_shows_its_code_while_the_others_finish(shell):
    grid = ComparisonGrid(["a", "b"], min_interval=0.0, live=True)
    grid.display()
    grid.on_event("a", Token(session_id=SID, text="fine"))
    grid.on_event("b", Error(session_id=SID, code="OVERLOADED", message="busy"))
    cells = [cell.value for cell in grid._surface.cells]
    assert text_of(cells[0]) == "fine"
    assert "<b>OVERLOADED</b>" in cells[1]
    comparison = Comparison(
        models=["a", "b"],
        results={
            "a": completion_of(Token(session_id=SID, text="fine"), Done(session_id=SID, provider="x")),
            "b": OverloadedError("busy"),
        },
    )
    grid.finish(comparison)
    bundle = grid._repr_mimebundle_()
    assert "**OVERLOADED**: busy" in bundle["text/markdown"]
    assert "fine" in bundle["text/markdown"]
    assert re.search(r"after \d+\.\d\d s", bundle["text/markdown"])  # the failed column's time, not nothing
    assert "after" not in bundle["text/markdown"].split("**OVERLOADED**")[0]  # the answered one: its own footer

    # a model refused before its session began (no event came): no time of the others' run
    grid = ComparisonGrid(["a", "nosuch"], min_interval=0.0, live=True)
    grid.on_event("a", Token(session_id=SID, text="fine"))
    refused = Comparison(
        models=["a", "nosuch"],
        results={
            "a": completion_of(Token(session_id=SID, text="fine"), Done(session_id=SID, provider="x")),
            "nosuch": OverloadedError("no such model"),
        },
    )
    grid.finish(refused)
    assert "after" not in grid._repr_mimebundle_()["text/markdown"]


def test_grid_events_from_the_loop_thread_and_others_are_safe(shell):
    models = [f"m{i}" for i in range(4)]
    grid = ComparisonGrid(models, min_interval=0.001, live=True)
    grid.display()

    def feed(model: str) -> None:
        for i in range(200):
            grid.on_event(model, Token(session_id=SID, text=f"{i} "))

    threads = [threading.Thread(target=feed, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = "".join(f"{i} " for i in range(200))
    assert all(grid.text(m) == expected for m in models)
    grid.finish(Comparison(models=models, results={m: completion_of(*tokens(expected)) for m in models}))
    assert grid.finished and grid.widget.comm is None


def test_the_grid_without_ipython_prints_the_comparison_once(monkeypatch, capsys):
    monkeypatch.setattr(widgets, "_frontend", lambda: "none")
    grid = ComparisonGrid(["a", "b"], live=False)
    grid.display()
    grid.on_event("a", Token(session_id=SID, text="alpha"))
    assert capsys.readouterr().out == ""
    grid.finish(
        Comparison(
            models=["a", "b"],
            results={"a": completion_of(*tokens("alpha")), "b": InternalError("boom")},
        )
    )
    out = capsys.readouterr().out
    assert "== a ==\nalpha" in out and "[INTERNAL] boom" in out and "rank latency" in out


# -- EntityEditor ---------------------------------------------------------------------------------------


@pytest.fixture
def wrapped():
    message = gap.wrap_message("The system needs optimization and the config is wrong", "claude.ai", "m1")
    assert gap.find_undefined(message) == ["the_system", "the_config"]
    return message


def test_the_editor_has_one_field_per_undefined_entity_and_the_button_applies_them(shell, wrapped):
    applied = []
    editor = EntityEditor(wrapped, on_apply=applied.append, live=True)
    editor.display()
    [(bundle, _transient, _update)] = shell.display_pub.outputs
    assert {WIDGET_VIEW, "text/markdown", "text/plain"} <= set(bundle)
    assert "<code>the&#95;system</code>" in bundle["text/markdown"] and "(undefined)" in bundle["text/plain"]
    assert sorted(editor._fields) == ["the_config", "the_system"]
    editor._fields["the_system"].value = "PostgreSQL 14.5 cluster"
    button = editor.widget.children[-1].children[0]
    button.click()
    assert applied and applied[-1].entities["the_system"].value == "PostgreSQL 14.5 cluster"
    assert editor.wrapped.entities["the_system"].defined_in == "m1"
    assert editor.undefined == ["the_config"]
    assert "the_config" in editor._status.value
    result = editor.apply({"the_config": "config.yaml"})
    assert result is editor.wrapped and gap.find_undefined(result) == []
    assert editor._fields["the_config"].value == "config.yaml"
    assert "all entities defined" in editor._status.value


def test_the_editor_without_widgets_applies_values_and_rejects_unknown_keys(monkeypatch, capsys, wrapped):
    monkeypatch.setattr(widgets, "_frontend", lambda: "none")
    editor = EntityEditor(wrapped)
    editor.display()
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint == 'Define them with %gap entities the_system="..." the_config="...".'  # no editor to apply() on
    updated = editor.apply({"the_system": "the billing service", "the_config": "  "})
    assert updated.entities["the_system"].value == "the billing service"
    assert editor.undefined == ["the_config"]
    with pytest.raises(KeyError, match="no entity 'the_moon'"):
        editor.apply({"the_moon": "cheese"})
    assert "the billing service" in editor._repr_mimebundle_()["text/markdown"]


def test_suggestions_prefill_the_fields(shell, wrapped):
    suggestions = gap.suggest_definitions(wrapped, ask=lambda prompt: "the_system: the payments API")
    editor = EntityEditor(wrapped, suggestions=suggestions, live=True)
    editor.display()
    assert editor._fields["the_system"].value == "the payments API"
    assert editor.apply().entities["the_system"].value == "the payments API"


def test_a_view_shown_through_its_bundle_draws_the_final_state_into_its_widget(shell):
    view = StreamView("echo", min_interval=0.0, live=True)
    view.on_event(Token(session_id=SID, text="half"))
    bundle = view._repr_mimebundle_()  # what IPython does for a bare `view` at the end of a cell
    assert WIDGET_VIEW in bundle and text_of(view.widget.value) == "half"
    view.finish(completion_of(Token(session_id=SID, text="half and whole"), Done(session_id=SID)))
    assert 'class="gtl-stream gtl-final"' in view.widget.value
    assert text_of(view.widget.value) == "half and whole"
    assert shell.display_pub.outputs == []  # nothing published behind the user's back


# -- static forms beside every widget --------------------------------------------------------------


def static_form(bundle: dict) -> str:
    return bundle.get("text/markdown") or bundle.get("text/html") or ""


def test_every_output_that_keeps_a_widget_view_carries_a_static_form_beside_it(shell, wrapped, echo_client):
    StreamView("echo", live=True).display()  # a live area left unfinished (the kernel died, say)
    view = StreamView("echo", live=True)
    view.display()
    view.finish(echo_client.complete("echo", "finished"))
    EntityEditor(wrapped, live=True).display()
    grid = ComparisonGrid(["a", "b"], live=True)
    grid.on_event("a", Token(session_id=SID, text="so far"))
    bundles = [*shell.display_pub.saved(), grid._repr_mimebundle_()]
    kept = [bundle for bundle in bundles if WIDGET_VIEW in bundle]
    assert len(kept) == 3  # the unfinished live area, the editor, the grid shown as a value
    unfinished, *others = kept
    assert set(unfinished) == {WIDGET_VIEW, "text/plain"}  # a live area: a placeholder that ends empty
    assert all(static_form(bundle).strip() for bundle in others)


def test_a_batchs_progress_bar_saves_its_final_count_as_text(shell, echo_client, monkeypatch):
    from gtl_nb import progress

    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    results = echo_client.batch(["one", "two", {"model": "no-such-model", "messages": "x"}], model="echo")
    assert len(results) == 3
    [saved] = shell.display_pub.saved()  # the bar, as a saved notebook keeps it
    assert WIDGET_VIEW in saved
    assert saved["text/plain"].endswith("] 3/3, 1 failed"), saved["text/plain"]
    assert "value=0" not in saved["text/plain"]


def test_the_editor_becomes_its_table_once_every_entity_is_defined(shell, wrapped):
    editor = EntityEditor(wrapped, live=True)
    editor.display()
    editor.apply({"the_system": "the billing service"})
    [saved] = shell.display_pub.saved()
    assert WIDGET_VIEW in saved  # one entity left: the editor stays
    editor.apply({"the_config": "config.yaml"})
    [saved] = shell.display_pub.saved()
    assert WIDGET_VIEW not in saved and "config.yaml" in saved["text/markdown"]
    assert editor.widget.comm is None  # closed
    shell.display_pub.outputs.clear()
    EntityEditor(editor.wrapped, live=True).display()  # nothing to define: no widget at all
    [(bundle, _transient, _update)] = shell.display_pub.outputs
    assert WIDGET_VIEW not in bundle and "the billing service" in bundle["text/markdown"]


def test_a_cancelled_answer_ends_with_the_footer_of_what_arrived_marked_cancelled(shell):
    cancelled = Error(session_id=SID, code="CANCELLED", message="cancelled")
    partial = completion_of(Token(session_id=SID, text="Once"), Token(session_id=SID, text=" upon"), cancelled)
    assert partial.footer() == "2 chunks arrived · cancelled"  # no usage came: the pieces of text that did
    view = StreamView("gpt-4o", live=True)
    view.display()
    view.finish(partial)
    final = shell.display_pub.saved()[-1]
    assert final["text/plain"] == "== gpt-4o ==\nOnce upon\n-- 2 chunks arrived · cancelled"  # no CANCELLED error line
    assert "CANCELLED" not in final["text/markdown"]
    assert "<sub>2 chunks arrived · cancelled</sub>" in final["text/markdown"]
    usage = Usage(session_id=SID, tokens_in=8, tokens_out=3, cost=0.5)
    reported = completion_of(Token(session_id=SID, text="Once"), usage, cancelled)
    assert reported.footer() == "8 in · 3 out · $0.5000 · cancelled"
    shown = partial._repr_markdown_()  # the Completion as a cell's value: the same, no error line
    assert "CANCELLED" not in shown and shown.endswith("<sub>2 chunks arrived · cancelled</sub>")


def test_finish_without_the_error_keeps_what_arrived_and_shows_nothing_when_nothing_did(shell):
    view = StreamView("gpt-4o", live=True)
    view.display()
    view.finish(RateLimitError("slow down", provider="openai"), show_error=False)
    assert shell.display_pub.saved() == [{"text/plain": ""}]  # the live area, emptied; no final output
    shell.display_pub.outputs.clear()
    view = StreamView("gpt-4o", live=True)
    view.display()
    view.on_event(Token(session_id=SID, text="half an answer"))
    partial = completion_of(
        Token(session_id=SID, text="half an answer"), Error(session_id=SID, code="RATE_LIMIT", message="slow down")
    )
    view.finish(partial, show_error=False)
    final = shell.display_pub.saved()[-1]
    assert "half an answer" in final["text/markdown"] and "RATE_LIMIT" not in final["text/markdown"]
    assert "-- ?" not in final["text/plain"]


def test_dollars_in_live_and_final_forms_are_never_math(shell):
    view = StreamView("gpt-4o", min_interval=0.0, live=False)  # display mode: text/html updates
    view.display()
    view.on_event(Token(session_id=SID, text="It costs $5, or $0.15 per 1M"))
    view.finish(completion_of(Token(session_id=SID, text="It costs $5, or $0.15 per 1M"), Done(session_id=SID)))
    forms = [static_form(data) for data, _transient, _update in shell.display_pub.outputs]
    shown = [form for form in forms if "costs" in form]
    assert len(shown) >= 2 and all("$" not in form for form in shown)
    assert "$5" in view._repr_mimebundle_()["text/plain"]  # plain text is plain


def test_a_column_that_failed_over_is_titled_with_what_answered_instead(shell):
    grid = ComparisonGrid(["gpt-4o", "echo"], min_interval=0.0, live=True)
    grid.display()
    moved = Status(session_id=SID, state="failover", from_provider="openai", to_provider="backup", reason="500")
    grid.on_event("gpt-4o", moved)
    grid.on_event("gpt-4o", Token(session_id=SID, text="hi"))
    assert "gpt-4o → backup" in grid._surface.cells[0].value  # while it streams: where it went
    done = Done(session_id=SID, provider="backup", model="gpt-4o-mini")
    grid.on_event("gpt-4o", done)
    grid.on_event("echo", Token(session_id=SID, text="yo"))
    grid.on_event("echo", Done(session_id=SID, provider="echo", model="echo"))
    comparison = Comparison(
        models=["gpt-4o", "echo"],
        results={
            "gpt-4o": completion_of(moved, Token(session_id=SID, text="hi"), done),
            "echo": completion_of(Token(session_id=SID, text="yo"), Done(session_id=SID, provider="echo")),
        },
    )
    grid.finish(comparison)
    bundle = grid._repr_mimebundle_()
    assert "**gpt-4o → backup:gpt-4o-mini**" in bundle["text/markdown"]
    assert "== gpt-4o -> backup:gpt-4o-mini ==" in bundle["text/plain"]
    assert "**echo**" in bundle["text/markdown"] and "echo →" not in bundle["text/markdown"]  # no failover, no arrow
