"""Text and images in their order, through the compatible endpoints: what the SDK sent is what each
provider receives, in that order (GTL's ``parts``)."""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import json
from pathlib import Path
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


# -- Anthropic's text blocks, as Anthropic takes them --------------------------------------------------------

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "wire" / "anthropic"
ACCEPTED = sorted(  # every recorded request the endpoint serves (server tools it refuses: the model would not call)
    path.name.removesuffix(".request.json")
    for path in RECORDED.glob("*.request.json")
    if "server-tool" not in path.name
)


def as_blocks(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """String content → one text block (Anthropic reads both alike), so turns compare block by block."""
    return [
        {"role": turn["role"], "content": [{"type": "text", "text": c}] if isinstance(c, str) else c}
        for turn in messages
        for c in [turn["content"]]
    ]


def split_text(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each text block of a user turn split in two adjacent blocks at its middle, and each
    tool result's string content as two text blocks."""
    out = []
    for turn in as_blocks(messages):
        blocks = []
        for block in turn["content"]:
            if block["type"] == "text" and turn["role"] == "user" and len(block["text"]) > 1:
                half = len(block["text"]) // 2
                blocks += [{**block, "text": block["text"][:half]}, {**block, "text": block["text"][half:]}]
            elif block["type"] == "tool_result" and isinstance(block.get("content"), str):
                texts = [{"type": "text", "text": f"{block['content']} (1)"}, {"type": "text", "text": "(2)"}]
                blocks.append({**block, "content": texts})
            else:
                blocks.append(block)
        out.append({**turn, "content": blocks})
    return out


@pytest.mark.parametrize("split", [False, True], ids=["as-recorded", "text-split-in-blocks"])
@pytest.mark.parametrize("name", ACCEPTED)
def test_recorded_anthropic_requests_reach_an_anthropic_deployment_block_for_block(name, split, claude, backends):
    """A request as the Anthropic SDK recorded it, sent to the Anthropic-compatible endpoint, reaches an
    Anthropic deployment with the same blocks: adjacent text blocks stay adjacent blocks — GTL's ``parts``,
    its ``content`` their newline-joined text for a peer that reads no parts — never one block of the texts
    joined with a newline (a character the caller never sent); so do a tool result's text blocks."""
    body = json.loads((RECORDED / f"{name}.request.json").read_text())
    messages = split_text(body["messages"]) if split else body["messages"]
    claude.post(
        "/v1/messages",
        body={**body, "messages": messages, "model": target("anthropic"), "stream": False},
        cast_to=object,
    )
    sent = json.loads(backends["anthropic"].requests[-1].body)["messages"]
    assert as_blocks(sent) == as_blocks(messages)


def test_adjacent_text_blocks_from_the_anthropic_sdk_stay_blocks(claude, backends):
    content = [{"type": "text", "text": "Here is the report:"}, {"type": "text", "text": "Q3 revenue rose 4%."}]
    claude.messages.create(model=target("anthropic"), max_tokens=50, messages=[{"role": "user", "content": content}])
    assert json.loads(backends["anthropic"].requests[-1].body)["messages"][-1]["content"] == content
