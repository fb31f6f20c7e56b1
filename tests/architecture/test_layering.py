"""The layers of DESIGN.md, enforced: an explicit rank table, forbidden pairs, and sans-I/O purity.

Every module under ``gtl_nb/`` must appear in ``RANKS`` (by package or top-level module); a module
may import only from its own layer or from layers of lower rank. Imports inside functions count:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "gtl_nb"

# DESIGN.md's list, top to bottom: each layer only imports the layers above it (lower rank).
RANKS: dict[str, int] = {
    "log": 0,  # the redacting logger: a leaf every layer may use
    "ids": 0,  # unique ids without a system call each: a leaf
    "words": 0,  # how messages name what they were given (``a_kind_of``): a leaf
    "safe_markdown": 0,  # any text as notebook markdown, shown as written and never live: a leaf
    "cli_unknown": 0,  # what gtl says of arguments no option takes (argparse only: gtl and gtl serve use it)
    "protocol": 1,
    "providers": 2,
    "gap": 2,
    "engine": 3,
    "transports": 4,
    "table": 4,  # Table: a DataFrame of raw numbers shown like a bill (Comparison.to_dataframe, analysis); leaves only
    "completion": 5,  # the Completion result object, the client's vocabulary
    "progress": 5,  # the batch progress bar (a notebook widget or a terminal line)
    "tools": 5,  # Python callables as GTL tools (schemas from signatures), used by the magics
    "backend": 5,  # the client's backend seam: the embedded engine now, a remote transport next
    "handoff": 5,  # events from the loop thread to a stream's reader, in batches
    "strict_schema": 5,  # a class's JSON Schema made strict, for response_format
    "client": 6,
    "gateway": 7,
    "analysis": 8,
    "notebook": 9,
    "sim": 10,
    "cli": 11,
    "demo": 11,
    "__main__": 12,
    "__init__": 13,  # the lazy facade may name anything
}

FORBIDDEN = {("protocol", layer) for layer in RANKS if layer not in ("protocol", "__init__")} | {
    ("sim", "providers"),
    ("sim", "engine"),
    ("gap", "providers"),
    ("gap", "engine"),
    ("gap", "client"),
}


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "gtl_nb":
                names = [f"gtl_nb.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "gtl_nb" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(PACKAGE_ROOT.rglob("*.py"))


def test_every_module_is_in_the_rank_table():
    missing = sorted({layer_of(p) for p in MODULES} - set(RANKS))
    assert not missing, f"add these to RANKS (and DESIGN.md / docs/design.md): {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_module_imports_only_lower_layers(path):
    source = layer_of(path)
    for target in imported_layers(path):
        if target == source:
            continue
        assert target in RANKS, f"{path.name} imports gtl_nb.{target}, which is not in the rank table"
        assert (source, target) not in FORBIDDEN, f"{source} must never import {target} ({path})"
        assert RANKS[target] < RANKS[source] or source == "__init__", (
            f"{path.relative_to(PACKAGE_ROOT)} ({source}, rank {RANKS[source]}) imports {target} "
            f"(rank {RANKS[target]}): a layer may only import layers above it"
        )


PURE_PACKAGES = ["protocol", "providers", "gap"]
IMPURE = ["asyncio", "socket", "httpx", "aiohttp", "httptools", "IPython"]


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_pure_packages_import_no_io(package):
    modules = sorted(
        "gtl_nb." + ".".join(p.relative_to(PACKAGE_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (PACKAGE_ROOT / package).rglob("*.py")
        if p.stem != "__main__"
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = [m for m in {IMPURE!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"gtl_nb.{package} imported {result.stdout.strip()} (it must stay sans-I/O)"


def test_import_gtl_nb_is_light():
    script = (
        "import sys, gtl_nb\n"
        "heavy = [m for m in ('asyncio', 'httpx', 'aiohttp', 'pandas', 'IPython', 'networkx', 'ipywidgets', 'msgspec')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
        "gtl_nb.gap, gtl_nb.protocol\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
