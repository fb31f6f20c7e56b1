"""``%load_ext gtl_nb``'s magics: the IPython registration of ``%%gtl`` / ``%gtl`` and ``%%gap`` / ``%gap``.

This module registers the two magics (and ``reach_the_magic``, the input transformer that lets a
``%%gtl --help`` alone in a cell reach the magic) and hands each call to the module that implements it:

* ``%%gtl`` (ask a model)                                  -> ``gtl_nb.notebook.gtl_cell``
* ``%gtl models|usage|config|providers|connect|history|reset`` -> ``gtl_nb.notebook.gtl_commands``
* ``%%gap`` and ``%gap entities|graph|export``                -> ``gtl_nb.notebook.gap_magic``

The magics are a guest of the public API: ``gtl_nb.connect`` and its ``Client``, ``gtl_nb.gap``,
``gtl_nb.analysis``, ``gtl_nb.tools`` and the widgets of ``gtl_nb.notebook.widgets``. docs/magics.md
is the reference; they keep three rules:

* a user mistake (an unknown model, a missing key, a bad option, an undefined ``{name}``) is one
  ``UsageError`` line that says how to fix it, never a traceback (``gtl_nb.notebook.errors``);
* a provider error is one line with its GTL code (``RATE_LIMIT [openai]: ...``), raised as a
  ``GTLCellError`` so the cell still fails (``Run all`` stops) without a traceback; so is Ctrl-C while
  an answer streams (``cancelled after 12 tokens, 1.2 s``, the partial answer kept as ``_gtl``);
* the last result is ``_gtl`` in the user namespace (``_gap`` for GAP messages), and never a token.
"""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from gtl_nb.notebook.errors import GTLCellError, one_line_errors
from gtl_nb.notebook.formats import code_of as _code_of  # noqa: F401 (the name this module used to define)
from gtl_nb.notebook.formats import shown as _shown  # noqa: F401 (the name this module used to define)
from gtl_nb.notebook.gap_magic import GapMagic
from gtl_nb.notebook.gtl_cell import GtlCell
from gtl_nb.notebook.gtl_commands import GtlCommands
from gtl_nb.notebook.session import NotebookSession

__all__ = ["GTLCellError", "GTLMagics", "reach_the_magic"]

_OUR_CELL_MAGICS = ("%%gtl", "%%gap")


def reach_the_magic(lines: list[str]) -> list[str]:
    """An IPython input transformer: a ``%%gtl`` / ``%%gap`` cell with nothing under its line still runs
    the magic (with an empty body), instead of IPython's "the cell body is empty".

    So ``%%gtl --help`` alone shows the options, ``%%gap --from-last`` alone wraps the last answer, and
    a ``%%gtl`` without a prompt says how to write one.
    """
    if not lines or not lines[0].startswith(_OUR_CELL_MAGICS) or any(line.strip() for line in lines[1:]):
        return lines
    name = lines[0].split(None, 1)[0]
    if name not in _OUR_CELL_MAGICS:  # %%gtlx is another magic
        return lines
    first = lines[0] if lines[0].endswith("\n") else lines[0] + "\n"
    return [first, "\n"]  # the body IPython hands over is then "\n", which it does not call empty


@magics_class
class GTLMagics(Magics):
    """The magics of ``%load_ext gtl_nb``; ``self.session`` holds the notebook's state."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session = NotebookSession(shell)
        self._gtl_cell = GtlCell(shell, self.session)
        self._gtl_commands = GtlCommands(shell, self.session)
        self._gap = GapMagic(shell, self.session)

    @no_var_expand
    @line_cell_magic
    def gtl(self, line: str, cell: str | None = None) -> Any:
        """Send the cell to a model (``%%gtl``), or run a subcommand (``%gtl models``, ...).

        ``%gtl`` alone lists the subcommands; ``%%gtl --help`` the options (docs/magics.md).
        """
        with one_line_errors(self.session):
            if cell is None:
                return self._gtl_commands.run(line)
            return self._gtl_cell.run(line, cell)

    @no_var_expand
    @line_cell_magic
    def gap(self, line: str, cell: str | None = None) -> Any:
        """Wrap the cell (or the last answer) as a GAP message; ``%gap entities|graph|export``."""
        with one_line_errors(self.session):
            return self._gap.run(line, cell)
