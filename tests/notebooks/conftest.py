"""Shared set-up of the notebook tests: where things are, and how nbval runs a notebook.

nbval runs in a child pytest (one per notebook) so each notebook gets a fresh kernel of this very
interpreter (``--nbval-current-env``), its own HOME/XDG/Jupyter directories (a fresh usage ledger, no
user configuration), and none of the parent suite's options. The child uses an empty ini file so the
repository's pytest configuration does not apply to it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]-*.ipynb"))
SANITIZE = NOTEBOOKS_DIR / "sanitize.cfg"
EXPECTED_NOTEBOOKS = (
    "01-quickstart",
    "02-compare-providers",
    "03-cost-analysis",
    "04-gap-context-transfer",
)
# credentials and settings of the developer that must not reach a notebook's kernel
_PRIVATE = re.compile(r"^(OPENAI_|AZURE_OPENAI_|ANTHROPIC_|GEMINI_|GOOGLE_API|OLLAMA_|AWS_|GTL_|JUPYTER|IPYTHON)")


def notebook_env(scratch: Path) -> dict[str, str]:
    """The environment of a child that runs notebooks: private dirs in ``scratch``, no provider keys."""
    env = {k: v for k, v in os.environ.items() if not _PRIVATE.match(k)}
    dirs = {
        "HOME": "home",
        "XDG_CONFIG_HOME": "xdg-config",
        "XDG_DATA_HOME": "xdg-data",
        "XDG_CACHE_HOME": "xdg-cache",
        "JUPYTER_CONFIG_DIR": "jupyter-config",
        "JUPYTER_DATA_DIR": "jupyter-data",
        "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
        "IPYTHONDIR": "ipython",
        "MPLCONFIGDIR": "mpl",
    }
    for name, sub in dirs.items():
        (scratch / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(scratch / sub)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def nbval_command(python: str, notebooks: list[Path], scratch: Path, *extra: str) -> list[str]:
    """``python -m pytest --nbval`` over ``notebooks``: strict (outputs compared), with ``SANITIZE``."""
    scratch.mkdir(parents=True, exist_ok=True)
    ini = scratch / "pytest.ini"
    ini.write_text("[pytest]\n")
    return [
        python,
        "-m",
        "pytest",
        "-c",
        str(ini),
        "--rootdir",
        str(REPO),
        "-p",
        "no:cacheprovider",
        "--nbval",
        "--nbval-current-env",
        "--nbval-sanitize-with",
        str(SANITIZE),
        "--nbval-cell-timeout=120",
        "-q",
        *extra,
        *(str(path) for path in notebooks),
    ]


def run_nbval(python: str, notebooks: list[Path], scratch: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run nbval with ``python`` on ``notebooks`` in a private environment under ``scratch``."""
    return subprocess.run(
        nbval_command(python, notebooks, scratch),
        cwd=REPO,
        env=notebook_env(scratch),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read(path: Path) -> nbformat.NotebookNode:
    """A notebook file as a ``NotebookNode`` (format 4)."""
    return nbformat.read(path, as_version=4)
