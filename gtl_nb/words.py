"""How messages name what they were given: a leaf every layer may use."""

from __future__ import annotations

__all__ = ["a_kind_of", "with_article"]


def with_article(name: str) -> str:
    """``name`` after its indefinite article, by its first letter: ``an int``, ``an error``, ``a list``."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def a_kind_of(value: object) -> str:
    """What ``value`` is, for a message: its type's name with an article (``an int``, ``a list``)."""
    return with_article(type(value).__name__)
