"""Stop sequences a provider's API would refuse are refused before anything is sent, naming ``stop``.

GTL's request takes any number (the spec has no ``stop`` at all: it is one of the implementation's
extensions), so each dialect holds what its API takes: OpenAI and Azure at most 4, Gemini at most 5,
Bedrock's Converse at most 2,500 and none empty, Anthropic none empty or of whitespace only (and no limit
on the number). A refusal is ``NotServedHere``: another deployment of the request's list may take them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gtl_nb.protocol.messages import CompletionRequest, Message
from gtl_nb.providers.anthropic import AnthropicDialect
from gtl_nb.providers.base import Deployment, NotServedHere
from gtl_nb.providers.bedrock import BedrockDialect
from gtl_nb.providers.gemini import GeminiDialect
from gtl_nb.providers.ollama import OllamaDialect
from gtl_nb.providers.openai import AzureDialect, OpenAICompatibleDialect, OpenAIDialect

AWS_KEYS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret", "region": "us-east-1"}
DIALECTS: dict[str, tuple[Any, Deployment, str]] = {
    # name: (dialect, deployment, the model asked)
    "openai": (OpenAIDialect(), Deployment(name="o", type="openai", api_key="k"), "gpt-4o-mini"),
    "azure": (
        AzureDialect(),
        Deployment(name="a", type="azure", api_key="k", base_url="https://r.openai.azure.com"),
        "gpt-4o",
    ),
    "openai_compatible": (
        OpenAICompatibleDialect(),
        Deployment(name="c", type="openai_compatible", base_url="http://127.0.0.1:8000/v1"),
        "qwen3-8b",
    ),
    "anthropic": (AnthropicDialect(), Deployment(name="c", type="anthropic", api_key="k"), "claude-sonnet-4-5"),
    "gemini": (GeminiDialect(), Deployment(name="g", type="gemini", api_key="k"), "gemini-2.5-flash"),
    "bedrock": (BedrockDialect(), Deployment(name="b", type="bedrock", **AWS_KEYS), "amazon.nova-lite-v1:0"),
    "ollama": (OllamaDialect(), Deployment(name="l", type="ollama"), "llama3.1:8b"),
}
MOST = {"openai": 4, "azure": 4, "gemini": 5, "bedrock": 2500}  # (Converse's 2,500: 4 is the Agents runtime's)
"""The most stop sequences each API takes (the others name no limit)."""
SENT = {
    "openai": lambda body: body["stop"],
    "azure": lambda body: body["stop"],
    "openai_compatible": lambda body: body["stop"],
    "anthropic": lambda body: body["stop_sequences"],
    "gemini": lambda body: body["generationConfig"]["stopSequences"],
    "bedrock": lambda body: body["inferenceConfig"]["stopSequences"],
    "ollama": lambda body: body["options"]["stop"],
}


def build(name: str, stop: list[str]) -> dict[str, Any]:
    """The body ``name``'s dialect would send for a request with ``stop``."""
    dialect, deployment, model = DIALECTS[name]
    request = CompletionRequest(
        session_id="s", model=model, stop=stop, messages=[Message(role="user", content="Count to ten.")]
    )
    return json.loads(dialect.build_request(request, deployment, now=1_700_000_000.0).body)


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_as_many_stop_sequences_as_the_api_takes_are_sent(name):
    stop = [f"<{index}>" for index in range(MOST.get(name, 12))]
    assert SENT[name](build(name, stop)) == stop


@pytest.mark.parametrize("name", sorted(MOST))
def test_one_more_than_the_api_takes_is_refused_before_sending(name):
    stop = [f"<{index}>" for index in range(MOST[name] + 1)]
    with pytest.raises(NotServedHere, match=rf"stop: .* takes at most {MOST[name]} stop sequences, not "):
        build(name, stop)


@pytest.mark.parametrize(("name", "stop", "said"), [("anthropic", "", "empty"), ("bedrock", "", "empty")])
def test_an_empty_stop_sequence_is_refused_where_the_api_refuses_it(name, stop, said):
    with pytest.raises(NotServedHere, match=f"stop: .* refuses a stop sequence that is {said}"):
        build(name, ["END", stop])


@pytest.mark.parametrize("stop", ["\n", " \t", "\n\n"])
def test_anthropic_refuses_a_whitespace_only_stop_sequence_before_sending(stop):
    """Anthropic's own 400 ("each stop sequence must contain non-whitespace") — the stop an OpenAI
    caller often sends (``"\\n"``): refused here, another deployment of the list may take it."""
    with pytest.raises(NotServedHere, match=r"stop: Anthropic's Messages API refuses .* whitespace only"):
        build("anthropic", [stop])
    assert SENT["openai"](build("openai", [stop])) == [stop]  # OpenAI takes it
