"""A notebook run twice in one kernel ("Run All" again, no restart) answers the same both times: its
second set-up (new simulators, a new ``$GTL_NB_CONFIG``) reaches the magics."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat

from gtl_nb.notebook.runner import execute_notebook

from .conftest import NOTEBOOKS_DIR, notebook_env


def shown(cell) -> str:
    """A code cell's text results (what a reader sees of a value)."""
    return "\n".join(
        str(output.get("data", {}).get("text/plain", ""))
        for output in cell.outputs
        if output.output_type == "execute_result"
    )


def test_compare_providers_run_twice_in_one_kernel_gives_the_same_results(tmp_path: Path):
    notebook = nbformat.read(NOTEBOOKS_DIR / "02-compare-providers.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    once = len(code)
    again = [copy.deepcopy(cell) for cell in code]
    for number, cell in enumerate(again):
        cell.id = f"again-{number}"
    notebook.cells = code + again
    path = tmp_path / "twice.ipynb"
    nbformat.write(notebook, path)
    env = notebook_env(tmp_path / "env")
    executed = execute_notebook(path, cwd=NOTEBOOKS_DIR, env=env, timeout=180).cells
    failures = [i for i, cell in enumerate(executed[:once]) if "set_faults" in cell.source]
    assert failures, "the notebook no longer sets faults: this test has nothing to compare"
    # the results a reader checks against the prose: the failing provider's code, the failover
    for index in range(once):
        source = executed[index].source
        if source.startswith("{model: getattr") or source.startswith("_gtl.provider"):
            first, second = shown(executed[index]), shown(executed[once + index])
            assert first and first == second, (source, first, second)
    assert "RATE_LIMIT" in "".join(shown(cell) for cell in executed[once:])
