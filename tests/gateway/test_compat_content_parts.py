"""Text and images in their order, through the compatible endpoints: what the SDK sent is what each
provider receives, in that order (GTL's ``parts``)."""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.gateway.test_compat import (  # noqa: F401 - the module's fixtures: one gateway before every simulator
    PIXEL,
    PIXEL_URL,
    backends,
    base_url,
    claude,
    embedded,
    ledger_path,
    oai,
    providers,
    target,
)

ORDER = ["Image 1:", "IMAGE", "Image 2:", "IMAGE", "Which is larger?"]
IMAGE_BLOCK = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}


def order_sent(provider: str, body: dict[str, Any]) -> list[str]:
    """The user turn's texts and images, in the order the provider's request body holds them."""
    if provider == "openai":
        parts = body["messages"][-1]["content"]
        return [p["text"] if p["type"] == "text" else "IMAGE" for p in parts]
    if provider == "anthropic":
        blocks = body["messages"][-1]["content"]
        return [b["text"] if b["type"] == "text" else "IMAGE" for b in blocks]
    if provider == "gemini":
        parts = body["contents"][-1]["parts"]
        return [p.get("text", "IMAGE") for p in parts]
    blocks = body["messages"][-1]["content"]  # bedrock
    return [b.get("text", "IMAGE") for b in blocks]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "bedrock"])
def test_openai_sdk_parts_reach_the_provider_in_order(provider, oai, backends, embedded):
    content = [
        {"type": "text", "text": "Image 1:"},
        {"type": "image_url", "image_url": {"url": PIXEL_URL}},
        {"type": "text", "text": "Image 2:"},
        {"type": "image_url", "image_url": {"url": PIXEL_URL}},
        {"type": "text", "text": "Which is larger?"},
    ]
    answer = oai.chat.completions.create(model=target(provider), messages=[{"role": "user", "content": content}])
    assert order_sent(provider, json.loads(backends[provider].requests[-1].body)) == ORDER
    expected = embedded.complete(target(provider), [{"role": "user", "content": content}])  # the client takes parts too
    assert answer.choices[0].message.content == expected.text


@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_anthropic_sdk_blocks_reach_the_provider_in_order(provider, claude, backends):
    content = [
        {"type": "text", "text": "Image 1:"},
        IMAGE_BLOCK,
        {"type": "text", "text": "Image 2:"},
        IMAGE_BLOCK,
        {"type": "text", "text": "Which is larger?"},
    ]
    claude.messages.create(model=target(provider), max_tokens=50, messages=[{"role": "user", "content": content}])
    assert order_sent(provider, json.loads(backends[provider].requests[-1].body)) == ORDER


def tool_result_sent(claude: Any, backends: Any, **result: Any) -> dict[str, Any]:
    """The tool result block the Anthropic deployment received for a turn answering a tool call with
    ``result`` (its ``content``, ``is_error``…)."""
    messages = [
        {"role": "user", "content": "Draw two charts."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "draw", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", **result}]},
    ]
    tools = [{"name": "draw", "description": "draws", "input_schema": {"type": "object", "properties": {}}}]
    claude.messages.create(model=target("anthropic"), max_tokens=50, tools=tools, messages=messages)
    return json.loads(backends["anthropic"].requests[-1].body)["messages"][-1]["content"][0]


def test_a_tool_result_keeps_its_text_and_images_in_order(claude, backends):
    content = [{"type": "text", "text": "Chart A:"}, IMAGE_BLOCK, {"type": "text", "text": "Chart B:"}, IMAGE_BLOCK]
    result = tool_result_sent(claude, backends, content=content)
    assert [b["type"] for b in result["content"]] == ["text", "image", "text", "image"]


def test_an_error_tool_result_keeps_its_order(claude, backends):
    content = [{"type": "text", "text": "A:"}, IMAGE_BLOCK, {"type": "text", "text": "B:"}, IMAGE_BLOCK]
    result = tool_result_sent(claude, backends, content=content, is_error=True)
    assert [b.get("text", "IMAGE") for b in result["content"]] == ["A:", "IMAGE", "B:", "IMAGE"]
    assert result["is_error"] is True  # the flag reaches Anthropic as the flag


def test_a_blank_text_part_between_images_is_no_blank_block(oai, backends):
    content = [
        {"type": "text", "text": "Image 1:"},
        {"type": "image_url", "image_url": {"url": PIXEL_URL}},
        {"type": "text", "text": " "},
        {"type": "image_url", "image_url": {"url": PIXEL_URL}},
    ]
    answer = oai.chat.completions.create(model=target("bedrock"), messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content  # the service refuses a blank text block
    assert order_sent("bedrock", json.loads(backends["bedrock"].requests[-1].body)) == ["Image 1:", "IMAGE", "IMAGE"]
