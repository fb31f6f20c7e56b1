"""A cell's one-line error never carries a peer's control characters raw."""

from __future__ import annotations

import pytest

from gtl_nb.notebook.errors import cell_error
from gtl_nb.protocol import ConfigurationError, InvalidRequestError

FORGED = "bad field \x1b[2J\x1b[31mFAKE\nINFO forged line \u202etxt.exe"


@pytest.mark.parametrize("error", [InvalidRequestError(FORGED), ConfigurationError(FORGED)])
def test_a_refusal_in_a_gateways_words_is_shown_escaped(error):
    """A remote gateway's refusal (no provider) becomes the cell's one-line mistake: its words as
    str(exc) shows them, every terminal control escaped and the letters kept."""
    shown = str(cell_error(error))
    assert "\x1b" not in shown and "\n" not in shown and "\u202e" not in shown
    assert "bad field" in shown and "\\x1b" in shown and "\\u202e" in shown
