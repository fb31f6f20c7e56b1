"""What a gateway's caller reads when a provider fails: the gateway's own words, naming the deployment,
never the provider's account text nor its API's terms.

One real gateway (``gtl serve`` in a child process, JWT auth, ledger on; retries and breakers off)
fronts the in-repo simulators, each injecting one fault:

* an answer cut after three chunks, on each of the five providers, streamed and not: the same words
  for every provider ("deployment 'x' ended its answer early"), read through the Anthropic SDK while
  the deployment is OpenAI's — no ``[DONE]``, no quote of the provider's truncated body;
* a provider's 429 (a rate limit, a used-up quota) and overload: the provider's text names the
  operator's organisation and account pages; the caller hears the deployment, the status and when to
  retry (``Retry-After`` kept) — a canary checks that no piece of the provider's own text reaches it,
  while the embedded user, who owns the key, still reads the provider's words;
* every circuit open: ``503`` with ``Retry-After`` on each HTTP face (the GTL endpoint, both SDKs);
* refusals for a missing scope say what the caller did; the "unknown model" hint points at the
  caller's own API and names a scope only to a token that lacks it.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import openai
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import GTLError
from tests.faults.conftest import SIM_KEY, gateway_file, start, token

PROVIDERS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "amazon.nova-lite-v1:0",
    "ollama": "llama3.1:8b",
}
PROMPT = "Tell me about the harbour of Bergen and its ships, at length."
RETRY_AFTER = 30
ANSWER_TERMS = ("[DONE]", "finish_reason", "message_stop", "finishReason", "done:true", "chatcmpl", "{")
"""Words of one provider API's wire (or a quote of its body) that must not reach a gateway's caller."""


def _deployment(provider: str, simulator: sim.Simulator) -> dict[str, Any]:
    settings: dict[str, Any] = {"type": provider, "base_url": simulator.base_url}
    if provider == "bedrock":
        settings.update(aws_access_key_id="AKIDSIMULATOR", aws_secret_access_key="sim-secret", region="us-east-1")
    elif provider != "ollama":
        settings["api_key"] = SIM_KEY
    return settings


def _simulator(provider: str, fault: sim.Fault) -> sim.Simulator:
    if provider == "bedrock":
        return sim.serve("bedrock", fault, aws_access_key_id="AKIDSIMULATOR", aws_secret_access_key="sim-secret")
    return sim.serve(provider, fault, api_key=None if provider == "ollama" else SIM_KEY)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, sim.Simulator]]:
    running = {f"cut-{provider}": _simulator(provider, sim.Fault.drop_after(3)) for provider in PROVIDERS}
    running["limited"] = sim.serve("openai", sim.Fault.http(429, retry_after=RETRY_AFTER), api_key=SIM_KEY)
    running["quota"] = sim.serve("openai", sim.Fault.http(429, kind="quota"), api_key=SIM_KEY)
    running["claude-limited"] = sim.serve("anthropic", sim.Fault.http(429, retry_after=RETRY_AFTER), api_key=SIM_KEY)
    running["mid-error"] = sim.serve("gemini", sim.Fault.stream_error("server_error", after=2), api_key=SIM_KEY)
    running["mid-error-openai"] = sim.serve("openai", sim.Fault.stream_error("server_error", after=2), api_key=SIM_KEY)
    running["busy"] = sim.serve("anthropic", sim.Fault.overloaded(retry_after=RETRY_AFTER), api_key=SIM_KEY)
    yield running
    for simulator in running.values():
        simulator.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, sim.Simulator]) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("error-wording")
    tables: dict[str, dict[str, Any]] = {
        "routing.retry": {"max_attempts": 1},
        "routing.breaker": {"enabled": False},
    }
    for name, simulator in upstreams.items():
        provider = name.removeprefix("cut-") if name.startswith("cut-") else "openai"
        if name in ("claude-limited", "busy"):
            provider = "anthropic"
        elif name == "mid-error":
            provider = "gemini"
        tables[f"providers.{name}"] = _deployment(provider, simulator)
    # listed, so an unknown model is the gateway's own 404, not a question to the one open Ollama deployment
    tables["providers.cut-ollama"]["models"] = [PROVIDERS["ollama"]]
    gateway = start(gateway_file(directory, tables))
    yield gateway
    gateway.stop()


def _sdks(gateway: Any, scopes: tuple[str, ...] = ("chat:write", "models:read")) -> SimpleNamespace:
    key = token(scopes=scopes)
    url = gateway.url("http")
    return SimpleNamespace(
        openai=openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0),
        anthropic=anthropic.Anthropic(base_url=url, api_key=key, max_retries=0),
    )


def _openai_error(sdks: SimpleNamespace, model: str, stream: bool) -> openai.APIError:
    with pytest.raises(openai.APIError) as raised:
        answer = sdks.openai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], stream=stream
        )
        if stream:
            for _ in answer:
                pass
    return raised.value


def _anthropic_error(sdks: SimpleNamespace, model: str, stream: bool) -> anthropic.APIError:
    with pytest.raises(anthropic.APIError) as raised:
        answer = sdks.anthropic.messages.create(
            model=model, max_tokens=200, messages=[{"role": "user", "content": PROMPT}], stream=stream
        )
        if stream:
            for _ in answer:
                pass
    return raised.value


def _said(error: Any) -> str:
    """What the SDK's caller reads: the error object's message."""
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error", body) if isinstance(body.get("error", body), dict) else body
    return str(inner.get("message", error.message))


# -- 1. an answer cut short ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_a_cut_answer_is_worded_alike_for_every_provider(served, provider, stream):
    name = f"cut-{provider}"
    said = _said(_anthropic_error(_sdks(served), f"{name}:{PROVIDERS[provider]}", stream))
    assert said.startswith(f"deployment {name!r} ended its answer early (the connection closed after "), said
    assert not [term for term in ANSWER_TERMS if term in said], said


def test_a_cut_answer_reaches_a_gtl_client_and_the_openai_sdk_in_the_same_words(served):
    worded = "deployment 'cut-openai' ended its answer early"
    assert _said(_openai_error(_sdks(served), "cut-openai:gpt-4o-mini", stream=False)).startswith(worded)
    with gtl_nb.connect(served.url("ws"), token=token()) as client, pytest.raises(GTLError) as raised:
        client.complete("cut-openai:gpt-4o-mini", PROMPT)
    assert raised.value.code == "PROVIDER_UNAVAILABLE" and raised.value.retryable
    assert raised.value.message.startswith(worded) and "[DONE]" not in raised.value.message


_WHOLE_BUT_UNFINISHED = {
    # a whole body (its length announced and sent), whose answer lacks its end: no finish_reason, no [DONE]
    "openai": 'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    '"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n',
    # no message_stop
    "anthropic": 'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","type":"message",'
    '"role":"assistant","model":"claude-haiku-4-5","content":[],"stop_reason":null,'
    '"usage":{"input_tokens":1,"output_tokens":0}}}\n\n'
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    '"content_block":{"type":"text","text":""}}\n\n'
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"Hel"}}\n\n',
}


@contextlib.contextmanager
def _answering(body: str, announced: int | None = None) -> Iterator[str]:
    """A loopback server answering every POST with ``body`` as a whole server-sent-event stream (or, with
    ``announced`` longer than it, a stream whose connection closes before its length)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            data = body.encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(announced or len(data)))
            self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("provider", list(_WHOLE_BUT_UNFINISHED))
def test_a_whole_body_without_the_answers_end_is_worded_alike(provider):
    with _answering(_WHOLE_BUT_UNFINISHED[provider]) as url:
        base_url = f"{url}/v1" if provider == "openai" else url
        settings = {"type": provider, "api_key": SIM_KEY, "base_url": base_url}
        routing = {"retry": {"max_attempts": 1}}
        client = gtl_nb.connect(providers={"up": settings}, routing=routing, environ={})
        with client, pytest.raises(GTLError) as raised:
            client.complete(f"up:{PROVIDERS[provider]}", "hi")
    expected = "deployment 'up' ended its answer early (its response ended, without the answer's end, after "
    assert raised.value.message.startswith(expected), raised.value.message
    assert raised.value.code == "PROVIDER_UNAVAILABLE" and raised.value.retryable


def test_a_providers_own_error_at_the_end_of_a_cut_body_keeps_its_code_and_words():
    """An ``error`` event the provider sent, left unterminated at the body's end (no blank line after
    it), is the provider's answer — flushed by the decoder's close — not the decoder's finding that
    the answer was cut: it keeps its code, retryability and (embedded) its words."""
    body = _WHOLE_BUT_UNFINISHED["anthropic"] + (
        'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded CANARY"}}'
    )
    with _answering(body, announced=len(body) + 100) as url:  # the connection closes short of its length
        settings = {"type": "anthropic", "api_key": SIM_KEY, "base_url": url}
        client = gtl_nb.connect(providers={"up": settings}, routing={"retry": {"max_attempts": 1}}, environ={})
        with client, pytest.raises(GTLError) as raised:
            client.complete(f"up:{PROVIDERS['anthropic']}", "hi")
    assert raised.value.code == "OVERLOADED" and "Overloaded CANARY" in raised.value.message, raised.value


# -- 2. the provider's account text ----------------------------------------------------------------


def _providers_own_words(simulator: sim.Simulator, path: str, headers: dict[str, str]) -> str:
    """The message the provider itself answers (the canary: none of it may reach the gateway's caller)."""
    body = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(f"{simulator.base_url}{path}", json=body, headers=headers, timeout=10)
    assert answer.status_code in (429, 529)
    return str(answer.json()["error"]["message"])


def _canary_pieces(words: str) -> list[str]:
    """Distinctive pieces of a provider's message: its account ids, its addresses, and each clause."""
    pieces = re.findall(r"org-\w+|proj_\w+|https?://\S+", words)
    pieces += [clause.strip() for clause in re.split(r"[.;:]", words) if len(clause.strip()) > 12]
    return pieces


OPENAI_HEADERS = {"authorization": f"Bearer {SIM_KEY}"}
ANTHROPIC_HEADERS = {"x-api-key": SIM_KEY, "anthropic-version": "2023-06-01"}
CASES = {
    # deployment: (the provider's own path and headers, the caller's status — OpenAI's SDK, Anthropic's —,
    # the gateway's words); a quota used up is Anthropic's 402 billing_error, as it says it
    "limited": (
        "/chat/completions",
        OPENAI_HEADERS,
        (429, 429),
        "is rate-limiting the gateway (HTTP 429); retry in 30 s",
    ),
    "quota": ("/chat/completions", OPENAI_HEADERS, (429, 402), "the gateway's quota with it is used up (HTTP 429)"),
    "claude-limited": (
        "/v1/messages",
        ANTHROPIC_HEADERS,
        (429, 429),
        "is rate-limiting the gateway (HTTP 429); retry in 30 s",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_providers_account_text_never_reaches_the_gateways_caller(served, upstreams, name, stream):
    path, headers, statuses, worded = CASES[name]
    canaries = _canary_pieces(_providers_own_words(upstreams[name], path, headers))
    assert len(canaries) >= 3
    model = f"{name}:{'claude-haiku-4-5' if name.startswith('claude') else 'gpt-4o-mini'}"
    sdks = _sdks(served)
    errors = (_openai_error(sdks, model, stream), _anthropic_error(sdks, model, stream))
    for error, status in zip(errors, statuses, strict=True):
        said = _said(error)
        assert isinstance(error, (openai.APIStatusError, anthropic.APIStatusError))
        text = said + error.response.text
        assert [piece for piece in canaries if piece in text] == [], text
        assert "organization" not in text and "https://" not in text
        assert said.startswith(f"the provider of deployment {name!r} ") and worded in said, said
        assert error.response.status_code == status
        if "retry in" in worded:
            assert error.response.headers["retry-after"] == str(RETRY_AFTER)


def test_a_providers_overload_is_said_in_the_gateways_words(served):
    error = _anthropic_error(_sdks(served), "busy:claude-haiku-4-5", stream=False)
    assert isinstance(error, anthropic.APIStatusError) and error.response.status_code == 529
    assert _said(error) == "the provider of deployment 'busy' is overloaded (HTTP 529); retry in 30 s"


def test_the_embedded_user_who_owns_the_key_still_reads_the_providers_words(upstreams):
    settings = _deployment("openai", upstreams["limited"])
    routing = {"retry": {"max_attempts": 1}}
    with (
        gtl_nb.connect(providers={"limited": settings}, routing=routing, environ={}) as client,
        pytest.raises(GTLError) as raised,
    ):
        client.complete("limited:gpt-4o-mini", "hi")
    assert raised.value.code == "RATE_LIMIT" and "Rate limit reached" in raised.value.message


@pytest.mark.parametrize(("name", "model"), [("mid-error", "gemini-2.5-flash"), ("mid-error-openai", "gpt-4o-mini")])
def test_a_providers_error_inside_its_answer_is_said_in_the_gateways_words(served, name, model):
    worded = f"the provider of deployment {name!r} failed mid-answer"
    with gtl_nb.connect(served.url("sse"), token=token()) as client, pytest.raises(GTLError) as raised:
        client.complete(f"{name}:{model}", PROMPT)
    assert raised.value.message == worded
    assert _said(_openai_error(_sdks(served), f"{name}:{model}", stream=True)) == worded


# -- 3. every circuit open -------------------------------------------------------------------------


def test_every_circuit_open_is_a_503_with_retry_after_on_every_http_face(tmp_path):
    with sim.serve("openai", sim.Fault.http(429, retry_after=RETRY_AFTER), api_key=SIM_KEY) as limited:
        tables = {
            "providers.openai": _deployment("openai", limited),
            "routing.retry": {"max_attempts": 1},
            "routing.breaker": {"failure_threshold": 1, "error_rate_threshold": 0, "cooldown": 5},
        }
        gateway = start(gateway_file(tmp_path, tables))
        try:
            sdks = _sdks(gateway)
            first = _openai_error(sdks, "gpt-4o-mini", stream=False)  # the 429 that opens the circuit
            assert isinstance(first, openai.RateLimitError)
            for error in (
                _openai_error(sdks, "gpt-4o-mini", stream=False),
                _openai_error(sdks, "gpt-4o-mini", stream=True),
                _anthropic_error(sdks, "gpt-4o-mini", stream=False),
                _anthropic_error(sdks, "gpt-4o-mini", stream=True),
            ):
                assert error.response.status_code == 503, _said(error)
                assert "every circuit is open" in _said(error)
                assert 0 < int(error.response.headers["retry-after"]) <= RETRY_AFTER
            frame = {"type": "completion_request", "session_id": "s-open", "model": "gpt-4o-mini", "stream": False}
            frame["messages"] = [{"role": "user", "content": "hi"}]
            native = httpx.post(
                f"{gateway.url('http')}/v1/gtl", json=frame, headers={"authorization": f"Bearer {token()}"}
            )
            assert native.status_code == 503 and int(native.headers["retry-after"]) > 0
            assert native.json()["events"][-1]["code"] == "PROVIDER_UNAVAILABLE"
        finally:
            gateway.stop()


# -- 4. scopes and the model list ------------------------------------------------------------------


def test_every_operation_has_words_for_what_the_caller_did():
    from gtl_nb.gateway.scopes import DOING, SCOPES

    assert set(DOING) == set(SCOPES)
    assert not [words for words in DOING.values() if re.search(r"\b[a-z]+\.[a-z]+\b(?!\()", words)]


def test_a_missing_scope_is_said_as_what_the_caller_did(served):
    with gtl_nb.connect(served.url("ws"), token=token(scopes=("chat:write",))) as client:
        with pytest.raises(GTLError) as usage:
            client.usage()
        with pytest.raises(GTLError) as breakers:
            client.breakers()
    assert usage.value.code == "FORBIDDEN"
    assert "'usage:read', needed for reading usage (client.usage())" in usage.value.message
    assert "usage.read" not in usage.value.message
    assert "reading the circuit breakers (client.breakers())" in breakers.value.message
    with pytest.raises(openai.PermissionDeniedError) as listing:
        _sdks(served, scopes=("chat:write",)).openai.models.list()
    assert "'models:read', needed for listing models (GET /v1/models)" in _said(listing.value)
    assert "models.list" not in _said(listing.value)


def test_an_unknown_model_points_at_the_callers_own_api_unnested(served, tmp_path):
    lacking = _openai_error(_sdks(served, scopes=("chat:write",)), "no-such-model", stream=False)
    assert isinstance(lacking, openai.NotFoundError)
    said = _said(lacking)
    assert "GET /v1/models lists what this gateway serves" in said and "client.models()" not in said
    assert "models:read scope (this one has not)" in said
    assert "((" not in said and not re.search(r"\([^)]*\(", said), said  # no bracket inside a bracket
    holding = _said(_openai_error(_sdks(served), "no-such-model", stream=False))
    assert "GET /v1/models" in holding and "models:read" not in holding and "client.models()" not in holding
    with gtl_nb.connect(served.url("ws"), token=token()) as client, pytest.raises(GTLError) as gtl:
        client.complete("no-such-model", "hi")
    assert "client.models()" in gtl.value.message and "GET /v1/models" not in gtl.value.message
    assert "models:read" not in gtl.value.message


def test_a_gateway_checking_no_token_names_no_scope(tmp_path):
    from tests.gateway.conftest import write_toml
    from tests.gateway.test_http import serving

    config = write_toml(tmp_path / "gtl.toml", {"providers.echo": {}, "ledger": {"path": str(tmp_path / "l.sqlite")}})
    with serving(config) as gateway:
        sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.NotFoundError) as raised:
            sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    said = _said(raised.value)
    assert said.endswith("; GET /v1/models lists what this gateway serves"), said
