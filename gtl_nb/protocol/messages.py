"""Every GTL message as an immutable msgspec Struct, with the spec's JSON field names exactly.

Wire messages are tagged on ``"type"``; the tag values are the spec's message types, and each class
also says its own as ``type`` (``event.type == "token"``, as on the wire; a class attribute, not a
field). Nested values (chat messages, tool definitions, tool calls, model descriptions) are untagged
structs.

Extensions the spec leaves implicit, all optional on the wire:

* ``completion_request``: ``top_p``, ``stop``, ``metadata``, ``response_format``, ``tool_choice``,
  ``reasoning`` (ask for ``reasoning`` events), ``reasoning_effort`` / ``reasoning_budget`` (how hard the
  model thinks, shown or not) and ``cache`` (per-request cache opt in/out).
* ``reasoning`` events, ``hello`` version negotiation and ``cancel``.
* a message's ``parts`` (text and images in their order) and ``cache_point`` (ask for the prompt up
  to it to be cached), ``usage``'s cache counts ``cached_tokens_in`` / ``cache_write_tokens_in``,
  and the cached and cache-write input rates of a ``provider_info`` model.
* ``done`` carries the engine's timings ``ttft_ms`` / ``latency_ms``, the answering ``provider`` /
  ``model``, the ``stop_sequence`` that ended the answer (when the provider says which), and the
  opaque ``provider_data`` (reasoning signatures…) that the answer's assistant message must carry in
  later turns, so remote clients see what embedded ones see.

Each request field beyond GTL 1.0 is a ``hello`` feature (``protocol.extensions``): a client sends it
only to a gateway that agreed, since one that does not know it would drop it silently. A new request
or message field needs its entry there (a test fails until it has one).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, ClassVar, Literal, get_args

import msgspec

Role = Literal["system", "user", "assistant", "tool"]
StatusState = Literal["queued", "streaming", "retrying", "failover", "cached"]
"""The status states this project sends. The spec gives no closed set (it shows ``streaming``), so a
``status`` carrying another is read as it is — informational, like any status but ``failover``."""
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]
ErrorCode = Literal[
    "RATE_LIMIT",
    "AUTH_FAILED",
    "FORBIDDEN",
    "INVALID_REQUEST",
    "CONTEXT_LENGTH_EXCEEDED",
    "MODEL_NOT_FOUND",
    "CONTENT_FILTERED",
    "OVERLOADED",
    "PROVIDER_UNAVAILABLE",
    "TIMEOUT",
    "CANCELLED",
    "BUDGET_EXCEEDED",
    "INTERNAL",
]
STATUS_STATES: frozenset[str] = frozenset(get_args(StatusState))
"""The status states this project sends (``codec`` keeps another as written)."""
ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))
"""The error codes this project knows (``codec.known_code`` reads another as ``INTERNAL``)."""

PROTOCOL_VERSION = "1.0"


MAX_ID_LENGTH = 256
"""Longest ``session_id`` or ``query_id`` a peer may send (ids end up in ledger rows and every event)."""
MAX_NAME_LENGTH = 512
"""Longest model or deployment name a request may carry."""
Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)]
MAX_TEMPERATURE = 2.0
"""The highest sampling temperature a request may ask for (OpenAI's and Gemini's; Anthropic's API
stops at 1 and says so itself)."""
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_TEMPERATURE)]
TopP = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
MAX_TOKENS_LIMIT = 2**31 - 1
"""The most ``max_tokens`` a request may ask for whatever the model: no model writes that many, and a
provider's API reads the number as a 32-bit integer (a larger one is its 400 after a round trip, or is
read wrapped). A model the catalog knows is held to its own maximum output by the engine."""
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS_LIMIT)]
"""A request's ``max_tokens``: at least one token (what the client and the compatible endpoints ask too; a
peer's ``0`` or ``-5`` would otherwise reach a provider, or be answered with an empty ``length`` answer),
at most ``MAX_TOKENS_LIMIT``."""
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
"""How hard a model is asked to think (``reasoning_effort``): the union of OpenAI's ``reasoning_effort``
(``none`` … ``xhigh``) and Anthropic's ``output_config.effort`` (``low`` … ``max``), least to most. Each
dialect sends its own knob and converts this one to it (``providers.effort``); ``none``: no thinking."""
REASONING_EFFORTS: tuple[str, ...] = get_args(ReasoningEffort)
"""The values of ``ReasoningEffort``, least thinking to most."""
ReasoningBudget = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_LIMIT)]
"""A request's ``reasoning_budget``: the thinking tokens the model may spend (``0``: no thinking), at most
``MAX_TOKENS_LIMIT`` as ``max_tokens``."""
IMAGE_URL_SCHEMES = ("https:", "http:", "data:")
"""How an image is given: a URL the provider fetches, or the image itself (base64 ``data:``). A gateway
takes ``http:`` from no caller (``plain_http_image``)."""


def plain_http_image(request: Any) -> str | None:
    """Where ``request`` gives an image by a plain ``http:`` URL (``messages[2].images[0]``), or ``None``.

    A gateway refuses these: the server its deployment calls fetches the URL from its own network, and an
    ``http:`` one is how a caller would reach what only that network reaches (a cloud's metadata
    service at 169.254.169.254 answers plain HTTP). The embedded client's user owns both ends."""
    for index, message in enumerate(request.messages):
        for position, url in enumerate(message.images):
            if url[:5].lower() == "http:":
                return f"messages[{index}].images[{position}]"
    return None


def image_url_refusal(url: str) -> str | None:
    """Why ``url`` cannot be an image's URL, or ``None``: only ``https:``, ``http:`` and ``data:`` URLs
    are. The gateway fetches none (each provider is sent the URL, or refuses all but ``data:``), but an
    ``ftp:``, ``file:`` or ``javascript:`` URL is no image a provider's API takes, and a server that
    fetches URLs for its model (an OpenAI-compatible one on a private network) must not be handed a
    ``file:`` one; plain ``http:`` is what such a local server often serves its images over."""
    head = url[:6].lower()
    if head == "https:" or head[:5] == "http:":
        return None
    if head[:5] == "data:":
        return data_url_refusal(url)
    scheme, colon, _ = url.partition(":")
    shown = f"{scheme[:20]}:" if colon and scheme.isascii() and scheme.isalnum() else repr(url[:20])
    return f"an image URL must be https:, http: or data: (base64), not {shown}"


BARE_IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
"""The magic bytes a bare base64 image starts with, and its media type (WebP, ``RIFF....WEBP``, aside)."""


def bare_image_type(text: str) -> str | None:
    """The media type of the image ``text`` holds as bare base64 (PNG, JPEG, GIF or WebP, told by its
    first bytes), or ``None``: only its first 16 characters are decoded, whatever its size."""
    head = text[:16]  # 12 bytes: WebP's is the longest to tell (a shorter text is decoded whole)
    if len(head) < 4 or len(head) % 4 or not head.isascii():
        return None
    altchars = _URL_SAFE if ("-" in head or "_" in head) else None
    try:
        first = base64.b64decode(head, altchars=altchars, validate=True)
    except ValueError:
        return None
    if first[:4] == b"RIFF" and first[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in BARE_IMAGE_TYPES if first.startswith(magic)), None)


def bare_image_url(text: str) -> str | None:
    """``text`` — an image's bare base64, as the GTL spec's vision example gives it — as the ``data:`` URL
    every provider is sent; ``None`` when it is not a PNG, JPEG, GIF or WebP image's base64. The URL is
    checked as any ``data:`` URL is (``data_url_refusal``): bare base64 that is not base64 throughout is
    refused with that check's words."""
    kind = bare_image_type(text)
    if kind is None:
        return None
    url = f"data:{kind};base64,{text}"
    refused = data_url_refusal(url)
    if refused is not None:
        raise ValueError(f"{refused}, given as bare base64")
    return url


def _replace_image(message: Message, position: int, url: str) -> None:
    images = list(message.images)
    images[position] = url
    msgspec.structs.force_setattr(message, "images", images)


_BASE64_CHUNK = 1 << 20
"""Characters of a ``data:`` URL's base64 decoded at a time to check it (a multiple of 4): what the
check holds in memory at once, whatever the image's size."""


def data_url_parts(url: str) -> tuple[str, bool, int] | None:
    """A ``data:`` URL's media type (``""`` when it names none), whether its data is base64 — RFC 2397's
    ``;base64``, last in the header — and where its data begins; ``None`` without the comma that ends
    the header. The one reading of the header: what is checked here is what the providers send on."""
    comma = url.find(",", 5)
    if comma == -1:
        return None
    header = url[5:comma]
    rest, marker, last = header.rpartition(";")
    in_base64 = bool(marker) and last.strip().lower() == "base64"  # ("data:base64,…" is a type, not a marker)
    return (rest if in_base64 else header).partition(";")[0].strip(), in_base64, comma + 1


def data_url_refusal(url: str) -> str | None:
    """Why the ``data:`` URL ``url`` cannot be an image, or ``None``: one that says ``;base64`` must carry
    padded base64 (RFC 4648: the standard alphabet, or the URL-safe one throughout, as Google's SDKs
    write Gemini's inline data; no spaces or line breaks), and something of it. Every provider decodes
    it, and one that cannot answers a 400 after a round trip in its own words (Bedrock's about bytes
    the caller never saw); refused here, it is the caller's named part, before any provider is called.

    Linear in the URL, and never holds more than ``_BASE64_CHUNK`` characters of it decoded: the
    base64 is checked a chunk at a time, with no regular expression of this module's own."""
    parts = data_url_parts(url)
    if parts is None:
        return "a data: URL needs a comma before its data (data:image/png;base64,…)"
    if not parts[1]:
        return None  # percent-encoded (RFC 2397): each provider gets it as base64 (providers.base.split_data_url)
    start, end = parts[2], len(url)
    size = end - start
    if not size:
        return "the image's base64 data is empty"
    if size % 4:
        return f"the image's base64 data is {size:,} characters, not a multiple of 4 (cut short, or not padded with =)"
    if url.find("=", start, end - 2) != -1:  # padding only at the end: a chunk alone cannot tell
        return "the image's base64 data has '=' before its end"
    return _base64_refusal(url, start, end)


_URL_SAFE = b"-_"
_NOT_BASE64 = "the image's data is not valid base64 (A-Z, a-z, 0-9, + and / or - and _, padded with =; no spaces)"


def _base64_refusal(url: str, start: int, end: int) -> str | None:
    """Why ``url[start:end]`` (a multiple of 4 characters, ``=`` only at its end) is not base64 of one
    alphabet, or ``None``; decoded ``_BASE64_CHUNK`` characters at a time."""
    url_safe = url.find("-", start, end) != -1 or url.find("_", start, end) != -1
    if url_safe and (url.find("+", start, end) != -1 or url.find("/", start, end) != -1):
        return "the image's base64 data mixes the standard alphabet (+ /) with the URL-safe one (- _)"
    altchars = _URL_SAFE if url_safe else None
    for at in range(start, end, _BASE64_CHUNK):
        try:
            base64.b64decode(url[at : min(at + _BASE64_CHUNK, end)], altchars=altchars, validate=True)
        except ValueError:  # (binascii.Error is one; so is a character outside ASCII)
            return _NOT_BASE64
    return None


class ToolCall(msgspec.Struct, frozen=True):
    """One complete function call: ``arguments`` is the JSON text of an object."""

    id: str
    name: str
    arguments: str = "{}"

    @property
    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict (``{}`` for empty text)."""
        if not self.arguments.strip():
            return {}
        value = json.loads(self.arguments)
        if not isinstance(value, dict):
            raise ValueError(f"tool call {self.id!r}: arguments are not a JSON object")
        return value


PartType = Literal["text", "image"]


class Part(msgspec.Struct, frozen=True, omit_defaults=True):
    """One piece of a user or tool message's content, in order: ``text``, or an ``image`` — given with
    its ``url`` (``IMAGE_URL_SCHEMES``), which the message moves to its ``images`` (see ``Message``)."""

    type: PartType
    text: str = ""
    url: str = ""

    def __post_init__(self) -> None:
        if self.type == "image" and self.text:
            raise ValueError("an image part has no text")
        if self.type == "text" and self.url:
            raise ValueError("a text part has no url")


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    """A chat message.

    ``images`` holds ``data:``, ``https:`` or ``http:`` URLs (an image's bare base64, as the spec's vision
    example gives it, becomes its ``data:`` URL: ``bare_image_url``); an assistant message may carry ``tool_calls``; a
    tool result has role ``tool`` and ``tool_call_id``. ``provider_data`` is opaque state a provider
    dialect attached (a reasoning signature, say) that is replayed verbatim in later turns.

    ``parts``: the content of a user or tool message given in pieces whose order matters — text and
    images (``"Image 1:", <image>, "Image 2:", <image>``), or several texts (Anthropic's adjacent text
    blocks) — sent as those pieces, in that order, to every provider that takes them (``in_order``):
    never one text of them joined with a character the caller did not send. The message keeps each
    image once: an image part's URL moves to ``images`` (the parts then say only where each image
    falls), and ``content`` becomes the texts joined by newlines — what a peer or a provider without
    order (Ollama's API, OpenAI's for text alone) reads.

    ``cache_point``: the prompt up to and including this message is worth keeping in the provider's
    prompt cache (a long system prompt, a document, the conversation so far). Providers that cache
    only when asked (Anthropic, Bedrock's Converse) are asked to; those that cache by themselves
    (OpenAI, Gemini) need nothing. A cache write is billed above the input rate: mark a prefix
    that later requests will repeat. ``cache_ttl`` (with ``cache_point`` only) says how long: ``"5m"``,
    the providers' default, renewed by every hit; or ``"1h"`` for prefixes reread less often than
    every five minutes (a notebook's pauses): Anthropic's one-hour cache, and Bedrock's for Claude 4.5
    and later, whose writes cost twice the input rate instead of 1.25 times.

    ``tool_error``: on a ``tool`` message, the tool failed and ``content`` says how. Anthropic reads it
    as ``is_error``, Bedrock's Converse as ``status: "error"``, Gemini as the ``error`` key of the
    function's response; OpenAI and Ollama have no such flag and read a text that starts with
    ``Error:`` (``providers.base.tool_result_text``).
    """

    role: Role
    content: str | None = None
    images: list[str] = []
    tool_calls: list[ToolCall] = []
    tool_call_id: str | None = None
    name: str | None = None
    provider_data: dict[str, Any] | None = None
    cache_point: bool = False
    parts: list[Part] = []
    tool_error: bool = False
    cache_ttl: str | None = None

    def __post_init__(self) -> None:
        if self.parts:  # the parts decide: content and images follow them, for whoever reads those
            _settle_parts(self)
        for position, url in enumerate(self.images):
            refused = image_url_refusal(url)
            if refused is not None:
                try:  # the spec's vision example gives an image's base64 bare
                    as_url = bare_image_url(url)
                except ValueError as exc:
                    raise ValueError(f"{exc} (the message's images[{position}])") from None
                if as_url is None:
                    raise ValueError(f"{refused} (the message's images[{position}])")
                _replace_image(self, position, as_url)
        if self.tool_error and self.role != "tool":
            raise ValueError(f"tool_error is a tool result's flag; this message's role is {self.role!r}")
        if self.cache_ttl is not None:
            _check_cache_ttl(self)

    @classmethod
    def from_pieces(cls, role: Role, pieces: Sequence[tuple[str, str]], **fields: Any) -> Message:
        """The message of ``pieces`` — ``("text", text)`` and ``("image", url)`` in order — with ``fields``:
        text and images together, or several texts, keep their pieces and order in ``parts``; one text is
        the content; images alone are the images."""
        if len(pieces) == 1 and pieces[0][0] == "text":  # the common case: one text
            return cls(role=role, content=pieces[0][1], **fields)
        texts = [value for kind, value in pieces if kind == "text"]
        images = [value for kind, value in pieces if kind == "image"]
        if texts and len(pieces) > 1:
            parts = [
                Part(type="image", url=value) if kind == "image" else Part(type="text", text=value)
                for kind, value in pieces
            ]
            return cls(role=role, parts=parts, **fields)
        return cls(role=role, content="\n".join(texts) if texts else None, images=images, **fields)

    def in_order(self) -> list[tuple[PartType, str]] | None:
        """The content as ``("text", text)`` and ``("image", url)`` in the order ``parts`` gives, blank
        texts left out (no API takes a blank text block, and one says nothing), or ``None`` without
        parts (each provider's dialect then places ``images`` as its API prefers)."""
        if not self.parts:
            return None
        urls = iter(self.images)
        pieces = [(part.type, part.text if part.type == "text" else next(urls)) for part in self.parts]
        return [(kind, value) for kind, value in pieces if kind == "image" or value.strip()]


CACHE_TTLS = ("5m", "1h")
"""The prompt-cache lifetimes a ``cache_point`` may ask for (Anthropic's and Bedrock's)."""


def longest_ttl(ttls: Iterable[str | None]) -> str | None:
    """The lifetime one mark takes from the markers that fall on it: the longest asked for, ``None``
    (the providers' five minutes) when none names one."""
    named = set(ttls)
    return "1h" if "1h" in named else "5m" if "5m" in named else None


def _check_cache_ttl(message: Message) -> None:
    if message.cache_ttl not in CACHE_TTLS:
        raise ValueError(f"cache_ttl is 5m or 1h, not {message.cache_ttl!r}")
    if not message.cache_point:
        raise ValueError("cache_ttl says how long a cache_point is kept: give cache_point too")


def _settle_parts(message: Message) -> None:
    """``Message.parts``' rule: every image once, in ``images``; ``content`` the texts joined."""
    parts = message.parts
    image_parts = [part for part in parts if part.type == "image"]
    urls = [part.url for part in image_parts if part.url]
    if urls:
        if len(urls) != len(image_parts):
            raise ValueError("give every image part its url, or none (the images are then the message's images)")
        if message.images and list(message.images) != urls:
            raise ValueError("the message's images differ from its image parts' urls")
        msgspec.structs.force_setattr(message, "images", urls)
        parts = [Part(type="image") if part.type == "image" else part for part in parts]
        msgspec.structs.force_setattr(message, "parts", parts)
    elif len(message.images) != len(image_parts):
        raise ValueError(f"{len(image_parts)} image parts for {len(message.images)} images")
    texts = [part.text for part in parts if part.type == "text"]
    msgspec.structs.force_setattr(message, "content", "\n".join(texts) if texts else None)


class Tool(msgspec.Struct, frozen=True, omit_defaults=True):
    """A function the model may call; ``parameters`` is a JSON Schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})


class ModelInfo(msgspec.Struct, frozen=True):
    """One model of a ``provider_info`` message (the spec's fields, prices in USD per 1k tokens)."""

    name: str
    context_window: int | None = None
    max_tokens: int | None = None
    supports_streaming: bool = True
    supports_functions: bool = False
    supports_vision: bool = False
    cost_per_1k_input: float | None = None
    cost_per_1k_output: float | None = None
    cost_per_1k_cached_input: float | None = None
    cost_per_1k_cache_write_input: float | None = None
    cost_per_1k_cache_write_1h_input: float | None = None


# ----------------------------------------------------------------------------------------------
# Wire messages (tagged on "type")


class CompletionRequest(msgspec.Struct, frozen=True, tag="completion_request", omit_defaults=True):
    """Ask for a completion. ``providers`` is the ordered failover list.

    ``reasoning`` asks for ``reasoning`` events; ``reasoning_effort`` and ``reasoning_budget`` say how hard
    the model thinks, whether or not its thinking is shown (effort without ``reasoning``: think this hard,
    show nothing — what OpenAI's chat API does). Unset, the deployment's own option decides. Given
    together they must agree on whether to think at all: ``none`` with a budget above 0, or a budget of
    0 with another effort, is refused.
    """

    type: ClassVar[Literal["completion_request"]] = "completion_request"

    session_id: Id
    model: Name
    messages: list[Message]
    provider: Name | None = None
    # always written (a reader should not have to know the default); a factory default is one
    # msgspec's omit_defaults does not drop, unlike the unset optional fields after it
    stream: bool = msgspec.field(default_factory=lambda: True)
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    providers: list[str] | None = None
    metadata: dict[str, Any] | None = None
    reasoning: bool = False
    cache: bool | None = None
    reasoning_effort: ReasoningEffort | None = None
    reasoning_budget: ReasoningBudget | None = None

    def __post_init__(self) -> None:
        budget, effort = self.reasoning_budget, self.reasoning_effort
        if budget is not None and effort is not None and (budget == 0) != (effort == "none"):
            raise ValueError(
                f"reasoning_effort {effort!r} and reasoning_budget {budget} disagree on whether to think: "
                "effort 'none' goes with budget 0 (or none), budget 0 with effort 'none' (or none)"
            )


class Status(msgspec.Struct, frozen=True, tag="status", omit_defaults=True):
    """Progress of a session. A ``failover`` status discards everything received so far.

    A ``streaming`` status may also say what the provider counted of the input as its answer began
    (``tokens_in`` and its cache parts, as ``Usage`` names them: Anthropic's ``message_start``, before any
    content): the provider's own counts, never an estimate — a provider that tells nothing early gets no
    such status. The session's ``usage`` stays its account (a status is never a second usage: the
    protocol allows one); a ``failover`` voids these counts with the rest."""

    type: ClassVar[Literal["status"]] = "status"

    session_id: str
    state: StatusState
    """One of ``StatusState`` from this project; a peer's other state is kept as it wrote it (forward
    compatibility, ``codec.known_state``: it ends nothing and is no bad frame). Over gRPC, whose enum
    has no number for it, it travels as text in ``Status.peer_state``."""
    from_provider: str | None = None
    to_provider: str | None = None
    reason: str | None = None
    attempt: int | None = None
    tokens_in: int | None = None
    cached_tokens_in: int | None = None
    cache_write_tokens_in: int | None = None
    cache_write_1h_tokens_in: int | None = None


class Token(msgspec.Struct, frozen=True, tag="token", gc=False):
    """A piece of answer text."""

    type: ClassVar[Literal["token"]] = "token"

    session_id: str
    text: str


class Reasoning(msgspec.Struct, frozen=True, tag="reasoning", omit_defaults=True):
    """A piece of the model's reasoning (only sent when the request asked for it).

    A provider that writes its reasoning in signed blocks (Anthropic, Claude on Bedrock) has each block's
    end marked where it comes, so a reader can keep the blocks apart and sign each as it ends: the last
    piece of a block carries its ``signature`` (its text may be empty), and a block the provider sent
    encrypted is one piece of empty text carrying its ``redacted`` data. Both are opaque, and the
    ``done``'s ``provider_data`` still holds the whole state for the next turn."""

    type: ClassVar[Literal["reasoning"]] = "reasoning"

    session_id: str
    text: str
    signature: str | None = None
    redacted: str | None = None


class ToolCallEvent(msgspec.Struct, frozen=True, tag="tool_call"):
    """One complete tool call."""

    type: ClassVar[Literal["tool_call"]] = "tool_call"

    session_id: str
    function: ToolCall

    @property
    def arguments(self) -> dict[str, Any]:
        """The call's arguments, parsed."""
        return self.function.parsed_arguments


class Usage(msgspec.Struct, frozen=True, tag="usage"):
    """Token counts as the provider reported them (``None`` = not reported, never estimated).

    ``tokens_in`` counts every input token; ``cached_tokens_in`` is the part of it read from the
    provider's prompt cache, ``cache_write_tokens_in`` the part written to it (billed above the input
    rate by the providers that cache on request), ``cache_write_1h_tokens_in`` the part of those
    written to the one-hour cache (``cache_ttl``, billed higher still). ``tokens_out`` includes
    ``reasoning_tokens_out``."""

    type: ClassVar[Literal["usage"]] = "usage"

    session_id: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    cached_tokens_in: int | None = None
    reasoning_tokens_out: int | None = None
    cost: float | None = None
    cache_hit: bool = False
    cache_write_tokens_in: int | None = None
    cache_write_1h_tokens_in: int | None = None


class Done(msgspec.Struct, frozen=True, tag="done", omit_defaults=True):
    """The session ended normally."""

    type: ClassVar[Literal["done"]] = "done"

    session_id: str
    finish_reason: FinishReason = "stop"
    provider: str | None = None
    model: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    provider_data: dict[str, Any] | None = None
    stop_sequence: str | None = None


class Error(msgspec.Struct, frozen=True, tag="error", omit_defaults=True):
    """The session ended with an error.

    A peer's ``code`` this side does not know (a newer gateway's, another implementation's: the spec
    lists no closed set) is read as ``INTERNAL`` — an ``InternalError``, not retryable unless the frame
    says ``retryable`` — with the peer's code kept in ``peer_code`` and its message as it wrote it
    (``codec``; the exception says both)."""

    type: ClassVar[Literal["error"]] = "error"

    session_id: str
    code: ErrorCode
    message: str
    retryable: bool = False
    provider: str | None = None
    retry_after: float | None = None
    http_status: int | None = None
    peer_code: str | None = None
    """The code the peer wrote when it is none of ``ErrorCode`` (``code`` is then ``INTERNAL``)."""


class ProviderInfo(msgspec.Struct, frozen=True, tag="provider_info", omit_defaults=True):
    """What a provider (deployment) offers."""

    type: ClassVar[Literal["provider_info"]] = "provider_info"

    provider: str
    models: list[ModelInfo] = []
    offline: bool = False
    provider_type: str | None = None


class Hello(msgspec.Struct, frozen=True, tag="hello", omit_defaults=True):
    """Version negotiation: a client offers ``versions``; the server answers with one ``version``.

    ``token`` is the client's GhostToken on transports with no header to carry it (stdio, QUIC).
    """

    type: ClassVar[Literal["hello"]] = "hello"

    versions: list[str] | None = None
    version: str | None = None
    features: list[str] = []
    token: str | None = None
    max_frame_bytes: int | None = None
    """In the server's answer: the largest frame it accepts, so a client refuses a larger request itself
    (an extension of GTL 1.0; a peer that does not know it skips it)."""

    def __repr__(self) -> str:  # the token is a credential: never in a repr, hence a log or a traceback
        token = "'[redacted]'" if self.token is not None else "None"
        return (
            f"Hello(versions={self.versions!r}, version={self.version!r}, features={self.features!r}, "
            f"token={token}, max_frame_bytes={self.max_frame_bytes!r})"
        )


class Cancel(msgspec.Struct, frozen=True, tag="cancel"):
    """Stop a running session; it ends with a ``CANCELLED`` error."""

    type: ClassVar[Literal["cancel"]] = "cancel"

    session_id: Id


class Query(msgspec.Struct, frozen=True, tag="query", omit_defaults=True):
    """A question to the server that is not a completion (an extension of GTL 1.0, feature ``query``).

    ``name`` says what is asked — ``usage`` (the caller's ledger rows; ``params`` are its filters),
    ``breakers`` (circuit-breaker states), ``models`` (a deployment's live model list, ``params``
    ``{"deployment": ...}``) — and the server answers with one ``answer`` carrying the same ``query_id``.
    """

    type: ClassVar[Literal["query"]] = "query"

    query_id: Id
    name: Name
    params: dict[str, Any] = {}


class Answer(msgspec.Struct, frozen=True, tag="answer", omit_defaults=True):
    """The server's reply to one ``query``: ``result`` (a JSON object), or ``error`` (its ``session_id``
    is the ``query_id``) when the query was refused or failed."""

    type: ClassVar[Literal["answer"]] = "answer"

    query_id: str
    result: dict[str, Any] | None = None
    error: Error | None = None


StreamEvent = Status | Token | Reasoning | ToolCallEvent | Usage | Done | Error
TERMINAL_EVENTS: frozenset[type] = frozenset((Done, Error))
"""The event types that end a session. The per-event paths test ``type(event) in TERMINAL_EVENTS`` (or
``type(event) is Done``) rather than ``isinstance``: the event types are final (below), and an
``isinstance`` that fails goes on to look up the object's ``__class__``, which costs more than the test."""


def _final(cls: type, **kwargs: Any) -> None:
    raise TypeError(
        f"{cls.__mro__[1].__name__} is a GTL event type and cannot be subclassed: the engine tells events "
        "apart by their exact type (a provider plugin yields the protocol's own event types)"
    )


for _event_type in (Status, Token, Reasoning, ToolCallEvent, Usage, Done, Error):
    _event_type.__init_subclass__ = classmethod(_final)  # type: ignore[assignment,method-assign]
del _event_type
WireMessage = CompletionRequest | StreamEvent | ProviderInfo | Hello | Cancel | Query | Answer
MESSAGE_TYPES: dict[str, type] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        CompletionRequest,
        Status,
        Token,
        Reasoning,
        ToolCallEvent,
        Usage,
        Done,
        Error,
        ProviderInfo,
        Hello,
        Cancel,
        Query,
        Answer,
    )
}
