"""Three replicas behind nginx when something dies: a replica, Redis, PostgreSQL.

Each request must still end in exactly one ``done`` or ``error`` for its client and leave exactly one
row in the shared ledger; nothing is lost while a store is away and nothing is doubled when it comes
back. The module has a cluster of its own (these tests stop its servers), and each test leaves it
whole again for the next.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

import gtl_nb
from gtl_nb.completion import Completion
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol.errors import BudgetExceededError, GTLError
from gtl_nb.protocol.messages import Done, Error, Token
from tests.faults.conftest import LONG_PROMPT
from tests.scaleout.conftest import (
    DAILY_USER,
    SECRET,
    SECRET_ENV,
    Cluster,
    running_cluster,
    token,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("outages"), pace=0.05) as running:
        yield running


@dataclass
class Stream:
    """One client's streamed request through nginx, as the client saw it."""

    session_id: str | None = None
    tokens: int = 0
    ended: str | None = None  # "done", "error" or "raised"
    first_token: threading.Event = field(default_factory=threading.Event)


def _stream(cluster: Cluster, stream: Stream, prompt: str) -> None:
    try:
        with gtl_nb.connect(cluster.http_url, token=token()) as client:
            for event in client.stream("openai:gpt-4o", prompt):
                stream.session_id = stream.session_id or event.session_id or None
                if isinstance(event, Token):
                    stream.tokens += 1
                    stream.first_token.set()
                elif isinstance(event, (Done, Error)):
                    stream.ended = "done" if isinstance(event, Done) else "error"
    except GTLError:
        stream.ended = "raised"
    finally:
        stream.first_token.set()


def _restart_replica(cluster: Cluster, index: int) -> None:
    """Start replica ``index`` again on its old ports (nginx's configuration names them)."""
    old = cluster.replicas[index]
    ports = old.ports
    cluster.replicas[index] = start_gateway(
        cluster.configs[index],
        http=f"127.0.0.1:{ports['http']}",
        grpc=f"127.0.0.1:{ports['grpc']}",
        env={SECRET_ENV: SECRET},
    )


def _one_row_each(cluster: Cluster, session_ids: list[str], timeout: float = 30.0) -> dict[str, dict]:
    rows = cluster.settled_rows(session_ids, timeout=timeout)
    counts = Counter(row["session_id"] for row in rows)
    assert all(count == 1 for count in counts.values()), [sid for sid, count in counts.items() if count > 1]
    return {row["session_id"]: row for row in rows}


def test_a_replica_killed_mid_stream(cluster: Cluster):
    streams = [Stream() for _ in range(9)]
    threads = [
        threading.Thread(target=_stream, args=(cluster, s, f"{LONG_PROMPT} ({i})")) for i, s in enumerate(streams)
    ]
    for thread in threads:
        thread.start()
    for stream in streams:
        assert stream.first_token.wait(30), "a stream never started"
    victim = cluster.replicas[0]
    killed_at = time.monotonic()
    victim.kill()
    for thread in threads:
        thread.join(60)
    assert all(stream.ended for stream in streams), "every client's stream ended, one way or another"
    cut = [stream for stream in streams if stream.ended != "done"]
    assert cut, "some streams were on the killed replica"
    assert time.monotonic() - killed_at < 30
    session_ids = [stream.session_id for stream in streams if stream.session_id]
    assert len(session_ids) == len(streams)
    # the other replicas see the dead one's lease run out (3 s) and mark its rows interrupted
    rows = _one_row_each(cluster, session_ids)
    killed_rows = [row for row in rows.values() if row["replica"].startswith("replica-0:")]
    assert killed_rows and {row["status"] for row in killed_rows} == {"interrupted"}
    assert {rows[stream.session_id]["status"] for stream in streams if stream.ended == "done"} == {"ok"}
    # the replica that marked them writes their audit records (the killed one never could): one for each
    killed_sessions = sorted(row["session_id"] for row in killed_rows)

    def interrupted_records() -> list[dict]:
        found = [r for r in cluster.audit_records() if r.get("kind") == "request" and r["status"] == "interrupted"]
        return found if sorted(r["session_id"] for r in found) == killed_sessions else []

    for record in wait_until(interrupted_records, 15, "an audit record for each interrupted row"):
        row = rows[record["session_id"]]
        assert record["recovered"] is True
        assert (record["principal"], record["model"], record["trace_id"]) == (
            row["user"],
            row["model"],
            row["trace_id"],
        )
    # nginx routes around the dead replica: new requests succeed
    with gtl_nb.connect(cluster.http_url, token=token()) as client:
        answers = [client.complete("openai:gpt-4o", f"after the kill {i}") for i in range(6)]
    assert all(answer.text for answer in answers)
    _restart_replica(cluster, 0)


def _load(cluster: Cluster, count: int, during: threading.Event) -> list[object]:
    """``count`` requests through nginx, eight at a time, the first eight before ``during`` is set."""

    def one(index: int) -> object:
        if index >= 8:
            during.wait(30)
        with gtl_nb.connect(cluster.http_url, token=token()) as client:
            try:
                return client.complete("openai:gpt-4o", f"under an outage {index} {time.monotonic()}")
            except GTLError as exc:
                return exc

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_redis_stopped_and_restarted_during_load(cluster: Cluster):
    during = threading.Event()
    results: list[object] = []
    loader = threading.Thread(target=lambda: results.extend(_load(cluster, 40, during)))
    loader.start()
    time.sleep(0.3)
    cluster.redis.stop()
    during.set()
    readiness = []
    for replica in cluster.replicas:  # each replica, asked while Redis is away, answers on local limits
        with gtl_nb.connect(replica.url("http"), token=token()) as client:
            assert client.complete("openai:gpt-4o", "straight to a replica, Redis away").text
        readiness.append(httpx.get(replica.url("http") + "/readyz", timeout=10).json())
    time.sleep(1.0)
    cluster.redis.restart()
    loader.join(120)
    failed = [result for result in results if not isinstance(result, Completion)]
    assert len(results) == 40 and failed == [], failed[:3]
    _one_row_each(cluster, [result.session_id for result in results])  # type: ignore[union-attr]
    # what each replica touched while Redis was away says so (its breakers, its revocation list, …)
    assert all(state["status"] == "degraded" for state in readiness), readiness

    def ready_again() -> bool:
        return all(
            httpx.get(replica.url("http") + "/readyz", timeout=10).json()["status"] == "ready"
            for replica in cluster.replicas
        )

    wait_until(ready_again, timeout=30, what="every replica back on Redis", every=0.5)
    warnings = [line for line in cluster.output().splitlines() if "redis" in line.lower() and "WARNING" in line]
    assert warnings, "the fallback is logged"
    # and so is its end, at the same level: an operator who saw Redis go sees it come back
    assert [line for line in warnings if "answers again" in line], warnings


def test_redis_restarted_empty_still_refuses_what_the_ledger_says_was_spent(cluster: Cluster):
    """The probe's case: a user over its daily budget per the PostgreSQL ledger, Redis (no persistence)
    restarted empty: no replica admits the user again, each rebuilds the day from the ledger."""
    spender = token(DAILY_USER)

    def ask(url: str) -> object:
        with gtl_nb.connect(url, token=spender) as client:
            try:
                return client.complete("openai:gpt-4o", "spend the day's budget")
            except GTLError as exc:
                return exc

    first = ask(cluster.http_url)
    assert isinstance(first, Completion), first
    assert cluster.settled_rows([first.session_id])[0]["cost"] > 0
    cluster.redis.stop()
    cluster.redis.restart()  # without persistence: empty

    def ready_again() -> bool:
        return all(
            httpx.get(replica.url("http") + "/readyz", timeout=10).json()["status"] == "ready"
            for replica in cluster.replicas
        )

    wait_until(ready_again, timeout=30, what="every replica back on Redis", every=0.5)
    after = [ask(replica.url("http")) for replica in cluster.replicas for _ in range(3)]
    assert all(isinstance(result, BudgetExceededError) for result in after), after


def test_postgres_stopped_and_restarted_the_spool_drains(cluster: Cluster):
    cluster.postgres.stop()
    try:
        with (
            gtl_nb.connect(cluster.http_url, token=token()) as client,
            concurrent.futures.ThreadPoolExecutor(3) as pool,
        ):
            prompts = [f"while PostgreSQL is away {i}" for i in range(9)]
            answers = list(pool.map(lambda prompt: client.complete("openai:gpt-4o", prompt), prompts))
        readiness = [httpx.get(replica.url("http") + "/readyz", timeout=10).json() for replica in cluster.replicas]
        assert all(state["status"] == "degraded" and "ledger" in state["degraded"] for state in readiness), readiness
    finally:
        cluster.postgres.restart()
    assert all(answer.text for answer in answers)
    rows = _one_row_each(cluster, [answer.session_id for answer in answers], timeout=60)
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert len({row["replica"] for row in rows.values()}) >= 2

    def ready_again() -> bool:
        return all(
            httpx.get(replica.url("http") + "/readyz", timeout=10).json()["status"] == "ready"
            for replica in cluster.replicas
        )

    wait_until(ready_again, timeout=30, what="every replica's spool drained", every=0.5)
