"""``wrap_message``: content plus GAP metadata, with entities detected and merged."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from gtl_nb.gap.entities import detect_entities, merge_entities
from gtl_nb.gap.jsonfmt import hints_from_dict
from gtl_nb.gap.model import ROLES, TransformHints, WrappedMessage


def wrap_message(
    content: str,
    platform: str,
    chat_id: str,
    *,
    role: str = "assistant",
    model: str | None = None,
    timestamp: str | datetime | None = None,
    thread_id: str | None = None,
    parent_messages: Iterable[str] = (),
    entities: Mapping[str, Any] | None = None,
    transform_hints: TransformHints | Mapping[str, Any] | None = None,
    detect: bool = True,
) -> WrappedMessage:
    """Wrap ``content`` written on ``platform`` in chat/message ``chat_id`` with GAP metadata.

    Entities are detected in the content (``detect=False`` turns that off) and merged with
    ``entities``, the provided ones winning (see ``merge_entities`` for the accepted forms); detected
    values are ``defined_in`` this message. ``transform_hints`` defaults to the role's pronoun map (a
    mapping may give some fields; the rest take the defaults). ``timestamp`` is stored as given (an
    ISO-8601 string; a ``datetime`` is converted with ``isoformat()``) and ``None`` stays null —
    this package never reads the clock, so callers pass the time.
    """
    if not isinstance(content, str):
        raise TypeError(f"content must be a string, not {type(content).__name__}")
    for name, value in (("platform", platform), ("chat_id", chat_id)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string; got {value!r}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if isinstance(timestamp, datetime):
        timestamp = timestamp.isoformat()
    detected = detect_entities(content, message_id=chat_id) if detect else {}
    hints: TransformHints | None
    if transform_hints is None or isinstance(transform_hints, TransformHints):
        hints = transform_hints
    elif isinstance(transform_hints, Mapping):
        hints = hints_from_dict(transform_hints, role)
    else:
        raise TypeError("transform_hints must be a TransformHints, a mapping or None")
    return WrappedMessage(
        content=content,
        platform=platform,
        chat_id=chat_id,
        role=role,
        model=model,
        timestamp=timestamp,
        thread_id=thread_id,
        parent_messages=tuple(parent_messages) if not isinstance(parent_messages, str) else (parent_messages,),
        entities=merge_entities(detected, entities, defined_in=chat_id),
        transform_hints=hints,
    )
