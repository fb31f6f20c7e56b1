"""Faults injected by the core around each provider's chunks, with each provider's real error shapes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from gtl_nb import sim
from gtl_nb.sim.faults import FaultScript

from .conftest import PROVIDERS, is_complete, stream_request


def read_until_failure(request: dict[str, Any], timeout: float = 10) -> tuple[httpx.Response, bytes, Exception | None]:
    """Stream the body, returning what arrived and the transport error that ended it (if any)."""
    data = b""
    with httpx.Client(timeout=timeout) as client, client.stream("POST", **request) as response:
        try:
            for piece in response.iter_raw():
                data += piece
        except httpx.HTTPError as exc:
            return response, data, exc
    return response, data, None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_normal_stream_ends_with_the_provider_terminator(provider: str, serve_sim: Any) -> None:
    s = serve_sim(provider)
    response, body, error = read_until_failure(stream_request(provider, s))
    assert response.status_code == 200 and error is None
    assert is_complete(provider, body)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_scripted_429_then_ok(provider: str, serve_sim: Any) -> None:
    s = serve_sim(provider, [sim.Fault.http(429, retry_after=1), sim.Fault.ok()])
    request = stream_request(provider, s)
    first = httpx.post(**request)
    second = httpx.post(**request)
    third = httpx.post(**request)
    assert first.status_code == 429
    assert second.status_code == third.status_code == 200  # after the script: OK
    assert is_complete(provider, second.content)
    body = first.json()
    if provider in ("openai", "openai_compatible"):
        assert body["error"]["code"] == "rate_limit_exceeded" and first.headers["retry-after"] == "1"
    elif provider == "azure":
        assert body["error"]["code"] == "429" and "type" not in body["error"]
        assert "retry after 1 seconds" in body["error"]["message"] and first.headers["retry-after"] == "1"
    elif provider == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        assert first.headers["retry-after"] == "1"
    elif provider == "gemini":
        assert body["error"]["status"] == "RESOURCE_EXHAUSTED" and body["error"]["code"] == 429
        delays = [d["retryDelay"] for d in body["error"]["details"] if d["@type"].endswith("RetryInfo")]
        assert delays == ["1s"]
    else:
        assert isinstance(body["error"], str)


@pytest.mark.parametrize(
    ("provider", "status", "check"),
    [
        ("openai", 503, lambda b: b["error"]["type"] == "server_error"),
        ("azure", 503, lambda b: b["error"]["type"] == "server_error"),
        ("anthropic", 529, lambda b: b["error"]["type"] == "overloaded_error"),
        ("gemini", 503, lambda b: b["error"]["status"] == "UNAVAILABLE"),
        ("ollama", 503, lambda b: b["error"].startswith("server busy")),
    ],
)
def test_overloaded_uses_each_providers_status_and_body(provider: str, status: int, check: Any, serve_sim: Any) -> None:
    s = serve_sim(provider, sim.Fault.overloaded())
    response = httpx.post(**stream_request(provider, s))
    assert response.status_code == status
    assert check(response.json())


def test_openai_quota_is_a_429_insufficient_quota(serve_sim: Any) -> None:
    s = serve_sim("openai", sim.Fault.http(429, kind="quota"))
    body = httpx.post(**stream_request("openai", s)).json()
    assert body["error"]["code"] == "insufficient_quota" and body["error"]["type"] == "insufficient_quota"


def test_anthropic_server_error_is_api_error_and_retryable(serve_sim: Any) -> None:
    s = serve_sim("anthropic", sim.Fault.http(500))
    response = httpx.post(**stream_request("anthropic", s))
    assert response.status_code == 500 and response.json()["error"]["type"] == "api_error"
    assert response.headers["x-should-retry"] == "true"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_drop_after_closes_mid_stream_without_terminator(provider: str, serve_sim: Any) -> None:
    s = serve_sim(provider, sim.Fault.drop_after(2))
    response, body, error = read_until_failure(stream_request(provider, s))
    assert response.status_code == 200
    assert isinstance(error, httpx.RemoteProtocolError)  # the chunked body never finished
    assert body and not is_complete(provider, body)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_chunk_inserts_broken_json_and_the_stream_goes_on(provider: str, serve_sim: Any) -> None:
    s = serve_sim(provider, sim.Fault.malformed_chunk(after=1))
    response, body, error = read_until_failure(stream_request(provider, s))
    assert error is None and response.status_code == 200
    assert s.provider.malformed_chunk() in body
    assert is_complete(provider, body)


@pytest.mark.parametrize(
    ("provider", "marker"),
    [
        ("openai", b'data: {"error":{'),
        ("azure", b'data: {"error":{'),
        ("anthropic", b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"'),
        ("gemini", b'data: {"error": {"code": 503'),
        ("ollama", b'{"error":"an error was encountered while running the model"}\n'),
    ],
)
def test_stream_error_arrives_inside_a_200_and_ends_the_stream(provider: str, marker: bytes, serve_sim: Any) -> None:
    s = serve_sim(provider, sim.Fault.stream_error("overloaded", after=2))
    response, body, error = read_until_failure(stream_request(provider, s))
    assert response.status_code == 200 and error is None
    assert marker in body
    assert body.endswith(s.provider.stream_error_chunk("overloaded"))  # nothing after the error
    assert not is_complete(provider, body)


def test_slow_first_token_delays_the_first_chunk_not_the_headers(serve_sim: Any) -> None:
    s = serve_sim("openai", sim.Fault.slow_first_token(0.3))
    request = stream_request("openai", s)
    with httpx.Client(timeout=10) as client:
        started = time.monotonic()
        with client.stream("POST", **request) as response:
            headers_at = time.monotonic() - started
            first = next(response.iter_raw())
            first_at = time.monotonic() - started
    assert first.startswith(b"data: ")
    assert first_at >= 0.25  # generous lower bound
    assert headers_at < first_at


def test_slow_first_token_also_delays_a_non_streamed_answer(serve_sim: Any) -> None:
    s = serve_sim("ollama", sim.Fault.slow_first_token(0.2), models=sim.ANY_MODEL)  # model "m": any name
    started = time.monotonic()
    response = httpx.post(s.base_url + "/api/chat", json={"model": "m", "stream": False, "messages": []})
    assert response.status_code == 200 and time.monotonic() - started >= 0.15


def test_stall_stops_sending_so_a_read_timeout_fires(serve_sim: Any) -> None:
    s = serve_sim("anthropic", sim.Fault.stall(after=2, seconds=30))
    response, body, error = read_until_failure(stream_request("anthropic", s), timeout=0.3)
    assert response.status_code == 200
    assert isinstance(error, httpx.ReadTimeout)
    assert body.count(b"event: ") == 2


def test_a_short_stall_then_the_stream_completes(serve_sim: Any) -> None:
    s = serve_sim("gemini", sim.Fault.stall(after=1, seconds=0.2))
    started = time.monotonic()
    _, body, error = read_until_failure(stream_request("gemini", s))
    assert error is None and is_complete("gemini", body)
    assert time.monotonic() - started >= 0.15


def test_drop_on_a_non_streamed_response_cuts_the_body(serve_sim: Any) -> None:
    s = serve_sim("openai", sim.Fault.drop_after(0))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(
            s.base_url + "/chat/completions",
            json={"model": "m", "messages": []},
            headers={"authorization": "Bearer sim-key"},
        )


def test_set_faults_replaces_the_script(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    request = stream_request("ollama", s)
    assert httpx.post(**request).status_code == 200
    s.set_faults(sim.Fault.http(500))
    assert httpx.post(**request).status_code == 500
    assert httpx.post(**request).status_code == 500  # a single Fault applies to every request
    s.set_faults(None)
    assert httpx.post(**request).status_code == 200
    assert len(s.requests) == 4


def test_fault_script_consumes_one_per_request_then_ok() -> None:
    script = FaultScript([sim.Fault.http(429), sim.Fault.drop_after(1)])
    assert script.remaining == 2
    assert script.next().action == "http"
    assert script.next().action == "drop"
    assert script.next() == sim.Fault.ok() and script.remaining == 0
    with pytest.raises(TypeError):
        FaultScript([429])  # type: ignore[list-item]


def test_fault_http_derives_the_kind_from_the_status() -> None:
    assert sim.Fault.http(429).kind == "rate_limit"
    assert sim.Fault.http(503).kind == "overloaded"
    assert sim.Fault.http(500).kind == "server_error"
    assert sim.Fault.http(429, kind="quota").kind == "quota"
    assert sim.Fault.overloaded().status is None
