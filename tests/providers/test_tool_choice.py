"""One reading of ``tool_choice`` for every dialect, and each dialect's shape for it."""

from __future__ import annotations

import json
import re

import msgspec
import pytest

import gtl_nb
from gtl_nb.protocol import CompletionRequest, InvalidRequestError, Message, Tool
from gtl_nb.providers.base import Deployment, NotServedHere, ToolChoice, check_tool_choice, parse_tool_choice
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


WEATHER_ONLY = [Tool(name="get_weather", parameters={"type": "object", "properties": {}})]


@pytest.mark.parametrize(
    ("tools", "choice", "complaint"),
    [
        (WEATHER_ONLY, "nope", "'nope', which is not among the request's tools (get_weather)"),
        (WEATHER_ONLY, {"type": "function", "function": {"name": "nope"}}, "not among the request's tools"),
        (None, "required", "asks for a tool call, but the request has no tools"),
        (None, {"type": "any"}, "asks for a tool call, but the request has no tools"),
        (None, "get_weather", "asks for a tool call, but the request has no tools"),
        (WEATHER_ONLY, {"type": "tool", "name": "nope"}, "'nope', which is not among"),  # Anthropic's shape
    ],
)
def test_a_tool_choice_the_tools_cannot_give_is_refused(tools, choice, complaint):
    request = CompletionRequest(
        session_id="s", model="m", messages=[Message(role="user", content="hi")], tools=tools, tool_choice=choice
    )
    with pytest.raises(InvalidRequestError, match=re.escape(complaint)):
        check_tool_choice(request)


@pytest.mark.parametrize(
    "choice",
    [
        None,
        "auto",
        "none",
        {"type": "none"},
        "get_weather",
        {"type": "tool", "name": "get_weather"},
        # a provider's own shapes, which its dialect passes on: not GTL's to judge
        {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function"}]}},
        {"type": "custom", "custom": {"name": "grammar"}},
    ],
)
def test_a_tool_choice_the_tools_can_give_passes(choice):
    request = CompletionRequest(
        session_id="s", model="m", messages=[Message(role="user", content="hi")], tools=WEATHER_ONLY, tool_choice=choice
    )
    check_tool_choice(request)
    if choice in ("auto", "none", None) or (isinstance(choice, dict) and choice["type"] in ("allowed_tools", "custom")):
        check_tool_choice(msgspec.structs.replace(request, tools=None))


def test_the_engine_refuses_it_before_any_provider_is_called(tmp_path):
    client = gtl_nb.connect(config={"ledger": {"path": str(tmp_path / "ledger.sqlite3")}}, environ={})
    try:
        with pytest.raises(InvalidRequestError, match="not among the request's tools"):
            client.complete("echo", "Weather in Oslo?", tools=WEATHER_ONLY, tool_choice="get_forecast")
        with pytest.raises(InvalidRequestError, match="has no tools"):
            client.complete("echo", "Weather in Oslo?", tool_choice="required")
        rows = client.usage()
    finally:
        client.close()
    assert list(rows["status"]) == ["error", "error"]  # each refusal still leaves its one ledger row
    assert list(rows["error_code"]) == ["INVALID_REQUEST", "INVALID_REQUEST"]


def test_openais_allowed_tools_still_reaches_openai():
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function",
               "function": {"name": "get_weather"}}]}}  # fmt: skip
    with gtl_nb.sim.running("openai") as url:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": url}}, config={"ledger": {"enabled": False}}
        )
        try:
            answer = client.complete("openai:gpt-4o-mini", "Weather in Oslo?", tools=WEATHER_ONLY, tool_choice=allowed)
        finally:
            client.close()
    assert [call.name for call in answer.tool_calls] == ["get_weather"]


# -- at most one tool call (GTL's "parallel": false) --------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"type": "auto", "parallel": False}, ToolChoice("auto", parallel=False)),
        ({"parallel": False}, ToolChoice("auto", parallel=False)),
        ({"type": "any", "disable_parallel_tool_use": True}, ToolChoice("required", parallel=False)),  # Anthropic's
        ({"name": "get_weather", "parallel": False}, ToolChoice("tool", "get_weather", parallel=False)),
        ({"type": "auto", "parallel": True}, ToolChoice("auto")),
    ],
)
def test_parallel_false_reads_as_one_call_at_most(given, expected):
    assert parse_tool_choice(given) == expected


ONE_CALL = {
    "openai": lambda body: body["parallel_tool_calls"] is False and body["tool_choice"] == "auto",
    "anthropic": lambda body: body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True},
}


@pytest.mark.parametrize("provider", sorted(DEPLOYMENTS))
def test_one_call_at_most_reaches_the_apis_that_take_it_and_is_refused_by_the_others(provider):
    request = CompletionRequest(
        session_id="s",
        model="m",
        messages=[Message(role="user", content="hi")],
        tools=TOOLS,
        tool_choice={"type": "auto", "parallel": False},
    )
    dialect = get_provider(provider)
    if provider in ONE_CALL:
        body = json.loads(dialect.build_request(request, DEPLOYMENTS[provider], now=0.0).body)
        assert ONE_CALL[provider](body), body
        untooled = msgspec.structs.replace(request, tools=None)  # no tools: no flag (OpenAI refuses it then)
        assert "parallel_tool_calls" not in json.loads(
            dialect.build_request(untooled, DEPLOYMENTS[provider], now=0.0).body
        )
    else:
        one_call = r"^INVALID_REQUEST: tool_choice\.parallel: .* cannot limit an answer to one tool call"
        with pytest.raises(NotServedHere, match=one_call):
            dialect.build_request(request, DEPLOYMENTS[provider], now=0.0)
        # "none" calls nothing: nothing to limit, nothing refused
        dialect.build_request(
            msgspec.structs.replace(request, tool_choice={"type": "none", "parallel": False}),
            DEPLOYMENTS[provider],
            now=0.0,
        )


def test_gtls_own_object_forms_reach_openai_as_its_words():
    for choice, sent in (({"type": "required"}, "required"), ({"type": "any"}, "required"), ("any", "required")):
        request = CompletionRequest(
            session_id="s", model="m", messages=[Message(role="user", content="hi")], tools=TOOLS, tool_choice=choice
        )
        body = json.loads(get_provider("openai").build_request(request, DEPLOYMENTS["openai"], now=0.0).body)
        assert body["tool_choice"] == sent and "parallel_tool_calls" not in body


def test_parallel_tool_calls_false_makes_one_call_from_echo_and_the_simulators():
    two = [
        Tool(name="get_weather", parameters={"type": "object"}),
        Tool(name="get_time", parameters={"type": "object"}),
    ]
    prompt = "Call get_weather and get_time for Paris"
    with gtl_nb.sim.running("openai") as openai_url, gtl_nb.sim.running("anthropic") as anthropic_url:
        client = gtl_nb.connect(
            providers={
                "openai": {"api_key": "sim-key", "base_url": openai_url},
                "anthropic": {"api_key": "sim-key", "base_url": anthropic_url},
            },
            config={"ledger": {"enabled": False}},
            environ={},
        )
        try:
            for model in ("echo", "openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"):
                assert len(client.complete(model, prompt, tools=two).tool_calls) == 2, model
                one = client.complete(model, prompt, tools=two, parallel_tool_calls=False)
                assert [call.name for call in one.tool_calls] == ["get_weather"], model
            with pytest.raises(InvalidRequestError, match="parallel_tool_calls must be True or False"):
                client.request("echo", prompt, tools=two, parallel_tool_calls="no")
        finally:
            client.close()


@pytest.mark.parametrize("provider", ["ollama", "bedrock"])
@pytest.mark.parametrize("choice", ["none", {"type": "none"}, {"type": "none", "parallel": False}])
def test_none_in_any_form_keeps_the_tools_from_apis_without_a_tool_choice(provider, choice):
    """Ollama has no tool_choice and Converse no "none": the tools are left out — for the object forms
    too (they went out unrestricted, and the model could call them)."""
    request = CompletionRequest(
        session_id="s", model="m", messages=[Message(role="user", content="hi")], tools=TOOLS, tool_choice=choice
    )
    body = json.loads(get_provider(provider).build_request(request, DEPLOYMENTS[provider], now=0.0).body)
    assert "tools" not in body and "toolConfig" not in body, body


def test_parallel_false_with_none_stays_none_from_the_client_and_the_compatible_endpoints():
    from gtl_nb.gateway.compat.anthropic_request import _tool_choice as anthropic_choice
    from gtl_nb.gateway.compat.openai_request import tool_choice as openai_choice

    client = gtl_nb.connect(config={"ledger": {"enabled": False}}, environ={})
    try:
        assert (
            client.request("echo", "hi", tools=TOOLS, tool_choice="none", parallel_tool_calls=False).tool_choice
            == "none"
        )
    finally:
        client.close()
    assert openai_choice("none", False) == "none"
    assert anthropic_choice({"type": "none", "disable_parallel_tool_use": True}) == "none"
