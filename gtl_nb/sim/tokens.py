"""What a request's input costs in tokens, estimated the way each provider bills it (within about 20 %).

A provider bills everything it puts in front of the model, not just the last user message: the system
prompt, every turn of the conversation, the tool definitions (and the hidden instructions that come with
them), tool calls and results, images and a few tokens of framing per message. Each simulator module
collects those parts of its own request dialect into a :class:`Tally` and prices it with its provider's
:class:`Rates`; the recorded fixtures (``tests/fixtures/wire``) carry the real usage the rates were
checked against.

Text is counted the way BPE tokenizers split English: one token per word or number group, one per
punctuation mark, long words in pieces of about eight letters. Structured values (tool arguments and
results, JSON Schemas) count their keys and values plus one token of punctuation per entry. Images use
their provider's published rule on the pixel size read from the image header; an image given by URL
(its bytes unseen) counts as a typical 600x400 photo.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "UNKNOWN_IMAGE_SIZE",
    "Rates",
    "Tally",
    "anthropic_image_tokens",
    "data_url_bytes",
    "gemini_image_tokens",
    "image_size",
    "openai_image_tokens",
    "text_tokens",
    "value_tokens",
]

#: the size assumed for an image the simulator cannot see (given by URL)
UNKNOWN_IMAGE_SIZE = (600, 400)

_PIECE = re.compile(r"[A-Za-z]+|[0-9]+|\S")
_WORD_CHUNK = 8  # letters per token in long words ("tokenizers" -> 2)
_DIGIT_CHUNK = 3  # digits per token ("2026" -> 2)


def text_tokens(text: str) -> int:
    """Tokens of plain text: words, digit groups and single marks (at least 0)."""
    count = 0
    for match in _PIECE.finditer(text):
        piece = match.group()
        if piece[0].isdigit():
            count += math.ceil(len(piece) / _DIGIT_CHUNK)
        elif piece[0].isascii() and piece[0].isalpha():
            count += math.ceil(len(piece) / _WORD_CHUNK)
        else:
            count += 1
    return count


def value_tokens(value: Any, depth: int = 0) -> int:
    """Tokens of a JSON value as a model reads it: keys and values, one token of punctuation per entry."""
    if depth > 32:  # a hostile nesting costs its brackets, not a recursion error
        return 1
    if isinstance(value, dict):
        return 1 + sum(text_tokens(str(k)) + value_tokens(v, depth + 1) + 1 for k, v in value.items())
    if isinstance(value, list):
        return 1 + sum(value_tokens(v, depth + 1) + 1 for v in value)
    if isinstance(value, str):
        return text_tokens(value)
    return 1  # a number, true, false or null


def _schema_tokens(schema: Any, per_property: int, depth: int = 0) -> int:
    """Tokens of a tool's parameter schema: property names, descriptions, enums and nested schemas."""
    if not isinstance(schema, dict) or depth > 8:
        return 0
    count = text_tokens(str(schema.get("description") or ""))
    count += sum(value_tokens(v) for v in schema.get("enum") or [])
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, sub in properties.items():
            count += per_property + text_tokens(str(name)) + _schema_tokens(sub, per_property, depth + 1)
    count += _schema_tokens(schema.get("items"), per_property, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or []:
            count += _schema_tokens(sub, per_property, depth + 1)
    return count


@dataclass(frozen=True)
class Rates:
    """One provider's framing costs, in tokens, on top of the counted text."""

    per_request: int = 0  # the frame of the prompt (the reply's priming, the conversation's markers)
    per_message: int = 0  # role markers around each turn
    per_part: int = 0  # the wrapping of each tool call or tool result in the conversation
    with_tools: int = 0  # hidden tool-use instructions, paid once by a request that offers tools
    per_tool: int = 0  # the wrapping of one tool definition
    per_property: int = 0  # a parameter's type and punctuation
    per_server_tool: int = 0  # a provider-run tool (web search…), whose definition is hidden and long
    with_thinking: int = 0  # the instructions that switch extended thinking on
    image: Callable[[int, int], int] = field(default=lambda width, height: 0)


@dataclass
class Tally:
    """The billable parts of one request, collected by a simulator from its own dialect."""

    texts: list[str] = field(default_factory=list)  # system prompt, turns, tool results as text
    values: list[Any] = field(default_factory=list)  # structured parts: tool arguments, function responses
    images: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each image
    tools: list[dict[str, Any]] = field(default_factory=list)  # {"name", "description", "parameters"}
    messages: int = 0
    parts: int = 0  # tool calls and tool results in the conversation
    server_tools: int = 0
    thinking: bool = False

    def image(self, data: bytes | None) -> None:
        """Count an image from its bytes (``None`` when only its URL is known)."""
        self.images.append((image_size(data) if data else None) or UNKNOWN_IMAGE_SIZE)

    def total(self, rates: Rates) -> int:
        """The input tokens the provider would bill for these parts (at least 1)."""
        count = rates.per_request + rates.per_message * self.messages + rates.per_part * self.parts
        count += sum(text_tokens(t) for t in self.texts) + sum(value_tokens(v) for v in self.values)
        count += sum(rates.image(w, h) for w, h in self.images)
        if self.tools:
            count += rates.with_tools
        for tool in self.tools:
            count += rates.per_tool + text_tokens(str(tool.get("name") or ""))
            count += text_tokens(str(tool.get("description") or ""))
            count += _schema_tokens(tool.get("parameters"), rates.per_property)
        count += rates.per_server_tool * self.server_tools
        count += rates.with_thinking if self.thinking else 0
        return max(1, count)


# -- images ------------------------------------------------------------------------------------------------


def data_url_bytes(url: str) -> bytes | None:
    """The bytes of a ``data:…;base64,`` URL (None for any other URL or bad base64)."""
    if not url.startswith("data:") or ";base64," not in url[:100]:
        return None
    return b64_bytes(url.split(",", 1)[1])


def b64_bytes(data: str) -> bytes | None:
    """Standard or URL-safe base64 (as Gemini's proto JSON writes it), or None."""
    try:
        return base64.b64decode(data.replace("-", "+").replace("_", "/") + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WebP or JPEG header, or None — also for a header that says 0 wide
    or high, which no image is (a malformed one, counted as an image of unknown size)."""
    size = _header_size(data)
    return size if size is not None and size[0] > 0 and size[1] > 0 else None


def _header_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The size in a WebP's first chunk: extended (VP8X), lossy (VP8) or lossless (VP8L)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        return width, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments to the frame header (SOFn), which holds the size."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def openai_image_tokens(model: str) -> Callable[[int, int], int]:
    """OpenAI's published rules: 32-pixel patches for the small 4.1/5/o4 models, 512-pixel tiles otherwise."""
    multiplier = {"gpt-4.1-mini": 1.62, "gpt-4.1-nano": 2.46, "gpt-5-mini": 1.62, "gpt-5-nano": 2.46, "o4-mini": 1.72}
    family = next((name for name in multiplier if model.startswith(name)), None)
    if family is not None:
        return lambda w, h: math.ceil(min(1536, math.ceil(w / 32) * math.ceil(h / 32)) * multiplier[family])
    base, per_tile = (2833, 5667) if model.startswith("gpt-4o-mini") else (85, 170)
    return lambda w, h: base + per_tile * _openai_tiles(w, h)


def _openai_tiles(width: int, height: int) -> int:
    """512-pixel tiles of an image scaled to fit 2048x2048, then to a shortest side of at most 768."""
    scale = min(1.0, 2048 / max(width, height))  # fit in 2048x2048
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))  # then the shortest side at most 768
    return math.ceil(width * scale / 512) * math.ceil(height * scale / 512)


def anthropic_image_tokens(width: int, height: int) -> int:
    """Anthropic's rule: width x height / 750, after fitting the long edge in 1568 pixels."""
    scale = min(1.0, 1568 / max(width, height))
    return max(1, math.ceil(width * scale * height * scale / 750))


def gemini_image_tokens(width: int, height: int) -> int:
    """Gemini's rule: 258 for a small image, else 258 per crop tile (plus an overview tile)."""
    if width <= 384 and height <= 384:
        return 258
    unit = max(256, min(width, height) / 1.5)
    return 258 * (math.ceil(width / unit) * math.ceil(height / unit) + 1)
