"""The set-up the README promises: ``make demo`` installs only what the demo needs (the four notebooks
included), ``make test`` the rest, ``make serve`` the gateway's extra and then starts it.

The Makefile is checked with ``make -n`` (print the commands, run nothing) in a scratch copy of the
repository's Makefile and pyproject.toml, so no virtual environment is created or touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _scratch(tmp_path: Path) -> Path:
    """A copy of the Makefile and pyproject.toml, with a stand-in venv python (as after a first run)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    return tmp_path


def _dry_run(where: Path, target: str) -> list[str]:
    done = subprocess.run(["make", "-n", target], cwd=where, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _installs(lines: list[str]) -> list[str]:
    """The extras each ``pip install -e '.[…]'`` line asks for, e.g. ``["notebook"]``."""
    found = [re.search(r"pip install .*-e '\.\[([^\]]*)\]'", line) for line in lines]
    return [extra for m in found if m for extra in m.group(1).split(",")]


def _started(lines: list[str]) -> str:
    """The command a target runs last (make run from make says "make[1]: Entering directory" too)."""
    return [line.strip() for line in lines if not line.startswith("make")][-1]


def _make_stamps_current(where: Path) -> None:
    later = (where / "pyproject.toml").stat().st_mtime + 10
    for stamp in (where / ".venv").glob(".installed*"):
        os.utime(stamp, (later, later))


@needs_make
def test_make_demo_installs_the_notebook_extras_and_not_the_test_dependencies(tmp_path: Path) -> None:
    extras = _installs(_dry_run(_scratch(tmp_path), "demo"))
    assert extras == ["notebook", "plot"]  # plot: the cost and GAP notebooks draw with matplotlib


@needs_make
def test_make_serve_installs_the_gateway_extra_once_then_starts_the_gateway(tmp_path: Path) -> None:
    where = _scratch(tmp_path)
    lines = _dry_run(where, "serve")
    assert _installs(lines) == ["gateway"]
    assert _started(lines) == ".venv/bin/gtl serve"
    for line in lines:
        if line.startswith("touch "):
            (where / line.split()[1]).touch()
    _make_stamps_current(where)
    again = subprocess.run(
        ["make", "-n", "serve", "ARGS=--config gtl.toml"], cwd=where, capture_output=True, text=True, timeout=30
    ).stdout.splitlines()
    assert _installs(again) == [] and _started(again) == ".venv/bin/gtl serve --config gtl.toml"


@needs_make
def test_make_test_after_make_demo_still_installs_the_test_dependencies(tmp_path: Path) -> None:
    where = _scratch(tmp_path)
    for line in _dry_run(where, "demo"):  # play the demo's install: its stamp exists afterwards
        if line.startswith("touch "):
            (where / line.split()[1]).touch()
    _make_stamps_current(where)
    assert _installs(_dry_run(where, "demo")) == []  # the demo does not install twice
    assert {"test", "notebook"} <= set(_installs(_dry_run(where, "test")))


def test_the_notebook_extra_holds_what_the_headless_runner_imports() -> None:
    notebook = " ".join(PYPROJECT["project"]["optional-dependencies"]["notebook"])
    for package in ("ipykernel", "nbclient", "nbconvert"):
        assert package in notebook


def test_the_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)\.(\d+)(?:\.(\d+))?", setuptools)
    assert minimum is not None, setuptools
    assert tuple(int(p or 0) for p in minimum.groups()) >= (77, 0, 0)  # PEP 639 support arrived in 77.0


@needs_make
def test_a_changed_makefile_installs_again(tmp_path: Path) -> None:
    """A checkout set up before the Makefile asked for another extra (``plot`` for the demo) gets it."""
    where = _scratch(tmp_path)
    for line in _dry_run(where, "demo"):
        if line.startswith("touch "):
            (where / line.split()[1]).touch()
    _make_stamps_current(where)
    assert _installs(_dry_run(where, "demo")) == []
    later = (where / ".venv" / ".installed-demo").stat().st_mtime + 10
    os.utime(where / "Makefile", (later, later))  # the Makefile changed after the last install
    assert _installs(_dry_run(where, "demo")) == ["notebook", "plot"]
