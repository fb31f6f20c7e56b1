"""The one-hour prompt cache: a ``cache_point``'s ``cache_ttl``, how each API is asked for it, the
longer-lived-first rule, the one-hour writes in usage, and their price."""

from __future__ import annotations

import msgspec
import pytest

from gtl_nb.client import _messages
from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import Message, Usage
from gtl_nb.providers import anthropic, bedrock
from gtl_nb.providers.catalog import Catalog
from tests.providers.test_prompt_cache import anthropic_body, bedrock_body, feed_anthropic, marked_blocks

DOCUMENT = Message(role="system", content="the charter", cache_point=True, cache_ttl="1h")
QUESTION = Message(role="user", content="which clause?", cache_point=True)


# -- the protocol -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [({"cache_ttl": "2h", "cache_point": True}, "5m or 1h"), ({"cache_ttl": "1h"}, "give cache_point too")],
)
def test_a_ttl_is_5m_or_1h_on_a_cache_point(fields, complaint):
    with pytest.raises(ValueError, match=complaint):
        Message(role="user", content="x", **fields)
    with pytest.raises(msgspec.ValidationError, match=complaint):
        msgspec.json.decode(msgspec.json.encode({"role": "user", "content": "x", **fields}), type=Message)
    assert b"cache_ttl" not in msgspec.json.encode(QUESTION)  # unset stays off the wire


def test_the_clients_message_dicts_read_the_markers_ttl():
    (hour,) = _messages([{"role": "user", "content": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
    (plain,) = _messages([{"role": "user", "content": "x", "cache_control": {"type": "ephemeral"}}])
    parts = [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "5m"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    (both,) = _messages([{"role": "user", "content": parts}])
    assert (hour.cache_point, hour.cache_ttl) == (True, "1h")
    assert (plain.cache_point, plain.cache_ttl) == (True, None)
    assert both.cache_ttl == "1h"  # one message, one mark: the longest-lived of its markers


# -- Anthropic ----------------------------------------------------------------------------------------


def test_anthropic_is_asked_for_the_hour_on_the_marked_blocks():
    body = anthropic_body([DOCUMENT, Message(role="user", content="q", cache_point=True, cache_ttl="1h")])
    assert [block["cache_control"] for block in marked_blocks(body)] == [
        {"type": "ephemeral", "ttl": "1h"},
        {"type": "ephemeral", "ttl": "1h"},
    ]
    five = anthropic_body([Message(role="user", content="q", cache_point=True, cache_ttl="5m")])
    assert marked_blocks(five)[0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}


def test_an_hour_before_five_minutes_is_sent_and_the_reverse_refused():
    body = anthropic_body([DOCUMENT, QUESTION])  # the system prompt is read first: 1h, then 5m
    assert [block["cache_control"].get("ttl") for block in marked_blocks(body)] == ["1h", None]
    late = [
        Message(role="system", content="rules", cache_point=True),
        Message(role="user", content="q", cache_point=True, cache_ttl="1h"),
    ]
    with pytest.raises(InvalidRequestError, match='cache_ttl "1h" follows a five-minute one'):
        anthropic_body(late)
    # the system prompt is read first wherever its message stands: a 1h system message after a
    # five-minute user turn in the list is still first
    assert anthropic_body([QUESTION, DOCUMENT])["system"][0]["cache_control"]["ttl"] == "1h"


def test_anthropic_usage_says_what_went_to_the_hour():
    usage = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 3,
    }
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    (found,) = [e for e in feed_anthropic(msgspec.json.encode(body), stream=False) if isinstance(e, Usage)]
    assert (found.cache_write_tokens_in, found.cache_write_1h_tokens_in) == (3000, 2000)
    usage["cache_creation"] = {"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 0}
    (found,) = [e for e in feed_anthropic(msgspec.json.encode(body), stream=False) if isinstance(e, Usage)]
    assert found.cache_write_1h_tokens_in is None


# -- Bedrock's Converse ---------------------------------------------------------------------------------


def cache_points_sent(body: dict) -> list[dict]:
    blocks = body.get("system", []) + [block for turn in body["messages"] for block in turn["content"]]
    return [block["cachePoint"] for block in blocks if "cachePoint" in block]


def test_converse_asks_claude_4_5_and_later_for_the_hour():
    for model in ("anthropic.claude-sonnet-4-5-20250929-v1:0", "global.anthropic.claude-haiku-4-5-20251001-v1:0"):
        assert cache_points_sent(bedrock_body([DOCUMENT, QUESTION], model)) == [
            {"type": "default", "ttl": "1h"},
            {"type": "default"},
        ]


FIVE_MINUTES_ONLY = [
    "anthropic.claude-3-7-sonnet-20250219-v1:0",
    "anthropic.claude-sonnet-4-20250514-v1:0",
    "amazon.nova-lite-v1:0",
]


@pytest.mark.parametrize("model", FIVE_MINUTES_ONLY)
def test_converse_models_without_the_hour_keep_five_minutes(model):
    # they cache, but for five minutes only: asked for that (a ttl would be refused), never failed
    assert cache_points_sent(bedrock_body([DOCUMENT, QUESTION], model)) == [{"type": "default"}, {"type": "default"}]
    late = [Message(role="system", content="s", cache_point=True), Message(role="user", content="q", cache_point=True,
            cache_ttl="1h")]  # fmt: skip
    assert len(cache_points_sent(bedrock_body(late, model))) == 2


def test_converse_refuses_an_hour_after_five_minutes_for_a_model_with_both():
    late = [Message(role="system", content="s", cache_point=True), Message(role="user", content="q", cache_point=True,
            cache_ttl="1h")]  # fmt: skip
    with pytest.raises(InvalidRequestError, match="longer-lived"):
        bedrock_body(late)


def test_converse_usage_reads_the_hours_writes_from_cache_details():
    usage = bedrock._usage(
        "s",
        {
            "inputTokens": 10,
            "outputTokens": 5,
            "cacheWriteInputTokens": 3000,
            "cacheDetails": [{"ttl": "1h", "inputTokens": 2000}, {"ttl": "5m", "inputTokens": 1000}],
        },
    )
    assert (usage.tokens_in, usage.cache_write_tokens_in, usage.cache_write_1h_tokens_in) == (3010, 3000, 2000)
    odd = bedrock._usage("s", {"inputTokens": 1, "cacheDetails": [{"ttl": "1h", "inputTokens": -5}, "x", None]})
    assert odd.cache_write_1h_tokens_in is None  # a malformed detail counts for nothing


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("anthropic.claude-opus-4-6-v1", True),
        ("us.anthropic.claude-sonnet-5-5-v1:0", True),
        ("anthropic.claude-opus-4-1-20250805-v1:0", False),
        ("anthropic.claude-sonnet-4-20250514-v1:0", False),  # a date is no minor version
        ("meta.llama3-claude-sonnet-4-5", False),  # not an Anthropic model
        ("anthropic.claude-opus-5-v1:0", True),  # a major version alone
        ("anthropic.claude-opus-5-20260301-v1:0", True),
    ],
)
def test_which_converse_models_keep_an_hour(model, expected):
    assert bedrock.keeps_an_hour(model) is expected


# -- the price --------------------------------------------------------------------------------------------


def test_an_hours_writes_cost_twice_the_input_rate_on_anthropics_api():
    catalog = Catalog.default()
    # Sonnet 4.5: $3 / $3.75 (5m) / $6 (1h) per million in, $15 out
    cost = catalog.cost("anthropic", "claude-sonnet-4-5", 10_000, 100, 0, 5_000, 2_000)
    assert cost == pytest.approx((5_000 * 0.003 + 3_000 * 0.00375 + 2_000 * 0.006 + 100 * 0.015) / 1000)
    assert catalog.cost("anthropic", "claude-sonnet-4-5", 10_000, 100, 0, 5_000, 6_000) is None  # more than written
    for entry in catalog.entries():
        if entry.provider_type == "anthropic" and entry.rates.input is not None:
            assert entry.rates.cache_write_1h_input == pytest.approx(entry.rates.input * 2), entry.name
            assert entry.info().cost_per_1k_cache_write_1h_input == entry.rates.cache_write_1h_input


def test_an_hour_nobody_priced_leaves_the_cost_unknown():
    catalog = Catalog.default()
    model = "anthropic.claude-sonnet-4-5-20250929-v1:0"  # Bedrock's one-hour rate is not sourced
    assert catalog.cost("bedrock", model, 10_000, 100, 0, 5_000, 2_000) is None
    assert catalog.cost("bedrock", model, 10_000, 100, 0, 5_000, 0) is not None
    assert anthropic.asks_for_cache({"type": "ephemeral", "ttl": "1h"})


# -- from the review: the order the API reads, the four-mark limit ---------------------------------------


def tool_turns(text_ttl: str | None, result_ttl: str | None) -> list[Message]:
    """A turn that answers a tool call with a note before the result: Anthropic puts the result first."""
    from gtl_nb.protocol.messages import ToolCall

    return [
        Message(role="user", content="go"),
        Message(role="assistant", tool_calls=[ToolCall(id="t1", name="f")]),
        Message(role="user", content="note", cache_point=True, cache_ttl=text_ttl),
        Message(role="tool", content="done", tool_call_id="t1", cache_point=True, cache_ttl=result_ttl),
    ]


def test_the_order_checked_is_the_order_anthropic_reads_after_moving_tool_results_first():
    with pytest.raises(InvalidRequestError, match="tool results first"):
        anthropic_body(tool_turns("1h", "5m"))  # sent as the result (5m), then the note (1h)
    body = anthropic_body(tool_turns("5m", "1h"))  # sent as the result (1h), then the note (5m): valid
    assert [block["cache_control"]["ttl"] for block in marked_blocks(body)] == ["1h", "5m"]


def test_past_four_marks_the_one_hour_mark_is_kept():
    from gtl_nb.providers.base import cache_points

    turns = [Message(role="user", content=f"turn {i}", cache_point=True) for i in range(4)]
    kept = cache_points([DOCUMENT, *turns])
    assert kept == frozenset({0, 2, 3, 4})  # the document's hour, then the last three turns
    assert [block["cache_control"].get("ttl") for block in marked_blocks(anthropic_body([DOCUMENT, *turns]))] == [
        "1h",
        None,
        None,
        None,
    ]
    assert cache_points(turns) == frozenset({0, 1, 2, 3})  # no hour: the last four, as before


def test_a_message_that_says_no_cache_point_stays_unmarked_whatever_the_ttl():
    (item,) = _messages(
        [{"role": "user", "content": "x", "cache_point": False, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    )
    assert (item.cache_point, item.cache_ttl) == (False, None)
