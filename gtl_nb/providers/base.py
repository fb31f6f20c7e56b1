"""What every provider is: an HTTP dialect or a local generator. Pure data and pure functions.

An **HTTP dialect** never performs I/O and never reads a clock:

* ``build_request(request, deployment, now=...)`` turns a ``CompletionRequest`` into an
  ``HttpRequest`` description (method, URL, headers, body). ``now`` (Unix seconds) is passed in
  for the dialects that sign requests.
* ``response_decoder(request, deployment)`` returns a ``ResponseDecoder`` for a 2xx response:
  ``feed(chunk)`` returns the GTL events completed by those bytes (``token``, ``reasoning``,
  ``tool_call``, ``usage``, ``done``, ``error``), ``close()`` those left at end of body. A decoder
  never emits ``status`` (the engine does), emits at most one ``usage`` (just before ``done``) with
  ``cost=None`` (the engine prices it from the catalog), and ends every response with exactly one
  ``done`` or ``error`` — a body that stops without the provider's terminator is an ``error``.
* ``decode_error(request, deployment, status, headers, body)`` maps a non-2xx response to an
  ``error`` event with the GTL code, ``retryable``, ``retry_after`` and ``http_status``.

A **local generator** (``LocalProvider``) yields ``(delay_seconds, event)`` pairs; the engine
sleeps the delays, so the generator stays pure and tests run at full speed with pace 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol, runtime_checkable

from gtl_nb.protocol.messages import (
    CompletionRequest,
    Error,
    ModelInfo,
    StreamEvent,
    ToolCall,
)


@dataclass(frozen=True)
class HttpRequest:
    """A request description the engine's HTTP runner executes."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""
    stream: bool = True


@dataclass(frozen=True)
class Deployment:
    """One configured deployment of a provider type (``providers={"azure-east": {"type": "azure", ...}}``).

    ``name`` is what routing, events and ledger rows use; ``type`` names the dialect. Settings a
    dialect needs beyond the common ones live in ``options``.
    """

    name: str
    type: str
    api_key: str | None = None
    base_url: str | None = None
    api_version: str | None = None
    region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    model: str | None = None
    models: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show a credential
        return f"Deployment(name={self.name!r}, type={self.type!r}, base_url={self.base_url!r})"


class ResponseDecoder(Protocol):
    """Incremental decoder of one 2xx provider response body."""

    def feed(self, chunk: bytes) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]: ...

    @property
    def provider_data(self) -> dict[str, Any] | None:
        """Opaque state for the answer's assistant message (read after the terminal event)."""
        ...


@runtime_checkable
class HttpDialect(Protocol):
    """A provider speaking HTTP (see the module docstring)."""

    name: ClassVar[str]

    def build_request(self, request: CompletionRequest, deployment: Deployment, *, now: float) -> HttpRequest: ...

    def response_decoder(self, request: CompletionRequest, deployment: Deployment) -> ResponseDecoder: ...

    def decode_error(
        self,
        request: CompletionRequest,
        deployment: Deployment,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Error: ...

    def models_request(self, deployment: Deployment, *, now: float) -> HttpRequest:
        """The request that lists the deployment's models (live model listing)."""
        ...

    def parse_models(self, body: bytes) -> list[str]:
        """Model names from the listing response (raises ``ValueError`` on an unreadable body)."""
        ...


@runtime_checkable
class LocalProvider(Protocol):
    """A provider that generates events in-process, with the delays between them."""

    name: ClassVar[str]
    offline: ClassVar[bool]

    def models(self) -> list[ModelInfo]: ...

    def generate(self, request: CompletionRequest) -> Iterable[tuple[float, StreamEvent]]: ...


# ----------------------------------------------------------------------------------------------
# Helpers shared by the dialects


_STATUS_CODES: dict[int, str] = {
    400: "INVALID_REQUEST",
    401: "AUTH_FAILED",
    402: "FORBIDDEN",  # the provider account's billing, not our budget
    403: "FORBIDDEN",
    404: "MODEL_NOT_FOUND",
    408: "TIMEOUT",
    409: "INVALID_REQUEST",
    413: "INVALID_REQUEST",
    422: "INVALID_REQUEST",
    424: "PROVIDER_UNAVAILABLE",
    429: "RATE_LIMIT",
    500: "INTERNAL",
    502: "PROVIDER_UNAVAILABLE",
    503: "OVERLOADED",
    504: "TIMEOUT",
    529: "OVERLOADED",
}
_RETRYABLE_CODES = frozenset({"RATE_LIMIT", "OVERLOADED", "PROVIDER_UNAVAILABLE", "TIMEOUT"})


def code_for_status(status: int) -> str:
    """The default GTL error code of an HTTP status (dialects refine it from the body)."""
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    if status >= 500:
        return "PROVIDER_UNAVAILABLE"
    return "INVALID_REQUEST"


def retryable_for_status(status: int) -> bool:
    """5xx (but 501) and 408/429 are worth retrying; other 4xx are not."""
    return status in (408, 429) or (status >= 500 and status != 501)


def is_retryable_code(code: str) -> bool:
    return code in _RETRYABLE_CODES


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup."""
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


_RETRY_TEXT = re.compile(r"(?i)(?:retry after|try again in)\s+([0-9]+(?:\.[0-9]+)?)\s*(ms|s|sec|seconds?)?")


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None, message: str = "") -> float | None:
    """Seconds to wait, from ``retry-after-ms``, ``retry-after`` (seconds or HTTP date, which needs
    ``now``), or a "retry after N seconds" / "try again in 1.5s" hint in the message text."""
    value = header(headers, "retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = header(headers, "retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            when = _http_date(value)
            if when is not None and now is not None:
                return max(0.0, when - now)
    match = _RETRY_TEXT.search(message or "")
    if match:
        amount = float(match.group(1))
        return amount / 1000.0 if (match.group(2) or "").lower() == "ms" else amount
    return None


def _http_date(value: str) -> float | None:
    """Unix time of an IMF-fixdate (``Wed, 21 Oct 2015 07:28:00 GMT``), the only form servers send."""
    try:
        parsed = datetime.strptime(value.strip(), "%a, %d %b %Y %H:%M:%S GMT")
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc).timestamp()


def error_event(
    request: CompletionRequest,
    deployment: Deployment,
    code: str,
    message: str,
    *,
    retryable: bool | None = None,
    retry_after: float | None = None,
    http_status: int | None = None,
) -> Error:
    """Build an ``error`` event for ``request`` answered by ``deployment``."""
    return Error(
        session_id=request.session_id,
        code=code,  # type: ignore[arg-type]
        message=message,
        retryable=(
            is_retryable_code(code) or (http_status is not None and retryable_for_status(http_status))
            if retryable is None
            else retryable
        ),
        provider=deployment.name,
        retry_after=retry_after,
        http_status=http_status,
    )


def parse_json_body(body: bytes) -> Any:
    """The body as JSON, or ``None`` when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def split_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` → ``("image/png", "AAAA")``; ``None`` for other URLs."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep:
        return None
    mime = head.split(";")[0] or "application/octet-stream"
    return mime, data


@dataclass(frozen=True)
class ToolChoice:
    """A request's ``tool_choice``, read once for every dialect: ``mode`` is ``auto``, ``none``,
    ``required`` or ``tool`` (then ``name`` is the one tool the model must call)."""

    mode: str
    name: str | None = None


_CHOICE_WORDS = {"auto": "auto", "none": "none", "required": "required", "any": "required"}


def parse_tool_choice(choice: str | Mapping[str, Any] | None) -> ToolChoice | None:
    """GTL ``tool_choice`` → ``ToolChoice`` (``None``: leave the provider's default).

    Accepted: ``"auto"``, ``"none"``, ``"required"`` (or ``"any"``), any other string as a tool's name,
    OpenAI's ``{"type": "function", "function": {"name": ...}}``, ``{"name": ...}`` and
    ``{"type": "auto" | "none" | "required" | "any"}``.
    """
    if choice is None:
        return None
    if isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if name:
            return ToolChoice("tool", str(name))
        word = choice.get("type")
        if not isinstance(word, str):
            return None
        choice = word
    word = choice.strip()
    if word in _CHOICE_WORDS:
        return ToolChoice(_CHOICE_WORDS[word])
    return ToolChoice("tool", word) if word else None


def arguments_text(fragments: str) -> str:
    """Assembled tool-call argument text; empty means ``{}``."""
    return fragments if fragments.strip() else "{}"


class ToolCallAssembler:
    """Collects streamed tool-call fragments keyed by index; calls come out complete and in order."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def start(self, index: int, call_id: str | None = None, name: str | None = None) -> None:
        slot = self._calls.setdefault(index, {"id": None, "name": None, "args": []})
        if call_id:
            slot["id"] = call_id
        if name:
            slot["name"] = name

    def add(self, index: int, fragment: str | None) -> None:
        self._calls.setdefault(index, {"id": None, "name": None, "args": []})
        if fragment:
            self._calls[index]["args"].append(fragment)

    def pop(self, index: int, fallback_id: str | None = None) -> ToolCall | None:
        slot = self._calls.pop(index, None)
        if slot is None:
            return None
        return ToolCall(
            id=slot["id"] or fallback_id or f"call_{index}",
            name=slot["name"] or "",
            arguments=arguments_text("".join(slot["args"])),
        )

    def pop_all(self) -> list[ToolCall]:
        return [call for call in (self.pop(i) for i in sorted(self._calls)) if call is not None]

    def __bool__(self) -> bool:
        return bool(self._calls)
