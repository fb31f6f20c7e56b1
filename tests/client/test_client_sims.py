"""End to end: the client, engine, HTTP runner and every dialect against each provider's simulator.

Switching between a simulator and the real service is a base-URL change only: these deployments are
configured exactly as real ones would be, with the simulator's URL and credentials.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import (
    AuthenticationError,
    Done,
    ModelNotFoundError,
    RateLimitError,
    SessionStateMachine,
    Token,
    Tool,
    Usage,
)

# provider type -> (model, deployment settings given the simulator's base URL)
CASES = {
    "openai": ("gpt-4o-mini", lambda url: {"api_key": "sim-key", "base_url": url}),
    "azure": ("gpt-4o", lambda url: {"api_key": "sim-key", "base_url": url, "api_version": "2024-10-21"}),
    "anthropic": ("claude-sonnet-4-5", lambda url: {"api_key": "sim-key", "base_url": url}),
    "gemini": ("gemini-2.5-flash", lambda url: {"api_key": "sim-key", "base_url": url}),
    "ollama": ("llama3.1:8b", lambda url: {"base_url": url}),
    "bedrock": (
        "amazon.nova-lite-v1:0",
        lambda url: {
            "base_url": url,
            "region": "us-east-1",
            "aws_access_key_id": "AKIDSIMULATOR",
            "aws_secret_access_key": "sim-secret",  # (no control_plane_url: the listing asks base_url, off AWS)
        },
    ),
    "openai_compatible": ("qwen2.5-7b-instruct", lambda url: {"base_url": url, "models": ["qwen2.5-7b-instruct"]}),
}

WEATHER = Tool(
    name="get_weather",
    description="Weather for a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
)


@pytest.fixture(scope="module", params=sorted(CASES))
def setup(request):
    provider = request.param
    model, settings = CASES[provider]
    simulator = sim.serve(provider, seed=3)
    client = gtl_nb.connect(providers={provider: settings(simulator.base_url)}, environ={})
    yield provider, model, simulator, client
    client.close()
    simulator.close()


def legal(events) -> None:
    machine = SessionStateMachine(events[0].session_id)
    for event in events:
        machine.advance(event)
    machine.end_of_stream()


def test_streamed_text(setup):
    provider, model, simulator, client = setup
    events = list(client.stream(model, "Tell me about the harbour of Bergen", system="Be brief.", temperature=0.2))
    legal(events)
    text = "".join(e.text for e in events if isinstance(e, Token))
    assert "harbour of Bergen" in text
    usage = next(e for e in events if isinstance(e, Usage))
    assert isinstance(usage.tokens_in, int) and usage.tokens_in > 0
    assert isinstance(usage.tokens_out, int) and usage.tokens_out > 0
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop" and done.provider == provider
    sent = simulator.requests[-1]
    body = json.loads(sent.body)
    assert "Be brief." in json.dumps(body)


def test_non_streaming_gives_the_same_answer(setup):
    _provider, model, _simulator, client = setup
    streamed = client.complete(model, "Same answer both ways?")
    whole = client.complete(model, "Same answer both ways?", stream=False)
    assert whole.text == streamed.text
    assert whole.usage.tokens_out == streamed.usage.tokens_out


def test_tool_calls_and_results_round_trip(setup):
    _provider, model, _simulator, client = setup
    first = client.complete(model, "What is the weather in Oslo?", tools=[WEATHER])
    assert first.finish_reason == "tool_calls"
    assert [c.name for c in first.tool_calls] == ["get_weather"]
    jsonschema.validate(first.tool_calls[0].parsed_arguments, WEATHER.parameters)
    history = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        first.message,
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21 C"},
    ]
    follow = client.complete(model, history, tools=[WEATHER])
    assert follow.finish_reason == "stop"
    assert follow.text


@pytest.mark.parametrize("split", ["assistant text after the call", "user words before the result"])
def test_a_tool_loop_split_by_another_message_is_taken_by_every_provider(setup, split):
    """A call and its result with a message between them — the Responses API's items in the order LiteLLM
    sends them, or a user who spoke before the tool answered: every dialect sends it so that its provider,
    which pairs each call with the next message, takes it (OpenAI's Chat Completions refused it)."""
    _provider, model, _simulator, client = setup
    first = client.complete(model, "What is the weather in Oslo?", tools=[WEATHER])
    between = (
        {"role": "assistant", "content": "Let me look that up."}
        if split.startswith("assistant")
        else {"role": "user", "content": "In Celsius, please."}
    )
    history = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        first.message,
        between,
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21 C"},
    ]
    follow = client.complete(model, history, tools=[WEATHER])
    assert follow.text or follow.tool_calls


@pytest.mark.parametrize("offered", ["no tools", "tools with tool_choice none"])
def test_a_conversation_that_used_tools_goes_on_without_them_on_every_provider(setup, offered):
    """A tool loop, then the same history and a new question with no tools to call — a notebook's next
    cell, a summary at the end of an agent's loop: every provider answers it. Bedrock's Converse refuses
    tool blocks without a toolConfig and Anthropic's API tool blocks without tools, and Converse has no
    "none": those requests carry the calls and results as text; the other APIs take the blocks as they
    are."""
    provider, model, simulator, client = setup
    first = client.complete(model, "What is the weather in Oslo?", tools=[WEATHER])
    call = first.tool_calls[0]
    history = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        first.message,
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = client.complete(model, history, tools=[WEATHER])
    history += [second.message, {"role": "user", "content": "Thanks. Now just summarise."}]
    options = {} if offered == "no tools" else {"tools": [WEATHER], "tool_choice": "none"}
    follow = client.complete(model, history, **options)
    assert follow.finish_reason == "stop" and "summarise" in follow.text and not follow.tool_calls
    sent = simulator.requests[-1].body.decode()
    as_text = provider == "bedrock" or (provider == "anthropic" and offered == "no tools")
    assert ("[tool result for " in sent) is as_text
    assert (call.name in sent and json.dumps(call.id)[1:-1] in sent) or not as_text  # who was called, paired


def test_a_typo_after_the_deployment_prefix_gets_did_you_mean_from_the_providers_404():
    simulator = sim.serve("anthropic", seed=3)
    client = gtl_nb.connect(providers={"anthropic": CASES["anthropic"][1](simulator.base_url)}, environ={})
    try:
        with pytest.raises(ModelNotFoundError) as typo:
            client.complete("anthropic:claude-sonnet-4-55", "hi")
        assert "model: claude-sonnet-4-55; did you mean 'anthropic:claude-sonnet-4-5'" in str(typo.value)
        assert client.complete("anthropic:claude-sonnet-4-5", "hi").text
    finally:
        client.close()
        simulator.close()


def test_no_model_names_are_offered_on_a_404_that_is_not_about_a_model_name():
    """A 404 for the URL itself (a wrong base_url) says to check the base_url, and an Azure deployment
    name the operator listed nowhere is the resource's own: neither is told of the catalog's models."""
    simulator = sim.serve("openai", seed=3)
    azure = sim.serve("azure", seed=3)
    wrong_path = {"api_key": "sim-key", "base_url": simulator.root_url + "/nowhere/v1"}
    client = gtl_nb.connect(
        providers={
            "openai": wrong_path,
            "azure": {"type": "azure", "api_key": "sim-key", "base_url": azure.base_url},
        },
        environ={},
    )
    try:
        with pytest.raises(ModelNotFoundError) as lost:
            client.complete("openai:gpt-4o-minii", "hi")
        assert "check the base_url" in str(lost.value) and "did you mean" not in str(lost.value).lower()
        with pytest.raises(ModelNotFoundError) as unmade:
            client.complete("azure:prod-gpt4o-mini", "hi")
        assert "did you mean" not in str(unmade.value).lower()
    finally:
        client.close()
        simulator.close()
        azure.close()


def test_priced_models_get_a_cost_from_the_catalog(setup):
    provider, model, _simulator, client = setup
    answer = client.complete(model, "How much does this cost?")
    info = client.catalog.model(provider, model)
    if info is not None and info.cost_per_1k_input is not None and info.cost_per_1k_output is not None:
        expected = client.catalog.cost(
            provider, model, answer.usage.tokens_in, answer.usage.tokens_out, answer.usage.cached_tokens_in
        )
        assert answer.cost == pytest.approx(expected)
        assert answer.cost > 0 or info.cost_per_1k_input == 0
    else:
        assert answer.cost is None  # unknown price: cost unknown, never 0


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "azure", "bedrock"])
def test_a_wrong_credential_is_auth_failed(provider):
    model, settings = CASES[provider]
    with sim.running(provider) as url:
        config = settings(url)
        if "api_key" in config:
            config["api_key"] = "wrong"
        else:
            config["aws_secret_access_key"] = "wrong"
        client = gtl_nb.connect(providers={provider: config}, environ={})
        with pytest.raises(AuthenticationError) as info:
            client.complete(model, "hello")
        assert info.value.provider == provider
        client.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "azure"])
def test_rate_limit_carries_retry_after(provider):
    model, settings = CASES[provider]
    with sim.running(provider, faults=[sim.Fault.http(429, retry_after=7)]) as url:
        client = gtl_nb.connect(providers={provider: settings(url)}, routing={"retry": {"max_attempts": 1}}, environ={})
        with pytest.raises(RateLimitError) as info:
            client.complete(model, "hello")
        assert info.value.retryable and info.value.retry_after == pytest.approx(7)
        assert info.value.http_status == 429
        assert client.complete(model, "hello again").text  # the script ran out: the next request is fine
        client.close()


def test_live_model_listing(setup):
    provider, _model, simulator, client = setup
    names = client.list_models(provider)
    assert isinstance(names, list) and names
    assert all(isinstance(name, str) for name in names)
    if provider == "bedrock":  # asked of the simulator, the base_url, never of public AWS
        assert simulator.requests[-1].path == "/foundation-models"
