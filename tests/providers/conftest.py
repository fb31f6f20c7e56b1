"""Provider dialect tests: make the shared harness (``wire.py`` in this folder) importable as ``wire``.

The tests run with ``--import-mode=importlib``, which puts no test folder on ``sys.path``; this does it for
this folder, the way ``tests/conftest.py`` does for ``tests/protocol/strategies.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
