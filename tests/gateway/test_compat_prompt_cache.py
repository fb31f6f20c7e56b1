"""Prompt caching through the compatible endpoints: the SDKs' markers reach the deployment that answers,
and the cache's counts come back in each API's usage, the ledger row and the cost."""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import json
import uuid
from typing import Any

import anthropic
import msgspec
import openai
import pytest

from gtl_nb.gateway.compat.anthropic_request import messages_request
from gtl_nb.gateway.compat.anthropic_response import usage_object
from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.gateway.compat.openai_request import chat_request
from gtl_nb.protocol.messages import Usage
from tests.gateway.test_compat import (  # noqa: F401 - the module's fixtures: one gateway before every simulator
    backends,
    base_url,
    claude,
    ledger_path,
    oai,
    providers,
    rows_of,
    target,
)

EPHEMERAL = {"type": "ephemeral"}
QUESTION = "Which clause speaks of noon?"


def document() -> str:
    """A system prompt long enough to cache (~2,000 tokens by the simulators' estimate), unique per call."""
    marker = uuid.uuid4().hex
    return f"Charter {marker}. " + " ".join(
        f"clause {i} of the harbour charter says the tide turns at {i % 24} o'clock." for i in range(120)
    )


# -- the intake: markers become cache points ------------------------------------------------------------


def test_anthropic_markers_mark_the_messages_they_stand_in():
    body = {
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": EPHEMERAL}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": EPHEMERAL}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}, "cache_control": EPHEMERAL}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "42", "cache_control": EPHEMERAL},
                    {"type": "text", "text": "and?"},
                ],
            },
        ],
    }
    request = messages_request(body, "s")
    assert [(m.role, m.cache_point) for m in request.messages] == [
        ("system", True),
        ("user", True),
        ("assistant", True),
        ("tool", True),
        ("user", False),
    ]


def test_anthropic_text_marker_after_tool_results_marks_the_user_message():
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "42"},
                    {"type": "text", "text": "and?", "cache_control": EPHEMERAL},
                ],
            }
        ],
    }
    assert [(m.role, m.cache_point) for m in messages_request(body, "s").messages] == [("tool", False), ("user", True)]


def test_anthropic_automatic_caching_marks_the_last_message():
    body = {
        "model": "m",
        "max_tokens": 10,
        "cache_control": EPHEMERAL,
        "system": "s",
        "messages": [{"role": "user", "content": "q"}],
    }
    assert [m.cache_point for m in messages_request(body, "s").messages] == [False, True]


def test_anthropic_without_markers_marks_nothing():
    body = {"model": "m", "max_tokens": 10, "system": "s", "messages": [{"role": "user", "content": "q"}]}
    assert not any(m.cache_point for m in messages_request(body, "s").messages)


def test_openai_markers_on_a_message_or_a_part_mark_it():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "rules", "cache_control": EPHEMERAL},
            {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": EPHEMERAL}]},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "plain"},
        ],
    }
    assert [m.cache_point for m in chat_request(body, "s").request.messages] == [True, True, False, False]


def test_a_marked_block_followed_by_others_splits_its_message_there():
    body = {
        "model": "m",
        "max_tokens": 10,
        "system": [
            {"type": "text", "text": "doc", "cache_control": EPHEMERAL},
            {"type": "text", "text": "time: 12:05"},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "report", "cache_control": EPHEMERAL},
                    {"type": "text", "text": "question 1"},
                    {"type": "text", "text": "question 2"},
                ],
            }
        ],
    }
    assert [(m.role, m.content, m.cache_point) for m in messages_request(body, "s").messages] == [
        ("system", "doc", True),
        ("system", "time: 12:05", False),
        ("user", "report", True),
        ("user", "question 1\nquestion 2", False),
    ]
    openai_body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "report", "cache_control": EPHEMERAL},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "text", "text": "what changed?"},
                ],
            }
        ],
    }
    split = chat_request(openai_body, "s").request.messages
    assert [(m.content, m.images, m.cache_point) for m in split] == [
        ("report", [], True),
        ("what changed?", ["https://example.com/a.png"], False),
    ]


@pytest.mark.parametrize(
    "value", [False, True, "ephemeral", {}, {"type": "persistent"}, {"type": "ephemeral", "ttl": "2h"}, []]
)
def test_a_marker_that_is_not_ephemeral_is_refused(value):
    anthropic_body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "q", "cache_control": value}]}],
    }
    with pytest.raises(FieldError) as raised:
        messages_request(anthropic_body, "s")
    assert raised.value.param == "messages.0.content.0.cache_control"
    openai_body = {"model": "m", "messages": [{"role": "system", "content": "s", "cache_control": value}]}
    with pytest.raises(FieldError) as raised:
        chat_request(openai_body, "s")
    assert raised.value.param == "messages[0].cache_control"
    automatic = {"model": "m", "max_tokens": 10, "cache_control": value, "messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(FieldError) as raised:
        messages_request(automatic, "s")
    assert raised.value.param == "cache_control"  # the body's own: no path before it


def test_a_null_marker_and_a_one_hour_ttl_are_taken():
    for value, expected in ((None, False), ({"type": "ephemeral", "ttl": "1h"}, True)):
        body = {
            "model": "m",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "s", "cache_control": value}],
            "messages": [{"role": "user", "content": "q"}],
        }
        assert messages_request(body, "s").messages[0].cache_point is expected


def test_anthropic_usage_counts_cache_reads_and_writes_apart():
    usage = Usage(session_id="s", tokens_in=6156, tokens_out=3, cached_tokens_in=4096, cache_write_tokens_in=2048)
    assert usage_object(usage) == {
        "input_tokens": 12,
        "output_tokens": 3,
        "cache_creation_input_tokens": 2048,
        "cache_creation": {"ephemeral_5m_input_tokens": 2048, "ephemeral_1h_input_tokens": 0},
        "cache_read_input_tokens": 4096,
    }
    hour = msgspec.structs.replace(usage, cache_write_1h_tokens_in=1536)
    assert usage_object(hour)["cache_creation"] == {"ephemeral_5m_input_tokens": 512, "ephemeral_1h_input_tokens": 1536}


# -- end to end, with the SDKs ----------------------------------------------------------------------------


def anthropic_body(backends: dict[str, Any], provider: str) -> dict[str, Any]:
    return json.loads(backends[provider].requests[-1].body)


def test_anthropic_sdks_one_hour_marker_reaches_the_provider_and_its_writes_come_back_apart(
    claude, oai, backends, ledger_path
):
    hour = {"type": "ephemeral", "ttl": "1h"}
    system = [{"type": "text", "text": document(), "cache_control": hour}]
    messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION, "cache_control": EPHEMERAL}]}]
    answer = claude.messages.create(model=target("anthropic"), max_tokens=50, system=system, messages=messages)
    sent = anthropic_body(backends, "anthropic")
    assert sent["system"][0]["cache_control"] == hour  # carried, no longer dropped to five minutes
    assert sent["messages"][0]["content"][-1]["cache_control"] == EPHEMERAL
    usage = answer.usage
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_1h_input_tokens > 1024  # the system prompt: an hour
    total = usage.cache_creation.ephemeral_1h_input_tokens + usage.cache_creation.ephemeral_5m_input_tokens
    assert total == usage.cache_creation_input_tokens
    (row,) = rows_of(ledger_path, answer.id)
    assert row["cache_write_tokens_in"] == usage.cache_creation_input_tokens and row["cost"] > 0
    # the reverse order is the provider's 400, said by the gateway before any call
    late = [{"type": "text", "text": "rules", "cache_control": EPHEMERAL}]
    asked = [{"role": "user", "content": [{"type": "text", "text": "q", "cache_control": hour}]}]
    calls = len(backends["anthropic"].requests)
    with pytest.raises(anthropic.BadRequestError, match="longer-lived"):
        claude.messages.create(model=target("anthropic"), max_tokens=50, system=late, messages=asked)
    assert len(backends["anthropic"].requests) == calls
    # the OpenAI form other proxies take carries the ttl too
    parts = [{"type": "text", "text": document(), "cache_control": hour}]
    oai.chat.completions.create(model=target("anthropic"), messages=[{"role": "system", "content": parts},
                                {"role": "user", "content": QUESTION}])  # fmt: skip
    assert anthropic_body(backends, "anthropic")["system"][0]["cache_control"] == hour


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_caches_a_marked_system_prompt_at_anthropic(claude, backends, ledger_path, stream):
    system = [{"type": "text", "text": document(), "cache_control": EPHEMERAL}]
    messages = [{"role": "user", "content": QUESTION}]
    answers = []
    for _ in range(2):
        if stream:
            with claude.messages.stream(
                model=target("anthropic"), max_tokens=50, system=system, messages=messages
            ) as events:
                answers.append(events.get_final_message())
        else:
            answers.append(
                claude.messages.create(model=target("anthropic"), max_tokens=50, system=system, messages=messages)
            )
        sent = anthropic_body(backends, "anthropic")
        assert sent["system"][0]["cache_control"] == EPHEMERAL  # the marker reached the provider
    first, second = (answer.usage for answer in answers)
    assert first.cache_creation_input_tokens > 1024 and (first.cache_read_input_tokens or 0) == 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert (second.cache_creation_input_tokens or 0) == 0
    assert first.input_tokens == second.input_tokens  # only what follows the breakpoint
    rows = [rows_of(ledger_path, answer.id)[0] for answer in answers]
    assert rows[0]["cache_write_tokens_in"] == first.cache_creation_input_tokens
    assert rows[1]["cached_tokens_in"] == second.cache_read_input_tokens
    assert rows[0]["tokens_in"] == rows[1]["tokens_in"]
    assert rows[1]["cost"] < rows[0]["cost"]  # a read costs a tenth of input, a write a quarter more


def test_only_the_marked_block_is_cached_when_what_follows_it_changes(claude, oai):
    doc = document()
    reads = []
    for minute in range(3):
        system = [
            {"type": "text", "text": doc, "cache_control": EPHEMERAL},
            {"type": "text", "text": f"The time is 12:0{minute}."},
        ]
        usage = claude.messages.create(
            model=target("anthropic"), max_tokens=20, system=system, messages=[{"role": "user", "content": QUESTION}]
        ).usage
        reads.append((usage.cache_creation_input_tokens or 0, usage.cache_read_input_tokens or 0))
    written = reads[0][0]
    assert written > 1024 and reads[1:] == [(0, written), (0, written)]
    doc = document()
    counts = []
    for minute in range(2):
        content = [
            {"type": "text", "text": doc, "cache_control": EPHEMERAL},
            {"type": "text", "text": f"Question {minute}: {QUESTION}"},
        ]
        usage = oai.chat.completions.create(
            model=target("anthropic"), messages=[{"role": "user", "content": content}]
        ).usage
        counts.append(usage.prompt_tokens_details.cached_tokens)
    assert counts[0] == 0 and counts[1] > 1024


def test_an_sdk_hears_of_a_marker_it_got_wrong(claude, oai):
    with pytest.raises(anthropic.BadRequestError, match="cache_control"):
        claude.messages.create(
            model=target("anthropic"),
            max_tokens=10,
            system=[{"type": "text", "text": "s", "cache_control": {"type": "forever"}}],
            messages=[{"role": "user", "content": "q"}],
        )
    with pytest.raises(openai.BadRequestError, match="cache_control"):
        oai.chat.completions.create(
            model=target("anthropic"), messages=[{"role": "user", "content": "q", "cache_control": False}]
        )


def test_openai_sdk_caches_through_an_anthropic_deployment(oai, backends, ledger_path):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": document(), "cache_control": EPHEMERAL}]},
        {"role": "user", "content": QUESTION},
    ]
    first = oai.chat.completions.create(model=target("anthropic"), messages=messages)
    assert anthropic_body(backends, "anthropic")["system"][0]["cache_control"] == EPHEMERAL
    second = oai.chat.completions.create(model=target("anthropic"), messages=messages)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens  # every input token, cached or not
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert first.usage.prompt_tokens_details.cache_write_tokens > 1024  # the SDK's own field
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens_details.cache_write_tokens
    assert second.usage.prompt_tokens_details.cache_write_tokens == 0
    assert (
        rows_of(ledger_path, first.id)[0]["cache_write_tokens_in"] == second.usage.prompt_tokens_details.cached_tokens
    )


def test_a_marker_reaches_bedrock_as_a_cache_point(claude, backends):
    system = [{"type": "text", "text": document(), "cache_control": EPHEMERAL}]
    messages = [{"role": "user", "content": QUESTION}]
    usages = [
        claude.messages.create(model=target("bedrock"), max_tokens=50, system=system, messages=messages).usage
        for _ in range(2)
    ]
    sent = json.loads(backends["bedrock"].requests[-1].body)
    assert sent["system"][-1] == {"cachePoint": {"type": "default"}}
    assert usages[0].cache_creation_input_tokens > 1024
    assert usages[1].cache_read_input_tokens == usages[0].cache_creation_input_tokens


def test_a_marker_is_harmless_for_a_provider_that_caches_by_itself(oai, backends):
    messages = [{"role": "system", "content": "rules", "cache_control": EPHEMERAL}, {"role": "user", "content": "q"}]
    for provider in ("openai", "gemini", "ollama"):
        answer = oai.chat.completions.create(model=target(provider), messages=messages)
        assert answer.choices[0].message.content
        assert b"cache_control" not in backends[provider].requests[-1].body
