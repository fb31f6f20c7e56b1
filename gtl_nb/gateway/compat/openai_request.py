"""An OpenAI Chat Completions request body → a GTL ``CompletionRequest`` (the reverse of the client dialect).

Mapping (docs/gateway.md, "OpenAI- and Anthropic-compatible endpoints"):

* ``model`` is GTL's model string as is: ``deployment:model`` or a bare model the gateway routes.
* ``messages``: ``system`` and ``developer`` → ``system``; ``user`` content is a string or an array
  of ``text`` parts and ``image_url`` parts (``data:`` or ``https:`` URLs → the message's ``images``,
  any other URL refused naming its path;
  several parts keep their order in GTL's ``parts``, its ``content`` their texts joined with
  newlines: what an OpenAI deployment is sent for text alone);
  ``assistant`` content and ``tool_calls`` (``{id, function: {name, arguments}}``) → an assistant
  message with GTL tool calls; ``tool`` (``tool_call_id``, content) → a tool result. ``name`` is
  kept. Audio and file parts, the legacy ``function`` role and ``function_call`` are refused (400)
  rather than silently dropped.
* ``tools`` (``type: function`` only), ``tool_choice`` (``none``/``auto``/``required`` or
  ``{"type": "function", "function": {"name": …}}``, both GTL's own forms; ``{"type":
  "allowed_tools", "allowed_tools": {"mode", "tools"}}`` → the tools it names, with its mode as the
  choice: the model may call those and no other, as OpenAI's API lets it), ``temperature``,
  ``top_p``, ``max_completion_tokens`` (else ``max_tokens``), ``stop`` (a string or an array of at
  most 4, OpenAI's limit: more is its 400 naming ``stop``),
  ``response_format`` and ``stream`` pass through; ``stream_options.include_usage`` asks for the final
  usage chunk (``stream_options`` without ``stream: true`` is refused, as OpenAI refuses it: 400 naming
  it). ``n`` other than 1 is refused: a session has one answer; so are ``logprobs: true``
  and ``top_logprobs`` (GTL carries no token probabilities: ``choice.logprobs`` would be null).
* ``cache_control`` on a message or on one of its content parts (the form other OpenAI-compatible
  proxies take for Anthropic's prompt caching) → GTL's ``cache_point`` on the message that ends there
  (``compat.cache_marks``: a system or user message is split after a marked part); the deployment
  that answers asks for its provider's cache if it caches only on request (OpenAI caches by itself).
  A marker other than ``{"type": "ephemeral"}`` is refused (400).
* ``parallel_tool_calls: false`` → GTL's ``"parallel": false`` in ``tool_choice`` (at most one tool
  call; a deployment whose API cannot be so limited is skipped, else the request is refused).
* ``modalities`` asking for anything but text (audio output) is refused (400): the answer is text;
  so is ``web_search_options`` (a search the provider would run itself, which GTL cannot ask for).
* ``reasoning_effort`` → GTL's ``reasoning_effort`` (one of OpenAI's values — ``none``, ``minimal``,
  ``low``, ``medium``, ``high``, ``xhigh``, ``max`` —, anything else its 400 naming the parameter): how
  hard the model thinks, whatever deployment answers — an OpenAI reasoning model gets it as is, Claude
  a thinking budget, Gemini a level or a budget (docs/providers.md, "How hard a model thinks"); Chat
  Completions shows no reasoning, so it asks for none to be shown (Claude's thinking stays in its
  replay state). Left out, the deployment's own option decides.
* ``IGNORED`` (``seed``, ``user``, penalties, ``store``, ``metadata``, ``verbosity``…) is accepted and
  ignored, as a proxy in front of a model that lacks it would: each tunes, labels or bills the call,
  and none changes what the answer must be. ``logit_bias`` is ignored only empty:
  a bias that bans or forces tokens would be silently lost.
* Any other field is refused (400, ``param`` naming it) as OpenAI refuses it — "Unrecognized request
  argument supplied: max_token" — with the field it is a near miss of; GTL's own request fields
  (``providers``, ``provider``…, what ``extra_body`` would carry) are refused saying where they go.
  So is a key Chat Completions does not define in a content part (and its ``image_url``), a tool and
  its ``function``, an object ``tool_choice``, ``response_format`` and its ``json_schema``, or
  ``stream_options``, named by its path (``Unrecognized request argument supplied:
  tools[0].function.paramters``); the keys of its SDK's request types, and a part's ``cache_control``,
  are accepted. A message's and a tool call's own keys are not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from gtl_nb.gateway.compat import fields
from gtl_nb.gateway.compat.cache_marks import as_fields, longest, mark_of, marked, split_at_marks
from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.protocol.codec import json_kind
from gtl_nb.protocol.limits import MAX_MESSAGES, MAX_PARTS, MAX_TOOL_CALLS, MAX_TOOLS
from gtl_nb.protocol.messages import (
    MAX_NAME_LENGTH,
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    REASONING_EFFORTS,
    CompletionRequest,
    Message,
    Tool,
    ToolCall,
)
from gtl_nb.providers.base import limited_to_one_call

__all__ = [
    "IGNORED",
    "MAPPED",
    "REFUSED",
    "ChatRequest",
    "arguments_text",
    "chat_request",
    "content_pieces",
    "function_tool",
    "model_of",
    "narrowed",
    "only",
    "reasoning_effort",
    "response_format",
    "streamed",
    "tool_choice",
    "unknown_field",
]

_TOOL_CHOICE_WORDS = frozenset({"none", "auto", "required"})

MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_completion_tokens",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "stream",
        "stream_options",
        "reasoning_effort",
    }
)
"""The Chat Completions fields that reach the GTL request."""
REFUSED = frozenset(
    {
        "n",
        "logprobs",
        "top_logprobs",
        "modalities",
        "audio",
        "web_search_options",
        "functions",
        "function_call",
        "moderation",
    }
)
"""The fields refused when they ask what GTL cannot give (``n`` other than 1, ``logprobs: true``, audio…);
their neutral values (``n: 1``, ``logprobs: false``, ``modalities: ["text"]``, ``null``) are accepted."""
IGNORED = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",  # only empty: see the module docstring
        "seed",
        "user",
        "safety_identifier",
        "store",
        "metadata",
        "service_tier",
        "verbosity",
        "prediction",  # a latency hint: the answer is the same without it
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
"""The fields accepted and ignored: each tunes, labels or bills the call; the answer is still the answer."""
_KNOWN = MAPPED | REFUSED | IGNORED
_GTL_FIELDS = frozenset({"providers", "provider", "session_id", "reasoning", "cache", "type"})
"""GTL's own request fields, which a caller of the OpenAI SDK might send in ``extra_body``."""


# The keys each nested object the endpoint reads may have: Chat Completions' own (its SDK's request
# types), and ``cache_control`` on a content part (the form other OpenAI-compatible proxies take).
_PART_KEYS = {
    "text": frozenset({"type", "text", "cache_control", "prompt_cache_breakpoint"}),
    "image_url": frozenset({"type", "image_url", "cache_control", "prompt_cache_breakpoint"}),
    "refusal": frozenset({"type", "refusal", "cache_control"}),
}
_IMAGE_URL_KEYS = frozenset({"url", "detail"})
_TOOL_KEYS = frozenset({"type", "function"})
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
_NAMED_KEYS = frozenset({"name"})
_CHOICE_KEYS = {"function": frozenset({"type", "function"}), "allowed_tools": frozenset({"type", "allowed_tools"})}
_ALLOWED_KEYS = frozenset({"mode", "tools"})
_STREAM_OPTION_KEYS = frozenset({"include_usage", "include_obfuscation"})
_FORMAT_KEYS = {
    "text": frozenset({"type"}),
    "json_object": frozenset({"type"}),
    "json_schema": frozenset({"type", "json_schema"}),
}
_JSON_SCHEMA_KEYS = frozenset({"name", "description", "schema", "strict"})


def only(value: dict[str, Any], known: frozenset[str], where: str) -> None:
    """``FieldError`` for a key of the nested object ``value`` (at ``where``) Chat Completions has not,
    named by its path, in the words of a top-level one: ``Unrecognized request argument supplied:
    tools[0].function.paramters``."""
    extra = fields.unknown_key(value, known)
    if extra is not None:
        key, close = extra
        path = f"{where}.{key}"
        said = f"Unrecognized request argument supplied: {path}"
        raise FieldError(path, f"{said}; did you mean {close}?" if close else said, whole=True)


@dataclass(frozen=True)
class ChatRequest:
    """The GTL request, and what the answer's shape depends on."""

    request: CompletionRequest
    include_usage: bool
    max_tokens_param: str = "max_tokens"  # what the caller named its limit: an error about it names that


def unknown_field(body: dict[str, Any], known: frozenset[str] = _KNOWN) -> None:
    """``FieldError`` for the first field of ``body`` that ``known`` (Chat Completions' fields, or the
    Responses API's) has not — a slip such as ``max_token``, ignored, would silently change the answer —,
    worded as OpenAI words it."""
    for key in body:
        if key not in known:
            raise _unknown(key, known)


def _unknown(key: str, known: frozenset[str]) -> FieldError:
    name = key[:100]
    said = f"Unrecognized request argument supplied: {name}"
    if key in _GTL_FIELDS:
        return FieldError(
            name,
            f"{said}: a GTL request field, which this endpoint does not take; here the model string chooses "
            'the deployment ("deployment:model") or the gateway routes a bare model, and a failover list '
            "(providers) is taken by POST /v1/gtl and gtl_nb.connect()",
            whole=True,
        )
    close = fields.did_you_mean(key, known)
    return FieldError(name, f"{said}; did you mean {close}?" if close else said, whole=True)


def chat_request(body: dict[str, Any], session_id: str) -> ChatRequest:
    """The GTL request of a Chat Completions body; ``FieldError`` names the first parameter that is wrong."""
    unknown_field(body)
    model = model_of(body)
    raw_messages = fields.items(body, "messages", "messages", required=True)
    assert raw_messages is not None
    if not raw_messages:  # as OpenAI answers: an empty conversation is the caller's bug, not a prompt
        raise FieldError("messages", "expected at least one message")
    fields.at_most(raw_messages, "messages", MAX_MESSAGES, "messages")
    raw_tools = fields.items(body, "tools", "tools")
    if raw_tools:
        fields.at_most(raw_tools, "tools", MAX_TOOLS, "tools")
    n = body.get("n")
    if n is not None and n != 1:
        raise FieldError("n", "the gateway answers with one choice; n must be 1")
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(kind != "text" for kind in modalities):
        # an app asking for audio reads message.audio: answered in text only, it would find None there
        raise FieldError("modalities", 'the gateway answers in text only; modalities must be ["text"]')
    _refuse_logprobs(body)
    if fields.obj(body, "moderation", "moderation") is not None:
        # OpenAI's moderation of the input and output: ignored, a blocked answer would be given unblocked
        raise FieldError("moderation", "the gateway runs no moderation; leave moderation out")
    if fields.obj(body, "web_search_options", "web_search_options") is not None:
        # a search model's server-side search: ignored, the model would answer without searching
        raise FieldError("web_search_options", "the gateway runs no web search; leave web_search_options out")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise FieldError(legacy, "the legacy function-calling fields are not supported; use tools and tool_choice")
    stream, options = streamed(body, _STREAM_OPTION_KEYS)
    include_usage = stream and bool(fields.boolean(options or {}, "include_usage", "stream_options.include_usage"))
    if fields.obj(body, "audio", "audio"):  # audio output's voice and format: the answer has no audio
        raise FieldError("audio", 'the gateway answers in text only; leave audio out (and modalities ["text"])')
    if fields.obj(body, "logit_bias", "logit_bias"):  # a ban or a push on tokens, silently lost if ignored
        raise FieldError("logit_bias", "the gateway cannot bias tokens; leave logit_bias out or empty")
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = fields.integer(body, "max_completion_tokens", "max_completion_tokens", most=MAX_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = fields.integer(body, "max_tokens", "max_tokens", most=MAX_TOKENS_LIMIT)
    tools, choice = _allowed_tools(_tools(raw_tools), body.get("tool_choice"))
    request = CompletionRequest(
        session_id=session_id,
        model=model,
        messages=[
            message for index, raw in enumerate(raw_messages) for message in _messages(raw, f"messages[{index}]")
        ],
        stream=stream,
        max_tokens=max_tokens,
        temperature=fields.number(body, "temperature", "temperature", within=(0.0, MAX_TEMPERATURE)),
        top_p=fields.number(body, "top_p", "top_p", within=(0.0, 1.0)),
        stop=_stop(body.get("stop")),
        tools=tools,
        tool_choice=tool_choice(choice, fields.boolean(body, "parallel_tool_calls", "parallel_tool_calls")),
        response_format=response_format(fields.obj(body, "response_format", "response_format")),
        reasoning_effort=reasoning_effort(body.get("reasoning_effort"), "reasoning_effort"),
    )
    return ChatRequest(request, include_usage, limit)


def reasoning_effort(raw: Any, where: str) -> str | None:
    """An OpenAI ``reasoning_effort`` (``where``: its path), one of its values, refused otherwise as OpenAI
    refuses a value it does not know: ``Invalid value: 'huge'. Supported values are: 'none', … and 'max'.``"""
    if raw is None or raw in REASONING_EFFORTS:
        return raw
    listed = ", ".join(repr(value) for value in REASONING_EFFORTS[:-1]) + f", and {REASONING_EFFORTS[-1]!r}"
    shown = repr(raw) if isinstance(raw, str) else json_kind(raw)
    raise FieldError(where, f"Invalid value: {shown[:100]}. Supported values are: {listed}.", whole=True)


def model_of(body: dict[str, Any]) -> str:
    """The body's ``model``: a non-empty string of at most GTL's name length."""
    model = fields.text(body, "model", "model", required=True, max_length=MAX_NAME_LENGTH)
    if not model:
        raise FieldError("model", "the model must not be empty")
    return model


def streamed(body: dict[str, Any], option_keys: frozenset[str]) -> tuple[bool, dict[str, Any] | None]:
    """``stream``, and ``stream_options`` (whose keys ``option_keys`` has): refused without ``stream:
    true``, as OpenAI refuses it — an app that asked for a usage chunk must learn it gets none."""
    stream = bool(fields.boolean(body, "stream", "stream"))
    options = fields.obj(body, "stream_options", "stream_options")
    if options is not None and not stream:
        raise FieldError("stream_options", "only allowed when stream is enabled (stream: true)")
    if options is not None:
        only(options, option_keys, "stream_options")
    return stream, options


def arguments_text(raw: Any, where: str) -> str:
    """A tool call's ``arguments``: the JSON text of an object (an object is taken as its text, as some
    clients send it; none is ``{}``)."""
    if isinstance(raw, dict):
        return msgspec.json.encode(raw).decode()
    if raw is not None and not isinstance(raw, str):
        raise FieldError(where, "expected the JSON text of an object")
    return raw or "{}"


def response_format(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """``response_format`` as given, once no key of it (or of its ``json_schema``) is one OpenAI has not;
    what its type and schema ask is the deployment's to read (``providers.base.schema_asked``)."""
    if raw is None:
        return None
    kind = raw.get("type")
    known = _FORMAT_KEYS.get(kind) if isinstance(kind, str) else None  # (a type of another kind: refused later)
    if known is not None:
        only(raw, known, "response_format")
    schema = raw.get("json_schema")
    if raw.get("type") == "json_schema" and isinstance(schema, dict):
        only(schema, _JSON_SCHEMA_KEYS, "response_format.json_schema")
    return raw


def _refuse_logprobs(body: dict[str, Any]) -> None:
    """``logprobs: true`` or a ``top_logprobs`` above 0 is refused (400): GTL carries no token
    probabilities, and an app that asked reads ``choice.logprobs.content`` — ``None`` would fail there,
    far from the cause (OpenAI answers a model without them the same way). ``false`` and ``0`` ask nothing."""
    if body.get("logprobs") not in (None, False):
        raise FieldError("logprobs", "the gateway returns no token log probabilities; leave logprobs out or false")
    top = body.get("top_logprobs")
    if top is not None and top != 0:
        raise FieldError("top_logprobs", "the gateway returns no token log probabilities; leave top_logprobs out")


def _messages(raw: Any, where: str) -> list[Message]:
    """The GTL messages of one chat message: one, or — for a system or user message whose content
    parts carry ``cache_control`` — one per run of parts ending at a marked part."""
    message = _message(raw, where)  # every part checked, with its own path, before any split
    whole = marked(raw, where)
    content = raw.get("content")
    if not isinstance(content, list):
        return [msgspec.structs.replace(message, **as_fields(whole)) if whole else message]
    runs = split_at_marks(content, lambda index, part: marked(part, f"{where}.content[{index}]"))
    if message.role in ("user", "system") and len(runs) > 1:
        messages = [
            msgspec.structs.replace(_message({**raw, "content": run}, where), **as_fields(mark)) for run, mark in runs
        ]
    else:  # an assistant or tool message is marked whole
        messages = [msgspec.structs.replace(message, **as_fields(longest(mark for _, mark in runs)))]
    if whole:
        messages[-1] = msgspec.structs.replace(messages[-1], **as_fields(longest([whole, mark_of(messages[-1])])))
    return messages


def _message(raw: Any, where: str) -> Message:
    if not isinstance(raw, dict):
        raise FieldError(where, "each message must be an object")
    role, name = raw.get("role"), raw.get("name")
    if type(role) is not str or (name is not None and type(name) is not str):  # (the paths worded only then)
        role = fields.text(raw, "role", f"{where}.role", required=True)
        name = fields.text(raw, "name", f"{where}.name")
    if role in ("system", "developer"):
        return Message(role="system", content=_text_only(raw.get("content"), f"{where}.content"), name=name)
    if role == "user":
        content = raw.get("content")
        if type(content) is str:  # the common case: one text, no pieces to order
            return Message(role="user", content=content, name=name)
        return Message.from_pieces("user", _user_content(content, f"{where}.content"), name=name)
    if role == "assistant":
        if raw.get("function_call") is not None:
            raise FieldError(f"{where}.function_call", "the legacy function_call is not supported; use tool_calls")
        raw_calls = fields.items(raw, "tool_calls", f"{where}.tool_calls") or []
        if len(raw_calls) > MAX_TOOL_CALLS:
            fields.at_most(raw_calls, f"{where}.tool_calls", MAX_TOOL_CALLS, "tool calls in one message")
        calls = [_tool_call(call, f"{where}.tool_calls[{index}]") for index, call in enumerate(raw_calls)]
        content = _text_only(raw.get("content"), f"{where}.content", refusals=True)
        return Message(role="assistant", content=content or (None if calls else ""), tool_calls=calls, name=name)
    if role == "tool":
        call_id = fields.text(raw, "tool_call_id", f"{where}.tool_call_id", required=True)
        return Message(role="tool", content=_text_only(raw.get("content"), f"{where}.content"), tool_call_id=call_id)
    raise FieldError(f"{where}.role", f"unsupported role {role!r}; use system, developer, user, assistant or tool")


Texts = Mapping[str, str]
"""The content-part types that carry text, each with the key of its text (``{"text": "text"}``)."""
Images = Mapping[str, Callable[[dict[str, Any], str], str]]
"""The content-part types that carry an image, each with the reader of its URL (given the part and its path)."""

_TEXT: Texts = {"text": "text"}
_TEXT_OR_REFUSAL: Texts = {"text": "text", "refusal": "refusal"}


def _image_url_part(part: dict[str, Any], where: str) -> str:
    """The URL of a Chat Completions ``image_url`` part: ``{"image_url": {"url", "detail"}}``."""
    image = part.get("image_url")
    if isinstance(image, dict):
        only(image, _IMAGE_URL_KEYS, f"{where}.image_url")
    url = image.get("url") if isinstance(image, dict) else image  # an older form: the URL itself
    return fields.image_url(url, f"{where}.image_url.url")


_IMAGES: Images = {"image_url": _image_url_part}


def _parts(content: Any, where: str, keys: Mapping[str, frozenset[str]]) -> list[tuple[str, dict[str, Any]]]:
    """``(type, part)`` of each content part, whose keys ``keys`` has for its type; a string is one text part."""
    if isinstance(content, str):
        return [("", {"text": content})]
    if not isinstance(content, list):
        raise FieldError(where, "expected a string or an array of content parts")
    if len(content) > MAX_PARTS:
        fields.at_most(content, where, MAX_PARTS, "content parts in one message")
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            raise FieldError(f"{where}[{index}]", "each content part must be an object")
        kind = fields.text(part, "type", f"{where}[{index}].type", required=True)
        if kind in keys:  # (a part of another type is refused by its reader)
            only(part, keys[str(kind)], f"{where}[{index}]")
        parts.append((str(kind), part))
    return parts


def content_pieces(
    content: Any,
    where: str,
    *,
    texts: Texts,
    images: Images | None = None,
    keys: Mapping[str, frozenset[str]] = _PART_KEYS,
    refused: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The texts and image URLs of a message's content, in order — ``("text", text)`` and ``("image",
    url)`` —, for either OpenAI API: ``texts`` and ``images`` name the part types it takes here (Chat
    Completions' ``text`` and ``image_url``, the Responses API's ``input_text`` and ``input_image``),
    ``keys`` the keys of each part type, ``refused`` why a part type is refused (else: which are taken)."""
    pieces: list[tuple[str, str]] = []
    images = images or {}
    for index, (kind, part) in enumerate(_parts(content, where, keys)):
        here = f"{where}[{index}]"
        if not kind:  # the content was a string
            pieces.append(("text", part["text"]))
        elif kind in texts:
            value = fields.text(part, texts[kind], f"{here}.{texts[kind]}", required=True)
            pieces.append(("text", str(value)))
        elif kind in images:
            pieces.append(("image", images[kind](part, here)))
        else:
            taken = " and ".join(sorted({*texts, *images}))
            reason = (refused or {}).get(kind) or f"a {kind!r} part is not accepted here; use {taken}"
            raise FieldError(f"{here}.type", reason)
    return pieces


def _text_only(content: Any, where: str, *, refusals: bool = False) -> str | None:
    """The text of content that takes text parts only (system, assistant, tool messages)."""
    if content is None:
        return None
    pieces = content_pieces(content, where, texts=_TEXT_OR_REFUSAL if refusals else _TEXT)
    return "\n".join(text for _, text in pieces)


def _user_content(content: Any, where: str) -> list[tuple[str, str]]:
    """A user message's text and image URLs, in order: ``("text", text)`` and ``("image", url)``."""
    if content is None:
        raise FieldError(where, "a user message needs content")
    return content_pieces(content, where, texts=_TEXT, images=_IMAGES)


def _tool_call(raw: Any, where: str) -> ToolCall:
    if not isinstance(raw, dict):
        raise FieldError(where, "each tool call must be an object")
    call_id = fields.text(raw, "id", f"{where}.id", required=True)
    function = fields.obj(raw, "function", f"{where}.function", required=True)
    assert call_id is not None and function is not None
    name = fields.text(function, "name", f"{where}.function.name", required=True)
    arguments = arguments_text(function.get("arguments"), f"{where}.function.arguments")
    return ToolCall(id=call_id, name=str(name), arguments=arguments)


def _tools(raw: list[Any] | None) -> list[Tool] | None:
    if not raw:
        return None
    tools = []
    for index, item in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(item, dict):
            raise FieldError(where, "each tool must be an object")
        if item.get("type", "function") != "function":
            raise FieldError(f"{where}.type", f"only function tools are supported, not {item.get('type')!r}")
        only(item, _TOOL_KEYS, where)
        function = fields.obj(item, "function", f"{where}.function", required=True)
        assert function is not None
        only(function, _FUNCTION_KEYS, f"{where}.function")
        tools.append(function_tool(function, f"{where}.function"))
    return tools


def function_tool(function: dict[str, Any], where: str) -> Tool:
    """The GTL tool of a function's ``name``, ``description`` and ``parameters`` (Chat Completions'
    ``tools[i].function``, or a Responses API tool itself); its keys are the caller's to check."""
    name = fields.text(function, "name", f"{where}.name", required=True)
    description = fields.text(function, "description", f"{where}.description") or ""
    parameters = fields.obj(function, "parameters", f"{where}.parameters")
    if parameters is None:
        return Tool(name=str(name), description=description)
    return Tool(name=str(name), description=description, parameters=parameters)


def _allowed_tools(tools: list[Tool] | None, raw: Any) -> tuple[list[Tool] | None, Any]:
    """An ``allowed_tools`` choice as GTL carries it (``narrowed``); any other choice as given."""
    if not (isinstance(raw, dict) and raw.get("type") == "allowed_tools"):
        return tools, raw
    where = "tool_choice.allowed_tools"
    only(raw, _CHOICE_KEYS["allowed_tools"], "tool_choice")
    allowed = fields.obj(raw, "allowed_tools", where, required=True)
    assert allowed is not None
    only(allowed, _ALLOWED_KEYS, where)
    listed = allowed.get("tools")
    if not isinstance(listed, list) or not listed:
        raise FieldError(f"{where}.tools", 'expected a non-empty list of {"type": "function", "function": {"name"}}')
    names: list[str] = []
    for index, item in enumerate(listed):
        function = item.get("function") if isinstance(item, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(item, dict) or item.get("type", "function") != "function" or not isinstance(name, str):
            raise FieldError(f"{where}.tools[{index}]", 'expected {"type": "function", "function": {"name": ...}}')
        # (each item may be the tool's whole definition — the API reference lists tool definitions here,
        # and the SDK types them as open objects — so only its name is read, and no other key is checked)
        names.append(name)
    return narrowed(tools, allowed.get("mode"), names, where)


def narrowed(tools: list[Tool] | None, mode: Any, names: list[str], where: str) -> tuple[list[Tool] | None, str]:
    """An ``allowed_tools`` choice (``mode``, the ``names`` it lists, at ``where``) as GTL carries it: the
    request's tools narrowed to those it names (in the request's order), the choice its ``mode`` (``auto``
    or ``required``). A name no tool of ``tools`` has is refused, as a ``function`` choice naming none would be."""
    if mode not in ("auto", "required"):
        raise FieldError(f"{where}.mode", 'expected "auto" or "required"')
    known = {tool.name for tool in tools or ()}
    missing = sorted(set(names) - known)
    if missing:
        raise FieldError(f"{where}.tools", f"names no tool of tools: {', '.join(repr(name) for name in missing)}")
    return [tool for tool in tools or () if tool.name in set(names)], mode


def tool_choice(raw: Any, parallel: bool | None) -> str | dict[str, Any] | None:
    """GTL's ``tool_choice``; ``parallel_tool_calls: false`` rides in it as ``"parallel": false``."""
    choice: str | dict[str, Any] | None
    if raw is None:
        choice = None
    elif isinstance(raw, str) and raw in _TOOL_CHOICE_WORDS:
        choice = raw
    elif (
        isinstance(raw, dict)
        and raw.get("type") == "function"
        and isinstance(raw.get("function"), dict)
        and isinstance(raw["function"].get("name"), str)
    ):
        only(raw, _CHOICE_KEYS["function"], "tool_choice")
        only(raw["function"], _NAMED_KEYS, "tool_choice.function")
        choice = {"type": "function", "function": {"name": raw["function"]["name"]}}
    else:
        raise FieldError(
            "tool_choice",
            'expected "none", "auto", "required", {"type": "function", "function": {"name"}} or '
            '{"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}',
        )
    return limited_to_one_call(choice) if parallel is False else choice


MAX_STOP = 4
"""The most stop sequences OpenAI's API takes (more is its 400 naming ``stop``)."""


def _stop(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        if len(raw) > MAX_STOP:
            raise FieldError("stop", f"array too long: expected at most {MAX_STOP} stop sequences, but got {len(raw)}")
        return list(raw) or None
    raise FieldError("stop", "expected a string or an array of strings")
