"""Anthropic Messages API simulator.

Written from the recorded fixtures (``tests/fixtures/wire/anthropic``) and the wire-format digest:
``POST /v1/messages`` with ``x-api-key`` and a required ``anthropic-version``; ``max_tokens`` required. The
stream is SSE with ``event:`` lines whose name repeats the JSON ``type``: ``message_start`` (usage) →
per block ``content_block_start`` / ``content_block_delta``… / ``content_block_stop`` (thinking with
``thinking_delta`` + ``signature_delta``, text with ``text_delta``, tool_use with ``input_json_delta``
fragments, ``partial_json: ""`` for empty input) → ``message_delta`` (stop_reason, cumulative usage) →
``message_stop``; a ``ping`` after the first block starts. Like the real service, some payloads carry
whitespace padding before their closing brace. ``cache_control`` markers (at most four; a fifth is the
service's 400) read and write a prompt cache of the simulator's own (``sim.prompt_cache``), reported in
the usage's ``cache_read_input_tokens`` / ``cache_creation_input_tokens``. A ``tool_use`` id or
``tool_use_id`` outside ``^[a-zA-Z0-9_-]+$`` is the service's 400, naming the block's path; so are
``tool_use`` ids without a ``tool_result`` in the next message and a ``tool_result`` whose id the previous
message did not call (in the service's words, ``_unpaired_tool_blocks``); so are tool blocks in a request
without ``tools`` (``_TOOLS_UNDEFINED``). With
thinking on, a tool loop's last assistant turn must start with its thinking block, as the service
requires (its 400 otherwise), and a ``thinking`` block sent back must carry the signature the simulator
gave its text (an HMAC of it: an edited or foreign block is the service's "Invalid `signature`" 400); an
enabled ``thinking``'s ``budget_tokens`` must be at least 1,024 and below ``max_tokens`` (its 400s, in its
words). ``output_config.effort`` is accepted and changes nothing.
What a model cannot take or the API cannot read is its 400 in its words (``_model_problem``): ``thinking`` to
a model that does not think (Claude 3.5 Haiku), a custom tool named outside ``^[a-zA-Z0-9_-]{1,128}$``, a
base64 image whose ``media_type`` is not JPEG, PNG, GIF or WebP. An alias is answered with its dated id in
``model`` (``ANTHROPIC_SNAPSHOTS``), as recorded. ``POST /v1/messages/count_tokens`` answers ``{"input_tokens":
N}`` with the arithmetic of the usage (``_input_tokens``: a count equals the ``usage.input_tokens`` of the same
request without a cache), its body refused as the service refuses it (``COUNT_FIELDS``; ``max_tokens`` is
"Extra inputs are not permitted") and the messages' own checks applied (``_refusal``); a prompt over the window
is still counted.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from typing import Any

from gtl_nb.sim.answers import Answer
from gtl_nb.sim.base import SimContext, SimRequest, SimResponse, json_response, name_within
from gtl_nb.sim.prompt_cache import TTL_SECONDS, TTLS, CacheUse, PromptCache, claude_minimum, prefix_key
from gtl_nb.sim.schemas import schema_problem
from gtl_nb.sim.tokens import Rates, Tally, anthropic_image_tokens, b64_bytes

__all__ = ["ANTHROPIC_CONTEXT_WINDOWS", "ANTHROPIC_MODELS", "ANTHROPIC_SNAPSHOTS", "AnthropicSim"]

#: The models of the simulated account: dated ids and the aliases the API also accepts.
ANTHROPIC_MODELS = (
    "claude-haiku-4-5-20251001",
    "claude-haiku-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-5",
    "claude-sonnet-4-6",
    "claude-opus-4-1-20250805",
    "claude-opus-4-1",
    "claude-opus-4-5-20251101",
    "claude-opus-4-5",
    "claude-opus-4-6",
    "claude-sonnet-4-20250514",
    "claude-sonnet-4-0",
    "claude-opus-4-20250514",
    "claude-opus-4-0",
    "claude-3-7-sonnet-20250219",
    "claude-3-7-sonnet-latest",
    "claude-3-5-haiku-20241022",
    "claude-3-5-haiku-latest",
    "claude-haiku-5-5",
    "claude-sonnet-5-5",
    "claude-opus-5-5",
)
#: The dated model an alias stands for, which the API names in its answer's ``model`` (recorded:
#: ``claude-haiku-4-5`` → ``claude-haiku-4-5-20251001``, ``claude-sonnet-4-5`` → ``claude-sonnet-4-5-20250929``;
#: the others as Anthropic's models overview pairs them). A name not here (a dated id, or a model with no dated
#: id such as ``claude-sonnet-4-6``, recorded answered as asked) is answered as asked.
ANTHROPIC_SNAPSHOTS: dict[str, str] = {
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}
#: The account's models that do not think: a ``thinking`` to one is the API's 400.
_NO_THINKING = frozenset(("claude-3-5-haiku-20241022",))
#: The image types the API reads, in its 400's order.
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_LONGEST_TOOL_NAME = 128
#: The context windows (tokens) of those models, as the model catalog gives them; a model missing here has
#: no limit in the simulator. A prompt over its window is the API's 400 "prompt is too long".
ANTHROPIC_CONTEXT_WINDOWS: dict[str, int] = {
    **dict.fromkeys(
        (
            "claude-haiku-4-5-20251001",
            "claude-haiku-4-5",
            "claude-sonnet-4-5-20250929",
            "claude-sonnet-4-5",
            "claude-opus-4-1-20250805",
            "claude-opus-4-1",
            "claude-opus-4-5-20251101",
            "claude-opus-4-5",
            "claude-3-5-haiku-20241022",
            "claude-3-5-haiku-latest",
        ),
        200000,
    ),
    **dict.fromkeys(("claude-opus-4-6", "claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5"), 1000000),
}
# Framing measured on the recorded usage: a few tokens per turn; a request with tools pays the tool-use system
# prompt Anthropic documents (~350 tokens) and more; each tool_use / tool_result block is wrapped with its id.
_RATES = Rates(
    per_request=4,
    per_message=3,
    per_part=16,
    with_tools=480,
    per_tool=20,
    per_property=4,
    per_server_tool=1570,  # the tool-search tool, as recorded; other server tools are of the same order
    with_thinking=28,
    image=anthropic_image_tokens,
)
_RESET = "2025-01-01T00:01:00Z"
MAX_CACHE_BREAKPOINTS = 4
#: The fields ``POST /v1/messages/count_tokens`` takes (its SDK's ``MessageCountTokensParams``, the beta's
#: too); any other — ``max_tokens`` among them — is its 400 "Extra inputs are not permitted".
COUNT_FIELDS = frozenset(
    (
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "output_format",
        "cache_control",
        "speed",
        "mcp_servers",
        "context_management",
        "compaction",
        "billing_policy",
    )
)
LOOKBACK_BLOCKS = 20  # block boundaries before a breakpoint where the service also looks for a hit


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _thinking(body: dict[str, Any]) -> bool:
    """Whether the request switches extended thinking on."""
    return isinstance(body.get("thinking"), dict) and body["thinking"].get("type") in ("enabled", "adaptive")


def _input_tokens(body: dict[str, Any], thinking: bool) -> int:
    """The system prompt, every turn's blocks, the tool definitions and the thinking switch."""
    tally = Tally(thinking=thinking)
    system = body.get("system")
    tally.texts.append(system if isinstance(system, str) else _text_of(system))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            tally.messages += 1
            content = message.get("content")
            if isinstance(content, str):
                tally.texts.append(content)
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict):
                    _tally_block(tally, block)
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or tool.get("defer_loading"):
            continue  # a deferred tool stays out of the prompt until a tool search loads it
        if tool.get("type") in (None, "custom"):
            tally.tools.append({**tool, "parameters": tool.get("input_schema")})
        else:
            tally.server_tools += 1
    return tally.total(_RATES)


def _tally_block(tally: Tally, block: dict[str, Any]) -> None:
    """One content block: text, image, tool_use, tool_result (with its own blocks) or thinking."""
    kind = block.get("type")
    if kind == "text":
        tally.texts.append(str(block.get("text", "")))
    elif kind == "image":
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        data = source.get("data")
        tally.image(b64_bytes(data) if source.get("type") == "base64" and isinstance(data, str) else None)
    elif kind == "tool_use":
        tally.parts += 1
        tally.texts += [str(block.get("id", "")), str(block.get("name", ""))]
        tally.values.append(block.get("input"))
    elif kind == "tool_result":
        tally.parts += 1
        tally.texts.append(str(block.get("tool_use_id", "")))
        content = block.get("content")
        if isinstance(content, str):
            tally.texts.append(content)
        for inner in content if isinstance(content, list) else []:
            if isinstance(inner, dict):
                _tally_block(tally, inner)
    elif kind == "thinking":
        tally.texts.append(str(block.get("thinking", "")))


def _bad_error_flag(body: dict[str, Any]) -> str | None:
    """Where a ``tool_result`` block's ``is_error`` is not a boolean (the API's 400), or ``None``."""
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            is_result = isinstance(block, dict) and block.get("type") == "tool_result"
            if is_result and not isinstance(block.get("is_error", False), bool):
                return f"messages.{i}.content.{j}"
    return None


_ID_PATTERN = "^[a-zA-Z0-9_-]+$"  # as the API's message quotes it
_ID = re.compile(r"[a-zA-Z0-9_-]+")
_ID_FIELDS = {"tool_use": "id", "tool_result": "tool_use_id"}


def _bad_tool_id(body: dict[str, Any]) -> str | None:
    """The API's 400 for a ``tool_use`` id or a ``tool_result``'s ``tool_use_id`` outside its pattern
    (an id another provider minted, such as ``functions.f:0``), or ``None``."""
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            kind = block.get("type") if isinstance(block, dict) else None
            field = _ID_FIELDS.get(kind) if isinstance(kind, str) else None
            value = block.get(field) if field else None
            if field and not (isinstance(value, str) and _ID.fullmatch(value)):
                return f"messages.{i}.content.{j}.{kind}.{field}: String should match pattern '{_ID_PATTERN}'"
    return None


def _model_problem(body: dict[str, Any], dated: str) -> str | None:
    """The API's 400s for what the request's model (``dated``: its dated id) cannot take or the API cannot
    read, or ``None``: ``thinking`` to a model that does not think ("'claude-3-5-haiku-20241022' does not
    support thinking.", naming the dated id — anthropics/claude-code#11388, #12914), a custom tool's name
    outside ``^[a-zA-Z0-9_-]{1,128}$`` ("tools.N.custom.name: String should match pattern …" —
    modelcontextprotocol/modelcontextprotocol#1345, jedisct1/openapi-mcp#9), and a base64 image of a
    ``media_type`` other than JPEG, PNG, GIF or WebP ("messages.N.content.M.image.source.base64.media_type:
    Input should be …" — anthropics/claude-code#8184)."""
    if _thinking(body) and dated in _NO_THINKING:
        return f"'{dated}' does not support thinking."
    for index, tool in enumerate(body.get("tools") or []):
        custom = isinstance(tool, dict) and tool.get("type", "custom") == "custom"
        if custom and not name_within(tool.get("name"), _LONGEST_TOOL_NAME):
            return f"tools.{index}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
    for index, message in enumerate(body.get("messages") or []):
        for position, block in _blocks(message, "image"):
            source = block.get("source")
            if (
                isinstance(source, dict)
                and source.get("type") == "base64"
                and source.get("media_type") not in _IMAGE_TYPES
            ):
                return (
                    f"messages.{index}.content.{position}.image.source.base64.media_type: Input should be "
                    "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                )
    return None


MIN_THINKING_BUDGET = 1024
"""The least ``thinking.budget_tokens`` the API takes."""


def _thinking_budget_problem(body: dict[str, Any]) -> str | None:
    """The API's 400 for an enabled ``thinking`` whose budget it refuses — under the least, or not below
    ``max_tokens`` (thinking counts as output) — or ``None``."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        return (
            "thinking.enabled.budget_tokens: Field required"
            if budget is None
            else ("thinking.enabled.budget_tokens: Input should be a valid integer")
        )
    if budget < MIN_THINKING_BUDGET:
        return f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens <= budget:
        return (
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at "
            "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size"
        )
    return None


def _unthought_tool_turn(body: dict[str, Any]) -> str | None:
    """With thinking on, the API's 400 for a tool loop whose last assistant turn (the one holding the
    calls the request answers) does not start with a thinking block, or ``None``."""
    if not _thinking(body):
        return None
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for index in range(len(messages) - 1, -1, -1):
        content = messages[index].get("content")
        if messages[index].get("role") != "assistant" or not isinstance(content, list):
            continue
        kinds = [block.get("type") for block in content if isinstance(block, dict)]
        if "tool_use" in kinds and kinds[0] not in ("thinking", "redacted_thinking"):
            return (
                f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{kinds[0]}`. When `thinking` is enabled, a final `assistant` message must start with a "
                "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We "
                "recommend you include thinking blocks from previous turns. To avoid this requirement, "
                "disable `thinking`. Please consult our documentation at "
                "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
            )
        return None
    return None


_SIGNING_KEY = b"gtl-sim anthropic thinking"
"""What the simulator signs its thinking with: a signature is an HMAC of the block's text, then padding."""
_SIGNED = 32  # the HMAC's bytes at the front of a signature


def _thinking_signature(thinking: str, padding: bytes) -> str:
    """A signature of ``thinking`` as this simulator writes one (the service's are opaque base64 too)."""
    mac = hmac.new(_SIGNING_KEY, thinking.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(mac + padding).decode("ascii")


def _signed_by_us(thinking: Any, signature: Any) -> bool:
    if not isinstance(thinking, str) or not isinstance(signature, str):
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        return False
    mac = hmac.new(_SIGNING_KEY, thinking.encode("utf-8"), hashlib.sha256).digest()
    return hmac.compare_digest(raw[:_SIGNED], mac)


def _badly_signed_thinking(body: dict[str, Any]) -> str | None:
    """The service's 400 for a ``thinking`` block sent back whose signature is not the one the service gave
    that text (a block edited, cut, or signed by another), naming the block, or ``None``."""
    for index, message in enumerate(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        for position, block in _blocks(message, "thinking"):
            if not _signed_by_us(block.get("thinking"), block.get("signature")):
                return f"messages.{index}.content.{position}: Invalid `signature` in `thinking` block"
    return None


def _blocks(message: Any, kind: str) -> list[tuple[int, dict[str, Any]]]:
    """The ``(position, block)`` of each block of type ``kind`` in a message's content."""
    content = message.get("content") if isinstance(message, dict) else None
    return [
        (j, block)
        for j, block in enumerate(content if isinstance(content, list) else [])
        if isinstance(block, dict) and block.get("type") == kind
    ]


def _unpaired_tool_blocks(body: dict[str, Any]) -> str | None:
    """The API's 400 for ``tool_use`` and ``tool_result`` blocks that do not pair, or ``None``. Read in
    order, the first fault wins:

    * an assistant message at N whose ``tool_use`` ids are not all answered by ``tool_result`` blocks in the
      message right after it (or that is the last message): "messages.N: `tool_use` ids were found without
      `tool_result` blocks immediately after: …", the ids joined by ", " (anthropics/claude-code#5989, #1237;
      N is the assistant message's index, as two published root-cause analyses show: an assistant text put
      between the calls and their results by LiteLLM's Responses adapter, and a compaction that dropped the
      results after ``messages.1``);
    * a ``tool_result`` at N.M whose ``tool_use_id`` is not a ``tool_use`` of message N-1: "messages.N.content.M:
      unexpected `tool_use_id` found in `tool_result` blocks: …" (router-for-me/CLIProxyAPI#497,
      anthropics/claude-code#13460, #18947 — the last at ``messages.0.content.0``, a result with no message
      before it).
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user":
            before = messages[index - 1] if index else None
            called = (
                {b.get("id") for _, b in _blocks(before, "tool_use")}
                if isinstance(before, dict) and before.get("role") == "assistant"
                else set()
            )
            unexpected = [(j, b.get("tool_use_id")) for j, b in _blocks(message, "tool_result")]
            unexpected = [(j, answer) for j, answer in unexpected if answer not in called]
            if unexpected:
                return (
                    f"messages.{index}.content.{unexpected[0][0]}: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {', '.join(str(answer) for _, answer in unexpected)}. Each `tool_result` block must "
                    "have a corresponding `tool_use` block in the previous message."
                )
        if role != "assistant":
            continue
        after = messages[index + 1] if index + 1 < len(messages) else None
        answered = (
            {b.get("tool_use_id") for _, b in _blocks(after, "tool_result")}
            if isinstance(after, dict) and after.get("role") == "user"
            else set()
        )
        missing = [b.get("id") for _, b in _blocks(message, "tool_use") if b.get("id") not in answered]
        if missing:
            return (
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(str(i) for i in missing)}. Each `tool_use` block must have a corresponding "
                "`tool_result` block in the next message."
            )
    return None


_CREDIT_TOO_LOW = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or "
    "purchase credits."
)
_BILLING_402 = "There's an issue with your account's billing or payment information."


_TOOLS_UNDEFINED = "Requests which include `tool_use` or `tool_result` blocks must define tools."
"""The API's 400 for tool blocks in a request without ``tools`` (anthropics/anthropic-sdk-python#494,
BerriAI/litellm#4689)."""


def _holds_tool_blocks(body: dict[str, Any]) -> bool:
    """Whether a message of ``body`` holds a ``tool_use`` or ``tool_result`` block."""
    messages = body.get("messages")
    return any(
        _blocks(message, "tool_use") or _blocks(message, "tool_result")
        for message in (messages if isinstance(messages, list) else [])
        if isinstance(message, dict)
    )


def _error_body(type_: str, message: str, request_id: str = "req_011Sim0000000000000000") -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}


def _boundaries(body: dict[str, Any]) -> list[tuple[Callable[[], dict[str, Any]], bool]]:
    """Every block boundary of the prompt in Anthropic's prefix order (tools, system, messages): how to
    build the prompt up to it, as a body of its own, and whether a ``cache_control`` marker stands
    there. A prefix is built only when asked (at the marks and the blocks just before them): building
    every prefix of a prompt of n blocks took memory quadratic in n (100,000 system blocks, 10 GB)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    raw_system = body.get("system")
    if isinstance(raw_system, str):
        raw_system = [{"type": "text", "text": raw_system}] if raw_system else []
    system = [b for b in raw_system or [] if isinstance(b, dict)] if isinstance(raw_system, list) else []
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    parts = (tools, system, messages)
    out: list[tuple[Callable[[], dict[str, Any]], bool]] = []
    out += [(functools.partial(_prefix, parts, i + 1, 0), _marked(t)) for i, t in enumerate(tools)]
    out += [(functools.partial(_prefix, parts, len(tools), i + 1), _marked(b)) for i, b in enumerate(system)]
    for i, message in enumerate(messages):
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for j, block in enumerate(blocks if isinstance(blocks, list) else []):
            if isinstance(block, dict):
                turn = functools.partial(_turn, message, blocks, j + 1)
                out.append((functools.partial(_prefix, parts, len(tools), len(system), i, turn), _marked(block)))
    return out


def _prefix(
    parts: tuple[list[Any], list[Any], list[Any]],
    tools: int,
    system: int,
    messages: int = 0,
    turn: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The prompt's first ``tools`` tools, ``system`` blocks and ``messages`` messages, then ``turn``."""
    all_tools, all_system, all_messages = parts
    kept = all_messages[:messages] + ([turn()] if turn is not None else [])
    return {"tools": all_tools[:tools], "system": all_system[:system], "messages": kept}


def _turn(message: dict[str, Any], blocks: list[Any], count: int) -> dict[str, Any]:
    """``message`` with its first ``count`` content blocks."""
    return {**message, "content": blocks[:count]}


def _marked(block: dict[str, Any]) -> bool:
    return block.get("cache_control") is not None


def _lifetime(block: dict[str, Any]) -> float:
    """Seconds a marked block's prefix is kept: its ``ttl`` (``"5m"`` when it gives none)."""
    marker = block.get("cache_control")
    ttl = marker.get("ttl", "5m") if isinstance(marker, dict) else "5m"
    return TTLS.get(ttl, TTL_SECONDS) if isinstance(ttl, str) else TTL_SECONDS


def _ttl_problem(body: dict[str, Any]) -> str | None:
    """The API's 400 for the markers' lifetimes: a ``ttl`` other than 5m or 1h, or a one-hour marker
    after a five-minute one (in prompt order: tools, system, messages)."""
    hours: list[bool] = []
    for _, block in _marker_blocks(body):
        ttl = block["cache_control"].get("ttl", "5m") if isinstance(block["cache_control"], dict) else "5m"
        if not isinstance(ttl, str) or ttl not in TTLS:
            return "cache_control.ttl: Input should be '5m' or '1h'"
        hours.append(ttl == "1h")
    if False in hours and True in hours[hours.index(False) :]:
        return "A 'ttl'='1h' cache_control block must not come after a 'ttl'='5m' cache_control block."
    return None


def _marker_blocks(body: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The marked blocks of ``_boundaries``, with their boundary's index."""
    blocks = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    system = body.get("system")
    blocks += [b for b in system if isinstance(b, dict)] if isinstance(system, list) else []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        blocks += [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    return [(index, block) for index, block in enumerate(blocks) if _marked(block)]


def _output_schema_problem(body: dict[str, Any]) -> str | None:
    """The API's 400 for a structured-output schema with an object left open (``sim.schemas``), or ``None``."""
    output = body.get("output_config")
    form = output.get("format") if isinstance(output, dict) else None
    if not isinstance(form, dict) or form.get("type") != "json_schema":
        return None
    problem = schema_problem(form.get("schema"), every_property_required=False)
    return None if problem is None else f"output_config.format.schema: {problem}"


class AnthropicSim:
    """``api.anthropic.com``: messages (streamed or not), model listing, token counting; a prompt cache
    (``sim.prompt_cache``) for the ``cache_control`` markers a request carries."""

    name = "anthropic"
    base_path = ""
    overloaded_status = 529

    def __init__(self) -> None:
        self.prompt_cache = PromptCache()

    def handle(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        """Route; the key (``x-api-key`` or Bearer) is checked first, then the version header."""
        key = req.headers.get("x-api-key")
        auth = req.headers.get("authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()  # recent SDKs send the API key as a Bearer token
        if not key:
            return self._error(401, "authentication_error", "x-api-key header is required")
        if key != ctx.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not req.headers.get("anthropic-version"):
            return self._error(400, "invalid_request_error", "anthropic-version: header is required")
        if req.method == "POST" and req.path == "/v1/messages":
            return self._messages(req, ctx)
        if req.method == "POST" and req.path == "/v1/messages/count_tokens":
            return self._count_tokens(req, ctx)
        if req.method == "GET" and req.path == "/v1/models":
            data = [self._model(m) for m in self._models(ctx)]
            return json_response(
                200,
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                },
            )
        if req.method == "GET" and req.path.startswith("/v1/models/"):
            model = req.path[len("/v1/models/") :]
            if ctx.accepts_model(model, ANTHROPIC_MODELS):
                return json_response(200, self._model(model))
            return self._error(404, "not_found_error", f"model: {model}")
        return self._error(404, "not_found_error", "Not Found")

    # -- helpers ---------------------------------------------------------------------------------------------

    def _error(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> SimResponse:
        return json_response(status, _error_body(type_, message), headers)

    def _models(self, ctx: SimContext) -> list[str]:
        return ctx.models(ANTHROPIC_MODELS)

    def _model(self, name: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": name,
            "display_name": name.replace("-", " ").title(),
            "created_at": "2025-01-01T00:00:00Z",
        }

    def _headers(self, req: SimRequest, ctx: SimContext) -> dict[str, str]:
        headers = {"request-id": ctx.make_id("req_", 24, req.body)}
        for bucket, limit in (
            ("requests", "1000"),
            ("tokens", "540000"),
            ("input-tokens", "450000"),
            ("output-tokens", "90000"),
        ):
            headers[f"anthropic-ratelimit-{bucket}-limit"] = limit
            headers[f"anthropic-ratelimit-{bucket}-remaining"] = limit
            headers[f"anthropic-ratelimit-{bucket}-reset"] = _RESET
        return headers

    # -- the conversation ------------------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any], ctx: SimContext) -> Answer:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        last = messages[-1] if messages else {}
        results: list[str] = []
        if last.get("role") == "user" and isinstance(last.get("content"), list):
            for block in last["content"]:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    content = block.get("content")
                    said = content if isinstance(content, str) else _text_of(content)
                    results.append(f"(the tool failed) {said}" if block.get("is_error") else said)
        prompt = next(
            (t for m in reversed(messages) if m.get("role") == "user" for t in [_text_of(m.get("content"))] if t),
            "",
        )
        tools: list[dict[str, Any]] = []
        choice = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {}
        if last.get("role") == "user" and not results and choice.get("type") != "none":
            tools = [
                {
                    "name": t.get("name"),
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {"type": "object"},
                }
                for t in body.get("tools") or []
                if isinstance(t, dict) and t.get("type") in (None, "custom") and t.get("name")
            ]
            if choice.get("type") == "tool":
                tools = [t for t in tools if t["name"] == choice.get("name")] or tools
        thinking = _thinking(body)
        limit = body.get("max_tokens")
        output = body.get("output_config") if isinstance(body.get("output_config"), dict) else {}
        form = output.get("format") if isinstance(output.get("format"), dict) else {}
        schema = (
            form.get("schema") if form.get("type") == "json_schema" and isinstance(form.get("schema"), dict) else None
        )
        return ctx.answer(
            prompt,
            tools,
            tool_results=results,
            thinking=thinking,
            max_tokens=limit if isinstance(limit, int) else None,
            tokens_in=_input_tokens(body, thinking),
            schema=schema,
            stop=body.get("stop_sequences"),
            one_call=choice.get("disable_parallel_tool_use") is True,
        )

    def _stop_reason(self, answer: Answer) -> str:
        if answer.tool_calls:
            return "tool_use"
        if answer.finish == "length":
            return "max_tokens"
        return "stop_sequence" if answer.stop_sequence is not None else "end_turn"

    def _signature(self, req: SimRequest, ctx: SimContext, thinking: str) -> str:
        rnd = ctx.rng("signature", req.body)
        return _thinking_signature(thinking, bytes(rnd.randrange(256) for _ in range(120 - _SIGNED)))

    def _usage(self, answer: Answer, output_tokens: int, cache: CacheUse) -> dict[str, Any]:
        return {
            "input_tokens": max(0, answer.tokens_in - cache.read - cache.written),
            "cache_creation_input_tokens": cache.written,
            "cache_read_input_tokens": cache.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache.written - cache.written_1h,
                "ephemeral_1h_input_tokens": cache.written_1h,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _cache_use(self, body: dict[str, Any], ctx: SimContext, total: int) -> CacheUse:
        """Read and write the prompt cache at the request's breakpoints, a hit also looked for at the
        ``LOOKBACK_BLOCKS`` block boundaries before each (each prefix's size estimated as a request of
        its own, never above the whole prompt's)."""
        model = str(body.get("model"))
        boundaries = _boundaries(body)

        def sized(prefix: dict[str, Any]) -> tuple[str, int]:
            return prefix_key(model, ctx.api_key, prefix, marker="cache_control"), min(
                total, _input_tokens(prefix, False)
            )

        marks = [index for index, (_, marked) in enumerate(boundaries) if marked]
        before = {i for mark in marks for i in range(max(0, mark - LOOKBACK_BLOCKS), mark)} - set(marks)
        lifetimes = [_lifetime(block) for _, block in _marker_blocks(body)]
        return self.prompt_cache.use(
            [(*sized(boundaries[i][0]()), lifetime) for i, lifetime in zip(marks, lifetimes, strict=True)],
            [sized(boundaries[i][0]()) for i in sorted(before)],
            minimum_tokens=claude_minimum(model),
        )

    # -- messages --------------------------------------------------------------------------------------------

    def _messages(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        body = req.json
        if not isinstance(body, dict):
            return self._error(400, "invalid_request_error", "Invalid JSON in request body")
        for required in ("model", "messages", "max_tokens"):
            if required not in body:
                return self._error(400, "invalid_request_error", f"{required}: Field required")
        for name in ("temperature", "top_p"):  # the API's range: 0 to 1 for both
            value = body.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value <= 1:
                bound = "less than or equal to 1" if value > 1 else "greater than or equal to 0"
                return self._error(400, "invalid_request_error", f"{name}: Input should be {bound}")
        model = str(body["model"])
        refused = self._refusal(body, ctx)
        if refused is not None:
            return refused
        dated = ANTHROPIC_SNAPSHOTS.get(model, model)
        window = ctx.context_window(model, ANTHROPIC_CONTEXT_WINDOWS)
        if window is not None:  # the whole prompt, cached parts included, against the window
            tokens = _input_tokens(body, _thinking(body))
            if tokens > window:
                message = f"prompt is too long: {tokens} tokens > {window} maximum"
                return self._error(400, "invalid_request_error", message, self._headers(req, ctx))
        answer = self._answer(body, ctx)
        cache = self._cache_use(body, ctx, answer.tokens_in)
        msg_id = ctx.make_id("msg_01", 22, req.body)
        tool_ids = [ctx.make_id("toolu_01", 22, req.body, i) for i in range(len(answer.tool_calls))]
        headers = self._headers(req, ctx)
        if body.get("stream"):
            chunks = self._stream(req, ctx, answer, msg_id, dated, tool_ids, cache)
            return SimResponse(200, {"content-type": "text/event-stream; charset=utf-8", **headers}, chunks=chunks)
        content: list[dict[str, Any]] = []
        if answer.thinking:
            signature = self._signature(req, ctx, answer.thinking)
            content.append({"type": "thinking", "thinking": answer.thinking, "signature": signature})
        if answer.text:
            content.append({"type": "text", "text": answer.text})
        for call, tool_id in zip(answer.tool_calls, tool_ids, strict=True):
            content.append({"type": "tool_use", "id": tool_id, "name": call["name"], "input": call["arguments"]})
        payload = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": dated,
            "content": content,
            "stop_reason": self._stop_reason(answer),
            "stop_sequence": answer.stop_sequence,
            "usage": self._usage(answer, answer.tokens_out + answer.tokens_thinking, cache),
        }
        return json_response(200, payload, headers)

    def _refusal(self, body: dict[str, Any], ctx: SimContext) -> SimResponse | None:
        """The API's 404 for an unknown model and its 400s for what the request holds that it refuses,
        alike for a message and a token count, or ``None``."""
        model = str(body["model"])
        if not ctx.accepts_model(model, ANTHROPIC_MODELS):
            return self._error(404, "not_found_error", f"model: {model}")
        dated = ANTHROPIC_SNAPSHOTS.get(model, model)
        refused = _model_problem(body, dated)
        if refused is not None:
            return self._error(400, "invalid_request_error", refused)
        flagged = _bad_error_flag(body)
        if flagged is not None:
            return self._error(400, "invalid_request_error", f"{flagged}.is_error: Input should be a valid boolean")
        bad_id = _bad_tool_id(body)
        if bad_id is not None:
            return self._error(400, "invalid_request_error", bad_id)
        unpaired = _unpaired_tool_blocks(body)
        if unpaired is not None:
            return self._error(400, "invalid_request_error", unpaired)
        if not body.get("tools") and _holds_tool_blocks(body):
            return self._error(400, "invalid_request_error", _TOOLS_UNDEFINED)
        budget_problem = _thinking_budget_problem(body)
        if budget_problem is not None:
            return self._error(400, "invalid_request_error", budget_problem)
        unthought = _unthought_tool_turn(body)
        if unthought is not None:
            return self._error(400, "invalid_request_error", unthought)
        forged = _badly_signed_thinking(body)
        if forged is not None:
            return self._error(400, "invalid_request_error", forged)
        lifetimes = _ttl_problem(body)
        if lifetimes is not None:
            return self._error(400, "invalid_request_error", lifetimes)
        open_schema = _output_schema_problem(body)
        if open_schema is not None:
            return self._error(400, "invalid_request_error", open_schema)
        markers = sum(marked for _, marked in _boundaries(body))
        if markers > MAX_CACHE_BREAKPOINTS:
            return self._error(
                400,
                "invalid_request_error",
                f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. Found {markers}.",
            )
        return None

    def _count_tokens(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        """``POST /v1/messages/count_tokens``: the request's input tokens as ``/v1/messages`` would report
        them in ``usage.input_tokens`` for the same request without a cache (``_input_tokens``, the same
        arithmetic); the body refused as the API refuses it — its fields only (``max_tokens``, ``stream`` and
        the sampling knobs are "Extra inputs are not permitted"), ``model`` and ``messages`` required, an
        unknown model's 404, the message checks' 400s. A prompt over the context window is still counted:
        sizing one is what the endpoint is for."""
        body = req.json
        if not isinstance(body, dict):
            return self._error(400, "invalid_request_error", "Invalid JSON in request body")
        extra = next((name for name in body if name not in COUNT_FIELDS), None)
        if extra is not None:
            return self._error(400, "invalid_request_error", f"{extra}: Extra inputs are not permitted")
        for required in ("messages", "model"):
            if required not in body:
                return self._error(400, "invalid_request_error", f"{required}: Field required")
        refused = self._refusal(body, ctx)
        if refused is not None:
            return refused
        return json_response(200, {"input_tokens": _input_tokens(body, _thinking(body))}, self._headers(req, ctx))

    def _stream(
        self,
        req: SimRequest,
        ctx: SimContext,
        answer: Answer,
        msg_id: str,
        model: str,
        tool_ids: list[str],
        cache: CacheUse,
    ) -> list[bytes]:
        rnd = ctx.rng("padding", req.body)

        def event(name: str, obj: dict[str, Any]) -> bytes:
            data = json.dumps({"type": name, **obj}, ensure_ascii=False, separators=(",", ":"))
            data = data[:-1] + " " * rnd.choice((0, 1, 2, 4, 7, 15)) + "}"  # the service pads like this
            return f"event: {name}\ndata: {data}\n\n".encode()

        out = [
            event(
                "message_start",
                {
                    "message": {
                        "model": model,
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": self._usage(answer, 1, cache),
                    }
                },
            )
        ]
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if answer.thinking:
            deltas = [{"type": "thinking_delta", "thinking": p} for p in answer.thinking_pieces]
            deltas.append({"type": "signature_delta", "signature": self._signature(req, ctx, answer.thinking)})
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
        if answer.text:
            blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in answer.pieces]))
        for call, tool_id in zip(answer.tool_calls, tool_ids, strict=True):
            arguments = json.dumps(call["arguments"], ensure_ascii=False) if call["arguments"] else ""
            pieces = [arguments[i : i + 12] for i in range(0, len(arguments), 12)] or [""]
            blocks.append(
                (
                    {
                        "type": "tool_use",
                        "id": tool_id,
                        "name": call["name"],
                        "input": {},
                        "caller": {"type": "direct"},
                    },
                    [{"type": "input_json_delta", "partial_json": p} for p in pieces],
                )
            )
        for index, (start, deltas) in enumerate(blocks):
            out.append(event("content_block_start", {"index": index, "content_block": start}))
            if index == 0:
                out.append(b'event: ping\ndata: {"type": "ping"}\n\n')
            out.extend(event("content_block_delta", {"index": index, "delta": d}) for d in deltas)
            out.append(event("content_block_stop", {"index": index}))
        out.append(
            event(
                "message_delta",
                {
                    "delta": {"stop_reason": self._stop_reason(answer), "stop_sequence": answer.stop_sequence},
                    "usage": {
                        "input_tokens": max(0, answer.tokens_in - cache.read - cache.written),
                        "cache_creation_input_tokens": cache.written,
                        "cache_read_input_tokens": cache.read,
                        "output_tokens": answer.tokens_out + answer.tokens_thinking,
                    },
                },
            )
        )
        out.append(event("message_stop", {}))
        return out

    # -- faults ----------------------------------------------------------------------------------------------

    def error_response(self, status: int, kind: str, retry_after: float | None) -> SimResponse:
        """429 rate_limit_error (+ retry-after), 529 overloaded_error, 500 api_error; "quota": spend limit;
        "billing": the account's credit used up — a 400 ``invalid_request_error`` "Your credit balance is
        too low…", as the API answers it, or a 402 ``billing_error`` when asked for that status."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["retry-after"] = str(int(retry_after)) if float(retry_after).is_integer() else f"{retry_after:g}"
        if kind == "quota":
            body = _error_body(
                "rate_limit_error",
                "You have reached your specified workspace API usage limits. "
                "You will regain access on 2025-02-01 at 00:00 UTC.",
            )
            body["error"]["details"] = {"error_code": "enforced_spend_limit_reached"}
            headers["x-should-retry"] = "false"
            return json_response(429 if status == 429 else status, body, headers)
        if kind == "billing":
            headers["x-should-retry"] = "false"
            if status == 402:
                return self._error(status, "billing_error", _BILLING_402, headers)
            return self._error(status, "invalid_request_error", _CREDIT_TOO_LOW, headers)
        if kind == "rate_limit" or status == 429:
            headers["x-should-retry"] = "true"
            return self._error(
                status,
                "rate_limit_error",
                (
                    "This request would exceed the rate limit for your organization of 50 requests per "
                    "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see "
                    "the response headers for current usage. Please reduce the prompt length or the maximum "
                    "tokens requested, or try again later. You may also contact sales at "
                    "https://www.anthropic.com/contact-sales to discuss your options for a rate limit "
                    "increase."
                ),
                headers,
            )
        if kind == "overloaded" or status == 529:
            headers["x-should-retry"] = "true"
            return self._error(status, "overloaded_error", "Overloaded", headers)
        if status >= 500:
            headers["x-should-retry"] = "true"
            return self._error(status, "api_error", "Internal server error", headers)
        type_ = {
            400: "invalid_request_error",
            401: "authentication_error",
            402: "billing_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
        }
        return self._error(
            status, type_.get(status, "invalid_request_error"), f"Simulated error (HTTP {status}).", headers
        )

    def stream_error_chunk(self, kind: str) -> bytes:
        """``event: error`` inside the 200 stream, as the service sends it."""
        type_, message = {
            "rate_limit": ("rate_limit_error", "Rate limited"),
            "overloaded": ("overloaded_error", "Overloaded"),
        }.get(kind, ("api_error", "Internal server error"))
        payload = json.dumps({"type": "error", "error": {"type": type_, "message": message}})
        return f"event: error\ndata: {payload}\n\n".encode()

    def malformed_chunk(self) -> bytes:
        """A well-framed event whose JSON is cut short."""
        return b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"ty\n\n'
