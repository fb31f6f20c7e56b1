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

PORTS = ("8900", "8787")
"""The ports the block starts the simulator and the gateway on: the test runs it on free ones instead
(a gateway a developer keeps on 8787 must neither fail the test nor be the one it talks to)."""


def first_shell_block(page: Path) -> str:
    """The first ```sh block of ``page``."""
    found = re.search(r"^```sh\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)
    assert found, f"{page.name} has no sh block"
    return found.group(1)


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _on_free_ports(block: str) -> str:
    """``block`` with each of ``PORTS`` replaced by a port free now (each is written as ``:PORT`` or
    ``--port PORT``)."""
    for port in PORTS:
        assert port in block, f"the guide's block no longer uses port {port}: update PORTS"
        free = _free_port()
        block = block.replace(f":{port}", f":{free}").replace(f"--port {port}", f"--port {free}")
    return block


def test_the_guides_terminal_block_runs_as_written_offline(tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "gtl").exists() and shutil.which("gtl") is None:
        pytest.skip("the gtl command is not installed")
    env = offline_env(tmp_path)  # no provider key, no $GTL_TOKEN: the simulator's and echo's alone
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "work"
    work.mkdir()
    block = _on_free_ports(first_shell_block(DOCS / "guide.md"))
    result = subprocess.run(
        # (the trap only stops what a failing line would leave running; the block stops its own)
        ["bash", "-e", "-c", "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + block],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "gtl: error" not in result.stderr, result.stderr
    footers = [line for line in result.stdout.splitlines() if line.startswith("-- ")]
    assert len(footers) == 4 and "openai (gpt-4o-mini-2024-07-18)" in footers[1], result.stdout
    assert "gtl gateway: stopped" in result.stderr  # the block's last line stopped what it started
