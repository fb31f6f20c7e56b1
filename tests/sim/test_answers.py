"""The shared deterministic answer generator."""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtl_nb.sim.answers import count_tokens, make_answer, sample_for_schema, split_pieces

WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 3},
            "detailed": {"type": "boolean"},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}, "label": {"type": "string"}},
                "required": ["lat", "lon"],
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "optional": {"type": "string"},
        },
        "required": ["city", "unit", "days", "detailed", "where", "tags"],
    },
}
CLOCK = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}


def test_same_seed_and_prompt_give_the_same_answer() -> None:
    assert make_answer(3, "Tell me a story", []) == make_answer(3, "Tell me a story", [])


def test_a_different_seed_changes_the_filler() -> None:
    assert make_answer(1, "Tell me a story", []).text != make_answer(2, "Tell me a story", []).text


def test_the_text_quotes_the_start_of_the_prompt() -> None:
    answer = make_answer(0, "What is the capital of France?", [])
    assert answer.text.startswith('You said: "What is the capital of France?".')
    long = make_answer(0, "word " * 40, [])
    assert '"word word' in long.text and "…" in long.text


def test_pieces_join_back_to_the_text_and_are_short() -> None:
    answer = make_answer(5, "Split me into pieces please, with some longer words like extraordinarily", [])
    assert "".join(answer.pieces) == answer.text
    assert len(answer.pieces) > 5
    assert all(0 < len(p) <= 10 for p in answer.pieces)


def test_tools_with_a_user_prompt_give_a_call_whose_arguments_fill_the_schema() -> None:
    answer = make_answer(0, "How is the weather?", [WEATHER])
    assert answer.text == "" and answer.finish == "tool_calls"
    (call,) = answer.tool_calls
    args = call["arguments"]
    assert call["name"] == "get_weather"
    assert set(args) == {"city", "unit", "days", "detailed", "where", "tags"}  # required only
    assert isinstance(args["city"], str) and args["city"]
    assert args["unit"] == "celsius"  # the first enum value
    assert args["days"] == 3 and args["detailed"] is True
    assert set(args["where"]) == {"lat", "lon"} and all(isinstance(v, float) for v in args["where"].values())
    assert isinstance(args["tags"], list) and all(isinstance(t, str) for t in args["tags"])


def test_tools_named_in_the_prompt_are_all_called_in_order() -> None:
    answer = make_answer(0, "call get_time then get_weather", [WEATHER, CLOCK])
    assert [c["name"] for c in answer.tool_calls] == ["get_weather", "get_time"]
    assert answer.tool_calls[1]["arguments"] == {}


def test_after_a_tool_result_the_answer_is_text_mentioning_it() -> None:
    answer = make_answer(0, "How is the weather?", [WEATHER], tool_results=["22 degrees and sunny"])
    assert answer.tool_calls == []
    assert "22 degrees and sunny" in answer.text


def test_schema_sampling_handles_refs_unions_and_uppercase_types() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {"item": {"$ref": "#/$defs/Item"}, "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]}},
        "required": ["item", "maybe"],
        "$defs": {"Item": {"type": "object", "properties": {"n": {"const": 7}}, "required": ["n"]}},
    }
    assert sample_for_schema(schema) == {"item": {"n": 7}, "maybe": 1}


def test_max_tokens_cuts_the_text_and_reports_length() -> None:
    answer = make_answer(0, "Tell me everything about the simulator", [], max_tokens=3)
    assert answer.finish == "length"
    assert count_tokens(answer.text) <= 3 and answer.text
    assert "".join(answer.pieces) == answer.text


def test_thinking_adds_reasoning_without_changing_the_text() -> None:
    plain = make_answer(0, "Think first", [])
    thoughtful = make_answer(0, "Think first", [], thinking=True)
    assert thoughtful.text == plain.text
    assert thoughtful.thinking and "".join(thoughtful.thinking_pieces) == thoughtful.thinking
    assert thoughtful.tokens_thinking == count_tokens(thoughtful.thinking)


def test_token_counts_follow_the_documented_rule() -> None:
    answer = make_answer(0, "12345678", [])
    assert answer.tokens_in == 2  # 8 characters -> 2 tokens
    assert answer.tokens_out == count_tokens(answer.text)
    assert count_tokens("") == 1 and count_tokens("abcde") == 2


def test_the_answer_reads_as_sentences_about_the_prompt() -> None:
    prompt = "Explain in two sentences why streaming matters for chat interfaces."
    for seed in range(6):
        text = make_answer(seed, prompt, []).text
        body = text.split('". ', 1)[1]  # after the quote of the prompt
        assert "streaming" in body and "chat" in body  # it talks about what was asked
        sentences = [s for s in body.split(". ") if s]
        assert len(sentences) >= 3 and body.endswith(".")
        assert all(s[0].isupper() for s in sentences)
        words = body.lower().split()
        assert all(a != b for a, b in itertools.pairwise(words)), body  # no "shows shows"


def test_names_keep_their_capitals_and_a_bare_greeting_still_gets_an_answer() -> None:
    assert "France" in make_answer(0, "What is the capital of France?", []).text
    assert make_answer(0, "hi", []).text.count(".") >= 3


def test_a_very_long_word_is_split_in_one_pass():
    """A 1,000,000-character word (a pasted blob) is cut into pieces that join back to it; the old
    splitter rescanned the rest of the word for every piece (quadratic: hours for this input)."""
    text = "x" * 1_000_000 + " tail"
    pieces = split_pieces(text, random.Random(7))
    assert "".join(pieces) == text
    assert max(len(piece) for piece in pieces) <= 9


def test_a_structured_answer_keeps_to_the_schemas_bounds_and_never_runs_away() -> None:
    import jsonschema

    from gtl_nb.sim.answers import sample_for_schema

    bounded = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "maxLength": 3},
            "score": {"type": "integer", "minimum": 5, "maximum": 9},
            "above": {"type": "integer", "exclusiveMinimum": 5},
            "ratio": {"type": "number", "exclusiveMaximum": 1},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
        },
        "required": ["code", "score", "above", "ratio", "tags"],
    }
    jsonschema.validate(sample_for_schema(bounded), bounded)
    # sizes no answer could hold are cut short, not built (a request must not hang the simulator)
    huge = {
        "type": "array",
        "minItems": 10**7,
        "items": {"type": "array", "minItems": 10**7, "items": {"type": "string"}},
    }
    assert len(sample_for_schema(huge)) <= 16
    assert len(sample_for_schema({"type": "string", "minLength": 10**7})) <= 4096


_KEYWORDS = st.sampled_from(
    [
        "type",
        "properties",
        "required",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "format",
    ]
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.sampled_from(["string", "object", "array", "null", "#/$defs/a", "#/x", "uuid"]),
)
_ANY_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYWORDS, inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(_KEYWORDS, _ANY_JSON, max_size=6))
def test_a_malformed_schema_still_gets_a_sample_never_an_exception(schema) -> None:
    """A keyword of the wrong JSON type (``properties: null``, ``enum: {}``, ``minItems: inf``) is read as
    absent: the simulator answers, as a lenient provider would, instead of failing with a 500."""
    sample_for_schema(schema)
