"""Two gateway fleets (other token issuers) on one Redis without a key_prefix of their own share budgets,
the cache, breakers and revocations: a replica says so when the live-replica registry holds the other
fleet's replicas (``engine.stores.replicas``; its tests cover a fleet's own replicas, never warned of)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from gtl_nb.gateway.local import LocalGateway, start_gateway
from tests.gateway.conftest import write_toml
from tests.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("redis") is None or find_redis_server() is None, reason="needs redis-py and redis-server"
)

SECRET_ENV = "GTL_TEST_FLEET_SECRET"
SECRET = "fleet-canary-secret-0123456789abcdef0123456789"
WARNING = "of another fleet (another token issuer)"


def _config(folder: Path, issuer: str, redis_url: str) -> Path:
    folder.mkdir()
    return write_toml(
        folder / "gtl.toml",
        {
            "providers.echo": {},
            "budgets": {"backend": redis_url},
            "gateway": {"auth": "jwt"},
            "gateway.jwt": {"issuer": issuer, "secret_env": SECRET_ENV, "default_deployments": ["*"]},
            "gateway.http": {"port": 0},
            "ledger": {"path": str(folder / "ledger.sqlite3")},
        },
    )


def _said(gateway: LocalGateway, text: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(text in line for line in gateway.output):
            return True
        time.sleep(0.1)
    return False


def test_a_replica_of_another_issuer_on_the_same_redis_keys_is_named(tmp_path: Path):
    redis = RedisServer.start(tmp_path / "redis")
    try:
        env = {SECRET_ENV: SECRET, "XDG_DATA_HOME": str(tmp_path / "data")}
        prod = _config(tmp_path / "prod", "https://gw.example.com", redis.url)
        staging = _config(tmp_path / "staging", "https://staging.example.com", redis.url)
        with start_gateway(prod, env=env) as first, start_gateway(staging, env=env) as second:
            assert _said(second, WARNING, 30), "".join(second.output)
            line = next(line for line in second.output if WARNING in line)
            assert "key_prefix" in line and SECRET not in "".join(first.output + second.output)
    finally:
        redis.stop()
