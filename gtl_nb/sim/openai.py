"""Chat Completions simulators: OpenAI, any OpenAI-compatible server, and Azure OpenAI.

Written from the recorded fixtures (``tests/fixtures/wire/openai``, ``…/azure``) and the wire-format digest:

* OpenAI: ``POST /v1/chat/completions``; SSE ``data:`` events only, ``data: [DONE]`` last; every chunk has
  ``usage: null`` and an ``obfuscation`` padding field; the first chunk carries the role (and, in a tool-only
  turn, the first tool-call fragment); tool arguments come as string fragments keyed by ``index``; a finish
  chunk with ``delta: {}``; with ``stream_options.include_usage`` one more chunk with ``choices: []``.
* Azure: ``/openai/deployments/{deployment}/chat/completions?api-version=…`` or the v1 surface
  ``/openai/v1/chat/completions``; ``api-key`` header (or a Bearer token); the stream opens with a
  ``prompt_filter_results`` prelude (``choices: []``, empty id/model/object), content chunks carry full
  ``content_filter_results``, the others ``{}``; keys come out sorted; no obfuscation; usage only when asked.

Both refuse a ``reasoning_effort`` outside the SDK's values with OpenAI's 400 for an invalid value (``param``
``reasoning_effort``, ``code`` ``invalid_value``), and any ``reasoning_effort`` to a model that does not reason
(GPT-4, GPT-3.5: "Unsupported parameter") and an effort an o-series or first GPT-5 model does not take
(``none``; ``minimal`` before GPT-5: "Unsupported value"); which values later models take is not simulated. Both
refuse what a model cannot take or the API cannot read, in the API's words (``_model_refusal``,
``_tool_name_refusal``): a function name outside ``^[a-zA-Z0-9_-]{1,64}$``, an image to a model that cannot see,
a data URL image of a type other than PNG, JPEG, GIF or WebP. An alias is answered with its dated snapshot in
``model`` (``OPENAI_SNAPSHOTS``), as recorded (``gpt-4o`` → ``gpt-4o-2024-08-06``); Azure names the snapshot of
the model a deployment serves. An OpenAI-compatible server checks none of these.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from gtl_nb.sim.answers import Answer
from gtl_nb.sim.base import FIXED_EPOCH, SimContext, SimRequest, SimResponse, json_response, name_within
from gtl_nb.sim.schemas import schema_problem
from gtl_nb.sim.tokens import Rates, Tally, data_url_bytes, openai_image_tokens

__all__ = [
    "OPENAI_CONTEXT_WINDOWS",
    "OPENAI_MODELS",
    "OPENAI_SNAPSHOTS",
    "AzureSim",
    "OpenAICompatibleSim",
    "OpenAISim",
]

#: The chat models of the simulated OpenAI account (and the deployments of the simulated Azure resource).
OPENAI_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4o-2024-08-06",
    "gpt-4o-2024-11-20",
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4-turbo",
    "gpt-3.5-turbo",
    "o1",
    "o3",
    "o3-mini",
    "o4-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-5.1",
    "gpt-5.4",
    "gpt-5.4-mini",
    "gpt-5.4-nano",
    "gpt-5.5",
)
#: The context windows (tokens) of those models, as the model catalog gives them; a model missing here has
#: no limit in the simulator. A prompt over its window is the API's 400 ``context_length_exceeded``.
OPENAI_CONTEXT_WINDOWS: dict[str, int] = {
    **dict.fromkeys(
        ("gpt-4o-mini", "gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20", "gpt-4o-mini-2024-07-18"), 128000
    ),
    **dict.fromkeys(("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"), 1047576),
    **dict.fromkeys(("o3", "o4-mini"), 200000),
    **dict.fromkeys(("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5.4-mini", "gpt-5.4-nano"), 400000),
    **dict.fromkeys(("gpt-5.4", "gpt-5.5"), 1050000),
}
#: The dated snapshot an alias stands for, which the API names in its answer's ``model`` (the recorded
#: answers: ``gpt-4o`` → ``gpt-4o-2024-08-06``, ``gpt-4o-mini`` → ``gpt-4o-mini-2024-07-18``, ``gpt-4.1-nano`` →
#: ``gpt-4.1-nano-2025-04-14``; the others as OpenAI's model pages date them). A name not here is answered as asked.
OPENAI_SNAPSHOTS: dict[str, str] = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "o1": "o1-2024-12-17",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
}
#: The account's models that do not reason (every GPT-4 and GPT-3.5 model): ``reasoning_effort`` sent to one is
#: the API's 400 "Unsupported parameter".
_NOT_REASONING = ("gpt-4", "gpt-3.5")
#: The efforts the account's older reasoning models take (the API's 400 "Unsupported value" names them for any
#: other): the o-series low to high, the first GPT-5 models ``minimal`` too; neither takes ``none``, which came
#: with GPT-5.1. A reasoning model not here (GPT-5.1 and later) is not checked: which of the values it takes is
#: not simulated. Keyed by the name as asked, its dated snapshot included.
_EFFORTS_TAKEN: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "o1",
            "o1-2024-12-17",
            "o3",
            "o3-2025-04-16",
            "o3-mini",
            "o3-mini-2025-01-31",
            "o4-mini",
            "o4-mini-2025-04-16",
        ),
        ("low", "medium", "high"),
    ),
    **dict.fromkeys(
        ("gpt-5", "gpt-5-2025-08-07", "gpt-5-mini", "gpt-5-mini-2025-08-07", "gpt-5-nano", "gpt-5-nano-2025-08-07"),
        ("minimal", "low", "medium", "high"),
    ),
}
#: The account's models that cannot see: an ``image_url`` part sent to one is the API's 400 "Invalid content
#: type" (o3-mini and GPT-3.5 take text only).
_BLIND = frozenset(("gpt-3.5-turbo", "o3-mini"))
#: The image types the API reads (its 400 "You uploaded an unsupported image" names them).
_IMAGE_TYPES = frozenset(("image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp"))
_LONGEST_TOOL_NAME = 64
#: what an OpenAI-compatible server lists when it was given no names (it accepts any)
_COMPATIBLE_LISTED = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini")
# Framing measured on the recorded usage: 3 tokens per message and 3 to prime the reply; tools are rendered
# as a compact type declaration (a few tokens per function and per parameter).
_RATES = Rates(per_request=3, per_message=3, per_part=5, with_tools=16, per_tool=7, per_property=3)
_SSE_TYPE = "text/event-stream; charset=utf-8"
_SAFE = {"filtered": False, "severity": "safe"}
_FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_AZURE_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_AZURE_DEPLOYMENT_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_AZURE_OVERLOADED = (
    "That model is currently overloaded with other requests. You can retry your request, or contact us "
    "through an Azure support request at: https://go.microsoft.com/fwlink/?linkid=2213926 if the error "
    "persists."
)


def _compact(obj: Any, *, sort: bool = False) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=sort).encode("utf-8")


def _text_of(content: Any) -> str:
    """The text of a Chat Completions ``content`` (a string, a list of parts, or null)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _tally_message(tally: Tally, message: dict[str, Any]) -> None:
    """Add one Chat Completions message to ``tally``: its text and image parts, name and tool calls."""
    tally.messages += 1
    content = message.get("content")
    if isinstance(content, str):
        tally.texts.append(content)
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            tally.texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
            tally.image(data_url_bytes(url) if isinstance(url, str) else None)
    if isinstance(message.get("name"), str):
        tally.texts.append(message["name"])
    if message.get("role") == "tool":
        tally.parts += 1
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            tally.parts += 1
            tally.texts.append(str(function.get("name", "")))
            tally.values.append(_parsed(function.get("arguments")))


def _parsed(arguments: Any) -> Any:
    """Tool-call arguments as a value (their JSON text parsed when it parses)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _structured(response_format: Any) -> dict[str, Any] | None:
    """The schema the answer must follow: ``json_schema``'s, ``{}`` for ``json_object``, else ``None``."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return {}
    wrapper = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(wrapper, dict):
        schema = wrapper.get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


_FORMAT_TYPES = ("text", "json_object", "json_schema")
#: ``reasoning_effort``'s values (the OpenAI SDK's ``ReasoningEffort``): anything else is refused as the API
#: refuses a value; which of them a model takes is ``_model_refusal``'s (``_EFFORTS_TAKEN``).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


def _reasoning_effort_refusal(effort: Any) -> dict[str, Any] | None:
    """The API's 400 for a ``reasoning_effort`` it does not know (the shape of its other invalid values)."""
    if effort is None or effort in REASONING_EFFORTS:
        return None
    listed = ", ".join(repr(value) for value in REASONING_EFFORTS[:-1]) + f", and {REASONING_EFFORTS[-1]!r}"
    shown = repr(effort) if isinstance(effort, str) else json.dumps(effort)
    return _error(
        f"Invalid value: {shown}. Supported values are: {listed}.",
        "invalid_request_error",
        "invalid_value",
        "reasoning_effort",
    )


def _response_format_refusal(response_format: Any) -> dict[str, Any] | None:
    """The API's 400 for a ``response_format`` it cannot read: a type it does not know, a
    ``json_schema`` type without its ``json_schema``, or a strict schema whose objects are not all
    closed and fully required (``sim.schemas``); else ``None``."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind is None:
        return _error(
            "Missing required parameter: 'response_format.type'.",
            "invalid_request_error",
            "missing_required_parameter",
            "response_format.type",
        )
    if kind not in _FORMAT_TYPES:
        return _error(
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', and 'json_schema'.",
            "invalid_request_error",
            "invalid_value",
            "response_format.type",
        )
    wrapper = response_format.get("json_schema")
    if kind == "json_schema" and not isinstance(wrapper, dict):
        return _error(
            "Missing required parameter: 'response_format.json_schema'.",
            "invalid_request_error",
            "missing_required_parameter",
            "response_format.json_schema",
        )
    if not isinstance(wrapper, dict) or wrapper.get("strict") is not True:
        return None
    problem = schema_problem(wrapper.get("schema"), every_property_required=True)
    if problem is None:
        return None
    message = f"Invalid schema for response_format '{wrapper.get('name')}': {problem}"
    return _error(message, "invalid_request_error", None, "response_format")


def _tool_history_refusal(messages: Any) -> dict[str, Any] | None:
    """The API's 400 for a tool history it cannot pair, or ``None``. Read in order, the first fault wins:

    * a ``tool`` message with no assistant ``tool_calls`` message before its run of tool messages (an
      orphan result): "messages with role 'tool' must be a response to a preceeding message with
      'tool_calls'", ``param`` the tool message's ``messages.[N].role`` (the service's own spelling, as
      reported in miurla/morphic#136, Haervwe/open-webui-tools#12, run-llama/llama_index#10493 — a tool
      message at index 0 — and sdcb/chats#132);
    * a ``tool`` message answering an id that assistant message did not call: "'tool_call_id' of '…' not
      found in 'tool_calls' of previous message" (dapr/dapr-agents#145; its ``param`` was never quoted,
      ``messages.[N].tool_call_id`` is our assumption);
    * an assistant message whose calls are not all answered by the tool messages right after it (the
      last message of the request included): "An assistant message with 'tool_calls' must be followed by
      tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response
      messages: …", ``param`` the assistant message's ``messages.[N].role`` (router-for-me/CLIProxyAPI#2798,
      sdcb/chats#132).
    """
    if not isinstance(messages, list):
        return None
    called: list[str] | None = None  # the ids of the assistant message the current run of tool messages answers
    answered: set[str] = set()
    caller = 0
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            answer = message.get("tool_call_id")
            if called is None:
                return _error(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                    "'tool_calls'.",
                    "invalid_request_error",
                    None,
                    f"messages.[{index}].role",
                )
            if answer not in called:
                return _error(
                    f"Invalid parameter: 'tool_call_id' of '{answer}' not found in 'tool_calls' of previous message.",
                    "invalid_request_error",
                    None,
                    f"messages.[{index}].tool_call_id",
                )
            answered.add(answer)
            continue
        unanswered = _unanswered(called, answered)
        if unanswered is not None:
            return _unanswered_calls(unanswered, caller)
        calls = message.get("tool_calls") if role == "assistant" else None
        called = [c.get("id") for c in calls if isinstance(c, dict)] if isinstance(calls, list) and calls else None
        answered, caller = set(), index
    unanswered = _unanswered(called, answered)
    return _unanswered_calls(unanswered, caller) if unanswered is not None else None


def _unanswered(called: list[str] | None, answered: set[str]) -> list[str] | None:
    missing = [call for call in called or [] if call not in answered]
    return missing or None


def _unanswered_calls(ids: list[str], index: int) -> dict[str, Any]:
    """The API's 400 for an assistant message at ``index`` whose calls ``ids`` have no tool message."""
    return _error(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(map(str, ids))}",
        "invalid_request_error",
        None,
        f"messages.[{index}].role",
    )


def _tool_name_refusal(body: dict[str, Any]) -> dict[str, Any] | None:
    """The API's 400 for a function name outside ``^[a-zA-Z0-9_-]+$`` or over 64 characters, in a tool
    definition (``tools[N].function.name``) or a replayed call (``messages[N].tool_calls[M].function.name``):
    "Invalid '…': string does not match pattern. …", ``code`` ``invalid_value`` (brekkylab/ailoy#109,
    run-llama/llama_index#16093, mcp-use/mcp-use#90); a name too long says "string too long", as the API words
    every string over its limit."""
    named: list[tuple[str, Any]] = []
    for index, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            named.append((f"tools[{index}].function.name", function.get("name")))
    for index, message in enumerate(body.get("messages") or []):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for position, call in enumerate(calls if isinstance(calls, list) else []):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                named.append((f"messages[{index}].tool_calls[{position}].function.name", function.get("name")))
    for param, name in named:
        if name_within(name, _LONGEST_TOOL_NAME):
            continue
        if isinstance(name, str) and len(name) > _LONGEST_TOOL_NAME and name_within(name, len(name)):
            return _error(
                f"Invalid '{param}': string too long. Expected a string with maximum length {_LONGEST_TOOL_NAME}, "
                f"but got a string with length {len(name)} instead.",
                "invalid_request_error",
                "string_above_max_length",
                param,
            )
        return _error(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches the pattern "
            "'^[a-zA-Z0-9_-]+$'.",
            "invalid_request_error",
            "invalid_value",
            param,
        )
    return None


def _image_parts(body: dict[str, Any]) -> Iterator[tuple[int, int, str]]:
    """``(message index, part index, url)`` of every ``image_url`` part of the request's messages."""
    for index, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for position, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("type") == "image_url":
                wrapper = part.get("image_url")
                url = wrapper.get("url") if isinstance(wrapper, dict) else None
                yield index, position, url if isinstance(url, str) else ""


def _model_refusal(body: dict[str, Any], model: str) -> dict[str, Any] | None:
    """The API's 400s for what ``model`` cannot take: ``reasoning_effort`` to a model that does not reason
    ("Unsupported parameter: 'reasoning_effort' is not supported with this model.", ``code``
    ``unsupported_parameter``, the API's wording for a parameter a model lacks, as for ``max_tokens`` on a
    reasoning model), an effort an older reasoning model does not take ("Unsupported value:
    'reasoning_effort' does not support 'none' with this model. Supported values are: …", ``code``
    ``unsupported_value`` — the recorded fixture's code for a value a model refuses, and the wording
    Kilo-Org/cloud#3807 quotes), an image to a model that cannot see ("Invalid content type. image_url is only supported
    by certain models.", ``param`` ``messages.[N].content.[M].type``, ``code`` null — vllm-project/vllm#11629,
    zou-group/textgrad#210), and a data URL of a type the API does not read (``invalid_image_format``,
    STranslate/STranslate#277)."""
    if body.get("reasoning_effort") is not None and model.startswith(_NOT_REASONING):
        return _error(
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            "invalid_request_error",
            "unsupported_parameter",
            "reasoning_effort",
        )
    taken = _EFFORTS_TAKEN.get(model)
    effort = body.get("reasoning_effort")
    if taken is not None and effort is not None and effort not in taken:
        listed = ", ".join(repr(value) for value in taken[:-1]) + f", and {taken[-1]!r}"
        return _error(
            f"Unsupported value: 'reasoning_effort' does not support {effort!r} with this model. Supported values "
            f"are: {listed}.",
            "invalid_request_error",
            "unsupported_value",
            "reasoning_effort",
        )
    for index, position, url in _image_parts(body):
        if model in _BLIND:
            return _error(
                "Invalid content type. image_url is only supported by certain models.",
                "invalid_request_error",
                None,
                f"messages.[{index}].content.[{position}].type",
            )
        declared = url[5 : url.find(";", 5, 100)].strip().lower() if url.startswith("data:") else ""
        if declared.startswith("image/") and declared not in _IMAGE_TYPES:
            return _error(
                "You uploaded an unsupported image. Please make sure your image has of one the following formats: "
                "['png', 'jpeg', 'gif', 'webp'].",
                "invalid_request_error",
                "invalid_image_format",
            )
    return None


def _retry_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _error(message: str, type_: str | None, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _context_length_exceeded(window: int, tokens: int) -> dict[str, Any]:
    """The API's 400 for a prompt over the model's window (the recorded fixture's wording and shape)."""
    return _error(
        f"This model's maximum context length is {window} tokens. However, your messages resulted in {tokens} "
        "tokens. Please reduce the length of the messages.",
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )


class _ChatCompletionsSim:
    """What OpenAI, OpenAI-compatible servers and Azure share: request reading and the answer's chunks."""

    #: whether ``response_format`` is checked as OpenAI's API checks it (an OpenAI-compatible server may
    #: take other types, and ignores ``strict``)
    checks_response_format = True
    #: whether a tool history is paired as OpenAI's API pairs it (every ``tool`` message answers a call of
    #: the assistant message before it, every call is answered); an OpenAI-compatible server may not check
    checks_tool_history = True
    #: whether the request is checked against what the model takes and names (tool names, ``reasoning_effort``,
    #: images, the snapshot answered): an OpenAI-compatible server serves models it does not describe
    checks_models = True

    name = "openai"
    base_path = "/v1"
    overloaded_status = 503
    #: the models' context windows (an OpenAI-compatible server's are whatever it loaded: none known)
    context_windows: dict[str, int] = OPENAI_CONTEXT_WINDOWS

    # -- request reading ------------------------------------------------------------------------------------

    @staticmethod
    def _conversation(body: dict[str, Any]) -> tuple[str, list[str], bool]:
        """(prompt text, tool results of the last turn, whether the last message is from the user)."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        results: list[str] = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.insert(0, _text_of(message.get("content")))
        prompt = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        last_is_user = bool(messages) and messages[-1].get("role") == "user"
        return prompt, results, last_is_user

    @staticmethod
    def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
        choice = body.get("tool_choice")
        tools = [
            t["function"]
            for t in body.get("tools") or []
            if isinstance(t, dict) and t.get("type", "function") == "function" and isinstance(t.get("function"), dict)
        ]
        if choice == "none":
            return []
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            forced = choice["function"].get("name")
            tools = [t for t in tools if t.get("name") == forced] or tools
        return tools

    def _answer(self, body: dict[str, Any], ctx: SimContext) -> Answer:
        prompt, results, last_is_user = self._conversation(body)
        tools = self._tools(body) if last_is_user else []
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        return ctx.answer(
            prompt,
            tools,
            tool_results=results,
            max_tokens=limit if isinstance(limit, int) else None,
            tokens_in=self._input_tokens(body),
            schema=_structured(body.get("response_format")),
            stop=body.get("stop"),
            one_call=body.get("parallel_tool_calls") is False,
        )

    def _input_tokens(self, body: dict[str, Any]) -> int:
        """Every message (system and tool ones too), tool calls, images and the tool definitions."""
        tally = Tally()
        for message in body.get("messages") or []:
            if isinstance(message, dict):
                _tally_message(tally, message)
        tally.tools = [
            t["function"]
            for t in body.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        return tally.total(dataclasses.replace(_RATES, image=openai_image_tokens(str(body.get("model") or ""))))

    def _over_window(self, body: dict[str, Any], model: str, ctx: SimContext) -> dict[str, Any] | None:
        """The 400 body for a request whose input is over ``model``'s context window, else ``None``."""
        window = ctx.context_window(model, self.context_windows)
        if window is None:
            return None
        tokens = self._input_tokens(body)
        return _context_length_exceeded(window, tokens) if tokens > window else None

    def _finish(self, answer: Answer) -> str:
        return "tool_calls" if answer.tool_calls else ("length" if answer.finish == "length" else "stop")

    def _usage(self, answer: Answer) -> dict[str, Any]:
        return {
            "prompt_tokens": answer.tokens_in,
            "completion_tokens": answer.tokens_out,
            "total_tokens": answer.tokens_in + answer.tokens_out,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _tool_call_ids(self, req: SimRequest, ctx: SimContext, answer: Answer) -> list[str]:
        return [ctx.make_id("call_", 24, req.body, i) for i in range(len(answer.tool_calls))]

    def _argument_fragments(self, arguments: dict[str, Any], ctx: SimContext, salt: object) -> list[str]:
        text = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        if len(text) <= 2:
            return [text]
        rnd = ctx.rng("args", salt)
        out, i = [], 0
        while i < len(text):
            n = rnd.randint(1, 6)
            out.append(text[i : i + n])
            i += n
        return out

    def _deltas(self, req: SimRequest, ctx: SimContext, answer: Answer) -> Iterator[tuple[dict[str, Any], bool]]:
        """The stream's deltas in order, each with a flag "carries text" (for Azure's content filter)."""
        first: dict[str, Any] = {"role": "assistant", "content": None if answer.tool_calls else ""}
        ids = self._tool_call_ids(req, ctx, answer)
        fragments: list[tuple[int, dict[str, Any]]] = []
        for k, call in enumerate(answer.tool_calls):
            fragments.append(
                (
                    k,
                    {
                        "index": k,
                        "id": ids[k],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": ""},
                    },
                )
            )
            for piece in self._argument_fragments(call["arguments"], ctx, (req.body, k)):
                fragments.append((k, {"index": k, "function": {"arguments": piece}}))
        if fragments:  # in a tool-only turn the first fragment rides in the role chunk
            first["tool_calls"] = [fragments.pop(0)[1]]
        first["refusal"] = None
        yield first, False
        for piece in answer.pieces:
            yield {"content": piece}, True
        for _, fragment in fragments:
            yield {"tool_calls": [fragment]}, False

    def _non_stream_message(self, req: SimRequest, ctx: SimContext, answer: Answer) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.text if not answer.tool_calls else None,
            "refusal": None,
            "annotations": [],
        }
        if answer.tool_calls:
            ids = self._tool_call_ids(req, ctx, answer)
            message["tool_calls"] = [
                {
                    "id": ids[k],
                    "type": "function",
                    "function": {
                        "name": c["name"],
                        "arguments": json.dumps(c["arguments"], separators=(",", ":")),
                    },
                }
                for k, c in enumerate(answer.tool_calls)
            ]
        return message

    # -- validation shared by both flavours ---------------------------------------------------------------

    def _invalid_body(self, req: SimRequest) -> dict[str, Any] | None:
        if not isinstance(req.json, dict):
            return _error(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
                "us through our help center at help.openai.com.)",
                "invalid_request_error",
                None,
            )
        if "messages" not in req.json:
            return _error(
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                "missing_required_parameter",
                "messages",
            )
        for name, highest in (("temperature", 2), ("top_p", 1)):  # the API's ranges, refused in its words
            value = req.json.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value <= highest:
                above = value > highest
                return _error(
                    f"Invalid '{name}': decimal {'above maximum' if above else 'below minimum'} value. Expected a "
                    f"value {f'<= {highest}' if above else '>= 0'}, but got {value} instead.",
                    "invalid_request_error",
                    "decimal_above_max_value" if above else "decimal_below_min_value",
                    name,
                )
        if "parallel_tool_calls" in req.json and not req.json.get("tools"):  # as the API refuses it
            return _error(
                "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when 'tools' are "
                "specified.",
                "invalid_request_error",
                None,
                "parallel_tool_calls",
            )
        if self.checks_tool_history:
            unpaired = _tool_history_refusal(req.json.get("messages"))
            if unpaired is not None:
                return unpaired
        if self.checks_models:
            misnamed = _tool_name_refusal(req.json)
            if misnamed is not None:
                return misnamed
        effort = _reasoning_effort_refusal(req.json.get("reasoning_effort"))
        if effort is not None:
            return effort
        if not self.checks_response_format:
            return None
        return _response_format_refusal(req.json.get("response_format"))


class OpenAISim(_ChatCompletionsSim):
    """``api.openai.com`` Chat Completions, ``GET /v1/models``, Bearer auth."""

    name = "openai"
    check_key_default = True
    #: the account's models; None accepts any name (an OpenAI-compatible server serves whatever it loaded)
    known_models: tuple[str, ...] | None = OPENAI_MODELS

    # -- routing ---------------------------------------------------------------------------------------------

    def handle(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        denied = self._check_auth(req, ctx)
        if denied is not None:
            return denied
        if req.method == "POST" and req.path == "/v1/chat/completions":
            return self._chat(req, ctx)
        if req.method == "GET" and req.path == "/v1/models":
            return json_response(200, {"object": "list", "data": [self._model(m) for m in self._models(ctx)]})
        if req.method == "GET" and req.path.startswith("/v1/models/"):
            model = req.path[len("/v1/models/") :]
            if self._accepts(model, ctx):
                return json_response(200, self._model(model))
            return self._model_not_found(model)
        return json_response(404, _error(f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None))

    def _check_auth(self, req: SimRequest, ctx: SimContext) -> SimResponse | None:
        if not ctx.options.get("check_key", self.check_key_default):
            return None
        auth = req.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if key == ctx.api_key:
            return None
        if not key:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
                "(with blank username) if you're accessing the API from your browser and are prompted for "
                "a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys."
            )
        else:
            masked = key[:8] + "*" * 3 + key[-4:] if len(key) > 12 else key[:2] + "***"
            message = (
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        return json_response(
            401,
            _error(message, "invalid_request_error", "invalid_api_key"),
            content_type="application/json; charset=utf-8",
        )

    def _models(self, ctx: SimContext) -> list[str]:
        return ctx.models(self.known_models or _COMPATIBLE_LISTED)

    def _accepts(self, model: str, ctx: SimContext) -> bool:
        if self.known_models is None and not ctx.options.get("models"):
            return True
        return ctx.accepts_model(model, self.known_models or ())

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": FIXED_EPOCH, "owned_by": "system"}

    def _model_not_found(self, model: str) -> SimResponse:
        return json_response(
            404,
            _error(
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            ),
        )

    def _headers(self, req: SimRequest, ctx: SimContext) -> dict[str, str]:
        return {
            "x-request-id": ctx.make_id("req_", 32, req.body, alphabet="0123456789abcdef"),
            "openai-processing-ms": "1",
        }

    # -- chat ------------------------------------------------------------------------------------------------

    def _chat(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        problem = self._invalid_body(req)
        if problem is not None:
            return json_response(400, problem)
        body: dict[str, Any] = req.json
        model = body.get("model")
        if not model:
            return json_response(400, _error("you must provide a model parameter", "invalid_request_error", None))
        if not self._accepts(str(model), ctx):
            return self._model_not_found(str(model))
        refused = _model_refusal(body, str(model)) if self.checks_models else None
        if refused is not None:
            return json_response(400, refused, self._headers(req, ctx))
        answered = OPENAI_SNAPSHOTS.get(str(model), str(model)) if self.checks_models else str(model)
        too_long = self._over_window(body, str(model), ctx)
        if too_long is not None:
            return json_response(400, too_long, self._headers(req, ctx))
        answer = self._answer(body, ctx)
        chat_id = ctx.make_id("chatcmpl-", 29, req.body)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            chunks = self._stream(
                req,
                ctx,
                answer,
                chat_id,
                answered,
                include_usage=bool(options.get("include_usage")),
                obfuscate=options.get("include_obfuscation", True) is not False,
            )
            headers = {"content-type": _SSE_TYPE, **self._headers(req, ctx)}
            return SimResponse(200, headers, chunks=chunks)
        payload = {
            "id": chat_id,
            "object": "chat.completion",
            "created": FIXED_EPOCH,
            "model": answered,
            "choices": [
                {
                    "index": 0,
                    "message": self._non_stream_message(req, ctx, answer),
                    "logprobs": None,
                    "finish_reason": self._finish(answer),
                }
            ],
            "usage": self._usage(answer),
            "service_tier": "default",
            "system_fingerprint": "fp_sim0000001",
        }
        return json_response(200, payload, self._headers(req, ctx))

    def _stream(
        self,
        req: SimRequest,
        ctx: SimContext,
        answer: Answer,
        chat_id: str,
        model: str,
        *,
        include_usage: bool,
        obfuscate: bool,
    ) -> list[bytes]:
        rnd = ctx.rng("obfuscation", req.body)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> bytes:
            obj: dict[str, Any] = {
                "id": chat_id,
                "object": "chat.completion.chunk",
                "created": FIXED_EPOCH,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_sim0000001",
                "choices": choices,
                "usage": usage,
            }
            if obfuscate:
                obj["obfuscation"] = "".join(
                    rnd.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                    for _ in range(rnd.randint(2, 16))
                )
            return b"data: " + _compact(obj) + b"\n\n"

        out = [
            chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}], None)
            for delta, _ in self._deltas(req, ctx, answer)
        ]
        finish = self._finish(answer)
        out.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}], None))
        if include_usage:
            out.append(chunk([], self._usage(answer)))
        out.append(b"data: [DONE]\n\n")
        return out

    # -- faults ----------------------------------------------------------------------------------------------

    def error_response(self, status: int, kind: str, retry_after: float | None) -> SimResponse:
        """OpenAI's envelope; 429 ``rate_limit_exceeded`` (retryable) vs ``insufficient_quota`` (not)."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["retry-after"] = _retry_header(retry_after)
            headers["retry-after-ms"] = str(int(retry_after * 1000))
        wait = f"{retry_after:g}s" if retry_after is not None else "20ms"
        if kind == "quota":
            body = _error(
                "You exceeded your current quota, please check your plan and billing details. For more "
                "information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                "insufficient_quota",
            )
        elif kind == "rate_limit" or status == 429:
            body = _error(
                "Rate limit reached for gpt-4o-mini in organization org-SimulatedAccount00000001 "
                "on requests per min (RPM): "
                f"Limit 3, Used 3, Requested 1. Please try again in {wait}. Visit "
                "https://platform.openai.com/account/rate-limits to learn more.",
                "requests",
                "rate_limit_exceeded",
            )
            headers.setdefault("x-ratelimit-reset-requests", wait)
        elif kind == "overloaded":
            body = _error(
                "That model is currently overloaded with other requests. You can retry your "
                "request, or contact us through our help center at help.openai.com if the error "
                "persists.",
                "server_error",
                None,
            )
        elif status >= 500:
            body = _error(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        else:
            body = _error(f"Simulated error (HTTP {status}).", "invalid_request_error", None)
        return json_response(status, body, headers)

    def stream_error_chunk(self, kind: str) -> bytes:
        """OpenAI sends ``data: {"error": …}`` inside a 200 stream."""
        if kind == "rate_limit":
            err = _error("Rate limit reached for requests. Please try again in 1s.", "requests", "rate_limit_exceeded")
        elif kind == "overloaded":
            err = _error(
                "That model is currently overloaded with other requests. You can retry your "
                "request, or contact us through our help center at help.openai.com if the error "
                "persists.",
                "server_error",
                None,
            )
        else:
            err = _error(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        return b"data: " + _compact(err) + b"\n\n"

    def malformed_chunk(self) -> bytes:
        """A well-framed SSE event whose JSON is cut short."""
        return b'data: {"id":"chatcmpl-broken","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"con\n\n'


class OpenAICompatibleSim(OpenAISim):
    """An OpenAI-compatible server (vLLM, LM Studio, …): same wire format, any key accepted by default.

    ``serve("openai_compatible", check_key=True)`` makes it check the Bearer key like OpenAI. Any model name is
    accepted (such a server serves whatever was loaded into it) unless ``models=[...]`` names them.
    """

    name = "openai_compatible"
    check_key_default = False
    known_models = None
    checks_response_format = False
    checks_tool_history = False
    checks_models = False
    context_windows: dict[str, int] = {}


class AzureSim(_ChatCompletionsSim):
    """Azure OpenAI: the classic deployments surface (``api-version`` required) and the v1 surface."""

    name = "azure"
    base_path = ""

    def handle(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        denied = self._check_auth(req, ctx)
        if denied is not None:
            return denied
        match = _AZURE_DEPLOYMENT_PATH.match(req.path)
        if match and req.method == "POST":
            version = req.query.get("api-version")
            if version is None:  # the service answers a missing api-version with a bare 404
                return json_response(404, {"error": {"code": "404", "message": "Resource not found"}})
            if not _AZURE_API_VERSION.match(version):
                return json_response(400, {"error": {"code": "BadRequest", "message": "API version not supported"}})
            return self._chat(req, ctx, match.group(1), version)
        if req.path == "/openai/v1/chat/completions" and req.method == "POST":
            model = req.json.get("model") if isinstance(req.json, dict) else None
            return self._chat(req, ctx, str(model or ""), req.query.get("api-version", "v1"))
        if req.method == "GET" and req.path in ("/openai/models", "/openai/v1/models"):
            models = [self._model(m) for m in self._deployments(ctx)]
            return json_response(200, {"data": models, "object": "list"})
        return json_response(404, {"error": {"code": "404", "message": "Resource not found"}})

    def _check_auth(self, req: SimRequest, ctx: SimContext) -> SimResponse | None:
        key = req.headers.get("api-key")
        auth = req.headers.get("authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()  # the v1 surface and Entra ID tokens use Bearer
        if key == ctx.api_key:
            return None
        if not key:
            message = (
                "Access denied due to missing subscription key. Make sure to include subscription key "
                "when making requests to an API."
            )
        else:
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                "to provide a valid key for an active subscription and use a correct regional API "
                "endpoint for your resource."
            )
        return json_response(401, {"error": {"code": "401", "message": message}})

    def _deployments(self, ctx: SimContext) -> list[str]:
        return ctx.models(OPENAI_MODELS)

    def _model(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created_at": FIXED_EPOCH,
            "status": "succeeded",
            "capabilities": {
                "chat_completion": True,
                "completion": False,
                "embeddings": False,
                "fine_tune": False,
                "inference": True,
            },
            "lifecycle_status": "generally-available",
        }

    def _chat(self, req: SimRequest, ctx: SimContext, deployment: str, version: str) -> SimResponse:
        problem = self._invalid_body(req)
        if problem is not None:
            return json_response(400, problem)
        if not deployment or not ctx.accepts_model(deployment, OPENAI_MODELS):
            return json_response(
                404,
                {
                    "error": {
                        "code": "DeploymentNotFound",
                        "message": "The API deployment for this resource does not exist. If you created the "
                        "deployment within the last 5 minutes, please wait a moment and try again.",
                    }
                },
            )
        body: dict[str, Any] = req.json
        headers = {
            "apim-request-id": ctx.make_id("", 32, req.body, alphabet="0123456789abcdef"),
            "x-ms-region": "Sim Region",
        }
        refused = _model_refusal(body, deployment)  # the simulated deployments are named after their models
        if refused is not None:
            return json_response(400, refused, headers)
        model = OPENAI_SNAPSHOTS.get(deployment, deployment)  # the recorded stream names the model's snapshot
        too_long = self._over_window(body, deployment, ctx)  # the deployment's model decides the window
        if too_long is not None:
            return json_response(400, too_long, headers)
        answer = self._answer(body, ctx)
        chat_id = ctx.make_id("chatcmpl-", 29, req.body)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = self._stream(req, ctx, answer, chat_id, model, include_usage)
            return SimResponse(200, {"content-type": "text/event-stream", **headers}, chunks=chunks)
        payload = {
            "choices": [
                {
                    "content_filter_results": _FILTER_RESULTS if answer.text else {},
                    "finish_reason": self._finish(answer),
                    "index": 0,
                    "logprobs": None,
                    "message": self._non_stream_message(req, ctx, answer),
                }
            ],
            "created": FIXED_EPOCH,
            "id": chat_id,
            "model": model,
            "object": "chat.completion",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}],
            "system_fingerprint": "fp_sim0000001",
            "usage": self._usage(answer),
        }
        return SimResponse(200, {"content-type": "application/json", **headers}, _compact(payload, sort=True))

    def _stream(
        self, req: SimRequest, ctx: SimContext, answer: Answer, chat_id: str, model: str, include_usage: bool
    ) -> list[bytes]:
        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + _compact(obj, sort=True) + b"\n\n"

        def chunk(choice: dict[str, Any]) -> bytes:
            return event(
                {
                    "choices": [choice],
                    "created": FIXED_EPOCH,
                    "id": chat_id,
                    "model": model,
                    "object": "chat.completion.chunk",
                    "system_fingerprint": "fp_sim0000001",
                }
            )

        out = [
            event(
                {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}],
                }
            )
        ]
        for delta, is_text in self._deltas(req, ctx, answer):
            out.append(
                chunk(
                    {
                        "content_filter_results": _FILTER_RESULTS if is_text else {},
                        "delta": delta,
                        "finish_reason": None,
                        "index": 0,
                        "logprobs": None,
                    }
                )
            )
        out.append(
            chunk(
                {
                    "content_filter_results": {},
                    "delta": {},
                    "finish_reason": self._finish(answer),
                    "index": 0,
                    "logprobs": None,
                }
            )
        )
        if include_usage:
            out.append(
                event(
                    {
                        "choices": [],
                        "created": FIXED_EPOCH,
                        "id": chat_id,
                        "model": model,
                        "object": "chat.completion.chunk",
                        "system_fingerprint": "fp_sim0000001",
                        "usage": self._usage(answer),
                    }
                )
            )
        out.append(b"data: [DONE]\n\n")
        return out

    def error_response(self, status: int, kind: str, retry_after: float | None) -> SimResponse:
        """Azure's envelope: 429 with the STRING code "429" and "retry after N seconds", no type."""
        if status == 429 or kind in ("rate_limit", "quota"):
            seconds = max(1, math.ceil(retry_after)) if retry_after is not None else 1
            body: dict[str, Any] = {
                "error": {
                    "code": "429",
                    "message": (
                        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                        "2024-10-21 have exceeded call rate limit of your current OpenAI S0 pricing tier. "
                        f"Please retry after {seconds} seconds. Please go here: "
                        "https://aka.ms/oai/quotaincrease if you would like to further increase the default "
                        "rate limit."
                    ),
                }
            }
            headers = {
                "retry-after": str(seconds),
                "retry-after-ms": str(int((retry_after or seconds) * 1000)),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-remaining-tokens": "0",
            }
            return json_response(status, body, headers)
        if status >= 500:
            message = (
                _AZURE_OVERLOADED
                if kind == "overloaded"
                else "The server had an error while processing your request. Sorry about that!"
            )
            return json_response(status, _error(message, "server_error", None))
        return json_response(status, {"error": {"code": str(status), "message": f"Simulated error (HTTP {status})."}})

    def stream_error_chunk(self, kind: str) -> bytes:
        """An OpenAI-style error object as a ``data:`` payload inside the 200 stream (as recorded)."""
        return b"data: " + _compact(_error(_AZURE_OVERLOADED, "server_error", None)) + b"\n\n"

    def malformed_chunk(self) -> bytes:
        """A well-framed SSE event whose JSON is cut short."""
        return b'data: {"choices":[{"content_filter_results":{},"delta":{"content":"bro\n\n'
