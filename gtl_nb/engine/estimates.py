"""The engine's estimates of tokens it has not been told: four characters a token, 1,000 an image.

One estimate of a prompt (``estimate_prompt_tokens``) serves every place that needs one: the count
``Engine.count_tokens`` answers for a provider that does not count, a budget's reservation before a
request is sent (``Engine._reserve``: the prompt plus ``output_estimate``), and the input of a session that
ended before its provider reported usage (``Engine._estimated_use``), whose output is the content that
reached its caller (``content_characters``, ``estimate_tokens``). Each is settled with the provider's
figures when they come.
"""

from __future__ import annotations

import msgspec

from gtl_nb.protocol.messages import CompletionRequest, StreamEvent, ToolCallEvent

__all__ = [
    "DEFAULT_OUTPUT_ESTIMATE",
    "content_characters",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "output_estimate",
]

DEFAULT_OUTPUT_ESTIMATE = 256
"""Output tokens reserved against tokens-per-minute when a request sets no ``max_tokens``."""


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    """A rough count of a request's input tokens: about four characters per token over every text
    part (system, messages, tool calls, tool definitions), and 1,000 per image."""
    characters = 0
    images = 0
    for message in request.messages:
        characters += len(message.content or "")
        images += len(message.images or ())
        for call in message.tool_calls or ():
            characters += len(call.name) + len(call.arguments)
    for tool in request.tools or ():
        characters += len(tool.name) + len(tool.description or "") + len(msgspec.json.encode(tool.parameters))
    return characters // 4 + 1000 * images


def output_estimate(request: CompletionRequest) -> int:
    """The output a reservation counts before the answer: ``max_tokens``, or ``DEFAULT_OUTPUT_ESTIMATE``."""
    return request.max_tokens or DEFAULT_OUTPUT_ESTIMATE


def content_characters(event: StreamEvent) -> int:
    """The characters of one content event (a token, reasoning, a tool call's name and arguments)."""
    if type(event) is ToolCallEvent:
        return len(event.function.name) + len(event.function.arguments)
    return len(event.text)  # type: ignore[union-attr]


def estimate_tokens(characters: int) -> int:
    """Tokens of ``characters`` of text, at about four characters per token (rounded up)."""
    return -(-characters // 4)
