"""Two running sessions that share an id (clients choose their ids) are two sessions: over a real
loopback gateway, whether the two come from two tenants' tokens of one ``sub`` or from one token on
two connections, each keeps its own entry in the live sessions (the ``sessions`` and ``cancel``
queries), its own audit record (the model it asked for) and its own ledger row. Keyed by the id
alone, one's end removed the other's live entry — so ``cancel`` reached a session that had ended and
left the running one going — and took the other's pending audit record; in process, the metrics'
start times and the traces' spans were taken the same way. On one connection a second request for a
running id is refused by the connection itself (the last test)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol.messages import Error, Token
from tests.gateway.conftest import jwt_echo_gateway

LONG = " ".join(f"word{i}" for i in range(2000))  # at 0.1 s a token: streams for minutes
SCOPES = ("chat:write", "session:read", "session:write")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A GhostToken gateway with an audit log and two slow echo deployments (told apart by their
    names); yields it, ``mint(tenant)`` for tokens of ``ann`` and the paths of its ledger and audit log."""
    audit = tmp_path / "audit.jsonl"
    more = {
        "providers.slow_a": {"type": "echo", "options": {"pace": 0.1}},
        "providers.slow_b": {"type": "echo", "options": {"pace": 0.1}},
        "gateway.audit": {"path": str(audit), "fsync": False},
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "SHARED_IDS_SECRET", more)
    gateway = start_gateway(config)
    try:
        yield gateway, lambda tenant: mint(*SCOPES, tenant=tenant), tmp_path / "ledger.sqlite", audit
    finally:
        gateway.stop()


def _held(client: gtl_nb.Client, model: str, session_id: str) -> Any:
    """A slow stream of ``session_id`` over ``client``, read to its first token and left running."""
    stream = client.stream(model, LONG, session_id=session_id)
    for event in stream:
        if isinstance(event, Token):
            return stream
        assert not isinstance(event, Error), event
    raise AssertionError("the stream ended before its first token")


def _ended(stream: Any) -> Error | None:
    """The stream read to its end: its error (``None`` for ``done``)."""
    for event in stream:
        if isinstance(event, Error):
            return event
    return None


def _eventually(check: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _audit_records(path: Path, session_id: str, count: int) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]]:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [json.loads(line) for line in lines]
        found = [r for r in found if r.get("kind") == "request" and r["session_id"] == session_id]
        assert len(found) == count, found
        return found

    return _eventually(read)


def _rows(ledger: Path, session_id: str, count: int) -> list[dict[str, Any]]:
    """The ledger rows of ``session_id`` once ``count`` of them are complete."""

    def read() -> list[dict[str, Any]]:
        with Ledger(ledger) as reading:
            rows = [row for row in reading.rows(session_id=session_id) if row["status"] != "started"]
        assert len(rows) == count, rows
        return rows

    return _eventually(read)


def _two_sessions(gateway: LocalGateway, first_token: str, second_token: str, sid: str, ledger: Path, audit: Path):
    """``slow_a`` then ``slow_b`` under one id, on two connections; the *second* one ends first (its
    client cancels it). The first must then be the one listed, the one a ``cancel`` query stops, and
    each must have its own audit record and ledger row."""
    url = gateway.url("ws")
    with gtl_nb.connect(url, token=first_token) as first, gtl_nb.connect(url, token=second_token) as second:
        running = _held(first, "slow_a:echo", sid)
        ending = _held(second, "slow_b:echo", sid)
        ending.close()  # the client cancels it: its session ends on the gateway
        _rows(ledger, sid, 1)
        listed = _eventually(lambda: _one_listed(first))
        assert listed["model"] == "slow_a:echo", listed  # the running one, not the one that ended
        assert first.cancel_session(sid) == 1  # reached the running session
        error = _ended(running)
        assert error is not None and error.code == "CANCELLED", error
    rows = _rows(ledger, sid, 2)
    with Ledger(ledger) as reading:
        assert len(reading.rows(session_id=sid)) == 2  # one row each, none left started
    assert sorted(row["deployment"] for row in rows) == ["slow_a", "slow_b"]
    assert {row["status"] for row in rows} == {"cancelled"}
    records = _audit_records(audit, sid, 2)
    assert sorted(record["requested_model"] for record in records) == ["slow_a:echo", "slow_b:echo"], records
    assert all(record["failover_path"] == [record["deployment"]] for record in records), records


def _one_listed(client: gtl_nb.Client) -> dict[str, Any]:
    listed = client.sessions()
    assert len(listed) == 1, listed
    return listed[0]


def test_one_tokens_two_connections_keep_their_sessions_of_one_id_apart(served: Any):
    gateway, mint, ledger, audit = served
    token = mint(None)
    _two_sessions(gateway, token, token, "sess_same_token", ledger, audit)


def test_two_tenants_sessions_of_one_id_and_one_sub_are_kept_apart(served: Any):
    """Two tenants' ``ann``: the live entries were told apart by owner already; the audit log's
    pending records were not (the running one's record lost the model it asked for)."""
    gateway, mint, ledger, audit = served
    _two_sessions(gateway, mint("acme"), mint("beta"), "sess_two_tenants", ledger, audit)


# -- in one process: the metrics' start times and the traces' spans ---------------------------------


def test_metrics_and_spans_of_two_running_sessions_of_one_id_stay_their_own():
    """Two sessions of one id under one context (a connection's, which carries its trace id): the
    second's start overwrote the first's start time, so the first, cancelled, had no duration observed;
    and the second's end ended the first's span with the second's outcome."""
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.hooks import Hooks
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.metrics import Metrics, known_models
    from gtl_nb.protocol.messages import CompletionRequest, Message
    from tests.gateway.test_metrics import value
    from tests.gateway.test_tracing import traced

    slow = {"type": "echo", "options": {"pace": 0.05}}
    engine = build_engine(
        load_settings(providers={"slow_a": slow, "slow_b": slow}, environ={}), ledger=False, hooks=Hooks()
    )
    now = [0.0]
    metrics = Metrics(known_models(engine), clock=lambda: now[0])
    metrics.attach(engine.hooks)
    seen = traced()
    seen.tracer.attach(engine.hooks)
    context = RequestContext(principal="ann", transport="ws", trace_id="4bf92f3577b34da6a3ce929d0e0e4736")

    async def started(model: str) -> Any:
        request = CompletionRequest(session_id="S", model=model, messages=[Message(role="user", content=LONG)])
        batches = engine.stream_batches(request, context=context)
        async for batch in batches:
            if any(isinstance(event, Token) for event in batch):
                return batches
        raise AssertionError("no token")

    async def main() -> None:
        first = await started("slow_a:echo")
        now[0] = 10.0
        second = await started("slow_b:echo")
        now[0] = 15.0
        await second.aclose()  # cancelled: the second ends first
        now[0] = 20.0
        await first.aclose()
        await engine.aclose()

    asyncio.run(main())
    for deployment, seconds in (("slow_a", 20.0), ("slow_b", 5.0)):
        assert value(metrics, "gtl_request_duration_seconds_count", provider=deployment, model="echo") == 1
        assert value(metrics, "gtl_request_duration_seconds_sum", provider=deployment, model="echo") == seconds
    spans = {span.attributes["gen_ai.request.model"]: span for span in seen.spans}
    assert spans["slow_a:echo"].attributes["gtl.deployment"] == "slow_a"
    assert spans["slow_b:echo"].attributes["gtl.deployment"] == "slow_b"
    for model, span in spans.items():
        (attempt,) = [event for event in span.events if event.name == "gtl.attempt"]
        assert attempt.attributes["gtl.deployment"] == model.partition(":")[0]


# -- one connection: a second request for a running id ----------------------------------------------


def test_a_second_request_for_a_running_id_on_one_connection_ends_that_id_once(served: Any):
    """On a connection (WebSocket here; stdio and gRPC's ``Session`` share its code) a second request for
    a running id is a bad frame: the running session ends with one ``INVALID_REQUEST`` and the request
    never runs. Reusing the id at once is either refused on its own (``still ending``, retryable) or runs
    as a session of its own — it was made the live session while the gateway still ended the first,
    and often got the first's ``CANCELLED`` as its end. Every session that ran leaves exactly one
    complete ledger row and one audit record, and the first's say what its client was told."""
    from websockets.sync.client import connect as ws_connect

    gateway, mint, ledger, audit = served
    sid = "sess_one_connection"

    def request(model: str, content: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        return json.dumps({"type": "completion_request", "session_id": sid, **body})

    def until_terminal(socket_: Any) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frame = json.loads(socket_.recv(timeout=30))
            if frame.get("session_id") == sid:
                frames.append(frame)
        return frames

    url = gateway.url("http").replace("http", "ws", 1) + "/v1/gtl/ws"
    with ws_connect(url, additional_headers={"authorization": f"Bearer {mint(None)}"}) as socket_:
        socket_.send(json.dumps({"type": "hello", "versions": ["1.0"]}))
        socket_.send(request("slow_a:echo", LONG))
        while json.loads(socket_.recv(timeout=30)).get("type") != "token":
            pass
        socket_.send(request("echo", "the duplicate"))
        socket_.send(request("echo", "reused"))  # at once: the gateway is still ending the first
        ended = until_terminal(socket_)
        assert [frame["type"] for frame in ended if frame["type"] != "token"] == ["error"], ended
        assert ended[-1]["code"] == "INVALID_REQUEST" and "second completion_request" in ended[-1]["message"]
        reused = until_terminal(socket_)
        if reused[-1]["type"] == "error":  # refused on its own: it never ran
            assert len(reused) == 1 and reused[0]["retryable"] and "still ending" in reused[0]["message"], reused
        else:  # the first had ended already: it ran as a session of its own, never with the first's events
            assert '"reused"' in "".join(frame["text"] for frame in reused if frame["type"] == "token"), reused
    ran = 1 if reused[-1]["type"] == "error" else 2
    rows = _rows(ledger, sid, ran)
    ends = sorted((row["status"], row["error_code"]) for row in rows)
    assert ends == [("error", "INVALID_REQUEST"), ("ok", None)][:ran], rows
    records = _audit_records(audit, sid, ran)
    assert sorted(str(record.get("error_code")) for record in records) == ["INVALID_REQUEST", "None"][:ran], records
