"""Fixtures of the store contract tests: every scenario runs against each implementation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # store_kit, as the top conftest does for tests/engine

from store_kit import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    return tmp_path / "stores" / "state.sqlite3"


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which implementation a contract test runs against."""
    return str(request.param)
