"""A client that ends a tool loop with a last call without tools — the official SDKs through the compatible
endpoints: every provider answers it. Bedrock's Converse refuses tool blocks without a toolConfig and
Anthropic's API tool blocks without tools: the gateway's dialects send those histories as text
(docs/providers.md, "A conversation that used tools, going on without them")."""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.gateway.test_compat import (  # noqa: F401 - the module's fixtures: one gateway before every simulator
    ANTHROPIC_TOOL,
    OPENAI_TOOL,
    PROVIDERS,
    backends,
    base_url,
    claude,
    embedded,
    ledger_path,
    oai,
    providers,
    target,
)

QUESTION = {"role": "user", "content": "What is the weather in Oslo?"}
LAST = {"role": "user", "content": "Thanks. Now just summarise."}


def sent_as_text(provider: str, backends: dict[str, Any]) -> bool:
    """Whether the provider's last request held the tool history as text (and no tool blocks or tools)."""
    body = backends[provider].requests[-1].body.decode()
    as_text = "[tool result for " in body
    if as_text:
        assert "toolUse" not in body and "tool_use" not in body and '"tools"' not in body, body
    return as_text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_ends_a_tool_loop_without_tools(provider, stream, oai, backends):
    first = oai.chat.completions.create(
        model=target(provider), messages=[QUESTION], tools=[OPENAI_TOOL], tool_choice="required"
    )
    call = first.choices[0].message.tool_calls[0]
    history = [
        QUESTION,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = oai.chat.completions.create(model=target(provider), messages=history, tools=[OPENAI_TOOL])
    history += [second.choices[0].message.model_dump(exclude_none=True), LAST]
    if stream:
        chunks = list(oai.chat.completions.create(model=target(provider), messages=history, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = next(c.choices[0].finish_reason for c in reversed(chunks) if c.choices and c.choices[0].finish_reason)
    else:
        answer = oai.chat.completions.create(model=target(provider), messages=history)
        text, finish = answer.choices[0].message.content, answer.choices[0].finish_reason
    assert finish == "stop" and "summarise" in text
    assert sent_as_text(provider, backends) is (provider in ("anthropic", "bedrock"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_sdk_ends_a_tool_loop_without_tools(provider, claude, backends):
    first = claude.messages.create(
        model=target(provider), max_tokens=300, messages=[QUESTION], tools=[ANTHROPIC_TOOL], tool_choice={"type": "any"}
    )
    use = next(block for block in first.content if block.type == "tool_use")
    history: list[dict[str, Any]] = [
        QUESTION,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
    ]
    second = claude.messages.create(model=target(provider), max_tokens=300, messages=history, tools=[ANTHROPIC_TOOL])
    history += [{"role": "assistant", "content": second.content[0].text}, LAST]
    answer = claude.messages.create(model=target(provider), max_tokens=300, messages=history)
    assert answer.stop_reason == "end_turn" and "summarise" in answer.content[0].text
    assert sent_as_text(provider, backends) is (provider in ("anthropic", "bedrock"))
    if provider == "bedrock":  # what the tool was called with and what it returned, paired by the call's id
        said = json.dumps(json.loads(backends["bedrock"].requests[-1].body)["messages"])
        assert f"[tool call {use.id}: get_weather " in said and f"[tool result for {use.id} (get_weather)]" in said
        assert "sunny, 21 C" in said
