"""Execute the tour notebooks headless and write them, with HTML renderings, to ``out/``.

    python -m gtl_nb.notebook.runner                 # 01-quickstart and 02-compare-providers
    python -m gtl_nb.notebook.runner --all           # every notebook in notebooks/
    python -m gtl_nb.notebook.runner 03-cost-analysis --out /tmp/tour

This is the main job of ``make demo``: the notebooks run offline (the built-in model ``echo`` and the
provider simulators they start themselves), each in a fresh kernel of this very Python — never a
``python3`` kernelspec the user installed for another interpreter — and the executed ``.ipynb`` and an
``.html`` rendering land side by side. ``execute_notebook`` is also what regenerates the committed
notebooks' outputs (``--in-place``).

"Offline" is enforced, not hoped for: the kernels run without the user's gtl_nb configuration file,
``$GTL_NB_MODEL``, ``$GTL_NB_CONFIG``, ``$GTL_TOKEN`` or any provider's key variable, and with a
usage ledger of their own, so the outputs are those of the committed notebooks whatever is set up on
the machine (``--user-config`` runs them with your settings instead).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gtl_nb.progress import WIDGET_VIEW

__all__ = [
    "DEFAULT_NOTEBOOKS",
    "execute_notebook",
    "find_notebooks_dir",
    "main",
    "prune_widget_state",
    "render_html",
    "static_outputs",
]

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

#: What ``make demo`` runs: the quickstart and the comparison of providers.
DEFAULT_NOTEBOOKS = ("01-quickstart", "02-compare-providers")


def find_notebooks_dir(start: Path | None = None) -> Path:
    """``notebooks/`` of the current directory, else of the checkout this package was installed from."""
    candidates = [(start or Path.cwd()) / "notebooks", Path(__file__).resolve().parents[2] / "notebooks"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no notebooks/ directory here or next to the gtl_nb package; run from the repository")


def _kernel_manager() -> Any:
    """A kernel manager whose ``python3`` is this interpreter, whatever kernelspecs the user has."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    specs = KernelSpecManager(kernel_dirs=[])  # only the native kernel: sys.executable + ipykernel
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


STATIC_FORMS = ("text/markdown", "text/html")


def static_outputs(notebook: Any) -> int:
    """Drop the widget view from every output that carries a static form beside it; how many were dropped.

    In a notebook executed headless no kernel stands behind a widget, and the widget view wins over
    everything beside it: JupyterLab shows "Loading widget..." (or "model not found") in its place,
    and nbconvert's HTML draws it with a script from a CDN, a blank area offline. The markdown or HTML
    that gtl_nb's widgets (an ``EntityEditor``, say) carry beside the view is what such a notebook
    should show. Other widgets, which carry only their ``repr`` as text, are left as they are.
    """
    dropped = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and any(data.get(form) for form in STATIC_FORMS):
                del data[WIDGET_VIEW]
                dropped += 1
    return dropped


def prune_widget_state(notebook: Any) -> None:
    """Keep only the saved widget models that an output still shows (and the models they refer to).

    nbclient saves the state of every widget the kernel ever created; the live views of finished
    answers are closed and their outputs replaced by the final text, and ``static_outputs`` leaves
    gtl_nb's other widget outputs in their static form, so that state is dead weight. What remains
    (another library's widget) lets JupyterLab draw it when the notebook is opened with a kernel.
    """
    widgets = notebook.metadata.get("widgets", {})
    state = widgets.get(WIDGET_STATE, {}).get("state", {})
    wanted = [
        output["data"][WIDGET_VIEW]["model_id"]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if WIDGET_VIEW in output.get("data", {})
    ]
    kept: set[str] = set()
    while wanted:
        model_id = wanted.pop()
        if model_id in kept or model_id not in state:
            continue
        kept.add(model_id)
        wanted.extend(_references(state[model_id]))
    if kept:
        widgets[WIDGET_STATE]["state"] = {key: value for key, value in state.items() if key in kept}
    else:
        notebook.metadata.pop("widgets", None)


def _references(value: Any) -> list[str]:
    """Model ids a widget's state refers to (``"IPY_MODEL_<id>"`` strings, at any depth)."""
    if isinstance(value, str):
        return [value[len("IPY_MODEL_") :]] if value.startswith("IPY_MODEL_") else []
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in _references(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _references(item)]
    return []


# Variables that would send a notebook to a real provider, or change its default model.
_PRIVATE_PREFIXES = (
    "GTL_",
    "OPENAI_",
    "AZURE_OPENAI_",
    "ANTHROPIC_",
    "GEMINI_",
    "GOOGLE_API",
    "OLLAMA_",
    "AWS_",
)


def offline_env(scratch: Path) -> dict[str, str]:
    """This process's environment without gtl_nb settings or provider keys, user dirs under ``scratch``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_PRIVATE_PREFIXES)}
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        path = scratch / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    return env


def execute_notebook(
    path: Path, *, timeout: int = 120, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Any:
    """Run every cell of ``path`` in a fresh kernel and return the executed ``NotebookNode``.

    A cell that raises stops the run with ``nbclient.exceptions.CellExecutionError``. ``env`` is the
    kernel's environment (default: this process's). Widget outputs are left in their static form
    (``static_outputs``) and the saved widget state is pruned to the widgets still shown
    (``prune_widget_state``).
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    manager = _kernel_manager()
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=timeout,
        resources={"metadata": {"path": str(cwd or path.parent)}},
        record_timing=False,  # no per-cell timestamps in the saved notebooks
        # the kernel's own start-up and shutdown warnings are noise on a user's terminal
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    try:
        client.execute(**({"env": env} if env is not None else {}))
    finally:
        # a kernel manager handed in is not shut down by nbclient: left to be killed at exit, the kernel
        # ran no exit handlers (a notebook's temporary folder stayed) and left its connection file behind
        if manager.has_kernel:
            manager.shutdown_kernel(now=False)
    static_outputs(notebook)
    prune_widget_state(notebook)
    return notebook


def render_html(notebook: Any) -> str:
    """The notebook as a standalone HTML page (nbconvert's ``lab`` template)."""
    from nbconvert import HTMLExporter

    body, _resources = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return body


def _resolve(names: Sequence[str], notebooks: Path) -> list[Path]:
    paths = []
    for name in names:
        path = notebooks / (name if name.endswith(".ipynb") else name + ".ipynb")
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(notebooks.glob("*.ipynb")))
            raise SystemExit(f"no notebook {name!r} in {notebooks}; there are: {known}")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gtl_nb.notebook.runner",
        description="Execute gtl_nb's notebooks offline and render HTML.",
    )
    parser.add_argument("names", nargs="*", help=f"notebooks to run (default: {', '.join(DEFAULT_NOTEBOOKS)})")
    parser.add_argument("--all", action="store_true", help="run every notebook in notebooks/")
    parser.add_argument("--out", type=Path, default=Path("out"), help="where to write the results (default: out/)")
    parser.add_argument("--notebooks", type=Path, default=None, help="the notebooks directory")
    parser.add_argument("--timeout", type=int, default=120, help="seconds a cell may take (default: 120)")
    parser.add_argument(
        "--in-place", action="store_true", help="write the executed notebooks back over the sources (no HTML)"
    )
    parser.add_argument(
        "--user-config",
        action="store_true",
        help="use your gtl_nb configuration, keys and ledger (the notebooks may then call real providers)",
    )
    args = parser.parse_args(argv)

    notebooks = args.notebooks or find_notebooks_dir()
    paths = sorted(notebooks.glob("[0-9]*.ipynb")) if args.all else _resolve(args.names or DEFAULT_NOTEBOOKS, notebooks)

    needed = ("ipykernel", "nbclient", "nbconvert")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"running notebooks needs {', '.join(missing)}: pip install {' '.join(missing)}")

    import nbformat
    from nbclient.exceptions import CellExecutionError

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="gtl_nb-runner-") as scratch:
            env = None if args.user_config else offline_env(Path(scratch))
            try:
                executed = execute_notebook(path, timeout=args.timeout, env=env)
            except CellExecutionError as exc:
                print(f"{path.name}: a cell failed\n{exc}", file=sys.stderr)
                return 1
        elapsed = time.monotonic() - started
        if args.in_place:
            nbformat.write(executed, path)
            print(f"{path.name}: executed in {elapsed:.1f} s, outputs written back to {path}")
            continue
        target = out / path.name
        nbformat.write(executed, target)
        html_path = target.with_suffix(".html")
        html_path.write_text(render_html(executed), encoding="utf-8")
        print(f"{path.name}: executed in {elapsed:.1f} s")
        print(f"  notebook: {target.resolve()}")
        print(f"  html:     {html_path.resolve()}")
    if not args.in_place:
        print("\nOpen the .html files in a browser, or the notebooks in Jupyter, installed into the same")
        print(f"environment as gtl_nb: `{sys.executable} -m pip install jupyterlab`, then")
        print(f"`{sys.executable} -m jupyterlab {out}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
