"""The README's one-line SDK clients of `gtl serve` work as written, against a gateway on a free port."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEFAULT = "http://127.0.0.1:8787"
# an SDK client written inline: `OpenAI(base_url=..., ...)` or `Anthropic(base_url=..., ...)`
INLINE_CLIENT = re.compile(r"`((?:OpenAI|Anthropic)\(base_url=[^`]*\))`")


def _inline_clients(text: str) -> list[str]:
    return INLINE_CLIENT.findall(text)


def test_every_inline_sdk_client_in_the_docs_gives_a_key() -> None:
    # the openai and anthropic SDKs raise before any request when no api_key is given (and none is in
    # the environment): a line without one does not start
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for call in _inline_clients(page.read_text(encoding="utf-8")):
            assert "api_key=" in call, f"{page.name}: {call} has no api_key="


def test_the_readme_sdk_lines_talk_to_a_fresh_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("anthropic")
    from anthropic import Anthropic
    from openai import OpenAI

    from gtl_nb.gateway.local import start_gateway

    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    calls = _inline_clients(README.read_text(encoding="utf-8"))
    assert {call.split("(")[0] for call in calls} == {"OpenAI", "Anthropic"}, calls
    with start_gateway(http="127.0.0.1:0") as gateway:
        for call in calls:
            assert DEFAULT in call, call
            written = call.replace(DEFAULT, gateway.url("http"))
            client = eval(written, {"OpenAI": OpenAI, "Anthropic": Anthropic})  # the README line, as written
            client = client.with_options(max_retries=0)
            if isinstance(client, OpenAI):
                answer = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "Hi"}])
                text = answer.choices[0].message.content
            else:
                asked = [{"role": "user", "content": "Hi"}]
                message = client.messages.create(model="echo", max_tokens=50, messages=asked)
                text = message.content[0].text
            assert text and "Hi" in text, (call, text)
