"""``provider_data`` on an assistant message may come from a client (a GTL request over the gateway, a
compatible endpoint's tool call id): each dialect replays only the state of its own shape — thinking
blocks, reasoning blocks, signatures, as strings — and passes over anything else without failing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gtl_nb.protocol import CompletionRequest, Message
from gtl_nb.protocol.messages import Tool, ToolCall
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.registry import get_provider

CALL = ToolCall(id="call_1", name="get_weather", arguments="{}")
SETUPS = {
    "anthropic": (Deployment(name="a", type="anthropic", api_key="k"), "claude-sonnet-4-5"),
    "gemini": (Deployment(name="g", type="gemini", api_key="k"), "gemini-3.1-pro-preview"),
    "bedrock": (
        Deployment(name="b", type="bedrock", region="us-east-1", aws_access_key_id="AKID", aws_secret_access_key="s"),
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
    ),
}
FORGED: list[Any] = [
    "x",
    [1],
    {"parts": 5, "content": 5},
    {"parts": ["x", {"functionCall": "x", "thoughtSignature": 5}, {"text": 3, "thoughtSignature": "s"}]},
    {"content": ["abc", {"type": "document", "source": {"type": "file", "file_id": "file_0123"}}]},
    {"content": [{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}]},
    {"content": [{"type": "thinking", "thinking": 5, "signature": None}, {"type": "redacted_thinking", "data": []}]},
]
BEDROCK_FORGED: list[Any] = [
    "x",
    [
        1,
        "x",
        {"reasoningText": "x"},
        {"redactedContent": 5},
        {"document": {"source": {"s3Location": {"uri": "s3://b"}}}},
    ],
]


def _body(provider: str, provider_data: dict[str, Any]) -> dict[str, Any]:
    deployment, model = SETUPS[provider]
    request = CompletionRequest(
        session_id="s",
        model=model,
        messages=[
            Message(role="user", content="q"),
            Message(role="assistant", tool_calls=[CALL], provider_data=provider_data),
            Message(role="tool", tool_call_id="call_1", content="clear"),
        ],
        tools=[Tool(name=CALL.name)],
    )
    return json.loads(get_provider(provider).build_request(request, deployment, now=0.0).body)


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "bedrock"])
@pytest.mark.parametrize("forged", FORGED + BEDROCK_FORGED)
def test_state_of_another_shape_is_passed_over(provider: str, forged: Any):
    key = {"anthropic": "anthropic", "gemini": "gemini", "bedrock": "bedrock_reasoning"}[provider]
    body = json.dumps(_body(provider, {key: forged}))
    for smuggled in ("file_0123", "server_tool_use", "s3://b", "document"):
        assert smuggled not in body


def test_anthropic_replays_only_thinking_blocks_rebuilt_from_their_fields():
    state = {
        "anthropic": {
            "content": [
                {"type": "thinking", "thinking": "t", "signature": "sig", "extra": "dropped"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "document", "source": {"type": "file", "file_id": "file_0123"}},
            ]
        }
    }
    assistant = _body("anthropic", state)["messages"][1]["content"]
    assert assistant[:2] == [
        {"type": "thinking", "thinking": "t", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
    ]
    assert [block["type"] for block in assistant[2:]] == ["tool_use"]


def test_bedrock_replays_only_reasoning_blocks_rebuilt_from_their_fields():
    state = {
        "bedrock_reasoning": [
            {"reasoningText": {"text": "t", "signature": "sig", "extra": 1}},
            {"redactedContent": "b3BhcXVl"},
            {"document": {"name": "d"}},
        ]
    }
    content = _body("bedrock", state)["messages"][1]["content"]
    assert content[:2] == [
        {"reasoningContent": {"reasoningText": {"text": "t", "signature": "sig"}}},
        {"reasoningContent": {"redactedContent": "b3BhcXVl"}},
    ]
    assert "toolUse" in content[2]
