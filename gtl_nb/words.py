"""How messages name what they were given, and how a cost reads: a leaf every layer may use."""

from __future__ import annotations

__all__ = [
    "a_kind_of",
    "dollars",
    "install_extra",
    "looks_like_variable_name",
    "missing_package",
    "shown_in_terminal",
    "with_article",
]


def with_article(name: str) -> str:
    """``name`` after its indefinite article, by its first letter: ``an int``, ``an error``, ``a list``."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def a_kind_of(value: object) -> str:
    """What ``value`` is, for a message: its type's name with an article (``an int``, ``a list``)."""
    return with_article(type(value).__name__)


def dollars(value: float) -> str:
    """A cost in USD as footers, tables and ``gtl usage`` write it: ``$0`` when free, ``$1.2500`` from a
    cent up, ``$0.000953`` under it, and below a millionth its own digits (``$0.00000015``: a one-token
    request of a cheap model is a paid one, never ``$0.000000``)."""
    if value == 0:
        return "$0"
    if round(abs(value), 6) >= 0.01:  # (what would print as $0.010000 is a cent)
        return f"${value:,.4f}"
    if abs(value) >= 0.0000005:  # (what prints as at least $0.000001)
        return f"${value:.6f}"
    digits = f"{value:.12f}".rstrip("0")
    return f"${digits}" if not digits.endswith(".") else "<$0.000000000001"  # (paid, however little)


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural but for one: ``counted(1, "session")`` is ``"1 session"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def looks_like_variable_name(text: object) -> bool:
    """Whether ``text`` has the shape of an environment variable's name: capital letters, digits and ``_``,
    64 at most, not starting with a digit. A setting that names a variable (``api_key_env``) may quote
    such a name in a message; anything else may be the secret itself, pasted where its name belongs."""
    if not isinstance(text, str) or not 0 < len(text) <= 64 or text[0].isdigit():
        return False
    return all(ch.isascii() and (ch.isupper() or ch.isdigit() or ch == "_") for ch in text)


def shown_in_terminal(text: str) -> str:
    """``text`` safe to print to a terminal: every character a terminal would act on or not show (ESC,
    a newline, a C1 control, a bidi override) as its Python escape — ``\\x1b``, ``\\n``, ``\\u202e`` — so
    a value a client chose (a request's model or session id, stored as sent) cannot move the cursor,
    recolour the screen or forge a line of the table it is printed in."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def install_extra(extra: str) -> str:
    """How to install one of gtl_nb's extras, from a package index or in a clone of its repository (where
    ``make demo`` and ``make serve`` install into ``.venv``)."""
    return f"pip install 'gtl-nb[{extra}]' (in a clone of its repository: .venv/bin/pip install -e '.[{extra}]')"


_DISTRIBUTIONS = {"jwt": "PyJWT"}
"""The packages whose import name is not their name on the package index."""


def missing_package(exc: ImportError, what: str, extra: str) -> str | None:
    """What to tell a user whose ``what`` failed with ``exc`` because an optional package is not installed:
    the package's name on the index and the install line of ``extra`` — or ``None`` when gtl_nb's own
    module is what failed to import (a bug, not a missing extra: re-raise it)."""
    name = exc.name or ""
    if not name or name.startswith("gtl_nb"):
        return None
    package = name.split(".")[0]
    return f"{what} needs {_DISTRIBUTIONS.get(package, package)}, which is not installed: {install_extra(extra)}"
