"""Prompt caching in the dialects: where a ``cache_point`` goes in each API, what usage says, what it costs."""

from __future__ import annotations

import json

import pytest

from gtl_nb.protocol.messages import CompletionRequest, Message, Tool, ToolCall, Usage
from gtl_nb.providers import anthropic, bedrock
from gtl_nb.providers.base import MAX_CACHE_POINTS, Deployment, cache_points
from gtl_nb.providers.catalog import Catalog
from gtl_nb.providers.openai import OpenAIDialect

EPHEMERAL = {"type": "ephemeral"}
CACHE_POINT = {"cachePoint": {"type": "default"}}


def request(messages: list[Message], model: str = "claude-sonnet-4-5", **fields) -> CompletionRequest:
    return CompletionRequest(session_id="s", model=model, messages=messages, **fields)


def loop_tools(messages: list[Message]) -> list[Tool]:
    """The tools a history's calls name: a tool loop's request offers them (without tools, Anthropic and
    Bedrock are sent the history as text)."""
    return [Tool(name=name) for name in dict.fromkeys(c.name for m in messages for c in m.tool_calls)]


def anthropic_body(messages: list[Message]) -> dict:
    deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
    return anthropic.build_body(request(messages, tools=loop_tools(messages)), deployment)


def bedrock_body(messages: list[Message], model: str = "anthropic.claude-sonnet-4-5-20250929-v1:0") -> dict:
    deployment = Deployment(name="b", type="bedrock", base_url="http://127.0.0.1:9")
    return bedrock.build_body(request(messages, model, tools=loop_tools(messages)), deployment)


def marked_blocks(body: dict) -> list[dict]:
    blocks = [block for turn in body["messages"] for block in turn["content"]]
    system = body.get("system")
    if isinstance(system, list):
        blocks = system + blocks
    return [block for block in blocks if "cache_control" in block]


# -- which marks are kept ---------------------------------------------------------------------------------


def test_no_mark_no_cache_points():
    assert cache_points([Message(role="system", content="s"), Message(role="user", content="u")]) == frozenset()


def test_the_last_marks_are_kept():
    messages = [
        Message(role="system", content="a", cache_point=True),
        Message(role="system", content="b", cache_point=True),
        *[Message(role="user" if i % 2 == 0 else "assistant", content=f"m{i}", cache_point=True) for i in range(5)],
    ]
    assert cache_points(messages) == frozenset({3, 4, 5, 6})  # the last four: the longest prefixes
    assert cache_points(messages[:4]) == frozenset({0, 1, 2, 3})


def test_a_mark_with_nothing_to_carry_it_takes_no_place():
    thinking_only = Message(
        role="assistant", content="", provider_data={"anthropic": {"content": [{"type": "thinking"}]}}, cache_point=True
    )
    messages = [
        *[Message(role="user" if i % 2 == 0 else "assistant", content=f"m{i}", cache_point=True) for i in range(4)],
        Message(role="user", content="", cache_point=True),
        thinking_only,
        Message(role="system", content="", cache_point=True),
    ]
    assert cache_points(messages) == frozenset({0, 1, 2, 3})
    empty_result = Message(role="tool", content="", tool_call_id="t", cache_point=True)
    assert cache_points([empty_result]) == frozenset({0})  # a tool result is sent even when empty
    calls_only = Message(role="assistant", tool_calls=[ToolCall(id="t", name="f")], cache_point=True)
    assert cache_points([calls_only]) == frozenset({0})


def test_a_limit_of_zero_keeps_nothing():
    assert not cache_points([Message(role="user", content="u", cache_point=True)], limit=0)


# -- Anthropic ------------------------------------------------------------------------------------------


def test_anthropic_system_mark_makes_each_system_message_a_block():
    body = anthropic_body(
        [
            Message(role="system", content="a document", cache_point=True),
            Message(role="system", content="the time is 12:05"),
            Message(role="user", content="hi"),
        ]
    )
    assert body["system"] == [
        {"type": "text", "text": "a document", "cache_control": EPHEMERAL},
        {"type": "text", "text": "the time is 12:05"},
    ]
    assert marked_blocks({"messages": body["messages"]}) == []


def test_anthropic_unmarked_system_stays_text():
    body = anthropic_body([Message(role="system", content="plain"), Message(role="user", content="hi")])
    assert body["system"] == "plain"
    assert "cache_control" not in json.dumps(body)


def test_anthropic_marks_the_last_block_of_the_marked_message():
    image = "data:image/png;base64,AAAA"
    body = anthropic_body(
        [
            Message(role="user", content="look", images=[image], cache_point=True),
            Message(role="assistant", content="seen"),
            Message(role="user", content="again"),
        ]
    )
    first = body["messages"][0]["content"]
    assert first[-1] == {"type": "text", "text": "look", "cache_control": EPHEMERAL}
    assert "cache_control" not in first[0]  # the image before it is inside the cached prefix anyway
    assert len(marked_blocks(body)) == 1


def test_anthropic_marks_tool_results_and_tool_calls():
    call = ToolCall(id="t1", name="f", arguments="{}")
    body = anthropic_body(
        [
            Message(role="user", content="use f"),
            Message(role="assistant", tool_calls=[call], cache_point=True),
            Message(role="tool", content="42", tool_call_id="t1", cache_point=True),
        ]
    )
    assistant, results = body["messages"][1]["content"], body["messages"][2]["content"]
    assert assistant[-1]["type"] == "tool_use" and assistant[-1]["cache_control"] == EPHEMERAL
    assert results[0]["type"] == "tool_result" and results[0]["cache_control"] == EPHEMERAL


def test_anthropic_never_marks_a_replayed_thinking_block():
    thinking = {"type": "thinking", "thinking": "hm", "signature": "sig"}
    replay = Message(
        role="assistant", content="answer", provider_data={"anthropic": {"content": [thinking]}}, cache_point=True
    )
    body = anthropic_body([Message(role="user", content="q"), replay, Message(role="user", content="more")])
    blocks = body["messages"][1]["content"]
    assert "cache_control" not in blocks[0]
    assert blocks[-1] == {"type": "text", "text": "answer", "cache_control": EPHEMERAL}


def test_a_mark_with_nothing_to_carry_it_leaves_the_others_in_place():
    messages = [
        *[Message(role="user" if i % 2 == 0 else "assistant", content=f"turn {i}", cache_point=True) for i in range(4)],
        Message(role="assistant", content="", cache_point=True),  # (an empty user turn is refused instead)
    ]
    assert [block["text"] for block in marked_blocks(anthropic_body(messages))] == [f"turn {i}" for i in range(4)]


def test_anthropic_sends_at_most_the_apis_limit():
    messages = [
        Message(role="user" if i % 2 == 0 else "assistant", content=f"turn {i}", cache_point=True) for i in range(9)
    ]
    body = anthropic_body([Message(role="system", content="s", cache_point=True), *messages])
    marked = marked_blocks(body)
    assert body["system"] == "s"  # its mark was not among the last four
    assert len(marked) == MAX_CACHE_POINTS
    assert [block["text"] for block in marked] == ["turn 5", "turn 6", "turn 7", "turn 8"]


def test_a_marked_message_does_not_change_what_is_sent_otherwise():
    plain = [Message(role="system", content="s"), Message(role="user", content="u")]
    marked = [Message(role="system", content="s"), Message(role="user", content="u", cache_point=True)]
    without = json.dumps(anthropic_body(marked)).replace(', "cache_control": {"type": "ephemeral"}', "")
    assert without == json.dumps(anthropic_body(plain))


# -- Bedrock's Converse ---------------------------------------------------------------------------------


def test_converse_puts_a_cache_point_after_the_system_blocks_and_the_marked_message():
    body = bedrock_body(
        [
            Message(role="system", content="rules", cache_point=True),
            Message(role="user", content="question", cache_point=True),
            Message(role="assistant", content="answer"),
            Message(role="user", content="follow-up"),
        ]
    )
    assert body["system"] == [{"text": "rules"}, CACHE_POINT]
    assert body["messages"][0]["content"] == [{"text": "question"}, CACHE_POINT]
    assert CACHE_POINT not in body["messages"][2]["content"]


@pytest.mark.parametrize(
    "model",
    [
        "meta.llama3-1-8b-instruct-v1:0",
        "mistral.mistral-large-2407-v1:0",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "amazon.nova-canvas-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123",
    ],
)
def test_converse_sends_no_cache_point_to_a_model_it_does_not_cache(model):
    assert not bedrock.caches_on_request(model)
    body = bedrock_body(
        [
            Message(role="system", content="rules", cache_point=True),
            Message(role="user", content="q", cache_point=True),
        ],
        model=model,
    )
    assert "cachePoint" not in json.dumps(body)


@pytest.mark.parametrize(
    "model",
    [
        "amazon.nova-lite-v1:0",
        "us.amazon.nova-pro-v1:0",
        "global.anthropic.claude-haiku-4-5-20251001-v1:0",
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-sonnet-4-5-20250929-v1:0",
    ],
)
def test_converse_caches_claude_and_nova(model):
    assert bedrock.caches_on_request(model)
    body = bedrock_body([Message(role="user", content="q", cache_point=True)], model=model)
    assert body["messages"][0]["content"][-1] == CACHE_POINT


def test_converse_puts_no_cache_point_after_reasoning_alone():
    reasoning = {"bedrock_reasoning": [{"reasoningText": {"text": "hm", "signature": "s"}}]}
    body = bedrock_body(
        [
            Message(role="user", content="q"),
            Message(role="assistant", content="", provider_data=reasoning, cache_point=True),
            Message(role="user", content="more"),
        ]
    )
    assert "cachePoint" not in json.dumps(body)


def test_converse_keeps_a_cache_point_between_system_messages():
    body = bedrock_body(
        [
            Message(role="system", content="document", cache_point=True),
            Message(role="system", content="12:05"),
            Message(role="user", content="q"),
        ]
    )
    assert body["system"] == [{"text": "document"}, CACHE_POINT, {"text": "12:05"}]


def test_converse_sends_at_most_the_apis_limit():
    messages = [
        Message(role="user" if i % 2 == 0 else "assistant", content=f"turn {i}", cache_point=True) for i in range(7)
    ]
    body = bedrock_body([Message(role="system", content="s", cache_point=True), *messages])
    assert json.dumps(body).count("cachePoint") == MAX_CACHE_POINTS
    assert CACHE_POINT not in body["system"]


def test_converse_usage_carries_cache_reads_and_writes_in_tokens_in():
    usage = bedrock._usage(
        "s", {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 300, "cacheWriteInputTokens": 2000}
    )
    assert usage == Usage(
        session_id="s", tokens_in=2310, tokens_out=5, cached_tokens_in=300, cache_write_tokens_in=2000
    )


# -- OpenAI caches by itself ----------------------------------------------------------------------------


def test_openai_requests_carry_no_marker():
    deployment = Deployment(name="o", type="openai", base_url="http://127.0.0.1:9", api_key="k")
    built = OpenAIDialect().build_request(
        request([Message(role="system", content="s", cache_point=True), Message(role="user", content="u")], "gpt-4o"),
        deployment,
        now=0.0,
    )
    assert b"cache" not in built.body


# -- Anthropic's usage ----------------------------------------------------------------------------------


def feed_anthropic(body: bytes, *, stream: bool) -> list:
    deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
    decoder = anthropic.AnthropicDecoder(request([Message(role="user", content="q")], stream=stream), deployment)
    return decoder.feed(body) + decoder.close()


def test_anthropic_usage_separates_cache_writes_and_reads():
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 2048,
            "cache_read_input_tokens": 4096,
            "output_tokens": 3,
        },
    }
    usage = next(e for e in feed_anthropic(json.dumps(message).encode(), stream=False) if isinstance(e, Usage))
    assert (usage.tokens_in, usage.cached_tokens_in, usage.cache_write_tokens_in) == (6156, 4096, 2048)


def test_anthropic_streamed_usage_takes_the_last_cumulative_cache_counts():
    def sse(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    start_usage = {"input_tokens": 12, "cache_creation_input_tokens": 2048, "cache_read_input_tokens": 0}
    body = (
        sse("message_start", {"message": {"model": "m", "content": [], "usage": {**start_usage, "output_tokens": 1}}})
        + sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        + sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}})
        + sse("content_block_stop", {"index": 0})
        + sse("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {**start_usage, "output_tokens": 2}})
        + sse("message_stop", {})
    )
    usage = next(e for e in feed_anthropic(body.encode(), stream=True) if isinstance(e, Usage))
    assert (usage.tokens_in, usage.cached_tokens_in, usage.cache_write_tokens_in) == (2060, 0, 2048)


# -- the cost of a cache write ----------------------------------------------------------------------------


def test_cache_writes_cost_the_write_rate():
    catalog = Catalog.default()
    plain = catalog.cost("anthropic", "claude-sonnet-4-5", 10_000, 100)
    written = catalog.cost("anthropic", "claude-sonnet-4-5", 10_000, 100, cache_write_tokens_in=8_000)
    read = catalog.cost("anthropic", "claude-sonnet-4-5", 10_000, 100, cached_tokens_in=8_000)
    assert plain == pytest.approx((10_000 * 0.003 + 100 * 0.015) / 1000)
    assert written == pytest.approx((2_000 * 0.003 + 8_000 * 0.00375 + 100 * 0.015) / 1000)
    assert read == pytest.approx((2_000 * 0.003 + 8_000 * 0.0003 + 100 * 0.015) / 1000)
    assert read < plain < written


def test_a_provider_without_a_write_rate_bills_writes_as_input():
    catalog = Catalog.default()
    assert catalog.cost("openai", "gpt-4o-mini", 5_000, 10, cache_write_tokens_in=4_000) == pytest.approx(
        catalog.cost("openai", "gpt-4o-mini", 5_000, 10)
    )


def test_an_unknown_write_rate_makes_the_cost_unknown_only_when_writes_were_reported():
    catalog = Catalog.default()
    model = "us.anthropic.claude-haiku-4-5-20251001-v1:0"  # its cache rates are unconfirmed
    assert catalog.cost("bedrock", model, 5_000, 10) is not None
    assert catalog.cost("bedrock", model, 5_000, 10, cache_write_tokens_in=4_000) is None


@pytest.mark.parametrize("cached, written", [(6_000, 6_000), (-1, 0), (0, -1)])
def test_inconsistent_cache_counts_make_the_cost_unknown(cached, written):
    catalog = Catalog.default()
    assert catalog.cost("anthropic", "claude-sonnet-4-5", 10_000, 1, cached, written) is None


def test_every_anthropic_model_prices_writes_at_one_and_a_quarter_times_input():
    catalog = Catalog.default()
    for entry in catalog.entries():
        if entry.provider_type == "anthropic" or "anthropic." in entry.name:
            rates = entry.rates
            if rates.input is not None and rates.cache_write_input is not None:
                assert rates.cache_write_input == pytest.approx(rates.input * 1.25), entry.name
            info = entry.info()
            assert info.cost_per_1k_cache_write_input == rates.cache_write_input


def test_openai_usage_reads_cache_writes_too():
    from gtl_nb.providers.openai_chat import usage_event

    usage = usage_event(
        "s",
        {
            "prompt_tokens": 3000,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 1900},
        },
    )
    assert (usage.tokens_in, usage.cached_tokens_in, usage.cache_write_tokens_in) == (3000, 1024, 1900)
    assert usage_event("s", {"prompt_tokens": 3, "completion_tokens": 1}).cache_write_tokens_in is None
