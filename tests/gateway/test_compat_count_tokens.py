"""``POST /v1/messages/count_tokens``, driven by the official Anthropic SDK (``client.messages.count_tokens``).

An Anthropic or Gemini deployment's count is the provider's own (each simulator counts with the arithmetic of
its usage, so a count equals the ``usage.input_tokens`` of the same request); echo counts with its own tokenizer;
every other deployment's is the gateway's estimate, and the ``gtl-token-count`` header says which. The
errors are those ``/v1/messages`` answers, in Anthropic's shape; a count writes no ledger row.
"""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.estimates import estimate_prompt_tokens
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.compat.anthropic_request import COUNTED, count_request
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol.errors import InvalidRequestError, ModelNotFoundError
from tests.gateway.conftest import SIM_KEY, jwt_echo_gateway, write_toml
from tests.gateway.test_compat import (  # noqa: F401 - the module's fixtures: one gateway before every simulator
    ANTHROPIC_TOOL,
    PIXEL,
    backends,
    base_url,
    claude,
    ledger_path,
    providers,
    rows_of,
    target,
)
from tests.gateway.test_compat_strict import sdk_fields
from tests.gateway.test_http import serving
from tests.gateway.test_secrets import CANARY

QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]
TOOL_LOOP = [
    *QUESTION,
    {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo", "days": 1}}
        ],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "Rain, 8 C"}]},
]
PICTURE = [
    {
        "role": "user",
        "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
            {"type": "text", "text": "What is in this picture?"},
        ],
    }
]

# each a request as the SDK's count_tokens takes it; messages.create gets the same with max_tokens
REQUESTS: dict[str, dict[str, Any]] = {
    "plain": {"messages": QUESTION},
    "system": {"messages": QUESTION, "system": "Be brief. Answer in one sentence."},
    "system blocks": {"messages": QUESTION, "system": [{"type": "text", "text": "Be brief."}]},
    "tools": {"messages": QUESTION, "tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "auto"}},
    "tool loop": {"messages": TOOL_LOOP, "tools": [ANTHROPIC_TOOL]},
    "thinking": {"messages": QUESTION, "thinking": {"type": "enabled", "budget_tokens": 2048}},
    "image": {"messages": PICTURE},
    "turns": {
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me about the harbour of Bergen"},
        ]
    },
}


def counted(client: anthropic.Anthropic, model: str, **request: Any) -> tuple[int, str, str]:
    """The count, its ``gtl-token-count`` header and its ``request-id``."""
    raw = client.messages.with_raw_response.count_tokens(model=model, **request)
    return raw.parse().input_tokens, raw.headers.get("gtl-token-count"), raw.headers.get("request-id")


# -- exact: the provider counts -----------------------------------------------------------------------


COUNTING_PATHS = {"anthropic": "/v1/messages/count_tokens", "gemini": "/v1beta/models/gemini-2.5-flash:countTokens"}


@pytest.mark.parametrize("provider", list(COUNTING_PATHS))
@pytest.mark.parametrize("shape", list(REQUESTS))
def test_a_deployment_whose_api_counts_counts_what_the_answer_then_uses(provider, shape, claude, backends):
    """Anthropic's ``count_tokens`` and Gemini's ``countTokens`` are asked (with the prompt the completion
    sends: no max_tokens for Anthropic, the whole generateContentRequest for Gemini), and their count is
    the input the answer to the same request reports."""
    request = REQUESTS[shape]
    tokens, how, _ = counted(claude, target(provider), **request)
    asked = backends[provider].requests[-1]
    assert asked.path == COUNTING_PATHS[provider] and "max_tokens" not in asked.json  # the provider's own count
    answer = claude.messages.create(model=target(provider), max_tokens=4096, **request)
    assert how == "exact" and tokens == answer.usage.input_tokens > 0


def test_a_bare_model_is_counted_where_it_is_routed(claude, backends):
    tokens, how, _ = counted(claude, "claude-sonnet-4-5", **REQUESTS["system"])
    assert backends["anthropic"].requests[-1].path == "/v1/messages/count_tokens"
    answer = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, **REQUESTS["system"])
    assert how == "exact" and tokens == answer.usage.input_tokens


@pytest.mark.parametrize("shape", ["plain", "system", "turns", "tool loop"])
def test_echo_counts_exactly_with_its_own_tokenizer(shape, claude):
    tokens, how, _ = counted(claude, "echo", **REQUESTS[shape])
    answer = claude.messages.create(model="echo", max_tokens=100, **REQUESTS[shape])
    assert how == "exact" and tokens == answer.usage.input_tokens > 0


def test_a_count_writes_no_ledger_row(claude, ledger_path):
    _, _, request_id = counted(claude, target("anthropic"), **REQUESTS["plain"])
    answer = claude.messages.create(model=target("anthropic"), max_tokens=50, **REQUESTS["plain"])
    assert [row["status"] for row in rows_of(ledger_path, answer.id)] == ["ok"]  # written after the count's would be
    assert request_id.startswith("req_") and Ledger(ledger_path).rows(session_id=request_id) == []


# -- elsewhere: the gateway's estimate, said so ----------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "bedrock", "ollama"])
@pytest.mark.parametrize("shape", ["plain", "tools", "image"])
def test_elsewhere_the_count_is_the_gateways_estimate_and_says_so(provider, shape, claude, backends):
    request = REQUESTS[shape]
    before = len(backends[provider].requests)
    tokens, how, request_id = counted(claude, target(provider), **request)
    asked = [each.method for each in backends[provider].requests[before:]]
    assert how == "estimate" and "POST" not in asked  # nothing generated (Ollama's model list may be read: GET)
    assert tokens == estimate_prompt_tokens(count_request({"model": target(provider), **request}, request_id))


def test_what_a_counting_api_cannot_carry_is_estimated_not_refused(claude, backends):
    """Gemini takes no "one tool call at most": its completion would be refused there (another deployment
    may serve it), yet the prompt has a size all the same — estimated, and said so."""
    before = len(backends["gemini"].requests)
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    tokens, how, _ = counted(claude, target("gemini"), **REQUESTS["tools"], extra_body={"tool_choice": choice})
    assert how == "estimate" and tokens > 0 and len(backends["gemini"].requests) == before


# -- errors, as /v1/messages answers them ---------------------------------------------------------------


def test_a_name_the_provider_does_not_know_is_its_404_as_messages_answers_it(claude):
    model = "anthropic:claude-sonnet-4-55"  # routed to Anthropic, which refuses the name: its words, the same offer
    with pytest.raises(anthropic.NotFoundError) as count:
        claude.messages.count_tokens(model=model, messages=QUESTION)
    with pytest.raises(anthropic.NotFoundError) as create:
        claude.messages.create(model=model, max_tokens=10, messages=QUESTION)
    assert count.value.body["error"] == create.value.body["error"]
    assert "'anthropic:claude-sonnet-4-5'" in count.value.body["error"]["message"]
    assert count.value.body["request_id"] == count.value.response.headers["request-id"]


@pytest.mark.parametrize("model", ["no-such-model", "nodeployment:gpt-4o", "ollama:not-pulled", "openai:gpt-4o-minii"])
def test_a_name_no_deployment_serves_is_a_404_though_nobody_counts_there(model, claude, backends):
    """An estimate asks no provider, so the name is checked as ``GET /v1/models/{id}`` checks it: a name only
    the local-model deployment took (it takes any), or one after a deployment's prefix, must be one that
    deployment serves (configured, the catalog's, its live model list) — else the 404 a completion gets."""
    with pytest.raises(anthropic.NotFoundError) as count:
        claude.messages.count_tokens(model=model, messages=QUESTION)
    with pytest.raises(anthropic.NotFoundError) as create:
        claude.messages.create(model=model, max_tokens=10, messages=QUESTION)
    assert count.value.body["error"]["type"] == create.value.body["error"]["type"] == "not_found_error"
    said = count.value.body["error"]["message"]
    assert model in said and "GET /v1/models" in said


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"max_tokens": 10}, "max_tokens: Extra inputs are not permitted"),
        ({"stream": True}, "stream: Extra inputs are not permitted"),
        ({"temperature": 0.5}, "temperature: Extra inputs are not permitted"),
        ({"system": 5}, "system: expected a string or an array of text blocks"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
    ],
)
def test_a_malformed_body_is_a_400_naming_the_field(body, said, claude, backends):
    before = len(backends["anthropic"].requests)
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.count_tokens(model=target("anthropic"), messages=QUESTION, extra_body=body)
    assert said in refused.value.body["error"]["message"]
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert len(backends["anthropic"].requests) == before


def test_a_body_that_is_no_request_is_a_400(base_url):
    headers = {"x-api-key": "x", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    for body, said in [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps({"model": target("anthropic")}).encode(), "messages"),
        (json.dumps({"messages": QUESTION}).encode(), "model"),
    ]:
        answer = httpx.post(f"{base_url}/v1/messages/count_tokens", content=body, headers=headers)
        assert answer.status_code == 400 and said in answer.json()["error"]["message"]
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"


def test_an_oversized_body_is_a_413(claude):
    big = "x" * (80 * 1024)  # over the gateway's 64 KiB
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.count_tokens(model=target("anthropic"), messages=[{"role": "user", "content": big}])
    assert refused.value.status_code == 413 and refused.value.body["error"]["type"] == "request_too_large"


def test_another_method_is_a_405(base_url):
    answer = httpx.get(f"{base_url}/v1/messages/count_tokens", headers={"anthropic-version": "2023-06-01"})
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert "use POST /v1/messages/count_tokens" in answer.json()["error"]["message"]


def test_what_gtl_has_no_message_for_under_messages_is_still_a_clear_404(claude):
    with pytest.raises(anthropic.NotFoundError, match="batches") as caught:
        claude.messages.batches.list()
    assert "POST /v1/messages/count_tokens" in caught.value.message


def test_every_field_the_sdk_counts_with_is_known_to_the_endpoint():
    """The SDK's own count_tokens (and the beta's) never sends a field the endpoint refuses: its
    keyword arguments less those it sends as headers."""
    headers = ("user_profile_id", "workspace_id")
    assert sdk_fields(anthropic.resources.Messages.count_tokens, *headers) <= COUNTED
    assert sdk_fields(anthropic.resources.beta.Messages.count_tokens, *headers, "betas") <= COUNTED


def test_a_bug_below_is_an_internal_error_in_anthropics_shape(claude, monkeypatch):
    from gtl_nb.providers.anthropic import AnthropicDialect

    def broken(self: Any, body: bytes) -> int:
        raise TypeError("a bug")

    monkeypatch.setattr(AnthropicDialect, "parse_count", broken)
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude.messages.count_tokens(model=target("anthropic"), messages=QUESTION)
    assert caught.value.status_code == 500 and caught.value.body["error"]["type"] == "api_error"


# -- a provider that cannot count ------------------------------------------------------------------------


def test_a_deployment_that_is_down_is_the_callers_5xx_and_another_may_count(tmp_path):
    """Anthropic overloaded: the count moves on to Bedrock, which serves the same model and is estimated
    (said so); with Anthropic alone, the caller gets the error a completion would, retryable."""
    down = sim.serve("anthropic", faults=sim.Fault.overloaded())
    bedrock = sim.serve("bedrock", seed=1)
    keys = {"aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret", "region": "us-east-1"}
    tables = {
        "providers.anthropic": {"api_key": SIM_KEY, "base_url": down.base_url},
        "providers.bedrock": {"base_url": bedrock.base_url, **keys},
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
    }
    try:
        with serving(write_toml(tmp_path / "gtl.toml", tables)) as served:
            client = anthropic.Anthropic(base_url=served.url, api_key="x", max_retries=0)
            tokens, how, _ = counted(client, "claude-haiku-4-5", messages=QUESTION)
            assert how == "estimate" and tokens > 0
            assert down.requests[-1].path == "/v1/messages/count_tokens"  # asked first, as a completion would be
            with pytest.raises(anthropic.APIStatusError) as count:
                client.messages.count_tokens(model="anthropic:claude-haiku-4-5", messages=QUESTION)
            with pytest.raises(anthropic.APIStatusError) as create:
                client.messages.create(model="anthropic:claude-haiku-4-5", max_tokens=10, messages=QUESTION)
            assert count.value.status_code == create.value.status_code >= 500
            assert count.value.body["error"]["type"] == create.value.body["error"]["type"]
            assert count.value.response.headers.get("x-should-retry") == "true"
    finally:
        down.close()
        bedrock.close()


def test_a_deployment_that_cannot_be_reached_names_no_address(tmp_path):
    closed = sim.serve("anthropic")
    address = closed.base_url
    closed.close()
    tables = {
        "providers.anthropic": {"api_key": SIM_KEY, "base_url": address},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
    }
    with serving(write_toml(tmp_path / "gtl.toml", tables)) as served:
        client = anthropic.Anthropic(base_url=served.url, api_key="x", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.count_tokens(model="anthropic:claude-haiku-4-5", messages=QUESTION)
    said = caught.value.body["error"]["message"]
    assert caught.value.status_code >= 500 and "'anthropic'" in said
    assert address.split("//")[1] not in said and "127.0.0.1" not in said


class _Quoting(http.server.BaseHTTPRequestHandler):
    """An Anthropic-shaped provider that refuses every key and quotes it back."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        key = self.headers.get("x-api-key", "")
        error = {"type": "authentication_error", "message": f"invalid x-api-key: {key}"}
        body = json.dumps({"type": "error", "error": error}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_key_the_provider_quotes_never_reaches_the_caller_or_the_log(tmp_path):
    provider = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quoting)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    tables = {
        "providers.leaky": {
            "type": "anthropic",
            "api_key": CANARY,
            "base_url": f"http://127.0.0.1:{provider.server_port}",
        },
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        "gateway.http": {"port": 0},
    }
    try:
        with start_gateway(write_toml(tmp_path / "gtl.toml", tables), env={"GTL_NB_LOG": "DEBUG"}) as gateway:
            client = anthropic.Anthropic(base_url=gateway.url("http"), api_key="x", max_retries=0)
            with pytest.raises(anthropic.APIStatusError) as refused:
                client.messages.count_tokens(model="leaky:claude-haiku-4-5", messages=QUESTION)
            answered = refused.value.response.text
            assert refused.value.status_code == 502 and "refused the gateway's own credentials" in answered
            assert CANARY not in answered and CANARY[:8] not in answered
        assert CANARY not in "".join(gateway.output) and CANARY[:8] not in "".join(gateway.output)
    finally:
        provider.shutdown()


# -- the token: its scope, its allow-lists, its budget ------------------------------------------------


@pytest.fixture
def counting_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, sim.Simulator]]:
    """A GhostToken gateway with echo, Anthropic and OpenAI, each principal kept to 2 requests a minute and
    the tenant ``acme`` to 1."""
    anthropic_sim = sim.serve("anthropic", seed=2)
    openai_sim = sim.serve("openai", seed=2)
    more = {
        "providers.anthropic": {"api_key": SIM_KEY, "base_url": anthropic_sim.base_url},
        "providers.openai": {"api_key": SIM_KEY, "base_url": openai_sim.base_url},
        "budgets": {"requests_per_minute": 2},
        "budgets.tenants.acme": {"requests_per_minute": 1},
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "GTL_TEST_COUNT_SECRET", more=more)
    try:
        with start_gateway(config) as running:
            yield running, mint, anthropic_sim
    finally:
        anthropic_sim.close()
        openai_sim.close()


def as_token(running: Any, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=running.url("http"), api_key=token, max_retries=0)


def test_counting_needs_the_completion_scope(counting_gateway):
    running, mint, _ = counting_gateway
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        as_token(running, mint("models:read")).messages.count_tokens(model="echo", messages=QUESTION)
    assert "'chat:write'" in refused.value.message and "counting tokens" in refused.value.message
    assert counted(as_token(running, mint("chat:write")), "echo", messages=QUESTION)[0] > 0
    with pytest.raises(anthropic.AuthenticationError):
        as_token(running, "not-a-token").messages.count_tokens(model="echo", messages=QUESTION)


def test_a_model_the_token_may_not_use_is_refused_as_messages_refuses_it(counting_gateway):
    running, mint, anthropic_sim = counting_gateway
    client = as_token(running, mint("chat:write", allowed_deployments=["echo"]))
    before = len(anthropic_sim.requests)
    with pytest.raises(anthropic.PermissionDeniedError) as count:
        client.messages.count_tokens(model=target("anthropic"), messages=QUESTION)
    with pytest.raises(anthropic.PermissionDeniedError) as create:
        client.messages.create(model=target("anthropic"), max_tokens=10, messages=QUESTION)
    assert count.value.body["error"] == create.value.body["error"] and len(anthropic_sim.requests) == before


def test_a_name_not_served_is_offered_close_names_only_if_the_token_may_list_models(counting_gateway):
    """As a completion's "did you mean": a token without ``models:read`` learns no model's name."""
    running, mint, _ = counting_gateway
    for scopes, offered in ((("chat:write",), False), (("chat:write", "models:read"), True)):
        with pytest.raises(anthropic.NotFoundError) as caught:
            as_token(running, mint(*scopes)).messages.count_tokens(model="openai:gpt-4o-minii", messages=QUESTION)
        said = caught.value.body["error"]["message"]
        assert "'openai:gpt-4o-minii'" in said and ("'openai:gpt-4o-mini'" in said) is offered


def test_a_count_the_provider_answers_spends_the_principals_requests_per_minute(counting_gateway):
    running, mint, anthropic_sim = counting_gateway
    client = as_token(running, mint("chat:write", subject="counter"))
    for _ in range(5):  # estimates call nobody and count against nothing
        assert counted(client, target("openai"), messages=QUESTION)[1] == "estimate"
    assert counted(client, target("anthropic"), messages=QUESTION)[1] == "exact"
    assert counted(client, target("anthropic"), messages=QUESTION)[1] == "exact"
    asked = len(anthropic_sim.requests)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.count_tokens(model=target("anthropic"), messages=QUESTION)
    assert "requests" in refused.value.message and len(anthropic_sim.requests) == asked
    with pytest.raises(anthropic.RateLimitError):  # and a completion shares the same minute
        client.messages.create(model="echo", max_tokens=10, messages=QUESTION)
    assert counted(as_token(running, mint("chat:write", subject="other")), target("anthropic"), messages=QUESTION)[0]


def test_a_tenants_shared_minute_counts_its_members_counts(counting_gateway):
    running, mint, _ = counting_gateway
    first = as_token(running, mint("chat:write", subject="ann-of-acme", tenant="acme"))
    second = as_token(running, mint("chat:write", subject="bob-of-acme", tenant="acme"))
    assert counted(first, target("anthropic"), messages=QUESTION)[1] == "exact"
    with pytest.raises(anthropic.RateLimitError) as refused:  # bob's own minute is untouched; acme's is spent
        second.messages.count_tokens(model=target("anthropic"), messages=QUESTION)
    assert "acme" in refused.value.message


# -- the embedded client --------------------------------------------------------------------------------


def test_the_embedded_client_counts_as_the_gateway_does(providers):
    served = {name: providers[name] for name in ("anthropic", "openai")}
    with gtl_nb.connect(providers=served, environ={}) as client:
        exact = client.count_tokens(target("anthropic"), "Tell me about Bergen", system="Be brief.")
        answer = client.complete(target("anthropic"), "Tell me about Bergen", system="Be brief.", max_tokens=100)
        assert exact.exact and exact.input_tokens == answer.usage.tokens_in
        assert (exact.deployment, exact.provider_type) == ("anthropic", "anthropic")
        echoed = client.count_tokens("echo", "Tell me about Bergen")
        assert echoed.exact and echoed.input_tokens == client.complete("echo", "Tell me about Bergen").usage.tokens_in
        estimated = client.count_tokens(target("openai"), "Tell me about Bergen")
        assert not estimated.exact and estimated.input_tokens > 0 and estimated.deployment == "openai"
        with pytest.raises(ModelNotFoundError):
            client.count_tokens("no-such-model", "hello")


def test_a_client_of_a_gateway_is_told_where_counting_is_served(base_url):
    with gtl_nb.connect(base_url) as client, pytest.raises(InvalidRequestError) as refused:
        client.count_tokens("echo", "hello")
    assert "POST /v1/messages/count_tokens" in str(refused.value)
