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


def test_the_next_steps_name_the_gtl_command_as_the_shell_will_find_it(tmp_path, monkeypatch):
    # ``make demo`` installs into .venv without activating it: the tour's "Next:" must not say a bare
    # ``gtl`` the shell cannot find
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "gtl").write_text("#!/bin/sh\n")
    (bin_dir / "gtl").chmod(0o755)
    monkeypatch.setattr(demo.sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert demo.gtl_command() == "venv/bin/gtl"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # activated: the bare name finds this one
    assert demo.gtl_command() == "gtl"
