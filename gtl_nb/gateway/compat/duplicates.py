"""Finding a key written twice in one object of a JSON body, without a second parse on the good path.

A JSON object with a key twice (``{"model": "a", "model": "b"}``) is read by msgspec, as by most
parsers, keeping the last value; some parsers keep the first, some refuse it. A proxy in front of the
gateway that checks the body with one rule (an allow-list of models, a cap on ``max_tokens``) and a
gateway that reads it with the other act on two different requests. The compatible endpoints refuse
such a body instead (``duplicated_key``), naming the key.

msgspec has no option to report duplicates, and a second parse (``json.loads`` with an
``object_pairs_hook``) costs several times the first. So the check counts colons instead: outside
strings a colon only ever separates a key from its value, so the body's colons are its members plus
the colons in its strings. The decoded value, encoded again (in C, no parse), has its members plus
the colons of the strings it kept. With no key repeated both are equal; with one repeated the body
has at least one member more, and strings only the dropped members held, so the counts differ. One
thing breaks the count: a colon written as the escape ``\\u003a``, which the body counts as none and
the decoded string as one. A body holding that escape (or one the encoder cannot write again) takes
the exact path, as does the one whose counts differ, to name the key: ``json.loads`` with a hook.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = ["duplicated_key"]

_ENCODER = msgspec.json.Encoder()
_NEAR_COLON = b"\\u003"
"""What every escape of a colon (``\\u003a``, ``\\u003A``) begins with: one search for both (a digit's
escape, ``\\u0031``, matches too, and only costs it the exact path)."""


class _Twice:
    """What an object holding ``key`` twice is read as on the exact path (found afterwards by its place)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


def duplicated_key(data: bytes, value: Any) -> list[str | int] | None:
    """The path to the first key written twice in one object of the JSON text ``data`` (``["messages", 0,
    "role"]``), or ``None`` when no object repeats a key. ``value`` is ``data`` as msgspec decoded it (the
    depth already checked); ``data`` is read again only when the colon count says it holds a duplicate,
    or cannot say (the module docstring)."""
    if b"\\" not in data or _NEAR_COLON not in data:  # (one byte is searched for much faster than five)
        try:
            again = _ENCODER.encode(value)
        except (TypeError, ValueError):  # what msgspec read it writes again; if not, the exact path decides
            again = None
        if again is not None and again.count(b":") == data.count(b":"):
            return None
    return _first_twice(data)


def _first_twice(data: bytes) -> list[str | int] | None:
    """The exact path: parse again, each object checked for a repeated key as it is built."""

    def pairs(members: list[tuple[str, Any]]) -> Any:
        read: dict[str, Any] = {}
        for key, item in members:
            if key in read:
                return _Twice(key)
            read[key] = item
        return read

    # numbers kept as text: only the keys matter here, and nothing is converted for nothing
    tree = json.loads(data, object_pairs_hook=pairs, parse_int=str, parse_float=str)
    return _path_to_twice(tree, [])


def _path_to_twice(node: Any, path: list[str | int]) -> list[str | int] | None:
    """Where the first ``_Twice`` lies in ``node``, in document order, with the repeated key last."""
    if isinstance(node, _Twice):
        return [*path, node.key]
    items: Sequence[tuple[str | int, Any]]
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return None
    for key, child in items:
        found = _path_to_twice(child, [*path, key])
        if found is not None:
            return found
    return None
