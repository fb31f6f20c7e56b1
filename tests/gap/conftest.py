"""GAP tests: make this folder's hostile-input strategies importable as ``gap_strategies``.

The tests run with ``--import-mode=importlib``, which puts no test folder on ``sys.path``, and a bare
``import strategies`` already means ``tests/protocol``'s (``tests/conftest.py``). This folder's
``strategies.py`` is therefore loaded by path under its own name; from another folder, load it the
same way (``importlib.util.spec_from_file_location("gap_strategies", path)``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).parent


def _load(name: str, path: Path) -> None:
    """Import ``path`` as the module ``name`` (once)."""
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load("gap_strategies", HERE / "strategies.py")
