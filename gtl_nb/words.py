"""How messages name what they were given: a leaf every layer may use."""

from __future__ import annotations

__all__ = ["a_kind_of"]


def a_kind_of(value: object) -> str:
    """What ``value`` is, for a message: its type's name with an article (``an int``, ``a list``)."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
