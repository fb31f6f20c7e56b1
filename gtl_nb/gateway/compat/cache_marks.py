"""``cache_control`` markers in the compatible endpoints' bodies, read as GTL's ``cache_point``.

A marker stands on a block (Anthropic) or a content part (the OpenAI form other proxies take), while
GTL marks whole messages: a message whose marked block is followed by others is split there, into
one message that ends with the marked block and carries the ``cache_point``, and one with the rest
(the dialects join same-role messages back into one turn). So the breakpoint stays where it was put:
a marked document followed by a question that changes every time caches the document alone, not the
document and the question (which would be written again, at a quarter above the input price, on
every request).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.protocol.messages import Message, longest_ttl
from gtl_nb.providers.anthropic import asks_for_cache

__all__ = ["Mark", "as_fields", "longest", "mark_of", "marked", "split_at_marks"]

Block = TypeVar("Block")


@dataclass(frozen=True)
class Mark:
    """A ``cache_control`` marker read: ``ttl`` is its ``"5m"`` or ``"1h"``, ``None`` when it gives none."""

    ttl: str | None = None


def marked(holder: Any, where: str) -> Mark | None:
    """The ``cache_control`` marker ``holder`` (a block, part, message, or the body itself with ``where``
    empty) carries, or ``None`` (``providers.anthropic.asks_for_cache``); one it cannot be is a
    ``FieldError`` naming the field."""
    marker = holder.get("cache_control") if isinstance(holder, dict) else None
    if marker is None:  # (most holders: no call to tell)
        return None
    try:
        asked = asks_for_cache(marker)
    except ValueError as exc:
        raise FieldError(f"{where}.cache_control" if where else "cache_control", str(exc)) from None
    return Mark(marker.get("ttl")) if asked else None


def longest(marks: Iterable[Mark | None]) -> Mark | None:
    """The one mark of a message several markers fall on: the longest-lived (``longest_ttl``), ``None``
    when none."""
    found = [mark for mark in marks if mark is not None]
    return Mark(longest_ttl(mark.ttl for mark in found)) if found else None


def mark_of(message: Message) -> Mark | None:
    """The mark a GTL message already carries."""
    return Mark(message.cache_ttl) if message.cache_point else None


def as_fields(mark: Mark | None) -> dict[str, Any]:
    """A ``Message``'s ``cache_point`` and ``cache_ttl`` for ``mark`` (both off for ``None``)."""
    return {"cache_point": mark is not None, "cache_ttl": mark.ttl if mark is not None else None}


def split_at_marks(
    blocks: Sequence[Block], mark: Callable[[int, Block], Mark | None]
) -> list[tuple[list[Block], Mark | None]]:
    """``blocks`` in runs that each end at a marked block (with its mark), then the unmarked rest (``None``)."""
    runs: list[tuple[list[Block], Mark | None]] = []
    run: list[Block] = []
    for index, block in enumerate(blocks):
        run.append(block)
        found = mark(index, block)
        if found is not None:
            runs.append((run, found))
            run = []
    if run:
        runs.append((run, None))
    return runs
