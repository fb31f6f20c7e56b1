"""A tool history written as text (``providers.base.tool_history_as_text``) for the APIs that take tool
blocks only beside tools: who called what with which arguments, what came back — a failure as a failure,
images as images — each result paired with its call by id, and every message in its place."""

from __future__ import annotations

from gtl_nb.protocol.messages import CompletionRequest, Message, Part, ToolCall
from gtl_nb.providers import anthropic, bedrock
from gtl_nb.providers.base import Deployment, holds_tool_history, tool_history_as_text

PNG = "data:image/png;base64,iVBORw0KGgo="
CALLS = [
    ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}'),
    ToolCall(id="call_2", name="get_map", arguments=""),
]
HISTORY = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="Weather and a map of Oslo?"),
    Message(role="assistant", content="Looking both up.", tool_calls=CALLS, cache_point=True),
    Message(role="tool", tool_call_id="call_1", content="the service timed out", tool_error=True),
    Message(role="tool", tool_call_id="call_2", parts=[Part(type="text", text="here:"), Part(type="image", url=PNG)]),
    Message(role="user", content="Summarise."),
]


def test_calls_and_results_become_text_that_keeps_their_meaning_and_pairing():
    out = tool_history_as_text(HISTORY)
    assert not holds_tool_history(out) and holds_tool_history(HISTORY)
    assert [m.role for m in out] == ["system", "user", "assistant", "user", "user", "user"]
    assert out[2].content == (
        'Looking both up.\n[tool call call_1: get_weather {"city": "Oslo"}]\n[tool call call_2: get_map {}]'
    )
    assert out[2].cache_point and not out[2].tool_calls
    assert out[3].content == "[tool result for call_1 (get_weather) failed]\nthe service timed out"
    assert out[4].in_order() == [("text", "[tool result for call_2 (get_map)]\nhere:"), ("image", PNG)]
    assert out[0] == HISTORY[0] and out[1] == HISTORY[1] and out[5] == HISTORY[5]


def test_a_result_for_a_call_the_history_does_not_hold_says_its_id():
    (alone,) = tool_history_as_text([Message(role="tool", tool_call_id="t9", images=[PNG])])
    assert alone.role == "user" and alone.in_order() == [("text", "[tool result for t9]"), ("image", PNG)]


def test_anthropic_and_bedrock_send_the_text_only_when_no_tool_is_offered():
    request = CompletionRequest(session_id="s", model="claude-sonnet-4-5", messages=HISTORY)
    deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
    body = anthropic.build_body(request, deployment)
    blocks = [block for turn in body["messages"] for block in turn["content"]]
    assert {block["type"] for block in blocks} == {"text", "image"} and "tools" not in body
    assert body["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}  # the mark stays put
    converse = bedrock.build_body(
        CompletionRequest(session_id="s", model="anthropic.claude-sonnet-4-5-20250929-v1:0", messages=HISTORY),
        Deployment(name="b", type="bedrock", base_url="http://127.0.0.1:9"),
    )
    assert "toolConfig" not in converse
    assert [turn["role"] for turn in converse["messages"]] == ["user", "assistant", "user"]  # results join the ask
    assert not any("toolUse" in b or "toolResult" in b for turn in converse["messages"] for b in turn["content"])
