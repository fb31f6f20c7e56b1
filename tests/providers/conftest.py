"""Provider dialect tests: make the shared harness (``wire.py``) and the hostile-input strategies importable.

The tests run with ``--import-mode=importlib``, which puts no test folder on ``sys.path``. This folder goes at the
*end* of it: ``tests/conftest.py`` puts ``tests/protocol`` first so that a bare ``import strategies`` means
that folder's message strategies, whichever tests run first. This folder's ``strategies.py`` is therefore
loaded by path, as the module ``provider_strategies``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))


def _load(name: str, path: Path) -> None:
    """Import ``path`` as the module ``name`` (once)."""
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load("provider_strategies", HERE / "strategies.py")
