"""A real PostgreSQL 15 for tests: its own cluster (``initdb``) in a temporary folder, on a free
loopback port, started once per test session and stopped at its end.

``PostgresServer.start()`` returns a running server (``url(database)``, ``stop()``, ``restart()``);
``find_postgres_bin()`` is the folder of the binaries (``$PG_BIN``, else the Debian path of version
15), or ``None``. PostgreSQL refuses to run as root: as root every server command runs as the
``postgres`` user (``runuser -u postgres --``) and the folder is handed to that user.

The pytest fixtures (``postgres_server``, session-scoped, and ``postgres_url``: a fresh database per
test) are used by a test module with ``from postgres_server import postgres_server, postgres_url``
(after ``load_postgres_kit``). Without PostgreSQL or psycopg they skip with the reason — except under
CI (``CI=true``), where they fail: CI must run them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "PostgresServerError", "find_postgres_bin", "postgres_server", "postgres_url"]

START_SECONDS = 60  # pg_ctl -w waits this long: a loaded CI machine may be slow
DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresServerError(RuntimeError):
    """The server could not be set up or started."""


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None`` when there is none."""
    named = os.environ.get("PG_BIN")
    candidates = [Path(named)] if named else [DEBIAN_BIN]
    if not named and shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).parent)  # type: ignore[arg-type]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    """``command`` as the user PostgreSQL runs as: ``postgres`` when we are root, ourselves otherwise."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of this test session: ``folder`` holds its data, socket and log."""

    bin: Path
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def logfile(self) -> Path:
        return self.folder / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls, bin_folder: Path | None = None, *, attempts: int = 3) -> PostgresServer:
        """initdb a new cluster in a fresh temporary folder and start it on a free loopback port."""
        bin_folder = bin_folder or find_postgres_bin()
        if bin_folder is None:
            raise PostgresServerError("PostgreSQL 15 is not installed")
        # not under pytest's tmp_path: its folders are private to root, and the server runs as postgres
        folder = Path(tempfile.mkdtemp(prefix="gtl_nb-postgres-"))
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        initdb = [
            str(bin_folder / "initdb"),
            "-D", str(folder / "data"),
            "-U", "postgres",
            "--auth=trust",  # loopback only, a throw-away cluster
            "--encoding=UTF8",
            "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(_as_server_user(initdb), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise PostgresServerError(f"initdb failed: {done.stderr[-2000:] or done.stdout[-2000:]}")
        problem = ""
        for _ in range(attempts):
            server = cls(bin_folder, folder, free_port())
            problem = server._start()
            if not problem:
                return server
        shutil.rmtree(folder, ignore_errors=True)
        raise PostgresServerError(f"PostgreSQL did not start on a loopback port:\n{problem}")

    def _start(self) -> str:
        """Start the server with ``pg_ctl -w``; an empty string when it runs, else what went wrong."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.folder}",
                "-c fsync=off",  # a throw-away cluster: durability is not what these tests measure
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
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

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, then a clean shutdown; ``immediate``: a crash)."""
        command = [str(self.bin / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data)]
        subprocess.run(_as_server_user(command), capture_output=True, text=True, check=False)

    def restart(self) -> None:
        """Start it again after ``stop``, on the same port and data."""
        problem = self._start()
        if problem:
            raise PostgresServerError(f"PostgreSQL did not restart:\n{problem}")

    def remove(self) -> None:
        """Stop it and delete its folder."""
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def password_role(self, name: str, password: str) -> None:
        """A login role that must give ``password`` over loopback TCP (the cluster trusts everyone
        else): for tests of a wrong password. Idempotent."""
        hba = self.data / "pg_hba.conf"
        rule = f"host all {name} 127.0.0.1/32 scram-sha-256\n"
        text = hba.read_text()
        if rule not in text:
            hba.write_text(rule + text)  # the first matching line wins
        self._admin(
            f"DO $$BEGIN CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'; "
            f"EXCEPTION WHEN duplicate_object THEN ALTER ROLE \"{name}\" PASSWORD '{password}'; END$$"
        )
        self._admin("SELECT pg_reload_conf()")
        self._until_a_wrong_password_fails(name)

    def _until_a_wrong_password_fails(self, name: str) -> None:
        """Wait for the server to have read its new pg_hba.conf (a reload is a signal, not a reply)."""
        import psycopg

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                psycopg.connect(f"postgresql://{name}:not-it@127.0.0.1:{self.port}/postgres", connect_timeout=5).close()
            except psycopg.OperationalError:
                return
            time.sleep(0.05)
        raise PostgresServerError("the server never asked for a password")

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)


# ----------------------------------------------------------------------------------------------
# pytest fixtures

_shared: PostgresServer | None = None
_users = 0
_shared_lock = threading.Lock()
_databases = itertools.count(1)


@contextlib.contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """PostgreSQL stopped with SIGSTOP: its sockets stay open and the kernel still accepts connections,
    but nothing answers — a hung host, a VM paused, a server stuck on its disk. (Linux: its processes
    are found in /proc.)"""
    if not sys.platform.startswith("linux"):
        pytest.skip("finds the server's processes in /proc")
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry.name))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> None:
    """Fail under CI (the PostgreSQL stores must be tested there), skip elsewhere."""
    if _in_ci():
        pytest.fail(f"{reason}; CI must run the PostgreSQL store tests (.ci/run installs postgresql-15)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL of this test session (one per process, however many modules ask for it)."""
    global _shared, _users
    if importlib.util.find_spec("psycopg") is None or importlib.util.find_spec("psycopg_pool") is None:
        _unavailable("psycopg is not installed (the postgres extra: pip install -e '.[postgres]')")
    binaries = find_postgres_bin()
    if binaries is None:
        _unavailable("PostgreSQL 15 is not installed (Debian: apt-get install postgresql-15)")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root without runuser: PostgreSQL refuses to run as root")
    with _shared_lock:
        if _shared is None:
            _shared = PostgresServer.start(binaries)
        _users += 1
        server = _shared
    try:
        yield server
    finally:
        with _shared_lock:
            _users -= 1
            if _users == 0 and _shared is not None:
                _shared.remove()
                _shared = None


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new empty database of the session's server: each test starts from nothing."""
    name = f"gtl_test_{os.getpid()}_{next(_databases)}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            postgres_server.drop_database(name)
