"""Shared test set-up: the strategies module is importable, hypothesis has a CI profile, and the
PostgreSQL kit's fixtures (``postgres_server``, ``postgres_url``) serve every test."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings


def _load_postgres_kit() -> ModuleType:
    """``tests/postgres_server.py`` under one module name for the whole run (by path: putting ``tests/``
    on ``sys.path`` would shadow names), so every module's tests share its one session server."""
    spec = importlib.util.spec_from_file_location(POSTGRES_KIT, Path(__file__).parent / "postgres_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[POSTGRES_KIT] = module
    spec.loader.exec_module(module)
    return module


POSTGRES_KIT = "gtl_nb_tests_postgres_server"
"""The name test modules find the PostgreSQL kit under (``sys.modules[POSTGRES_KIT]``)."""
_postgres_kit = _load_postgres_kit()
postgres_server = _postgres_kit.postgres_server  # the session's server, for every test that asks
postgres_url = _postgres_kit.postgres_url  # a new empty database of it, per test

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
    for name in ("GTL_NB_CONFIG", "GTL_NB_GATEWAY", "GTL_NB_TOKEN", "GTL_TOKEN"):  # the developer's own, not the tests'
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def _gtl_nb_logger_as_it_was() -> Iterator[None]:
    """The ``gtl_nb`` logger's level and handlers put back after each test: a CLI run in this process
    (``configure_logging``: ``WARNING`` by default) would otherwise silence the ``INFO`` lines a later test
    of the same worker reads with ``caplog`` — which test runs after which depends on the workers' share."""
    logger = logging.getLogger("gtl_nb")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    for handler in [handler for handler in logger.handlers if handler not in handlers]:
        logger.removeHandler(handler)
