"""The four tour notebooks run offline under nbval in strict mode, matching their committed outputs.

Strict mode (``--nbval``, not ``--nbval-lax``) compares every output of every cell with the one saved
in the notebook, after ``notebooks/sanitize.cfg`` masks timings, ids, timestamps and widget model ids.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest

from gtl_nb.notebook.runner import WIDGET_STATE, WIDGET_VIEW, prune_widget_state

from .conftest import EXPECTED_NOTEBOOKS, NOTEBOOKS, NOTEBOOKS_DIR, SANITIZE, read, run_nbval


def test_the_four_tour_notebooks_are_committed():
    assert [path.stem for path in NOTEBOOKS] == list(EXPECTED_NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_outputs(path: Path):
    notebook = read(path)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a notebook without code"
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), "run top to bottom once, in a fresh kernel"
    assert sum(bool(cell.outputs) for cell in code) >= len(code) // 2, "outputs are committed"
    assert not any(out.output_type == "error" for cell in code for out in cell.outputs)
    assert notebook.metadata.kernelspec.name == "python3"
    # saved widget state only for widgets an output still shows (the finished answers are plain outputs)
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    views = [out.data[WIDGET_VIEW] for cell in code for out in cell.outputs if WIDGET_VIEW in out.get("data", {})]
    shown = {view["model_id"] for view in views}
    assert shown <= set(state), "a widget output without its saved state shows 'model not found' in JupyterLab"
    pruned = copy.deepcopy(notebook)
    prune_widget_state(pruned)
    assert pruned.metadata == notebook.metadata, "saved state of closed widgets (regenerate with the runner)"


def test_the_notebooks_use_the_magics_and_the_python_api_side_by_side():
    sources = "\n".join(cell.source for path in NOTEBOOKS for cell in read(path).cells if cell.cell_type == "code")
    for usage in (
        "%load_ext gtl_nb",
        "%%gtl\n",
        "%%gtl --compare",
        "%%gap",
        "%gap entities",
        "%gtl usage",
        "gtl_nb.connect(",
        "sim.serve(",
        "gap.",
        "analysis.",
    ):
        assert usage in sources, usage


def test_the_sanitize_file_masks_only_timings_ids_timestamps_widget_ids_and_temporary_folders():
    sections = re.findall(r"^\[([\w-]+)\]$", SANITIZE.read_text(), flags=re.M)
    assert sections == ["timings", "session-ids", "timestamps", "dates", "widget-model-ids", "workdirs"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_under_nbval_strict(path: Path, tmp_path: Path):
    done = run_nbval(sys.executable, [path], tmp_path)
    assert done.returncode == 0, f"nbval failed on {path.name}:\n{done.stdout[-8000:]}\n{done.stderr[-2000:]}"
    assert re.search(r"\d+ passed", done.stdout), done.stdout[-2000:]
    assert NOTEBOOKS_DIR.joinpath(path.name).exists()
