"""A Responses API body (``POST /v1/responses``) → a GTL ``CompletionRequest``, and the settings its answer echoes.

Mapping (docs/gateway.md, "OpenAI- and Anthropic-compatible endpoints"); the readers of content parts,
function tools, an ``allowed_tools`` choice and a structured-output format are Chat Completions' own
(``openai_request``), so both OpenAI endpoints read them alike:

* ``model`` as on ``/v1/chat/completions``; ``instructions`` → a first ``system`` message.
* ``input``: a string is one user message; an array of items: ``message`` items (``type`` may be left
  out) of role ``user`` (a string, or ``input_text`` and ``input_image`` parts — an ``https:`` or
  ``data:`` ``image_url``), ``system`` and ``developer`` (text) and ``assistant`` (a string, or
  ``output_text`` / ``refusal`` parts: a previous answer's ``output`` replayed as is);
  ``function_call`` items (``call_id``, ``name``, ``arguments``) → GTL tool calls, joined to the
  assistant message before them; ``function_call_output`` items (``call_id``, ``output``: a string,
  or ``input_text`` / ``input_image`` parts) → tool results. ``reasoning`` items are dropped (an
  encrypted reasoning trace only OpenAI can read, and the gateway never answers with one). ``input_file``
  and ``input_audio`` parts, an image by ``file_id``, ``item_reference`` and the items of built-in
  tools are refused (400, naming the path).
* ``tools``: function tools in the Responses API's flat shape (``name``, ``description``,
  ``parameters``, ``strict``); a built-in tool (``web_search``, ``file_search``, ``mcp``…) is refused
  naming its type: OpenAI's servers would run it, and a request the gateway routes reaches none of
  them. ``tool_choice``: ``none``/``auto``/``required``, ``{"type": "function", "name"}``,
  ``{"type": "allowed_tools", "mode", "tools"}``; ``parallel_tool_calls: false`` as on chat.
* ``max_output_tokens``, ``temperature``, ``top_p``, ``stream``; ``text.format`` (``text``,
  ``json_object``, ``json_schema`` with ``name``, ``schema``, ``strict``) → GTL's ``response_format``,
  exactly the request ``response_format`` makes on chat.
* Refused rather than ignored (400, ``param`` naming it), since ignoring them would change the
  answer: ``previous_response_id`` and ``conversation`` (the gateway stores no responses: send the
  earlier items in ``input``), ``background: true``, ``prompt`` (a stored template), ``truncation:
  "auto"`` (the gateway drops no items to fit), ``include`` of ``reasoning.encrypted_content`` or
  ``message.output_text.logprobs``, ``top_logprobs`` above 0, ``moderation``.
* ``reasoning.summary`` (``auto``, ``concise``, ``detailed``) → GTL's ``reasoning``: a deployment that
  returns its reasoning (Claude's thinking, Gemini's thoughts) is answered with a ``reasoning`` item
  whose summary is that text (``responses_response``); one that returns none (OpenAI's chat API), with
  none, as OpenAI answers a model without summaries.
* ``reasoning.effort`` → GTL's ``reasoning_effort``, read as chat's ``reasoning_effort`` is
  (``openai_request.reasoning_effort``: OpenAI's values, anything else its 400 naming
  ``reasoning.effort``): how hard the model thinks, shown only when a summary is asked for.
* ``IGNORED`` (``metadata``, ``user``, ``safety_identifier``, ``store``, ``text.verbosity``,
  ``service_tier``, the prompt-cache fields…) is accepted, and echoed where the answer has a place for
  it; ``store`` is answered ``false`` — nothing is stored.
* Any other field is refused as on chat: ``Unrecognized request argument supplied: …``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from gtl_nb.gateway.compat import fields
from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.gateway.compat.openai_request import (
    arguments_text,
    content_pieces,
    function_tool,
    model_of,
    narrowed,
    only,
    reasoning_effort,
    response_format,
    streamed,
    tool_choice,
    unknown_field,
)
from gtl_nb.protocol.codec import json_kind
from gtl_nb.protocol.limits import MAX_MESSAGES, MAX_TOOL_CALLS, MAX_TOOLS
from gtl_nb.protocol.messages import (
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    CompletionRequest,
    Message,
    Tool,
    ToolCall,
)

__all__ = ["IGNORED", "MAPPED", "REFUSED", "ResponsesRequest", "responses_request"]

MAPPED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "text",
        "stream",
        "stream_options",
    }
)
"""The Responses API fields that reach the GTL request."""
REFUSED = frozenset(
    {
        "previous_response_id",
        "conversation",
        "background",
        "prompt",
        "truncation",
        "include",
        "top_logprobs",
        "moderation",
        "reasoning",  # its keys checked; its summary and effort mapped
    }
)
"""The fields refused when they ask what the gateway cannot give; their neutral values are accepted."""
IGNORED = frozenset(
    {
        "metadata",
        "user",
        "safety_identifier",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "max_tool_calls",  # a bound on built-in tool calls, which are refused
        "background_options",  # only with background: true, which is refused
        "context_management",  # server-side compaction, ignored as the Anthropic endpoint ignores it
        "image",  # image context compression: a cost setting
        "access_programs",
    }
)
"""The fields accepted and ignored: each tunes, labels or bills the call; the answer is still the answer."""
_KNOWN = MAPPED | REFUSED | IGNORED

_PART_KEYS = {
    "input_text": frozenset({"type", "text", "prompt_cache_breakpoint", "cache_control"}),
    "input_image": frozenset({"type", "image_url", "file_id", "detail", "prompt_cache_breakpoint", "cache_control"}),
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "refusal": frozenset({"type", "refusal"}),
}
_REFUSED_PARTS = {
    "input_file": "the gateway reads no files; send the file's text as input_text (or a page as input_image)",
    "input_audio": "the gateway takes no audio; send a transcript as input_text",
}
_TOOL_REFUSED = ("defer_loading", "async", "allowed_callers", "output_schema")
"""Function-tool keys of OpenAI's own tool machinery (tool search, asynchronous and programmatic calls):
refused unless null or false, since no provider the gateway routes to would honour them."""
_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict", *_TOOL_REFUSED})
_TEXT_KEYS = frozenset({"format", "verbosity"})
_FORMAT_KEYS = {
    "text": frozenset({"type"}),
    "json_object": frozenset({"type"}),
    "json_schema": frozenset({"type", "name", "schema", "description", "strict"}),
}
_REASONING_KEYS = frozenset({"effort", "summary", "generate_summary", "context", "mode"})
_STREAM_OPTION_KEYS = frozenset({"include_obfuscation"})
_INCLUDABLE = frozenset(
    {
        # outputs of built-in tools, which are refused, and input image URLs: nothing to add to an answer
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
    }
)
_NOT_INCLUDABLE = {
    "reasoning.encrypted_content": "the gateway answers with no reasoning items",
    "message.output_text.logprobs": "the gateway returns no token log probabilities",
}
_BUILT_IN = (
    "a built-in tool runs on OpenAI's own servers, which a request the gateway routes to any provider "
    "does not reach; declare it as a function tool and run it yourself"
)
_NOT_STORED = (
    "the gateway stores no responses or conversations; send the earlier turns in input instead "
    "(the previous input items, then the previous response's output items)"
)


@dataclass(frozen=True)
class ResponsesRequest:
    """The GTL request, and the request's settings the answer echoes (``instructions``, ``tools``…)."""

    request: CompletionRequest
    settings: dict[str, Any]


def responses_request(body: dict[str, Any], session_id: str) -> ResponsesRequest:
    """The GTL request of a Responses API body; ``FieldError`` names the first parameter that is wrong."""
    unknown_field(body, _KNOWN)
    model = model_of(body)
    _refuse(body)
    stream, _ = streamed(body, _STREAM_OPTION_KEYS)
    instructions = fields.text(body, "instructions", "instructions")
    messages = [Message(role="system", content=instructions)] if instructions else []
    messages += _input(body.get("input"))
    raw_tools = fields.items(body, "tools", "tools")
    if raw_tools:
        fields.at_most(raw_tools, "tools", MAX_TOOLS, "tools")
    tools = _tools(raw_tools or [])
    parallel = fields.boolean(body, "parallel_tool_calls", "parallel_tool_calls")
    narrowed_tools, choice = _tool_choice(body.get("tool_choice"), tools or None, parallel)
    text, format_asked = _text(fields.obj(body, "text", "text"))
    max_tokens = fields.integer(body, "max_output_tokens", "max_output_tokens", most=MAX_TOKENS_LIMIT)
    temperature = fields.number(body, "temperature", "temperature", within=(0.0, MAX_TEMPERATURE))
    top_p = fields.number(body, "top_p", "top_p", within=(0.0, 1.0))
    request = CompletionRequest(
        session_id=session_id,
        model=model,
        messages=messages,
        stream=stream,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        tools=narrowed_tools,
        tool_choice=choice,
        response_format=format_asked,
        reasoning=_summary(fields.obj(body, "reasoning", "reasoning")) is not None,
        reasoning_effort=_effort(body),
    )
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    settings = {
        "instructions": instructions,
        "tools": [_echoed_tool(item) for item in raw_tools or []],
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "parallel_tool_calls": parallel is not False,
        "temperature": temperature,
        "top_p": top_p,
        "max_output_tokens": max_tokens,
        "text": text,
        "metadata": _metadata(body),
        "user": fields.text(body, "user", "user"),
        "safety_identifier": fields.text(body, "safety_identifier", "safety_identifier"),
        "store": False,  # whatever was asked: the gateway stores nothing (a retrieve is a 404 saying so)
        "background": False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": _summary(reasoning)},
        "truncation": "disabled",
    }
    return ResponsesRequest(request, settings)


_SUMMARIES = ("auto", "concise", "detailed")


def _effort(body: dict[str, Any]) -> str | None:
    """``reasoning.effort`` as GTL's ``reasoning_effort`` (module docstring)."""
    reasoning = fields.obj(body, "reasoning", "reasoning")
    return reasoning_effort(reasoning.get("effort"), "reasoning.effort") if reasoning else None


def _summary(reasoning: dict[str, Any] | None) -> str | None:
    """The reasoning summary asked (``summary``, or the older ``generate_summary``), checked; ``None``: none."""
    if not reasoning:
        return None
    for name in ("summary", "generate_summary"):
        value = reasoning.get(name)
        if value is not None and value not in _SUMMARIES:
            raise FieldError(f"reasoning.{name}", f"expected one of {', '.join(map(repr, _SUMMARIES))}")
        if value is not None:
            return str(value)
    return None


def _refuse(body: dict[str, Any]) -> None:
    """A ``FieldError`` for the first field asking what the gateway cannot give (module docstring)."""
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise FieldError(name, _NOT_STORED)
    if fields.boolean(body, "background", "background"):
        raise FieldError("background", "the gateway runs no background responses (it stores none to poll); leave out")
    if body.get("prompt") is not None:
        raise FieldError("prompt", "the gateway holds no stored prompts; send the prompt's text in instructions")
    truncation = body.get("truncation")
    if truncation not in (None, "disabled"):
        said = "drops no input items to fit the context window" if truncation == "auto" else "knows only disabled"
        raise FieldError("truncation", f"the gateway {said}; leave truncation out or set it to disabled")
    top = body.get("top_logprobs")
    if top is not None and top != 0:
        raise FieldError("top_logprobs", "the gateway returns no token log probabilities; leave top_logprobs out")
    if fields.obj(body, "moderation", "moderation") is not None:
        raise FieldError("moderation", "the gateway runs no moderation; leave moderation out")
    reasoning = fields.obj(body, "reasoning", "reasoning")
    if reasoning is not None:
        only(reasoning, _REASONING_KEYS, "reasoning")
        _summary(reasoning)
    for index, value in enumerate(fields.items(body, "include", "include") or []):
        if not isinstance(value, str):  # (and a list or an object is no key to look up)
            raise FieldError(f"include[{index}]", f"expected a string, not {json_kind(value)}")
        if value in _NOT_INCLUDABLE:
            raise FieldError(f"include[{index}]", f"{value!r} cannot be included: {_NOT_INCLUDABLE[value]}")
        if value not in _INCLUDABLE:
            shown = repr(value)[:100]
            raise FieldError(f"include[{index}]", f"unknown value {shown}; expected one of {sorted(_INCLUDABLE)}")


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    """``metadata`` as given, once it is what OpenAI takes: an object of at most 16 strings (echoed only)."""
    metadata = fields.obj(body, "metadata", "metadata") or {}
    if len(metadata) > 16:
        raise FieldError("metadata", f"expected at most 16 keys, not {len(metadata)}")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise FieldError(f"metadata.{key[:64]}", "expected a string of at most 512 characters under a key of 64")
    return metadata


# -- input --------------------------------------------------------------------------------------------


def _input(raw: Any) -> list[Message]:
    if isinstance(raw, str):
        return [Message(role="user", content=raw)]
    if not isinstance(raw, list):
        said = "this field is required" if raw is None else "expected a string or an array of input items"
        raise FieldError("input", said)
    items = raw
    if not items:
        raise FieldError("input", "expected at least one input item")
    fields.at_most(items, "input", MAX_MESSAGES, "input items")
    messages: list[Message] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise FieldError(where, "each input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _call(item, where)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":  # the answer's text and calls: one assistant turn
                if len(last.tool_calls) >= MAX_TOOL_CALLS:
                    raise FieldError(where, f"more than {MAX_TOOL_CALLS} function calls in one turn")
                messages[-1] = msgspec.structs.replace(last, tool_calls=[*last.tool_calls, call])
            else:
                messages.append(Message(role="assistant", content=None, tool_calls=[call]))
        elif kind == "function_call_output":
            messages.append(_call_output(item, where))
        elif kind == "reasoning":
            continue  # (module docstring)
        elif kind == "item_reference":
            raise FieldError(f"{where}.type", _NOT_STORED)
        else:
            shown = repr(kind)[:100]
            raise FieldError(f"{where}.type", f"a {shown} item is not accepted: {_BUILT_IN}")
    if not messages:
        raise FieldError("input", "expected at least one message or function_call_output item")
    return messages


def _message(raw: dict[str, Any], where: str) -> Message:
    role = fields.text(raw, "role", f"{where}.role", required=True)
    content = raw.get("content")
    if content is None:
        raise FieldError(f"{where}.content", "this field is required")
    here = f"{where}.content"
    if role == "user":
        pieces = content_pieces(
            content, here, texts={"input_text": "text"}, images=_IMAGES, keys=_PART_KEYS, refused=_REFUSED_PARTS
        )
        return Message.from_pieces("user", pieces) if pieces else Message(role="user", content="")
    if role in ("system", "developer"):
        pieces = content_pieces(content, here, texts={"input_text": "text"}, keys=_PART_KEYS, refused=_REFUSED_PARTS)
        return Message(role="system", content="\n".join(text for _, text in pieces))
    if role == "assistant":
        texts = {"output_text": "text", "input_text": "text", "refusal": "refusal"}
        pieces = content_pieces(content, here, texts=texts, keys=_PART_KEYS, refused=_REFUSED_PARTS)
        return Message(role="assistant", content="\n".join(text for _, text in pieces))
    raise FieldError(f"{where}.role", f"unsupported role {role!r}; use user, assistant, system or developer")


def _input_image(part: dict[str, Any], where: str) -> str:
    if part.get("file_id") is not None:
        raise FieldError(f"{where}.file_id", "the gateway holds no uploaded files; give the image as image_url")
    return fields.image_url(part.get("image_url"), f"{where}.image_url")


_IMAGES = {"input_image": _input_image}


def _call(raw: dict[str, Any], where: str) -> ToolCall:
    call_id = fields.text(raw, "call_id", f"{where}.call_id", required=True)
    name = fields.text(raw, "name", f"{where}.name", required=True)
    arguments = arguments_text(raw.get("arguments"), f"{where}.arguments")
    return ToolCall(id=str(call_id), name=str(name), arguments=arguments)


def _call_output(raw: dict[str, Any], where: str) -> Message:
    call_id = fields.text(raw, "call_id", f"{where}.call_id", required=True)
    output = raw.get("output")
    if output is None:
        raise FieldError(f"{where}.output", "this field is required")
    pieces = content_pieces(
        output,
        f"{where}.output",
        texts={"input_text": "text"},
        images=_IMAGES,
        keys=_PART_KEYS,
        refused=_REFUSED_PARTS,
    )
    if not pieces:
        return Message(role="tool", content="", tool_call_id=call_id)
    return Message.from_pieces("tool", pieces, tool_call_id=call_id)


# -- tools, tool_choice, text ---------------------------------------------------------------------------


def _tools(raw: list[Any]) -> list[Tool]:
    tools = []
    for index, item in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(item, dict):
            raise FieldError(where, "each tool must be an object")
        kind = item.get("type")
        if kind != "function":
            raise FieldError(f"{where}.type", f"only function tools are served, not {repr(kind)[:100]}: {_BUILT_IN}")
        only(item, _TOOL_KEYS, where)
        for key in _TOOL_REFUSED:
            if item.get(key) not in (None, False):
                raise FieldError(
                    f"{where}.{key}", f"OpenAI's own tool machinery, which no deployment has; leave {key} out"
                )
        tools.append(function_tool(item, where))
    return tools


def _echoed_tool(item: dict[str, Any]) -> dict[str, Any]:
    """A function tool as the answer's ``tools`` lists it."""
    return {
        "type": "function",
        "name": item.get("name"),
        "description": item.get("description"),
        "parameters": item.get("parameters"),
        "strict": item.get("strict"),
    }


def _tool_choice(raw: Any, tools: list[Tool] | None, parallel: bool | None) -> tuple[list[Tool] | None, Any]:
    """The request's tools (narrowed by an ``allowed_tools`` choice) and GTL's ``tool_choice``."""
    if raw is None or raw in ("none", "auto", "required"):
        return tools, tool_choice(raw, parallel)
    if not isinstance(raw, dict):
        raise FieldError(
            "tool_choice",
            'expected "none", "auto", "required", {"type": "function", "name"} or '
            '{"type": "allowed_tools", "mode", "tools"}',
        )
    kind = raw.get("type")
    if kind == "function":
        only(raw, frozenset({"type", "name"}), "tool_choice")
        name = fields.text(raw, "name", "tool_choice.name", required=True)
        declared = [tool.name for tool in tools or []]
        if name not in declared:  # (said here in this API's shape: the engine would quote chat's)
            raise FieldError("tool_choice.name", f"{name!r} is none of the tools declared: {declared}")
        return tools, tool_choice({"type": "function", "function": {"name": name}}, parallel)
    if kind == "allowed_tools":
        only(raw, frozenset({"type", "mode", "tools"}), "tool_choice")
        listed = raw.get("tools")
        if not isinstance(listed, list) or not listed:
            raise FieldError("tool_choice.tools", 'expected a non-empty list of {"type": "function", "name"}')
        names = []
        for index, item in enumerate(listed):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(name, str):
                raise FieldError(f"tool_choice.tools[{index}]", f'expected {{"type": "function", "name"}}: {_BUILT_IN}')
            names.append(name)
        allowed, mode = narrowed(tools, raw.get("mode"), names, "tool_choice")
        return allowed, tool_choice(mode, parallel)
    raise FieldError("tool_choice.type", f"only a function can be chosen, not {repr(kind)[:100]}: {_BUILT_IN}")


def _text(raw: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``text`` the answer echoes, and the chat ``response_format`` its ``format`` asks for."""
    if raw is None:
        return {"format": {"type": "text"}}, None
    only(raw, _TEXT_KEYS, "text")
    given = fields.obj(raw, "format", "text.format")
    if given is None:
        return {"format": {"type": "text"}, **raw}, None
    kind = given.get("type")
    if not isinstance(kind, str) or kind not in _FORMAT_KEYS:
        raise FieldError("text.format.type", 'expected "text", "json_schema" or "json_object"')
    only(given, _FORMAT_KEYS[kind], "text.format")
    if kind != "json_schema":
        return raw, response_format({"type": kind})
    fields.text(given, "name", "text.format.name", required=True)
    fields.obj(given, "schema", "text.format.schema", required=True)
    schema = {key: value for key, value in given.items() if key != "type" and value is not None}
    return raw, response_format({"type": "json_schema", "json_schema": schema})
