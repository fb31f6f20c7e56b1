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
thing would break the count: a colon written as the escape ``\\u003a``, which the body counts as none
and the decoded string as one — so those escapes are counted too (``_escaped_colons``, exactly:
``\\\\u003a`` is an escaped backslash and text, no colon).

Only a body whose counts differ (or one the encoder cannot write again) takes the exact path, to name
the key — ``json.loads`` with a hook, the tree searched only when a repeat was seen — and only for a
body of at most ``NAMED_UP_TO`` bytes: a larger one is refused without the name, so no body costs
more than one Python parse of a megabyte (an escape of ``<`` or of a colon, as Go's encoder writes
them, costs nothing more than the count).
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

__all__ = ["NAMED_UP_TO", "duplicated_key"]

_ENCODER = msgspec.json.Encoder()
_COLON_ESCAPES = (b"u003a", b"u003A")
"""A colon's escape after its backslash (JSON's ``\\u`` is lower case; only the last digit is a letter)."""
_ESCAPE_RUNS = re.compile(rb"(?<!\\)(\\+)u003[aA]")
"""A whole run of backslashes before ``u003a``: the look-behind starts a match only where a run starts,
so the search stays linear however long a run is."""
NAMED_UP_TO = 1 << 20
"""Bytes of a body whose repeated key is named (the exact path parses it again, in Python); a larger
body holding one is refused without the name, at the cost of the count alone."""


class _Twice:
    """What an object holding ``key`` twice is read as on the exact path (found afterwards by its place)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


def duplicated_key(data: bytes, value: Any) -> list[str | int] | None:
    """The path to the first key written twice in one object of the JSON text ``data`` (``["messages", 0,
    "role"]``; ``[]`` when ``data`` is over ``NAMED_UP_TO`` bytes), or ``None`` when no object repeats a
    key. ``value`` is ``data`` as msgspec decoded it (the depth already checked); ``data`` is read again
    only when the colon count says it holds a duplicate (the module docstring)."""
    try:
        again = _ENCODER.encode(value)
    except (TypeError, ValueError):  # what msgspec read it writes again; if not, the exact path decides
        return _first_twice(data)
    if again.count(b":") == data.count(b":") + _escaped_colons(data):
        return None
    if len(data) > NAMED_UP_TO:
        return []
    return _first_twice(data)


def _escaped_colons(data: bytes) -> int:
    """How many colons ``data`` writes as an escape: each ``u003a`` after an odd run of backslashes (after
    an even one the backslashes are themselves escaped, and the letters are text)."""
    # (most bodies hold no backslash: one byte is searched for much faster than five)
    if b"\\" not in data or not any(letters in data for letters in _COLON_ESCAPES):
        return 0
    return sum(len(run) % 2 for run in _ESCAPE_RUNS.findall(data))


def _first_twice(data: bytes) -> list[str | int] | None:
    """The exact path: parse again, each object checked for a repeated key as it is built; the tree is
    searched for where only when one was."""
    seen_twice = False

    def pairs(members: list[tuple[str, Any]]) -> Any:
        nonlocal seen_twice
        read: dict[str, Any] = {}
        for key, item in members:
            if key in read:
                seen_twice = True
                return _Twice(key)
            read[key] = item
        return read

    # numbers kept as text: only the keys matter here, and nothing is converted for nothing
    tree = json.loads(data, object_pairs_hook=pairs, parse_int=str, parse_float=str)
    return _path_to_twice(tree) if seen_twice else None


def _path_to_twice(tree: Any) -> list[str | int] | None:
    """Where the first ``_Twice`` lies in ``tree``, in document order, with the repeated key last: a
    depth-first walk keeping one path (appended and popped), never a copy per node."""
    path: list[str | int] = []
    pending: list[tuple[str | int, Any] | None] = [(0, tree)]  # None: the end of a node's children
    root = True
    while pending:
        entry = pending.pop()
        if entry is None:
            path.pop()
            continue
        key, node = entry
        if isinstance(node, _Twice):
            return [*path, *([] if root else [key]), node.key]
        children: list[tuple[str | int, Any]]
        if isinstance(node, dict):
            children = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        else:
            continue
        if not root:
            path.append(key)
            pending.append(None)
        root = False
        pending.extend(reversed(children))
    return None
