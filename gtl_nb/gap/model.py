"""The GAP data model: immutable values for a wrapped message, its entities and transform hints.

The spec's JSON nests the fields (``source``, ``context``, ``transform_hints``); the Python value is
flat, because that is what code reads (``wrapped.platform``, ``wrapped.entities["the_system"]``).
``gtl_nb.gap.jsonfmt`` maps one onto the other, field for field.

Every value here is immutable and hashable: sequences are tuples and mappings are ``FrozenMap``.
Constructors accept plain lists and dicts and convert them, so ``==`` compares by value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from gtl_nb.gap.limits import MAX_PRONOUN_MAP

GAP_VERSION = "0.1.0"
ROLES: tuple[str, ...] = ("assistant", "user", "system")
ENTITY_TYPES: tuple[str, ...] = (
    "ambiguous_reference",
    "technical_component",
    "software_version",
    "framework",
    "database",
    "file_reference",
    "user_defined",
)

# The spec's role-based pronoun mappings; the system role is left alone.
ROLE_PRONOUN_MAPS: dict[str, dict[str, str]] = {
    "assistant": {"I": "the AI assistant", "my": "the AI assistant's", "me": "the AI assistant"},
    "user": {"I": "the user", "my": "the user's", "me": "the user"},
    "system": {},
}

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """A read-only, hashable, insertion-ordered mapping.

    Equality follows ``dict`` (order-insensitive, equal to any mapping with the same items); the
    order is still kept, so a round trip through markdown or JSON writes entities back in order.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(data)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def to_dict(self) -> dict[K, V]:
        """A new plain ``dict`` with the same items, in order."""
        return dict(self._data)


def default_pronoun_map(role: str) -> FrozenMap[str, str]:
    """The spec's pronoun map for ``role`` (empty for ``system``)."""
    _check_role(role)
    return FrozenMap(ROLE_PRONOUN_MAPS[role])


def _check_role(role: object) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")


_SURROGATE = re.compile("[\ud800-\udfff]")


def join_surrogates(text: str) -> str:
    """``text`` with each high surrogate that is followed by a low one joined into their character.

    Two surrogates in a row are one character to every UTF-16 reader, and to JSON: the escapes
    ``"\\ud83d\\ude00"`` read back as one emoji, so a message holding them apart could not be
    written and read back unchanged. Lone surrogates are kept as they are.
    """
    if text.isascii() or _SURROGATE.search(text) is None:
        return text  # (nearly every text: no copy)
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _joined(value: str | None) -> str | None:
    return value if value is None else join_surrogates(value)


def _set_joined(instance: object, *names: str) -> None:
    """Join the surrogate pairs of the named string fields of a frozen dataclass (after type checks)."""
    for name in names:
        object.__setattr__(instance, name, _joined(getattr(instance, name)))


def _check_no_merged_keys(name: str, given: Mapping[str, Any], joined: Mapping[str, Any]) -> None:
    """Refuse two keys that are one once their surrogate pairs are joined: one would be dropped silently."""
    if len(joined) != len(given):
        raise ValueError(f"{name} holds two keys that are the same text once their surrogate pairs are joined")


TIMESTAMP_FORMS = (
    "an ISO-8601 date or date and time, such as 2024-05-01, 2024-05-01T12:00:00Z or 2024-05-01T12:00:00.5+02:00"
)


def iso_timestamp(text: str) -> datetime | None:
    """``text`` read as a GAP timestamp, or ``None`` when it is not one.

    The forms taken are ISO-8601's extended ones every writer of GAP uses (RFC 3339 and Python's
    ``isoformat()``): ``YYYY-MM-DD``, then optionally ``T`` (or ``t``, or a space) and ``hh:mm``,
    ``:ss``, a fraction of any length after ``.`` or ``,``, and ``Z`` or an offset. The same on every
    Python gtl_nb runs on: Python 3.10's ``fromisoformat`` reads no ``Z`` and only 3 or 6 fraction
    digits, nor an offset without its colon (``+0530``, ``strftime("%z")``'s) or without minutes
    (``+02``), so each is brought to its form before it checks the numbers' ranges. A time zone's name
    after the offset in brackets (``…+02:00[Europe/Paris]``, RFC 9557, Java's ``ZonedDateTime``) is
    taken and not read. Basic forms (``20240501``, ``T1200``) are not taken, on any Python."""
    if not text.isascii() or len(text) < 10 or text[4] != "-" or text[7] != "-":
        return None
    if not (text[:4] + text[5:7] + text[8:10]).isdigit():
        return None
    body = text
    if body.endswith("]") and "[" in body:
        body = body[: body.index("[")]
    if body and body[-1] in "Zz":
        body = body[:-1] + "+00:00"
    if len(body) > 10:
        if body[10] not in "Tt " or len(body) < 16 or not body[11:13].isdigit() or body[13] != ":":
            return None  # (a time has hours and minutes at least, in the extended form)
        body = body[:10] + "T" + _offset_with_colon(body[11:])
        mark = max(body.find(".", 11), body.find(",", 11))
        if mark != -1:
            end = mark + 1
            while end < len(body) and body[end].isdigit():
                end += 1
            digits = body[mark + 1 : end]
            if not digits:
                return None
            body = f"{body[:mark]}.{(digits + '000000')[:6]}{body[end:]}"
    try:
        return datetime.fromisoformat(body)
    except ValueError:  # a month 13, an hour 25, a letter where a digit goes
        return None


def _offset_with_colon(time: str) -> str:
    """A time of day with its UTC offset written ``±hh:mm`` (from ``±hhmm`` or ``±hh``); as it was else."""
    sign = max(time.rfind("+"), time.rfind("-"))
    if sign == -1:
        return time
    offset = time[sign + 1 :]
    if offset.isdigit() and len(offset) == 4:
        return f"{time[: sign + 1]}{offset[:2]}:{offset[2:]}"
    if offset.isdigit() and len(offset) == 2:
        return f"{time[: sign + 1]}{offset}:00"
    return time


def _check_timestamp(value: str | None) -> None:
    if value is not None and iso_timestamp(value) is None:
        raise ValueError(f"timestamp must be {TIMESTAMP_FORMS}; got {value[:60]!r}")


def _check_optional_str(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, not {type(value).__name__}")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")


@dataclass(frozen=True)
class Entity:
    """One entity: ``value`` is ``None`` while it is undefined (an ambiguous reference, say).

    ``defined_in`` is the ``chat_id`` of the message that gave the value, if known.
    """

    type: str
    value: str | None = None
    defined_in: str | None = None

    def __post_init__(self) -> None:
        _check_str("entity type", self.type)
        _check_optional_str("entity value", self.value)
        _check_optional_str("entity defined_in", self.defined_in)
        _set_joined(self, "type", "value", "defined_in")

    @property
    def defined(self) -> bool:
        """Whether the entity has a value."""
        return self.value is not None


@dataclass(frozen=True)
class TransformHints:
    """How to rewrite the content for another chat: tense, perspective and the pronoun map."""

    maintain_tense: str | None = None
    preserve_perspective: str | None = None
    pronoun_map: FrozenMap[str, str] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        _check_optional_str("maintain_tense", self.maintain_tense)
        _check_optional_str("preserve_perspective", self.preserve_perspective)
        pronoun_map = self.pronoun_map
        if not isinstance(pronoun_map, FrozenMap):
            if not isinstance(pronoun_map, Mapping):
                raise TypeError("pronoun_map must be a mapping of strings to strings")
            pronoun_map = FrozenMap(pronoun_map)
            object.__setattr__(self, "pronoun_map", pronoun_map)
        for old, new in pronoun_map.items():
            if not isinstance(old, str) or not isinstance(new, str):
                raise TypeError("pronoun_map must map strings to strings")
        if len(pronoun_map) > MAX_PRONOUN_MAP:  # (each word is a pass over the content: gap.limits)
            raise ValueError(f"pronoun_map holds at most {MAX_PRONOUN_MAP} entries, not {len(pronoun_map)}")
        joined = FrozenMap((join_surrogates(old), join_surrogates(new)) for old, new in pronoun_map.items())
        _check_no_merged_keys("pronoun_map", pronoun_map, joined)
        object.__setattr__(self, "pronoun_map", joined)
        _set_joined(self, "maintain_tense", "preserve_perspective")

    @classmethod
    def for_role(cls, role: str) -> TransformHints:
        """The default hints for a role: no tense or perspective, the role's pronoun map."""
        return cls(pronoun_map=default_pronoun_map(role))


@dataclass(frozen=True)
class WrappedMessage:
    """Content with its GAP metadata. Immutable: operations return new values.

    A message's id is its ``chat_id``; ``parent_messages`` holds such ids. ``timestamp`` is an
    ISO-8601 string or ``None`` (this package never reads the clock).
    """

    content: str
    platform: str
    chat_id: str
    role: str = "assistant"
    model: str | None = None
    timestamp: str | None = None
    thread_id: str | None = None
    parent_messages: tuple[str, ...] = ()
    entities: FrozenMap[str, Entity] = field(default_factory=FrozenMap)
    transform_hints: TransformHints | None = None

    def __post_init__(self) -> None:
        _check_str("content", self.content)
        _check_str("platform", self.platform)
        _check_str("chat_id", self.chat_id)
        _check_role(self.role)
        _check_optional_str("model", self.model)
        _check_optional_str("timestamp", self.timestamp)
        _check_timestamp(self.timestamp)
        _check_optional_str("thread_id", self.thread_id)
        if isinstance(self.parent_messages, str):
            raise TypeError("parent_messages must be a sequence of chat ids, not a single string")
        parents = tuple(self.parent_messages)
        for parent in parents:
            _check_str("parent message id", parent)
        object.__setattr__(self, "parent_messages", tuple(join_surrogates(parent) for parent in parents))
        _set_joined(self, "content", "platform", "chat_id", "model", "timestamp", "thread_id")
        entities = self.entities
        if not isinstance(entities, FrozenMap):
            entities = FrozenMap(entities)
        for key in entities:
            _check_str("entity key", key)
        joined = FrozenMap((join_surrogates(key), entity) for key, entity in entities.items())
        _check_no_merged_keys("entities", entities, joined)
        entities = joined
        object.__setattr__(self, "entities", entities)
        for key, entity in entities.items():
            if not key:  # it could never be defined: update_entity and the suggestions need a name
                raise ValueError("an entity key must not be empty")
            if not isinstance(entity, Entity):
                raise TypeError(f"entity {key!r} must be an Entity, not {type(entity).__name__}")
        # None means "the role's defaults", stored explicitly so equal messages compare equal.
        if self.transform_hints is None:
            object.__setattr__(self, "transform_hints", TransformHints.for_role(self.role))
        elif not isinstance(self.transform_hints, TransformHints):
            raise TypeError("transform_hints must be a TransformHints")

    @property
    def hints(self) -> TransformHints:
        """``transform_hints``, typed as never ``None`` (it is filled in on construction)."""
        assert self.transform_hints is not None
        return self.transform_hints

    @property
    def undefined(self) -> tuple[str, ...]:
        """Keys of the entities that have no value yet, in order."""
        return tuple(key for key, entity in self.entities.items() if entity.value is None)


def as_entity(value: Any, *, defined_in: str | None = None) -> Entity:
    """Turn a caller's entity description into an ``Entity``.

    Accepts an ``Entity`` (kept as is), a string (a ``user_defined`` value, defined in
    ``defined_in``), ``None`` (an undefined ``user_defined`` entity) or a mapping with the spec's
    ``type`` / ``value`` / ``defined_in`` fields.
    """
    if isinstance(value, Entity):
        return value
    if value is None:
        return Entity("user_defined", None, None)
    if isinstance(value, str):
        return Entity("user_defined", value, defined_in)
    if isinstance(value, Mapping):
        entity_value = value.get("value")
        return Entity(
            value.get("type") or ("user_defined" if entity_value is not None else "ambiguous_reference"),
            entity_value,
            value.get("defined_in", defined_in if entity_value is not None else None),
        )
    raise TypeError(f"cannot make an entity from {type(value).__name__}")
