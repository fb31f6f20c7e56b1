"""02-compare-providers in a real browser: JupyterLab 4 and Notebook 7, headless Chromium.

The notebook (a copy, with its outputs cleared) is opened in the app and run through the app's own
"run all cells" command, with the three simulators paced at 80 ms or more per chunk. The test samples
the page every 50 ms and checks what a person would see: every column of the comparison grid shows
partial text before its final text, at some moment all three columns are partial at once, and each
final text equals that model's ``Completion.text`` (which the notebook copy writes to a JSON file at the
end). A screenshot of the grid is saved and its path printed. ("Partial" means the live, not yet final view
of a column with some text; the checks require each column to be seen mid-answer, and all three
mid-answer in one sample.)

Only the distribution's ``/usr/bin/chromium`` is used, never a downloaded browser. Without it the test
is skipped with the apt command to run — except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from . import browser as browser_module
from .browser import INSTALL_HINT, Chromium, Page, chromium_problem, wait_for
from .conftest import NOTEBOOKS_DIR
from .jupyter import JupyterServer

NOTEBOOK = "02-compare-providers.ipynb"
# seconds between streamed chunks, at least 50 ms each: every column streams for seconds, all at once
BROWSER_PACES = {"openai": 0.08, "anthropic": 0.1, "gemini": 0.3}
SAMPLE_EVERY = 0.05
FULL_SPEED_CELL = "for _sim in sims.values():\n    _sim.context.pace = 0.0"

# User settings of the isolated JupyterLab / Notebook 7: no news pop-up over the page, and every cell
# kept in the DOM (no windowing) so the sampler always finds the grid.
USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def require_chromium() -> None:
    problem = chromium_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser test must run in CI: {problem}")
    pytest.skip(f"{problem} (as root: apt-get update && {INSTALL_HINT})")


# ----------------------------------------------------------------------------------------------
# the notebook copy


GATEWAY_CELL = """from gtl_nb.gateway.local import start_gateway

# the same providers through a gateway process with its own ledger: every magic below runs there
gateway_config = workdir / "gateway.toml"
gateway_config.write_text((workdir / "gtl_nb.toml").read_text().replace(str(ledger), str(workdir / "gateway.sqlite3")))
gateway = start_gateway(gateway_config, http="127.0.0.1:0")
endpoint = gateway.url("ws")"""


def prepare_notebook(root: Path, texts_path: Path, *, gateway: bool = False) -> tuple[str, int]:
    """Copy 02 into ``root``: outputs cleared, browser paces (until the sampled grid is done), a last
    cell writing each model's text.

    With ``gateway``, the magics run on a gateway process (``start_gateway``, then ``%gtl connect
    ws://…``) whose ledger is ``gateway.sqlite3`` beside the notebook's. Returns the notebook's file
    name and the index of the cell whose grid is sampled.
    """
    notebook = nbformat.read(NOTEBOOKS_DIR / NOTEBOOK, as_version=4)
    parameters = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1, "02 needs one cell tagged 'parameters' that defines paces"
    cell = notebook.cells[parameters[0]]
    cell.source, replaced = re.subn(r"^paces = \{.*\}", f"paces = {BROWSER_PACES!r}", cell.source, flags=re.M)
    assert replaced == 1, "the parameters cell must set paces = {...} on one line"
    if gateway:
        load = next(i for i, c in enumerate(notebook.cells) if c.source.strip() == "%load_ext gtl_nb")
        notebook.cells[load + 1 : load + 1] = [
            nbformat.v4.new_code_cell(GATEWAY_CELL),
            nbformat.v4.new_code_cell("%gtl connect {endpoint}"),
        ]
    target = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and "--out comparison" in c.source)
    # once the sampled grid has finished, the rest of the notebook need not stream at the browser's paces
    notebook.cells.insert(target + 1, nbformat.v4.new_code_cell(FULL_SPEED_CELL))
    for c in notebook.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "import json as _json, pathlib as _pathlib\n"
            + (
                # the gateway's ledger is read here, in the kernel: the tour's folder is removed when it stops
                "from gtl_nb.engine.ledger import Ledger as _Ledger\n"
                f"_pathlib.Path({str(texts_path.with_name('gateway.json'))!r}).write_text(_json.dumps({{"
                "'stopped': gateway.stop(), 'answered': sorted({row['deployment'] for row in "
                "_Ledger(workdir / 'gateway.sqlite3').rows() if row['status'] == 'ok'})}))\n"
                if gateway
                else ""
            )
            + f"_pathlib.Path({str(texts_path)!r}).write_text("
            "_json.dumps({m: r.text for m, r in comparison.results.items()}))"
        )
    )
    nbformat.write(notebook, root / NOTEBOOK)
    return NOTEBOOK, target


def write_user_settings(server: JupyterServer) -> None:
    base = Path(server.env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings"
    for name, values in USER_SETTINGS.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


# ----------------------------------------------------------------------------------------------
# the page

# The notebook panel of a path, from the app exposed as window.jupyterapp (--expose-app-in-browser).
PANEL_JS = """
(path) => {
  const app = window.jupyterapp;
  if (!app) return null;
  for (const widget of app.shell.widgets('main')) {
    if (widget.context && widget.context.path === path && widget.content) return widget;
  }
  return null;
}
"""

READY_JS = f"""
(() => {{
  const panel = ({PANEL_JS})(%(path)s);
  if (!panel || !panel.context.isReady) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  window.jupyterapp.shell.activateById(panel.id);
  return panel.content.widgets.length;
}})()
"""

# Not awaited: the command's promise settles only when every cell has run.
RUN_ALL_JS = "(window.jupyterapp.commands.execute('notebook:run-all-cells'), true)"

# Each column of the grid in cell %(index)s: model, whether it is the final output, and its text.
SAMPLE_JS = """
(() => {
  const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
  const cell = cells[%(index)s];
  if (!cell) return [];
  return Array.from(cell.querySelectorAll('.gtl-stream[data-model]')).map((el) => {
    const text = el.querySelector('.gtl-text');
    return {model: el.dataset.model, final: el.classList.contains('gtl-final'),
            text: text ? text.textContent : ''};
  });
})()
"""

ERRORS_JS = """
Array.from(document.querySelectorAll(
  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"],'
  + ' .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
)).map((e) => e.textContent.slice(0, 500))
"""

# The rendered grid after the run: typeset math (a "$" pair read as LaTeX) and the summary table's rows.
GRID_JS = """
(() => {
  const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[%(index)s];
  const tables = cell ? cell.querySelectorAll('.jp-OutputArea-output table') : [];
  const table = tables.length ? tables[tables.length - 1] : null;
  return {math: cell ? cell.querySelectorAll('mjx-container, .MathJax').length : -1,
          rows: table ? Array.from(table.querySelectorAll('tbody tr')).map((r) => r.textContent) : []};
})()
"""

SCROLL_JS = (
    "(() => { const c = document.querySelectorAll('.jp-Notebook .jp-Cell')[%(index)s];"
    " if (c) c.scrollIntoView({block: 'start'}); return !!c; })()"
)


def normal(text: str) -> str:
    """Whitespace-normalised text (the final answer is rendered markdown, the partial one plain)."""
    return " ".join(text.split())


@dataclass
class Samples:
    """What the sampler saw: for each sample, model -> (final?, text)."""

    frames: list[dict[str, tuple[bool, str]]] = field(default_factory=list)

    def add(self, columns: list[dict]) -> None:
        frame: dict[str, tuple[bool, str]] = {}
        for column in columns:
            final, text = bool(column["final"]), normal(column["text"] or "")
            # a final output wins over a live view still on the page for the same model
            if column["model"] not in frame or final:
                frame[column["model"]] = (final, text)
        self.frames.append(frame)

    def finals(self) -> dict[str, str]:
        last = self.frames[-1] if self.frames else {}
        return {model: text for model, (final, text) in last.items() if final}

    def first_final(self, model: str) -> int | None:
        return next((i for i, f in enumerate(self.frames) if f.get(model, (False, ""))[0]), None)

    def partial(self, model: str) -> list[tuple[int, str]]:
        """(sample index, text) of every sample where ``model`` showed partial, non-empty text."""
        return [(i, f[model][1]) for i, f in enumerate(self.frames) if model in f and not f[model][0] and f[model][1]]


def run_and_sample(page: Page, path: str, target: int, models: list[str], texts_path: Path) -> Samples:
    cells = wait_for(lambda: page.evaluate(READY_JS % {"path": json.dumps(path)}), 120, "the notebook and its kernel")
    assert cells >= target
    page.evaluate(RUN_ALL_JS)
    samples = Samples()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        samples.add(page.evaluate(SAMPLE_JS % {"index": target}))
        if texts_path.exists() and set(samples.finals()) >= set(models):
            return samples
        time.sleep(SAMPLE_EVERY)
    errors = page.evaluate(ERRORS_JS)
    raise AssertionError(
        f"the notebook did not finish in the browser; cell errors: {errors};"
        f" last sample: {samples.frames[-1:]}; console: {page.console[-10:]}"
    )


# ----------------------------------------------------------------------------------------------
# the test


def test_without_chromium_the_browser_test_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(browser_module, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape(INSTALL_HINT)):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        require_chromium()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("app", "via"), [("lab", "embedded"), ("notebook", "embedded"), ("lab", "gateway")])
def test_comparison_grid_streams_live_in_the_browser(app: str, via: str, tmp_path: Path, capsys: pytest.CaptureFixture):
    """The grid streams live whether the engine runs in the kernel or on a gateway it talks to."""
    require_chromium()
    root = tmp_path / "root"
    root.mkdir()
    texts_path = tmp_path / "texts.json"
    name, target = prepare_notebook(root, texts_path, gateway=via == "gateway")
    models = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "gemini:gemini-2.5-flash"]

    server = JupyterServer(app, root, tmp_path)
    write_user_settings(server)
    shot = tmp_path / f"02-compare-providers-{app}-{via}.png"
    with server, Chromium.launch(tmp_path) as browser:
        page = browser.new_page(server.notebook_url(name))
        try:
            samples = run_and_sample(page, name, target, models, texts_path)
            grid = page.evaluate(GRID_JS % {"index": target})
        finally:
            page.evaluate(SCROLL_JS % {"index": target})
            page.screenshot(shot)
            with capsys.disabled():
                print(f"\n[{app}] screenshot: {shot}")

    texts = {model: normal(text) for model, text in json.loads(texts_path.read_text()).items()}
    assert set(texts) == set(models)
    assert len(set(texts.values())) == 3, "each simulator answers differently"
    finals = samples.finals()
    for model in models:
        partial = samples.partial(model)
        first_final = samples.first_final(model)
        assert partial, f"{model}: never showed partial text (samples: {len(samples.frames)})"
        assert first_final is not None and partial[0][0] < first_final, f"{model}: partial text came after the final"
        for _, text in partial:  # the live view only ever shows a beginning of the answer
            assert texts[model].startswith(text), (model, text)
        assert any(len(text) < len(texts[model]) for _, text in partial), f"{model}: never seen mid-answer"
        assert finals[model] == texts[model], f"{model}: the page shows {finals[model]!r}"
    together = [
        frame
        for frame in samples.frames
        if all(m in frame and not frame[m][0] and 0 < len(frame[m][1]) < len(texts[m]) for m in models)
    ]
    assert together, "at no moment were all three columns mid-answer at once"
    # the summary table under the grid: one row per model, and prices shown as prices, not as LaTeX
    assert grid["math"] == 0, "dollar amounts in the grid were typeset as math: escape '$' in markdown"
    assert len(grid["rows"]) == 3 and all(any(m in row for row in grid["rows"]) for m in models), grid["rows"]
    if via == "gateway":  # the answers were the gateway's: its ledger has the comparison's rows
        served = json.loads(texts_path.with_name("gateway.json").read_text())
        assert served["stopped"] == 0, "the gateway did not shut down cleanly"
        assert {"openai", "anthropic", "gemini"} <= set(served["answered"]), served


# ----------------------------------------------------------------------------------------------
# a notebook executed headless, opened in JupyterLab

BUDGET = "We have a $5 budget; the model costs $0.15 per 1M tokens. Is that enough?"
HEADLESS_CELLS = (
    "%load_ext gtl_nb",
    f"%%gtl\n{BUDGET}",
    f"%%gtl --compare echo echo:other\n{BUDGET}",
    f"%%gtl --no-stream\n{BUDGET}",
    "%%gap --id m1\nThe system is slow since the upgrade.",
    "%gap entities",
    "%gtl usage",
)

# Per cell: typeset math elements, and the text of its outputs.
OUTPUTS_JS = """
Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell')).map((cell) => ({
  math: cell.querySelectorAll('mjx-container, .MathJax').length,
  text: Array.from(cell.querySelectorAll('.jp-OutputArea-output')).map((o) => o.textContent).join(' | '),
}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_notebook_executed_headless_reads_right_in_jupyterlab(tmp_path: Path):
    """Dollars in answers and tables are dollars (no LaTeX), and the entity editor is its table, not
    "Loading widget..." (the notebook is opened, not run: no kernel stands behind its outputs)."""
    require_chromium()
    from gtl_nb.notebook.runner import execute_notebook, offline_env

    root = tmp_path / "root"
    root.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in HEADLESS_CELLS]
    path = root / "headless.ipynb"
    nbformat.write(notebook, path)
    nbformat.write(execute_notebook(path, env=offline_env(tmp_path / "scratch")), path)

    server = JupyterServer("lab", root, tmp_path)
    write_user_settings(server)
    with server, Chromium.launch(tmp_path) as browser:
        page = browser.new_page(server.notebook_url("headless.ipynb"))
        wait_for(lambda: page.evaluate(READY_JS % {"path": json.dumps("headless.ipynb")}), 120, "the notebook")

        def rendered() -> list[dict] | None:
            cells = page.evaluate(OUTPUTS_JS)
            return cells if len(cells) == len(HEADLESS_CELLS) and "the_system" in cells[5]["text"] else None

        cells = wait_for(rendered, 60, "the outputs")
        time.sleep(2)  # MathJax typesets after rendering: give it the time to do so wrongly
        cells = page.evaluate(OUTPUTS_JS)
    for source, cell in zip(HEADLESS_CELLS, cells, strict=True):
        assert cell["math"] == 0, f"{source!r}: a '$' was typeset as math"
        assert "Loading widget" not in cell["text"] and "Error displaying widget" not in cell["text"], source
    for cell in cells[1:4]:
        assert "$5 budget" in cell["text"] and "$0.15 per 1M" in cell["text"]
    assert "(undefined)" in cells[5]["text"] and "%gap entities the_system=" in cells[5]["text"]
    assert "$0" in cells[6]["text"]
