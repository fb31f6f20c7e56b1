"""An Anthropic Messages request body → a GTL ``CompletionRequest`` (the reverse of the client dialect).

Mapping (docs/gateway.md, "OpenAI- and Anthropic-compatible endpoints"):

* ``model`` is GTL's model string as is; ``max_tokens`` is required, as Anthropic requires it (at
  most 2**31 - 1; the engine holds it to the model's own limit).
* ``system`` (a string, or ``text`` blocks joined with blank lines) → one leading ``system`` message.
* ``messages``: content is a string or blocks. In a ``user`` turn, ``text`` blocks and ``image``
  blocks (``base64`` sources → ``data:`` URLs, ``url`` sources → the URL, ``https:`` only) make one user message
  (several blocks keep their order in GTL's ``parts``, so an Anthropic deployment gets the same
  blocks, adjacent text blocks too; its ``content`` is their texts joined with newlines, for a
  reader without parts), and each ``tool_result`` (``tool_use_id``; string or text/image content,
  its blocks kept the same way) becomes a GTL tool result placed before it, in order;
  ``is_error: true`` → its ``tool_error`` (a deployment without such a flag reads "Error:" before
  the text: ``providers.base.tool_result_text``). In an ``assistant`` turn, ``text`` blocks → the
  content (joined as the answer's tokens are, without a separator) and ``tool_use`` blocks
  (``input`` object) → GTL tool calls.
  ``thinking`` and ``redacted_thinking`` blocks → that turn's replay state (GTL's ``provider_data``,
  ``compat.thinking``), which the deployment that signed them gets back. Documents, server-tool and
  other blocks are refused (400).
* ``thinking`` (``enabled``, ``adaptive``, ``between_tools``) → GTL's ``reasoning``, checked as
  Anthropic checks it (``compat.thinking``); an enabled one's ``budget_tokens`` → GTL's
  ``reasoning_budget``, so the deployment thinks as much as the caller said and ``max_tokens`` (which
  must exceed the budget) reaches Claude as sent.
* ``tools`` (custom tools: ``name``, ``description``, ``input_schema``; server tools are refused, and
  so are the MCP connector's ``mcp_servers``, tools the provider would call itself),
  ``tool_choice`` (``auto`` → ``auto``, ``any`` → ``required``, ``tool`` → that tool, ``none`` →
  ``none``; ``disable_parallel_tool_use: true`` → GTL's ``"parallel": false``), ``temperature``,
  ``top_p``, ``stop_sequences`` and ``stream`` pass through (a stop sequence that is empty or whitespace
  only is refused, in Anthropic's words).
* ``output_config.format`` (structured outputs: ``{"type": "json_schema", "schema": …}``, or the
  beta's top-level ``output_format``) → GTL's ``response_format`` ``json_schema``, which every
  deployment type that has structured output honours (and the others refuse, rather than answer in
  prose). ``output_config.effort`` (``low``, ``medium``, ``high``, ``xhigh``, ``max``; anything else
  refused in Anthropic's words) → GTL's ``reasoning_effort`` when ``thinking`` is on (``enabled``
  without a budget of its own, ``adaptive``): the deployment thinks that hard, whether it is Claude (a
  budget: docs/providers.md, "How hard a model thinks") or another provider. Without ``thinking``, or
  with it ``disabled``, the effort is accepted and changes nothing: Anthropic's effort tunes the whole
  answer and never turns thinking on, and GTL's is only how hard to think.
* ``cache_control`` on a block → GTL's ``cache_point`` on the message that ends with that block
  (``compat.cache_marks``: the system prompt or a user turn's text and images are split after a marked
  block, so the breakpoint stays where it was put; a tool result is a message of its own; an
  assistant turn is marked whole); the request's own top-level ``cache_control`` (Anthropic's
  automatic caching) → on the last message. A marker other than ``{"type": "ephemeral"}`` is refused
  (400). A marker's ``ttl`` (``"5m"`` or ``"1h"``) is GTL's ``cache_ttl``; a message several markers
  fall on keeps the longest-lived. One on a tool definition is accepted and ignored.
* ``thread``, ``compaction`` and ``fallbacks`` (Anthropic's server-side state, summaries and fallback models)
  are refused (400) unless null: ignored, they would change what the answer is an answer to.
* ``IGNORED`` (``top_k``, ``metadata``, ``service_tier``, ``context_management``…) is
  accepted and ignored: each tunes, labels or bills the call (Claude Code sends ``context_management``
  with every request), and none changes what the answer must be.
* ``count_request`` reads the body of ``POST /v1/messages/count_tokens`` the same way: its fields
  (``COUNTED``) only — ``max_tokens``, ``stream``, ``temperature``… are "Extra inputs are not permitted",
  as Anthropic's counting endpoint says — and no ``max_tokens`` in the request it makes.
* Any other field is refused (400) as Anthropic refuses it — "max_token: Extra inputs are not
  permitted" — with the field it is a near miss of; GTL's own request fields (``providers``…, what
  ``extra_body`` would carry) are refused saying where they go. So is a key the API does not define in
  a content block (and an image's ``source``), a system block, a tool, ``tool_choice``,
  ``output_config`` and its ``format`` (or ``output_format``), named by its path
  (``messages.0.content.1.cache_contrl: Extra inputs are not permitted``), as Anthropic refuses extra
  inputs at every level; the keys of its SDK's request types (beta ones too) are all accepted.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gtl_nb.gateway.compat import fields
from gtl_nb.gateway.compat.cache_marks import as_fields, longest, mark_of, marked, split_at_marks
from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.gateway.compat.thinking import budget_asked, reasoning_asked, replayed_state
from gtl_nb.protocol.limits import MAX_MESSAGES, MAX_PARTS, MAX_STOP_SEQUENCES, MAX_TOOLS
from gtl_nb.protocol.messages import MAX_NAME_LENGTH, MAX_TOKENS_LIMIT, CompletionRequest, Message, Tool, ToolCall
from gtl_nb.providers.base import limited_to_one_call

__all__ = ["COUNTED", "IGNORED", "MAPPED", "REFUSED", "count_request", "messages_request"]

_CHOICES = {"auto": "auto", "any": "required", "none": "none"}

MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "output_config",
        "output_format",
        "cache_control",
        "thinking",
    }
)
"""The Messages fields that reach the GTL request."""
REFUSED = frozenset({"mcp_servers", "thread", "compaction", "fallbacks"})
"""The fields refused when they ask what GTL cannot give (MCP servers the provider would call itself)."""
IGNORED = frozenset(
    {
        "top_k",
        "metadata",
        "service_tier",
        "inference_geo",
        "speed",
        "container",  # the code-execution tool's container: server tools are refused anyway
        "context_management",
        "diagnostics",
        "user_profile_id",
        "workspace_id",
        "billing_policy",
        "fallback_credit_token",
    }
)
"""The fields accepted and ignored: each tunes, labels or bills the call; the answer is still the answer."""
_KNOWN = MAPPED | REFUSED | IGNORED
_SERVER_SIDE = {
    "thread": "server-held conversation state is not kept by this gateway: send the whole conversation in messages",
    "compaction": "compaction requests are not served by this gateway: send the conversation as it is",
    "fallbacks": "server-side fallback models are not tried by this gateway: name the model to answer",
}
"""Fields of Anthropic's own server-side features, refused unless null: ignored, the model would see only the
new turn (``thread``), answer instead of summarising (``compaction``), or decline where a fallback would
answer (``fallbacks``)."""
_GTL_FIELDS = frozenset({"providers", "provider", "session_id", "reasoning", "cache", "type"})
"""GTL's own request fields, which a caller of the Anthropic SDK might send in ``extra_body``."""

# The keys each nested object the endpoint reads may have: the Messages API's own (its SDK's request
# types, beta ones too), so a key the API takes is never refused. ``citations`` and ``caller`` come
# back in answers, which a client replays as they came.
_BLOCK_KEYS = {
    "text": frozenset({"type", "text", "cache_control", "citations"}),
    "image": frozenset({"type", "source", "cache_control", "transformations"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control", "caller", "toolset_name"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control", "toolset_name"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
}
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
"""The ``media_type`` of a base64 image source the Messages API takes."""
_SOURCE_KEYS = {"base64": frozenset({"type", "media_type", "data"}), "url": frozenset({"type", "url"})}
_TOOL_KEYS = frozenset(
    {
        "type",
        "name",
        "description",
        "input_schema",
        "cache_control",
        "strict",
        "input_examples",
        "defer_loading",
        "allowed_callers",
        "eager_input_streaming",
    }
)
_CHOICE_KEYS = {
    # (``none`` with the flag the other kinds take: the SDK's type has not it, but a client that sets it on
    # every choice was answered before this check existed, and what it asks is already so)
    "none": frozenset({"type", "disable_parallel_tool_use"}),
    "auto": frozenset({"type", "disable_parallel_tool_use"}),
    "any": frozenset({"type", "disable_parallel_tool_use"}),
    "tool": frozenset({"type", "name", "disable_parallel_tool_use"}),
}
_OUTPUT_CONFIG_KEYS = frozenset({"format", "effort", "task_budget"})
_FORMAT_KEYS = frozenset({"type", "schema"})


def _only(value: dict[str, Any], known: frozenset[str], where: str) -> None:
    """``FieldError`` for a key of the nested object ``value`` (at ``where``) the API has not, named by
    its path as Anthropic names it: ``messages.0.content.1.cache_contrl: Extra inputs are not permitted``."""
    extra = fields.unknown_key(value, known)
    if extra is not None:
        key, close = extra
        said = "Extra inputs are not permitted"
        raise FieldError(f"{where}.{key}", f"{said}; did you mean {close}?" if close else said)


def unknown_field(body: dict[str, Any], known: frozenset[str] = _KNOWN) -> None:
    """``FieldError`` for the first field of ``body`` that Messages has not (a slip such as
    ``max_token``, ignored, would silently change the answer), worded as Anthropic words it; ``known``:
    the fields of the endpoint asked (``COUNTED`` for token counting)."""
    for key in body:
        if key in known:
            continue
        name = key[:100]
        if key in _GTL_FIELDS:
            raise FieldError(
                name,
                "Extra inputs are not permitted: a GTL request field, which this endpoint does not take; here "
                'the model string chooses the deployment ("deployment:model") or the gateway routes a bare '
                "model, and a failover list (providers) is taken by POST /v1/gtl and gtl_nb.connect()",
            )
        close = fields.did_you_mean(key, known)
        said = "Extra inputs are not permitted"  # Anthropic's words
        raise FieldError(name, f"{said}; did you mean {close}?" if close else said)


def messages_request(body: dict[str, Any], session_id: str) -> CompletionRequest:
    """The GTL request of a Messages body; ``FieldError`` names the first parameter that is wrong."""
    unknown_field(body)
    model = fields.text(body, "model", "model", required=True, max_length=MAX_NAME_LENGTH)
    raw_messages = fields.items(body, "messages", "messages", required=True)
    max_tokens = fields.integer(body, "max_tokens", "max_tokens", required=True, most=MAX_TOKENS_LIMIT)
    assert model is not None and raw_messages is not None
    if not model:
        raise FieldError("model", "the model must not be empty")
    if not raw_messages:  # as Anthropic answers: at least one user turn
        raise FieldError("messages", "expected at least one message")
    fields.at_most(raw_messages, "messages", MAX_MESSAGES, "messages")
    raw_tools = fields.items(body, "tools", "tools")
    if raw_tools:
        fields.at_most(raw_tools, "tools", MAX_TOOLS, "tools")
    messages = _system(body.get("system"))
    for index, raw in enumerate(raw_messages):
        messages.extend(_turn(raw, f"messages.{index}"))
    automatic = marked(body, "")
    if automatic and messages:  # automatic caching: the breakpoint goes on the last block
        messages[-1] = msgspec.structs.replace(messages[-1], **as_fields(longest([automatic, mark_of(messages[-1])])))
    if fields.items(body, "mcp_servers", "mcp_servers"):
        # the MCP connector's tools run at Anthropic; ignored, the model would answer without them
        raise FieldError("mcp_servers", "server-side MCP tools are not supported; declare custom tools instead")
    for name, why in _SERVER_SIDE.items():  # each would change the answer, or what it is an answer to
        if body.get(name) not in (None, []):  # (no fallbacks listed: none to try)
            raise FieldError(name, why)
    stop = _stop_sequences(fields.items(body, "stop_sequences", "stop_sequences"))
    thinks = reasoning_asked(body, max_tokens)
    return CompletionRequest(
        session_id=session_id,
        model=model,
        messages=messages,
        stream=bool(fields.boolean(body, "stream", "stream")),
        max_tokens=max_tokens,
        temperature=fields.number(body, "temperature", "temperature", within=(0.0, 1.0)),  # Anthropic's own range
        top_p=fields.number(body, "top_p", "top_p", within=(0.0, 1.0)),
        stop=list(stop) if stop else None,
        tools=_tools(raw_tools),
        tool_choice=_tool_choice(fields.obj(body, "tool_choice", "tool_choice")),
        response_format=_response_format(body),
        reasoning=thinks,
        reasoning_budget=budget_asked(body),
        reasoning_effort=_effort(body, thinks),
    )


COUNTED = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "output_format",
        "cache_control",
        "mcp_servers",  # refused as the Messages endpoint refuses them (beta)
        "compaction",  # (beta) likewise, unless null
        "speed",  # ignored: how fast the answer comes changes no prompt
        "context_management",  # ignored, as on the Messages endpoint (beta)
        "billing_policy",  # ignored, as on the Messages endpoint (beta)
    }
)
"""The fields ``POST /v1/messages/count_tokens`` takes (its SDK's ``MessageCountTokensParams``, the beta's
too). Any other is refused as Anthropic refuses it — ``max_tokens``, ``stream``, ``temperature``,
``stop_sequences``: "Extra inputs are not permitted" (none of them is part of the prompt)."""


def count_request(body: dict[str, Any], session_id: str) -> CompletionRequest:
    """The GTL request a count body describes: read as a Messages body is (every check, the same
    ``FieldError``s), with no ``max_tokens`` (``None``) and nothing to sample or stop."""
    unknown_field(body, COUNTED)
    # (a stand-in max_tokens for the reader, which requires one; a thinking budget is checked against the
    # largest, so only its own limits apply)
    request = messages_request({**body, "max_tokens": MAX_TOKENS_LIMIT}, session_id)
    return msgspec.structs.replace(request, max_tokens=None)


def _stop_sequences(stop: list[Any] | None) -> list[str] | None:
    """The stop sequences, refused as Anthropic refuses them: each a string with something but
    whitespace in it (its API names no limit on how many)."""
    if stop is None:
        return None
    fields.at_most(stop, "stop_sequences", MAX_STOP_SEQUENCES, "stop sequences")
    if not all(isinstance(item, str) for item in stop):
        raise FieldError("stop_sequences", "expected an array of strings")
    if any(not item for item in stop):
        raise FieldError("stop_sequences", "each stop sequence must be non-empty")
    if any(not item.strip() for item in stop):
        raise FieldError("stop_sequences", "each stop sequence must contain non-whitespace")
    return stop


EFFORTS = ("low", "medium", "high", "xhigh", "max")
"""The values of ``output_config.effort`` (Anthropic's SDK's)."""


def _effort(body: dict[str, Any], thinks: bool) -> str | None:
    """``output_config.effort`` as GTL's ``reasoning_effort`` when the request ``thinks`` (module docstring);
    checked either way (its keys are checked by ``_response_format``)."""
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if effort is not None and effort not in EFFORTS:
        listed = ", ".join(repr(value) for value in EFFORTS[:-1]) + f" or {EFFORTS[-1]!r}"
        raise FieldError("output_config.effort", f"Input should be {listed}")
    return effort if thinks else None


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """GTL's ``response_format`` for ``output_config.format`` (or the beta's ``output_format``)."""
    config = fields.obj(body, "output_config", "output_config")
    if config is not None:
        _only(config, _OUTPUT_CONFIG_KEYS, "output_config")
    where, form = "output_config.format", fields.obj(config, "format", "output_config.format") if config else None
    if form is None:
        where, form = "output_format", fields.obj(body, "output_format", "output_format")
    if form is None:
        return None
    _only(form, _FORMAT_KEYS, where)
    kind = fields.text(form, "type", f"{where}.type", required=True)
    if kind != "json_schema":
        raise FieldError(f"{where}.type", f"expected 'json_schema', not {kind!r}")
    schema = fields.obj(form, "schema", f"{where}.schema", required=True)
    # Anthropic always holds its answer to the schema: strict, where a provider makes that optional
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


def _system(raw: Any) -> list[Message]:
    """The system prompt as system messages: one, or one per run of blocks ending at a marked block."""
    if raw is None or isinstance(raw, str):
        return [Message(role="system", content=raw)] if raw else []
    if not isinstance(raw, list):
        raise FieldError("system", "expected a string or an array of text blocks")
    fields.at_most(raw, "system", MAX_PARTS, "text blocks")
    texts = []
    for index, block in enumerate(raw):
        kind = _kind(block, f"system.{index}")
        if kind != "text":
            raise FieldError(f"system.{index}.type", f"only text blocks are accepted in system, not {kind!r}")
        _only(block, _BLOCK_KEYS["text"], f"system.{index}")
        texts.append(_str(block, "text", f"system.{index}.text"))
    runs = split_at_marks(list(zip(texts, raw, strict=True)), lambda i, pair: marked(pair[1], f"system.{i}"))
    return [
        Message(role="system", content="\n\n".join(text for text, _ in run), **as_fields(mark))
        for run, mark in runs
        if any(text for text, _ in run)
    ]


def _kind(block: Any, where: str) -> str:
    kind = block.get("type") if type(block) is dict else None
    if type(kind) is str:  # the common case, with no path worded
        return kind
    if not isinstance(block, dict):
        raise FieldError(where, "each content block must be an object")
    kind = fields.text(block, "type", f"{where}.type", required=True)
    return str(kind)


def _str(block: dict[str, Any], key: str, where: str) -> str:
    value = fields.text(block, key, where, required=True)
    assert value is not None
    return value


def _blocks(content: Any, where: str) -> list[tuple[str, dict[str, Any], str]]:
    """``(type, block, path)`` of each content block; a string is one text block."""
    if isinstance(content, str):
        return [("text", {"type": "text", "text": content}, where)]
    if not isinstance(content, list):
        raise FieldError(where, "expected a string or an array of content blocks")
    if len(content) > MAX_PARTS:
        fields.at_most(content, where, MAX_PARTS, "content blocks in one message")
    read = [(_kind(block, f"{where}.{index}"), block, f"{where}.{index}") for index, block in enumerate(content)]
    for kind, block, here in read:
        if kind in _BLOCK_KEYS:  # (a block of another type is refused by its reader)
            _only(block, _BLOCK_KEYS[kind], here)
    return read


def _turn(raw: Any, where: str) -> list[Message]:
    """The GTL messages of one Anthropic turn (a user turn with tool results is several)."""
    if not isinstance(raw, dict):
        raise FieldError(where, "each message must be an object")
    role = fields.text(raw, "role", f"{where}.role", required=True)
    if raw.get("content") is None:
        raise FieldError(f"{where}.content", "this field is required")
    blocks = _blocks(raw["content"], f"{where}.content")
    if role == "assistant":
        return [_assistant(blocks)]
    if role == "user":
        return _user(blocks)
    raise FieldError(f"{where}.role", f"unsupported role {role!r}; use user or assistant (system is a parameter)")


def _assistant(blocks: list[tuple[str, dict[str, Any], str]]) -> Message:
    texts: list[str] = []
    calls: list[ToolCall] = []
    thoughts: list[dict[str, Any]] = []
    for kind, block, where in blocks:
        if kind == "text":
            texts.append(_str(block, "text", f"{where}.text"))
        elif kind == "tool_use":
            tool_input = fields.obj(block, "input", f"{where}.input") or {}
            calls.append(
                ToolCall(
                    id=_str(block, "id", f"{where}.id"),
                    name=_str(block, "name", f"{where}.name"),
                    arguments=msgspec.json.encode(tool_input).decode(),
                )
            )
        elif kind in ("thinking", "redacted_thinking"):
            thoughts.append(block)
        else:
            raise FieldError(f"{where}.type", f"{kind!r} blocks are not supported in an assistant turn")
    text = "".join(texts)
    whole = longest([marked(block, where) for _, block, where in blocks])  # (every marker checked)
    state = replayed_state(thoughts) if thoughts else None
    content = text or (None if calls else "")
    return Message(role="assistant", content=content, tool_calls=calls, provider_data=state, **as_fields(whole))


def _user(blocks: list[tuple[str, dict[str, Any], str]]) -> list[Message]:
    """Each tool result, then the text and images — a user message per run ending at a marked block."""
    results: list[Message] = []
    pieces: list[tuple[str, str]] = []
    said: list[Message] = []
    for kind, block, where in blocks:
        if kind == "text":
            pieces.append(("text", _str(block, "text", f"{where}.text")))
        elif kind == "image":
            pieces.append(("image", _image(block, where)))
        elif kind == "tool_result":
            results.append(_tool_result(block, where))
            continue
        else:
            raise FieldError(f"{where}.type", f"{kind!r} blocks are not supported; use text, image and tool_result")
        mark = marked(block, where)
        if mark is not None:
            said.append(Message.from_pieces("user", pieces, **as_fields(mark)))
            pieces = []
    if pieces or not (results or said):
        said.append(Message.from_pieces("user", pieces))
    return results + said


def _image(block: dict[str, Any], where: str) -> str:
    source = fields.obj(block, "source", f"{where}.source", required=True)
    assert source is not None
    kind = fields.text(source, "type", f"{where}.source.type", required=True)
    if kind in _SOURCE_KEYS:
        _only(source, _SOURCE_KEYS[kind], f"{where}.source")
    if kind == "base64":
        media_type = _str(source, "media_type", f"{where}.source.media_type")
        if media_type not in IMAGE_MEDIA_TYPES:  # (as the API: and a "," or ";" in it would move the data)
            allowed = ", ".join(repr(name) for name in IMAGE_MEDIA_TYPES)
            raise FieldError(f"{where}.source.media_type", f"Input should be {allowed}; got {media_type[:40]!r}")
        url = f"data:{media_type};base64,{_str(source, 'data', f'{where}.source.data')}"
        return fields.data_url(url, f"{where}.source.data")
    if kind == "url":
        return fields.image_url(source.get("url"), f"{where}.source.url")
    raise FieldError(f"{where}.source.type", f"image sources are base64 or url, not {kind!r}")


def _tool_result(block: dict[str, Any], where: str) -> Message:
    call_id = _str(block, "tool_use_id", f"{where}.tool_use_id")
    content = block.get("content")
    pieces: list[tuple[str, str]] = []
    if content is not None:
        for kind, part, here in _blocks(content, f"{where}.content"):
            if kind == "text":
                pieces.append(("text", _str(part, "text", f"{here}.text")))
            elif kind == "image":
                pieces.append(("image", _image(part, here)))
            else:
                raise FieldError(f"{here}.type", f"a tool result holds text and image blocks, not {kind!r}")
    failed = bool(fields.boolean(block, "is_error", f"{where}.is_error"))
    message = Message.from_pieces(
        "tool", pieces, tool_call_id=call_id, tool_error=failed, **as_fields(marked(block, where))
    )
    return message if message.content is not None else msgspec.structs.replace(message, content="")


def _tools(raw: list[Any] | None) -> list[Tool] | None:
    if not raw:
        return None
    tools = []
    for index, item in enumerate(raw):
        where = f"tools.{index}"
        if not isinstance(item, dict):
            raise FieldError(where, "each tool must be an object")
        if item.get("type") not in (None, "custom"):
            raise FieldError(
                f"{where}.type", f"server tools ({item.get('type')!r}) are not supported; only custom tools"
            )
        _only(item, _TOOL_KEYS, where)
        name = _str(item, "name", f"{where}.name")
        description = fields.text(item, "description", f"{where}.description") or ""
        schema = fields.obj(item, "input_schema", f"{where}.input_schema", required=True)
        assert schema is not None
        tools.append(Tool(name=name, description=description, parameters=schema))
    return tools


def _tool_choice(raw: dict[str, Any] | None) -> str | dict[str, Any] | None:
    if raw is None:
        return None
    kind = fields.text(raw, "type", "tool_choice.type", required=True)
    if kind in _CHOICE_KEYS:
        _only(raw, _CHOICE_KEYS[kind], "tool_choice")
    one_call = fields.boolean(raw, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use")
    choice: str | dict[str, Any]
    if kind == "tool":
        choice = {"type": "function", "function": {"name": _str(raw, "name", "tool_choice.name")}}
    elif kind in _CHOICES:
        choice = _CHOICES[kind]
    else:
        raise FieldError("tool_choice.type", f"expected auto, any, tool or none, not {kind!r}")
    return limited_to_one_call(choice) if one_call else choice
