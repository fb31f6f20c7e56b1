"""A gateway replica started while its PostgreSQL refuses connections (``tests/postgres_refusing.py``:
a server answering every connection as one starting up does, noting who tried when).

Its two PostgreSQL stores — the usage ledger and the audit chain — make their first contact at the same
time, so the start costs one connect timeout, not one per store; ``/readyz`` names both as degraded, and
what the replica served is kept in their local spools. A SIGTERM while it starts stops the start: no
``ready`` line after ``shutting down``, exit status 0. So does one that comes before the event loop runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gtl_nb.engine.stores.postgres_pool import CONNECT_TIMEOUT
from gtl_nb.gateway.local import start_gateway
from tests.gateway.conftest import write_toml
from tests.postgres_refusing import RefusingPostgres, refusing_postgres

pytestmark = pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="psycopg is not installed")

BODY = {"model": "echo", "messages": [{"role": "user", "content": "while PostgreSQL refuses"}]}
LEDGER, AUDIT = "gtl_nb ledger", "gtl_nb audit"  # how each store names its connections


def _config(folder: Path, server: RefusingPostgres) -> tuple[Path, Path, Path]:
    """A gateway whose ledger and audit chain are both on ``server``; returns the file and the spools."""
    ledger_spool, audit_spool = folder / "ledger-spool.sqlite3", folder / "audit-spool.jsonl"
    config = write_toml(
        folder / "gtl.toml",
        {
            "ledger": {"url": f"{server.url()}?spool_path={ledger_spool}"},
            "providers.echo": {},
            "gateway.http": {"port": 0},
            "gateway.audit": {"url": f"{server.url()}?spool_path={audit_spool}"},
        },
    )
    return config, ledger_spool, audit_spool


def test_the_first_contacts_of_the_ledger_and_the_audit_chain_do_not_add_up(tmp_path: Path):
    with refusing_postgres() as server:
        config, ledger_spool, audit_spool = _config(tmp_path, server)
        with start_gateway(config, env={"GTL_NB_LOG": ""}) as gateway:
            ready_at = time.monotonic()  # (start_gateway returns once the ready line came)
            base = gateway.url("http")
            readiness = httpx.get(base + "/readyz", timeout=10)
            answer = httpx.post(base + "/v1/chat/completions", json=BODY, timeout=30)
        code = gateway.process.returncode
        ledger, audit = server.times_of(LEDGER), server.times_of(AUDIT)
    assert ledger and audit, server.attempts
    # both stores were trying at once: the second began well before the first could give up (one whole
    # connect timeout of refusals; in series, the audit chain began only after the ledger gave up)
    assert abs(audit[0] - ledger[0]) < CONNECT_TIMEOUT / 2, (ledger, audit)
    # so the start took one connect timeout, not one per store (it took two: 10.5 s)
    assert ready_at - min(ledger[0], audit[0]) < 1.5 * CONNECT_TIMEOUT
    # and promised what it did before: it says what is degraded, it serves, and keeps what it served
    assert readiness.status_code == 200 and readiness.json()["status"] == "degraded", readiness.text
    assert set(readiness.json()["degraded"]) == {"ledger", "audit"}
    assert "refused-pw" not in readiness.text
    assert answer.status_code == 200, answer.text
    assert code == 0
    with sqlite3.connect(ledger_spool) as spool:
        rows = [json.loads(params) for (params,) in spool.execute("SELECT params FROM spool")]
    assert any(row.get("status") == "ok" for row in rows), rows  # the request's row, waiting for PostgreSQL
    records = [json.loads(line) for line in audit_spool.read_text(encoding="utf-8").splitlines()]
    assert [record.get("status") for record in records] == ["ok"], records


def _until(done: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_sigterm_while_the_stores_open_stops_the_start(tmp_path: Path):
    """The signal comes while both stores are still being refused (the start is under way): the gateway
    says it is shutting down, starts no listener, announces nothing, closes what it opened and exits 0."""
    with refusing_postgres() as server:
        config, _, _ = _config(tmp_path, server)
        process = subprocess.Popen(
            [sys.executable, "-m", "gtl_nb.gateway", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "GTL_NB_LOG": ""},
        )
        try:
            _until(lambda: server.times_of(LEDGER) and server.times_of(AUDIT), "the stores never tried")
            process.send_signal(signal.SIGTERM)
            _, output = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = output.splitlines()
    assert process.returncode == 0, output
    assert any(line.startswith("gtl gateway: shutting down") for line in lines), output
    assert not [line for line in lines if "ready" in line or "listening on" in line], output
    assert lines[-1] == "gtl gateway: stopped", output
    assert "Traceback" not in output and "refused-pw" not in output


def test_a_sigterm_before_the_loop_runs_stops_the_start_before_anything_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """A SIGTERM that comes while the gateway reads its file (before its event loop handles signals) is
    kept, not fatal: the loop then starts nothing — no store is opened, no listener — and says so."""
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.auth import build_authenticator
    from gtl_nb.gateway.main import _EarlySignals, _serve_listeners
    from gtl_nb.gateway.settings import GatewaySettings

    ledger = tmp_path / "ledger.sqlite3"
    config = write_toml(
        tmp_path / "gtl.toml",
        {"ledger": {"path": str(ledger)}, "providers.echo": {}, "gateway.http": {"port": 0}},
    )
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGHUP", "SIGTERM", "SIGINT")}
    try:
        early = _EarlySignals()
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        assert early.stopping
        settings = load_settings(config=str(config))
        options = GatewaySettings.from_settings(settings)
        code = _serve_listeners(
            settings, options, build_authenticator(settings, options), config=str(config), early=early
        )
    finally:
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)
    said = capsys.readouterr().err.splitlines()
    assert code == 0
    assert said[0].startswith("gtl gateway: shutting down") and said[-1] == "gtl gateway: stopped", said
    assert not [line for line in said if "ready" in line or "listening on" in line], said
    assert not ledger.exists()  # no store was opened


def test_a_hang_up_while_starting_reloads_once_started():
    """A SIGHUP while the stores open is kept; once the gateway runs, one reload runs for it."""
    from gtl_nb.gateway.main import _HangUpsWhileStarting

    reloads: list[int] = []
    hang_ups = _HangUpsWhileStarting(count=0)
    hang_ups()
    hang_ups()
    assert reloads == []
    hang_ups.started(lambda: reloads.append(1))
    assert reloads == [1]  # one reload covers every SIGHUP before it
    hang_ups()
    assert reloads == [1, 1]


@pytest.mark.parametrize("cancels", [1, 2, 3])
def test_what_was_opening_is_closed_however_often_the_start_is_cancelled(monkeypatch, cancels):
    """A stop during the start cancels the opening; the threads that open the engine cannot be stopped
    halfway, so what they open is closed once they finish — also when a second and a third signal
    cancel the start again while it waits for them."""
    from types import SimpleNamespace

    import gtl_nb.gateway.server as server

    closed: list[str] = []
    opening = threading.Event()

    class Opened:
        async def aclose(self) -> None:
            closed.append("engine")

    def slow_build(*args: object, **kwargs: object) -> Opened:
        opening.set()
        time.sleep(0.5)
        return Opened()

    monkeypatch.setattr(server, "build_engine", slow_build)
    gateway = SimpleNamespace(metrics=None, audit=None, base=None, tracing=None)

    async def start_and_stop() -> None:
        task = asyncio.ensure_future(server.open_parts(None, gateway))  # type: ignore[arg-type]
        while not opening.is_set():
            await asyncio.sleep(0.01)
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.05)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(start_and_stop())
    assert closed == ["engine"]


def test_a_listener_that_comes_up_after_the_stop_began_is_never_announced(monkeypatch):
    """A listener slow to start (gRPC's takes ~150 ms) came up after 'shutting down' and printed its URL:
    a supervisor reading the log was handed an address already closing."""
    from types import SimpleNamespace

    import gtl_nb.gateway.server as server
    from gtl_nb.gateway.listeners import Limits, Shutdown

    announced: list[str] = []

    async def slow_listener(engine: object, listener: object, *, shutdown: Shutdown, ready: Any, **_: object) -> None:
        shutdown.begin()  # the stop arrives while this listener is still starting
        ready("grpc://127.0.0.1:1")

    monkeypatch.setattr(server, "serve_function", lambda transport: slow_listener)

    class Engine:  # what serve() asks of an engine here (the live-sessions registry keeps a weak reference)
        hooks = SimpleNamespace(subscribe=lambda subscriber: None)
        stores = SimpleNamespace(budgets=None)
        audience = server.GATEWAY

    engine = Engine()
    gateway = SimpleNamespace(listeners=[SimpleNamespace(transport="grpc")], advertise={}, auth="jwt", limits=Limits())
    parts = server.Parts(engine=engine, own_engine=False)

    async def serve() -> None:
        await server.serve(
            None,  # type: ignore[arg-type]
            gateway,  # type: ignore[arg-type]
            authenticate=lambda *args: None,  # type: ignore[arg-type,return-value]
            shutdown=Shutdown(),
            announce=lambda listener, url: announced.append(url),
            parts=parts,
        )

    asyncio.run(serve())
    assert announced == []


def test_a_grpc_listener_stopped_while_it_starts_stops_its_server(monkeypatch):
    """``server.start()`` ran outside the block that stops the server: a second SIGTERM while it started
    left a started gRPC server behind, and its finaliser printed a traceback after 'stopped'."""
    import gtl_nb.gateway.grpc as grpc_listener
    from gtl_nb.gateway.listeners import Limits, ListenerSettings, Shutdown

    stopped: list[float] = []
    real_stop = grpc_listener.GTLServicer.stop

    async def recorded_stop(self: Any, server: Any, grace: float) -> None:
        stopped.append(grace)
        await real_stop(self, server, grace)

    real_server = grpc_listener.grpc.aio.server

    def cancelled_while_starting(*args: Any, **kwargs: Any) -> Any:
        server = real_server(*args, **kwargs)
        start = server.start

        async def start_then_cancelled() -> None:
            await start()
            raise asyncio.CancelledError  # the stop arrives as start() returns

        server.start = start_then_cancelled
        return server

    monkeypatch.setattr(grpc_listener.GTLServicer, "stop", recorded_stop)
    monkeypatch.setattr(grpc_listener.grpc.aio, "server", cancelled_while_starting)

    async def serve() -> None:
        with pytest.raises(asyncio.CancelledError):
            await grpc_listener.serve_grpc(
                None,  # type: ignore[arg-type]
                ListenerSettings(transport="grpc"),
                authenticate=lambda *args: None,  # type: ignore[arg-type,return-value]
                limits=Limits(),
                shutdown=Shutdown(),
                ready=lambda url: None,
            )

    asyncio.run(serve())
    assert stopped == [0.0]  # stopped at once, on the loop it started on
