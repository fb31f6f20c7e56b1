"""What a model or a provider's API cannot take, asked through the compatible endpoints: a function name outside
an API's rule reaches the provider, whose refusal reaches the caller in its words (no provider's rule is every
provider's: Ollama takes any name), an effort reaches a model that does not reason as nothing, and an alias is
answered with the snapshot the provider names."""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.gateway.test_compat import (  # noqa: F401 - the module's fixtures: one gateway before every simulator
    backends,
    base_url,
    claude,
    embedded,
    ledger_path,
    oai,
    providers,
    target,
)

BAD_NAME = "get weather!"
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WORDS = {  # each API's refusal, as its simulator words it after the real one
    "openai": "Invalid 'tools[0].function.name': string does not match pattern.",
    "anthropic": "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,128}$'",
    "gemini": "Invalid function name. Must start with a letter or an underscore.",
    "bedrock": "at 'toolConfig.tools.1.member.toolSpec.name' failed to satisfy constraint",
}
USER = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.mark.parametrize("provider", sorted(WORDS))
def test_a_function_name_the_provider_refuses_is_its_400_in_its_words(provider: str, oai, claude) -> None:
    tool = {"type": "function", "function": {"name": BAD_NAME, "parameters": PARAMETERS}}
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=target(provider), messages=USER, tools=[tool])  # type: ignore[list-item]
    assert WORDS[provider] in refused.value.message
    with pytest.raises(anthropic.BadRequestError) as also:
        claude.messages.create(
            model=target(provider),
            max_tokens=64,
            messages=USER,  # type: ignore[arg-type]
            tools=[{"name": BAD_NAME, "input_schema": PARAMETERS}],
        )
    assert WORDS[provider] in str(also.value)


def test_a_provider_that_takes_any_function_name_is_sent_it(oai, backends) -> None:
    tool = {"type": "function", "function": {"name": BAD_NAME, "parameters": PARAMETERS}}
    answer = oai.chat.completions.create(model=target("ollama"), messages=USER, tools=[tool])  # type: ignore[list-item]
    assert answer.choices[0].message.tool_calls or answer.choices[0].message.content
    assert BAD_NAME.encode() in backends["ollama"].requests[-1].body


@pytest.mark.parametrize("effort", ["low", "high"])
def test_an_effort_to_a_model_that_does_not_reason_is_answered(effort: str, oai, backends) -> None:
    answer = oai.chat.completions.create(model="openai:gpt-4o", messages=USER, reasoning_effort=effort)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert b"reasoning_effort" not in backends["openai"].requests[-1].body


def test_an_alias_is_answered_with_the_snapshot_the_provider_names(oai, claude) -> None:
    """gateway.md's promise, which the simulators could not show while they answered an alias as asked."""
    answer = oai.chat.completions.create(model="openai:gpt-4o", messages=USER)
    assert answer.model == "gpt-4o-2024-08-06"
    # (a stream's chunks carry the model the request named: they are written before the done that names it)
    message = claude.messages.create(model="anthropic:claude-sonnet-4-5", max_tokens=64, messages=USER)  # type: ignore[arg-type]
    assert message.model == "claude-sonnet-4-5-20250929"
