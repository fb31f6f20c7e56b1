"""The shared stores of ``bench.bench_stores``: a real ``redis-server`` and a real PostgreSQL 15 of the
bench's own on loopback, and what each spends, read from ``/proc``.

Both are started by the test suite's helpers (``tests/redis_server.py`` ``RedisServer.start(folder)``,
``tests/postgres_server.py`` ``PostgresServer.start()``), so the bench runs what the store tests run.
One change for PostgreSQL: the tests' cluster runs with ``fsync``, ``synchronous_commit`` and
``full_page_writes`` off (durability is not what they test); the bench's runs with PostgreSQL's
defaults (all on), as a deployment does — the file audit log it is compared with fsyncs too.

CPU is ``utime + stime`` (every thread) from ``/proc/<pid>/stat``. Redis is one process. PostgreSQL is
a postmaster and its children (a backend per connection, the checkpointer, the WAL writer, the
autovacuum launcher…): ``postgres_cpu`` adds the postmaster's own CPU, that of every live child and
the postmaster's ``cutime + cstime`` (children it has reaped), so a backend that exits mid-phase is
still counted. Redis's ``INFO commandstats`` says which commands a phase sent and the server's own
microseconds for them (``command_stats``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bench.procstat import descendants, stat_fields

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the helpers live in tests/, a folder of the repository (no package install)
    sys.path.insert(0, str(REPO))

from tests.postgres_server import PostgresServer, PostgresServerError, find_postgres_bin  # noqa: E402
from tests.redis_server import RedisServer, RedisServerError, find_redis_server  # noqa: E402

__all__ = [
    "DurablePostgres",
    "PostgresServerError",
    "RedisServer",
    "RedisServerError",
    "command_stats",
    "find_postgres_bin",
    "find_redis_server",
    "missing",
    "postgres_cpu",
    "postmaster_pid",
    "process_cpu",
]

_TICK = os.sysconf("SC_CLK_TCK")


class DurablePostgres(PostgresServer):
    """``PostgresServer`` with PostgreSQL's durable defaults (``fsync``, ``synchronous_commit``,
    ``full_page_writes`` on); the rest as the tests run it (loopback, 100 connections, 32 MB of
    shared buffers)."""

    def _start(self) -> str:
        import subprocess

        from tests.postgres_server import START_SECONDS, _as_server_user

        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.folder}",
                "-c max_connections=100",
                "-c shared_buffers=32MB",
            ]
        )
        command = [
            str(self.bin / "pg_ctl"), "start", "-w", "-t", str(START_SECONDS),
            "-D", str(self.data), "-l", str(self.logfile), "-o", options,
        ]  # fmt: skip
        done = subprocess.run(_as_server_user(command), capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return ""
        tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else "(no log)"
        return f"{done.stdout[-500:]}{done.stderr[-500:]}\nlog:\n{tail}"


def missing() -> str | None:
    """Why the stores bench cannot run here (no redis-server, PostgreSQL 15, redis-py or psycopg), or ``None``."""
    import importlib.util

    for module, extra in (("redis", "redis"), ("psycopg", "postgres"), ("psycopg_pool", "postgres")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (the {extra} extra)"
    if find_redis_server() is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    if find_postgres_bin() is None:
        return "PostgreSQL 15 is not installed (Debian: apt-get install postgresql-15)"
    return None


def process_cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds of one process (``reaped``: plus its reaped children's); 0 when it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0
    # after the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def postmaster_pid(server: PostgresServer) -> int:
    """The postmaster's process id (the first line of ``postmaster.pid``)."""
    return int((server.data / "postmaster.pid").read_text().split("\n", 1)[0])


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds of the whole cluster: the postmaster, its live children and those it reaped."""
    total = process_cpu(postmaster, reaped=True)
    for pid in descendants(postmaster):
        if pid != postmaster:
            total += process_cpu(pid)
    return total


def command_stats(client: Any) -> dict[str, tuple[int, int]]:
    """Redis's ``INFO commandstats``: command -> (calls, server microseconds) so far, without ``info``
    itself (the bench's own reads)."""
    stats: dict[str, tuple[int, int]] = {}
    for key, value in client.info("commandstats").items():
        name = key.removeprefix("cmdstat_")
        if name != "info":
            stats[name] = (int(value["calls"]), int(value["usec"]))
    return stats
