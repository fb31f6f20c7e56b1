"""``ollama``: Ollama's native chat API (``POST {base}/api/chat``), NDJSON streaming.

``base`` is the server's root (``OLLAMA_HOST``, default ``http://localhost:11434``); a trailing ``/v1``
(the root of Ollama's OpenAI-compatible API) is tolerated and dropped.

Request mapping (wire-formats.md §5):

* ``stream`` is always sent explicitly: Ollama streams when it is absent.
* sampling goes in ``options``: ``temperature``, ``top_p``, ``num_predict`` (= ``max_tokens``), ``stop``.
* ``response_format`` ``{"type": "json_object"}`` → ``format: "json"``; ``{"type": "json_schema",
  "json_schema": {"schema": {...}}}`` → ``format: <schema>``.
* ``request.reasoning`` → ``think: true``. How hard to think: Ollama has no thinking budget, and its
  ``think`` takes levels (``"low"``, ``"medium"``, ``"high"``) for gpt-oss models only — the others take
  ``true``/``false``. So a request's ``reasoning_effort`` (or its ``reasoning_budget`` read as an effort,
  ``providers.effort.effort_of``) is, for a ``gpt-oss`` model, ``none``/``minimal``/``low`` → ``"low"``
  (gpt-oss cannot stop thinking), ``medium`` → ``"medium"``, ``high``/``xhigh``/``max`` → ``"high"``;
  for any other model ``none`` → ``false`` and the rest → ``true`` — when the model thinks at all
  (``_thinks``: the catalog says so, or its family does: ``deepseek-r1``, ``qwen3``, ``magistral``…);
  Ollama refuses ``think: true`` to a model that does not, so an effort alone sends nothing there (a
  ``[defaults]`` effort must not break every other model). With or without ``reasoning``: the decoder
  emits thinking only when it was asked for.
* tools go in OpenAI's function shape. Ollama has no ``tool_choice``: ``"none"`` leaves the tools out,
  a named tool narrows the list to that tool, anything else sends every tool.
* images are bare base64 strings in the message's ``images`` (the ``data:`` prefix stripped). Ollama
  does not fetch ``https:`` images, so ``build_request`` refuses them with ``InvalidRequestError``.
* assistant tool calls carry their arguments as an object; tool results are
  ``{"role": "tool", "content", "tool_name", "tool_call_id"}`` with the name recovered from the
  assistant call of the same id.
* ``deployment.api_key`` (ollama.com) is sent as ``Authorization: Bearer``.

Decoding: one JSON object per line, lines split anywhere across chunks, the ``done: true`` line
parsed even without a trailing newline. ``message.content`` → ``token``, ``message.thinking`` →
``reasoning`` (only when asked; never ``token``), tool calls arrive whole (id kept, else
``call_<n>``), the ``done`` line gives usage (``prompt_eval_count`` / ``eval_count``, ``None`` when
omitted) and ``done_reason``. A ``{"error": ...}`` line inside the 200 stream is an ``error``
(CONTEXT_LENGTH_EXCEEDED for "the input length exceeds the context length", as an error body is); a body
ending without ``done: true`` is a retryable ``PROVIDER_UNAVAILABLE``. Non-streaming answers are one
JSON object, parsed at ``close()``. The top-level ``response`` field of ``/api/generate`` lines is
read as text too, so generate-shaped bodies decode the same way.

Ollama returns no opaque state to replay, so ``decoder.provider_data`` is always ``None``.

Limits: a line longer than ``MAX_EVENT_BYTES``, a non-streaming body over ``MAX_BODY_BYTES``, or a line
the decoder cannot read (not JSON, too deep, an unexpected shape) ends the response with a retryable
PROVIDER_UNAVAILABLE ``error`` (``GuardedDecoder``); error bodies are read from a bounded prefix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from gtl_nb.protocol.errors import InvalidRequestError
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
from gtl_nb.providers.base import (
    Deployment,
    GuardedDecoder,
    HttpRequest,
    NotServedHere,
    ProviderNeeds,
    arguments_object,
    calls_no_tool,
    code_for_status,
    ends_response,
    error_boundary,
    error_event,
    parse_json_body,
    parse_tool_choice,
    refuse_one_call_at_most,
    retry_after_seconds,
    retryable_for_status,
    split_data_url,
    tool_result_text,
)
from gtl_nb.providers.catalog import Catalog
from gtl_nb.providers.effort import asked_effort
from gtl_nb.providers.limits import (
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    append_capped,
    error_body_json,
    error_body_text,
    parse_json_object,
)

DEFAULT_BASE_URL = "http://localhost:11434"

_FINISH_REASONS = {"stop": "stop", "length": "length"}


def _base_url(deployment: Deployment) -> str:
    # a trailing /v1 is Ollama's OpenAI-compatible API, not the native one this dialect speaks: dropped
    base = (deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _headers(deployment: Deployment, *, accept: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": accept}
    headers.update(deployment.headers)
    if deployment.api_key:
        headers["Authorization"] = f"Bearer {deployment.api_key}"
    return headers


# ----------------------------------------------------------------------------------------------
# Request


def _arguments_object(call: ToolCall) -> dict[str, Any]:
    try:
        return arguments_object(call)
    except ValueError as exc:
        raise InvalidRequestError(f"tool call {call.id!r} has arguments that are not a JSON object") from exc


def _image(url: str) -> str:
    parts = split_data_url(url)
    if parts is None:
        raise NotServedHere(
            "Ollama accepts only inline images: pass a data: URL (base64) instead of "
            f"{url[:60]!r}; Ollama does not fetch images from URLs"
        )
    return parts[1]


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    tool_names: dict[str, str] = {}  # tool-call id -> function name, for the tool results
    out: list[dict[str, Any]] = []
    for message in messages:
        text = tool_result_text(message) if message.role == "tool" else message.content or ""
        item: dict[str, Any] = {"role": message.role, "content": text}
        if message.images:
            item["images"] = [_image(url) for url in message.images]
        if message.role == "assistant" and message.tool_calls:
            calls = []
            for call in message.tool_calls:
                tool_names[call.id] = call.name
                calls.append({"id": call.id, "function": {"name": call.name, "arguments": _arguments_object(call)}})
            item["tool_calls"] = calls
        if message.role == "tool":
            name = tool_names.get(message.tool_call_id or "") or message.name
            if name:
                item["tool_name"] = name
            if message.tool_call_id:
                item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out


def _chosen_tool(tool_choice: str | dict[str, Any] | None) -> str | None:
    """The one tool a ``tool_choice`` names, if it names one."""
    parsed = parse_tool_choice(tool_choice)
    return parsed.name if parsed is not None and parsed.mode == "tool" else None


def _tools(request: CompletionRequest) -> list[dict[str, Any]] | None:
    if not request.tools or calls_no_tool(request.tool_choice):
        return None
    refuse_one_call_at_most(request, "Ollama")
    tools = request.tools
    chosen = _chosen_tool(request.tool_choice)
    if chosen is not None:
        tools = [tool for tool in tools if tool.name == chosen] or tools
    return [
        {
            "type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
        }
        for tool in tools
    ]


def _format(response_format: dict[str, Any] | None) -> str | dict[str, Any] | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else response_format.get("schema")
        return schema if isinstance(schema, dict) else "json"
    return None


def _options(request: CompletionRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    return options


def build_body(request: CompletionRequest) -> dict[str, Any]:
    """The ``/api/chat`` JSON body for ``request``."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": _messages(request.messages),
        "stream": bool(request.stream),
    }
    options = _options(request)
    if options:
        body["options"] = options
    tools = _tools(request)
    if tools:
        body["tools"] = tools
    fmt = _format(request.response_format)
    if fmt is not None:
        body["format"] = fmt
    think = _think(request)
    if think is not None:
        body["think"] = think
    return body


THINK_LEVELS = {
    "none": "low",
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
"""A gpt-oss model's ``think`` level for each effort (module docstring)."""


def _think(request: CompletionRequest) -> bool | str | None:
    """``think``: the request's effort as the model takes it, else ``true`` when it asks for reasoning."""
    effort = asked_effort(request)
    if effort is None:
        return True if request.reasoning else None
    if request.model.lower().startswith("gpt-oss"):
        return THINK_LEVELS[effort]
    if effort == "none":
        return False
    return True if request.reasoning or _thinks(request.model) else None


THINKING_FAMILIES = ("deepseek-r1", "qwen3", "magistral", "phi4-reasoning", "cogito", "exaone-deep", "smallthinker")
"""Ollama model families that think (its library's "thinking" models), beside those the catalog knows."""


def _thinks(model: str) -> bool:
    """Whether ``model`` is known to think: the catalog says so, or its name starts with a thinking family's."""
    known = Catalog.default().entry("ollama", model)
    if known is not None and known.supports_reasoning:
        return True
    name = model.lower().rpartition("/")[2]
    return name.startswith(THINKING_FAMILIES)


# ----------------------------------------------------------------------------------------------
# Response


def _says_context_exceeded(message: str) -> bool:
    """Ollama's refusal of an input over the context (``truncate: false``, and embeddings):
    "the input length exceeds the context length" (older servers: "… maximum context length")."""
    lowered = message.lower()
    return "exceeds the context length" in lowered or "exceeds maximum context length" in lowered


class OllamaDecoder(GuardedDecoder):
    """Decodes one ``/api/chat`` response body (NDJSON stream or one JSON object)."""

    def __init__(self, request: CompletionRequest, deployment: Deployment) -> None:
        super().__init__(request, deployment)
        self._sid = request.session_id
        self._buffer = bytearray()  # the unfinished line (streaming) or the whole body
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self._finished = False
        self._tool_count = 0

    @property
    def provider_data(self) -> dict[str, Any] | None:
        """Always ``None``: Ollama returns no state that must be replayed."""
        return None

    def _feed(self, chunk: bytes) -> list[StreamEvent]:
        if self._finished:
            return []
        if not self._request.stream:
            append_capped(self._buffer, chunk)  # one (possibly pretty-printed) object: parsed at close()
            return []
        self._buffer += chunk
        events = self._each(self._complete_lines(), self._line)
        if len(self._buffer) > MAX_EVENT_BYTES and not ends_response(events):  # a line that never ends
            problem = f"malformed NDJSON from Ollama: a line larger than {MAX_EVENT_BYTES} bytes"
            events.append(self._error("PROVIDER_UNAVAILABLE", problem, retryable=True))
        return events

    def _complete_lines(self) -> list[bytes]:
        """The lines ``\\n`` ended so far, taken out of the buffer (each byte is searched once)."""
        lines: list[bytes] = []
        start = 0
        end = self._buffer.find(b"\n", self._scanned)
        while end >= 0:
            lines.append(bytes(self._buffer[start:end]))
            start = end + 1
            end = self._buffer.find(b"\n", start)
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        return lines

    def _close(self) -> list[StreamEvent]:
        if self._finished:
            return []
        rest = bytes(self._buffer)
        self._buffer.clear()
        limit = MAX_EVENT_BYTES if self._request.stream else MAX_BODY_BYTES
        events = self._each([rest], lambda raw: self._line(raw, limit=limit))  # the done line may lack its newline
        if not self._finished and not ends_response(events):
            self.ended_early = True
            events.append(self._error("PROVIDER_UNAVAILABLE", "Ollama stream ended early, without a done:true line"))
        return events

    # -- one object -----------------------------------------------------------------------------

    def _line(self, raw: bytes, *, limit: int = MAX_EVENT_BYTES) -> list[StreamEvent]:
        if self._finished or not raw.strip():
            return []
        obj = parse_json_object(
            raw, lambda: f"malformed NDJSON line from Ollama {raw[:80].decode('utf-8', 'replace')!r}", limit=limit
        )
        return self._object(obj)

    def _object(self, obj: dict[str, Any]) -> list[StreamEvent]:
        if "error" in obj:
            error = obj["error"]
            text = error if isinstance(error, str) else json.dumps(error)
            if _says_context_exceeded(text):  # the runner's refusal of an over-long input: not worth a retry
                return [self._error("CONTEXT_LENGTH_EXCEEDED", text, retryable=False)]
            # A failure of the runner after the 200 (like a 500): worth another try.
            return [self._error("INTERNAL", text or "Ollama reported an error", retryable=True)]
        events: list[StreamEvent] = []
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        thinking = message.get("thinking")
        if thinking and self._request.reasoning:
            events.append(Reasoning(session_id=self._sid, text=str(thinking)))
        content = message.get("content")
        if content:
            events.append(Token(session_id=self._sid, text=str(content)))
        response = obj.get("response")  # /api/generate shape
        if isinstance(response, str) and response:
            events.append(Token(session_id=self._sid, text=response))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                events.append(self._tool_call(call))
        if obj.get("done") is True:
            events.extend(self._finish(obj))
        return events

    def _tool_call(self, call: dict[str, Any]) -> ToolCallEvent:
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            text = arguments if arguments.strip() else "{}"
        else:
            text = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
        call_id = call.get("id") or f"call_{self._tool_count}"
        self._tool_count += 1
        return ToolCallEvent(
            session_id=self._sid,
            function=ToolCall(id=str(call_id), name=str(function.get("name") or ""), arguments=text),
        )

    def _finish(self, obj: dict[str, Any]) -> list[StreamEvent]:
        self._finished = True
        raw_reason = obj.get("done_reason")
        reason = _FINISH_REASONS.get(raw_reason if isinstance(raw_reason, str) and raw_reason else "stop", "other")
        if reason == "stop" and self._tool_count:
            reason = "tool_calls"
        return [
            Usage(
                session_id=self._sid,
                tokens_in=_count(obj, "prompt_eval_count"),
                tokens_out=_count(obj, "eval_count"),
            ),
            Done(
                session_id=self._sid,
                finish_reason=reason,  # type: ignore[arg-type]
                provider=self._deployment.name,
                model=obj["model"] if isinstance(obj.get("model"), str) and obj["model"] else self._request.model,
            ),
        ]

    def _error(self, code: str, message: str, *, retryable: bool | None = None) -> Error:
        self._finished = True
        return error_event(self._request, self._deployment, code, message, retryable=retryable, http_status=200)


def _count(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ----------------------------------------------------------------------------------------------
# Dialect


class OllamaDialect:
    """The ``ollama`` HTTP dialect (see the module docstring)."""

    name: ClassVar[str] = "ollama"
    needs: ClassVar[ProviderNeeds] = ProviderNeeds(env={"base_url": ("OLLAMA_HOST",)}, implied_by=(("OLLAMA_HOST",),))

    def build_request(self, request: CompletionRequest, deployment: Deployment, *, now: float) -> HttpRequest:
        accept = "application/x-ndjson" if request.stream else "application/json"
        return HttpRequest(
            method="POST",
            url=f"{_base_url(deployment)}/api/chat",
            headers=_headers(deployment, accept=accept),
            body=json.dumps(build_body(request), ensure_ascii=False).encode("utf-8"),
            stream=request.stream,
        )

    def response_decoder(self, request: CompletionRequest, deployment: Deployment) -> OllamaDecoder:
        return OllamaDecoder(request, deployment)

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
        message = ""
        if isinstance(parsed, dict) and "error" in parsed:
            error = parsed["error"]
            message = error if isinstance(error, str) else json.dumps(error)
        if not message:
            message = error_body_text(body) or f"HTTP {status}"
        code = code_for_status(status)
        lowered = message.lower()
        if "not found" in lowered and ("pull" in lowered or "model" in lowered):
            code = "MODEL_NOT_FOUND"
        elif _says_context_exceeded(message):
            code = "CONTEXT_LENGTH_EXCEEDED"
        elif status == 401 or lowered == "unauthorized":
            code = "AUTH_FAILED"
        return error_event(
            request,
            deployment,
            code,
            message,
            retryable=retryable_for_status(status) and code not in ("MODEL_NOT_FOUND", "CONTEXT_LENGTH_EXCEEDED"),
            retry_after=retry_after_seconds(headers, message=message),
            http_status=status,
        )

    def models_request(self, deployment: Deployment, *, now: float) -> HttpRequest:
        """``GET {base}/api/tags``: the locally installed models."""
        headers = _headers(deployment, accept="application/json")
        headers.pop("Content-Type", None)
        return HttpRequest(method="GET", url=f"{_base_url(deployment)}/api/tags", headers=headers, stream=False)

    def parse_models(self, body: bytes) -> list[str]:
        """Model names (with their tag, e.g. ``llama3.2:latest``) from ``/api/tags``."""
        parsed = parse_json_body(body)
        models = parsed.get("models") if isinstance(parsed, dict) else None
        return [str(m["name"]) for m in models or [] if isinstance(m, dict) and m.get("name")]
