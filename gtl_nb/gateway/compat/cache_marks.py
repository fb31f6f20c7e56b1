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

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.providers.anthropic import asks_for_cache

__all__ = ["marked", "split_at_marks"]

Block = TypeVar("Block")


def marked(holder: Any, where: str) -> bool:
    """Whether ``holder`` (a block, part, message, or the body itself with ``where`` empty) carries a
    ``cache_control`` marker (``providers.anthropic.asks_for_cache``; the deployment asks for its own
    five-minute cache whatever the ``ttl``); one it cannot be is a ``FieldError`` naming the field."""
    try:
        return asks_for_cache(holder.get("cache_control") if isinstance(holder, dict) else None)
    except ValueError as exc:
        raise FieldError(f"{where}.cache_control" if where else "cache_control", str(exc)) from None


def split_at_marks(blocks: Sequence[Block], is_marked: Callable[[int, Block], bool]) -> list[tuple[list[Block], bool]]:
    """``blocks`` in runs that each end at a marked block (``True``), then the unmarked rest (``False``)."""
    runs: list[tuple[list[Block], bool]] = []
    run: list[Block] = []
    for index, block in enumerate(blocks):
        run.append(block)
        if is_marked(index, block):
            runs.append((run, True))
            run = []
    if run:
        runs.append((run, False))
    return runs
