"""How many elements one completion request may hold: messages, content parts, tools, tool calls, stop sequences.

``max_frame_bytes`` bounds a request's bytes, not its work: 8 MiB of ``{"role": "user", "content": "x"}``
is 280,000 messages, each read, checked and converted in Python on the gateway's one event loop —
seconds in which every other client waits. These limits bound that work per request. Each is at least
what the largest of the APIs GTL speaks to takes, so no request a provider would serve is refused here:

=========================  ==========  =========================================================
what                       at most     why this number
=========================  ==========  =========================================================
messages                   100,000     Anthropic's Messages API: 100,000 messages a request
                                       (OpenAI and Gemini document no count; a context window
                                       holds fewer real turns)
content parts a message    3,000       Gemini's 3,000 images a prompt (OpenAI takes 500 images,
                                       Anthropic 100); text parts count too
tools                      512         Gemini's 512 function declarations (OpenAI's is 128)
tool calls a message       512         as many as tools: OpenAI takes 128 in one assistant message
stop sequences             2,500       Bedrock's Converse (OpenAI 4, Gemini 5); the deployment's
                                       own API is then held to its own (``providers.base``)
=========================  ==========  =========================================================

``request_limit_refusal`` names the first limit a request passes; the engine refuses such a request
(``INVALID_REQUEST``, one ledger row) whatever brought it — an embedded client, ``/v1/gtl``, any
transport. The compatible endpoints check the same limits on the body as read, before converting it
(``count_refusal``), so an over-long body costs a ``len`` and not its conversion.

The check costs a ``len`` per list, and one pass over the messages reading three lengths each.
"""

from __future__ import annotations

from gtl_nb.protocol.messages import CompletionRequest, Message

__all__ = [
    "MAX_MESSAGES",
    "MAX_PARTS",
    "MAX_STOP_SEQUENCES",
    "MAX_TOOLS",
    "MAX_TOOL_CALLS",
    "count_refusal",
    "request_limit_refusal",
]

MAX_MESSAGES = 100_000
"""The most messages one request may hold (Anthropic's limit; the module docstring)."""
MAX_PARTS = 3_000
"""The most content parts (texts and images) one message may hold: its ``parts``, else its ``images``."""
MAX_TOOLS = 512
"""The most tools one request may offer (Gemini's limit)."""
MAX_TOOL_CALLS = 512
"""The most tool calls one assistant message may carry."""
MAX_STOP_SEQUENCES = 2_500
"""The most stop sequences one request may give (Bedrock's Converse's limit)."""


def count_refusal(where: str, count: int, limit: int, what: str) -> str | None:
    """The refusal of ``count`` ``what`` at ``where`` when it passes ``limit``, or ``None``:
    ``"messages: 200,000 messages, over the limit of 100,000 (GTL's request limits, docs/client.md)"``."""
    if count <= limit:
        return None
    return f"{where}: {count:,} {what}, over the limit of {limit:,} (GTL's request limits, docs/client.md)"


def request_limit_refusal(request: CompletionRequest) -> str | None:
    """Why ``request`` holds more than GTL's limits allow (naming the list and the limit), or ``None``."""
    messages = request.messages
    refused = count_refusal("messages", len(messages), MAX_MESSAGES, "messages")
    if refused is None and request.tools:
        refused = count_refusal("tools", len(request.tools), MAX_TOOLS, "tools")
    if refused is None and request.stop:
        refused = count_refusal("stop", len(request.stop), MAX_STOP_SEQUENCES, "stop sequences")
    if refused is not None:
        return refused
    parts, calls = MAX_PARTS, MAX_TOOL_CALLS
    for message in messages:  # (three lengths a message; the refusal is worded only when one is over)
        if len(message.parts) > parts or len(message.images) > parts or len(message.tool_calls) > calls:
            return _message_refusal(messages.index(message), message)
    return None


def _message_refusal(index: int, message: Message) -> str | None:
    if len(message.tool_calls) > MAX_TOOL_CALLS:
        where = f"messages[{index}].tool_calls"
        return count_refusal(where, len(message.tool_calls), MAX_TOOL_CALLS, "tool calls in one message")
    parts = max(len(message.parts), len(message.images))
    return count_refusal(f"messages[{index}].content", parts, MAX_PARTS, "content parts in one message")
