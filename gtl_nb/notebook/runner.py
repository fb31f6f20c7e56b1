"""Execute the tour notebooks headless and write them, with HTML renderings, to ``out/``.

    python -m gtl_nb.notebook.runner                 # 01-quickstart and 02-compare-providers
    python -m gtl_nb.notebook.runner --all           # every notebook in notebooks/
    python -m gtl_nb.notebook.runner 03-cost-analysis --out /tmp/tour

This is the main job of ``make demo``: the notebooks run offline (the built-in model ``echo`` and the
provider simulators they start themselves), each in a fresh kernel of this very Python — never a
``python3`` kernelspec the user installed for another interpreter — and the executed ``.ipynb`` and an
``.html`` rendering land side by side. ``execute_notebook`` is also what regenerates the committed
notebooks' outputs (``--in-place``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_NOTEBOOKS", "execute_notebook", "find_notebooks_dir", "main", "render_html"]

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


def execute_notebook(path: Path, *, timeout: int = 120, cwd: Path | None = None) -> Any:
    """Run every cell of ``path`` in a fresh kernel and return the executed ``NotebookNode``.

    A cell that raises stops the run with ``nbclient.exceptions.CellExecutionError``.
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        km=_kernel_manager(),
        timeout=timeout,
        resources={"metadata": {"path": str(cwd or path.parent)}},
        record_timing=False,  # no per-cell timestamps in the saved notebooks
    )
    client.execute()
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
        prog="python -m gtl_nb.notebook.runner", description="Execute gtl_nb's notebooks offline and render HTML."
    )
    parser.add_argument("names", nargs="*", help=f"notebooks to run (default: {', '.join(DEFAULT_NOTEBOOKS)})")
    parser.add_argument("--all", action="store_true", help="run every notebook in notebooks/")
    parser.add_argument("--out", type=Path, default=Path("out"), help="where to write the results (default: out/)")
    parser.add_argument("--notebooks", type=Path, default=None, help="the notebooks directory")
    parser.add_argument("--timeout", type=int, default=120, help="seconds a cell may take (default: 120)")
    parser.add_argument(
        "--in-place", action="store_true", help="write the executed notebooks back over the sources (no HTML)"
    )
    args = parser.parse_args(argv)

    notebooks = args.notebooks or find_notebooks_dir()
    if args.all:
        paths = sorted(notebooks.glob("[0-9]*.ipynb"))
    else:
        paths = _resolve(args.names or DEFAULT_NOTEBOOKS, notebooks)

    import nbformat
    from nbclient.exceptions import CellExecutionError

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        started = time.monotonic()
        try:
            executed = execute_notebook(path, timeout=args.timeout)
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
        print(f"\nOpen the .html files in a browser, or the notebooks with `jupyter lab {out}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
