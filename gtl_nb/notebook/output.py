"""Small outputs of the magics (tool calls, suggestions, the conversation) as markdown plus plain text.

Both forms go into the notebook so nbconvert/HTML exports render the markdown and terminal IPython
prints the text. Text from a model or a user goes into the markdown through ``no_math_markdown``, at
the start of a line (or ``md_cell`` in a table), so its dollar signs stay dollars and none of it is
live HTML in the notebook's page.
"""

from __future__ import annotations

from typing import Any

from IPython.display import display

from gtl_nb.safe_markdown import no_math_inline

__all__ = ["clip", "md_cell", "show_bundle"]


def show_bundle(markdown: str, plain: str) -> None:
    """Display one output with a ``text/markdown`` and a ``text/plain`` form."""
    display({"text/markdown": sendable(markdown), "text/plain": sendable(plain)}, raw=True)


def sendable(text: str) -> str:
    """``text`` as a kernel can send it: a lone surrogate (kept in a GAP message, read from a ``\\ud800``
    escape) is written as that escape, since the kernel's messages are UTF-8 and would fail on it, the
    cell with them. Anything else is left as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clip(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters, marked with `` …`` when cut."""
    return text if len(text) <= limit else text[:limit] + " …"


def md_cell(value: Any) -> str:
    """``value`` as the text of one markdown table cell (one line, ``|`` escaped, dollars kept dollars,
    no HTML: ``no_math_inline`` — a cell is no place for a block, so no fence of it is left as written)."""
    return no_math_inline(str(value)).replace("|", "\\|")
