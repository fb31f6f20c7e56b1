"""Context windows: a simulator refuses a prompt over its model's window the way the real service does
(status, headers, error body and wording: the recorded fixtures for OpenAI and Anthropic, gemini-cli #4118 for
Gemini, aws-samples/assessment-generator #2 for Bedrock), counting the prompt as its usage would count it,
with the windows of the model catalog; and gtl_nb's dialects turn each refusal into CONTEXT_LENGTH_EXCEEDED.

A prompt of ``"x " * n`` is ``n`` tokens to the simulators but about ``n / 2`` to the client's rough
estimate (four characters a token): under the client's own check, so it reaches the simulator.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import ContextLengthExceededError
from gtl_nb.providers.catalog import Catalog
from gtl_nb.sim.anthropic import ANTHROPIC_CONTEXT_WINDOWS, ANTHROPIC_MODELS
from gtl_nb.sim.bedrock import BEDROCK_CONTEXT_WINDOWS, BEDROCK_MODELS
from gtl_nb.sim.gemini import GEMINI_CONTEXT_WINDOWS, GEMINI_MODELS
from gtl_nb.sim.ollama import OLLAMA_MODELS
from gtl_nb.sim.openai import OPENAI_CONTEXT_WINDOWS, OPENAI_MODELS

from .conftest import chat_request, fixture_json

MODELS = {
    "openai": "gpt-4o-mini",
    "azure": "gpt-4o",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "amazon.nova-micro-v1:0",
}
WINDOWS = {"openai": 128000, "azure": 128000, "anthropic": 200000, "gemini": 1048576, "bedrock": 128000}


def _serve(provider: str, **options: Any) -> sim.Simulator:
    return sim.serve(provider, api_key="sim-key", **options)


def _tokens_in(provider: str, reply: httpx.Response) -> int:
    """The input tokens a successful reply reports."""
    body = reply.json()
    if provider in ("openai", "openai_compatible", "azure"):
        return body["usage"]["prompt_tokens"]
    if provider == "anthropic":
        return body["usage"]["input_tokens"]
    if provider == "gemini":
        return body["usageMetadata"]["promptTokenCount"]
    if provider == "bedrock":
        return body["usage"]["inputTokens"]
    return body["prompt_eval_count"]


def _refusal(provider: str, tokens: int, window: int) -> Any:
    """The error body the real service answers."""
    if provider in ("openai", "azure"):
        return {
            "error": {
                "message": f"This model's maximum context length is {window} tokens. However, your messages "
                f"resulted in {tokens} tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
    if provider == "anthropic":
        message = f"prompt is too long: {tokens} tokens > {window} maximum"
        return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    if provider == "gemini":
        return {
            "error": {
                "code": 400,
                "message": f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({window}).",
                "status": "INVALID_ARGUMENT",
            }
        }
    return {"message": "Input is too long for requested model."}


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_prompt_over_the_catalogs_window_gets_the_services_refusal(provider: str) -> None:
    window = WINDOWS[provider]
    with _serve(provider) as server:
        reply = chat_request(provider, server, MODELS[provider], "x " * (window + 100))
    assert reply.status_code == 400
    body = reply.json()
    body.pop("request_id", None)
    message = body["message"] if provider == "bedrock" else body["error"]["message"]
    counted = max((int(n) for n in re.findall(r"\d+", message)), default=0)  # the prompt as counted
    if provider != "bedrock":  # Bedrock's message names no numbers
        assert window + 100 <= counted < window + 120  # the text and a few tokens of framing
    assert body == _refusal(provider, counted, window)
    if provider == "bedrock":
        assert reply.headers["x-amzn-errortype"].startswith("ValidationException:")
        assert reply.headers["x-amzn-requestid"]
    if provider == "openai":
        assert reply.headers["x-request-id"].startswith("req_")
    if provider == "anthropic":
        assert reply.headers["request-id"].startswith("req_")


def test_the_refusals_have_the_recorded_shapes() -> None:
    """Same keys as the recorded (transcribed) context-length errors of OpenAI and Anthropic."""
    with _serve("openai", context_windows={"gpt-4o-mini": 10}) as server:
        openai_body = chat_request("openai", server, "gpt-4o-mini", "x " * 20).json()
    recorded = fixture_json("openai", "error-400-context-length-exceeded.json")
    assert openai_body["error"].keys() == recorded["error"].keys()
    assert {k: openai_body["error"][k] for k in ("type", "param", "code")} == {
        k: recorded["error"][k] for k in ("type", "param", "code")
    }
    assert "maximum context length" in openai_body["error"]["message"]
    with _serve("anthropic", context_windows={"claude-haiku-4-5": 10}) as server:
        anthropic_body = chat_request("anthropic", server, "claude-haiku-4-5", "x " * 20).json()
    recorded = fixture_json("anthropic", "error-400-prompt-too-long.json")
    assert anthropic_body["type"] == recorded["type"] and anthropic_body["error"].keys() == recorded["error"].keys()
    assert anthropic_body["error"]["message"].startswith("prompt is too long: ")


@pytest.mark.parametrize("provider", list(MODELS))
def test_the_window_is_compared_with_the_prompt_as_its_usage_counts_it(provider: str) -> None:
    """A prompt of exactly the window is answered; one token less of window, and it is refused."""
    model = MODELS[provider]
    prompt = "Tell me about the harbour of Bergen and its ships, at length."
    with _serve(provider) as server:
        counted = _tokens_in(provider, chat_request(provider, server, model, prompt))
    with _serve(provider, context_windows={model: counted}) as server:
        assert chat_request(provider, server, model, prompt).status_code == 200
    with _serve(provider, context_windows={model: counted - 1}) as server:
        reply = chat_request(provider, server, model, prompt)
    assert reply.status_code == 400
    if provider != "bedrock":  # Bedrock's message names no numbers
        assert str(counted) in reply.text and str(counted - 1) in reply.text


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_model_without_a_window_has_no_limit(provider: str) -> None:
    with _serve(provider, models=sim.ANY_MODEL) as server:
        assert chat_request(provider, server, "house-model-9", "x " * 130_000).status_code == 200
    with _serve(provider, context_windows={MODELS[provider]: None}) as server:
        assert chat_request(provider, server, MODELS[provider], "x " * 130_000).status_code == 200


def test_an_inference_profile_has_its_models_window() -> None:
    with _serve("bedrock") as server:
        reply = chat_request("bedrock", server, "us.amazon.nova-micro-v1:0", "x " * 130_000)
    assert reply.status_code == 400 and reply.json() == _refusal("bedrock", 0, 0)
    # a window set for the model holds for its profiles too; one set for a profile, for that profile alone
    with _serve("bedrock", context_windows={"amazon.nova-micro-v1:0": 50}) as server:
        assert chat_request("bedrock", server, "us.amazon.nova-micro-v1:0", "x " * 200).status_code == 400
    with _serve("bedrock", context_windows={"us.amazon.nova-micro-v1:0": 50}) as server:
        assert chat_request("bedrock", server, "us.amazon.nova-micro-v1:0", "x " * 200).status_code == 400
        assert chat_request("bedrock", server, "amazon.nova-micro-v1:0", "x " * 200).status_code == 200


def test_ollama_trims_silently_as_its_truncate_default_does() -> None:
    """Ollama does not refuse an over-long chat (it trims it to ``num_ctx``): the simulator answers it."""
    with _serve("ollama") as server:
        assert chat_request("ollama", server, "llama3.1:8b", "x " * 140_000).status_code == 200


@pytest.mark.parametrize(
    ("provider", "served", "windows"),
    [
        ("openai", OPENAI_MODELS, OPENAI_CONTEXT_WINDOWS),
        ("azure", OPENAI_MODELS, OPENAI_CONTEXT_WINDOWS),
        ("anthropic", ANTHROPIC_MODELS, ANTHROPIC_CONTEXT_WINDOWS),
        ("gemini", GEMINI_MODELS, GEMINI_CONTEXT_WINDOWS),
        ("bedrock", BEDROCK_MODELS, BEDROCK_CONTEXT_WINDOWS),
    ],
)
def test_the_simulators_windows_are_the_catalogs(provider: str, served: tuple[str, ...], windows: dict) -> None:
    """The simulators import nothing of gtl_nb.providers: their own table must say what the catalog says."""
    catalog = Catalog.default()
    expected = {}
    for model in served:
        entry = catalog.entry(provider, model)
        if entry is not None and entry.context_window is not None:
            expected[model] = entry.context_window
    assert windows == expected


def test_the_ollama_catalog_windows_are_what_api_show_could_report() -> None:
    """Ollama's simulator refuses nothing; its catalog entries still name a window for most models."""
    catalog = Catalog.default()
    assert any((entry := catalog.entry("ollama", m)) and entry.context_window for m in OLLAMA_MODELS)


# -- the client ---------------------------------------------------------------------------------------------


def _client(provider: str, server: sim.Simulator) -> gtl_nb.Client:
    settings: dict[str, Any] = {"type": provider, "base_url": server.base_url}
    if provider == "bedrock":
        settings.update(aws_access_key_id="AKIDSIMULATOR", aws_secret_access_key="sim-secret", region="us-east-1")
    else:
        settings["api_key"] = "sim-key"
    if provider == "azure":
        settings["api_version"] = "2024-10-21"
    return gtl_nb.connect(providers={"sim": settings}, ledger=False)


@pytest.mark.parametrize("provider", list(MODELS))
def test_the_client_raises_context_length_exceeded_with_the_services_words(provider: str) -> None:
    """Over the real window, under the client's own rough check: the service's refusal reaches the caller
    as ContextLengthExceededError, once (not retried)."""
    prompt = "x " * (WINDOWS[provider] + 1000)
    with _serve(provider) as server:
        client = _client(provider, server)
        try:
            with pytest.raises(ContextLengthExceededError) as raised:
                client.complete(f"sim:{MODELS[provider]}", prompt)
        finally:
            client.close()
        assert len(server.requests) == 1
    assert raised.value.code == "CONTEXT_LENGTH_EXCEEDED"
    assert any(word in str(raised.value) for word in ("context length", "too long", "exceeds the maximum"))


@pytest.mark.parametrize("provider", list(MODELS))
def test_the_client_is_answered_under_the_window(provider: str) -> None:
    with _serve(provider) as server:
        client = _client(provider, server)
        try:
            answer = client.complete(f"sim:{MODELS[provider]}", "x " * 2000)
        finally:
            client.close()
    assert answer.text and answer.usage.tokens_in >= 2000
