"""``connect("stdio://...")`` against a real gateway process behaves like the embedded client."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

import gtl_nb
from gtl_nb.backend import Backend
from gtl_nb.completion import Completion
from gtl_nb.protocol import (
    AuthenticationError,
    Done,
    Error,
    InvalidRequestError,
    ModelNotFoundError,
    SessionStateMachine,
    Token,
)

MODEL = "gpt-4o-mini"
PROMPT = "Tell me about the harbour of Bergen"


def comparable(events: list) -> list:
    """Events without what differs between two runs: the session id and the timings."""
    out = []
    for event in events:
        event = msgspec.structs.replace(event, session_id="s")
        if isinstance(event, Done):
            event = msgspec.structs.replace(event, ttft_ms=None, latency_ms=None)
        out.append(event)
    return out


def legal(events: list) -> None:
    machine = SessionStateMachine(events[0].session_id)
    for event in events:
        machine.advance(event)
    machine.end_of_stream()


def embedded_client(sims) -> gtl_nb.Client:
    """The embedded client with the gateway's deployments (no ledger)."""
    providers = {
        "openai": {"api_key": "sim-key", "base_url": sims.fast.base_url},
        "badkey": {"type": "openai", "api_key": "not-the-key", "base_url": sims.fast.base_url},
    }
    return gtl_nb.connect(providers=providers, ledger=False, environ={})


@pytest.mark.parametrize("model", ["echo", f"openai:{MODEL}"])
def test_text_streams_as_it_does_embedded(client, sims, model):
    remote = list(client.stream(model, PROMPT, temperature=0.2))
    local_client = embedded_client(sims)
    try:
        local = list(local_client.stream(model, PROMPT, temperature=0.2))
        local_result = local_client.complete(model, PROMPT, temperature=0.2)
    finally:
        local_client.close()
    legal(remote)
    assert comparable(remote) == comparable(local)
    assert any(isinstance(e, Token) for e in remote)
    result = client.complete(model, PROMPT, temperature=0.2)
    assert isinstance(result, Completion)
    assert (result.text, result.provider, result.model, result.provider_type) == (
        local_result.text,
        local_result.provider,
        local_result.model,
        local_result.provider_type,
    )
    assert comparable([result.usage]) == comparable([local_result.usage])


def test_the_async_api_and_compare_work_through_the_gateway(client):
    answer = asyncio.run(client.acomplete("echo", PROMPT))
    assert PROMPT in answer.text
    comparison = client.compare(["echo", f"openai:{MODEL}"], PROMPT)
    assert [type(result) for result in comparison.results.values()] == [Completion, Completion]
    assert comparison.results[f"openai:{MODEL}"].provider_type == "openai"


def test_the_provider_list_comes_from_the_gateway(client):
    assert isinstance(client.backend, Backend)
    names = {info.provider: info.provider_type for info in client.providers()}
    assert names == {"openai": "openai", "slow": "openai", "badkey": "openai", "echo": "echo"}
    assert ("openai", MODEL) in client.models()
    assert client.provider_type("slow") == "openai"
    assert "echo" in client.list_models("echo")


def test_many_concurrent_sessions_share_one_connection(client):
    pid = client.backend.channel.pid
    items = [{"model": "echo", "messages": f"question number {i}"} for i in range(40)]
    items += [{"model": f"openai:{MODEL}", "messages": f"question number {i}"} for i in range(40, 50)]
    results = client.batch(items, concurrency=50, progress=False)
    assert all(isinstance(result, Completion) for result in results), results
    for i, result in enumerate(results[:40]):
        assert f"question number {i}" in result.text
    assert len({result.session_id for result in results}) == 50
    assert client.backend.channel.pid == pid  # one gateway, one connection


def test_a_key_the_provider_refuses_ends_with_auth_failed(client, sims):
    events = list(client.stream(f"badkey:{MODEL}", "hello"))
    assert isinstance(events[-1], Error)
    assert (events[-1].code, events[-1].retryable) == ("AUTH_FAILED", False)
    with pytest.raises(AuthenticationError) as remote:
        client.complete(f"badkey:{MODEL}", "hello")
    local_client = embedded_client(sims)
    try:
        with pytest.raises(AuthenticationError) as local:
            local_client.complete(f"badkey:{MODEL}", "hello")
    finally:
        local_client.close()
    # embedded, the key is the caller's own: the provider's words; through a gateway, it is the gateway's
    assert "Incorrect API key provided" in local.value.message
    assert remote.value.message.startswith("the provider of deployment 'badkey' refused the gateway's own credentials")


def test_a_frame_over_the_gateways_limit_ends_only_its_session(client):
    pid = client.backend.channel.pid
    with pytest.raises(InvalidRequestError, match="maximum frame size of 65536 bytes"):
        client.complete("echo", "x" * 100_000)
    assert "small" in client.complete("echo", "small").text  # the connection carries on
    assert client.backend.channel.pid == pid


def test_an_unknown_model_is_refused_by_the_gateway_as_embedded_refuses_it(client, sims):
    with pytest.raises(ModelNotFoundError) as remote:
        client.complete("no-such-model-anywhere", "hello")  # the gateway's error event, raised
    local_client = embedded_client(sims)
    try:
        with pytest.raises(ModelNotFoundError) as local:
            local_client.complete("no-such-model-anywhere", "hello")  # raised before sending
    finally:
        local_client.close()
    # the same refusal, each telling its reader where to look (engine.routing, "audience")
    assert remote.value.message.startswith("unknown model 'no-such-model-anywhere'")
    assert local.value.message.startswith("unknown model 'no-such-model-anywhere'")
    assert "client.models()" in remote.value.message and "`gtl models`" in local.value.message


def test_the_gateways_defaults_fill_a_request_as_they_do_embedded(write_config, open_client):
    client = open_client(write_config(defaults={"model": MODEL, "provider": "slow", "max_tokens": 50}))
    request = client.request(messages="hello")
    assert (request.model, request.provider, request.max_tokens) == (MODEL, "slow", 50)
    assert client.request(f"openai:{MODEL}", "hello").provider is None  # a named deployment is kept
    assert client.complete(messages="hello").provider == "slow"
