"""Small outputs of the magics (tool calls, suggestions, the conversation) as markdown plus plain text.

Both forms go into the notebook so nbconvert/HTML exports render the markdown and terminal IPython
prints the text.
"""

from __future__ import annotations

from IPython.display import display

__all__ = ["clip", "show_bundle"]


def show_bundle(markdown: str, plain: str) -> None:
    """Display one output with a ``text/markdown`` and a ``text/plain`` form."""
    display({"text/markdown": markdown, "text/plain": plain}, raw=True)


def clip(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters, marked with `` …`` when cut."""
    return text if len(text) <= limit else text[:limit] + " …"
