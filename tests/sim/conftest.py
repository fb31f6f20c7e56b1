"""Shared helpers for the simulator tests: fixture access and raw wire parsing written for the tests.

The parsers here are deliberately tiny and separate from gtl_nb (the tests check the simulators against the
recorded fixtures, not against the adapters).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gtl_nb import sim

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wire"


PROVIDERS = ["openai", "openai_compatible", "azure", "anthropic", "gemini", "ollama"]
PROMPT = "Tell me something about simulators"


def stream_request(provider: str, s: sim.Simulator) -> dict[str, Any]:
    """httpx keyword arguments for a streamed chat request in ``provider``'s dialect."""
    root = s.root_url
    if provider in ("openai", "openai_compatible"):
        return {
            "url": s.base_url + "/chat/completions",
            "headers": {"authorization": "Bearer sim-key"},
            "json": {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": PROMPT}]},
        }
    if provider == "azure":
        return {
            "url": root + "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            "headers": {"api-key": "sim-key"},
            "json": {"stream": True, "messages": [{"role": "user", "content": PROMPT}]},
        }
    if provider == "anthropic":
        return {
            "url": root + "/v1/messages",
            "headers": {"x-api-key": "sim-key", "anthropic-version": "2023-06-01"},
            "json": {
                "model": "claude-haiku-4-5-20251001",
                "max_tokens": 500,
                "stream": True,
                "messages": [{"role": "user", "content": PROMPT}],
            },
        }
    if provider == "gemini":
        return {
            "url": root + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "headers": {"x-goog-api-key": "sim-key"},
            "json": {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
        }
    return {"url": root + "/api/chat", "json": {"model": "llama3.2", "messages": [{"role": "user", "content": PROMPT}]}}


def is_complete(provider: str, body: bytes) -> bool:
    """Whether the body ends with the provider's own end-of-stream marker."""
    if provider in ("openai", "openai_compatible", "azure"):
        return body.endswith(b"data: [DONE]\n\n")
    if provider == "anthropic":
        return body.endswith(b"\n\n") and b"event: message_stop" in body.rsplit(b"\n\n", 2)[-2]
    if provider == "gemini":
        return body.endswith(b"\r\n\r\n") and b'"finishReason"' in body.split(b"\r\n\r\n")[-2]
    return body.endswith(b"\n") and json.loads(body.splitlines()[-1]).get("done") is True


def fixture_bytes(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / name).read_bytes()


def fixture_json(provider: str, name: str) -> Any:
    return json.loads(fixture_bytes(provider, name))


def split_events(raw: bytes, separator: bytes = b"\n\n") -> list[bytes]:
    """The events of an SSE body (non-empty pieces between separators)."""
    return [e for e in raw.split(separator) if e.strip()]


def sse_fields(event: bytes, newline: bytes = b"\n") -> dict[str, str]:
    """``{"event": …, "data": …}`` of one SSE event (single-line fields only, as these services send)."""
    fields: dict[str, str] = {}
    for line in event.split(newline):
        if not line:
            continue
        name, _, value = line.decode("utf-8").partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    return fields


def data_objects(raw: bytes, separator: bytes = b"\n\n", newline: bytes = b"\n") -> list[Any]:
    """The JSON objects of the ``data:`` fields of an SSE body (``[DONE]`` kept as the string)."""
    out: list[Any] = []
    for event in split_events(raw, separator):
        data = sse_fields(event, newline)["data"]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def keys(obj: Any) -> frozenset[str]:
    return frozenset(obj) if isinstance(obj, dict) else frozenset()


def assert_keys_between(actual: dict[str, Any], samples: Iterable[dict[str, Any]], what: str) -> None:
    """The simulator's key set lies between the intersection and the union of the recorded samples' keys."""
    sample_keys = [keys(s) for s in samples]
    assert sample_keys, f"no recorded sample for {what}"
    lower = frozenset.intersection(*sample_keys)
    upper = frozenset.union(*sample_keys)
    got = keys(actual)
    assert lower <= got, f"{what}: missing {sorted(lower - got)} (recorded always has them)"
    assert got <= upper, f"{what}: unexpected {sorted(got - upper)} (never recorded)"


@pytest.fixture
def serve_sim() -> Iterator[Any]:
    """``serve_sim(provider, **kw)`` starts a simulator that is closed after the test."""
    started: list[sim.Simulator] = []

    def start(provider: str, faults: Any = None, **kwargs: Any) -> sim.Simulator:
        s = sim.serve(provider, faults, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


# a prompt of a million tokens (Gemini's window) takes seconds on a loaded machine: httpx's 5 s is too short
TIMEOUT = 60.0


def chat_request(provider: str, server: sim.Simulator, model: str, prompt: str = "hi") -> httpx.Response:
    """One non-streamed chat request for ``model`` in ``provider``'s dialect (the tests of every simulator's
    models and context windows send it)."""
    user = [{"role": "user", "content": prompt}]
    if provider in ("openai", "openai_compatible"):
        body = {"model": model, "messages": user}
        url = f"{server.base_url}/chat/completions"
        return httpx.post(url, json=body, headers={"authorization": "Bearer sim-key"}, timeout=TIMEOUT)
    if provider == "azure":
        url = f"{server.root_url}/openai/deployments/{model}/chat/completions?api-version=2024-10-21"
        return httpx.post(url, json={"messages": user}, headers={"api-key": "sim-key"}, timeout=TIMEOUT)
    if provider == "anthropic":
        headers = {"x-api-key": "sim-key", "anthropic-version": "2023-06-01"}
        body = {"model": model, "max_tokens": 20, "messages": user}
        return httpx.post(f"{server.root_url}/v1/messages", json=body, headers=headers, timeout=TIMEOUT)
    if provider == "gemini":
        url = f"{server.root_url}/v1beta/models/{model}:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        return httpx.post(url, json=body, headers={"x-goog-api-key": "sim-key"}, timeout=TIMEOUT)
    if provider == "bedrock":
        body = {"messages": [{"role": "user", "content": [{"text": prompt}]}]}
        url = f"{server.root_url}/model/{model}/converse"
        return httpx.post(url, json=body, headers={"authorization": "Bearer sim-key"}, timeout=TIMEOUT)
    body = {"model": model, "messages": user, "stream": False}
    return httpx.post(f"{server.root_url}/api/chat", json=body, timeout=TIMEOUT)
