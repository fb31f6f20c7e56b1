"""Shared test set-up: the strategies module is importable, hypothesis has a CI profile."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent / "protocol"))
sys.path.insert(0, str(Path(__file__).parent / "client"))
sys.path.insert(0, str(Path(__file__).parent / "engine"))

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config):
    """Keep every test away from the developer's own config file and usage ledger."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="gtl_nb-test-home-"))
    os.environ["XDG_DATA_HOME"] = str(home / "data")
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    for name in ("GTL_NB_CONFIG", "GTL_NB_GATEWAY", "GTL_NB_TOKEN"):  # the developer's own, not the tests'
        os.environ.pop(name, None)
