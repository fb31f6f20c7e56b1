"""A virtual environment built from ``binder/`` alone runs all four notebooks under nbval (strict).

mybinder.org (repo2docker) installs ``binder/requirements.txt`` with pip from the repository root; the
test does the same into a fresh venv in a temporary directory (from PyPI, reusing pip's cache), then
runs nbval there on every notebook, with the venv's own interpreter as the kernel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import NOTEBOOKS, REPO, run_nbval

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BINDER = REPO / "binder"


def test_binder_holds_only_what_repo2docker_reads():
    names = {path.name for path in BINDER.iterdir()}
    assert "requirements.txt" in names
    assert names <= {"requirements.txt", "README.md", "postBuild", "runtime.txt", "apt.txt"}
    lines = [line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    assert "-e .[plot]" in lines, "the notebooks need this checkout itself, with matplotlib"


def test_a_venv_from_binder_requirements_runs_every_notebook_under_nbval(tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # from the repository root, as repo2docker does; the parent's HOME so pip's cache is reused
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            "binder/requirements.txt",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    done = run_nbval(python, NOTEBOOKS, tmp_path / "nbval", timeout=600)
    assert done.returncode == 0, f"nbval in the binder venv failed:\n{done.stdout[-8000:]}\n{done.stderr[-2000:]}"
    assert re.search(r"\d+ passed", done.stdout) and " failed" not in done.stdout
