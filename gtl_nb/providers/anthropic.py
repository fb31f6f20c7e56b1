"""The Anthropic Messages API dialect (``POST {base}/v1/messages``), sans-I/O.

Request mapping (``build_request``):

* ``deployment.base_url`` is the bare origin, without ``/v1`` (as the official SDK expects); a
  trailing ``/v1`` is tolerated and dropped. Headers: ``x-api-key``, ``anthropic-version``, an
  optional ``anthropic-beta`` from ``deployment.options["anthropic_beta"]`` (a string or a list),
  then ``deployment.headers`` (which win).
* ``max_tokens`` is mandatory for Anthropic: ``request.max_tokens``, else
  ``deployment.options["max_tokens"]``, else ``DEFAULT_MAX_TOKENS`` (4096, the largest output every
  Claude model accepts).
* All ``system`` messages, wherever they stand, are joined with a blank line into the top-level
  ``system`` string. Other roles become ``user`` / ``assistant`` turns; consecutive turns of the
  same role are merged into one (role ``tool`` results join the user turn, ``tool_result`` blocks
  first as Anthropic requires; a failed tool's, ``tool_error``, with ``is_error: true``). Empty
  turns are dropped. A tool-call id outside the API's pattern (``^[a-zA-Z0-9_-]+$``: one another
  provider minted, ``functions.f:0``) is sent as ``base.safe_tool_id`` maps it, in its ``tool_use``
  and its ``tool_result`` alike.
* A message's ``cache_point`` → ``cache_control: {"type": "ephemeral"}`` (the five-minute cache; with
  its ``cache_ttl`` as ``ttl``, ``"1h"`` for the one-hour cache, a one-hour mark never after a
  five-minute one) on its last block that may carry one (never a replayed thinking block); a marked
  system message makes the system prompt a list of text blocks, one a system message, the marked
  ones carrying it; at most ``MAX_CACHE_POINTS`` (4, the API's limit): the last marks are kept.
  Usage's ``cache_creation_input_tokens`` → ``cache_write_tokens_in`` (its
  ``cache_creation.ephemeral_1h_input_tokens`` → ``cache_write_1h_tokens_in``),
  ``cache_read_input_tokens`` → ``cached_tokens_in``; ``tokens_in`` is their sum with ``input_tokens``.
* ``stop`` → ``stop_sequences``; one that is empty or whitespace only, which the API refuses, is
  refused before sending (``NotServedHere``: another deployment may take it). The API documents no
  limit on their number.
* ``temperature`` is passed through unchanged although Anthropic's range is 0–1, not 0–2: the API
  validates it and answers with a clear 400, where silent clamping would hide a caller mistake.
* Thinking (``thinking_config``): ``thinking: {"type": "enabled", "budget_tokens": N}``. N is the
  request's ``reasoning_budget``, else its ``reasoning_effort`` converted (``providers.effort.budget_of``:
  ``minimal`` 1,024, ``low`` 2,048, ``medium`` 8,192, ``high`` 16,384, ``xhigh`` 24,576, ``max`` 32,768),
  else — for a request with ``reasoning`` — ``deployment.options["thinking_budget_tokens"]`` or
  ``DEFAULT_THINKING_BUDGET``. A budget under Anthropic's least (``MIN_THINKING_BUDGET``, 1,024) is
  sent as that least: the nearest thinking Claude does. Effort ``none`` (or budget 0) sends no
  ``thinking``, with ``reasoning`` or not. An effort or budget without ``reasoning`` turns thinking on
  all the same (think this hard, show nothing): the decoder emits no ``reasoning`` events the request
  did not ask for, and keeps the signed blocks in ``provider_data`` as always, so a tool loop still
  gives Claude its thinking back. Anthropic wants ``max_tokens > budget_tokens`` (thinking counts as
  output): ``max_tokens`` goes as given when above the budget, and becomes ``budget + max_tokens``
  only when it is not (the answer keeps its own allowance). An effort or budget alone turns thinking on
  only where Anthropic would take it (``_may_think_unasked``): not with a forced tool choice, a
  temperature other than 1 or a ``top_p`` under 0.95, nor for a model the catalog knows does not think
  (``claude-3-5-haiku``) — how hard to think is a hint, and the request must stay one the API answers.
  With ``reasoning`` those restrictions are left to the API to enforce (the caller asked to see thinking).

  Anthropic's own ``output_config.effort`` is not sent: the models that take it take different
  levels (Claude Opus 4.6 refuses ``xhigh``, recorded in ``tests/fixtures/wire/anthropic/
  error-400-invalid-request.json``) and older ones none, and it tunes the whole answer's token spend,
  not only the thinking GTL's field is about; ``budget_tokens`` is what every thinking Claude model
  takes, so one conversion serves them all.
* ``tool_choice`` ("auto", "none", "required", a tool name, or an OpenAI-style
  ``{"type": "function", "function": {"name": …}}``) is sent only when tools are.
* A request without tools whose history holds tool calls or results (a conversation that used tools
  and goes on without them) has them written as text (``base.tool_history_as_text``), as the Bedrock
  dialect does: the API has refused ``tool_use`` and ``tool_result`` blocks in a request without
  ``tools`` ("Requests which include `tool_use` or `tool_result` blocks must define tools.",
  anthropics/anthropic-sdk-python#494), and declaring the history's tools with ``tool_choice`` "none"
  would invent their schemas (docs/providers.md).
* Images: ``data:`` URLs → ``base64`` sources (the ``media_type`` lower-cased, ``image/jpg`` as
  ``image/jpeg``: the API takes its four types spelled as it lists them), other URLs → ``url``
  sources; in the order of the message's ``parts`` when it has them, else placed before the text of
  user and tool messages
  (Anthropic's advice). Assistant messages carry no images. A user or tool message's ``parts`` are
  its blocks, several texts too: adjacent text blocks stay blocks (a tool result's as its
  ``content`` list), never one text joined with a newline the caller did not send.
* ``response_format`` ``json_schema`` → ``output_config.format`` (``{"type": "json_schema", "schema":
  …}``, Anthropic's structured outputs); ``text`` → nothing. ``json_object`` (any JSON object, no
  schema) has no Anthropic form: it is refused (``NotServedHere``: another deployment may serve it)
  rather than sent without it, which would silently answer in prose. ``metadata`` is not mapped.

``provider_data`` (what the decoder exposes after the terminal event, and what ``build_request``
replays as the first content blocks of that assistant message)::

    {"anthropic": {"content": [
        {"type": "thinking", "thinking": "…", "signature": "…"},
        {"type": "redacted_thinking", "data": "…"},
    ]}}

Token counting (``count_request`` / ``parse_count``): ``POST /v1/messages/count_tokens`` with the body
``build_request`` would send less ``COUNT_DROPS`` (``max_tokens``, ``stream``, ``temperature``, ``top_p``,
``stop_sequences``: the endpoint refuses them as extra inputs, and none is part of the prompt), so the
count is of the very prompt a completion sends; the answer's ``input_tokens`` is the count
(``Engine.count_tokens``, ``engine/counting.py``).

Decoding: SSE events ``message_start`` / ``content_block_*`` / ``message_delta`` / ``message_stop``
(``ping`` and unknown events ignored); ``message_delta`` usage is cumulative and replaces earlier
values. ``message_start``'s input counts, given before any content, go on at once as a ``streaming``
status (``tokens_in`` and its cache parts: GTL allows one ``usage``, at the end, which repeats them).
With ``reasoning`` asked, each thinking block's end is a ``reasoning`` event of its ``signature``, and a
``redacted_thinking`` block one of its ``redacted`` data, where the stream ends them. Server-side tool
blocks (``server_tool_use``, ``web_search_tool_result``, …) are not client tool calls and are skipped.
``stop_reason`` → ``finish_reason``: ``end_turn`` / ``stop_sequence`` → stop (``done.stop_sequence`` says
which), ``tool_use`` → tool_calls, ``max_tokens`` / ``model_context_window_exceeded`` → length, ``refusal``
→ content_filter, ``pause_turn`` (a server tool loop paused; the answer is NOT complete and the caller
must resend to continue) and anything else → other.

Errors: ``billing_error`` (402, the provider account cannot pay) maps to ``FORBIDDEN``, not
``BUDGET_EXCEEDED``, which is reserved for gtl_nb's own budgets; ``api_error`` → ``INTERNAL``
(retryable); a spend-limit 429 (``enforced_spend_limit_reached``) → ``RATE_LIMIT`` not retryable.
An ``x-should-retry`` header, when present, decides ``retryable``. Error bodies are read from a bounded
prefix; a stream or body the decoder cannot read (not JSON, too deep, too large, an unexpected shape)
ends with a retryable PROVIDER_UNAVAILABLE ``error`` (``GuardedDecoder``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import (
    CACHE_TTLS,
    CompletionRequest,
    Done,
    Error,
    FinishReason,
    Message,
    Reasoning,
    Status,
    StreamEvent,
    Token,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.base import (
    API_KEY,
    BodySniffer,
    Deployment,
    GuardedDecoder,
    HttpRequest,
    ProviderNeeds,
    about_the_account,
    arguments_object,
    arguments_text,
    cache_points,
    cache_ttls_in_order,
    code_for_status,
    encode_body,
    ends_response,
    error_boundary,
    error_event,
    header,
    holds_tool_history,
    image_media_type,
    out_of_credit,
    parse_json_body,
    parse_tool_choice,
    refuse_empty_turn,
    refuse_stop_sequences,
    retry_after_seconds,
    retryable_for_status,
    safe_tool_id,
    schema_asked,
    split_data_url,
    tool_history_as_text,
)
from gtl_nb.providers.catalog import Catalog
from gtl_nb.providers.effort import asked_budget
from gtl_nb.providers.limits import (
    MAX_EVENT_BYTES,
    error_body_json,
    error_body_text,
    parse_json_object,
)
from gtl_nb.providers.sse import SSEDecoder, SSEEvent

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_THINKING_BUDGET = 2048
MIN_THINKING_BUDGET = 1024
"""The least ``budget_tokens`` Anthropic takes."""
COUNT_DROPS = ("max_tokens", "stream", "temperature", "top_p", "stop_sequences")
"""The Messages fields ``POST /v1/messages/count_tokens`` refuses ("max_tokens: Extra inputs are not
permitted"): none of them is part of the prompt."""

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}

_TYPE_CODES: dict[str, str] = {
    "invalid_request_error": "INVALID_REQUEST",
    "authentication_error": "AUTH_FAILED",
    "permission_error": "FORBIDDEN",
    "billing_error": "RATE_LIMIT",  # (not retryable: the account's credit, as OpenAI's insufficient_quota)
    "not_found_error": "MODEL_NOT_FOUND",
    "request_too_large": "INVALID_REQUEST",
    "rate_limit_error": "RATE_LIMIT",
    "api_error": "INTERNAL",
    "overloaded_error": "OVERLOADED",
    "timeout_error": "TIMEOUT",
}
_RETRYABLE_TYPES = frozenset({"rate_limit_error", "api_error", "overloaded_error", "timeout_error"})
_CONTEXT_TEXT = re.compile(r"(?i)prompt is too long|exceeds? (the )?context|context (window|limit)")
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _text(value: Any) -> str:
    """A text field of the wire: the string, or ``""`` for anything else."""
    return value if isinstance(value, str) else ""


def _object(value: Any) -> dict[str, Any]:
    """A JSON object field of the wire: the dict, or ``{}`` for anything else."""
    return value if isinstance(value, dict) else {}


def _index(value: Any) -> Any:
    """A content block ``index`` usable as a key (an unhashable one is a block nobody can refer to)."""
    return value if isinstance(value, (int, str)) or value is None else repr(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def finish_reason(stop_reason: str | None) -> FinishReason:
    """Anthropic ``stop_reason`` → GTL ``finish_reason`` (see the module docstring)."""
    return _FINISH.get(stop_reason or "", "other")


def classify_error(status: int, error_type: Any, message: str, error: Any = None) -> tuple[str, bool]:
    """The GTL code and retryability of an Anthropic error (``error`` is the raw error object)."""
    if isinstance(error_type, str) and error_type in _TYPE_CODES:
        code, retryable = _TYPE_CODES[error_type], error_type in _RETRYABLE_TYPES
    elif status == 402:  # payment required: the account's credit
        code, retryable = "RATE_LIMIT", False
    else:
        code, retryable = code_for_status(status), retryable_for_status(status)
    if code == "INVALID_REQUEST" and _CONTEXT_TEXT.search(message):
        code = "CONTEXT_LENGTH_EXCEEDED"
    elif code == "INVALID_REQUEST" and status == 400 and out_of_credit(message):  # "Your credit balance is too low"
        code, retryable = "RATE_LIMIT", False
    elif code == "INVALID_REQUEST" and status == 400 and about_the_account(message):
        code, retryable = "FORBIDDEN", False
    if code == "RATE_LIMIT" and _is_spend_limit(error, message):
        retryable = False
    return code, retryable


def _final_4xx(status: int) -> bool:
    """Whether an Anthropic error answered with ``status`` is final: a ``4xx`` but 408, 409 and 429 is about
    the request or the account (its credit), refused again if asked again, whatever an ``x-should-retry:
    true`` (a proxy's, in front of the API) says."""
    return 400 <= status < 500 and status not in (408, 409, 429)


def _is_spend_limit(error: Any, message: str) -> bool:
    details = error.get("details") if isinstance(error, dict) else None
    if isinstance(details, dict) and details.get("error_code") == "enforced_spend_limit_reached":
        return True
    return "spend limit" in message.lower()


# ----------------------------------------------------------------------------------------------
# Request building


def _base_url(deployment: Deployment) -> str:
    base = (deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _headers(deployment: Deployment, *, json_body: bool) -> dict[str, str]:
    headers = {"anthropic-version": API_VERSION}
    if json_body:
        headers["content-type"] = "application/json"
    if deployment.api_key:
        headers["x-api-key"] = deployment.api_key
    beta = deployment.options.get("anthropic_beta")
    if beta:
        headers["anthropic-beta"] = beta if isinstance(beta, str) else ",".join(beta)
    headers.update(deployment.headers)
    return headers


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """GTL ``tool_choice`` → Anthropic's object (``None`` leaves the provider default)."""
    parsed = parse_tool_choice(choice)
    if parsed is None:
        return None
    if parsed.mode == "tool":
        result: dict[str, Any] = {"type": "tool", "name": parsed.name}
    else:
        result = {"type": "any" if parsed.mode == "required" else parsed.mode}
    if not parsed.parallel and parsed.mode != "none":  # ("none" takes no such flag)
        result["disable_parallel_tool_use"] = True
    return result


def _image_block(url: str) -> dict[str, Any]:
    inline = split_data_url(url)
    if inline is not None:
        media_type, data = inline  # (the API takes four types, spelled as it lists them)
        return {"type": "image", "source": {"type": "base64", "media_type": image_media_type(media_type), "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_input(call: ToolCall) -> dict[str, Any]:
    try:
        return arguments_object(call)
    except ValueError as exc:  # JSONDecodeError is a ValueError too
        raise InvalidRequestError(f"tool call {call.id!r}: arguments are not a JSON object") from exc


def replayed_thinking(provider_data: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The thinking blocks ``provider_data`` holds for replay, rebuilt from their fields: only ``thinking``
    (text and signature) and ``redacted_thinking`` (data) blocks of strings — ``provider_data`` may come
    from a client, and nothing else it holds (a document, a server tool's block) is sent on its say-so."""
    replay = (provider_data or {}).get("anthropic")
    content = replay.get("content") if isinstance(replay, Mapping) else None
    blocks: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "thinking":
            text, signature = block.get("thinking"), block.get("signature")
            if isinstance(text, str) and isinstance(signature, str):
                blocks.append({"type": "thinking", "thinking": text, "signature": signature})
        elif block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": block["data"]})
    return blocks


def _blocks(message: Message) -> list[dict[str, Any]]:
    """The content blocks of one non-system message."""
    if message.role == "assistant":
        blocks = replayed_thinking(message.provider_data)
        if message.content:
            blocks.append({"type": "text", "text": message.content})
        for call in message.tool_calls:
            blocks.append(
                {"type": "tool_use", "id": safe_tool_id(call.id), "name": call.name, "input": _tool_input(call)}
            )
        return blocks
    content = _content_blocks(message)
    if message.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": safe_tool_id(message.tool_call_id or "")}
        if message.images or (message.parts and content):  # its pieces, as blocks, in their order
            result["content"] = content
        elif message.content is not None:
            result["content"] = message.content
        if message.tool_error:
            result["is_error"] = True
        return [result]
    return content


def _content_blocks(message: Message) -> list[dict[str, Any]]:
    """A user or tool message's text and images: in the order of its ``parts``, else the images first
    (Anthropic's advice)."""
    ordered = message.in_order()
    if ordered is not None:
        return [_image_block(value) if kind == "image" else {"type": "text", "text": value} for kind, value in ordered]
    images = [_image_block(url) for url in message.images]
    return images + ([{"type": "text", "text": message.content}] if message.content else [])


_EPHEMERAL = {"type": "ephemeral"}  # the five-minute cache unless a ttl says 1h (which costs 2x to write)


def asks_for_cache(marker: Any) -> bool:
    """Whether a ``cache_control`` value a caller wrote (Anthropic's form, which other proxies take in
    OpenAI's) asks for caching: ``{"type": "ephemeral"}``, with an optional ``ttl`` of ``"5m"`` or
    ``"1h"``; absent (``None``) does not. Anything else raises ``ValueError``, as the API refuses it —
    ``false`` must not turn caching on."""
    if marker is None:
        return False
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral" or marker.get("ttl", "5m") not in CACHE_TTLS:
        raise ValueError('expected {"type": "ephemeral"} (with an optional ttl of 5m or 1h)')
    return True


_CACHEABLE_BLOCKS = frozenset(("text", "image", "tool_use", "tool_result", "document"))  # never "thinking"


def convert_messages(
    messages: list[Message], points: frozenset[int] = frozenset()
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """GTL messages → (top-level ``system``, Anthropic ``messages``), with ``cache_control`` after the
    messages whose indexes ``points`` holds (``base.cache_points``). The system prompt is one text,
    the system messages joined, unless one of them carries a breakpoint: then each is a text block,
    so a breakpoint falls between them where it was asked for."""
    system: list[tuple[str, dict[str, str] | None]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if message.role == "system":
            if message.content:
                system.append((message.content, _cache_control(message) if index in points else None))
            continue
        blocks = _blocks(message)
        if not blocks:
            refuse_empty_turn(message, index, "Anthropic's Messages API")
            continue
        if index in points:
            _mark_for_cache(blocks, _cache_control(message))
        role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":  # tool results must open their user message (stable sort)
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
    if points:  # in the order the API reads the breakpoints: the system prompt's, then the turns' as sorted
        sent = [marker for _, marker in system if marker] + [
            block["cache_control"] for turn in turns for block in turn["content"] if "cache_control" in block
        ]
        cache_ttls_in_order([marker.get("ttl") for marker in sent])
    if any(marker for _, marker in system):
        blocks = [{"type": "text", "text": text} for text, _ in system]
        for block, (_, marker) in zip(blocks, system, strict=True):
            if marker:
                block["cache_control"] = marker
        return blocks, turns
    return ("\n\n".join(text for text, _ in system) or None), turns


def _cache_control(message: Message) -> dict[str, str]:
    """The ``cache_control`` of a marked message: ephemeral, with its ``cache_ttl`` when it gives one."""
    return {**_EPHEMERAL, "ttl": message.cache_ttl} if message.cache_ttl else dict(_EPHEMERAL)


def _mark_for_cache(blocks: list[dict[str, Any]], marker: dict[str, str]) -> None:
    """A breakpoint on the last of ``blocks`` that may carry one (a replayed thinking block may not)."""
    for block in reversed(blocks):
        if block.get("type") in _CACHEABLE_BLOCKS:
            block["cache_control"] = marker
            return


def thinking_budget(
    request: CompletionRequest, options: Mapping[str, Any], default: int, provider_type: str = "anthropic"
) -> int:
    """The ``budget_tokens`` a Claude model is sent (0: no thinking), as the module docstring says; the
    Bedrock dialect asks the same of Claude there (``default``: each dialect's own; ``provider_type``: whose
    catalog entries name the model)."""
    asked = asked_budget(request)
    if asked is None:
        if not request.reasoning:
            return 0
        asked = int(options.get("thinking_budget_tokens") or default)
    elif not request.reasoning and not _may_think_unasked(request, provider_type):
        return 0
    return max(asked, MIN_THINKING_BUDGET) if asked > 0 else 0


def _may_think_unasked(request: CompletionRequest, provider_type: str) -> bool:
    """Whether an effort or budget alone (no ``reasoning``) may turn Claude's thinking on: not where the
    request would then be refused — a forced tool choice, a temperature other than 1, a ``top_p`` under
    0.95 (Anthropic's thinking takes none of them) — nor for a model the catalog knows does not think.
    How hard to think is a hint; the request the caller made must stay the one that is answered."""
    forced = parse_tool_choice(request.tool_choice) if request.tools else None
    if forced is not None and forced.mode in ("required", "tool"):
        return False
    if request.temperature is not None and request.temperature != 1:
        return False
    if request.top_p is not None and request.top_p < THINKING_LEAST_TOP_P:
        return False
    known = Catalog.default().entry(provider_type, request.model)
    return known is None or known.supports_reasoning


THINKING_LEAST_TOP_P = 0.95
"""The least ``top_p`` Anthropic takes with thinking on."""


def build_body(request: CompletionRequest, deployment: Deployment) -> dict[str, Any]:
    """The JSON body of a Messages API call."""
    history = request.messages
    if not request.tools and holds_tool_history(history):
        history = tool_history_as_text(history)  # the API refuses tool blocks in a request without tools
    system, turns = convert_messages(history, cache_points(history))
    max_tokens = int(request.max_tokens or deployment.options.get("max_tokens") or DEFAULT_MAX_TOKENS)
    body: dict[str, Any] = {"model": request.model, "max_tokens": max_tokens, "messages": turns}
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        # the API's 400s ("each stop sequence must be non-empty", "… must contain non-whitespace")
        refuse_stop_sequences(request, "Anthropic's Messages API", takes_empty=False, takes_whitespace=False)
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {"name": tool.name, "description": tool.description, "input_schema": tool.parameters}
            for tool in request.tools
        ]
        choice = _tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    budget = thinking_budget(request, deployment.options, DEFAULT_THINKING_BUDGET)
    if budget:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if max_tokens <= budget:
            body["max_tokens"] = budget + max_tokens
    asked = schema_asked(request.response_format, "Anthropic")
    if asked is not None:
        body["output_config"] = {"format": {"type": "json_schema", "schema": asked[0]}}
    body["stream"] = request.stream
    return body


# ----------------------------------------------------------------------------------------------
# Response decoding


class AnthropicDecoder(GuardedDecoder):
    """Decodes one 2xx Messages API body: SSE when streaming, one message JSON otherwise.

    The mode is sniffed from the first byte (``{`` means a JSON body) so a proxy that ignores
    ``stream`` still decodes. ``provider_data`` holds the thinking blocks once seen.
    """

    def __init__(self, request: CompletionRequest, deployment: Deployment) -> None:
        super().__init__(request, deployment)
        self._sid = request.session_id
        self._sse = SSEDecoder()
        self._sniffer = BodySniffer(request.stream)
        self._blocks: dict[int, dict[str, Any]] = {}
        self._thinking: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, int] = {}
        self._written_1h: int | None = None  # the part of cache_creation_input_tokens kept for an hour
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self._model: str | None = None
        self._finished = False

    @property
    def provider_data(self) -> dict[str, Any] | None:
        """Thinking blocks to replay in the next turn (see the module docstring), or ``None``."""
        if not self._thinking:
            return None
        return {"anthropic": {"content": [self._thinking[i] for i in sorted(self._thinking)]}}

    # -- feeding ----------------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> list[StreamEvent]:
        """The events completed by ``chunk`` (a JSON body waits for ``close``)."""
        if self._finished:
            return []
        stream = self._sniffer.route(chunk)
        return [] if stream is None else self._dispatch(self._sse.feed(stream))

    def _close(self) -> list[StreamEvent]:
        """End of body: the remaining events, ending in ``done`` or ``error``."""
        if self._finished:
            return []
        if self._sniffer.mode == "json":
            return self._decode_message(bytes(self._sniffer.body))
        if self._sniffer.mode is None:
            self.ended_early = True
            return [self._fail("PROVIDER_UNAVAILABLE", "empty response body from Anthropic")]
        events = self._dispatch(self._sse.close())
        if not self._finished and not ends_response(events):
            self.ended_early = True
            events.append(self._fail("PROVIDER_UNAVAILABLE", "stream ended early: no message_stop event"))
        return events

    def _dispatch(self, sse_events: list[SSEEvent]) -> list[StreamEvent]:
        return self._each(sse_events, self._on_event)

    def _fail(self, code: str, message: str, *, retryable: bool | None = None) -> Error:
        self._finished = True
        return error_event(self._request, self._deployment, code, message, retryable=retryable)

    # -- streaming events -------------------------------------------------------------------

    def _on_event(self, sse: SSEEvent) -> list[StreamEvent]:
        if self._finished or not sse.data.strip():
            return []
        data = parse_json_object(sse.data, f"malformed Anthropic {sse.event!r} event")
        kind = data.get("type") or sse.event
        if kind == "message_start":
            message = _object(data.get("message"))
            self._model = _text(message.get("model")) or self._model
            self._take_usage(message.get("usage"))
            return self._counted_input()
        elif kind == "content_block_start":
            return self._block_start(data.get("index"), _object(data.get("content_block")))
        elif kind == "content_block_delta":
            return self._block_delta(data.get("index"), _object(data.get("delta")))
        elif kind == "content_block_stop":
            return self._block_stop(data.get("index"))
        elif kind == "message_delta":
            delta = _object(data.get("delta"))
            self._stop_reason = _text(delta.get("stop_reason")) or self._stop_reason
            self._stop_sequence = _text(delta.get("stop_sequence")) or self._stop_sequence
            self._take_usage(data.get("usage"))
        elif kind == "message_stop":
            return self._finish()
        elif kind == "error":
            return [self._stream_error(data.get("error"))]
        return []  # ping and event types added after this was written

    def _block_start(self, index: Any, block: dict[str, Any]) -> list[StreamEvent]:
        kind = block.get("type")
        slot: dict[str, Any] = {"type": kind}
        self._blocks[_index(index)] = slot
        if kind == "tool_use":
            slot.update(id=block.get("id"), name=block.get("name"), args=[])  # placeholder input ignored
        elif kind == "thinking":
            slot.update(thinking=[_text(block.get("thinking"))], signature=[_text(block.get("signature"))])
            return self._reasoning(block.get("thinking"))
        elif kind == "redacted_thinking":
            slot["data"] = block.get("data")
        elif kind == "text" and _text(block.get("text")):
            return [Token(session_id=self._sid, text=block["text"])]
        return []

    def _block_delta(self, index: Any, delta: dict[str, Any]) -> list[StreamEvent]:
        slot = self._blocks.get(_index(index), {})
        kind = delta.get("type")
        if kind == "text_delta":
            text = _text(delta.get("text"))
            return [Token(session_id=self._sid, text=text)] if text else []
        if kind == "thinking_delta":
            slot.setdefault("thinking", []).append(_text(delta.get("thinking")))
            return self._reasoning(delta.get("thinking"))
        if kind == "signature_delta":
            slot.setdefault("signature", []).append(_text(delta.get("signature")))
        elif kind == "input_json_delta" and slot.get("type") == "tool_use":
            slot["args"].append(_text(delta.get("partial_json")))
        return []

    def _block_stop(self, index: Any) -> list[StreamEvent]:
        index = _index(index)
        slot = self._blocks.pop(index, None)
        if slot is None:
            return []
        kind = slot["type"]
        if kind == "thinking":
            signature = "".join(slot["signature"])
            self._thinking[index] = {"type": "thinking", "thinking": "".join(slot["thinking"]), "signature": signature}
            if signature and self._request.reasoning:  # the block's end, where the provider signed it
                return [Reasoning(session_id=self._sid, text="", signature=signature)]
        elif kind == "redacted_thinking":
            self._thinking[index] = {"type": "redacted_thinking", "data": slot.get("data")}
            data = slot.get("data")
            if isinstance(data, str) and data and self._request.reasoning:
                return [Reasoning(session_id=self._sid, text="", redacted=data)]
        elif kind == "tool_use":
            return [self._tool_call(slot.get("id"), slot.get("name"), arguments_text("".join(slot["args"])))]
        return []

    def _tool_call(self, call_id: Any, name: Any, arguments: str) -> StreamEvent:
        parse_json_object(arguments, f"tool call {str(name)[:80]!r}: arguments", limit=MAX_EVENT_BYTES)
        call = ToolCall(id=str(call_id or ""), name=str(name or ""), arguments=arguments)
        return ToolCallEvent(session_id=self._sid, function=call)

    def _reasoning(self, text: Any) -> list[StreamEvent]:
        if _text(text) and self._request.reasoning:
            return [Reasoning(session_id=self._sid, text=text)]
        return []

    def _take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):  # cumulative values: replace, never add
            self._usage.update({k: usage[k] for k in _USAGE_KEYS if _is_count(usage.get(k))})
            hour = _object(usage.get("cache_creation")).get("ephemeral_1h_input_tokens")
            if _is_count(hour):
                self._written_1h = hour

    def _counted_input(self) -> list[StreamEvent]:
        """A ``streaming`` status with the input counts ``message_start`` gave, before any content (the
        ``usage`` at the end repeats them), or nothing when it gave none."""
        parts = [self._usage.get(k) for k in _USAGE_KEYS if k != "output_tokens"]
        if all(part is None for part in parts):
            return []
        status = Status(
            session_id=self._sid,
            state="streaming",
            tokens_in=sum(part or 0 for part in parts),
            cached_tokens_in=self._usage.get("cache_read_input_tokens"),
            cache_write_tokens_in=self._usage.get("cache_creation_input_tokens"),
            cache_write_1h_tokens_in=self._written_1h or None,
        )
        return [status]

    def _stream_error(self, error: Any) -> Error:
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or "error event in Anthropic stream")
        code, retryable = classify_error(200, error.get("type"), message, error)
        self._finished = True
        return error_event(self._request, self._deployment, code, message, retryable=retryable, http_status=200)

    def _finish(self) -> list[StreamEvent]:
        self._finished = True
        parts = [self._usage.get(k) for k in _USAGE_KEYS if k != "output_tokens"]
        tokens_in = None if all(p is None for p in parts) else sum(p or 0 for p in parts)
        usage = Usage(
            session_id=self._sid,
            tokens_in=tokens_in,
            tokens_out=self._usage.get("output_tokens"),
            cached_tokens_in=self._usage.get("cache_read_input_tokens"),
            cache_write_tokens_in=self._usage.get("cache_creation_input_tokens"),
            cache_write_1h_tokens_in=self._written_1h or None,  # (0: nothing kept for an hour, as absent)
            reasoning_tokens_out=None,  # Anthropic counts thinking inside output_tokens only
        )
        done = Done(
            session_id=self._sid,
            finish_reason=finish_reason(self._stop_reason),
            provider=self._deployment.name,
            model=self._model or self._request.model,
            stop_sequence=self._stop_sequence if self._stop_reason == "stop_sequence" else None,
        )
        return [usage, done]

    # -- non-streaming ----------------------------------------------------------------------

    def _decode_message(self, body: bytes) -> list[StreamEvent]:
        data = parse_json_body(body)
        if not isinstance(data, dict):
            problem = "malformed Anthropic response: body is not a JSON object (cut short?)"
            return [self._fail("PROVIDER_UNAVAILABLE", problem)]
        if data.get("type") == "error":
            return [self._stream_error(data.get("error"))]
        self._model = _text(data.get("model")) or None
        self._stop_reason = _text(data.get("stop_reason")) or None
        self._stop_sequence = _text(data.get("stop_sequence")) or None
        self._take_usage(data.get("usage"))
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[StreamEvent] = []
        for index, block in enumerate(data.get("content") or []):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text.append(_text(block.get("text")))
            elif kind == "thinking":
                reasoning.append(_text(block.get("thinking")))
                self._thinking[index] = {
                    "type": "thinking",
                    "thinking": _text(block.get("thinking")),
                    "signature": _text(block.get("signature")),
                }
            elif kind == "redacted_thinking":
                self._thinking[index] = {"type": "redacted_thinking", "data": block.get("data")}
            elif kind == "tool_use":
                arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
                calls.append(self._tool_call(block.get("id"), block.get("name"), arguments))
        events: list[StreamEvent] = []
        events.extend(self._reasoning("".join(reasoning)))
        if "".join(text):
            events.append(Token(session_id=self._sid, text="".join(text)))
        return [*events, *calls, *self._finish()]


# ----------------------------------------------------------------------------------------------
# The dialect


class AnthropicDialect:
    """Anthropic Messages API (see the module docstring for every mapping decision)."""

    name: ClassVar[str] = "anthropic"
    needs: ClassVar[ProviderNeeds] = ProviderNeeds(
        env={"api_key": ("ANTHROPIC_API_KEY",), "base_url": ("ANTHROPIC_BASE_URL",)},
        requires=(API_KEY,),
        implied_by=(("ANTHROPIC_API_KEY",),),
    )

    def build_request(self, request: CompletionRequest, deployment: Deployment, *, now: float) -> HttpRequest:
        """The HTTP request for ``request`` (``now`` is unused: no request signing)."""
        body = build_body(request, deployment)
        return HttpRequest(
            method="POST",
            url=f"{_base_url(deployment)}/v1/messages",
            headers=_headers(deployment, json_body=True),
            body=encode_body(body),
            stream=request.stream,
        )

    def response_decoder(self, request: CompletionRequest, deployment: Deployment) -> AnthropicDecoder:
        """A fresh decoder for one 2xx response body to ``request``."""
        return AnthropicDecoder(request, deployment)

    @error_boundary
    def decode_error(
        self,
        request: CompletionRequest,
        deployment: Deployment,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Error:
        """The ``error`` event for a non-2xx response (only a bounded prefix of the body is read)."""
        data = error_body_json(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            error_type = error.get("type")
            message = str(error.get("message") or error_type or f"HTTP {status}")
        else:
            error_type = None
            message = error_body_text(body) or f"HTTP {status} from Anthropic"
        code, retryable = classify_error(status, error_type, message, error)
        should_retry = (header(headers, "x-should-retry") or "").strip().lower()
        if should_retry == "false" or (should_retry == "true" and not _final_4xx(status)):
            retryable = should_retry == "true"
        return error_event(
            request,
            deployment,
            code,
            message,
            retryable=retryable,
            retry_after=retry_after_seconds(headers, message=message),
            http_status=status,
        )

    def count_request(self, request: CompletionRequest, deployment: Deployment, *, now: float) -> HttpRequest:
        """``POST /v1/messages/count_tokens`` for ``request``'s input: the Messages body ``build_request``
        would send, without what the counting endpoint refuses as extra inputs (``COUNT_DROPS``: how long
        or how the answer is written changes nothing of the prompt), so the count is of the very prompt a
        completion sends — system, turns, tools, tool choice, thinking, output format."""
        body = build_body(msgspec.structs.replace(request, stop=None, stream=False), deployment)
        for name in COUNT_DROPS:
            body.pop(name, None)
        return HttpRequest(
            method="POST",
            url=f"{_base_url(deployment)}/v1/messages/count_tokens",
            headers=_headers(deployment, json_body=True),
            body=encode_body(body),
            stream=False,
        )

    def parse_count(self, body: bytes) -> int:
        """``input_tokens`` of a count's answer (``{"input_tokens": N}``); ``ValueError`` for anything else."""
        data = parse_json_body(body)
        count = data.get("input_tokens") if isinstance(data, dict) else None
        if not _is_count(count) or count < 0:
            raise ValueError("the answer holds no input_tokens count")
        return int(count)

    def models_request(self, deployment: Deployment, *, now: float) -> HttpRequest:
        """``GET /v1/models`` with the largest page Anthropic allows (1000)."""
        return HttpRequest(
            method="GET",
            url=f"{_base_url(deployment)}/v1/models?limit=1000",
            headers=_headers(deployment, json_body=False),
            stream=False,
        )

    def parse_models(self, body: bytes) -> list[str]:
        """Model ids from a ``/v1/models`` page (newest first, as listed)."""
        data = parse_json_body(body)
        entries = data.get("data") if isinstance(data, dict) else None
        return [entry["id"] for entry in entries or [] if isinstance(entry, dict) and isinstance(entry.get("id"), str)]

    def model_times(self, body: bytes) -> dict[str, int]:
        """When a ``/v1/models`` page's models were released, in Unix seconds, from each one's ``created_at``
        (RFC 3339); a model without a time it can read is left out."""
        data = parse_json_body(body)
        entries = data.get("data") if isinstance(data, dict) else None
        times: dict[str, int] = {}
        for entry in entries or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            made = _unix_seconds(entry["created_at"]) if isinstance(entry.get("created_at"), str) else None
            if made is not None:
                times.setdefault(entry["id"], made)
        return times


def _unix_seconds(stamp: str) -> int | None:
    """An RFC 3339 time (``2025-02-19T00:00:00Z``) in Unix seconds, or ``None`` when it is not one."""
    try:
        made = datetime.fromisoformat(stamp[:40].replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if made.tzinfo is None:
        return None
    seconds = int(made.timestamp())
    return seconds if seconds > 0 else None
