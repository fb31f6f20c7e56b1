"""The OpenAI Chat Completions response wire, shared by the ``openai``, ``azure`` and
``openai_compatible`` dialects: the incremental response decoder, the error mapping and the
model-listing parser. Sans-I/O: bytes in, GTL events out; no clock.

Decoder (``ChatCompletionsDecoder``):

* A streaming body is SSE (``data: <chunk>`` events, ``data: [DONE]`` last). A body whose first
  non-blank byte is ``{`` is taken as one ``chat.completion`` JSON object instead, whatever the
  request asked (some OpenAI-compatible servers ignore ``stream``); a non-streaming request is
  buffered and parsed at ``close()``.
* Only choice ``index`` 0 is read (the dialects never ask for ``n > 1``). Chunks with
  ``choices: []`` (the usage chunk, Azure's ``prompt_filter_results`` prelude) carry no text.
* ``delta.content`` → ``token``; ``delta.refusal`` (a refusal instead of the structured answer) is
  visible answer text too, so it is also a ``token``, and the answer's ``stop`` becomes
  ``content_filter``: a caller that asked for structured output must not parse a refusal as its
  answer (the OpenAI SDK's ``parse`` raises its content-filter error; Anthropic's form is
  ``stop_reason: "refusal"``). Non-standard ``delta.reasoning_content`` /
  ``delta.reasoning`` (vLLM, Ollama, OpenRouter, Groq, DeepSeek…) → ``reasoning`` events when the
  request asked for reasoning, and never ``token``.
* Tool-call fragments are keyed by ``index`` (id and name from the first fragment, argument text
  concatenated); every call is emitted, complete and in index order, when a ``finish_reason``
  arrives (or at ``[DONE]``/EOF). Servers that omit ``index`` are handled too: a fragment with a
  new ``id`` starts the next call, one without continues the last. Argument text is passed on as
  the model wrote it (``""`` → ``"{}"``); it is not repaired when a ``length`` stop cut it short.
* Usage may come in any chunk (OpenAI: an extra ``choices: []`` chunk after the finish chunk); the
  last one seen wins. ``prompt_tokens`` → ``tokens_in`` (it already includes cached tokens),
  ``completion_tokens`` → ``tokens_out`` (already includes reasoning tokens),
  ``prompt_tokens_details.cached_tokens`` → ``cached_tokens_in``, ``…cache_write_tokens`` →
  ``cache_write_tokens_in``,
  ``completion_tokens_details.reasoning_tokens`` → ``reasoning_tokens_out``; anything not sent is
  ``None``.
* ``finish_reason``: ``stop`` → stop, ``length`` → length, ``tool_calls`` (and the legacy
  ``function_call``) → tool_calls, ``content_filter`` → content_filter, other values → other. A
  ``stop`` (or no reason at all) after tool calls were emitted becomes ``tool_calls``: some
  compatible servers report ``stop`` for a tool-call turn. The last reason seen wins.
* Termination: ``data: [DONE]`` ends the stream with ``usage`` then ``done``. A body that ends
  cleanly (EOF) *after* a ``finish_reason`` chunk but without ``[DONE]`` is also accepted as done
  (llama.cpp-style servers; the answer is complete, only a trailing usage chunk may be missing).
  EOF before any ``finish_reason`` is an ``error`` PROVIDER_UNAVAILABLE (retryable, "stream ended
  before [DONE]"). A ``data:`` payload that is not a JSON object is an ``error`` naming the
  problem. ``data: {"error": …}`` (with or without ``event: error``) inside a 200 stream is an
  ``error`` classified like an HTTP error. Nothing is emitted after the terminal event.
* Limits (``gtl_nb.providers.limits``): a chunk or a non-streaming body that is not JSON, is nested
  too deep or too large, or breaks the decoder in any other way ends the response with a retryable
  PROVIDER_UNAVAILABLE ``error`` (``GuardedDecoder``). Error bodies are read from a bounded prefix.

``provider_data`` (read by the engine after the terminal event, also put on ``Done``): ``None``
unless the server sent non-standard reasoning text, then::

    {"openai_reasoning": {"field": "reasoning" | "reasoning_content", "text": "<all reasoning text>"}}

The ``openai_compatible`` dialect can replay it (deployment option ``replay_reasoning``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import msgspec

from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    FinishReason,
    Reasoning,
    StreamEvent,
    Token,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.base import (
    BodySniffer,
    Deployment,
    GuardedDecoder,
    ToolCallAssembler,
    about_the_account,
    code_for_status,
    ends_response,
    error_event,
    header,
    is_retryable_code,
    out_of_credit,
    parse_json_body,
    retry_after_seconds,
)
from gtl_nb.providers.limits import MAX_JSON_DEPTH, error_body_json, parse_json_object, snippet
from gtl_nb.providers.sse import SSEDecoder, SSEEvent

PROVIDER_DATA_KEY = "openai_reasoning"
REASONING_FIELDS = ("reasoning_content", "reasoning")

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
}


def map_finish_reason(raw: str | None, *, saw_tool_calls: bool) -> FinishReason:
    """The GTL finish reason of a Chat Completions ``finish_reason`` (see the module docstring)."""
    mapped: FinishReason = _FINISH_REASONS.get(raw, "other") if raw else "stop"
    if saw_tool_calls and mapped == "stop":
        return "tool_calls"
    return mapped


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_event(session_id: str, usage: Mapping[str, Any] | None) -> Usage:
    """A ``usage`` event from a Chat Completions ``usage`` object (``None`` → every count unknown)."""
    if not usage:
        return Usage(session_id=session_id)
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
    completion_details = completion_details if isinstance(completion_details, dict) else {}
    return Usage(
        session_id=session_id,
        tokens_in=_count(usage.get("prompt_tokens")),
        tokens_out=_count(usage.get("completion_tokens")),
        cached_tokens_in=_count(prompt_details.get("cached_tokens")),
        cache_write_tokens_in=_count(prompt_details.get("cache_write_tokens")),
        reasoning_tokens_out=_count(completion_details.get("reasoning_tokens")),
    )


# ----------------------------------------------------------------------------------------------
# Errors


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def error_object(payload: Any) -> dict[str, Any] | None:
    """The error object of an error body, from the envelopes seen in the wild: OpenAI/Azure
    ``{"error": {...}}``, ``{"error": "text"}`` (LM Studio, llama.cpp), vLLM's older top-level
    ``{"object": "error", "message": ...}`` and FastAPI's ``{"detail": "..."}``."""
    if not isinstance(payload, dict):
        return None
    err = payload.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):
        return {"message": err}
    if isinstance(payload.get("message"), str):
        return payload
    if isinstance(payload.get("detail"), str):
        return {"message": payload["detail"]}
    return None


_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_GO_DURATION_MAX_CHARS = 32  # "1h2m3.456s" is 10: a longer value is no duration
_NUMBER_CHARS = frozenset("0123456789.")


def _go_duration(text: str | None) -> float | None:
    """Seconds of an OpenAI ``x-ratelimit-reset-*`` value such as ``6m0s``, ``1.5s`` or ``20ms``.

    A scan of number-unit pairs (a regex search over a long run of digits would be quadratic)."""
    if not text or len(text) > _GO_DURATION_MAX_CHARS:
        return None
    seconds: float | None = None
    number = ""
    pos = 0
    while pos < len(text):
        if text[pos] in _NUMBER_CHARS:
            number += text[pos]
            pos += 1
            continue
        unit = "ms" if text.startswith("ms", pos) else text[pos]
        if unit in _GO_UNITS and _is_decimal(number):
            seconds = (seconds or 0.0) + float(number) * _GO_UNITS[unit]
        number = ""
        pos += len(unit)
    return seconds


def _is_decimal(number: str) -> bool:
    whole, dot, fraction = number.partition(".")
    return whole.isdigit() and (not dot or fraction.isdigit())


def _reset_hint(headers: Mapping[str, str], limit_type: str) -> float | None:
    """Wait hint from the rate-limit reset headers of the exhausted limit (the last resort)."""
    if limit_type in ("requests", "tokens"):
        kinds = [limit_type]
    else:
        kinds = [k for k in ("requests", "tokens") if header(headers, f"x-ratelimit-remaining-{k}") == "0"]
    values = [v for k in kinds if (v := _go_duration(header(headers, f"x-ratelimit-reset-{k}"))) is not None]
    return max(values) if values else None


def classify_error(status: int | None, err: Mapping[str, Any]) -> tuple[str, bool]:
    """``(GTL code, retryable)`` for an OpenAI-style error object answered with HTTP ``status``
    (``None``: an error inside a 200 stream)."""
    code = _text(err.get("code"))
    kind = _text(err.get("type"))
    message = _text(err.get("message")).lower()
    inner = err.get("innererror")
    inner_code = _text(inner.get("code")) if isinstance(inner, dict) else ""
    if status is None and code.isdigit() and 400 <= int(code) <= 599:
        status = int(code)  # OpenRouter & co. put the HTTP status in an in-stream error's code
    keys = f"{code} {kind}".lower()
    if "insufficient_quota" in keys:
        return "RATE_LIMIT", False  # the quota is exhausted: waiting a little will not help
    if code in ("context_length_exceeded", "string_above_max_length") or "maximum context length" in message:
        return "CONTEXT_LENGTH_EXCEEDED", False
    if code in ("content_filter", "content_policy_violation") or inner_code == "ResponsibleAIPolicyViolation":
        return "CONTENT_FILTERED", False
    if code in ("model_not_found", "DeploymentNotFound"):
        return "MODEL_NOT_FOUND", False
    if code == "invalid_api_key" or status == 401:
        return "AUTH_FAILED", False
    if status == 403:
        return "FORBIDDEN", False
    if status == 400 and (code == "billing_hard_limit_reached" or out_of_credit(message)):  # as insufficient_quota
        return "RATE_LIMIT", False
    if status == 400 and about_the_account(message, code):  # billing, verification: the account's, as a 400
        return "FORBIDDEN", False
    if status == 429 or code in ("rate_limit_exceeded", "429") or kind in ("tokens", "requests"):
        return "RATE_LIMIT", True
    if (status is None or status >= 500) and "overload" in f"{keys} {message}":
        return "OVERLOADED", True  # (a 4xx's message may quote the caller's text: the status says whose fault)
    if status is None:
        if kind == "invalid_request_error":
            return "INVALID_REQUEST", False
        return "PROVIDER_UNAVAILABLE", True
    if status == 500:
        return "PROVIDER_UNAVAILABLE", True  # base says INTERNAL (not retryable); OpenAI 500s are transient
    gtl_code = code_for_status(status)
    return gtl_code, is_retryable_code(gtl_code)


def error_from_response(
    request: CompletionRequest,
    deployment: Deployment,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
) -> Error:
    """A non-2xx Chat Completions response as an ``error`` event (only a bounded prefix of the body is read)."""
    err = error_object(error_body_json(body))
    if err is None:
        gtl_code = "PROVIDER_UNAVAILABLE" if status == 500 else code_for_status(status)
        detail = snippet(body)  # an HTML page from a proxy: its words only
        message = f"HTTP {status} from {deployment.name}: {detail or '(empty body)'}"
        retryable = is_retryable_code(gtl_code)
        retry_after = retry_after_seconds(headers) if retryable else None
    else:
        gtl_code, retryable = classify_error(status, err)
        message = _text(err.get("message")) or _text(err.get("type")) or _text(err.get("code"))
        message = message or f"HTTP {status}"
        retry_after = None
        if retryable:
            retry_after = retry_after_seconds(headers, message=message)
            if retry_after is None and gtl_code == "RATE_LIMIT":
                retry_after = _reset_hint(headers, _text(err.get("type")))
    return error_event(
        request,
        deployment,
        gtl_code,
        message,
        retryable=retryable,
        retry_after=retry_after,
        http_status=status,
    )


def stream_error(request: CompletionRequest, deployment: Deployment, err: Mapping[str, Any]) -> Error:
    """An error object that arrived inside a 200 response as an ``error`` event (``http_status`` 200, as
    the other dialects mark the provider's own error inside an answer)."""
    gtl_code, retryable = classify_error(None, err)
    message = _text(err.get("message")) or _text(err.get("type")) or "error inside the response stream"
    retry_after = retry_after_seconds({}, message=message) if retryable else None
    return error_event(
        request, deployment, gtl_code, message, retryable=retryable, retry_after=retry_after, http_status=200
    )


def parse_models(body: bytes) -> list[str]:
    """Model ids of a ``GET …/models`` listing (``{"object": "list", "data": [{"id": …}]}``).

    Raises ``ValueError`` when the body is not such a listing."""
    payload = parse_json_body(body)
    items = payload.get("data") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        raise ValueError("model listing is not a JSON object with a 'data' list")
    return [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


def model_times(body: bytes) -> dict[str, int]:
    """When each model of a ``GET …/models`` listing was made, in Unix seconds, as the listing says it:
    OpenAI's ``created``, Azure's ``created_at`` (a whole number either way); a model with neither, or
    with another kind of value, is left out. Raises ``ValueError`` as ``parse_models`` does."""
    payload = parse_json_body(body)
    items = payload.get("data") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        raise ValueError("model listing is not a JSON object with a 'data' list")
    times: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        made = item.get("created", item.get("created_at"))
        if type(made) is int and made > 0:
            times.setdefault(item["id"], made)
    return times


# ----------------------------------------------------------------------------------------------
# The response decoder

_CHUNK_JSON = msgspec.json.Decoder()


def _has_escape(data: str) -> bool:
    """Whether ``data`` holds a ``\\u`` escape. Most chunks hold no backslash at all, and a one-character
    search runs as ``memchr`` (a sixth of the two-character search's cost): asked first, it spares them that."""
    return "\\" in data and "\\u" in data


def _chunk_object(data: str, what: str) -> dict[str, Any]:
    """One stream chunk's JSON object, as ``parse_json_object`` reads it, but msgspec first.

    ``parse_json`` reads a ``str`` with the standard library's parser, and a chunk's data is a ``str``
    (the SSE parser decodes it); msgspec reads these small objects several times faster. It refuses
    everything ``json.loads`` would read differently (NaN, 1e400, a BOM, an integer past 4300 digits),
    and those go through ``parse_json_object`` unchanged, as do escapes (``\\u`` may hide a lone
    surrogate, which ``parse_json`` scrubs) and documents with enough brackets to nest too deep. The
    size needs no check here: the SSE parser already bounds an event.
    """
    if not _may_nest_too_deep(data):
        try:
            value = _CHUNK_JSON.decode(data)
        except ValueError:  # msgspec's DecodeError, or a str it cannot encode
            pass
        else:
            if isinstance(value, dict):
                return value
    return parse_json_object(data, lambda: f"{what} {data[:120]!r}")


class _PlainDelta(msgspec.Struct, gc=False):
    """A delta of the commonest shape: text or nothing. A field the long way reads that holds
    anything but ``null`` (reasoning, a refusal, tool calls) fails msgspec's validation here, and the
    chunk goes the long way (``_plain_chunk``): the shape is checked in C, not field by field."""

    content: str | None = None
    refusal: None = None
    tool_calls: None = None
    reasoning_content: None = None
    reasoning: None = None


class _PlainChoice(msgspec.Struct, gc=False):
    index: int | None = 0
    delta: _PlainDelta | None = None
    message: None = None
    finish_reason: str | None = None


_UsageValue = int | float | str | bool | None


class _PlainChunk(msgspec.Struct, gc=False):
    """A stream chunk as most servers send it, validated by msgspec in one pass (no dict per level).
    Every field it keeps has a bounded depth (``usage``: counts, and objects of counts, as every server
    sends them; anything deeper takes the long way, which applies ``MAX_JSON_DEPTH``)."""

    model: str | None = None
    usage: dict[str, _UsageValue | dict[str, _UsageValue]] | None = None
    choices: list[_PlainChoice] = []
    error: None = None


_PLAIN_CHUNK = msgspec.json.Decoder(_PlainChunk)
# the lowest integer-digit limit the interpreter accepts (but 0, no limit): a shorter chunk cannot
# hold a number past the limit, and the limit need not be asked for
_LEAST_DIGIT_LIMIT = sys.int_info.str_digits_check_threshold
_UNSCANNED_BYTES = 1024  # a stream chunk is a few hundred bytes; past this, ``_plain_chunk`` scans first


def _may_nest_too_deep(data: str | bytes) -> bool:
    """Whether ``data`` holds an escape or more openers than ``MAX_JSON_DEPTH`` (``_chunk_object``'s guard)."""
    if type(data) is bytes:
        return data.find(b"\\u") >= 0 or data.count(b"{") + data.count(b"[") > MAX_JSON_DEPTH
    return _has_escape(data) or data.count("{") + data.count("[") > MAX_JSON_DEPTH  # type: ignore[arg-type]


def _plain_chunk(data: str | bytes) -> _PlainChunk | None:
    """``data`` as a ``_PlainChunk`` when it is one and reads exactly as the long way would read it
    (``_chunk_object`` then ``ChatCompletionsDecoder._on_chunk``), else ``None``: an error, any
    field of another type or shape, anything msgspec and ``json.loads`` could read differently.
    ``data`` is an event's text, or its payload's bytes as the stream sent them
    (``SSEDecoder.data_payloads``): bytes that are not UTF-8 fail to decode here and take the long
    way, which reads them as the SSE parser does.

    A chunk of up to ``_UNSCANNED_BYTES`` is not scanned first: msgspec refuses an escaped lone
    surrogate (which the long way scrubs) and, with ``RecursionError`` at the interpreter's recursion
    limit, a document nested past it — and one that short nests at most 1,024 deep (an unclosed
    document, a level a byte), a few dozen KiB of C stack, which no setting of that limit lets
    overflow even a small thread stack; every field kept here has a bounded depth.
    So a chunk that short nested past ``MAX_JSON_DEPTH`` only in a field nobody reads (skipped, never
    built) is read, not refused. A longer chunk is scanned for depth and escapes as ``_chunk_object``
    does."""
    if len(data) > _LEAST_DIGIT_LIMIT:
        if len(data) > (sys.get_int_max_str_digits() or len(data)):
            # msgspec skips the fields a struct does not name without reading their numbers, and
            # ``json.loads`` refuses an integer longer than this: a chunk that long takes the long way
            return None
        if len(data) > _UNSCANNED_BYTES and _may_nest_too_deep(data):
            return None
    try:
        return _PLAIN_CHUNK.decode(data)
    except (ValueError, RecursionError):  # msgspec's DecodeError and ValidationError; too deep
        return None


class ChatCompletionsDecoder(GuardedDecoder):
    """Incremental decoder of one 2xx Chat Completions response (see the module docstring)."""

    def __init__(self, request: CompletionRequest, deployment: Deployment) -> None:
        super().__init__(request, deployment)
        self._session = request.session_id
        self._sniffer = BodySniffer(request.stream)
        self._sse = SSEDecoder()
        self._tools = ToolCallAssembler()
        self._ids: dict[str, int] = {}  # tool-call id → index, for servers that omit index
        self._next_index = 0
        self._last_index: int | None = None
        self._tool_calls = 0
        self._refused = False  # the model refused (``refusal`` text): a ``stop`` is content_filter
        self._finish_raw: str | None = None
        self._usage: dict[str, Any] | None = None
        self._model: str | None = None
        self._reasoning: list[str] = []
        self._reasoning_field: str | None = None
        self._done = False

    @property
    def provider_data(self) -> dict[str, Any] | None:
        """Reasoning text to replay in later turns, or ``None`` (shape in the module docstring)."""
        if not self._reasoning or self._reasoning_field is None:
            return None
        return {PROVIDER_DATA_KEY: {"field": self._reasoning_field, "text": "".join(self._reasoning)}}

    # -- input

    def _feed(self, chunk: bytes) -> list[StreamEvent]:
        """Events completed by ``chunk``."""
        if self._done:
            return []
        # once the body is known to be SSE every chunk goes to the SSE parser (what ``route`` returns)
        stream = chunk if self._sniffer.mode == "sse" else self._sniffer.route(chunk)
        if stream is None:
            return []
        payloads = self._sse.data_payloads(stream)
        if payloads is not None:
            return self._payloads(payloads)
        return self._each(self._sse.feed(stream), self._sse_unit)

    def _close(self) -> list[StreamEvent]:
        """Events left at the end of the body, always ending with the terminal event."""
        if self._done:
            return []
        events: list[StreamEvent] = []
        if self._sniffer.mode == "json":
            self._on_json_body(events)
        elif self._sniffer.mode is None:
            self._fail(events, "stream ended before [DONE]: the response body was empty")
            self.ended_early = True
        else:
            # an event the body ended without its blank line
            events = self._each(self._sse.close(), lambda sse_event: self._sse_unit(sse_event, at_eof=True))
            if self._done or ends_response(events):
                return events
            if self._finish_raw is not None:
                self._finish(events)  # finish_reason then clean EOF: complete, only [DONE] is missing
            else:
                self._fail(events, "stream ended before [DONE] (no finish_reason received)")
                self.ended_early = True
        return events

    # -- stream handling

    def _sse_unit(self, sse_event: SSEEvent, *, at_eof: bool = False) -> list[StreamEvent]:
        """The events of one SSE event."""
        events: list[StreamEvent] = []
        data = sse_event.data.strip()
        if not data:
            return events  # keep-alive or an event without data
        if data == "[DONE]":
            self._finish(events)
            return events
        if sse_event.event == "message":
            plain = _plain_chunk(data)
            if plain is not None:
                self._on_plain_chunk(plain, events)
                return events
        # the connection may have dropped inside the last event
        what = "stream ended before [DONE], inside an unfinished event" if at_eof else "malformed stream chunk"
        payload = _chunk_object(data, what)
        err = payload.get("error")
        if err is None and sse_event.event == "error":
            err = payload  # "event: error" whose data is the error object itself
        if err is not None:
            obj = error_object({"error": err}) or {"message": _text(err)}
            events.append(stream_error(self._request, self._deployment, obj))
            self._done = True
            return events
        self._on_chunk(payload, events)
        return events

    def _payloads(self, payloads: list[bytes]) -> list[StreamEvent]:
        """The events of whole data-only SSE events (``SSEDecoder.data_payloads``): what
        ``_each(events, _sse_unit)`` gives for them, with a plain chunk decoded straight from its
        bytes, in this one loop (the commonest read: one token, or a burst of them); any other payload
        goes to ``_sse_unit`` as the event it is."""
        events: list[StreamEvent] = []
        for payload in payloads:
            kept = len(events)
            try:
                # (``[DONE]`` is no chunk: msgspec would refuse it with an exception, once a stream)
                plain = _plain_chunk(payload) if payload != b"[DONE]" else None
                if plain is not None:
                    self._on_plain_chunk(plain, events)
                    continue
                produced = self._sse_unit(
                    SSEEvent(payload.decode("utf-8", "replace"), "message", self._sse.last_event_id)
                )
            except Exception as exc:  # the boundary, as in ``_each``: nothing of the unit that failed
                del events[kept:]
                events.append(self._fault(exc))
                break
            events.extend(produced)
            if ends_response(produced):
                break
        return events

    def _on_plain_chunk(self, chunk: _PlainChunk, events: list[StreamEvent]) -> None:
        """``_on_chunk`` for the commonest shape, already validated (see ``_plain_chunk``)."""
        if chunk.model:
            self._model = chunk.model
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index not in (0, None):
                continue
            delta = choice.delta
            if delta is not None and delta.content:
                events.append(Token(session_id=self._session, text=delta.content))
            if choice.finish_reason:
                self._finish_raw = choice.finish_reason
                self._flush_tool_calls(events)

    def _on_chunk(self, chunk: Mapping[str, Any], events: list[StreamEvent]) -> None:
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self._model = model
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice.get("message")
            if isinstance(delta, dict):
                self._on_delta(delta, events)
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self._finish_raw = finish
                self._flush_tool_calls(events)

    def _on_delta(self, delta: Mapping[str, Any], events: list[StreamEvent]) -> None:
        for field in REASONING_FIELDS:
            value = delta.get(field)
            if isinstance(value, str) and value:
                self._reasoning.append(value)
                self._reasoning_field = self._reasoning_field or field
                if self._request.reasoning:
                    events.append(Reasoning(session_id=self._session, text=value))
                break  # some servers send both names with the same text
        content = delta.get("content")
        if isinstance(content, str) and content:
            events.append(Token(session_id=self._session, text=content))
        elif isinstance(content, list):  # content parts (Mistral-style); only text parts are answer text
            for part in content:
                text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
                if isinstance(text, str) and text:
                    events.append(Token(session_id=self._session, text=text))
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refused = True
            events.append(Token(session_id=self._session, text=refusal))
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for fragment in tool_calls:
                if isinstance(fragment, dict):
                    self._on_tool_fragment(fragment)

    def _on_tool_fragment(self, fragment: Mapping[str, Any]) -> None:
        call_id = fragment.get("id") if isinstance(fragment.get("id"), str) and fragment.get("id") else None
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            if call_id is not None:
                index = self._ids.get(call_id, self._next_index)
            else:
                index = self._last_index if self._last_index is not None else self._next_index
        if call_id is not None:
            self._ids[call_id] = index
        self._last_index = index
        self._next_index = max(self._next_index, index + 1)
        function = fragment.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name") if isinstance(function.get("name"), str) else None
        self._tools.start(index, call_id, name)
        arguments = function.get("arguments")
        if isinstance(arguments, (dict, list)):  # a server that sent an object instead of JSON text
            arguments = json.dumps(arguments)
        if isinstance(arguments, str):
            self._tools.add(index, arguments)

    def _flush_tool_calls(self, events: list[StreamEvent]) -> None:
        if self._tools:  # (most answers hold no tool call: no sorting of nothing)
            for call in self._tools.pop_all():
                events.append(ToolCallEvent(session_id=self._session, function=call))
                self._tool_calls += 1
        self._ids.clear()
        self._next_index = 0
        self._last_index = None

    # -- non-streaming body

    def _on_json_body(self, events: list[StreamEvent]) -> None:
        body = bytes(self._sniffer.body)
        if not body.strip():
            self._fail(events, "the response body was empty")
            self.ended_early = True
            return
        payload = parse_json_body(body)
        if not isinstance(payload, dict):
            self._fail(events, f"the response body is not a JSON object: {snippet(body, 120)!r}")
            return
        if payload.get("error"):
            obj = error_object(payload) or {"message": _text(payload["error"])}
            events.append(stream_error(self._request, self._deployment, obj))
            self._done = True
            return
        if not isinstance(payload.get("choices"), list):
            self._fail(events, "the response has no 'choices' list")
            return
        self._on_chunk(payload, events)
        self._finish(events)

    # -- terminal events

    def _finish(self, events: list[StreamEvent]) -> None:
        self._flush_tool_calls(events)
        events.append(usage_event(self._session, self._usage))
        finish = map_finish_reason(self._finish_raw, saw_tool_calls=self._tool_calls > 0)
        if self._refused and finish == "stop":
            finish = "content_filter"
        events.append(
            Done(
                session_id=self._session,
                finish_reason=finish,
                provider=self._deployment.name,
                model=self._model or self._request.model,
                provider_data=self.provider_data,
            )
        )
        self._done = True

    def _fail(self, events: list[StreamEvent], message: str) -> None:
        events.append(error_event(self._request, self._deployment, "PROVIDER_UNAVAILABLE", message, retryable=True))
        self._done = True
