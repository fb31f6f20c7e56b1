"""Every effort a caller may ask, to models that take each API's knob differently, through the embedded client
and each dialect to its simulator — which refuses, as the real APIs do, ``reasoning_effort`` to an OpenAI model
that does not reason, ``thinking`` to a Claude model that does not think, a Gemini 2.5 ``thinkingBudget``
outside the model's range and Ollama's ``think`` to a model that does not think. An effort is a hint: each
dialect sends only what the model takes, so every one is answered; a budget the caller gives is sent as given,
and the API's refusal reaches the caller in its words."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import REASONING_EFFORTS

CASES = {
    "openai": ("gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo", "o4-mini", "gpt-5-mini"),
    "azure": ("gpt-4o", "o4-mini"),
    "anthropic": ("claude-3-5-haiku-latest", "claude-haiku-4-5"),
    "gemini": ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-3-pro-preview"),
    "ollama": ("llama3.1:8b", "qwen3:8b", "gpt-oss:20b"),
}


@pytest.fixture(scope="module")
def client() -> Iterator[gtl_nb.Client]:
    started = {name: sim.serve(name, seed=7) for name in CASES}
    providers: dict[str, dict[str, Any]] = {
        name: {"api_key": "sim-key", "base_url": simulator.base_url} for name, simulator in started.items()
    }
    providers["azure"]["api_version"] = "2024-10-21"
    providers["ollama"] = {"base_url": started["ollama"].base_url}
    connected = gtl_nb.connect(providers=providers, config={"ledger": {"enabled": False}}, environ={})
    yield connected
    connected.close()
    for simulator in started.values():
        simulator.close()


#: OpenAI's reasoning models take ``reasoning_effort`` natively: an effort the caller gives goes as given, and
#: the values an older one refuses are OpenAI's to refuse (below); every other model's effort is converted.
NATIVE = {("openai", "o4-mini"), ("openai", "gpt-5-mini"), ("azure", "o4-mini")}
BUDGETS = (0, 512, 1024, 2048, 8192, 16384, 24576, 32768, 100000)


@pytest.mark.parametrize(("provider", "model"), [(p, m) for p, models in CASES.items() for m in models])
def test_every_effort_and_budget_is_answered_whatever_the_model_takes(
    provider: str, model: str, client: gtl_nb.Client
) -> None:
    efforts = ("low", "medium", "high") if (provider, model) in NATIVE else REASONING_EFFORTS
    for effort in efforts:
        answer = client.complete(f"{provider}:{model}", "Say hello", reasoning_effort=effort, max_tokens=64)
        assert answer.text, (provider, model, effort)
    if provider == "gemini":
        return  # (a Gemini 2.5 budget goes as given: below)
    for budget in BUDGETS:  # read as an effort (OpenAI, Ollama) or sent as thinking tokens (Claude)
        answer = client.complete(f"{provider}:{model}", "Say hello", reasoning_budget=budget, max_tokens=64)
        assert answer.text, (provider, model, budget)


@pytest.mark.parametrize(("model", "effort"), [("o4-mini", "none"), ("o4-mini", "minimal"), ("gpt-5-mini", "none")])
def test_an_effort_an_openai_model_does_not_take_is_refused_in_its_words(
    model: str, effort: str, client: gtl_nb.Client
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        client.complete(f"openai:{model}", "Say hello", reasoning_effort=effort, max_tokens=64)
    assert f"'reasoning_effort' does not support '{effort}' with this model" in str(refused.value)


@pytest.mark.parametrize(
    ("model", "budget", "words"),
    [
        ("gemini-2.5-flash", 30000, "The thinking budget (30000) is invalid."),
        ("gemini-2.5-pro", 0, "Budget 0 is invalid. This model only works in thinking mode."),
    ],
)
def test_a_budget_the_caller_gives_is_sent_as_given_and_refused_in_the_apis_words(
    model: str, budget: int, words: str, client: gtl_nb.Client
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        client.complete(f"gemini:{model}", "Say hello", reasoning_budget=budget, max_tokens=64)
    assert words in str(refused.value)
