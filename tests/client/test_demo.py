"""``make demo``'s tour (``python -m gtl_nb.demo``) runs offline and reads as a user would want it."""

from __future__ import annotations

import contextlib
import io

from gtl_nb import demo


def test_the_demo_streams_calls_a_tool_and_prices_the_free_model_at_zero():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert demo.main() == 0
    said = out.getvalue()
    assert "1. Streaming a completion:" in said and "get_weather(" in said
    assert "cost $0\n" in said, said  # echo is free: "$0", not a float's "$0.0"
    assert "$0.0" not in said
