"""A failed tool's result through the Anthropic-compatible endpoint: the SDK's ``is_error`` reaches each
provider in its own terms (GTL's ``tool_error``), and the model's answer shows it read the failure."""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from tests.gateway.test_compat import (  # noqa: F401 - the module's fixtures: one gateway before every simulator
    ANTHROPIC_TOOL,
    backends,
    base_url,
    claude,
    embedded,
    ledger_path,
    providers,
    target,
)

FAILURE = "the weather service timed out"


def turn(is_error: Any = True) -> list[dict[str, Any]]:
    """A conversation whose last turn answers a tool call with a failure."""
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "days": 1}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": FAILURE, "is_error": is_error}
    return [
        {"role": "user", "content": "Weather in Oslo tomorrow?"},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]


def result_sent(provider: str, body: dict[str, Any]) -> Any:
    """The tool result as the provider's request holds it."""
    if provider == "anthropic":
        return body["messages"][-1]["content"][0]
    if provider == "bedrock":
        return body["messages"][-1]["content"][0]["toolResult"]
    if provider == "gemini":
        return body["contents"][-1]["parts"][0]["functionResponse"]["response"]
    return body["messages"][-1]  # openai, ollama: a tool message


EXPECTED = {
    "anthropic": lambda sent: sent["is_error"] is True and sent["content"] == FAILURE,
    "bedrock": lambda sent: sent["status"] == "error" and sent["content"] == [{"text": FAILURE}],
    "gemini": lambda sent: sent == {"error": FAILURE},
    "openai": lambda sent: sent["content"] == f"Error: {FAILURE}",
    "ollama": lambda sent: sent["content"] == f"Error: {FAILURE}",
}


READ = {
    "anthropic": "(the tool failed) the weather",
    "bedrock": "(the tool failed) the weather",
    "gemini": '{"error":',
    "openai": "Error: the weather",
    "ollama": "Error: the weather",
}


@pytest.mark.parametrize("provider", ["anthropic", "bedrock", "gemini", "openai", "ollama"])
def test_is_error_reaches_every_provider_in_its_own_terms(provider, claude, backends, embedded):
    answer = claude.messages.create(model=target(provider), max_tokens=80, tools=[ANTHROPIC_TOOL], messages=turn())
    sent = result_sent(provider, json.loads(backends[provider].requests[-1].body))
    assert EXPECTED[provider](sent), sent
    text = answer.content[0].text
    # the simulators quote the result they read: the failure, as the provider was told it
    assert text.startswith(f"The tool returned: {READ[provider]}"), text
    same = embedded.complete(target(provider), as_message_dicts(), tools=[ANTHROPIC_TOOL_AS_GTL], max_tokens=80)
    assert same.text == text  # the embedded client's message dicts take is_error too


def as_message_dicts() -> list[dict[str, Any]]:
    """``turn()`` as the client's message dicts (OpenAI's shape, with Anthropic's ``is_error``)."""
    call = {"id": "toolu_1", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}}
    return [
        {"role": "user", "content": "Weather in Oslo tomorrow?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "name": "get_weather", "content": FAILURE, "is_error": True},
    ]


ANTHROPIC_TOOL_AS_GTL = {
    "name": ANTHROPIC_TOOL["name"],
    "description": ANTHROPIC_TOOL["description"],
    "parameters": ANTHROPIC_TOOL["input_schema"],
}


def test_an_is_error_that_is_no_boolean_is_refused_by_name(claude):
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(
            model=target("anthropic"), max_tokens=80, tools=[ANTHROPIC_TOOL], messages=turn(is_error="yes")
        )
    assert "messages.2.content.0.is_error" in str(raised.value)
