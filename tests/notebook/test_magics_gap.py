"""``%%gap`` / ``%gap``: cells and answers as GAP messages, context transfer, entities, graph, export."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from IPython.utils.capture import capture_output

import gtl_nb
from gtl_nb import gap, sim
from gtl_nb.notebook import widgets

from .conftest import deployments, loaded_shell, mistake, run, session_of


@pytest.fixture(scope="module")
def sims():
    servers = {"openai": sim.serve("openai", seed=4), "anthropic": sim.serve("anthropic", seed=5)}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def ip(tmp_path, monkeypatch, sims):
    yield from loaded_shell(tmp_path, monkeypatch, deployments(sims))


def test_a_cell_is_wrapped_with_its_chat_id_time_role_and_thread(ip):
    result, text = run(ip, "%%gap --thread db --out msg\nThe system needs optimization")
    assert result.success, text
    wrapped = ip.user_ns["_gap"]
    assert ip.user_ns["msg"] is wrapped
    assert isinstance(wrapped, gap.WrappedMessage)
    assert wrapped.content == "The system needs optimization"
    assert wrapped.chat_id == f"nb-{result.execution_count}"  # the In[n] of the cell that ran
    assert (wrapped.role, wrapped.platform, wrapped.thread_id, wrapped.parent_messages) == (
        "user",
        "generic",
        "db",
        (),
    )
    stamp = datetime.fromisoformat(wrapped.timestamp.replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)
    assert wrapped.undefined == ("the_system",)
    assert "[GAP:START]" in text and "the_system" in text and "%gap entities" in text


def test_the_parent_is_the_previous_message_of_the_same_thread_unless_reply_to(ip):
    run(ip, "%%gap --thread a --id a1\nfirst in a")
    run(ip, "%%gap --thread b --id b1\nfirst in b")
    run(ip, "%%gap --thread a --id a2\nsecond in a")
    assert ip.user_ns["_gap"].parent_messages == ("a1",)
    run(ip, "%%gap --thread b --id b2 --reply-to x9\nsecond in b")
    assert ip.user_ns["_gap"].parent_messages == ("x9",)
    run(ip, "%%gap --id loose\nno thread")
    assert ip.user_ns["_gap"].parent_messages == ()
    run(ip, "%%gap --id a1 --thread a\nfirst in a, edited")  # re-running a cell replaces its message
    assert [m.chat_id for m in session_of(ip).gap_messages] == ["a1", "b1", "a2", "b2", "loose"]
    assert session_of(ip).gap_messages[0].content == "first in a, edited"


def test_a_cell_run_again_keeps_its_parent_not_a_later_message_of_its_thread(ip):
    for chat_id in ("q1", "q2", "q3"):
        run(ip, f"%%gap --thread db --id {chat_id}\nmessage {chat_id}")
    run(ip, "%%gap --thread db --id q2\nmessage q2, edited")  # q3 replies to q2: q2 must not reply to q3
    run(ip, "%%gap --thread db --id q1\nmessage q1, edited")
    parents = {m.chat_id: m.parent_messages for m in session_of(ip).gap_messages}
    assert parents == {"q1": (), "q2": ("q1",), "q3": ("q2",)}
    assert gap.reply_chain(gap.create_context_graph(session_of(ip).gap_messages), "q3") == ["q1", "q2", "q3"]


def test_options_set_platform_role_model_and_the_target_transform(ip):
    result, text = run(
        ip,
        "%%gap --platform claude.ai --role assistant --id c1 --model m1 --to chatgpt\nI think my plan works",
    )
    assert result.success, text
    wrapped = ip.user_ns["_gap"]
    assert (wrapped.platform, wrapped.role, wrapped.chat_id, wrapped.model) == (
        "claude.ai",
        "assistant",
        "c1",
        "m1",
    )
    expected = gap.transform_for_platform(wrapped, "chatgpt")
    assert expected.startswith("# Context")
    assert expected in text
    assert "the AI assistant thinks" in expected or "the AI assistant" in expected


def test_a_pasted_gap_message_is_read_as_it_is_not_wrapped_again(ip):
    sent = gap.wrap_message(
        "The system needs an index.", "claude.ai", "c-7", role="assistant", model="m1", thread_id="perf"
    )
    result, text = run(ip, f"%%gap --out got --to chatgpt\n{gap.to_markdown(sent)}\n")
    assert result.success, text
    assert ip.user_ns["got"] == sent and session_of(ip).gap_messages == [sent]  # not a message about a message
    assert "[\\GAP:START]" not in text and gap.transform_for_platform(sent, "chatgpt") in text
    # malformed, or wrapped again by options: one line saying why, nothing kept
    unended = gap.to_markdown(sent).replace("[GAP:END]", "")
    assert "is not a GAP message: " in mistake(ip, f"%%gap\n{unended}") and "[GAP:END]" in mistake(
        ip, f"%%gap\n{unended}"
    )
    assert "drop --thread, --id" in mistake(ip, f"%%gap --thread t --id x\n{gap.to_markdown(sent)}")
    assert "in a cell of its own" in mistake(ip, f"%%gap\n{gap.to_markdown(sent)}\nand a note below")
    assert session_of(ip).gap_messages == [sent]


def test_from_a_variable_holding_gap_text_reads_it_as_a_pasted_cell_would(ip):
    sent = gap.wrap_message("The system needs an index.", "claude.ai", "c-8", role="assistant", thread_id="perf")
    ip.user_ns["md"] = "\n" + gap.to_markdown(sent) + "\n"
    result, text = run(ip, "%gap --from md --out got --to chatgpt")
    assert result.success, text
    assert ip.user_ns["got"] == sent and session_of(ip).gap_messages == [sent]  # not a message about a message
    assert "drop --thread" in mistake(ip, "%gap --from md --thread t")
    ip.user_ns["md"] = gap.to_markdown(sent).replace("[GAP:END]", "")
    assert "'md' starts with [GAP:START] but is not a GAP message: " in mistake(ip, "%gap --from md")
    ip.user_ns["md"] = gap.to_markdown(sent) + "\nand a note below"
    assert "keep the message alone in 'md'" in mistake(ip, "%gap --from md")
    assert session_of(ip).gap_messages == [sent]


def test_from_a_variable_holding_a_gap_message_object_or_its_json_reads_it_as_it_is(ip):
    sent = gap.wrap_message("The system needs an index.", "claude.ai", "c-9", role="assistant", thread_id="perf")
    for held in (sent, gap.to_json(sent), gap.to_dict(sent)):
        ip.user_ns["held"] = held
        result, text = run(ip, "%gap --from held --out got --to chatgpt")
        assert result.success, text
        assert ip.user_ns["got"] == sent  # the message itself, not a message about it
        assert gap.transform_for_platform(sent, "chatgpt") in text
    assert session_of(ip).gap_messages == [sent]  # (one message, however often it is read)
    assert "drop --role" in mistake(ip, "%gap --from held --role user")
    ip.user_ns["held"] = gap.to_json(sent).replace('"content"', '"contents"')
    assert "'held' holds GAP JSON that is not a GAP message: " in mistake(ip, "%gap --from held")
    # text that only mentions GAP's key is text to wrap: JSON whose top has no gap_version, or no JSON
    for text in (
        '{"question": "what is a gap_version?"}',
        json.dumps({"examples": [{"gap_version": "0.1.0"}]}),
        '{"gap_version": "0.1.0", ...} - what does this field mean?',
    ):
        ip.user_ns["held"] = text
        result, _ = run(ip, "%gap --from held --out plain")
        assert result.success and ip.user_ns["plain"].content == text


def test_from_a_variable_holding_gap_json_with_a_bom_or_an_escaped_key_reads_it(ip):
    sent = gap.wrap_message("The system needs an index.", "claude.ai", "c-10", thread_id="perf")
    document = gap.to_json(sent)
    for held in ("\ufeff" + document, document.replace('"gap_version"', '"gap\\u005fversion"', 1)):
        ip.user_ns["held"] = held
        result, text = run(ip, "%gap --from held --out got")
        assert result.success, text
        assert ip.user_ns["got"] == sent  # the message itself, not a message about its JSON
    assert session_of(ip).gap_messages == [sent]


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        ("[" * 70 + "]" * 70, "nested deeper than 64"),
        ("1" * 100_000, "a number longer than"),
    ],
    ids=["deep", "long-number"],
)
def test_gap_json_beyond_a_limit_is_refused_in_one_line_not_wrapped(ip, value, limit):
    document = gap.to_json(gap.wrap_message("The system.", "claude.ai", "c-11", thread_id="perf"))
    beyond = document.replace('"thread_id":"perf"', f'"thread_id":{value}', 1)
    assert beyond != document
    for held in (beyond, "\ufeff" + beyond, beyond.replace('"gap_version"', '"gap\\u005fversion"', 1)):
        ip.user_ns["held"] = held
        refused = mistake(ip, "%gap --from held --out got")
        assert refused.startswith("--from: 'held' holds GAP JSON beyond GAP's limits: ") and limit in refused
        assert "\n" not in refused
        assert limit in mistake(ip, "%gap entities held")  # read as a message elsewhere: the same reason
    assert "got" not in ip.user_ns and session_of(ip).gap_messages == []
    # other JSON beyond a limit, mentioning GAP's key or not, is still text to wrap
    ip.user_ns["held"] = '{"examples": [{"gap_version": "0.1.0"}], "n": ' + value + "}"
    result, _ = run(ip, "%gap --from held --out plain")
    assert result.success and ip.user_ns["plain"].content == ip.user_ns["held"]


def test_gap_json_pasted_in_a_cell_is_read_as_it_is_as_pasted_markdown_is(ip):
    """GAP's JSON form (``gtl gap wrap --to-json``, a line of ``%gap export``) pasted into a cell is a
    message, read as it is — it was wrapped as text, a message about a message. JSON that is not
    GAP's stays text to wrap; GAP JSON that cannot be read is one line saying why."""
    sent = gap.wrap_message("The system needs an index.", "claude.ai", "c-12", role="assistant", thread_id="perf")
    document = gap.to_json(sent)
    for pasted in (document, "\ufeff" + document, "\n  " + document.replace('"gap_version"', '"gap\\u005fversion"', 1)):
        result, text = run(ip, f"%%gap --out got --to chatgpt\n{pasted}\n")
        assert result.success, text
        assert ip.user_ns["got"] == sent and gap.transform_for_platform(sent, "chatgpt") in text
    assert session_of(ip).gap_messages == [sent]
    assert "drop --role" in mistake(ip, f"%%gap --role user\n{document}")
    broken = document.replace('"content"', '"contents"')
    refused = mistake(ip, f"%%gap\n{broken}")
    assert refused.startswith("%%gap: the cell holds GAP JSON that cannot be read: ") and "\n" not in refused
    deep = document.replace('"thread_id":"perf"', '"thread_id":' + "[" * 70 + "]" * 70, 1)
    assert "nested deeper than 64" in mistake(ip, f"%%gap\n{deep}")
    for cut_short in (document[:-5], document[:-1] + ",}"):  # a paste cut short, a trailing comma
        refused = mistake(ip, f"%%gap\n{cut_short}")
        assert refused.startswith("%%gap: the cell holds GAP JSON that cannot be read: "), refused
    result, _ = run(ip, f"%%gap --out got\n\ufeff\n  {document}")  # a byte-order mark before blank lines
    assert result.success and ip.user_ns["got"] == sent
    for other in ('{"question": "what is a gap_version?"}', '{"gap": "version"} - what is this?'):
        result, _ = run(ip, f"%%gap --out plain\n{other}")
        assert result.success and ip.user_ns["plain"].content == other  # text to wrap
    assert session_of(ip).gap_messages[0] == sent


@pytest.mark.parametrize(
    "bad",
    [
        lambda doc: doc.replace('"role":"assistant"', '"role":"' + "x\\n" * 200_000 + '"', 1),
        lambda doc: doc.replace('"entities":{', '"entities":{"' + "k\\n" * 100_000 + '":{"type":1},', 1),
        lambda doc: doc.replace('"gap_version":"0.1.0"', '"gap_version":"' + "9" * 100_000 + '"', 1),
    ],
    ids=["role", "entity-key", "version"],
)
def test_a_gap_json_mistake_is_one_short_line_whatever_the_document_held(ip, bad):
    document = gap.to_json(gap.wrap_message("The system.", "claude.ai", "c-13", role="assistant"))
    broken = bad(document)
    assert broken != document
    refused = mistake(ip, f"%%gap\n{broken}")
    assert refused.startswith("%%gap: the cell holds GAP JSON that cannot be read: ")
    assert "\n" not in refused and len(refused) < 600, (len(refused), refused[:200])


def test_two_pasted_gap_messages_are_refused_in_the_magics_words(ip):
    first, second = (gap.wrap_message(f"The system {n}.", "chatgpt", f"c-{n}") for n in (1, 2))
    both = f"{gap.to_markdown(first)}\n\n{gap.to_markdown(second)}"
    refused = mistake(ip, f"%%gap\n{both}")
    assert refused == (
        "%%gap: the cell holds 2 GAP messages, and %%gap reads one; paste each in a %%gap cell of its own"
    )
    ip.user_ns["md"] = both
    assert "'md' holds 2 GAP messages" in mistake(ip, "%gap --from md")
    assert session_of(ip).gap_messages == []


def test_text_that_only_begins_with_the_start_marker_is_wrapped_as_text(ip):
    """A marker counts only on a line of its own (GAP's grammar): a question that quotes one is text to
    wrap, as before the pasted cell was read as a message."""
    result, text = run(ip, "%%gap --out asked\n[GAP:START] is what my export begins with: why?")
    assert result.success, text
    assert ip.user_ns["asked"].content == "[GAP:START] is what my export begins with: why?"


def test_text_after_the_end_marker_is_refused_also_when_its_line_ends_with_a_marker(ip):
    sent = gap.wrap_message("The system needs an index.", "claude.ai", "c-8")
    pasted = gap.to_markdown(sent) + "\nand this line too [GAP:END]"
    assert "text follows the GAP message's [GAP:END] in the cell" in mistake(ip, f"%%gap\n{pasted}")
    assert session_of(ip).gap_messages == []


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("%%gap --to myspace\nhello", "myspace"),
        ("%%gap --role robot\nhello", "robot"),
        ("%gap --from-last --from x", "not allowed"),
        ("%%gap --from-last\nsome text", "leave the cell empty"),
        ("%gap --from-last", "no answer yet"),
        ("%gap --from nothing", "'nothing' is not defined"),
        ("%gap --from In", "'In' is a list, not a Completion, text or GAP message"),
        ("%gap entities", "no GAP message yet"),
        ("%gap graph", "no GAP messages"),
        ("%gap export out.jsonl", "no GAP messages"),
        ("%gap dance", "unknown %gap subcommand"),
        ("%%gap --token abc\nhi", "refusing --token"),
    ],
)
def test_gap_mistakes_are_one_line(ip, source, fragment):
    assert fragment in mistake(ip, source)


def test_an_export_of_a_message_with_a_lone_surrogate_is_written_and_read_back(ip, tmp_path):
    """A pasted message read with a lone surrogate's escape (``"\\ud800"``) could not be written as UTF-8
    (the export refused it): GAP JSON writes the escape, so the file holds it and reads back the same."""
    from gtl_nb import gap

    target = tmp_path / "out.jsonl"
    block = '[GAP:START]\nFrom: p\nChat: pasted\nContext: user\nEntities: "k" = "\\ud800"\n[GAP:CONTENT]\nx\n[GAP:END]'
    result, text = run(ip, f"%%gap\n{block}")
    assert result.success, text
    result, text = run(ip, f"%gap export {target}")
    assert result.success, text
    assert gap.from_json(target.read_bytes()) == gap.from_markdown(block)


def test_a_message_with_a_lone_surrogate_is_shown_as_a_kernel_can_send_it(ip):
    """A kernel sends every output as UTF-8 JSON: a lone surrogate in a message's text (kept by GAP)
    failed the cell with a traceback from the kernel's message packing — after the message had joined
    the notebook's list, so each retry added a copy. It is shown as its escape."""
    ip.user_ns["pasted"] = "lone \ud800 surrogate the database"
    with capture_output() as captured:
        result = ip.run_cell("%gap --from pasted --out m", store_history=True)
    assert result.success, result.error_in_exec
    for output in captured.outputs:
        json.dumps(output.data, ensure_ascii=False).encode("utf-8")  # what the kernel does with it
    shown = "".join(output.data.get("text/plain", "") for output in captured.outputs)
    assert "lone \\ud800 surrogate" in shown
    assert ip.user_ns["m"].content == "lone \ud800 surrogate the database"  # the message keeps it


@pytest.mark.parametrize(
    ("model", "platform", "deployment"),
    [
        ("gpt-4o-mini", "chatgpt", "openai"),
        ("claude-haiku-4-5", "claude.ai", "anthropic"),
        ("echo", "generic", "echo"),
    ],
)
def test_from_last_wraps_the_last_answer_with_its_provider_platform(ip, model, platform, deployment):
    result, text = run(ip, f"%%gtl {model}\nThe database is slow, what should I do?")
    assert result.success, text
    answer = ip.user_ns["_gtl"]
    result, text = run(ip, "%gap --from-last --thread t")
    assert result.success, text
    wrapped = ip.user_ns["_gap"]
    assert wrapped.content == answer.text
    assert (wrapped.platform, wrapped.role, wrapped.chat_id) == (platform, "assistant", answer.session_id)
    assert wrapped.model == answer.model
    assert wrapped.timestamp == session_of(ip).finished_at(answer)
    assert wrapped.thread_id == "t"


def test_from_var_wraps_a_completion_made_in_code(ip):
    ip.user_ns["answer"] = gtl_nb.connect(ledger=False).complete("echo", "hello from code")
    result, _ = run(ip, "%gap --from answer --to gemini")
    assert result.success
    wrapped = ip.user_ns["_gap"]
    assert wrapped.content == ip.user_ns["answer"].text
    assert wrapped.chat_id == ip.user_ns["answer"].session_id


def test_an_answer_without_text_is_not_wrapped(ip):
    """An answer made only of tool calls has no text: wrapped, it was an empty GAP message — which an
    empty ``%%gap`` cell is refused for."""
    from gtl_nb.completion import Completion
    from gtl_nb.protocol import ToolCall

    ip.user_ns["calls_only"] = Completion(
        text="",
        session_id="s1",
        provider="echo",
        model="echo",
        finish_reason="tool_calls",
        tool_calls=[ToolCall(id="c1", name="lookup")],
    )
    message = mistake(ip, "%gap --from calls_only")
    assert "that answer has no text to wrap (its 1 tool call(s) are no message)" in message


@pytest.mark.parametrize(
    ("model", "server", "marker"),
    [
        ("claude-haiku-4-5", "anthropic", "[Context from GAP-wrapped message]"),
        ("gpt-4o-mini", "openai", "# Context"),
    ],
)
def test_context_sends_the_message_transformed_for_the_models_platform(ip, sims, model, server, marker):
    run(ip, "%%gap --platform gemini --role assistant --id g1 --out msg\nThe system uses PostgreSQL 14.")
    run(ip, "%gap entities the_system='PostgreSQL 14 cluster'")
    result, text = run(ip, f"%%gtl {model} --context msg --system 'Be brief.'\nCarry on from there")
    assert result.success, text
    body = json.loads(sims[server].requests[-1].body)
    system = body["system"] if server == "anthropic" else body["messages"][0]["content"]
    system = system if isinstance(system, str) else " ".join(part["text"] for part in system)
    expected = gap.transform_for_platform(
        session_of(ip).gap_messages[-1], "claude.ai" if server == "anthropic" else "chatgpt"
    )
    assert marker in system and expected in system and "Be brief." in system
    assert "PostgreSQL 14 cluster" in system
    # the context first, as docs/magics.md says: the stable, long part leads (a cached prefix survives a
    # changed --system), and the cell's own instruction comes last, after what it is about
    assert system.index(expected) < system.index("Be brief.")


def test_context_accepts_gap_json_text_and_refuses_other_values(ip):
    wrapped = gap.wrap_message("The framework is old", "chatgpt", "x1")
    ip.user_ns["msg"] = gap.to_json(wrapped)
    result, _ = run(ip, "%%gtl echo --context msg\ngo")
    assert result.success
    ip.user_ns["msg"] = 42
    assert "'msg' is an int, not a GAP message" in mistake(ip, "%%gtl echo --context msg\ngo")
    assert "'nothing' is not defined" in mistake(ip, "%%gtl echo --context nothing\ngo")


def test_entities_shows_the_undefined_and_key_value_defines_them(ip, monkeypatch):
    editors = []

    class Spy(widgets.EntityEditor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            editors.append(self)

    monkeypatch.setattr(widgets, "EntityEditor", Spy)
    run(ip, "%%gap --id m1\nThe system and the database are slow")
    result, text = run(ip, "%gap entities")
    assert result.success, text
    assert editors[-1].keys == ["the_system", "the_database"]
    assert "the_system" in text and "undefined" in text
    # the editor's Apply updates the notebook's message
    editors[-1].apply({"the_database": "PostgreSQL 14"})
    assert session_of(ip).gap_messages[-1].entities["the_database"].value == "PostgreSQL 14"
    assert ip.user_ns["_gap"].entities["the_database"].value == "PostgreSQL 14"
    result, text = run(ip, "%gap entities the_system='the billing service'")
    assert result.success
    assert "defined the_system in m1" in text and "no undefined entities left in m1" in text
    assert session_of(ip).gap_messages[-1].entities["the_system"].value == "the billing service"


def test_entities_warn_about_a_name_the_message_does_not_have_and_say_what_they_did(ip):
    run(ip, "%%gap --id m1\nThe system is slow")
    result, text = run(ip, "%gap entities nosuch=1 the_sytem='the billing service'")
    assert result.success, text
    assert "warning: 'nosuch' is not an entity of m1 (its entities: the_system)" in text
    assert "did you mean 'the_system'?" in text  # the typo, named
    assert "added it as a new entity" in text and "defined nosuch, the_sytem in m1" in text
    assert "no undefined entities" not in text  # the_system is still undefined: the editor is shown
    entities = session_of(ip).gap_messages[-1].entities
    assert entities["nosuch"].value == "1" and entities["the_system"].value is None


def test_entities_suggest_with_asks_that_model_and_apply_takes_the_best(ip, monkeypatch):
    asked = []
    client = session_of(ip).client()

    def as_ask(model=None, **kwargs):
        def ask(prompt):
            asked.append((model, prompt))
            return "the_system: PostgreSQL 14.5 cluster"

        return ask

    monkeypatch.setattr(client, "as_ask", as_ask)
    run(ip, "%%gap --id m2\nThe system needs optimization")
    result, text = run(ip, "%gap entities --suggest-with claude-haiku-4-5 --apply")
    assert result.success, text
    assert asked and asked[0][0] == "claude-haiku-4-5" and "the_system" in asked[0][1]
    assert "PostgreSQL 14.5 cluster" in text
    assert session_of(ip).gap_messages[-1].entities["the_system"].value == "PostgreSQL 14.5 cluster"


def test_suggest_with_never_applies_another_entitys_value(ip, monkeypatch):
    """Two entities of one type: the model's pick for the cluster is the database's own value, and the
    history's databases fit both; applied, no entity holds a value another one holds."""
    client = session_of(ip).client()

    def as_ask(model=None, **kwargs):
        return lambda prompt: "the_cluster: PostgreSQL 14\nthe_server: unknown"

    monkeypatch.setattr(client, "as_ask", as_ask)
    run(ip, "%%gap --id m1\nWe run PostgreSQL 14 and MySQL 8.")
    run(ip, "%%gap --id m2\nThe database PostgreSQL 14 serves reads. The cluster and the server are slow.")
    result, text = run(ip, "%gap entities --suggest-with claude-haiku-4-5 --apply")
    assert result.success, text
    entities = session_of(ip).gap_messages[-1].entities
    assert entities["the_database"].value == "PostgreSQL 14"
    values = [entities[key].value for key in ("the_database", "the_cluster", "the_server")]
    defined = [value for value in values if value is not None]
    assert len(set(defined)) == len(defined), values  # nothing twice
    assert "MySQL 8" in defined and len(defined) == 2, values  # one left to define: no value is left for it


def test_entities_of_a_variable_update_that_variable(ip):
    ip.user_ns["msg"] = gap.wrap_message("The approach failed", "chatgpt", "v1")
    result, _ = run(ip, "%gap entities msg the_approach='retry with backoff'")
    assert result.success
    assert ip.user_ns["msg"].entities["the_approach"].value == "retry with backoff"


def test_the_hint_of_a_variables_editor_names_that_variable(ip):
    # without it, the hint's command would define the notebook's last message, another one
    ip.user_ns["msg"] = gap.wrap_message("The approach failed", "chatgpt", "v1")
    run(ip, "%%gap --id last\nThe system is slow")
    result, text = run(ip, "%gap entities msg")
    assert result.success, text
    assert '%gap entities msg the_approach="..."' in text
    _, text = run(ip, "%gap entities")
    assert '%gap entities the_system="..."' in text


def test_graph_draws_the_notebooks_messages(ip, monkeypatch):
    from gtl_nb import analysis

    drawn = []
    real = analysis.draw_context_graph
    monkeypatch.setattr(
        analysis, "draw_context_graph", lambda graph, ax=None: drawn.append(graph) or real(graph, ax=ax)
    )
    run(ip, "%%gap --thread a --id a1\nThe system is slow")
    run(ip, "%%gap --thread a --id a2\nIt uses the database")
    result, text = run(ip, "%gap graph --out g")
    assert result.success, text
    graph = ip.user_ns["g"]
    assert drawn == [graph]
    assert ("message", "a1") in graph and ("message", "a2") in graph
    assert graph.has_edge(("message", "a2"), ("message", "a1"))
    assert "Figure" in text or "image/png" in text


def test_graph_without_matplotlib_says_which_extra_to_install(ip, monkeypatch):
    import sys

    run(ip, "%%gap --thread a --id a1\nThe system is slow")
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # as if the plot extra were not installed
    text = mistake(ip, "%gap graph")
    assert "matplotlib, which is not installed" in text and "pip install 'gtl-nb[plot]'" in text
    assert "Traceback" not in text


def test_export_writes_one_gap_json_line_per_message(ip, tmp_path):
    run(ip, "%%gap --thread a --id a1\nThe system is slow")
    run(ip, "%%gap --thread a --id a2\nIt uses PostgreSQL 14")
    path = tmp_path / "messages.jsonl"
    result, text = run(ip, f"%gap export {path}")
    assert result.success and "wrote 2 GAP messages" in text
    lines = path.read_text().splitlines()
    assert [gap.from_json(line) for line in lines] == session_of(ip).gap_messages
    assert all(json.loads(line)["gap_version"] == gap.GAP_VERSION for line in lines)
    assert "cannot write" in mistake(ip, f"%gap export {tmp_path / 'no' / 'such' / 'dir.jsonl'}")


@pytest.mark.parametrize(
    ("model", "platform"),
    [
        ("anthropic:claude-haiku-4-5", "claude.ai"),  # deployment prefix
        ("openai:gpt-4o-mini", "chatgpt"),
        ("claude-haiku-4-5", "claude.ai"),  # an alias the catalog resolves
        ("gpt-4o-mini", "chatgpt"),  # a model a deployment lists
        ("echo", "generic"),
        ("gemini-2.5-flash", "generic"),  # no gemini deployment here: nothing to match
    ],
)
def test_the_context_platform_follows_the_deployment_a_model_goes_to(ip, model, platform):
    from gtl_nb.notebook.session import platform_for

    session = session_of(ip)
    assert platform_for(session.provider_type_of(session.client(), model)) == platform


def test_gap_help_lists_the_options_and_subcommands(ip):
    _, text = run(ip, "%gap")
    for sub in ("entities", "graph", "export", "--from-last"):
        assert sub in text
    _, text = run(ip, "%gap --help")
    for option in ("--platform", "--thread", "--role", "--id", "--reply-to", "--to", "--from-last", "--from"):
        assert option in text
    assert "wrap the last %%gtl answer" in text  # the cell magic's name, not argparse's %-formatted "%gtl"


def test_from_a_comparison_says_how_to_pick_one_answer(ip):
    run(ip, "%%gtl --compare echo echo:echo --out race\nWhich harbour is deeper?")
    message = mistake(ip, "%gap --from race")
    assert "comparison of echo, echo:echo" in message and 'race.completion("MODEL")' in message
    assert "method" not in message


def test_from_last_after_a_comparison_or_an_error_wraps_no_older_answer(ip, monkeypatch):
    """``--from-last`` is the last cell's answer: after a comparison it says how to pick one, after an
    error that there is none — never, silently, an answer from a cell before."""
    run(ip, "%%gtl echo\nAn earlier answer.")
    result, text = run(ip, "%%gtl --compare echo echo:echo\nWhich harbour is deeper?")
    assert result.success, text
    result, text = run(ip, "%gap --from-last")  # the first model's answer, and it says so
    assert result.success, text
    assert "compared echo, echo:echo; wrapping echo's answer" in text and '_gtl.completion("MODEL")' in text
    assert "harbour" in ip.user_ns["_gap"].content and "earlier" not in ip.user_ns["_gap"].content
    ip.user_ns["picked"] = ip.user_ns["_gtl"].completion("echo:echo")
    result, text = run(ip, "%gap --from picked")
    assert result.success, text
    assert "harbour" in ip.user_ns["_gap"].content
    monkeypatch.setenv("DEAD_KEY", "k")
    run(ip, "%gtl providers dead type=openai base_url=http://127.0.0.1:9/v1 api_key_env=DEAD_KEY")
    result, text = run(ip, "%%gtl dead:gpt-4o-mini\nfails")  # the provider cannot be reached: an error answer
    assert not result.success and "PROVIDER_UNAVAILABLE" in text
    result, text = run(ip, "%gap --from-last")
    assert not result.success and "ended in an error" in text
    run(ip, "%%gtl echo\nAnother answer.")
    result, text = run(ip, "%%gtl echoo\nrefused before it is sent")  # an unknown model: no answer at all
    assert not result.success
    result, text = run(ip, "%gap --from-last")
    assert not result.success and "ended in an error" in text
    run(ip, "%%gtl --compare dead:gpt-4o-mini echo\none of them fails")
    _, text = run(ip, "%gap --from-last")
    assert "wrapping echo's answer" in text  # the one that answered
    run(ip, "%%gtl --compare dead:gpt-4o-mini dead:gpt-4o\nboth fail")
    result, text = run(ip, "%gap --from-last")
    assert not result.success and "none of them answered" in text


def test_a_pasted_block_is_split_into_lines_as_its_reader_splits_it(ip):
    """A vertical tab or form feed in the content is no line break to GAP's reader: the cell's check for
    text after [GAP:END] split there too, and refused a message the reader takes."""
    block = "[GAP:START]\nFrom: p\nContext: user\n[GAP:CONTENT]\nsee \x0b[GAP:END]\x0c here\n[GAP:END]"
    result, text = run(ip, f"%%gap --out pasted\n{block}")
    assert result.success, text
    assert ip.user_ns["pasted"].content == "see \x0b[GAP:END]\x0c here"
