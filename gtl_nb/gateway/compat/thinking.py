"""Anthropic's extended thinking through ``/v1/messages``: the request's ``thinking``, the answer's thinking
blocks, and the blocks a client sends back.

* ``thinking`` ``{"type": "enabled", "budget_tokens": N}``, ``{"type": "adaptive"}`` or ``{"type":
  "between_tools"}`` asks for GTL's ``reasoning``; ``{"type": "disabled"}`` (or none) does not
  (``reasoning_asked``). ``budget_tokens`` is checked as Anthropic checks it (at least 1,024, below
  ``max_tokens``) and is GTL's ``reasoning_budget`` (``budget_asked``): the deployment thinks as much as
  the caller said — Claude with that budget and the caller's ``max_tokens`` as sent, another provider
  converted (docs/providers.md, "How hard a model thinks"). ``adaptive`` names no budget: the request's
  ``output_config.effort``, or else the deployment's option, decides. ``display: "omitted"``
  (``thinking_omitted``) is the gateway's to honour: the thinking blocks come with empty text, the
  first one's signature the provider's whole thinking state, packed (below) — what Anthropic answers
  then, a signature with no text, for the next turn's sake. ``output_config.effort`` counts only with
  ``thinking`` on (``anthropic_request``): it never turns thinking on, as at Anthropic. (Thinking that
  was omitted and streamed nothing comes, in a stream, as one block at the end, once ``done`` has the
  state, as a redacted block does.)
* The answer's thinking comes first, as Anthropic sends it (``answered_blocks``): the provider's own
  blocks when it has them — Anthropic's ``thinking`` / ``redacted_thinking`` blocks, Bedrock's reasoning
  blocks, each with its ``signature`` — else the reasoning text as one ``thinking`` block with an empty
  signature (Gemini's thoughts: a summary, with nothing to sign). A stream sends the thinking as it
  comes, each block signed where it ends, as Anthropic does: GTL's ``reasoning`` marks the end of each of
  the provider's blocks with its signature (a redacted block with its data), so the streamed blocks are
  the provider's own (``anthropic_response``). Where no mark came (``display: "omitted"``, a provider that
  signs nothing, an answer cached without them) the signatures go at the end, once the provider's
  ``done`` has given them (``streamed_signatures``), and where the blocks streamed are then not exactly
  the provider's (two thinking blocks in a row stream as one; a redacted block streams nothing) the
  first streamed block's signature is the provider's whole thinking state, packed as a tool call's
  replay state is (``replay_state.stamped``), and the others have none: sent back, that one signature
  gives the provider its blocks exactly as it wrote them, whatever text the client echoes.
* A ``thinking`` or ``redacted_thinking`` block in an assistant turn is the replay state of that turn
  (``replayed_state``): GTL's ``provider_data`` for Anthropic (the blocks as they came) and for Bedrock
  (the same, in Converse's shape), so the deployment that signed them gets them back first in that
  turn, as a tool loop with thinking requires. A packed signature is left for ``replay_state.restored``
  to unpack (under ``PACKED``: read within the request's bound, like a tool call's). A block without a
  signature (another provider's thoughts) has nothing to replay and is dropped.

These two providers' states travel in the blocks (``NATIVE_KEYS``): they are not also stamped on a tool
call's id (``replay_state``), where the thinking text would ride twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gtl_nb.gateway.compat import fields
from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.gateway.compat.replay_state import MARK, PACKED, stamped
from gtl_nb.providers.anthropic import replayed_thinking

__all__ = [
    "NATIVE_KEYS",
    "answered_blocks",
    "budget_asked",
    "reasoning_asked",
    "replayed_state",
    "streamed_signatures",
    "thinking_omitted",
]

ANTHROPIC = "anthropic"  # the Anthropic dialect's provider_data key (``providers.anthropic``)
BEDROCK = "bedrock_reasoning"  # the Bedrock dialect's (``providers.bedrock``)
NATIVE_KEYS = frozenset({ANTHROPIC, BEDROCK})
"""The ``provider_data`` keys this format carries in its own thinking blocks."""

MIN_BUDGET = 1024
"""The least ``budget_tokens`` Anthropic takes."""
_CONFIG_KEYS = {
    "enabled": frozenset({"type", "budget_tokens", "display"}),
    "adaptive": frozenset({"type", "display"}),
    "between_tools": frozenset({"type"}),
    "disabled": frozenset({"type"}),
}
_DISPLAYS = ("summarized", "omitted")


def reasoning_asked(body: Mapping[str, Any], max_tokens: int) -> bool:
    """Whether the request's ``thinking`` asks the model to think; ``FieldError`` for one Anthropic refuses."""
    config = fields.obj(body, "thinking", "thinking")
    if config is None:
        return False
    kind = fields.text(config, "type", "thinking.type", required=True)
    if kind not in _CONFIG_KEYS:
        allowed = ", ".join(repr(name) for name in _CONFIG_KEYS)
        raise FieldError("thinking.type", f"Input should be {allowed}")
    extra = fields.unknown_key(config, _CONFIG_KEYS[kind])
    if extra is not None:
        raise FieldError(f"thinking.{extra[0]}", "Extra inputs are not permitted")
    display = config.get("display")
    if display is not None and display not in _DISPLAYS:
        raise FieldError("thinking.display", "Input should be 'summarized' or 'omitted'")
    if kind == "enabled":
        budget = fields.integer(config, "budget_tokens", "thinking.budget_tokens", required=True)
        assert budget is not None
        if budget < MIN_BUDGET:
            raise FieldError("thinking.budget_tokens", f"Input should be greater than or equal to {MIN_BUDGET}")
        if budget >= max_tokens:
            raise FieldError("max_tokens", "`max_tokens` must be greater than `thinking.budget_tokens`")
    return kind != "disabled"


def budget_asked(body: Mapping[str, Any]) -> int | None:
    """The ``budget_tokens`` of an enabled ``thinking`` (checked by ``reasoning_asked``), else ``None``."""
    config = body.get("thinking")
    if not isinstance(config, Mapping) or config.get("type") != "enabled":
        return None
    budget = config.get("budget_tokens")
    return budget if isinstance(budget, int) and not isinstance(budget, bool) else None


def thinking_omitted(body: Mapping[str, Any]) -> bool:
    """Whether the request's ``thinking`` asks for its text left out (``display: "omitted"``)."""
    config = body.get("thinking")
    return isinstance(config, Mapping) and config.get("display") == "omitted"


def _packed_state(provider_data: Mapping[str, Any] | None) -> str:
    """The provider's thinking state packed for a signature (``""``: none, or too large to carry)."""
    return stamped("", {key: value for key, value in (provider_data or {}).items() if key in NATIVE_KEYS})


def replayed_state(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``provider_data`` of an assistant turn's thinking blocks (module docstring), or ``None``. The
    blocks are rebuilt from their fields by the Anthropic dialect's own reader (``replayed_thinking``)."""
    packed = next((block["signature"] for block in blocks if _packed(block.get("signature"))), None)
    kept = [
        block
        for block in replayed_thinking({ANTHROPIC: {"content": blocks}})
        if block.get("signature", block.get("data")) and not _packed(block.get("signature"))
    ]
    state: dict[str, Any] = {ANTHROPIC: {"content": kept}, BEDROCK: [_as_bedrock(b) for b in kept]} if kept else {}
    if packed is not None:  # (a stream's first block holds the whole state)
        state[PACKED] = packed
    return state or None


def _packed(signature: Any) -> bool:
    return isinstance(signature, str) and signature.startswith(MARK)


def _as_bedrock(block: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic thinking block in Converse's shape (``_provider_blocks`` reads it back)."""
    if block["type"] == "thinking":
        return {"reasoningText": {"text": block["thinking"], "signature": block["signature"]}}
    return {"redactedContent": block["data"]}


def _provider_blocks(provider_data: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The provider's own thinking blocks, in this format's shape (Anthropic's, or Bedrock's converted)."""
    state = provider_data or {}
    anthropic = state.get(ANTHROPIC)
    if isinstance(anthropic, dict) and isinstance(anthropic.get("content"), list):
        return [block for block in anthropic["content"] if isinstance(block, dict)]
    blocks: list[dict[str, Any]] = []
    for item in state.get(BEDROCK) or []:
        if not isinstance(item, dict):
            continue
        reasoning = item.get("reasoningText")
        if isinstance(reasoning, dict):
            text, signature = reasoning.get("text") or "", reasoning.get("signature") or ""
            blocks.append({"type": "thinking", "thinking": text, "signature": signature})
        elif isinstance(item.get("redactedContent"), str):
            blocks.append({"type": "redacted_thinking", "data": item["redactedContent"]})
    return blocks


def answered_blocks(
    provider_data: Mapping[str, Any] | None, reasoning_text: str, *, omitted: bool = False
) -> list[dict[str, Any]]:
    """The thinking blocks a whole answer starts with (module docstring); ``omitted``: their text left out."""
    blocks = _provider_blocks(provider_data)
    if omitted and (blocks or reasoning_text):
        return [{"type": "thinking", "thinking": "", "signature": _packed_state(provider_data)}]
    if blocks:
        return blocks
    return [{"type": "thinking", "thinking": reasoning_text, "signature": ""}] if reasoning_text else []


def streamed_signatures(
    provider_data: Mapping[str, Any] | None, streamed: list[str], *, omitted: bool = False
) -> tuple[list[str], list[dict[str, Any]]]:
    """For the thinking blocks a stream sent (their texts, in order): each one's signature (``""``: none),
    and the redacted blocks still to send whole (module docstring); ``omitted``: the blocks went out
    without their text, so the first carries the whole state."""
    if omitted and streamed:
        return [_packed_state(provider_data)] + [""] * (len(streamed) - 1), []
    if omitted and any(block.get("type") == "thinking" for block in _provider_blocks(provider_data)):
        # thought but not streamed (not asked to be seen): the state, whole, in one block without text
        packed = _packed_state(provider_data)
        if packed:
            return [], [{"type": "thinking", "thinking": "", "signature": packed}]
    blocks = _provider_blocks(provider_data)
    thinking = [block for block in blocks if block.get("type") == "thinking"]
    redacted = [block for block in blocks if block.get("type") == "redacted_thinking"]
    texts = [str(block.get("thinking") or "") for block in thinking]
    if not redacted and texts == streamed:  # one streamed block per provider block: their own signatures
        return [str(block.get("signature") or "") for block in thinking], []
    if not streamed:  # nothing streamed to sign (only redacted thinking): those blocks, whole
        return [], redacted
    packed = _packed_state(provider_data)
    if packed:  # the whole state on the first block
        return [packed] + [""] * (len(streamed) - 1), []
    # (too large to carry whole: the provider's signatures in order, the best there is)
    return [str(block.get("signature") or "") for block in thinking][: len(streamed)], redacted
