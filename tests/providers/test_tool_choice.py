"""One reading of ``tool_choice`` for every dialect, and each dialect's shape for it."""

from __future__ import annotations

import json

import pytest

from gtl_nb.protocol import CompletionRequest, Message, Tool
from gtl_nb.providers.base import Deployment, ToolChoice, parse_tool_choice
from gtl_nb.providers.registry import get_provider


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("auto", ToolChoice("auto")),
        ("none", ToolChoice("none")),
        ("required", ToolChoice("required")),
        ("any", ToolChoice("required")),
        ("get_weather", ToolChoice("tool", "get_weather")),
        ({"type": "function", "function": {"name": "get_weather"}}, ToolChoice("tool", "get_weather")),
        ({"name": "get_weather"}, ToolChoice("tool", "get_weather")),
        ({"type": "any"}, ToolChoice("required")),
        ({"type": "none"}, ToolChoice("none")),
        ({}, None),
        ("  ", None),
    ],
)
def test_every_shape_of_tool_choice_reads_the_same(given, expected):
    assert parse_tool_choice(given) == expected


TOOLS = [Tool(name="get_weather"), Tool(name="get_time")]
DEPLOYMENTS = {
    "anthropic": Deployment(name="a", type="anthropic", api_key="k"),
    "gemini": Deployment(name="g", type="gemini", api_key="k"),
    "bedrock": Deployment(name="b", type="bedrock", api_key="k", region="us-east-1"),
    "ollama": Deployment(name="o", type="ollama"),
    "openai": Deployment(name="x", type="openai", api_key="k"),
}
NAMED = {
    "anthropic": lambda body: body["tool_choice"] == {"type": "tool", "name": "get_weather"},
    "gemini": lambda body: (
        body["toolConfig"]["functionCallingConfig"] == {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    ),
    "bedrock": lambda body: body["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}},
    "ollama": lambda body: [t["function"]["name"] for t in body["tools"]] == ["get_weather"],
    "openai": lambda body: body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}},
}


@pytest.mark.parametrize("provider", sorted(NAMED))
@pytest.mark.parametrize("choice", ["get_weather", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_named_tool_reaches_every_provider_in_its_shape(provider, choice):
    request = CompletionRequest(
        session_id="s", model="m", messages=[Message(role="user", content="hi")], tools=TOOLS, tool_choice=choice
    )
    body = json.loads(get_provider(provider).build_request(request, DEPLOYMENTS[provider], now=0.0).body)
    assert NAMED[provider](body), body
