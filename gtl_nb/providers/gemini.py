"""The Google Gemini Developer API dialect (generativelanguage.googleapis.com), sans-I/O.

Request mapping (``build_request``):

* ``POST {base}/{version}/models/{model}:streamGenerateContent?alt=sse`` when streaming, else
  ``:generateContent``; ``base`` is the bare host (``DEFAULT_BASE_URL``; a trailing ``/v1beta`` is
  tolerated), ``version`` is ``deployment.api_version`` or ``v1beta``. A model given as
  ``models/x`` or ``tunedModels/x`` is used as that resource path. Auth: ``x-goog-api-key``;
  ``deployment.headers`` are added last and win.
* ``system`` messages are joined with a blank line into ``systemInstruction``. Other messages
  become ``contents`` turns with roles ``user`` / ``model``; consecutive turns of one role merge.
* Assistant ``tool_calls`` → ``functionCall {name, args, id}`` parts; role ``tool`` results →
  ``functionResponse {name, response, id}`` parts in a user turn. Gemini needs the function
  *name* in the response: it is recovered from the nearest earlier assistant tool call with that
  id (``Message.name`` is the fallback). ``response`` must be a JSON object: a result whose text is
  a JSON object is sent as that object; anything else is wrapped as ``{"result": <value>}`` (the
  parsed JSON value when the text is JSON, else the text). A failed tool's (``tool_error``) is
  ``{"error": <value>}``, the key the API reads as the call's failure.
* Images: ``data:`` URLs → ``inlineData``, other URLs → ``fileData {mimeType, fileUri}`` with the
  MIME type guessed from the extension (default ``image/jpeg``); images precede the text, unless the
  message's ``parts`` give their order.
* ``generationConfig``: temperature, topP, maxOutputTokens, stopSequences (at most 5, the API's limit:
  more is refused, ``NotServedHere``); ``response_format``
  ``json_object`` → ``responseMimeType: application/json``, ``json_schema`` → that plus
  ``responseJsonSchema``; ``request.reasoning`` → ``thinkingConfig {includeThoughts: true}``.
* How hard to think (``thinkingConfig``, with ``reasoning`` or without it — then thoughts are neither
  asked for nor emitted): models named Gemini 3 and later (``_takes_thinking_level``) take
  ``thinkingLevel``, ``low`` or ``high`` — effort ``none``/``minimal``/``low`` → ``low`` (the least they
  think: they cannot stop), ``medium``/``high``/``xhigh``/``max`` → ``high`` (their default), a budget
  alone first converted to an effort (``providers.effort.effort_of``). Earlier models — and a
  ``-latest`` alias, which may still be a 2.5 model (Gemini 3 takes a budget too) — take
  ``thinkingBudget`` in tokens (0: off, which 2.5 Pro refuses in its words): the request's
  ``reasoning_budget`` as given, else its effort converted (``providers.effort.budget_of``) and fitted
  into the model's range where ``THINKING_BUDGETS`` knows it — ``max`` is 2.5 Flash's 24,576, not the
  32,768 the API would refuse it, and ``none`` is 2.5 Pro's least, 128 (it cannot stop) — since the
  number is the dialect's choice, not the caller's. Never both —
  the API refuses ``thinkingLevel`` with ``thinkingBudget``. A request that gives neither gets
  ``thinkingBudget`` from ``deployment.options["thinking_budget"]`` when set and it asks for
  reasoning, else the model's own thinking.
* tools → ``[{functionDeclarations: [{name, description, parametersJsonSchema}]}]``; tool_choice →
  ``toolConfig.functionCallingConfig`` (auto → AUTO, none → NONE, required → ANY, a name → ANY +
  ``allowedFunctionNames``), sent only with tools.

``provider_data`` (exposed by the decoder after the terminal event, replayed by
``build_request``): every ``thoughtSignature`` with a stub of the part it came on::

    {"gemini": {"parts": [
        {"functionCall": {"name": "get_country", "id": "call_0"}, "thoughtSignature": "…"},
        {"text": "", "thoughtSignature": "…"},
    ]}}

On replay a function-call signature goes back on the ``functionCall`` part with that id (or that
name). Gemini 3 and later refuse a turn's function calls replayed without their signature (400
"Function call is missing a thought_signature"): where an assistant message has none to give back — a
history another provider answered, one a caller wrote or one that came through a compatible endpoint
that could not carry it — the first call of the message is sent with Google's documented stand-in
``skip_thought_signature_validator`` (``SKIP_SIGNATURE``), which the API accepts in its place (the
model then continues without its earlier reasoning). A signature that came on an empty trailing text
part is re-sent as such a part at the end of the turn; one on a non-empty text part goes on the turn's
text part. Signatures on ``thought``
parts are kept but not replayed (thought text is not part of the assistant message).

Decoding: SSE (CRLF separators, no ``[DONE]``; the stream ends at EOF after a chunk with
``finishReason``), or a JSON body — one response object, or the streamed JSON array that
``streamGenerateContent`` returns without ``alt=sse``. The mode is sniffed from the first byte.
Function calls arrive whole; when Gemini sends no id, a deterministic one is made:
``call_<responseId>_<n>`` (``call_<n>`` without a responseId) so ids stay unique across turns.
Usage is the last ``usageMetadata`` snapshot: ``tokens_in = promptTokenCount (+
toolUsePromptTokenCount)``, ``tokens_out = candidatesTokenCount + thoughtsTokenCount``.
``finishReason``: STOP → stop (tool_calls when a function call came), MAX_TOKENS → length, safety
family → content_filter, others → other. A blocked prompt (``promptFeedback.blockReason``, no
candidates) ends with ``done`` / content_filter, like a candidate stopped for SAFETY: HTTP 200
responses end in ``done``; the caller sees an empty answer and the reason.

Errors: 400 ``API_KEY_INVALID`` → AUTH_FAILED; "input token count … exceeds" →
CONTEXT_LENGTH_EXCEEDED; 403 → FORBIDDEN; 404 → MODEL_NOT_FOUND; 429 → RATE_LIMIT, retryable
unless a ``QuotaFailure`` names a per-day quota, ``retry_after`` from ``RetryInfo.retryDelay``;
500 → INTERNAL, 503 → OVERLOADED, 504 → TIMEOUT (all retryable). Bodies may be array-wrapped. Error
bodies are read from a bounded prefix; a stream or body the decoder cannot read (not JSON, too deep, too
large, an unexpected shape) ends with a retryable PROVIDER_UNAVAILABLE ``error`` (``GuardedDecoder``).

Token counting (``count_request`` / ``parse_count``): ``POST {base}/{version}/models/{model}:countTokens``
with the ``generateContent`` body as its ``generateContentRequest`` (the model named inside it too), the
stop sequences left out; the answer's ``totalTokens`` is the count (``Engine.count_tokens``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msgspec

from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    FinishReason,
    Message,
    Reasoning,
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
    arguments_object,
    code_for_status,
    encode_body,
    ends_response,
    error_boundary,
    error_event,
    finite_seconds,
    parse_json_body,
    parse_tool_choice,
    path_segment,
    refuse_empty_turn,
    refuse_one_call_at_most,
    refuse_stop_sequences,
    retry_after_seconds,
    retryable_for_status,
    split_data_url,
)
from gtl_nb.providers.effort import asked_effort, budget_of
from gtl_nb.providers.limits import error_body_json, error_body_text, parse_json
from gtl_nb.providers.sse import SSEDecoder

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_API_VERSION = "v1beta"
DEFAULT_IMAGE_MIME = "image/jpeg"

_MIME_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
    "pdf": "application/pdf",
}
_FILTER_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_CONTEXT_PHRASE = "input token count"
SKIP_SIGNATURE = "skip_thought_signature_validator"
"""Google's stand-in for a function call's lost ``thoughtSignature``, which Gemini 3 checks (module docstring)."""
_MAJOR_VERSION = re.compile(r"gemini-(\d{1,3})")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)s")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def finish_reason(reason: str | None, *, saw_function_call: bool, blocked: bool = False) -> FinishReason:
    """Gemini ``finishReason`` (or a prompt ``blockReason``) → GTL ``finish_reason``."""
    if reason is None and blocked:
        return "content_filter"
    if reason == "STOP":
        return "tool_calls" if saw_function_call else "stop"
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTER_REASONS:
        return "content_filter"
    return "other"


# ----------------------------------------------------------------------------------------------
# Request building


def _base_url(deployment: Deployment) -> str:
    base = (deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
    for suffix in ("/v1beta", "/v1"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _version(deployment: Deployment) -> str:
    return (deployment.api_version or DEFAULT_API_VERSION).strip("/")


def _headers(deployment: Deployment, *, json_body: bool) -> dict[str, str]:
    headers: dict[str, str] = {"content-type": "application/json"} if json_body else {}
    if deployment.api_key:
        headers["x-goog-api-key"] = deployment.api_key
    headers.update(deployment.headers)
    return headers


def _model_path(model: str) -> str:
    """``models/{model}``, or a resource path the model names itself (``tunedModels/…``): each segment
    encoded on its own, none of them ``.`` or ``..`` (``path_segment``)."""
    segments = model.split("/") if "/" in model else ["models", model]
    return "/".join(path_segment(segment) for segment in segments)


def _image_part(url: str) -> dict[str, Any]:
    inline = split_data_url(url, url_safe=True)  # (as the recorded traffic of Google's own SDK)
    if inline is not None:
        mime, data = inline
        return {"inlineData": {"mimeType": mime, "data": data}}
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"fileData": {"mimeType": _MIME_BY_EXTENSION.get(extension, DEFAULT_IMAGE_MIME), "fileUri": url}}


def _tool_response(content: str | None, *, failed: bool = False) -> dict[str, Any]:
    """A tool result as the JSON object ``functionResponse.response`` must be; a failed tool's
    (``tool_error``) under the ``error`` key, which the API reads as the call's failure."""
    value: Any = content
    if content is not None:
        try:
            value = parse_json(content, "tool result")  # a tool's output: depth and size limited too
        except ValueError:
            value = content
    if failed:  # an error with nothing to say (no text: an image alone, say) still says it failed
        return {"error": value if value not in (None, "") else "the tool failed"}
    return value if isinstance(value, dict) else {"result": value}


def _function_args(call: ToolCall) -> dict[str, Any]:
    try:
        return arguments_object(call)
    except ValueError as exc:
        raise InvalidRequestError(f"tool call {call.id!r}: arguments are not a JSON object") from exc


def _apply_signatures(parts: list[dict[str, Any]], provider_data: dict[str, Any] | None) -> None:
    """Put replayed ``thoughtSignature`` values back on the parts they came on (a stub of another shape —
    ``provider_data`` may come from a client — is passed over)."""
    gemini = (provider_data or {}).get("gemini")
    stubs = gemini.get("parts") if isinstance(gemini, dict) else None
    for stub in stubs if isinstance(stubs, list) else ():
        signature = stub.get("thoughtSignature") if isinstance(stub, dict) else None
        if not isinstance(signature, str) or not signature or stub.get("thought"):
            continue
        if isinstance(stub.get("functionCall"), dict):
            wanted = stub["functionCall"]
            calls = [p for p in parts if "functionCall" in p and "thoughtSignature" not in p]
            by_id = [p for p in calls if p["functionCall"].get("id") == wanted.get("id")]
            by_name = [p for p in calls if p["functionCall"]["name"] == wanted.get("name")]
            target = (by_id or by_name or [None])[0]
            if target is not None:
                target["thoughtSignature"] = signature
        elif isinstance(stub.get("text"), str):
            target = None
            if stub["text"]:
                target = next((p for p in parts if "text" in p and "thoughtSignature" not in p), None)
            if target is None:
                parts.append({"text": stub["text"], "thoughtSignature": signature})
            else:
                target["thoughtSignature"] = signature


LEVELS = {
    "none": "low",
    "minimal": "low",
    "low": "low",
    "medium": "high",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
"""Gemini 3's ``thinkingLevel`` for each effort: the two levels every Gemini 3 model takes (module docstring)."""


def checks_signatures(model: str) -> bool:
    """Whether ``model`` (by its name: the last segment of a resource path, any letter case) is Gemini 3 or
    later, which refuses function calls replayed unsigned — or a ``-latest`` alias, which Google moves to
    its newest models (the stand-in is harmless where it is not checked)."""
    name = model.rpartition("/")[2].lower()
    found = _MAJOR_VERSION.match(name)
    if found is None:
        return name.startswith("gemini-") and name.endswith("-latest")
    return int(found.group(1)) >= 3


def _takes_thinking_level(model: str) -> bool:
    """Whether ``model`` is named as Gemini 3 or later, which take ``thinkingLevel``. A ``-latest`` alias is
    not: it may still be a Gemini 2.5 model, which refuses the level, while Gemini 3 takes a budget too."""
    found = _MAJOR_VERSION.match(model.rpartition("/")[2].lower())
    return found is not None and int(found.group(1)) >= 3


def _parts(message: Message, names: Mapping[str, str], *, signed_calls: bool = False) -> list[dict[str, Any]]:
    """The parts of one non-system message; ``names`` maps tool-call ids seen so far to names;
    ``signed_calls``: the model wants a signature on an assistant message's first function call."""
    if message.role == "assistant":
        parts: list[dict[str, Any]] = [{"text": message.content}] if message.content else []
        for call in message.tool_calls:
            parts.append({"functionCall": {"name": call.name, "args": _function_args(call), "id": call.id}})
        _apply_signatures(parts, message.provider_data)
        if signed_calls and message.tool_calls:
            first_call = next(part for part in parts if "functionCall" in part)
            first_call.setdefault("thoughtSignature", SKIP_SIGNATURE)
        return parts
    images = [_image_part(url) for url in message.images]
    if message.role == "tool":
        call_id = message.tool_call_id or ""
        name = names.get(call_id) or message.name
        if not name:
            raise InvalidRequestError(
                f"tool result {call_id!r}: no earlier assistant tool call has this id, and the message "
                "has no name; Gemini needs the function name"
            )
        response = {"name": name, "response": _tool_response(message.content, failed=message.tool_error)}
        if call_id:
            response["id"] = call_id
        return [{"functionResponse": response}, *images]
    ordered = message.in_order()
    if ordered is not None:  # text and images in the order of the message's parts
        return [_image_part(value) if kind == "image" else {"text": value} for kind, value in ordered]
    return images + ([{"text": message.content}] if message.content else [])


def convert_messages(messages: list[Message], *, signed_calls: bool = False) -> tuple[str | None, list[dict[str, Any]]]:
    """GTL messages → (``systemInstruction`` text, Gemini ``contents``); ``signed_calls`` as ``_parts``'."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # the nearest earlier assistant call wins when ids repeat
    for index, message in enumerate(messages):
        if message.role == "system":
            if message.content:
                system.append(message.content)
            continue
        parts = _parts(message, names, signed_calls=signed_calls)
        if message.role == "assistant":
            names.update({call.id: call.name for call in message.tool_calls})
        if not parts:
            refuse_empty_turn(message, index, "Gemini's API")
            continue
        role = "model" if message.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return ("\n\n".join(system) or None), contents


def _tool_config(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    parsed = parse_tool_choice(choice)
    if parsed is None:
        return None
    if parsed.mode == "tool":
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [parsed.name]}}
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    return {"functionCallingConfig": {"mode": modes[parsed.mode]}}


def _generation_config(request: CompletionRequest, deployment: Deployment) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.stop:
        refuse_stop_sequences(request, "Gemini", most=5)  # "up to 5", its API reference says
        config["stopSequences"] = list(request.stop)
    response_format = request.response_format or {}
    kind = response_format.get("type")
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if kind == "json_schema":
        wrapper = response_format.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, dict) else response_format.get("schema")
        if isinstance(schema, dict):
            config["responseJsonSchema"] = schema
    thinking = _thinking_config(request, deployment)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


THINKING_BUDGETS: tuple[tuple[str, int, int, bool], ...] = (
    ("gemini-2.5-flash-lite", 512, 24576, True),
    ("gemini-2.5-flash", 1, 24576, True),
    ("gemini-2.5-pro", 128, 32768, False),
)
"""Gemini 2.5's ``thinkingBudget`` ranges, from Google's thinking guide: model-name prefix (the longest
first) → least, most, and whether 0 turns thinking off. An effort converted to a budget is fitted into
them (``_fitted``); a budget the request gives is sent as given, the API's to refuse."""


def _fitted(budget: int, model: str) -> int:
    """An effort's ``budget`` as ``model`` takes it: within its range, 0 its least where it cannot stop."""
    name = model.rpartition("/")[2].lower()
    for prefix, least, most, stops in THINKING_BUDGETS:
        if name.startswith(prefix):
            return 0 if budget == 0 and stops else min(max(budget, least), most)
    return budget


def _thinking_config(request: CompletionRequest, deployment: Deployment) -> dict[str, Any]:
    """``thinkingConfig`` (module docstring): thoughts when asked, and the level or the budget, never both."""
    thinking: dict[str, Any] = {"includeThoughts": True} if request.reasoning else {}
    effort = asked_effort(request)
    if effort is not None and _takes_thinking_level(request.model):
        thinking["thinkingLevel"] = LEVELS[effort]
    elif request.reasoning_budget is not None:
        thinking["thinkingBudget"] = request.reasoning_budget
    elif effort is not None:
        thinking["thinkingBudget"] = _fitted(budget_of(effort), request.model)
    elif request.reasoning and deployment.options.get("thinking_budget") is not None:
        thinking["thinkingBudget"] = int(deployment.options["thinking_budget"])
    return thinking


def build_body(request: CompletionRequest, deployment: Deployment) -> dict[str, Any]:
    """The JSON body of a ``generateContent`` / ``streamGenerateContent`` call."""
    system, contents = convert_messages(request.messages, signed_calls=checks_signatures(request.model))
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    config = _generation_config(request, deployment)
    if config:
        body["generationConfig"] = config
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name, "parametersJsonSchema": tool.parameters}
            if tool.description:
                declaration["description"] = tool.description
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
        refuse_one_call_at_most(request, "Gemini")
        tool_config = _tool_config(request.tool_choice)
        if tool_config is not None:
            body["toolConfig"] = tool_config
    return body


# ----------------------------------------------------------------------------------------------
# Errors


def _retry_delay(details: Any) -> float | None:
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.fullmatch(str(detail.get("retryDelay", "")).strip())
            if match:
                return finite_seconds(match.group(1))
    return None


def says_context_exceeded(message: str) -> bool:
    """True for Gemini's context-length wording: "input token count … exceeds" on one line, or "exceeds
    the maximum number of tokens". Plain substring searches: linear in the message, whatever it holds."""
    lowered = message.lower()
    if "exceeds the maximum number of tokens" in lowered:
        return True
    for line in lowered.split("\n"):
        start = line.find(_CONTEXT_PHRASE)
        if start >= 0 and line.find("exceeds", start + len(_CONTEXT_PHRASE)) >= 0:
            return True
    return False


def _daily_quota(details: list[Any]) -> bool:
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            for violation in detail.get("violations") or []:
                if isinstance(violation, dict) and "PerDay" in str(violation.get("quotaId", "")):
                    return True
    return False


def classify_error(status: int, error: dict[str, Any]) -> tuple[str, bool]:
    """The GTL code and retryability of a Gemini ``error`` object answered with ``status``."""
    if status == 200 and isinstance(error.get("code"), int):
        status = error["code"]  # an error inside a 200 stream carries its own code
    rpc_status = error.get("status")
    message = str(error.get("message") or "")
    details = error.get("details") if isinstance(error.get("details"), list) else []
    reasons = {d.get("reason") for d in details if isinstance(d, dict) and isinstance(d.get("reason"), str)}
    if "API_KEY_INVALID" in reasons or status == 401 or rpc_status == "UNAUTHENTICATED":
        return "AUTH_FAILED", False
    if says_context_exceeded(message):
        return "CONTEXT_LENGTH_EXCEEDED", False
    if status == 403 or rpc_status == "PERMISSION_DENIED":
        return "FORBIDDEN", False
    if status == 404 or rpc_status == "NOT_FOUND":
        return "MODEL_NOT_FOUND", False
    if status == 429 or rpc_status == "RESOURCE_EXHAUSTED":
        return "RATE_LIMIT", not _daily_quota(details)
    if status == 500 or rpc_status == "INTERNAL":
        return "INTERNAL", True
    if status == 503 or rpc_status == "UNAVAILABLE":
        return "OVERLOADED", True
    if status == 504 or rpc_status == "DEADLINE_EXCEEDED":
        return "TIMEOUT", True
    return code_for_status(status), retryable_for_status(status)


def _error_object(data: Any) -> dict[str, Any] | None:
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


# ----------------------------------------------------------------------------------------------
# Response decoding


def _str(value: Any) -> str | None:
    """A string field of the wire, or ``None`` for anything else (or an empty string)."""
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _total(values: list[int | None]) -> int | None:
    """The sum of the counts that were sent; ``None`` when none was."""
    return None if all(v is None for v in values) else sum(v or 0 for v in values)


class GeminiDecoder(GuardedDecoder):
    """Decodes one 2xx Gemini body: SSE, or JSON (one object or a streamed array) parsed at close.

    A non-streaming request gets one ``token`` with the whole text (and one ``reasoning``).
    ``provider_data`` holds the thought signatures once seen.
    """

    def __init__(self, request: CompletionRequest, deployment: Deployment) -> None:
        super().__init__(request, deployment)
        self._sid = request.session_id
        self._sse = SSEDecoder()
        self._sniffer = BodySniffer(request.stream, json_starts=b"{[")  # a JSON array without alt=sse
        self._collect = not request.stream
        self._text: list[str] = []
        self._thoughts: list[str] = []
        self._calls: list[StreamEvent] = []
        self._signatures: list[dict[str, Any]] = []
        self._usage: dict[str, Any] | None = None
        self._finish_reason: str | None = None
        self._blocked = False
        self._model: str | None = None
        self._call_count = 0
        self._finished = False

    @property
    def provider_data(self) -> dict[str, Any] | None:
        """Thought signatures to replay (see the module docstring), or ``None``."""
        return {"gemini": {"parts": list(self._signatures)}} if self._signatures else None

    def _feed(self, chunk: bytes) -> list[StreamEvent]:
        """The events completed by ``chunk`` (JSON bodies wait for ``close``)."""
        if self._finished:
            return []
        stream = self._sniffer.route(chunk)
        return [] if stream is None else self._on_sse([event.data for event in self._sse.feed(stream)])

    def _close(self) -> list[StreamEvent]:
        """End of body: the remaining events, ending in ``done`` or ``error``."""
        if self._finished:
            return []
        if self._sniffer.mode is None:
            return [self._fail("PROVIDER_UNAVAILABLE", "empty response body from Gemini")]
        if self._sniffer.mode == "json":
            events = self._on_json(bytes(self._sniffer.body))
        else:
            events = self._on_sse([event.data for event in self._sse.close()])
        if self._finished or ends_response(events):
            return events
        if self._finish_reason is None and not self._blocked:
            problem = "stream ended early: no chunk with a finishReason"
            self.ended_early = True
            events.append(self._fail("PROVIDER_UNAVAILABLE", problem))
            return events
        return events + self._finish()

    # -- chunks -----------------------------------------------------------------------------

    def _on_sse(self, payloads: list[str]) -> list[StreamEvent]:
        return self._each(payloads, self._on_payload)

    def _on_payload(self, payload: str) -> list[StreamEvent]:
        if self._finished or not payload.strip():
            return []
        return self._on_chunk(parse_json(payload, "malformed Gemini stream chunk"))

    def _on_json(self, body: bytes) -> list[StreamEvent]:
        data = parse_json_body(body)
        if data is None:
            return [self._fail("PROVIDER_UNAVAILABLE", "Gemini response body is not valid JSON (cut short?)")]
        chunks = data if isinstance(data, list) else [data]
        events: list[StreamEvent] = []
        for chunk in chunks:
            if self._finished:
                break
            events.extend(self._on_chunk(chunk))
        return events

    def _on_chunk(self, chunk: Any) -> list[StreamEvent]:
        if not isinstance(chunk, dict):
            return [self._fail("PROVIDER_UNAVAILABLE", "malformed Gemini response: not a JSON object")]
        if isinstance(chunk.get("error"), dict):
            return [self._stream_error(chunk["error"])]
        if isinstance(chunk.get("usageMetadata"), dict):
            self._usage = chunk["usageMetadata"]  # a snapshot: the last one wins, never summed
        self._model = _str(chunk.get("modelVersion")) or self._model
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self._blocked = True
        candidates = chunk.get("candidates")
        if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
            return []
        candidate = candidates[0]  # one candidate is requested (candidateCount defaults to 1)
        events: list[StreamEvent] = []
        response_id = _ID_UNSAFE.sub("", str(chunk.get("responseId") or ""))
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict):
                events.extend(self._on_part(part, response_id))
            if self._finished:
                break
        if _str(candidate.get("finishReason")):
            self._finish_reason = candidate["finishReason"]
        return events

    def _on_part(self, part: dict[str, Any], response_id: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        stub: dict[str, Any] = {}
        if isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            args = call.get("args") if call.get("args") is not None else {}
            if not isinstance(args, dict):
                problem = f"function call {call.get('name')!r}: args is not a JSON object"
                return [self._fail("PROVIDER_UNAVAILABLE", problem)]
            prefix = f"call_{response_id}_" if response_id else "call_"
            call_id = str(call.get("id") or f"{prefix}{self._call_count}")
            self._call_count += 1
            arguments = json.dumps(args, ensure_ascii=False)
            tool_call = ToolCall(id=call_id, name=str(call.get("name") or ""), arguments=arguments)
            event = ToolCallEvent(session_id=self._sid, function=tool_call)
            (self._calls if self._collect else events).append(event)
            stub = {"functionCall": {"name": tool_call.name, "id": call_id}}
        elif isinstance(part.get("text"), str):
            text = part["text"]
            if part.get("thought"):
                stub = {"text": text, "thought": True}
                if text and self._request.reasoning:
                    self._emit(events, self._thoughts, Reasoning, text)
            else:
                stub = {"text": text}
                if text:
                    self._emit(events, self._text, Token, text)
        if part.get("thoughtSignature"):
            self._signatures.append({**stub, "thoughtSignature": part["thoughtSignature"]})
        return events

    def _emit(self, events: list[StreamEvent], store: list[str], kind: type, text: str) -> None:
        if self._collect:
            store.append(text)
        else:
            events.append(kind(session_id=self._sid, text=text))

    def _fail(self, code: str, message: str) -> Error:
        self._finished = True
        return error_event(self._request, self._deployment, code, message)

    def _stream_error(self, error: dict[str, Any]) -> Error:
        self._finished = True
        code, retryable = classify_error(200, error)
        message = str(error.get("message") or "error object in Gemini response")
        return error_event(
            self._request,
            self._deployment,
            code,
            message,
            retryable=retryable,
            retry_after=_retry_delay(error.get("details")),
            http_status=200,
        )

    def _finish(self) -> list[StreamEvent]:
        self._finished = True
        events: list[StreamEvent] = []
        if self._thoughts:
            events.append(Reasoning(session_id=self._sid, text="".join(self._thoughts)))
        if self._text:
            events.append(Token(session_id=self._sid, text="".join(self._text)))
        events.extend(self._calls)
        usage = self._usage or {}
        prompt = [_count(usage.get(k)) for k in ("promptTokenCount", "toolUsePromptTokenCount")]
        output = [_count(usage.get(k)) for k in ("candidatesTokenCount", "thoughtsTokenCount")]
        events.append(
            Usage(
                session_id=self._sid,
                tokens_in=_total(prompt),
                tokens_out=_total(output),
                cached_tokens_in=_count(usage.get("cachedContentTokenCount")),
                reasoning_tokens_out=_count(usage.get("thoughtsTokenCount")),
            )
        )
        reason = finish_reason(self._finish_reason, saw_function_call=self._call_count > 0, blocked=self._blocked)
        events.append(
            Done(
                session_id=self._sid,
                finish_reason=reason,
                provider=self._deployment.name,
                model=self._model or self._request.model,
            )
        )
        return events


# ----------------------------------------------------------------------------------------------
# The dialect


class GeminiDialect:
    """Google Gemini Developer API (see the module docstring for every mapping decision)."""

    name: ClassVar[str] = "gemini"
    needs: ClassVar[ProviderNeeds] = ProviderNeeds(
        env={"api_key": ("GEMINI_API_KEY", "GOOGLE_API_KEY")},
        requires=(API_KEY,),
        implied_by=(("GEMINI_API_KEY",), ("GOOGLE_API_KEY",)),
    )

    def build_request(self, request: CompletionRequest, deployment: Deployment, *, now: float) -> HttpRequest:
        """The HTTP request for ``request`` (``now`` is unused: no request signing)."""
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        url = f"{_base_url(deployment)}/{_version(deployment)}/{_model_path(request.model)}:{method}"
        body = build_body(request, deployment)
        return HttpRequest(
            method="POST",
            url=url,
            headers=_headers(deployment, json_body=True),
            body=encode_body(body),
            stream=request.stream,
        )

    def response_decoder(self, request: CompletionRequest, deployment: Deployment) -> GeminiDecoder:
        """A fresh decoder for one 2xx response body to ``request``."""
        return GeminiDecoder(request, deployment)

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
        error = _error_object(error_body_json(body))
        if error is None:
            text = error_body_text(body) or f"HTTP {status} from Gemini"
            code, retryable = code_for_status(status), retryable_for_status(status)
            retry_after = retry_after_seconds(headers, message=text)
            return error_event(
                request,
                deployment,
                code,
                text,
                retryable=retryable,
                retry_after=retry_after,
                http_status=status,
            )
        code, retryable = classify_error(status, error)
        message = str(error.get("message") or error.get("status") or f"HTTP {status} from Gemini")
        details = error.get("details") if isinstance(error.get("details"), list) else []
        retry_after = _retry_delay(details)
        if retry_after is None:
            retry_after = retry_after_seconds(headers, message=message)
        return error_event(
            request,
            deployment,
            code,
            message,
            retryable=retryable,
            retry_after=retry_after,
            http_status=status,
        )

    def count_request(self, request: CompletionRequest, deployment: Deployment, *, now: float) -> HttpRequest:
        """``POST {base}/{version}/models/{model}:countTokens`` for ``request``'s input: the body
        ``build_request`` would send, whole, as the ``generateContentRequest`` (so the system instruction and
        the function declarations are counted, which ``contents`` alone would leave out), without the stop
        sequences (no part of the prompt, and more than Gemini takes would refuse the count)."""
        model = _model_path(request.model)
        body = build_body(msgspec.structs.replace(request, stop=None, stream=False), deployment)
        return HttpRequest(
            method="POST",
            url=f"{_base_url(deployment)}/{_version(deployment)}/{model}:countTokens",
            headers=_headers(deployment, json_body=True),
            body=encode_body({"generateContentRequest": {"model": model, **body}}),
            stream=False,
        )

    def parse_count(self, body: bytes) -> int:
        """``totalTokens`` of a count's answer; ``ValueError`` for anything else."""
        data = parse_json_body(body)
        count = data.get("totalTokens") if isinstance(data, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("the answer holds no totalTokens count")
        return count

    def models_request(self, deployment: Deployment, *, now: float) -> HttpRequest:
        """``GET /v1beta/models`` with the largest page Gemini serves (1000)."""
        return HttpRequest(
            method="GET",
            url=f"{_base_url(deployment)}/{_version(deployment)}/models?pageSize=1000",
            headers=_headers(deployment, json_body=False),
            stream=False,
        )

    def parse_models(self, body: bytes) -> list[str]:
        """Model ids (``models/`` prefix removed) of the models that support ``generateContent``."""
        data = parse_json_body(body)
        entries = data.get("models") if isinstance(data, dict) else None
        names: list[str] = []
        for entry in entries or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            if "generateContent" not in (entry.get("supportedGenerationMethods") or []):
                continue
            name = entry["name"]
            names.append(name[len("models/") :] if name.startswith("models/") else name)
        return names
