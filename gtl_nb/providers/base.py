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

Every dialect decoder derives from ``GuardedDecoder``, the one boundary where a hostile body (bytes that break
a parser, a limit of ``gtl_nb.providers.limits`` or an assumption of the dialect's code) becomes one retryable
``error`` event, and every ``decode_error`` is wrapped by ``error_boundary``: neither lets a foreign exception
out, whatever the provider sent.

A **local generator** (``LocalProvider``) yields ``(delay_seconds, event)`` pairs; the engine
sleeps the delays, so the generator stays pure and tests run at full speed with pace 0.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote

import msgspec

from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import (
    TERMINAL_EVENTS,
    CompletionRequest,
    Error,
    Message,
    ModelInfo,
    StreamEvent,
    Token,
    ToolCall,
    data_url_parts,
)
from gtl_nb.providers.limits import (
    MAX_BODY_BYTES,
    MalformedResponseError,
    append_capped,
    bounded_message,
    parse_json,
    parse_json_object,
)
from gtl_nb.providers.url_hint import with_url_hint

Unit = TypeVar("Unit")


class NotServedHere(InvalidRequestError):
    """The request asks for what this deployment's API cannot carry (structured output where it has
    none, an image URL the provider will not fetch). Another deployment may serve it, so the engine
    fails over at once — no retry, no breaker verdict (the provider did nothing wrong); when none can,
    the caller gets this ``INVALID_REQUEST``, naming the parameter."""


def schema_asked(response_format: Mapping[str, Any] | None, api: str) -> tuple[dict[str, Any], str | None] | None:
    """The JSON Schema (and its name) an OpenAI-shaped ``response_format`` asks of ``api``, one that takes
    a schema only (Anthropic's, Bedrock's Converse): ``None`` for ``text`` or none; ``NotServedHere``
    for ``json_object`` (no schema to give it: another deployment may serve it); ``InvalidRequestError``
    for a ``json_schema`` without one, or a type nobody knows."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_schema":
        assert response_format is not None
        wrapper = response_format.get("json_schema")
        wrapper = wrapper if isinstance(wrapper, Mapping) else response_format
        schema, name = wrapper.get("schema"), wrapper.get("name")
        if not isinstance(schema, Mapping):
            raise InvalidRequestError("response_format: type json_schema needs json_schema.schema, a JSON Schema")
        return dict(schema), name if isinstance(name, str) and name else None
    if kind == "json_object":
        raise NotServedHere(
            f"response_format: {api} answers to a JSON Schema only (type json_schema), not json_object; "
            "give the schema the answer must follow"
        )
    raise InvalidRequestError(f"response_format: unknown type {kind!r} (known: text, json_schema, json_object)")


MAX_CACHE_POINTS = 4
"""Cache breakpoints one request may carry where the API takes them (Anthropic's Messages API and
Bedrock's Converse refuse a fifth)."""


def cache_points(messages: Sequence[Message], limit: int = MAX_CACHE_POINTS) -> frozenset[int]:
    """The indexes of the messages whose ``cache_point`` a provider that caches only when asked is asked
    to honour: at most ``limit``, the last ones kept (the longest prefixes: a hit on a longer prefix
    covers the shorter) — but the last one-hour mark is kept in place of the oldest of them, which
    would otherwise always be cut (one-hour marks come before five-minute ones). A mark on a message
    with nothing to send (no text, image, tool call or result, say an assistant turn of replayed
    reasoning alone) takes no place: no breakpoint can stand there."""
    marked = [index for index, message in enumerate(messages) if message.cache_point and _carries(message)]
    if limit <= 0:
        return frozenset()
    kept = marked[-limit:]
    hours = [index for index in marked if messages[index].cache_ttl == "1h"]
    if hours and hours[-1] not in kept:  # one-hour marks come first, so the cut would take them all:
        kept = [hours[-1], *marked[-(limit - 1) :]] if limit > 1 else [hours[-1]]  # keep the last of them
    return frozenset(kept)


def cache_ttls_in_order(ttls: Sequence[str | None]) -> None:
    """``InvalidRequestError`` when, in the order a request's body holds its breakpoints (``ttls``: each
    one's ``"1h"``, ``"5m"`` or ``None`` for the default five minutes), a one-hour breakpoint follows a
    five-minute one — which Anthropic's API and Bedrock's refuse: a longer-lived prefix must come first.
    Read off the body each dialect built, after whatever it moved (system prompt first, tool results
    first in their turn)."""
    hour = [ttl == "1h" for ttl in ttls]
    if False in hour and True in hour[hour.index(False) :]:
        raise InvalidRequestError(
            'a cache_point with cache_ttl "1h" follows a five-minute one where the provider reads the prompt '
            "(system prompt first, tool results first in their turn): it keeps the longer-lived prefix first; "
            'mark the earlier points "1h" too, or this one "5m"'
        )


def _carries(message: Message) -> bool:
    """Whether ``message`` becomes a block a breakpoint may follow (never a reasoning block alone)."""
    if message.role == "tool":
        return True  # a tool result is sent even when empty
    return bool(message.content) or bool(message.images) or (message.role == "assistant" and bool(message.tool_calls))


def tool_result_text(message: Message) -> str:
    """A tool result's text for an API with no error flag (OpenAI's, Ollama's): a failed tool's
    (``tool_error``) says so in words the model reads (``said_failed``)."""
    text = message.content or ""
    return said_failed(text) if message.tool_error else text


def said_failed(text: str) -> str:
    """``text`` of a failed tool's result, saying it failed: as it is when it starts with "error"."""
    if text.lstrip()[:5].lower() == "error":
        return text
    return f"Error: {text}" if text else "Error"


def holds_tool_history(messages: Sequence[Message]) -> bool:
    """Whether ``messages`` hold a tool call or a tool result (blocks some APIs take only beside tools)."""
    return any(message.role == "tool" or message.tool_calls for message in messages)


def tool_history_as_text(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with every tool call and tool result written as text, for an API that refuses tool
    blocks in a request offering no tools (Bedrock's Converse: "The toolConfig field must be defined when
    using toolUse and toolResult content blocks"; Anthropic's Messages API: "Requests which include
    `tool_use` or `tool_result` blocks must define tools"). Nothing of the meaning is lost: an assistant
    message keeps its text and says each call it made — ``[tool call <id>: <name> <arguments>]``, the
    arguments as the model wrote them —, and a tool result becomes a user message that opens with
    ``[tool result for <id> (<name>)]`` (``… failed]`` for a failed tool's), then the result's own text
    and images in their order. The ids pair a result with its call as the blocks did. Every other field
    stays: a message's place (so its ``cache_point``), an assistant's ``provider_data``."""
    names = {call.id: call.name for message in messages for call in message.tool_calls}
    out: list[Message] = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            said = [message.content] if message.content else []
            said += [
                f"[tool call {call.id}: {call.name} {call.arguments.strip() or '{}'}]" for call in message.tool_calls
            ]
            out.append(msgspec.structs.replace(message, content="\n".join(said), tool_calls=[]))
        elif message.role == "tool":
            out.append(_tool_result_as_text(message, names))
        else:
            out.append(message)
    return out


def _tool_result_as_text(message: Message, names: Mapping[str, str]) -> Message:
    """A tool result as the user message ``tool_history_as_text`` says."""
    call_id = message.tool_call_id or ""
    name = message.name or names.get(call_id)
    opening = f"[tool result for {call_id}" + (f" ({name})" if name else "")
    opening += " failed]" if message.tool_error else "]"
    pieces = message.in_order()
    if pieces is None:
        pieces = [("text", message.content)] if message.content else []
        pieces += [("image", url) for url in message.images]
    if pieces and pieces[0][0] == "text":  # the opening and the result's first text: one text
        pieces = [("text", f"{opening}\n{pieces[0][1]}"), *pieces[1:]]
    else:
        pieces = [("text", opening), *pieces]
    return Message.from_pieces("user", pieces, cache_point=message.cache_point, cache_ttl=message.cache_ttl)


@dataclass(frozen=True)
class HttpRequest:
    """A request description the engine's HTTP runner executes."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""
    stream: bool = True

    def __repr__(self) -> str:  # headers carry keys, bodies carry prompts: never shown
        where = self.url.split("?", 1)[0]
        return f"HttpRequest({self.method} {where}, {len(self.headers)} headers, {len(self.body)} bytes)"


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

    @functools.cached_property  # (asked at every answer's end; a frozen deployment's never change)
    def secrets(self) -> tuple[str, ...]:
        """Every value of this deployment that may be a credential, to keep out of what a provider's
        answer puts in front of someone: its keys, an Azure AD token, and its extra headers' values (a
        proxy's or API manager's key travels as one: ``X-Proxy-Key``, ``Ocp-Apim-Subscription-Key``)."""
        candidates = (
            self.api_key,
            self.aws_secret_access_key,
            self.aws_session_token,
            self.options.get("azure_ad_token"),
            *self.headers.values(),
        )
        return tuple(value for value in candidates if isinstance(value, str) and value)


@dataclass(frozen=True)
class Requirement:
    """One thing a deployment must have: any one of ``any_of``'s field groups, every field of it set."""

    name: str  # what the error calls it: "api_key", "base_url", "credentials", "region"
    any_of: tuple[tuple[str, ...], ...]  # deployment fields; ``options.NAME`` for a key of its options
    hint: str | None = None  # how to provide it, when more than "set <variable> or <key>" is needed


@dataclass(frozen=True)
class ProviderNeeds:
    """What a provider type needs from its configuration, declared on its dialect class as ``needs``.

    The configuration reads it (so a plugin takes part in the hints and the checks like a built-in):
    ``env`` fills deployment fields from environment variables (first set wins), ``requires`` is
    checked before any call, ``implied_by`` lists the groups of variables whose presence alone makes
    a deployment of this type usable when nothing is configured. A type without ``needs`` is not
    checked.
    """

    env: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    requires: tuple[Requirement, ...] = ()
    implied_by: tuple[tuple[str, ...], ...] = ()

    @property
    def keyless(self) -> bool:
        return not self.requires


def needs_of(provider: Any) -> ProviderNeeds | None:
    """The ``ProviderNeeds`` a dialect or generator declares, or ``None``."""
    needs = getattr(provider, "needs", None)
    return needs if isinstance(needs, ProviderNeeds) else None


API_KEY = Requirement("api_key", (("api_key",),))
BASE_URL = Requirement("base_url", (("base_url",),))


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


ACCOUNT_PHRASES = (
    "your organization must be verified",  # OpenAI's 400 for a model the account may not use yet
)
"""How a provider's ``400`` begins when it is about the account calling it — its verification — though
sent as one about the request: ``FORBIDDEN``, the account's (so a gateway words it for its caller, and
the operator reads the provider's in the log). Matched at the start of the message only: a message
quoting the caller's own text ("… input_value='my organization must be verified'") is the caller's.
Credit used up is ``CREDIT_PHRASES``'s."""
ACCOUNT_CODES = frozenset({"account_deactivated"})
"""OpenAI's error codes for the same."""


CREDIT_PHRASES = ("your credit balance is too low",)
"""How a provider's ``400`` begins when the calling account's credit is used up (Anthropic's
``invalid_request_error``): read as OpenAI's ``insufficient_quota`` is — ``RATE_LIMIT``, not retryable
(waiting will not help, another request will not either), never ``INVALID_REQUEST``."""


def out_of_credit(message: str) -> bool:
    """Whether a provider's ``400`` says the calling account's credit is used up (``CREDIT_PHRASES``,
    at the start of the message only, as ``about_the_account`` reads)."""
    return message.lstrip()[:100].lower().startswith(CREDIT_PHRASES)


def about_the_account(message: str, code: str = "") -> bool:
    """Whether a provider's ``400`` (``message``, ``code``) is about the calling account."""
    return code in ACCOUNT_CODES or message.lstrip()[:100].lower().startswith(ACCOUNT_PHRASES)


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
    ``now``), or a "retry after N seconds" / "try again in 1.5s" hint in the message text.

    A value that is not a finite number (``inf``, ``1e999``, ``nan``) is no hint: it is ignored."""
    value = header(headers, "retry-after-ms")
    if value:
        wait = finite_seconds(value, unit=1000.0)
        if wait is not None:
            return wait
    value = header(headers, "retry-after")
    if value:
        wait = finite_seconds(value)
        if wait is not None:
            return wait
        when = _http_date(value)
        if when is not None and now is not None:
            return max(0.0, when - now)
    match = _RETRY_TEXT.search(message or "")
    if match:
        return finite_seconds(match.group(1), unit=1000.0 if (match.group(2) or "").lower() == "ms" else 1.0)
    return None


def finite_seconds(text: Any, *, unit: float = 1.0) -> float | None:
    """``text`` (a count of ``1/unit`` seconds) as seconds, at least 0; ``None`` unless it is a finite number."""
    try:
        value = float(text) / unit
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, value) if math.isfinite(value) else None


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
        message=bounded_message(message),
        retryable=(
            is_retryable_code(code) or (http_status is not None and retryable_for_status(http_status))
            if retryable is None
            else retryable
        ),
        provider=deployment.name,
        retry_after=retry_after,
        http_status=http_status,
    )


_BODY_ENCODER = msgspec.json.Encoder()


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A request body as compact UTF-8 JSON: for JSON's own types what ``json.dumps(body,
    ensure_ascii=False, separators=(",", ":"))`` writes, at a fraction of its cost. msgspec's rules
    otherwise: a non-finite float is ``null``, a date, ``Decimal``, ``UUID`` or ``bytes`` a string;
    an object it cannot encode is a ``TypeError``. (Request fields arrive validated, and
    configuration options are checked to be plain JSON when loaded: ``engine.config``.)"""
    try:
        return _BODY_ENCODER.encode(body)
    except msgspec.EncodeError as exc:
        raise TypeError(str(exc)) from None


def parse_json_body(body: bytes, *, limit: int = MAX_BODY_BYTES) -> Any:
    """The body as JSON, or ``None`` when it is not JSON (or breaks a limit of ``parse_json``)."""
    try:
        return parse_json(body, limit=limit)
    except MalformedResponseError:
        return None


def path_segment(value: str, what: str = "model") -> str:
    """``value`` as one segment of an upstream URL's path, every reserved character encoded.

    A model name reaches the path of some APIs (Gemini, Azure, Bedrock). Encoded whole, a ``/`` or a
    ``?`` cannot leave its segment; ``.`` and ``..`` are refused outright — they are unchanged by
    encoding and an HTTP stack resolves them, so ``deployments/..`` would call another resource with
    the deployment's key than the one a token's allow-list checked."""
    if value in ("", ".", ".."):
        raise InvalidRequestError(f"{what} {value!r} cannot name a resource: give the model's name")
    return quote(value, safe="")


def split_data_url(url: str, *, url_safe: bool = False) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` → ``("image/png", "AAAA")``; ``None`` for other URLs.

    The data comes back in standard base64 whatever the URL held — what every provider that takes
    inline bytes reads: URL-safe base64 (``-`` and ``_``) is translated, unless ``url_safe`` says the
    provider reads it too (Gemini: Google's SDKs write it so), and a URL without ``;base64`` (RFC
    2397's percent-encoded form) is decoded and encoded again."""
    inline = _inline_data(url, url_safe=url_safe)
    return None if inline is None else (inline[0], inline[1])


_IMAGE_TYPE_SPELLINGS = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}


def image_media_type(mime: str) -> str:
    """An image's media type as an API that takes a fixed list of them reads it: lower-case (a media type is
    case-insensitive, RFC 2045; Anthropic's list is not), and the common non-standard spellings of JPEG and
    PNG (``image/jpg``, ``image/pjpeg``, ``image/x-png``) as the standard ones. Any other type is kept: the
    provider says in its words which it takes."""
    lowered = mime.strip().lower()
    return _IMAGE_TYPE_SPELLINGS.get(lowered, lowered)


def standard_data_url(url: str) -> str:
    """``url``, or — for a ``data:`` URL whose data is not standard base64 (``split_data_url``) — the
    same image as ``data:<type>;base64,<standard base64>``: what OpenAI's API reads in an
    ``image_url``. Anything else is returned as it is."""
    inline = _inline_data(url)
    if inline is None or not inline[2]:
        return url
    return f"data:{inline[0]};base64,{inline[1]}"


def _inline_data(url: str, *, url_safe: bool = False) -> tuple[str, str, bool] | None:
    """A ``data:`` URL's type, its data in standard base64 (or left URL-safe, with ``url_safe``), and
    whether that differs from the URL's."""
    parts = data_url_parts(url) if url[:5].lower() == "data:" else None  # (a scheme is case-insensitive)
    if parts is None:
        return None
    mime, marked, start = parts
    mime, data = mime or "application/octet-stream", url[start:]
    if not marked:
        return mime, base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode("ascii"), True
    if not url_safe and ("-" in data or "_" in data):
        return mime, data.translate(_STANDARD_ALPHABET), True
    return mime, data, False


_STANDARD_ALPHABET = str.maketrans("-_", "+/")
"""URL-safe base64's two letters → the standard alphabet's (RFC 4648 §5)."""


@dataclass(frozen=True)
class ToolChoice:
    """A request's ``tool_choice``, read once for every dialect: ``mode`` is ``auto``, ``none``,
    ``required`` or ``tool`` (then ``name`` is the one tool the model must call); ``parallel`` is
    ``False`` when the answer may hold at most one tool call (OpenAI's ``parallel_tool_calls:
    false``, Anthropic's ``disable_parallel_tool_use``)."""

    mode: str
    name: str | None = None
    parallel: bool = True


_CHOICE_WORDS = {"auto": "auto", "none": "none", "required": "required", "any": "required"}


def parse_tool_choice(choice: str | Mapping[str, Any] | None) -> ToolChoice | None:
    """GTL ``tool_choice`` → ``ToolChoice`` (``None``: leave the provider's default).

    Accepted: ``"auto"``, ``"none"``, ``"required"`` (or ``"any"``), any other string as a tool's name,
    OpenAI's ``{"type": "function", "function": {"name": ...}}``, ``{"name": ...}`` and
    ``{"type": "auto" | "none" | "required" | "any"}``; an object may add ``"parallel": false`` (at
    most one tool call; Anthropic's ``"disable_parallel_tool_use": true`` says the same), alone it
    means ``auto`` with that limit.
    """
    if choice is None:
        return None
    parallel = True
    if isinstance(choice, Mapping):
        parallel = choice.get("parallel") is not False and choice.get("disable_parallel_tool_use") is not True
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if name:
            return ToolChoice("tool", str(name), parallel)
        word = choice.get("type")
        if not isinstance(word, str):
            return None if parallel else ToolChoice("auto", parallel=False)
        choice = word
    word = choice.strip()
    if word in _CHOICE_WORDS:
        return ToolChoice(_CHOICE_WORDS[word], parallel=parallel)
    return ToolChoice("tool", word, parallel) if word else None


def limited_to_one_call(tool_choice: str | Mapping[str, Any] | None) -> str | dict[str, Any]:
    """``tool_choice`` (any GTL form, or none given: ``auto``) with ``"parallel": false`` — OpenAI's
    ``parallel_tool_calls: false``, Anthropic's ``disable_parallel_tool_use`` — except ``none``, which
    calls nothing and so has nothing to limit. ``InvalidRequestError`` for what is no tool_choice."""
    if tool_choice is None:
        return {"type": "auto", "parallel": False}
    if isinstance(tool_choice, str):
        word = tool_choice.strip()
        if word == "none":
            return word
        return {"type": word, "parallel": False} if word in _CHOICE_WORDS else {"name": word, "parallel": False}
    if not isinstance(tool_choice, Mapping):
        raise InvalidRequestError(f"tool_choice must be a string or an object, not {type(tool_choice).__name__}")
    if calls_no_tool(tool_choice):
        return dict(tool_choice)
    return {**tool_choice, "parallel": False}


def calls_no_tool(tool_choice: str | Mapping[str, Any] | None) -> bool:
    """Whether ``tool_choice`` is ``none`` in any of its forms (``"none"``, ``{"type": "none", …}``)."""
    choice = parse_tool_choice(tool_choice)
    return choice is not None and choice.mode == "none"


def one_call_at_most(request: CompletionRequest) -> bool:
    """Whether ``request`` offers tools and allows at most one call in its answer (``parallel: false``)."""
    if not request.tools:
        return False
    choice = parse_tool_choice(request.tool_choice)
    return choice is not None and not choice.parallel and choice.mode != "none"


ONE_CALL_PARAM = "tool_choice.parallel"
"""What a refusal of the one-call limit names first: GTL's field, which each compatible endpoint says
as its caller sent it (``parallel_tool_calls``, ``tool_choice.disable_parallel_tool_use``)."""


def refuse_one_call_at_most(request: CompletionRequest, api: str) -> None:
    """``NotServedHere`` for an API that cannot be told to make at most one tool call, when the request
    asks it: another deployment may serve it, else the caller learns why (never more calls than asked)."""
    if one_call_at_most(request):
        raise NotServedHere(
            f"{ONE_CALL_PARAM}: {api} cannot limit an answer to one tool call; leave the limit out (the "
            "answer may then hold several calls) or send the request to a deployment that can keep it "
            "(OpenAI, Azure OpenAI, Anthropic)"
        )


def refuse_empty_turn(message: Message, index: int, api: str) -> None:
    """``InvalidRequestError`` for a user message that gives ``api`` nothing to send — no text but blank
    text, no image. Left out, the turn before it would end the conversation: an assistant's text is then
    continued (a prefill), not answered; the APIs that take blocks refuse a blank one anyway."""
    if message.role == "user":
        raise InvalidRequestError(
            f"messages[{index}] (user) holds no text or image (its text is empty or blank): {api} takes no "
            "empty turn; give it content or leave the message out"
        )


def refuse_stop_sequences(
    request: CompletionRequest,
    api: str,
    *,
    most: int | None = None,
    takes_empty: bool = True,
    takes_whitespace: bool = True,
) -> None:
    """``NotServedHere`` for ``stop`` sequences ``api`` refuses — more than ``most``, an empty one (unless
    ``takes_empty``), one of whitespace only (unless ``takes_whitespace``) — before anything is sent: the
    provider's own 400 would come back after a round trip, or be retried elsewhere with no word of why;
    another deployment of the request's list may take them, else the caller learns which and why."""
    stop = request.stop or ()
    if most is not None and len(stop) > most:
        raise NotServedHere(
            f"stop: {api} takes at most {most} stop sequences, not {len(stop)}; send fewer, or use a "
            "deployment that takes them"
        )
    for sequence in stop:
        if (not sequence and not takes_empty) or (not sequence.strip() and not takes_whitespace):
            what = "empty" if not sequence else "whitespace only"
            raise NotServedHere(
                f"stop: {api} refuses a stop sequence that is {what} ({sequence[:20]!r}); leave it out, or use "
                "a deployment that takes it"
            )


def check_tool_choice(request: CompletionRequest) -> None:
    """``InvalidRequestError`` when ``request.tool_choice`` asks what its ``tools`` cannot give: a tool
    they do not hold, or a call when there are none. Every API refuses both; without this check a
    provider whose API would not (or ``echo``) answered in prose, as if the choice had been honoured."""
    raw = request.tool_choice
    if isinstance(raw, Mapping) and not _reads_as_gtl(raw):
        return  # a provider's own shape (OpenAI's allowed_tools, custom tools): its dialect passes it on
    choice = parse_tool_choice(raw)
    if choice is None or choice.mode in ("auto", "none"):
        return
    names = [tool.name for tool in request.tools or ()]
    if not names:
        raise InvalidRequestError(
            f"tool_choice {request.tool_choice!r} asks for a tool call, but the request has no tools"
        )
    if choice.mode == "tool" and choice.name not in names:
        raise InvalidRequestError(
            f"tool_choice names {choice.name!r}, which is not among the request's tools ({', '.join(names)})"
        )


def _reads_as_gtl(choice: Mapping[str, Any]) -> bool:
    """Whether a ``tool_choice`` object is one of the shapes ``parse_tool_choice`` documents: a named
    function (OpenAI's ``{"type": "function", "function": {"name"}}``, ``{"name"}``, Anthropic's
    ``{"type": "tool", "name"}``) or ``{"type": <a mode word>}``."""
    function = choice.get("function")
    if (isinstance(function, Mapping) and function.get("name")) or choice.get("name"):
        return True
    kind = choice.get("type")
    if kind is None:  # {"parallel": false} alone: auto, with the limit
        return choice.get("parallel") is False or choice.get("disable_parallel_tool_use") is True
    return isinstance(kind, str) and kind.strip() in _CHOICE_WORDS


def reads_as_gtl(choice: str | Mapping[str, Any]) -> bool:
    """Whether ``tool_choice`` is one of GTL's forms (every string is), not a provider's own object."""
    return isinstance(choice, str) or _reads_as_gtl(choice)


def arguments_object(call: ToolCall) -> dict[str, Any]:
    """A tool call's arguments as a dict (``{}`` for empty text), read like any provider JSON: the
    arguments came from a model, and nested too deep they would crash the parser. ``ValueError``
    (a ``MalformedResponseError``) when they are not a JSON object."""
    if not call.arguments.strip():
        return {}
    return parse_json_object(call.arguments, f"tool call {call.id!r}: arguments")


def arguments_text(fragments: str) -> str:
    """Assembled tool-call argument text; empty means ``{}``."""
    return fragments if fragments.strip() else "{}"


MAX_TOOL_ID = 64  # Bedrock's documented toolUseId limit; Anthropic documents none, so the same cap serves
_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")
_TOOL_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_tool_id(call_id: str) -> str:
    """A tool-call id as the Anthropic and Bedrock APIs accept it (``^[a-zA-Z0-9_-]+$``, at most
    ``MAX_TOOL_ID`` characters). An id another provider minted (``functions.f:0``, an empty one, a
    very long one) is refused there with a 400, so it becomes its safe characters, cut short, then
    ``_`` and a hash of the whole id: the same for a call and its result, so they still pair, and
    different for two ids that differ only in what was replaced or cut. An id that fits is kept."""
    if len(call_id) <= MAX_TOOL_ID and _TOOL_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    stem = _TOOL_ID_UNSAFE.sub("_", call_id)[: MAX_TOOL_ID - len(digest) - 1]
    return f"{stem}_{digest}"


class ToolCallAssembler:
    """Collects streamed tool-call fragments keyed by index; calls come out complete and in order."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def start(self, index: int, call_id: Any = None, name: Any = None) -> None:
        """Open (or complete) call ``index``; an id or name that is not a non-empty string is ignored."""
        slot = self._calls.setdefault(index, {"id": None, "name": None, "args": []})
        if call_id and isinstance(call_id, str):
            slot["id"] = call_id
        if name and isinstance(name, str):
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


# ----------------------------------------------------------------------------------------------
# The boundary between a provider's bytes and GTL events


def is_carriable(event: StreamEvent) -> bool:
    """True when ``event`` can travel as a GTL frame: every field of its declared type, its text encodable."""
    if type(event) is Token:  # the bulk of a stream: its text came from ``parse_json`` (surrogates scrubbed)
        return type(event.text) is str and type(event.session_id) is str
    try:
        msgspec.json.decode(msgspec.json.encode(event), type=type(event))
    except Exception:  # ValidationError, UnicodeEncodeError, OverflowError, TypeError: all mean "no"
        return False
    return True


def ends_response(events: list[StreamEvent]) -> bool:
    """True when ``events`` end with a terminal event (``done`` or ``error``)."""
    return bool(events) and type(events[-1]) in TERMINAL_EVENTS


def _fault_message(exc: Exception) -> str:
    if isinstance(exc, MalformedResponseError):
        return exc.message
    detail = str(exc)[:160]
    return f"malformed response: unexpected {type(exc).__name__} while decoding it" + (f" ({detail})" if detail else "")


class BodySniffer:
    """Tells a buffered JSON body from an SSE stream by its first non-blank byte — the one copy of
    that rule for every dialect whose endpoint may answer either way (a proxy that ignores
    ``stream``, Gemini without ``alt=sse``).

    ``route(chunk)`` returns the bytes to hand the SSE parser, or ``None`` when the chunk was kept
    (a JSON body, capped at ``MAX_BODY_BYTES``) or said nothing (leading whitespace). ``mode`` is
    ``None`` until decided, then ``"json"`` or ``"sse"``; ``body`` holds the JSON body.
    """

    __slots__ = ("body", "json_starts", "mode")

    def __init__(self, streaming: bool, json_starts: bytes = b"{") -> None:
        self.mode: str | None = None if streaming else "json"
        self.json_starts = json_starts
        self.body = bytearray()

    def route(self, chunk: bytes) -> bytes | None:
        if self.mode is None:
            chunk = chunk.lstrip()  # leading whitespace says nothing: drop it rather than buffer it
            if not chunk:
                return None
            self.mode = "json" if chunk[:1] in self.json_starts else "sse"
        if self.mode == "json":
            append_capped(self.body, chunk)
            return None
        return chunk


class GuardedDecoder:
    """The base of every dialect's ``ResponseDecoder``: where a hostile body becomes one ``error`` event.

    A dialect implements ``_feed`` and ``_close`` (the contract of ``feed`` and ``close``) and hands each
    unit of its wire (SSE event, NDJSON line, event-stream frame) to ``_each``. Whatever the body does to
    the dialect's code (a ``MalformedResponseError`` from a parser or a limit, a ``TypeError``/``KeyError``/
    ``AttributeError`` on a shape nobody expected, a ``RecursionError``), the response ends with one
    ``PROVIDER_UNAVAILABLE`` error, retryable (the provider is at fault: the engine may fail over); the
    events of the units before it are kept. The guard also holds the rest of the contract: nothing after
    the terminal event, no event that cannot travel as a GTL frame, and ``close`` always ends with
    ``done`` or ``error``.
    """

    ended_early = False
    """Set by a dialect whose body ended before the answer's end (no terminator, an empty body): the
    runner then words the error alike for every provider (``engine.http._cut_short``), the dialect's
    own words — in its API's terms — going to the log."""

    def __init__(self, request: CompletionRequest, deployment: Deployment) -> None:
        self._request = request
        self._deployment = deployment
        self._terminated = False

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """The events completed by ``chunk``."""
        if self._terminated or not chunk:
            return []
        return self._guarded(self._feed, chunk)

    def close(self) -> list[StreamEvent]:
        """The events left at the end of the body, always ending with the terminal event."""
        if self._terminated:
            return []
        events = self._guarded(self._close)
        if not self._terminated:  # a dialect that forgot its terminal event must not hang the engine
            events.append(self._fault(MalformedResponseError("the response ended without a terminal event")))
            self._terminated = True
        return events

    def _feed(self, chunk: bytes) -> list[StreamEvent]:
        raise NotImplementedError

    def _close(self) -> list[StreamEvent]:
        raise NotImplementedError

    def _each(self, units: Iterable[Unit], handle: Callable[[Unit], list[StreamEvent]]) -> list[StreamEvent]:
        """The events of ``units`` handled in order, up to the terminal event; a unit its handler cannot
        read ends the response with an error after the events of the units before it."""
        events: list[StreamEvent] = []
        for unit in units:
            try:
                produced = handle(unit)
            except Exception as exc:  # the boundary: any failure on outside input is the provider's fault
                events.append(self._fault(exc))
                break
            events.extend(produced)
            if ends_response(produced):
                break
        return events

    def _guarded(self, step: Callable[..., list[StreamEvent]], *args: Any) -> list[StreamEvent]:
        try:
            events = step(*args)
        except Exception as exc:  # the boundary for what happens outside ``_each`` (framing, buffering)
            events = [self._fault(exc)]
        return self._accepted(events)

    def _accepted(self, events: list[StreamEvent]) -> list[StreamEvent]:
        """``events`` up to the first terminal one; an event no GTL frame can carry ends the response."""
        accepted: list[StreamEvent] = []
        for event in events:
            if type(event) is Token and type(event.text) is str and type(event.session_id) is str:
                accepted.append(event)  # the bulk of a stream: ``is_carriable``'s first test, without the call
                continue
            if not is_carriable(event):
                kind = type(event).__name__
                event = self._fault(MalformedResponseError(f"malformed response: a value of the wrong type in {kind}"))
            accepted.append(event)
            if type(event) in TERMINAL_EVENTS:
                self._terminated = True
                break
        return accepted

    def _fault(self, exc: Exception) -> Error:
        return error_event(self._request, self._deployment, "PROVIDER_UNAVAILABLE", _fault_message(exc), retryable=True)


DecodeError = Callable[[Any, CompletionRequest, Deployment, int, Mapping[str, str], bytes], Error]


def error_boundary(decode_error: DecodeError) -> DecodeError:
    """Decorator of a dialect's ``decode_error``: whatever the body does to it, the answer is an ``error``.

    An exception, or an event no GTL frame can carry, falls back to the HTTP status's own code; a 404
    whose message names no model says to check the deployment's ``base_url`` (``url_hint``).
    """

    @functools.wraps(decode_error)
    def guarded(
        self: Any,
        request: CompletionRequest,
        deployment: Deployment,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Error:
        try:
            error = decode_error(self, request, deployment, status, headers, body)
        except Exception as exc:  # the boundary: an error body is outside input like any other
            return _status_error(request, deployment, status, _fault_message(exc))
        if not is_carriable(error):
            return _status_error(request, deployment, status, "the error body holds a value of the wrong type")
        return with_url_hint(error, deployment, status, body)

    return guarded


def _status_error(request: CompletionRequest, deployment: Deployment, status: int, problem: str) -> Error:
    code = code_for_status(status)
    message = f"HTTP {status} from {deployment.name} ({problem})"
    return error_event(request, deployment, code, message, retryable=retryable_for_status(status), http_status=status)
