"""``bedrock``: AWS Bedrock's Converse and ConverseStream APIs (wire-formats.md §6).

Requests go to ``POST {base}/model/{modelId}/converse`` (``/converse-stream`` when streaming), the
default base being ``https://bedrock-runtime.{region}.amazonaws.com`` (``deployment.region``, else
``us-east-1``). The model id is percent-encoded as one path segment (``:`` → ``%3A``, ``/`` of an
ARN → ``%2F``). Authentication is a Bedrock API key (``deployment.api_key``) as ``Authorization:
Bearer``, else SigV4 (service ``bedrock``) with the deployment's AWS keys, signed at ``now``.

Body mapping:

* system messages → ``system: [{text}]``; the rest → ``messages`` whose content is a list of blocks;
  consecutive messages of one role are merged (Converse wants user and assistant to alternate).
* A tool result → a ``toolResult`` block holding its text and its images (in the order of its
  ``parts`` when it has them).
* A message's ``cache_point`` → a ``cachePoint`` block after its content (after its own system block
  for a system message), at most four (the last marks kept), for the models Converse caches only
  (``caches_on_request``: Claude from 3.5 Haiku and 3.7 Sonnet on, Nova's text models), since it
  refuses the block for another. Its ``cache_ttl`` → the block's ``ttl`` for Claude 4.5 and later
  (``keeps_an_hour``; the others keep five minutes, and are asked for that). ``cacheWriteInputTokens``
  → ``cache_write_tokens_in``, the ``1h`` entries of ``cacheDetails`` → ``cache_write_1h_tokens_in``,
  ``cacheReadInputTokens`` → ``cached_tokens_in``.
* ``inferenceConfig``: ``maxTokens``, ``temperature``, ``topP``, ``stopSequences`` (at most 2,500, none
  empty, Converse's limits: else ``NotServedHere``; the limit of 4 is the Agents runtime's, not Converse's).
* ``response_format`` ``json_schema`` → ``outputConfig.textFormat`` (``{"type": "json_schema",
  "structure": {"jsonSchema": {"schema": <the schema as JSON text>, "name"}}}``, Converse's structured
  output); ``json_object`` (no schema) has no Converse form and is refused (``NotServedHere``: another
  deployment may serve it) rather than dropped, which would silently answer in prose.
* tools → ``toolConfig.tools[].toolSpec{name, description, inputSchema.json}``; ``tool_choice``
  ``"auto"`` → ``{auto: {}}``, ``"required"`` / ``"any"`` → ``{any: {}}``, a named function →
  ``{tool: {name}}``. Converse has no "none": the tools are then left out.
* A request that sends no ``toolConfig`` (no tools, or ``tool_choice`` "none") while its history holds
  tool calls or results — a conversation that used tools and goes on without them — has them written
  as text (``base.tool_history_as_text``: ``[tool call <id>: <name> <arguments>]`` in the assistant's
  turn, ``[tool result for <id> (<name>)]`` and the result in a user turn), since Converse refuses
  ``toolUse`` and ``toolResult`` blocks without a ``toolConfig`` ("The toolConfig field must be defined
  when using toolUse and toolResult content blocks."). Why not a ``toolConfig`` rebuilt from the names
  the history used: with no "none" to send, the model could call one of those tools in a request whose
  caller offered none, and that call would then have to be refused or dropped after the model spent its
  turn on it; the text keeps the meaning (who called what with which arguments, what came back, the ids
  pairing each result with its call) and lets the model call nothing (docs/providers.md).
* images: ``data:`` URLs → ``{image: {format, source: {bytes}}}`` (png, jpeg, gif, webp); Bedrock
  cannot fetch ``https:`` images, so ``build_request`` refuses them with ``InvalidRequestError``.
* assistant tool calls → ``toolUse{toolUseId, name, input}``; role ``tool`` results →
  ``toolResult{toolUseId, content: [{text}]}`` blocks of a **user** message, with ``status`` —
  ``"error"`` for a failed tool's (``tool_error``), else ``"success"`` — for the models that accept
  that field (Anthropic Claude, Amazon Nova); the others read a failure as "Error:" in the text.
  A ``toolUseId`` must be 1 to 64 of ``[a-zA-Z0-9_-]`` (the API reference): an id another provider
  minted is sent as ``base.safe_tool_id`` maps it, the same in the call and its result.
* Thinking on an Anthropic model (``anthropic.`` in the id) →
  ``additionalModelRequestFields.thinking = {type: "enabled", budget_tokens}``, the budget chosen as
  the Anthropic dialect chooses it (``providers.anthropic.thinking_budget``): the request's
  ``reasoning_budget``, else its ``reasoning_effort`` converted (``providers.effort``), else — with
  ``reasoning`` — ``deployment.options["thinking_budget_tokens"]`` (default 1024); at least 1,024;
  none for effort ``none`` or budget 0. An effort or budget without ``reasoning`` thinks and emits no
  ``reasoning`` events, the signed blocks kept in ``provider_data`` for the tool loop. ``maxTokens``
  goes as given when above the budget, else becomes budget + ``max_tokens`` (or + 1024 when unset).
  Other models that reason (DeepSeek R1…) return ``reasoningContent`` without being asked, and
  Converse has no common knob for how hard they think: ``reasoning_effort`` and ``reasoning_budget``
  are ignored for them.

Decoding: the binary event stream (``gtl_nb.providers.eventstream``) with events ``messageStart``,
``contentBlockStart`` (tool use id and name), ``contentBlockDelta`` (``text`` → ``token``,
``toolUse.input`` fragments assembled per ``contentBlockIndex``, ``reasoningContent.text`` →
``reasoning`` when asked), ``contentBlockStop`` (emits the tool call; ends a reasoning block, when asked,
with a ``reasoning`` event of its ``signature`` or ``redacted`` data), ``messageStop`` (the stop
reason) and ``metadata`` (usage); ``usage`` and ``done`` follow at the end of the body.
Exception frames become ``error`` events; a body that ends before ``messageStop`` and ``metadata``
is a retryable ``PROVIDER_UNAVAILABLE``. Non-streaming Converse JSON is parsed at ``close()``.

``decoder.provider_data`` (after the terminal event) is ``None``, or, when the answer held
reasoning blocks::

    {"bedrock_reasoning": [{"reasoningText": {"text": "...", "signature": "..."}}
                           | {"redactedContent": "<base64>"}, ...]}

and ``build_request`` replays those blocks as ``reasoningContent`` blocks at the start of that
assistant message, as Anthropic models on Bedrock require in tool-use turns with thinking.

Limits: frames are at most 16 MiB (the protocol's own limit), a non-streaming body at most
``MAX_BODY_BYTES``; a frame or body the decoder cannot read (bad CRC, not JSON, too deep, an unexpected
shape) ends the response with a retryable PROVIDER_UNAVAILABLE ``error`` (``GuardedDecoder``). Error
bodies are read from a bounded prefix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from gtl_nb.protocol.errors import ConfigurationError, InvalidRequestError
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Reasoning,
    StreamEvent,
    Token,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.anthropic import thinking_budget
from gtl_nb.providers.base import (
    Deployment,
    GuardedDecoder,
    HttpRequest,
    NotServedHere,
    ProviderNeeds,
    Requirement,
    ToolCallAssembler,
    arguments_object,
    cache_points,
    cache_ttls_in_order,
    calls_no_tool,
    code_for_status,
    ends_response,
    error_boundary,
    error_event,
    header,
    holds_tool_history,
    parse_json_body,
    parse_tool_choice,
    path_segment,
    refuse_empty_turn,
    refuse_one_call_at_most,
    refuse_stop_sequences,
    retry_after_seconds,
    safe_tool_id,
    said_failed,
    schema_asked,
    split_data_url,
    tool_history_as_text,
)
from gtl_nb.providers.eventstream import EventStreamDecoder, EventStreamError, EventStreamMessage
from gtl_nb.providers.limits import (
    MalformedResponseError,
    append_capped,
    error_body_json,
    error_body_text,
    parse_json_object,
)
from gtl_nb.providers.sigv4 import AwsCredentials, sign_headers

DEFAULT_REGION = "us-east-1"
DEFAULT_BASE_URL = "https://bedrock-runtime.{region}.amazonaws.com"
CONTROL_PLANE_URL = "https://bedrock.{region}.amazonaws.com"
SERVICE = "bedrock"
DEFAULT_THINKING_BUDGET = 1024
CONVERSE_MOST_STOPS = 2500
"""Converse's ``inferenceConfig.stopSequences`` holds at most 2,500 (botocore's model, the API reference)."""
PROVIDER_DATA_KEY = "bedrock_reasoning"

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# exception type (header or frame, compared lower-cased) -> (GTL code, retryable)
_EXCEPTIONS: dict[str, tuple[str, bool]] = {
    "validationexception": ("INVALID_REQUEST", False),
    "accessdeniedexception": ("FORBIDDEN", False),
    "unrecognizedclientexception": ("AUTH_FAILED", False),
    "invalidsignatureexception": ("AUTH_FAILED", False),
    "signaturedoesnotmatch": ("AUTH_FAILED", False),
    "incompletesignatureexception": ("AUTH_FAILED", False),
    "missingauthenticationtokenexception": ("AUTH_FAILED", False),
    "expiredtokenexception": ("AUTH_FAILED", False),
    "resourcenotfoundexception": ("MODEL_NOT_FOUND", False),
    "throttlingexception": ("RATE_LIMIT", True),
    "servicequotaexceededexception": ("RATE_LIMIT", False),
    "modeltimeoutexception": ("TIMEOUT", True),
    "serviceunavailableexception": ("OVERLOADED", True),
    "internalserverexception": ("INTERNAL", True),
    "modelerrorexception": ("PROVIDER_UNAVAILABLE", True),
    "modelstreamerrorexception": ("PROVIDER_UNAVAILABLE", True),
    "modelnotreadyexception": ("PROVIDER_UNAVAILABLE", True),
}
_CONTEXT_HINTS = ("too long", "too many tokens", "context length", "context window", "maximum context")


def _region(deployment: Deployment) -> str:
    return deployment.region or DEFAULT_REGION


def _base_url(deployment: Deployment) -> str:
    return (deployment.base_url or DEFAULT_BASE_URL.format(region=_region(deployment))).rstrip("/")


def control_plane_url(deployment: Deployment) -> str:
    """Where ``ListFoundationModels`` is asked: ``options["control_plane_url"]`` when set; else, with no
    ``base_url``, the region's AWS control plane; with a ``base_url`` on AWS (``*.amazonaws.com``,
    ``*.amazonaws.com.cn``, ``*.api.aws``: a FIPS, dual-stack or VPC runtime endpoint) its ``bedrock-runtime``
    host's ``bedrock`` sibling, else the region's control plane; and with any other ``base_url`` — a
    simulator, a proxy, a gateway in front of Bedrock — that same ``base_url``. A runtime endpoint off AWS
    says the control plane is not public AWS either, and the request is signed with the deployment's
    credentials: they never go to an AWS host the operator did not name (the Bedrock simulator serves
    ``/foundation-models`` beside the runtime; a proxy that does not gives a 404 naming the URL)."""
    configured = deployment.options.get("control_plane_url")
    if configured:
        return str(configured).rstrip("/")
    public = CONTROL_PLANE_URL.format(region=_region(deployment))
    if not deployment.base_url:
        return public
    parts = urlsplit(deployment.base_url.strip())
    host = (parts.hostname or "").lower()
    if not host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws")):
        return deployment.base_url.strip().rstrip("/")
    first, dot, rest = host.partition(".")
    if first.startswith("bedrock-runtime"):  # bedrock-runtime[-fips].REGION.amazonaws.com and the like
        return f"https://{first.replace('bedrock-runtime', 'bedrock', 1)}{dot}{rest}"
    return public


def model_path(model: str, *, stream: bool) -> str:
    """``/model/{modelId}/converse[-stream]`` with the model id encoded as one path segment."""
    return f"/model/{path_segment(model)}/{'converse-stream' if stream else 'converse'}"


def _authorize(
    method: str, url: str, headers: dict[str, str], body: bytes, deployment: Deployment, now: float
) -> dict[str, str]:
    if deployment.api_key:
        return {**headers, "Authorization": f"Bearer {deployment.api_key}"}
    if not (deployment.aws_access_key_id and deployment.aws_secret_access_key):
        raise ConfigurationError(
            f"bedrock deployment {deployment.name!r} needs aws_access_key_id and aws_secret_access_key "
            "(SigV4) or api_key (a Bedrock API key)"
        )
    credentials = AwsCredentials(
        deployment.aws_access_key_id, deployment.aws_secret_access_key, deployment.aws_session_token
    )
    return sign_headers(
        method,
        url,
        headers,
        body,
        credentials=credentials,
        region=_region(deployment),
        service=SERVICE,
        now=now,
    )


# ----------------------------------------------------------------------------------------------
# Request body


def _image_block(url: str) -> dict[str, Any]:
    parts = split_data_url(url)
    if parts is None:
        raise NotServedHere(
            "Bedrock Converse accepts only inline images: pass a data: URL (base64) instead of "
            f"{url[:60]!r}; Bedrock does not fetch images from URLs"
        )
    mime, data = parts
    fmt = _IMAGE_FORMATS.get(mime.lower())
    if fmt is None:
        raise NotServedHere(f"Bedrock supports png, jpeg, gif and webp images, not {mime!r}")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _tool_input(call: ToolCall) -> dict[str, Any]:
    try:
        return arguments_object(call)
    except ValueError as exc:
        raise InvalidRequestError(f"tool call {call.id!r} has arguments that are not a JSON object") from exc


def _reasoning_blocks(message: Message) -> list[dict[str, Any]]:
    """The reasoning blocks to replay, rebuilt from their fields (``provider_data`` may come from a
    client: only reasoning text with its signature, and redacted content, are sent on its say-so)."""
    blocks = (message.provider_data or {}).get(PROVIDER_DATA_KEY)
    replayed: list[dict[str, Any]] = []
    for block in blocks if isinstance(blocks, list) else ():
        reasoning = block.get("reasoningText") if isinstance(block, dict) else None
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
            text = {"text": reasoning["text"]}
            if isinstance(reasoning.get("signature"), str):
                text["signature"] = reasoning["signature"]
            replayed.append({"reasoningContent": {"reasoningText": text}})
        elif isinstance(block, dict) and isinstance(block.get("redactedContent"), str):
            replayed.append({"reasoningContent": {"redactedContent": block["redactedContent"]}})
    return replayed


def _supports_tool_status(model: str) -> bool:
    """``toolResult.status`` is accepted only by Anthropic Claude and Amazon Nova models (API reference)."""
    return "anthropic." in model or "amazon.nova" in model


def _content_blocks(message: Message, model: str) -> list[dict[str, Any]]:
    if message.role == "tool":
        status = _supports_tool_status(model)
        # a failed tool's result says so in its status, or in its text for a model that takes none
        content = _tool_result_content(message, error_text=message.tool_error and not status)
        result: dict[str, Any] = {"toolUseId": safe_tool_id(message.tool_call_id or ""), "content": content}
        if status:
            result["status"] = "error" if message.tool_error else "success"
        return [{"toolResult": result}]
    blocks: list[dict[str, Any]] = []
    if message.role == "assistant":
        blocks.extend(_reasoning_blocks(message))
    blocks.extend(_text_and_images(message))
    if message.role == "assistant":
        for call in message.tool_calls:
            use = {"toolUseId": safe_tool_id(call.id), "name": call.name, "input": _tool_input(call)}
            blocks.append({"toolUse": use})
    return blocks


def _tool_result_content(message: Message, *, error_text: bool = False) -> list[dict[str, Any]]:
    """A tool result's content: its text and its images (``_text_and_images``), an empty text at least;
    with ``error_text``, a failed tool's text says so (``said_failed``: the model takes no status)."""
    blocks = _text_and_images(message) or [{"text": message.content or ""}]
    if error_text:
        first = next((block for block in blocks if "text" in block), None)
        if first is None:
            blocks.insert(0, {"text": said_failed("")})
        else:
            first["text"] = said_failed(first["text"])
    return blocks


def _text_and_images(message: Message) -> list[dict[str, Any]]:
    """A message's text and image blocks: in the order of its ``parts``, else the text, then the images."""
    ordered = message.in_order()
    if ordered is not None:
        return [_image_block(value) if kind == "image" else {"text": value} for kind, value in ordered]
    blocks = [{"text": message.content}] if message.content else []
    return blocks + [_image_block(url) for url in message.images]


def _messages(messages: list[Message], model: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(system blocks, messages)``; tool results become user blocks, same-role turns are merged; a
    ``cachePoint`` block after each message ``cache_points`` keeps, for a model Converse caches
    (``caches_on_request``)."""
    points = cache_points(messages) if caches_on_request(model) else frozenset()
    hour = keeps_an_hour(model)
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if message.role == "system":
            if message.content:
                system.append({"text": message.content})
                if index in points:
                    system.append(_cache_point(message, hour))
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _content_blocks(message, model)
        if not blocks:
            refuse_empty_turn(message, index, "Bedrock's Converse")
            continue
        if index in points:  # (cache_points keeps no message of reasoning blocks alone)
            blocks.append(_cache_point(message, hour))
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    if hour and points:  # in the order Converse reads them: the system's cache points, then the turns'
        blocks = system + [block for turn in out for block in turn["content"]]
        cache_ttls_in_order([block["cachePoint"].get("ttl") for block in blocks if "cachePoint" in block])
    return system, out


def _cache_point(message: Message, hour: bool) -> dict[str, Any]:
    """A ``cachePoint`` block: the five-minute cache (Converse's default), or the message's
    ``cache_ttl`` on a model that keeps a cache for an hour (another has the five-minute one only)."""
    if hour and message.cache_ttl:
        return {"cachePoint": {"type": "default", "ttl": message.cache_ttl}}
    return {"cachePoint": {"type": "default"}}


# a Claude generation in a model id: "claude-sonnet-4-5-20250929" → 4, 5; "claude-opus-5-v1" → 5, 0
# ("claude-sonnet-4-20250514" → 4, 0: a date is no minor version)
_CLAUDE_VERSION = re.compile(r"claude-(?:sonnet|haiku|opus)-(\d{1,2})(?:-(\d{1,2}))?(?!\d)")


def keeps_an_hour(model: str) -> bool:
    """Whether Converse takes a ``cachePoint`` ``ttl`` of one hour for ``model``: Claude 4.5 and later
    (API reference, CachePointBlock); the others cache for five minutes only."""
    found = _CLAUDE_VERSION.search(model) if _is_anthropic(model) else None
    return found is not None and (int(found.group(1)), int(found.group(2) or 0)) >= (4, 5)


_UNCACHED_CLAUDE = (
    "claude-instant",
    "claude-v2",
    "claude-3-haiku",
    "claude-3-sonnet",
    "claude-3-opus",
    "claude-3-5-sonnet",
)
"""The Claude models Converse has no prompt cache for (the older ones; every later one has)."""
_CACHED_NOVA = ("amazon.nova-micro", "amazon.nova-lite", "amazon.nova-pro", "amazon.nova-premier", "amazon.nova-2")
"""Amazon's Nova text models, which Converse caches (not its image, video and speech models)."""


def caches_on_request(model: str) -> bool:
    """Whether Converse takes ``cachePoint`` blocks for ``model`` (an id, a cross-Region profile or a
    foundation-model ARN): Claude from 3.5 Haiku and 3.7 Sonnet on, and Nova's text models. Another
    model — an application inference profile's ARN too, which names none — would refuse the block:
    its prompt is sent unmarked."""
    if _is_anthropic(model):
        return not any(old in model for old in _UNCACHED_CLAUDE)
    return any(nova in model for nova in _CACHED_NOVA)


def _tool_choice(tool_choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """GTL ``tool_choice`` → Converse ``toolChoice`` (``none`` is handled by leaving tools out)."""
    parsed = parse_tool_choice(tool_choice)
    if parsed is None or parsed.mode == "none":
        return None
    if parsed.mode == "tool":
        return {"tool": {"name": parsed.name}}
    return {"any": {}} if parsed.mode == "required" else {"auto": {}}


def offers_tools(request: CompletionRequest) -> bool:
    """Whether ``request`` is sent a ``toolConfig``: it has tools and a ``tool_choice`` other than "none"
    (Converse has no "none": the tools are left out)."""
    return bool(request.tools) and not calls_no_tool(request.tool_choice)


def _tool_config(request: CompletionRequest) -> dict[str, Any] | None:
    if not offers_tools(request):
        return None
    refuse_one_call_at_most(request, "Bedrock's Converse")
    tools = []
    for tool in request.tools:
        spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": tool.parameters}}
        if tool.description:  # Bedrock rejects an empty description
            spec["description"] = tool.description
        tools.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": tools}
    choice = _tool_choice(request.tool_choice)
    if choice is not None:
        config["toolChoice"] = choice
    return config


def _is_anthropic(model: str) -> bool:
    return "anthropic." in model


def build_body(request: CompletionRequest, deployment: Deployment) -> dict[str, Any]:
    """The Converse JSON body for ``request``."""
    output_config = _output_config(request.response_format)
    history = request.messages
    if not offers_tools(request) and holds_tool_history(history):
        history = tool_history_as_text(history)  # Converse refuses tool blocks without a toolConfig
    system, messages = _messages(history, request.model)
    inference: dict[str, Any] = {}
    if request.max_tokens is not None:
        inference["maxTokens"] = request.max_tokens
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    if request.stop:
        # Converse's InferenceConfiguration: at most 2,500, each at least one character
        refuse_stop_sequences(request, "Bedrock's Converse", most=CONVERSE_MOST_STOPS, takes_empty=False)
        inference["stopSequences"] = list(request.stop)
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    tool_config = _tool_config(request)
    budget = 0
    if _is_anthropic(request.model):
        budget = thinking_budget(request, deployment.options, DEFAULT_THINKING_BUDGET, "bedrock")
    if budget:
        body["additionalModelRequestFields"] = {"thinking": {"type": "enabled", "budget_tokens": budget}}
        if request.max_tokens is None or request.max_tokens <= budget:
            inference["maxTokens"] = budget + (request.max_tokens or 1024)  # thinking counts in max tokens
    body["inferenceConfig"] = inference
    if tool_config is not None:
        body["toolConfig"] = tool_config
    if output_config is not None:
        body["outputConfig"] = output_config
    return body


def _output_config(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``outputConfig`` for an OpenAI-shaped ``response_format`` (module docstring)."""
    asked = schema_asked(response_format, "Bedrock's Converse")
    if asked is None:
        return None
    schema, name = asked
    definition: dict[str, Any] = {"schema": json.dumps(schema, separators=(",", ":"))}
    if name:
        definition["name"] = name
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


# ----------------------------------------------------------------------------------------------
# Response decoding


def _block_index(payload: dict[str, Any]) -> int:
    """A frame's ``contentBlockIndex`` (0 when absent); ``MalformedResponseError`` when it is no integer."""
    index = payload.get("contentBlockIndex", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise MalformedResponseError(f"malformed Bedrock event: contentBlockIndex {str(index)[:40]!r} is no integer")
    return index


def _usage(sid: str, usage: Any) -> Usage:
    """Bedrock ``usage`` → GTL: input includes cache reads and writes (wire-formats.md §7)."""
    usage = usage if isinstance(usage, dict) else {}

    def count(key: str) -> int | None:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    tokens_in = count("inputTokens")
    cache_read, cache_write = count("cacheReadInputTokens"), count("cacheWriteInputTokens")
    if tokens_in is not None:
        tokens_in += (cache_read or 0) + (cache_write or 0)
    details = usage.get("cacheDetails")  # the writes by ttl: [{"ttl": "1h", "inputTokens": n}, ...]
    hour = sum(
        detail["inputTokens"]
        for detail in (details if isinstance(details, list) else ())
        if isinstance(detail, dict) and detail.get("ttl") == "1h" and _is_count(detail.get("inputTokens"))
    )
    return Usage(
        session_id=sid,
        tokens_in=tokens_in,
        tokens_out=count("outputTokens"),
        cached_tokens_in=cache_read,
        cache_write_tokens_in=cache_write,
        cache_write_1h_tokens_in=hour or None,
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _error_text(payload: bytes) -> str:
    """The message of an exception payload or error body (only a bounded prefix is read)."""
    parsed = error_body_json(payload)
    if isinstance(parsed, dict):
        message = parsed.get("message") or parsed.get("Message")
        if message:
            return str(message)
    return error_body_text(payload)


class _ReasoningBlock:
    """One reasoning block being streamed: its text, signature or redacted bytes."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.signature = ""
        self.redacted = ""

    def as_block(self) -> dict[str, Any]:
        if self.redacted and not self.text:
            return {"redactedContent": self.redacted}
        block: dict[str, Any] = {"text": "".join(self.text)}
        if self.signature:
            block["signature"] = self.signature
        return {"reasoningText": block}


class BedrockDecoder(GuardedDecoder):
    """Decodes one ConverseStream event stream, or one Converse JSON body at close."""

    def __init__(self, request: CompletionRequest, deployment: Deployment) -> None:
        super().__init__(request, deployment)
        self._sid = request.session_id
        self._frames = EventStreamDecoder()
        self._buffer = bytearray()  # non-streaming body
        self._tools = ToolCallAssembler()
        self._tool_blocks: set[int] = set()
        self._reasoning: dict[int, _ReasoningBlock] = {}
        self._stop_reason: str | None = None
        self._usage: Any = None
        self._saw_metadata = False
        self._tool_count = 0
        self._finished = False

    @property
    def provider_data(self) -> dict[str, Any] | None:
        """Reasoning blocks to replay (see the module docstring), or ``None``."""
        if not self._reasoning:
            return None
        return {PROVIDER_DATA_KEY: [self._reasoning[i].as_block() for i in sorted(self._reasoning)]}

    def _feed(self, chunk: bytes) -> list[StreamEvent]:
        if self._finished:
            return []
        if not self._request.stream:
            append_capped(self._buffer, chunk)
            return []
        failure: EventStreamError | None = None
        try:
            frames = self._frames.feed(chunk)
        except EventStreamError as exc:
            frames, failure = exc.frames, exc  # the frames before the bad one still count
        events = self._each(frames, self._frame)
        if self._finished or ends_response(events):
            return events
        if failure is not None:
            events.append(
                self._error("PROVIDER_UNAVAILABLE", f"malformed Bedrock event stream: {failure}", retryable=True)
            )
        return events

    def _close(self) -> list[StreamEvent]:
        if self._finished:
            return []
        if not self._request.stream:
            return self._converse(bytes(self._buffer))
        try:
            self._frames.close()
        except EventStreamError as exc:
            self.ended_early = True
            return [self._error("PROVIDER_UNAVAILABLE", f"Bedrock stream ended early: {exc}", retryable=True)]
        if self._stop_reason is None or not self._saw_metadata:
            self.ended_early = True
            missing = "messageStop" if self._stop_reason is None else "metadata"
            return [
                self._error("PROVIDER_UNAVAILABLE", f"Bedrock stream ended early, before {missing}", retryable=True)
            ]
        return self._finish(self._usage)

    # -- streaming ------------------------------------------------------------------------------

    def _frame(self, frame: EventStreamMessage) -> list[StreamEvent]:
        if self._finished:
            return []
        kind = frame.header(":message-type")
        if kind == "exception":
            name = str(frame.header(":exception-type") or "exception")
            return [self._exception(name, _error_text(frame.payload))]  # inside the 200
        if kind == "error":
            text = str(frame.header(":error-message") or frame.header(":error-code") or "event-stream error")
            return [self._error("INTERNAL", f"Bedrock stream error: {text}", retryable=True)]
        payload = parse_json_object(frame.payload, "malformed Bedrock event payload")
        event = frame.header(":event-type")
        if event == "contentBlockStart":
            start = payload.get("start") or {}
            tool = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(tool, dict):
                index = _block_index(payload)
                self._tool_blocks.add(index)
                self._tools.start(index, tool.get("toolUseId"), tool.get("name"))
        elif event == "contentBlockDelta":
            delta = payload.get("delta")
            return self._delta(_block_index(payload), delta if isinstance(delta, dict) else {})
        elif event == "contentBlockStop":
            return self._block_stop(_block_index(payload))
        elif event == "messageStop":
            self._stop_reason = str(payload.get("stopReason") or "end_turn")
            return [self._tool_event(call) for call in self._tools.pop_all()]
        elif event == "metadata":
            self._saw_metadata = True
            self._usage = payload.get("usage")
        return []  # messageStart and unknown events carry nothing to emit

    def _delta(self, index: int, delta: dict[str, Any]) -> list[StreamEvent]:
        if isinstance(delta.get("text"), str) and delta["text"]:
            return [Token(session_id=self._sid, text=delta["text"])]
        tool = delta.get("toolUse")
        if isinstance(tool, dict):
            self._tool_blocks.add(index)
            fragment = tool.get("input")
            self._tools.add(index, fragment if isinstance(fragment, str) else json.dumps(fragment))
            return []
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict):
            block = self._reasoning.setdefault(index, _ReasoningBlock())
            text = reasoning.get("text")
            if isinstance(reasoning.get("signature"), str):
                block.signature += reasoning["signature"]
            if isinstance(reasoning.get("redactedContent"), str):
                block.redacted += reasoning["redactedContent"]
            if isinstance(text, str) and text:
                block.text.append(text)
                if self._request.reasoning:
                    return [Reasoning(session_id=self._sid, text=text)]
        return []

    def _block_stop(self, index: int) -> list[StreamEvent]:
        if index in self._reasoning:
            return self._reasoning_end(self._reasoning[index])
        if index not in self._tool_blocks:
            return []
        self._tool_blocks.discard(index)
        call = self._tools.pop(index)
        return [self._tool_event(call)] if call is not None else []

    def _reasoning_end(self, block: _ReasoningBlock) -> list[StreamEvent]:
        """A streamed reasoning block's end, marked as GTL's ``reasoning`` marks it: its signature, or its
        redacted data (nothing when the request asked for no reasoning, or the block has neither)."""
        if not self._request.reasoning:
            return []
        if block.redacted and not block.text:
            return [Reasoning(session_id=self._sid, text="", redacted=block.redacted)]
        if block.signature:
            return [Reasoning(session_id=self._sid, text="", signature=block.signature)]
        return []

    # -- common ---------------------------------------------------------------------------------

    def _tool_event(self, call: ToolCall) -> ToolCallEvent:
        self._tool_count += 1
        return ToolCallEvent(session_id=self._sid, function=call)

    def _finish(self, usage: Any) -> list[StreamEvent]:
        self._finished = True
        reason = _FINISH_REASONS.get(self._stop_reason or "end_turn", "other")
        return [
            _usage(self._sid, usage),
            Done(
                session_id=self._sid,
                finish_reason=reason,  # type: ignore[arg-type]
                provider=self._deployment.name,
                model=self._request.model,
                stop_sequence=self._stop_sequence(),
            ),
        ]

    def _stop_sequence(self) -> str | None:
        """Which stop sequence ended the answer: Converse does not say, but a request with one has no other."""
        stop = self._request.stop or []
        return stop[0] if self._stop_reason == "stop_sequence" and len(stop) == 1 else None

    def _exception(self, name: str, message: str) -> Error:
        code, retryable = _EXCEPTIONS.get(name.lower(), ("INTERNAL", True))
        if code == "INVALID_REQUEST":
            code = _refine_validation(message)
        return self._error(code, f"{name}: {message}" if message else name, retryable=retryable)

    def _error(self, code: str, message: str, *, retryable: bool | None = None) -> Error:
        self._finished = True
        return error_event(self._request, self._deployment, code, message, retryable=retryable, http_status=200)

    # -- non-streaming --------------------------------------------------------------------------

    def _converse(self, body: bytes) -> list[StreamEvent]:
        """A non-streaming Converse body as events."""
        parsed = parse_json_body(body)
        if not isinstance(parsed, dict):
            return [self._error("PROVIDER_UNAVAILABLE", "malformed Bedrock Converse response: not a JSON object")]
        output = parsed.get("output") if isinstance(parsed.get("output"), dict) else {}
        message = output.get("message") if isinstance(output.get("message"), dict) else {}
        events: list[StreamEvent] = []
        text: list[str] = []
        calls: list[StreamEvent] = []
        content = message.get("content")
        for index, block in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                text.append(block["text"])
            elif isinstance(block.get("toolUse"), dict):
                tool = block["toolUse"]
                arguments = tool.get("input")
                args_text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
                call = ToolCall(
                    id=str(tool.get("toolUseId") or f"call_{index}"),
                    name=str(tool.get("name") or ""),
                    arguments=args_text if args_text.strip() else "{}",
                )
                calls.append(self._tool_event(call))
            elif isinstance(block.get("reasoningContent"), dict):
                events.extend(self._reasoning_block(index, block["reasoningContent"]))
        if "".join(text):
            events.append(Token(session_id=self._sid, text="".join(text)))
        events.extend(calls)
        self._stop_reason = str(parsed.get("stopReason") or "end_turn")
        return events + self._finish(parsed.get("usage"))

    def _reasoning_block(self, index: int, content: dict[str, Any]) -> list[StreamEvent]:
        block = self._reasoning.setdefault(index, _ReasoningBlock())
        reasoning_text = content.get("reasoningText")
        if isinstance(content.get("redactedContent"), str):
            block.redacted = content["redactedContent"]
        if isinstance(reasoning_text, dict):
            block.signature = str(reasoning_text.get("signature") or "")
            text = str(reasoning_text.get("text") or "")
            if text:
                block.text.append(text)
                if self._request.reasoning:
                    return [Reasoning(session_id=self._sid, text=text)]
        return []


def _refine_validation(message: str) -> str:
    """A ValidationException's GTL code, read from its message."""
    lowered = message.lower()
    if "model identifier is invalid" in lowered or ("model id" in lowered and "invalid" in lowered):
        return "MODEL_NOT_FOUND"
    if any(hint in lowered for hint in _CONTEXT_HINTS):
        return "CONTEXT_LENGTH_EXCEEDED"
    return "INVALID_REQUEST"


def _error_type(headers: Mapping[str, str], body: Any) -> str | None:
    """The exception name: ``x-amzn-ErrorType`` (``Name:http://…``) or the body's ``__type``."""
    value = header(headers, "x-amzn-errortype")
    if value:
        return value.split(":", 1)[0].strip() or None
    if isinstance(body, dict) and isinstance(body.get("__type"), str):
        return body["__type"].rsplit("#", 1)[-1] or None
    return None


# ----------------------------------------------------------------------------------------------
# Dialect


class BedrockDialect:
    """The ``bedrock`` HTTP dialect (see the module docstring)."""

    name: ClassVar[str] = "bedrock"
    needs: ClassVar[ProviderNeeds] = ProviderNeeds(
        env={"api_key": ("AWS_BEARER_TOKEN_BEDROCK",), "region": ("AWS_REGION", "AWS_DEFAULT_REGION")},
        requires=(
            Requirement(
                "credentials",
                (("api_key",), ("aws_access_key_id", "aws_secret_access_key")),
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with keys in ~/.aws/credentials, "
                "or AWS_BEARER_TOKEN_BEDROCK), or aws_access_key_id and aws_secret_access_key in {where}",
            ),
            Requirement("region", (("region",),)),
        ),
        implied_by=(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_BEARER_TOKEN_BEDROCK",), ("AWS_PROFILE",)),
    )

    def build_request(self, request: CompletionRequest, deployment: Deployment, *, now: float) -> HttpRequest:
        url = _base_url(deployment) + model_path(request.model, stream=request.stream)
        body = json.dumps(build_body(request, deployment), ensure_ascii=False).encode("utf-8")
        accept = "application/vnd.amazon.eventstream" if request.stream else "application/json"
        headers = {"Content-Type": "application/json", "Accept": accept, **deployment.headers}
        return HttpRequest(
            method="POST",
            url=url,
            headers=_authorize("POST", url, headers, body, deployment, now),
            body=body,
            stream=request.stream,
        )

    def response_decoder(self, request: CompletionRequest, deployment: Deployment) -> BedrockDecoder:
        return BedrockDecoder(request, deployment)

    @error_boundary
    def decode_error(
        self,
        request: CompletionRequest,
        deployment: Deployment,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Error:
        parsed = error_body_json(body)  # only a bounded prefix of the body is read
        message = _error_text(body) or f"HTTP {status}"
        name = _error_type(headers, parsed)
        if name and name.lower() in _EXCEPTIONS:
            code, retryable = _EXCEPTIONS[name.lower()]
        else:
            code = code_for_status(status)
            retryable = status in (408, 424, 429) or status >= 500
        if code == "INVALID_REQUEST":
            code = _refine_validation(message)
        if name:
            message = f"{name}: {message}"
        return error_event(
            request,
            deployment,
            code,
            message,
            retryable=retryable,
            retry_after=retry_after_seconds(headers, message=message),
            http_status=status,
        )

    def models_request(self, deployment: Deployment, *, now: float) -> HttpRequest:
        """``GET /foundation-models`` on the control plane (``control_plane_url``)."""
        url = control_plane_url(deployment) + "/foundation-models"
        headers = {"Accept": "application/json", **deployment.headers}
        return HttpRequest(
            method="GET", url=url, headers=_authorize("GET", url, headers, b"", deployment, now), stream=False
        )

    def parse_models(self, body: bytes) -> list[str]:
        """Model ids from ``ListFoundationModels`` (``modelSummaries[].modelId``)."""
        parsed = parse_json_body(body)
        summaries = parsed.get("modelSummaries") if isinstance(parsed, dict) else None
        return [str(s["modelId"]) for s in summaries or [] if isinstance(s, dict) and s.get("modelId")]
