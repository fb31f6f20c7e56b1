"""Upstream faults through a real gateway process: the right error, a correct failover, a breaker that
opens and recovers, and a ledger and an audit log that agree, one row and one record per request.

One gateway (``gtl serve`` in a child process, JWT auth, ledger and audit on) fronts one deployment per
fault, each with a simulator of its own that injects it, plus a healthy ``backup``. Retries are off, so
every request is one upstream attempt; the breaker opens after two consecutive failures and probes after
one second. Each case runs the same script over one client transport (they take turns, so every
transport meets some fault):

1. a request to the faulty deployment ends with the fault's GTL code, and the simulator saw it;
2. the same request with ``providers=[faulty, "backup"]`` is answered by the backup (a correct failover);
3. the second failure opened the circuit: ``breakers()`` says ``open``, and a request now fails at once
   with ``PROVIDER_UNAVAILABLE`` without reaching the simulator;
4. the fault is healed; after the cooldown the circuit is half-open, one request gets through and closes it;
5. every session of the case has exactly one ledger row and one audit record, with the same outcome,
   and no row is left ``started``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.gateway.local import LocalGateway
from gtl_nb.protocol import GTLError
from tests.faults.conftest import (
    SIM_KEY,
    USER,
    audit_records,
    closed_port,
    gateway_file,
    ledger_rows,
    start,
    token,
    wait_until,
)

COOLDOWN = 1.0
STALL_TIMEOUT = 1.0  # the stalling deployments' first-byte and idle timeouts (the stall lasts 30 s)


@dataclass(frozen=True)
class Case:
    """One upstream fault: where it is injected and what the client must see."""

    name: str
    provider: str  # simulator and deployment type
    model: str
    fault: sim.Fault | None  # None: the upstream is down (nothing listens on its port)
    code: str
    transport: str  # the client transport this case runs over
    retry_after: float | None = None
    status: int | None = None  # the upstream's HTTP status, for the faults that have one


CASES = [
    Case("rate-limit", "openai", "gpt-4o-mini", sim.Fault.http(429, retry_after=7), "RATE_LIMIT", "ws", 7.0, 429),
    Case("server-error", "openai", "gpt-4o-mini", sim.Fault.http(500), "PROVIDER_UNAVAILABLE", "http", status=500),
    Case("overloaded", "anthropic", "claude-haiku-4-5", sim.Fault.overloaded(), "OVERLOADED", "sse", status=529),
    Case("dropped", "openai", "gpt-4o-mini", sim.Fault.drop_after(3), "PROVIDER_UNAVAILABLE", "ws"),
    Case("stall-first-byte", "openai", "gpt-4o-mini", sim.Fault.slow_first_token(30), "TIMEOUT", "http"),
    Case("stall-mid-stream", "openai", "gpt-4o-mini", sim.Fault.stall(after=3, seconds=30), "TIMEOUT", "sse"),
    Case("malformed", "openai", "gpt-4o-mini", sim.Fault.malformed_chunk(after=2), "PROVIDER_UNAVAILABLE", "ws"),
    Case("down", "openai", "gpt-4o-mini", None, "PROVIDER_UNAVAILABLE", "http"),
]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Any]]:
    """A simulator per case (injecting its fault) and the healthy ``backup``; for ``down``, only a port."""
    running: dict[str, Any] = {"backup": sim.serve("openai", api_key=SIM_KEY)}
    for case in CASES:
        faulty = None if case.fault is None else sim.serve(case.provider, case.fault, api_key=SIM_KEY)
        running[case.name] = closed_port() if faulty is None else faulty
    yield running
    for upstream in running.values():
        if isinstance(upstream, sim.Simulator):
            upstream.close()


def _base_url(upstream: Any) -> str:
    if isinstance(upstream, int):  # down: the OpenAI path on a port nothing listens on
        return f"http://127.0.0.1:{upstream}/v1"
    return str(upstream.base_url)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, Any]) -> Iterator[SimpleNamespace]:
    """The module's gateway process, and where its ledger and audit log are."""
    directory = tmp_path_factory.mktemp("upstream-faults")
    tables: dict[str, dict[str, Any]] = {
        "providers.backup": {"type": "openai", "api_key": SIM_KEY, "base_url": _base_url(upstreams["backup"])},
        "routing.retry": {"max_attempts": 1},
        "routing.breaker": {"failure_threshold": 2, "error_rate_threshold": 0, "cooldown": COOLDOWN},
    }
    for case in CASES:
        tables[f"providers.{case.name}"] = {
            "type": case.provider,
            "api_key": SIM_KEY,
            "base_url": _base_url(upstreams[case.name]),
        }
        if case.name.startswith("stall"):
            tables[f"providers.{case.name}.timeouts"] = {"first_byte": STALL_TIMEOUT, "idle": STALL_TIMEOUT}
    gateway = start(gateway_file(directory, tables))
    yield SimpleNamespace(gateway=gateway, ledger=directory / "ledger.sqlite", audit=directory / "audit.jsonl")
    gateway.stop()


def _connect(gateway: LocalGateway, transport: str) -> gtl_nb.Client:
    return gtl_nb.connect(gateway.url(transport), token=token())


def _fails(client: gtl_nb.Client, model: str, **options: Any) -> GTLError:
    with pytest.raises(GTLError) as raised:
        client.complete(model, "Tell me about circuit breakers and streams.", **options)
    return raised.value


def _requests_seen(upstream: Any) -> int:
    return len(upstream.requests) if isinstance(upstream, sim.Simulator) else 0


def _heal(case: Case, upstreams: dict[str, Any]) -> None:
    """End the fault: clear the simulator's script, or start a simulator on the dead port."""
    upstream = upstreams[case.name]
    if isinstance(upstream, sim.Simulator):
        upstream.set_faults(None)
    else:
        upstreams[case.name] = sim.serve(case.provider, api_key=SIM_KEY, port=upstream)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_an_upstream_fault_through_the_gateway(case: Case, served: SimpleNamespace, upstreams: dict[str, Any]):
    model = f"{case.name}:{case.model}"
    sessions: dict[str, tuple[str, str | None]] = {}  # session id -> (status, error code) the client saw
    with _connect(served.gateway, case.transport) as client:
        # 1. the fault's own error
        before = _requests_seen(upstreams[case.name])
        error = _fails(client, model)
        assert (error.code, error.retryable) == (case.code, True), error
        if case.retry_after is not None:
            assert error.retry_after == case.retry_after
        if case.status is not None:
            assert error.http_status == case.status
        if case.fault is not None:
            assert _requests_seen(upstreams[case.name]) == before + 1
        sessions[error.completion.session_id] = ("error", case.code)

        # 2. a failover list moves the request to the backup
        answer = client.complete(model, "Fail over, please.", providers=[case.name, "backup:gpt-4o-mini"])
        assert answer.provider == "backup" and answer.text
        sessions[answer.session_id] = ("ok", None)

        # 3. two failures in a row: the circuit is open and the deployment is not asked
        breakers = client.breakers()
        assert breakers[case.name]["state"] == "open", breakers[case.name]
        assert breakers["backup"]["state"] == "closed"
        before = _requests_seen(upstreams[case.name])
        refused = _fails(client, model)
        assert refused.code == "PROVIDER_UNAVAILABLE" and refused.retryable, refused
        assert _requests_seen(upstreams[case.name]) == before
        sessions[refused.completion.session_id] = ("error", "PROVIDER_UNAVAILABLE")

        # 4. healed, and past the cooldown: one probe closes the circuit again
        _heal(case, upstreams)
        wait_until(
            lambda: client.breakers()[case.name]["state"] == "half_open",
            timeout=COOLDOWN + 10,
            what=f"the circuit of {case.name} half-open after its {COOLDOWN:g} s cooldown",
            every=0.2,
        )
        recovered = client.complete(model, "Are you back?")
        assert recovered.provider == case.name and recovered.text
        assert client.breakers()[case.name]["state"] == "closed"
        sessions[recovered.session_id] = ("ok", None)

    # 5. one row and one audit record per session, agreeing with what the client saw (another process reads
    # the ledger's file: the writer's commit may trail the client's answer by a few milliseconds)
    def finished() -> list[dict[str, Any]]:
        found = ledger_rows(served.ledger, sessions)
        return found if len(found) >= len(sessions) and all(row["status"] != "started" for row in found) else []

    rows = wait_until(finished, timeout=10, what="a finished ledger row for every session")
    assert sorted(row["session_id"] for row in rows) == sorted(sessions), "one ledger row per session"
    for row in rows:
        assert (row["status"], row["error_code"]) == sessions[row["session_id"]], row
        assert row["user"] == USER
    failover_row = next(row for row in rows if row["session_id"] == answer.session_id)
    assert (failover_row["deployment"], json.loads(failover_row["failover_path"])) == (
        "backup",
        [case.name, "backup"],
    )

    def audited() -> list[dict[str, Any]]:
        found = [record for record in audit_records(served.audit) if record["session_id"] in sessions]
        return found if len(found) >= len(sessions) else []

    records = wait_until(audited, timeout=15, what="an audit record for every session")
    assert sorted(record["session_id"] for record in records) == sorted(sessions), "one audit record per session"
    by_session = {row["session_id"]: row for row in rows}
    for record in records:
        row = by_session[record["session_id"]]
        assert (record["status"], record["error_code"]) == (row["status"], row["error_code"])
        assert (record["principal"], record["trace_id"]) == (row["user"], row["trace_id"])
        assert record["deployment"] == row["deployment"]
    failover_record = next(record for record in records if record["session_id"] == answer.session_id)
    assert failover_record["failover_path"] == [case.name, "backup"]
    assert failover_record["failover_reasons"] == [case.code]


def test_nothing_is_left_started_and_the_audit_chain_holds(served: SimpleNamespace):
    """Run after the cases (last in the module): one more request, then a clean stop; no row of the gateway is
    ``started``, every row has exactly one audit record, and ``gtl audit verify`` accepts the chain."""
    with _connect(served.gateway, "http") as client:
        assert client.complete("backup:gpt-4o-mini", "One more, before the stop.").text
    assert served.gateway.stop() == 0  # a clean shutdown writes every queued audit record
    rows = ledger_rows(served.ledger)
    assert [row for row in rows if row["status"] == "started"] == []
    records = audit_records(served.audit)
    assert sorted(record["session_id"] for record in records) == sorted(row["session_id"] for row in rows)
    verified = subprocess.run(
        [sys.executable, "-m", "gtl_nb", "audit", "verify", "--log", str(served.audit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
