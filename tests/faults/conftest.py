"""Shared pieces of the fault suite: GhostTokens, gateway files, read-only views of the ledger and the
audit log, and a relay that witnesses what the gateway does to its upstream connections.

Every gateway here runs with ``auth = "jwt"`` and a minted token, the ledger and the audit log on —
the gateway as users run it. Nothing here opens the ledger through ``Ledger``: opening it runs crash
recovery, and the kill test must see what the restarted gateway recovers, not what the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.gateway.tokens import mint_token
from tests.gateway.conftest import write_toml

SIM_KEY = "sim-key"
SECRET_ENV = "GTL_FAULTS_JWT_SECRET"
SECRET = "faults-suite-secret-5b1e0c9d7a3f4e2b8c6d0a1f"
ISSUER = "gtl-faults"
USER = "fault-tester"
SCOPES = ("chat:write", "models:read", "usage:read")
LONG_PROMPT = "Explain streaming, cancellation, pipes, gateways, ledgers and simulators, one by one, at length."
"""A prompt whose simulated answer streams in many pieces (a paced simulator takes seconds for it)."""

__all__ = [
    "ISSUER",
    "LONG_PROMPT",
    "SECRET",
    "SECRET_ENV",
    "SIM_KEY",
    "USER",
    "Witness",
    "audit_records",
    "closed_port",
    "gateway_file",
    "in_process",
    "ledger_rows",
    "start",
    "token",
    "wait_until",
]


def token(subject: str = USER, scopes: Iterable[str] = SCOPES) -> str:
    """A GhostToken the suite's gateways accept (ten minutes)."""
    return mint_token(SECRET, subject=subject, scopes=scopes, lifetime=600, issuer=ISSUER)


def start(config: Path) -> LocalGateway:
    """The gateway of ``config`` in a child process (``gtl serve``), given the suite's JWT secret."""
    return start_gateway(config, env={SECRET_ENV: SECRET})


def gateway_file(directory: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """``directory/gtl.toml``: ``tables`` plus the suite's defaults — JWT auth, a ledger and an audit log in
    ``directory``, an HTTP listener on a free port. A table given in ``tables`` replaces the default one."""
    defaults: dict[str, dict[str, Any]] = {
        "ledger": {"path": str(directory / "ledger.sqlite")},
        "gateway": {"auth": "jwt"},
        "gateway.jwt": {"issuer": ISSUER, "secret_env": SECRET_ENV, "default_deployments": ["*"]},
        "gateway.http": {"port": 0},
        "gateway.audit": {"path": str(directory / "audit.jsonl"), "fsync": False},
    }
    return write_toml(directory / "gtl.toml", {**defaults, **tables})


@contextlib.contextmanager
def in_process(config: Path) -> Iterator[SimpleNamespace]:
    """The gateway of ``config`` served from a loop thread of this process, the way ``gtl serve`` serves it
    (``gateway.server.serve``: the one engine, audit, every listener), so a test can look at its objects.
    Yields ``url`` (the HTTP listener's) and ``loop``; on exit a graceful stop, then a forced one."""
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.auth import build_authenticator
    from gtl_nb.gateway.listeners import Shutdown
    from gtl_nb.gateway.server import serve
    from gtl_nb.gateway.settings import GatewaySettings

    settings = load_settings(config=str(config))
    options = GatewaySettings.from_settings(settings)
    authenticate = build_authenticator(settings, options, environ={SECRET_ENV: SECRET})
    loop = asyncio.new_event_loop()
    urls: dict[str, str] = {}
    ready = threading.Event()
    found: dict[str, Any] = {}

    async def main() -> None:
        found["shutdown"] = shutdown = Shutdown(grace=2.0)
        found["task"] = asyncio.current_task()

        def announce(listener: Any, url: str) -> None:
            urls[listener.transport] = url
            ready.set()

        try:
            await serve(settings, options, authenticate=authenticate, shutdown=shutdown, announce=announce)
        finally:
            ready.set()

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main())

    thread = threading.Thread(target=run, name="faults-gateway", daemon=True)
    thread.start()
    assert ready.wait(30) and "http" in urls, "the in-process gateway did not start"
    try:
        yield SimpleNamespace(url=urls["http"], loop=loop)
    finally:
        loop.call_soon_threadsafe(found["shutdown"].begin)
        thread.join(15)
        if thread.is_alive():  # the grace ran out and more: stop now
            loop.call_soon_threadsafe(found["task"].cancel)
            thread.join(15)
        loop.close()


def ledger_rows(path: Path, session_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The ledger's rows as dicts, read through a read-only connection (no migration, no recovery)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in connection.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        connection.close()
    if session_ids is None:
        return rows
    wanted = set(session_ids)
    return [row for row in rows if row["session_id"] in wanted]


def audit_records(path: Path) -> list[dict[str, Any]]:
    """The ``request`` records of the current audit file (complete lines only: a batch may be in flight)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the writer's newest line, not whole yet
            continue
        if record.get("kind") == "request":
            records.append(record)
    return records


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something true (returned), failing the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)


def closed_port() -> int:
    """A loopback port nothing listens on (bound once to pick it, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Crossing:
    """One connection through the witness: what the gateway asked, and how the connection ended."""

    def __init__(self) -> None:
        self.request = bytearray()
        self.tail = b""
        self.cut = threading.Event()
        """Set when the gateway closed its side while the upstream's chunked body was unfinished."""
        self.ended = threading.Event()


class Witness:
    """A loopback TCP relay in front of a simulator that records each upstream connection the gateway opens.

    It is the simulator's eyes: for the connection that carried a given prompt it tells whether the
    gateway closed it before the answer's last chunk (the upstream request was cancelled), which a
    simulator writing into a socket nobody reads cannot tell by itself.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.crossings: list[_Crossing] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="faults-witness", daemon=True).start()

    def url(self, path: str = "/v1") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            crossing = _Crossing()
            with self._lock:
                self.crossings.append(crossing)
                self._sockets += [downstream, upstream]
            threading.Thread(target=self._from_gateway, args=(downstream, upstream, crossing), daemon=True).start()
            threading.Thread(target=self._to_gateway, args=(upstream, downstream, crossing), daemon=True).start()

    def _from_gateway(self, source: socket.socket, sink: socket.socket, crossing: _Crossing) -> None:
        try:
            while data := source.recv(65536):
                crossing.request += data
                sink.sendall(data)
        except OSError:
            pass
        # the gateway's side ended: a cut unless the last upstream bytes closed a chunked body
        if not crossing.tail.endswith(b"0\r\n\r\n"):
            crossing.cut.set()
        crossing.ended.set()
        _shut(source, sink)

    def _to_gateway(self, source: socket.socket, sink: socket.socket, crossing: _Crossing) -> None:
        try:
            while data := source.recv(65536):
                crossing.tail = (crossing.tail + data)[-5:]
                sink.sendall(data)
        except OSError:
            pass
        _shut(source, sink)

    def carrying(self, marker: str) -> _Crossing | None:
        """The connection whose request bytes contain ``marker`` (a prompt of one test's own), if any yet."""
        needle = marker.encode()
        with self._lock:
            crossings = list(self.crossings)
        return next((crossing for crossing in crossings if needle in crossing.request), None)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)
            sock.close()


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture
def witness_of() -> Iterator[Callable[[int], Witness]]:
    """``witness_of(simulator.port)``: a ``Witness`` in front of it, closed after the test."""
    opened: list[Witness] = []

    def start(port: int) -> Witness:
        opened.append(Witness(port))
        return opened[-1]

    yield start
    for witness in opened:
        witness.close()
