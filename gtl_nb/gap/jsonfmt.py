"""The spec's JSON structure: ``{"gap_version": ..., "message": {content, source, context, hints}}``.

``to_json`` writes every field (nulls included), in the spec's order; ``from_json`` requires
``gap_version`` (any ``0.1.x``) and ``message`` with ``content``, ``source.platform`` and
``source.chat_id``; every other field may be missing and then takes its default (``role``
"assistant", ``transform_hints`` the role's pronoun map). Unknown keys are ignored, so a newer
writer's extra fields do not break an older reader; a key twice in one object is refused. A wrong
type is a ``GAPFormatError`` naming the dotted path of the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from gtl_nb.gap.errors import GAPFormatError, GAPLimitError
from gtl_nb.gap.limits import (
    MAX_JSON_DEPTH,
    MAX_PRONOUN_MAP,
    MAX_TEXT_CHARS,
    check_text,
    json_too_deep,
    number_too_long,
)
from gtl_nb.gap.model import (
    GAP_VERSION,
    TIMESTAMP_FORMS,
    Entity,
    TransformHints,
    WrappedMessage,
    default_pronoun_map,
    iso_timestamp,
)
from gtl_nb.words import a_kind_of

_MISSING = object()
_SURROGATE = re.compile("[\ud800-\udfff]")  # only ever inside a JSON string, where an escape may stand
BOM = "\ufeff"
# The first key of a JSON object, as written (escapes and all); a GAP document's is gap_version.
# (Bounded: the longest spelling of gap_version, every letter escaped, is 66 characters.)
_FIRST_KEY_RE = re.compile(r'\{[ \t\r\n]*"(?P<key>(?:[^"\\]|\\.){0,100})"[ \t\r\n]*:')


def check_version(version: object, *, path: str = "gap_version", line: int | None = None) -> None:
    """Accept any ``0.1.x`` version string; anything else is a ``GAPFormatError``."""
    if not isinstance(version, str):
        raise GAPFormatError(f"expected a version string, got {version!r}", path=path, line=line)
    parts = version.strip().split(".")
    if parts[:2] != GAP_VERSION.split(".")[:2]:
        raise GAPFormatError(
            f"unsupported GAP version {version!r} (this reader understands {GAP_VERSION[:3]}.x)",
            path=path,
            line=line,
        )


def hints_to_dict(hints: TransformHints) -> dict[str, Any]:
    """The ``transform_hints`` object of the spec."""
    return {
        "maintain_tense": hints.maintain_tense,
        "preserve_perspective": hints.preserve_perspective,
        "pronoun_map": hints.pronoun_map.to_dict(),
    }


def to_dict(wrapped: WrappedMessage) -> dict[str, Any]:
    """The spec's JSON structure as plain Python data (``json.dumps``-ready)."""
    return {
        "gap_version": GAP_VERSION,
        "message": {
            "content": wrapped.content,
            "source": {
                "platform": wrapped.platform,
                "model": wrapped.model,
                "chat_id": wrapped.chat_id,
                "timestamp": wrapped.timestamp,
                "role": wrapped.role,
            },
            "context": {
                "thread_id": wrapped.thread_id,
                "parent_messages": list(wrapped.parent_messages),
                "entities": {
                    key: {"type": e.type, "value": e.value, "defined_in": e.defined_in}
                    for key, e in wrapped.entities.items()
                },
            },
            "transform_hints": hints_to_dict(wrapped.hints),
        },
    }


def to_json(wrapped: WrappedMessage, *, indent: int | None = None) -> str:
    """The message as GAP JSON text: compact (one line) by default, indented with ``indent``.

    A lone surrogate is written as its escape (``\\ud800``): raw, it made the text impossible to
    write as UTF-8. (A message never holds a high surrogate before a low one, which would read back
    as one character: ``WrappedMessage`` joins them.)
    """
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(to_dict(wrapped), ensure_ascii=False, indent=indent, separators=separators)
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _field(obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """``obj[key]`` checked against ``kind``; a ``None`` default makes the field nullable."""
    where = f"{path}.{key}" if path else key
    if key not in obj:
        if default is _MISSING:
            raise GAPFormatError("required field is missing", path=where)
        return default
    value = obj[key]
    if value is None and default is None:
        return None
    if not isinstance(value, kind):
        kinds = (kind,) if isinstance(kind, type) else kind
        expected = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        raise GAPFormatError(f"expected {expected}, got {_shown(value)}", path=where)
    return value


_JSON_NAMES = {str: "a string", dict: "an object", list: "an array"}


def _shown(value: Any, limit: int = 60) -> str:
    """The start of ``value`` as JSON, for an error message (never raising)."""
    try:
        return json.dumps(value, ensure_ascii=False)[:limit]
    except (TypeError, ValueError, RecursionError):  # from_dict may be handed any Python value
        return a_kind_of(value)


def _string_map(obj: Mapping[str, Any], path: str) -> dict[str, str]:
    for key, value in obj.items():
        if not isinstance(value, str):
            raise GAPFormatError(f"expected a string, got {_shown(value)}", path=f"{path}.{key}")
    return dict(obj)


def hints_from_dict(obj: Mapping[str, Any], role: str, path: str = "transform_hints") -> TransformHints:
    """Read a ``transform_hints`` object; missing fields take the role's defaults."""
    tense = _field(obj, "maintain_tense", path, str, None)
    perspective = _field(obj, "preserve_perspective", path, str, None)
    if "pronoun_map" in obj:
        pronouns: Mapping[str, str] = _string_map(_field(obj, "pronoun_map", path, dict), f"{path}.pronoun_map")
        if len(pronouns) > MAX_PRONOUN_MAP:
            too_many = f"a pronoun_map holds at most {MAX_PRONOUN_MAP} entries, not {len(pronouns)}"
            raise GAPLimitError(too_many, path=f"{path}.pronoun_map")
    else:
        pronouns = default_pronoun_map(role)
    return TransformHints(tense, perspective, pronouns)


def from_dict(data: Any) -> WrappedMessage:
    """Build a message from the spec's JSON structure (already decoded); a bad one is a ``GAPFormatError``."""
    try:
        return _from_dict(data)
    except GAPFormatError:
        raise
    except (TypeError, ValueError) as exc:  # a value the message itself refuses
        raise GAPFormatError(f"invalid message: {exc}") from None


def _from_dict(data: Any) -> WrappedMessage:
    if not isinstance(data, Mapping):
        raise GAPFormatError("a GAP document must be a JSON object")
    check_version(_field(data, "gap_version", "", str))
    message = _field(data, "message", "", dict)
    content = _field(message, "content", "message", str)
    source = _field(message, "source", "message", dict)
    context = _field(message, "context", "message", dict, {}) or {}
    role = _field(source, "role", "message.source", str, "assistant")  # "" is a wrong role, not a missing one
    if role not in ("assistant", "user", "system"):
        raise GAPFormatError(f"role must be assistant, user or system, got {role!r}", path="message.source.role")
    parents = _field(context, "parent_messages", "message.context", list, []) or []
    for index, parent in enumerate(parents):
        if not isinstance(parent, str):
            raise GAPFormatError("expected a string", path=f"message.context.parent_messages[{index}]")
    entities: dict[str, Entity] = {}
    raw_entities = _field(context, "entities", "message.context", dict, {}) or {}
    for key, raw in raw_entities.items():
        if not key:
            raise GAPFormatError("an entity key must not be empty", path="message.context.entities")
        path = f"message.context.entities.{key}"
        if not isinstance(raw, dict):
            raise GAPFormatError("expected an object", path=path)
        value = _field(raw, "value", path, str, None)
        entity_type = _field(raw, "type", path, str, None)
        if entity_type is None:
            entity_type = "ambiguous_reference" if value is None else "user_defined"
        entities[key] = Entity(
            entity_type,
            value,
            _field(raw, "defined_in", path, str, None),
        )
    hints_obj = _field(message, "transform_hints", "message", dict, None)
    hints = hints_from_dict(hints_obj or {}, role, "message.transform_hints")
    return WrappedMessage(
        content=content,
        platform=_field(source, "platform", "message.source", str),
        chat_id=_field(source, "chat_id", "message.source", str),
        role=role,
        model=_field(source, "model", "message.source", str, None),
        timestamp=_timestamp(source),
        thread_id=_field(context, "thread_id", "message.context", str, None),
        parent_messages=tuple(parents),
        entities=entities,
        transform_hints=hints,
    )


def _timestamp(source: Mapping[str, Any]) -> str | None:
    """``message.source.timestamp``: null, or an ISO-8601 time (``model.iso_timestamp``), kept as written."""
    timestamp = _field(source, "timestamp", "message.source", str, None)
    if timestamp is not None and iso_timestamp(timestamp) is None:
        raise GAPFormatError(f"expected {TIMESTAMP_FORMS}, got {_shown(timestamp)}", path="message.source.timestamp")
    return timestamp


def from_json(text: str | bytes) -> WrappedMessage:
    """Parse GAP JSON text (see the module docstring for what is required).

    Bytes are decoded as JSON's own encodings (UTF-8, or UTF-16/32 with their byte order). Any text
    gives a ``WrappedMessage`` or a ``GAPFormatError``, within the limits of ``gap.limits`` (size
    and nesting depth); a value that is neither ``str`` nor bytes is a ``TypeError``.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = _decode_bytes(bytes(text))
    return from_dict(decode(check_text(text, "a GAP JSON document")))


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` that refuses an object with a key twice (a ``GAPFormatError``).

    ``json`` keeps the last of two, other parsers the first: a document that says ``content`` twice
    would be two different messages to two readers, so neither is chosen.
    """
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise GAPFormatError(f"the key {json.dumps(key, ensure_ascii=False)} appears twice in one object")
        result[key] = value
    return result


def decode(text: str) -> Any:
    """``json.loads(text)``, nesting bounded by ``MAX_JSON_DEPTH``; any failure is a ``GAPFormatError``
    (a ``GAPLimitError`` when the text is beyond a limit of ``gap.limits``). An object with a key
    twice is one too (``unique_keys``).

    A leading byte-order mark is dropped: it is how an editor saved the text, not JSON (``json.loads``
    refuses it). ``from_json`` and ``gtl gap`` (whose files may hold a JSON array of messages) decode
    through it.
    """
    text = text.removeprefix(BOM)
    if json_too_deep(text):
        raise GAPLimitError(f"arrays/objects nested deeper than {MAX_JSON_DEPTH}")
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except GAPFormatError:
        raise
    except json.JSONDecodeError as exc:
        raise GAPFormatError(f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except RecursionError:  # the one boundary: a depth the scan missed must not escape as a foreign error
        raise GAPLimitError(f"arrays/objects nested deeper than {MAX_JSON_DEPTH}") from None
    except ValueError:  # not a JSONDecodeError: a number too long to convert (see gap.limits)
        raise GAPLimitError(f"not valid JSON: {number_too_long()}") from None


def is_meant_as_gap_json(text: str) -> bool:
    """Whether ``text`` is plainly a GAP JSON document, even one ``decode`` refuses for a limit.

    It is when its object's first key is ``gap_version`` (escaped or not, as ``to_json`` writes it
    first), or when it decodes, integers left unconverted, to an object with ``gap_version`` at its
    top. A reader that wraps other text as a message uses this to report a ``GAPLimitError`` instead
    of wrapping a GAP document as if it were prose.
    """
    text = text.removeprefix(BOM).strip()
    first = _FIRST_KEY_RE.match(text)
    if first is not None and _json_string(first.group("key")) == "gap_version":
        return True
    if len(text) > MAX_TEXT_CHARS or json_too_deep(text):
        return False  # (not decoded at all: the limits protect this decode too)
    try:
        data = json.loads(text, parse_int=lambda digits: 0)  # a too-long number is still a number
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "gap_version" in data


def _json_string(body: str) -> str | None:
    """The value of the JSON string literal ``"body"``, or None when it is not one."""
    try:
        return json.loads(f'"{body}"')
    except ValueError:
        return None


def _decode_bytes(data: bytes) -> str:
    try:
        return data.decode(json.detect_encoding(data))
    except (UnicodeDecodeError, LookupError) as exc:
        raise GAPFormatError(f"not valid JSON text: {exc}") from None
