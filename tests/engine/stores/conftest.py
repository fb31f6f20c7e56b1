"""Fixtures of the store contract tests: every scenario runs against each implementation.

``backend`` runs a budget, cache or breaker contract against memory, SQLite and Redis;
``ledger_backend`` the ledger's against memory and SQLite (Redis keeps no ledger). The Redis runs
use a real ``redis-server`` (``tests/redis_server.py``) started once per session on a free loopback
port, its database emptied before each test. Without redis-server (or redis-py) those runs are
skipped with the reason — except under CI (``CI=true``), where they fail: CI must run them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # store_kit, as the top conftest does for tests/engine

from store_kit import FakeClock


def _load_redis_server() -> ModuleType:
    """``tests/redis_server.py``, loaded by path (putting ``tests/`` on ``sys.path`` would shadow names)."""
    path = Path(__file__).resolve().parents[2] / "redis_server.py"
    spec = importlib.util.spec_from_file_location("gtl_nb_tests_redis_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


redis_server_kit = _load_redis_server()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    return tmp_path / "stores" / "state.sqlite3"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which implementation a budget, cache or breaker contract test runs against."""
    return str(request.param)


@pytest.fixture(params=["memory", "sqlite"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    """Which implementation a ledger contract test runs against."""
    return str(request.param)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> None:
    """Fail under CI (the Redis stores must be tested there), skip elsewhere."""
    if _in_ci():
        pytest.fail(f"{reason}; CI must run the Redis store tests (.ci/run installs redis-server)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A ``redis-server`` of this test session, on a free loopback port, its files in a temporary folder."""
    if importlib.util.find_spec("redis") is None:
        _unavailable("redis-py is not installed (the redis extra: pip install -e '.[redis]')")
    binary = redis_server_kit.find_redis_server()
    if binary is None:
        _unavailable("redis-server is not installed (Debian: apt-get install redis-server)")
    server = redis_server_kit.RedisServer.start(tmp_path_factory.mktemp("redis"), binary=binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: object) -> Iterator[str]:
    """The session server's URL, its database emptied first: each test starts from nothing."""
    import redis

    url = str(redis_server.url)  # type: ignore[attr-defined]
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    yield url


@pytest.fixture
def replica_urls(redis_url: str) -> tuple[str, str]:
    """Two URLs of one server that open separate pools: two gateway replicas' views of it. Patient: these
    tests are about what the replicas share, and on a loaded machine a connection can take longer than
    the half second a gateway allows it (a replica that times out then counts alone, as it should — a
    different test's subject)."""
    patient = "socket_connect_timeout=10&socket_timeout=10"
    return (
        f"{redis_url}?client_name=replica-one&{patient}",
        f"{redis_url}?client_name=replica-two&{patient}",
    )
