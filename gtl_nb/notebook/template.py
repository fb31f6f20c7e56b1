"""``{name}`` substitution in prompts: notebook variables in, every other brace left as typed.

Rules (docs/magics.md, "Variables in prompts"):

* ``{name}`` — an identifier, optionally followed by ``.attr`` and ``[index]`` parts
  (``{row.title}``, ``{items[0]}``, ``{data['key']}``, ``{data[key]}`` with ``key`` a string, as in
  ``str.format``) — is replaced by ``str()`` of the value from the namespace.
* ``{{`` writes ``{`` and ``}}`` writes ``}``.
* Every other brace stays as typed: JSON (``{"a": 1}``), code (``if (x) { ... }``), format specs.
  A ``}}`` that closes braces opened in the text itself (nested JSON such as ``{"a": {"b": 1}}``)
  is two closing braces, not an escape.
* A name that is not defined is an error naming it and saying how to write literal braces.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["TemplateError", "render"]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_INDEX = r"\[(?:-?\d+|'[^'\]]*'|\"[^\"\]]*\"|" + _IDENT + r")\]"
_PLACEHOLDER = rf"\{{(?P<expr>{_IDENT}(?:\.{_IDENT}|{_INDEX})*)\}}"
_TOKEN_RE = re.compile(rf"(?P<open2>\{{\{{)|(?P<close2>\}}\}})|{_PLACEHOLDER}|(?P<open>\{{)|(?P<close>\}})")
_PART_RE = re.compile(rf"\.(?P<attr>{_IDENT})|\[(?P<index>[^\][]*)\]")  # no "[" inside: linear on "[[[["

_ESCAPED, _LITERAL = "escaped", "literal"


class TemplateError(LookupError):
    """A ``{name}`` that cannot be resolved; the message says which and how to write literal braces."""


def render(text: str, namespace: Mapping[str, Any]) -> str:
    """``text`` with every ``{name}`` replaced from ``namespace`` (see the module docstring)."""
    out: list[str] = []
    opened: list[str] = []  # the braces open at this point: an escaped "{{" or a literal "{"
    position = 0
    while True:
        match = _TOKEN_RE.search(text, position)
        if match is None:
            out.append(text[position:])
            return "".join(out)
        out.append(text[position : match.start()])
        position = match.end()
        if match.group("open2"):
            out.append("{")
            opened.append(_ESCAPED)
        elif match.group("close2"):
            if opened and opened[-1] == _LITERAL:
                # the first brace closes a brace of the text; look at the second one again
                opened.pop()
                out.append("}")
                position = match.start() + 1
            else:
                if opened:
                    opened.pop()
                out.append("}")
        elif match.group("expr"):
            out.append(str(_resolve(match.group("expr"), namespace)))
        elif match.group("open"):
            out.append("{")
            opened.append(_LITERAL)
        else:
            out.append("}")
            if opened and opened[-1] == _LITERAL:
                opened.pop()


def _resolve(expr: str, namespace: Mapping[str, Any]) -> Any:
    head = re.match(_IDENT, expr)
    assert head is not None  # guaranteed by _PLACEHOLDER
    name = head.group(0)
    if name not in namespace:
        raise TemplateError(
            f"{{{expr}}} in the prompt: {name!r} is not defined in the notebook; define it, "
            f"or write {{{{{expr}}}}} for literal braces ({{{{ gives {{ and }}}} gives }})"
        )
    value = namespace[name]
    for part in _PART_RE.finditer(expr, head.end()):
        try:
            if part.group("attr") is not None:
                value = getattr(value, part.group("attr"))
            else:
                value = value[_index(part.group("index"))]
        except (AttributeError, LookupError, TypeError) as exc:
            raise TemplateError(
                f"{{{expr}}} in the prompt: {type(exc).__name__}: {exc}; "
                f"write {{{{{expr}}}}} for literal braces ({{{{ gives {{ and }}}} gives }})"
            ) from None
    return value


def _index(text: str) -> int | str:
    """``0`` and ``-1`` are integers, quoted text is a string, a bare word is a string (``str.format``)."""
    if text[:1] in "'\"":
        return ast.literal_eval(text)
    try:
        return int(text)
    except ValueError:
        return text
