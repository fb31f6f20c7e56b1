"""Azure OpenAI simulator: AzureOpenAI SDK, the v1 surface, api-version and api-key checks, recorded shapes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from gtl_nb import sim

from .conftest import assert_keys_between, data_objects, fixture_json

USER = [{"role": "user", "content": "Hello, simulated Azure"}]
ADDER = {
    "type": "function",
    "function": {
        "name": "adder",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
API_VERSION = "2024-10-21"


def azure(s: sim.Simulator, key: str = "sim-key") -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=s.base_url, api_key=key, api_version=API_VERSION, max_retries=0)


def chat_url(s: sim.Simulator, query: str = f"?api-version={API_VERSION}") -> str:
    return s.base_url + "/openai/deployments/gpt-4o/chat/completions" + query


def test_sdk_streams_text_after_the_prompt_filter_prelude(serve_sim: Any) -> None:
    s = serve_sim("azure")
    chunks = list(azure(s).chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    assert chunks[0].choices == [] and chunks[0].id == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith('You said: "Hello, simulated Azure".')
    req = s.requests[-1]
    assert req.path == "/openai/deployments/gpt-4o/chat/completions"
    assert req.query["api-version"] == API_VERSION and req.headers["api-key"] == "sim-key"


def test_sdk_streams_a_tool_call_and_usage_when_asked(serve_sim: Any) -> None:
    s = serve_sim("azure")
    chunks = list(
        azure(s).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "add 2 and 3"}],
            tools=[ADDER],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    arguments = "".join(
        (t.function.arguments or "") for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []
    )
    assert json.loads(arguments) == {"a": 1, "b": 1}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_sdk_non_streaming_answer(serve_sim: Any) -> None:
    s = serve_sim("azure")
    reply = azure(s).chat.completions.create(model="gpt-4o", messages=USER)
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    assert reply.model == "gpt-4o-2024-08-06"  # the snapshot the deployment's model is, as Azure names it


def test_the_v1_surface_serves_the_openai_client(serve_sim: Any) -> None:
    s = serve_sim("azure")
    c = openai.OpenAI(base_url=s.base_url + "/openai/v1", api_key="sim-key", max_retries=0)
    reply = c.chat.completions.create(model="gpt-4o", messages=USER)
    assert reply.choices[0].message.content
    assert s.requests[-1].path == "/openai/v1/chat/completions"


def test_wrong_key_raises_the_sdk_authentication_error(serve_sim: Any) -> None:
    s = serve_sim("azure")
    with pytest.raises(openai.AuthenticationError) as info:
        azure(s, key="wrong").chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.code == "401"


def test_missing_key_is_a_401_with_azures_body(serve_sim: Any) -> None:
    s = serve_sim("azure")
    response = httpx.post(chat_url(s), json={"messages": USER})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "401"
    assert "missing subscription key" in response.json()["error"]["message"]


def test_api_version_is_required_and_checked(serve_sim: Any) -> None:
    s = serve_sim("azure")
    missing = httpx.post(chat_url(s, ""), json={"messages": USER}, headers={"api-key": "sim-key"})
    assert missing.status_code == 404 and missing.json() == {"error": {"code": "404", "message": "Resource not found"}}
    bad = httpx.post(chat_url(s, "?api-version=latest"), json={"messages": USER}, headers={"api-key": "sim-key"})
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "API version not supported"
    preview = httpx.post(
        chat_url(s, "?api-version=2025-04-01-preview"), json={"messages": USER}, headers={"api-key": "sim-key"}
    )
    assert preview.status_code == 200


def test_unknown_deployment_is_deployment_not_found(serve_sim: Any) -> None:
    s = serve_sim("azure", models=["gpt-4o"])
    with pytest.raises(openai.NotFoundError) as info:
        azure(s).chat.completions.create(model="other", messages=USER)
    assert info.value.code == "DeploymentNotFound"


def test_rate_limit_says_retry_after_n_seconds_with_a_header(serve_sim: Any) -> None:
    s = serve_sim("azure", sim.Fault.http(429, retry_after=7))
    response = httpx.post(chat_url(s), json={"messages": USER}, headers={"api-key": "sim-key"})
    recorded = fixture_json("azure", "error-429-rate-limit.json")
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert set(response.json()["error"]) == set(recorded["error"])  # code + message, no type
    assert "Please retry after 7 seconds" in response.json()["error"]["message"]


# -- the bytes against the recorded chunks --------------------------------------------------------------------


def kind(chunk: dict[str, Any]) -> str:
    if "prompt_filter_results" in chunk:
        return "prelude"
    if not chunk["choices"]:
        return "usage"
    choice = chunk["choices"][0]
    if choice["finish_reason"]:
        return "finish"
    if "role" in choice["delta"]:
        return "role"
    if "tool_calls" in choice["delta"]:
        return "tool_first" if "id" in choice["delta"]["tool_calls"][0] else "tool_args"
    return "content"


def grouped(chunks: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for chunk in chunks:
        out.setdefault(kind(chunk), []).append(chunk)
    return out


def test_sim_chunks_match_the_recorded_azure_chunks(serve_sim: Any) -> None:
    s = serve_sim("azure")
    recorded = grouped(fixture_json("azure", "stream-text-then-tool-call.chunks.json"))
    raw = b""
    for body in (
        {"messages": USER, "stream": True},
        {"messages": [{"role": "user", "content": "adder"}], "tools": [ADDER], "stream": True},
    ):
        response = httpx.post(chat_url(s), json=body, headers={"api-key": "sim-key"})
        assert data_objects(response.content)[0]["prompt_filter_results"]  # the prelude comes first
        raw += response.content
    objects = [o for o in data_objects(raw) if o != "[DONE]"]
    got = grouped(objects)
    assert set(got) == set(recorded) == {"prelude", "role", "content", "tool_args", "finish"}
    for name, chunks in got.items():
        for chunk in chunks:
            assert list(chunk) == sorted(chunk)  # Azure's keys come out sorted
            assert_keys_between(chunk, recorded[name], f"{name} chunk")
            if name == "prelude":
                assert chunk["choices"] == [] and chunk["id"] == chunk["model"] == chunk["object"] == ""
                assert chunk["prompt_filter_results"] == recorded["prelude"][0]["prompt_filter_results"]
                continue
            choice = chunk["choices"][0]
            assert_keys_between(choice, [c["choices"][0] for c in recorded[name]], f"{name} choice")
            assert_keys_between(choice["delta"], [c["choices"][0]["delta"] for c in recorded[name]], f"{name} delta")
            expected_filter = {c["choices"][0]["content_filter_results"].__repr__() for c in recorded[name]}
            assert repr(choice["content_filter_results"]) in expected_filter


def test_sim_stream_has_usage_only_when_asked(serve_sim: Any) -> None:
    s = serve_sim("azure")
    plain = data_objects(
        httpx.post(chat_url(s), json={"messages": USER, "stream": True}, headers={"api-key": "sim-key"}).content
    )
    assert not any(isinstance(o, dict) and o.get("usage") for o in plain)
    asked = data_objects(
        httpx.post(
            chat_url(s),
            json={"messages": USER, "stream": True, "stream_options": {"include_usage": True}},
            headers={"api-key": "sim-key"},
        ).content
    )
    assert asked[-1] == "[DONE]" and asked[-2]["choices"] == [] and asked[-2]["usage"]["total_tokens"] > 0


def test_sim_midstream_error_matches_the_recorded_payload(serve_sim: Any) -> None:
    s = serve_sim("azure", sim.Fault.stream_error("overloaded", after=3))
    recorded = fixture_json("azure", "error-midstream-server-error.json")
    body = httpx.post(chat_url(s), json={"messages": USER, "stream": True}, headers={"api-key": "sim-key"}).content
    last = data_objects(body)[-1]
    assert set(last["error"]) == set(recorded["error"]) and last["error"]["type"] == "server_error"
    assert "currently overloaded" in last["error"]["message"]
