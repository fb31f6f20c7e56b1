"""Input usage: every simulator bills the whole request — system prompt, every turn, tools, images — within
about 20 % of what the real service reported for the same request (the recorded fixtures)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import pytest

from gtl_nb import sim
from gtl_nb.sim.tokens import anthropic_image_tokens, gemini_image_tokens, image_size, openai_image_tokens, text_tokens

from .conftest import FIXTURES

README = (FIXTURES / "README.md").read_text(encoding="utf-8")
TOLERANCE = 0.20
SLACK = 2  # tokens: 20 % of a 10-token prompt is less than one word


def _recorded(provider: str) -> list[str]:
    """Fixtures of ``provider`` with a recorded request and the usage the service reported for it."""
    names = []
    for expected in sorted((FIXTURES / provider).glob("*.expected.json")):
        name = expected.name.removesuffix(".expected.json")
        usage = json.loads(expected.read_text(encoding="utf-8")).get("usage")
        if usage and (FIXTURES / provider / f"{name}.request.json").exists():
            names.append(name)
    return names


def _request(provider: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / provider / f"{name}.request.json").read_text(encoding="utf-8"))


def _real_input(provider: str, name: str) -> int:
    expected = json.loads((FIXTURES / provider / f"{name}.expected.json").read_text(encoding="utf-8"))
    return int(expected["usage"]["input_tokens"])


def _recorded_url(name: str) -> str:
    """The URL the fixture was recorded at (from the fixtures' README table)."""
    match = re.search(rf"\*\*{re.escape(name)}\*\* \|[^|]*\| POST `([^`]+)`", README)
    assert match, name
    return match.group(1)


def _simulated_input(provider: str, name: str) -> int:
    body = _request(provider, name)
    body.pop("stream_options", None)
    with sim.serve(provider, models=sim.ANY_MODEL) as server:  # fixtures name retired models too
        if provider == "openai":
            body["stream"] = False
            reply = httpx.post(
                f"{server.base_url}/chat/completions", json=body, headers={"authorization": "Bearer sim-key"}
            )
            return reply.json()["usage"]["prompt_tokens"]
        if provider == "anthropic":
            body["stream"] = False
            headers = {"x-api-key": "sim-key", "anthropic-version": "2023-06-01"}
            reply = httpx.post(f"{server.root_url}/v1/messages", json=body, headers=headers)
            return reply.json()["usage"]["input_tokens"]
        if provider == "gemini":
            model = re.search(r"/models/([^/:]+):", _recorded_url(name)).group(1)
            url = f"{server.root_url}/v1beta/models/{model}:generateContent"
            reply = httpx.post(url, json=body, headers={"x-goog-api-key": "sim-key"})
            return reply.json()["usageMetadata"]["promptTokenCount"]
        if provider == "bedrock":
            model = re.search(r"/model/([^/]+)/", _recorded_url(name)).group(1)
            url = f"{server.root_url}/model/{model}/converse"
            reply = httpx.post(url, json=body, headers={"authorization": "Bearer sim-key"})
            return reply.json()["usage"]["inputTokens"]
        body["stream"] = False
        reply = httpx.post(f"{server.root_url}/api/chat", json=body)
        return reply.json()["prompt_eval_count"]


CASES = [
    pytest.param(provider, name, id=f"{provider}/{name}")
    for provider in ("openai", "anthropic", "gemini", "bedrock", "ollama")
    for name in _recorded(provider)
    if not name.startswith("openai-compat")  # Ollama's OpenAI-compatible surface: not this simulator's
]


@pytest.mark.parametrize(("provider", "name"), CASES)
def test_input_tokens_are_within_a_fifth_of_the_recorded_usage(provider: str, name: str) -> None:
    real = _real_input(provider, name)
    simulated = _simulated_input(provider, name)
    assert abs(simulated - real) <= max(TOLERANCE * real, SLACK), f"simulated {simulated}, recorded {real}"


SYSTEM = " ".join(["Answer politely and cite the sources you rely on."] * 30)  # 270 words, 30 periods


def _billed_with_system_prompt(provider: str) -> int:
    """Input tokens billed for a long system prompt and the user message "hi"."""
    with sim.serve(provider) as server:
        if provider == "openai":
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
            }
            reply = httpx.post(
                f"{server.base_url}/chat/completions", json=body, headers={"authorization": "Bearer sim-key"}
            )
            return reply.json()["usage"]["prompt_tokens"]
        if provider == "anthropic":
            body = {
                "model": "claude-haiku-4-5",
                "max_tokens": 50,
                "system": SYSTEM,
                "messages": [{"role": "user", "content": "hi"}],
            }
            headers = {"x-api-key": "sim-key", "anthropic-version": "2023-06-01"}
            return httpx.post(f"{server.root_url}/v1/messages", json=body, headers=headers).json()["usage"][
                "input_tokens"
            ]
        body = {
            "systemInstruction": {"parts": [{"text": SYSTEM}]},
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        }
        url = f"{server.root_url}/v1beta/models/gemini-2.5-flash:generateContent"
        return httpx.post(url, json=body, headers={"x-goog-api-key": "sim-key"}).json()["usageMetadata"][
            "promptTokenCount"
        ]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_a_long_system_prompt_is_billed(provider: str) -> None:
    assert 300 <= _billed_with_system_prompt(provider) <= 330


def test_text_is_counted_by_words_marks_and_long_word_pieces() -> None:
    assert text_tokens("What is the capital of the UK? Use the tool, then answer.") == 15
    assert text_tokens("tokenizers") == 2 and text_tokens("2026") == 2 and text_tokens("") == 0


def test_image_sizes_come_from_the_headers_and_follow_each_providers_rule() -> None:
    request = json.loads((FIXTURES / "anthropic" / "stream-vision-base64.request.json").read_text(encoding="utf-8"))
    assert image_size(base64.b64decode(request["messages"][0]["content"][0]["source"]["data"])) == (166, 282)
    assert anthropic_image_tokens(1000, 1000) == 1334
    assert gemini_image_tokens(300, 300) == 258
    assert openai_image_tokens("gpt-4o")(1024, 1024) == 85 + 170 * 4  # scaled to 768x768: four tiles
    assert openai_image_tokens("gpt-4.1-nano")(540, 360) == 502


def test_an_image_whose_header_says_zero_pixels_is_counted_not_a_server_error() -> None:
    """A PNG header 0 wide (a malformed image a caller sent): an image of unknown size for the count, where
    the tile arithmetic divided by zero and the simulator answered 500."""
    malformed = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (0).to_bytes(4, "big") + (64).to_bytes(4, "big")
    assert image_size(malformed) is None
    assert image_size(malformed[:16] + (64).to_bytes(4, "big") * 2) == (64, 64)
