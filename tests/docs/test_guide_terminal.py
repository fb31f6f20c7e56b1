"""The guide's first terminal block runs as written, offline: its page says everything in it does."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.test_examples import DOCS, offline_env

PORTS = (8900, 8787)
"""The ports the block starts the simulator and the gateway on."""


def first_shell_block(page: Path) -> str:
    """The first ```sh block of ``page``."""
    found = re.search(r"^```sh\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)
    assert found, f"{page.name} has no sh block"
    return found.group(1)


def _taken(port: int) -> bool:
    """Whether something on this machine already listens on ``port`` (then the block cannot run here)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_guides_terminal_block_runs_as_written_offline(tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "gtl").exists() and shutil.which("gtl") is None:
        pytest.skip("the gtl command is not installed")
    if any(_taken(port) for port in PORTS):
        pytest.skip(f"a port the block uses ({PORTS}) is taken on this machine")
    env = offline_env(tmp_path)  # no provider key, no $GTL_TOKEN: the simulator's and echo's alone
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        # (the trap only stops what a failing line would leave running; the block stops its own)
        ["bash", "-e", "-c", "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + first_shell_block(DOCS / "guide.md")],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "gtl: error" not in result.stderr, result.stderr
    footers = [line for line in result.stdout.splitlines() if line.startswith("-- ")]
    assert len(footers) == 4 and "openai (gpt-4o-mini)" in footers[1], result.stdout
    assert "gtl gateway: stopped" in result.stderr  # the block's last line stopped what it started
