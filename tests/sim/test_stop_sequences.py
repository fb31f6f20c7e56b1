"""Stop sequences: the simulators end the answer before the first one it would contain, as the services do,
and the answer says which one when its provider does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.sim.answers import make_answer

PROMPT = "Tell me about the harbour of Bergen"
CASES = {  # provider -> (model, deployment settings given the simulator's URL)
    "openai": ("gpt-4o-mini", lambda url: {"api_key": "sim-key", "base_url": url}),
    "anthropic": ("claude-sonnet-4-5", lambda url: {"api_key": "sim-key", "base_url": url}),
    "gemini": ("gemini-2.5-flash", lambda url: {"api_key": "sim-key", "base_url": url}),
    "ollama": ("llama3.1:8b", lambda url: {"base_url": url}),
    "bedrock": (
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        lambda url: {
            "base_url": url,
            "region": "us-east-1",
            "aws_access_key_id": "AKIDSIMULATOR",
            "aws_secret_access_key": "sim-secret",
        },
    ),
}
SAYS_WHICH = {"anthropic"}  # the APIs whose answer names the sequence that matched


def test_the_text_ends_before_the_earliest_stop_sequence():
    whole = make_answer(1, PROMPT, [])
    cut = make_answer(1, PROMPT, [], stop=["zzz", "harbour", "Tell"])
    assert cut.text == whole.text[: whole.text.index("Tell")]
    assert cut.stop_sequence == "Tell" and cut.finish == "stop"
    assert "".join(cut.pieces) == cut.text
    assert cut.tokens_out < whole.tokens_out


def test_a_tie_goes_to_the_first_listed_and_an_empty_sequence_is_ignored():
    cut = make_answer(1, PROMPT, [], stop=["", "harb", "harbour"])
    assert cut.stop_sequence == "harb"
    assert make_answer(1, PROMPT, [], stop=[""]).stop_sequence is None


def test_a_stop_sequence_never_met_changes_nothing():
    assert make_answer(1, PROMPT, [], stop=["never said"]) == make_answer(1, PROMPT, [])


def test_the_output_limit_may_come_first():
    assert "harbour" in make_answer(1, PROMPT, []).text
    cut = make_answer(1, PROMPT, [], stop=["harbour"], max_tokens=3)
    assert cut.finish == "length" and cut.stop_sequence is None and "harbour" not in cut.text


@pytest.fixture(scope="module", params=sorted(CASES))
def setup(request) -> Iterator[tuple[str, str, gtl_nb.Client]]:
    provider = request.param
    model, settings = CASES[provider]
    with sim.running(provider) as url:
        client = gtl_nb.connect(providers={provider: settings(url)}, environ={})
        yield provider, model, client
        client.close()


@pytest.mark.parametrize("stream", [False, True])
def test_each_provider_stops_at_the_sequence(setup, stream):
    provider, model, client = setup
    whole = client.complete(f"{provider}:{model}", PROMPT)
    if stream:
        events = client.stream(f"{provider}:{model}", PROMPT, stop=["harbour"])
        for _ in events:
            pass
        answer = events.result()
    else:
        answer = client.complete(f"{provider}:{model}", PROMPT, stop=["harbour"])
    assert answer.text == whole.text[: whole.text.index("harbour")]
    assert answer.finish_reason == "stop"
    assert answer.stop_sequence == ("harbour" if provider in SAYS_WHICH or provider == "bedrock" else None)


def test_converse_names_the_sequence_only_when_the_request_had_one():
    model, settings = CASES["bedrock"]
    with sim.running("bedrock") as url:
        client = gtl_nb.connect(providers={"bedrock": settings(url)}, environ={})
        answer = client.complete(f"bedrock:{model}", PROMPT, stop=["harbour", "Bergen"])
        client.close()
    assert answer.finish_reason == "stop" and answer.stop_sequence is None  # it says only that one matched
