"""Three gateway replicas behind nginx, sharing Redis and PostgreSQL: the scale-out suite's cluster.

Everything is real and on loopback: a ``redis-server`` and a PostgreSQL 15 of the module's own (the
outage tests stop and restart them), the OpenAI simulator upstream, three ``gtl serve`` processes
with the shared backends (``[ledger] url = "postgresql://…"``, ``redis://`` for budgets, the cache
and coalescing, breakers and token revocations; one encrypted key vault file all three read), and
nginx running the project's own ``deploy/nginx/gtl.conf.template``. Without nginx, redis-server or
PostgreSQL these tests skip with the reason — except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gtl_nb import sim
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.gateway.tokens import mint_token
from tests.gateway.conftest import write_toml
from tests.nginx_server import NginxServer, find_nginx
from tests.postgres_server import PostgresServer, find_postgres_bin
from tests.redis_server import RedisServer, find_redis_server

SECRET_ENV = "GTL_SCALEOUT_JWT_SECRET"
SECRET = "scale-out-suite-secret-9c4e1f2a7b3d5e6f8a0b1c2d"
ISSUER = "gtl-scaleout"
SCOPES = ("chat:write", "models:read", "usage:read")
UPSTREAM_KEY = "sk-scaleout-canary-4f1d9a2c7e"
"""The provider key the vault holds (a canary: it must never reach a client, a row or a log)."""
BUDGET_USER = "budgeted"
BUDGET_RPM = 9
DAILY_USER = "daily-spender"
DAILY_USD = 1e-9
"""``DAILY_USER``'s budget per UTC day: one request spends it (the simulator's model has a price)."""
REPLICAS = 3
LEASE = "lease=3&renew=1"
"""The PostgreSQL ledger's lease (seconds): a killed replica's rows are marked within ~4 s."""

__all__ = ["Cluster", "token", "wait_until"]


def token(subject: str = "scaleout-user", scopes: tuple[str, ...] = SCOPES, **claims: Any) -> str:
    """A GhostToken every replica accepts (ten minutes)."""
    return mint_token(SECRET, subject=subject, scopes=scopes, lifetime=600, issuer=ISSUER, **claims)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason}; CI must run the scale-out tests (.ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def _require_servers() -> None:
    for module, extra in (("redis", "redis"), ("psycopg", "postgres"), ("grpc", "grpc")):
        if importlib.util.find_spec(module) is None:
            _unavailable(f"{module} is not installed (the {extra} extra)")
    if find_nginx() is None:
        _unavailable("nginx is not installed (Debian: apt-get install nginx)")
    if find_redis_server() is None:
        _unavailable("redis-server is not installed (Debian: apt-get install redis-server)")
    if find_postgres_bin() is None:
        _unavailable("PostgreSQL 15 is not installed (Debian: apt-get install postgresql-15)")


@dataclass
class Cluster:
    """The running pieces (see the module docstring) and what the tests read back."""

    folder: Path
    redis: RedisServer
    postgres: PostgresServer
    database_url: str
    upstream: sim.Simulator
    flaky: sim.Simulator
    vault: Path
    vault_key: Path
    replicas: list[LocalGateway] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)
    nginx: NginxServer | None = None

    @property
    def http_url(self) -> str:
        assert self.nginx is not None
        return self.nginx.http_url

    @property
    def grpc_url(self) -> str:
        assert self.nginx is not None
        return self.nginx.grpc_url

    def replica_config(self, index: int) -> Path:
        """Replica ``index``'s gtl.toml: the shared backends, its own spool and audit log."""
        directory = self.folder / f"replica-{index}"
        directory.mkdir(exist_ok=True)
        spool = directory / "ledger-spool.sqlite3"
        tables: dict[str, dict[str, Any]] = {
            "providers.openai": {"base_url": self.upstream.base_url},
            "providers.flaky": {"type": "openai", "base_url": self.flaky.base_url},
            "routing.retry": {"max_attempts": 1},
            "routing.breaker": {"backend": self.redis.url, "failure_threshold": 3, "cooldown": 60},
            "ledger": {"url": f"{self.database_url}?{LEASE}&spool_path={spool}&replica=replica-{index}"},
            "budgets": {"backend": self.redis.url},
            f"budgets.users.{BUDGET_USER}": {"requests_per_minute": BUDGET_RPM},
            f"budgets.users.{DAILY_USER}": {"usd_per_day": DAILY_USD},
            "cache": {"backend": self.redis.url},
            "gateway": {"auth": "jwt", "trusted_proxies": ["127.0.0.1"], "shutdown_grace": 2},
            "gateway.jwt": {
                "issuer": ISSUER,
                "secret_env": SECRET_ENV,
                "default_deployments": ["*"],
                "revocations": self.redis.url,
                "refresh": 0.5,
            },
            "gateway.vault": {
                "path": str(self.vault),
                "master_key_file": str(self.vault_key),
            },
            "gateway.vault.keys": {"openai": "team-openai", "flaky": "team-openai"},
            "gateway.http": {"port": 0},
            "gateway.grpc": {"port": 0},
            "gateway.audit": {  # a file of its own, and a hash chain per replica in the shared database
                "path": str(directory / "audit.jsonl"),
                "url": self.database_url,
                "replica": f"replica-{index}",
                "spool_path": str(directory / "audit-spool.sqlite3"),
                "fsync": False,
            },
        }
        return write_toml(directory / "gtl.toml", tables)

    def start_replicas(self) -> None:
        for index in range(REPLICAS):
            config = self.replica_config(index)
            self.configs.append(config)
            self.replicas.append(start_gateway(config, env={SECRET_ENV: SECRET}))
        self.nginx = NginxServer.start(
            self.folder / "nginx",
            http_replicas=[replica.urls["http"].split("://", 1)[1] for replica in self.replicas],
            grpc_replicas=[replica.urls["grpc"].split("://", 1)[1] for replica in self.replicas],
        )

    def gtl(self, *args: str, config: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``gtl --config <replica 0's file> ARGS`` (the operator's command line)."""
        command = [sys.executable, "-m", "gtl_nb", "--config", str(config or self.configs[0]), *args]
        return subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=60, env={**os.environ, SECRET_ENV: SECRET}
        )

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        """The shared ledger's rows, read straight from PostgreSQL (never through a replica)."""
        import psycopg
        from psycopg.rows import dict_row

        clauses = " AND ".join(f"{name} = %({name})s" for name in where)
        query = "SELECT * FROM requests" + (f" WHERE {clauses}" if clauses else "") + " ORDER BY id"
        with psycopg.connect(self.database_url, row_factory=dict_row, connect_timeout=5) as connection:
            return list(connection.execute(query, where).fetchall())

    def settled_rows(self, session_ids: list[str], timeout: float = 20.0) -> list[dict[str, Any]]:
        """The rows of ``session_ids`` once each has one that is no longer ``started``."""
        wanted = set(session_ids)

        def settled() -> list[dict[str, Any]]:
            rows = [row for row in self.rows() if row["session_id"] in wanted]
            finished = {row["session_id"] for row in rows if row["status"] != "started"}
            return rows if finished == wanted else []

        return wait_until(settled, timeout, f"a finished row for each of {len(wanted)} sessions")

    def audit_records(self) -> list[dict[str, Any]]:
        """Every replica's audit records (each replica keeps its own hash-chained file)."""
        records = []
        for index in range(len(self.replicas)):
            path = self.folder / f"replica-{index}" / "audit.jsonl"
            for line in path.read_text().splitlines() if path.exists() else ():
                with contextlib.suppress(ValueError):  # the writer's newest line may not be whole yet
                    records.append(json.loads(line))
        return records

    def output(self) -> str:
        return "".join(line for replica in self.replicas for line in replica.output)

    def close(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                replica.stop(timeout=15)
        if self.nginx is not None:
            self.nginx.stop()
        for server in (self.upstream, self.flaky):
            server.close()
        self.redis.stop()
        self.postgres.remove()


def _vault(folder: Path) -> tuple[Path, Path]:
    """An encrypted vault holding ``team-openai`` = the canary key, and its master key file (0600)."""
    key_file = folder / "vault.key"
    key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    key_file.chmod(0o600)
    vault = folder / "vault.json"
    command = [
        sys.executable, "-m", "gtl_nb", "keys", "add", "team-openai",
        "--vault", str(vault), "--key-file", str(key_file),
    ]  # fmt: skip
    done = subprocess.run(command, input=UPSTREAM_KEY + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return vault, key_file


@contextlib.contextmanager
def running_cluster(folder: Path, *, pace: float = 0.01) -> Iterator[Cluster]:
    """Start every piece of a cluster in ``folder``; stop them all at the end. ``pace``: seconds between
    the upstream's streamed chunks."""
    _require_servers()
    redis = RedisServer.start(folder / "redis")
    postgres = PostgresServer.start()
    try:
        database_url = postgres.create_database("gtl_scaleout")
        upstream = sim.serve("openai", api_key=UPSTREAM_KEY, pace=pace)
        flaky = sim.serve("openai", sim.Fault.http(500), api_key=UPSTREAM_KEY)
        vault, vault_key = _vault(folder)
        cluster = Cluster(folder, redis, postgres, database_url, upstream, flaky, vault, vault_key)
    except BaseException:
        redis.stop()
        postgres.remove()
        raise
    try:
        cluster.start_replicas()
        yield cluster
    finally:
        cluster.close()
        leaked = [line for line in cluster.output().splitlines() if UPSTREAM_KEY in line or SECRET in line]
        assert leaked == [], f"a secret reached a replica's log: {leaked[:2]}"
