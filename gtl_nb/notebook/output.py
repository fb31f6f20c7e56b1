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
    display({"text/markdown": markdown, "text/plain": plain}, raw=True)


def clip(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters, marked with `` …`` when cut."""
    return text if len(text) <= limit else text[:limit] + " …"


def md_cell(value: Any) -> str:
    """``value`` as the text of one markdown table cell (one line, ``|`` escaped, dollars kept dollars,
    no HTML: ``no_math_inline`` — a cell is no place for a block, so no fence of it is left as written)."""
    return no_math_inline(str(value)).replace("|", "\\|")
