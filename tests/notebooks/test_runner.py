"""``python -m gtl_nb.notebook.runner`` (the main job of ``make demo``) executes the tour headless."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

from .conftest import REPO, notebook_env


def run_runner(tmp_path: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gtl_nb.notebook.runner", *args],
        cwd=REPO,
        env={**notebook_env(tmp_path / "env"), **extra_env},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_runner_executes_quickstart_and_comparison_and_writes_html(tmp_path: Path):
    out = tmp_path / "out"
    scratch = tmp_path / "tmp"  # the kernels' temporary files: their folders and connection files
    scratch.mkdir()
    # a developer's settings must not leak in: the demo runs on the offline default whatever is set
    config = tmp_path / "user.toml"
    config.write_text('[defaults]\nmodel = "gpt-4o"\n')
    done = run_runner(
        tmp_path,
        "--out",
        str(out),
        GTL_NB_MODEL="gpt-4o",
        GTL_NB_CONFIG=str(config),
        OPENAI_API_KEY="sk-not-real",
        TMPDIR=str(scratch),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # each kernel is shut down, so its exit handlers run: the tour's folder is removed (every run of the
    # demo left one behind, with the kernel's connection file: the kernels were killed at the end)
    assert list(scratch.iterdir()) == []
    for name in ("01-quickstart", "02-compare-providers"):
        executed = out / f"{name}.ipynb"
        html = out / f"{name}.html"
        assert str(executed.resolve()) in done.stdout and str(html.resolve()) in done.stdout
        notebook = nbformat.read(executed, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.execution_count for cell in code)
        page = html.read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>")
        assert "gtl-final" in page  # the final answers, with their footers, are in the export
    assert "echo (offline)" in (out / "01-quickstart.html").read_text(encoding="utf-8")
    comparison = (out / "02-compare-providers.html").read_text(encoding="utf-8")
    for model in ("openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "gemini:gemini-2.5-flash"):
        assert model in comparison
    assert not list(out.glob("03-*")), "only the two notebooks of the demo by default"


def test_runner_names_the_notebooks_it_knows_when_asked_for_another(tmp_path: Path):
    done = run_runner(tmp_path, "--out", str(tmp_path / "out"), "99-nothing")
    assert done.returncode != 0
    assert "no notebook '99-nothing'" in done.stderr and "01-quickstart" in done.stderr


def test_prune_widget_state_keeps_shown_widgets_and_what_they_refer_to():
    from gtl_nb.notebook.runner import WIDGET_STATE, WIDGET_VIEW, prune_widget_state

    def model(name: str, **state: object) -> dict:
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state}

    notebook = nbformat.v4.new_notebook()
    shown = nbformat.v4.new_output("display_data", data={WIDGET_VIEW: {"model_id": "box"}, "text/plain": ""})
    notebook.cells = [nbformat.v4.new_code_cell("editor", outputs=[shown])]
    notebook.metadata["widgets"] = {
        WIDGET_STATE: {
            "state": {
                "box": model("VBoxModel", children=["IPY_MODEL_field"], layout="IPY_MODEL_layout"),
                "field": model("TextModel", style="IPY_MODEL_style"),
                "style": model("TextStyleModel"),
                "layout": model("LayoutModel"),
                "closed-live-view": model("HTMLModel", value="<div class='gtl-stream'>"),
            },
            "version_major": 2,
            "version_minor": 0,
        }
    }
    prune_widget_state(notebook)
    assert set(notebook.metadata["widgets"][WIDGET_STATE]["state"]) == {"box", "field", "style", "layout"}

    notebook.cells[0].outputs = []
    prune_widget_state(notebook)
    assert "widgets" not in notebook.metadata


def test_static_outputs_drop_the_widget_view_where_a_static_form_stands_beside_it():
    from gtl_nb.notebook.runner import WIDGET_VIEW, static_outputs

    editor = {WIDGET_VIEW: {"model_id": "a"}, "text/markdown": "| entity |", "text/plain": "entity"}
    slider = {WIDGET_VIEW: {"model_id": "b"}, "text/plain": "IntSlider(value=5)"}  # another library's widget
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("display_data", data=dict(data))])
        for data in (editor, slider)
    ]
    assert static_outputs(notebook) == 1
    assert [set(cell.outputs[0].data) for cell in notebook.cells] == [
        {"text/markdown", "text/plain"},
        {WIDGET_VIEW, "text/plain"},
    ]


def test_a_notebook_executed_headless_shows_its_entity_editor_as_a_table_everywhere(tmp_path: Path):
    from gtl_nb.notebook.runner import WIDGET_VIEW, execute_notebook, offline_env, render_html

    path = tmp_path / "entities.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell("%load_ext gtl_nb"),
        nbformat.v4.new_code_cell("%%gap --id m1\nThe system is slow since the upgrade."),
        nbformat.v4.new_code_cell("%gap entities"),
    ]
    nbformat.write(notebook, path)
    executed = execute_notebook(path, env=offline_env(tmp_path / "scratch"))

    [editor] = executed.cells[2].outputs
    # JupyterLab shows "Loading widget..." for a widget view without a kernel behind it: none is left
    assert WIDGET_VIEW not in editor.data and "widgets" not in executed.metadata
    table = editor.data["text/markdown"]
    assert "<code>the&#95;system</code>" in table and "(undefined)" in table  # (a key as code of entities)
    page = render_html(executed)  # offline HTML: the table, no widget script to fetch from a CDN
    assert "the_system" in page and "widget-view+json" not in page and "embed-amd" not in page
