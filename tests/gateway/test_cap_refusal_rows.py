"""A completion request refused at a session cap — ``max_sessions_per_principal`` or
``max_sessions_per_connection`` — still leaves exactly one ledger row and one audit record (status
``error``, ``OVERLOADED``, the principal, the model asked, no provider, no tokens, no cost), on every
transport that has the caps, over real loopback gateways. The client's answer is the refusal it always
was, and the refused request takes no place in the cap it exceeded: afterwards the caps hold exactly
the sessions they held before."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.certs import DevCertificates
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol.errors import OverloadedError
from tests.gateway.conftest import jwt_echo_gateway, write_toml
from tests.gateway.test_sessions_per_principal import LONG, SLOW, HttpStream, _eventually, _held_ws_stream

PER_PRINCIPAL = 2
SCOPES = ("chat:write", "models:read")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: DevCertificates) -> Iterator[Any]:
    """A GhostToken gateway on HTTP (with WebSocket and SSE), gRPC and QUIC, with an audit log; each
    principal may run 2 sessions, each connection 1. Yields the gateway, ``mint(sub)`` and the paths
    of its ledger and audit log."""
    tls = {"port": 0, "tls_cert": str(certs.certificate), "tls_key": str(certs.key)}
    audit = tmp_path / "audit.jsonl"
    more = {
        "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
        "gateway": {"auth": "jwt", "max_sessions_per_principal": PER_PRINCIPAL, "max_sessions_per_connection": 1},
        "gateway.grpc": {"port": 0},
        "gateway.quic": tls,
        "gateway.audit": {"path": str(audit), "fsync": False},
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "CAP_ROWS_SECRET", more)
    gateway = start_gateway(config)
    try:
        yield gateway, lambda subject: mint(*SCOPES, subject=subject), tmp_path / "ledger.sqlite", audit
    finally:
        gateway.stop()


def _body(session_id: str, model: str = "echo", *, stream: bool = True) -> dict[str, Any]:
    return {
        "type": "completion_request",
        "session_id": session_id,
        "model": model,
        "messages": [{"role": "user", "content": "one too many"}],
        "stream": stream,
    }


def _refused_over_http(response: httpx.Response, session_id: str, limit: str) -> str:
    """A ``429`` whose body is the GTL ``OVERLOADED`` error of ``session_id``, naming ``limit``."""
    assert response.status_code == 429, response.text
    error = response.json()
    assert (error["type"], error["code"], error["session_id"]) == ("error", "OVERLOADED", session_id), error
    assert error["retryable"] and limit in error["message"], error
    return session_id


def _refused(call: Callable[[], Any], limit: str) -> str:
    """The session id of a request the gateway refused at a cap (the client's retryable ``OverloadedError``)."""
    try:
        call()
    except OverloadedError as exc:
        assert exc.retryable and limit in exc.message, exc.message
        return _session_of(exc)
    raise AssertionError("the request was not refused")


def _session_of(exc: OverloadedError) -> str:
    completion = getattr(exc, "completion", None)
    return completion.session_id if completion is not None else str(exc.session_id)


def _once_free(call: Callable[[], Any], principal: str, waited: list[tuple[str, str]]) -> Any:
    """``call()`` once the place a session gave back is free (``_eventually``). Each attempt refused
    while its task still ends — more of them the busier the machine — leaves its own row and record
    too: it goes in ``waited`` as ``(session id, principal)``."""

    def attempt() -> Any:
        try:
            return call()
        except OverloadedError as exc:
            waited.append((_session_of(exc), principal))
            raise

    return _eventually(attempt)


def _grpc_complete(url: str, token: str, session_id: str, model: str) -> Any:
    """One gRPC ``Complete`` call with our own session id; raises the GTL error of its status."""
    import grpc

    from gtl_nb.protocol.messages import CompletionRequest, Message
    from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc
    from gtl_nb.transports.grpc.mapping import to_proto
    from gtl_nb.transports.grpc.stream import status_error

    request = CompletionRequest(session_id=session_id, model=model, messages=[Message(role="user", content="x")])
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        try:
            return pb_grpc.GTLStub(channel).Complete(
                to_proto(request), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            error = status_error(exc.code(), exc.details(), where="gateway")
            error.session_id = session_id
            raise error from None


def _compat_refusals(base: str, token: str) -> None:
    """The OpenAI- (chat and Responses) and Anthropic-compatible endpoints, whole and streamed: each refused
    with its ``429``."""
    body = {"model": "echo", "messages": [{"role": "user", "content": "one too many"}]}
    for stream in (False, True):
        openai = httpx.post(
            f"{base}/v1/chat/completions",
            json={**body, "stream": stream},
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert openai.status_code == 429 and openai.json()["error"]["type"] == "requests", openai.text
        responses = httpx.post(
            f"{base}/v1/responses",
            json={"model": "echo", "input": "one too many", "stream": stream},
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert responses.status_code == 429 and responses.json()["error"]["type"] == "requests", responses.text
        anthropic = httpx.post(
            f"{base}/v1/messages",
            json={**body, "max_tokens": 10, "stream": stream},
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            timeout=30,
        )
        assert anthropic.status_code == 429 and anthropic.json()["error"]["type"] == "rate_limit_error", anthropic.text


def _principal_refusals(
    gateway: LocalGateway, token: str, certs: DevCertificates, waited: list[tuple[str, str]]
) -> list[str]:
    """``ann`` runs her 2 sessions (WebSocket, HTTP); one more is refused on every transport (the ids of
    those whose id the client chose or reads; the compatible endpoints' are the gateway's own)."""
    base, limit = gateway.url("http"), "max_sessions_per_principal"
    headers = {"authorization": f"Bearer {token}"}
    ids: list[str] = []
    with (
        gtl_nb.connect(gateway.url("ws"), token=token) as holder,
        gtl_nb.connect(gateway.url("ws"), token=token) as other,
    ):
        held_ws, held_http = _held_ws_stream(holder), HttpStream(base, token)
        assert held_http.refused is None
        try:
            for path, stream, sid in (("", True, "ann-ndjson"), ("", False, "ann-whole"), ("/sse", True, "ann-sse")):
                answer = httpx.post(f"{base}/v1/gtl{path}", json=_body(sid, stream=stream), headers=headers, timeout=30)
                ids.append(_refused_over_http(answer, sid, limit))
            for scheme in ("ws", "grpc", "quic"):  # a new connection of each: its own count is 0, ann's is 2
                verify = str(certs.ca) if scheme == "quic" else None
                with gtl_nb.connect(gateway.url(scheme), token=token, verify=verify) as client:
                    ids.append(_refused(lambda: client.complete("echo", "one too many"), limit))
            grpc_url = gateway.url("grpc")
            ids.append(_refused(lambda: _grpc_complete(grpc_url, token, "ann-complete", SLOW), limit))
            _compat_refusals(base, token)
            # one place given back: exactly one more fits, the next is refused (no refusal took or freed one)
            held_http.close()
            again = _once_free(lambda: _held_ws_stream(other), "ann", waited)  # (holder's connection runs its 1)
            try:
                ids.append(
                    _refused_over_http(
                        httpx.post(f"{base}/v1/gtl", json=_body("ann-last"), headers=headers), "ann-last", limit
                    )
                )
            finally:
                again.close()
        finally:
            held_http.close()
            held_ws.close()
    return ids


def _connection_refusals(
    gateway: LocalGateway, mint: Callable[[str], str], certs: DevCertificates, waited: list[tuple[str, str]]
) -> list[str]:
    """A connection running its 1 session refuses a second, on WebSocket, gRPC ``Session`` and QUIC; once
    the first ends the connection runs one again, and only one."""
    limit = "this connection already runs 1 session"
    ids: list[str] = []
    for scheme in ("ws", "grpc", "quic"):
        verify = str(certs.ca) if scheme == "quic" else None
        with gtl_nb.connect(gateway.url(scheme), token=mint(f"bob-{scheme}"), verify=verify) as client:
            held = _held_ws_stream(client)
            ids.append(_refused(lambda: client.complete("echo", "a second"), limit))
            held.close()
            again = _once_free(lambda: _held_ws_stream(client), f"bob-{scheme}", waited)
            try:
                ids.append(_refused(lambda: client.complete("echo", "a second"), limit))
            finally:
                again.close()
            assert _once_free(lambda: client.complete("echo", "the place is back").text, f"bob-{scheme}", waited)
    return ids


def _audit_records(path: Path) -> list[dict[str, Any]]:
    return [record for line in path.read_text().splitlines() if (record := json.loads(line))["kind"] == "request"]


def test_every_cap_refusal_leaves_one_row_and_one_audit_record(served: Any, certs: DevCertificates):
    gateway, mint, ledger, audit = served
    ann = mint("ann")
    waited: list[tuple[str, str]] = []  # refused while a place given back was still being freed
    refused = _principal_refusals(gateway, ann, certs, waited)
    compat = 6  # the compatible endpoints' refusals, whose ids the gateway chose
    refused += _connection_refusals(gateway, mint, certs, waited)
    assert len(refused) == 8 + 6
    refused += [sid for sid, _ in waited]
    assert gateway.stop() == 0  # graceful: every row and record is written before it exits

    rows = Ledger(ledger).rows()
    overloaded = [row for row in rows if row["error_code"] == "OVERLOADED"]
    assert len(overloaded) == len(refused) + compat, Counter(row["session_id"] for row in overloaded)
    by_id = Counter(row["session_id"] for row in rows)
    assert all(by_id[sid] == 1 for sid in refused), by_id
    compat_ids = {row["session_id"] for row in overloaded} - set(refused)
    prefixes = sorted(sid.split("-")[0].split("_")[0] for sid in compat_ids)
    assert prefixes == ["chatcmpl", "chatcmpl", "msg", "msg", "resp", "resp"]
    for row in overloaded:
        assert row["status"] == "error" and row["model"] == "echo", row
        assert row["user"] == "ann" or row["user"].startswith("bob-"), row
        assert row["deployment"] is None and row["provider_type"] is None, row  # no provider called
        assert not row["tokens_in"] and not row["tokens_out"] and not row["cost"], row  # no budget used
    expected = Counter({"ann": 8 + compat, "bob-ws": 2, "bob-grpc": 2, "bob-quic": 2})
    expected += Counter(who for _, who in waited)
    assert Counter(row["user"] for row in overloaded) == expected

    records = [record for record in _audit_records(audit) if record["error_code"] == "OVERLOADED"]
    assert Counter(record["session_id"] for record in records) == Counter(row["session_id"] for row in overloaded)
    for record in records:
        assert record["status"] == "error" and record["deployment"] is None and record["provider"] is None, record
        assert record["model"] is None and record["requested_model"] in {"echo", SLOW}, record  # none answered
        assert record["principal"] in {"ann", "bob-ws", "bob-grpc", "bob-quic"}, record


def test_a_refusal_over_stdio_leaves_one_row(tmp_path: Path):
    """stdio's one connection at its cap of 1 (no audit log there): the refused request has its row, and
    once the held session ends the connection runs one again."""
    ledger = tmp_path / "ledger.sqlite"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
            "ledger": {"path": str(ledger)},
            "gateway": {"max_sessions_per_connection": 1},
        },
    )
    with gtl_nb.connect(f"stdio://{config}", user="sam") as client:
        held = client.stream(SLOW, LONG)
        next(iter(held))
        refused = _refused(lambda: client.complete("echo", "a second"), "this connection already runs 1 session")
        held.close()
        assert _eventually(lambda: client.complete("echo", "the place is back").text)
    rows = [row for row in Ledger(ledger).rows() if row["session_id"] == refused]
    assert len(rows) == 1, rows
    (row,) = rows
    assert (row["status"], row["error_code"], row["user"], row["model"]) == ("error", "OVERLOADED", "sam", "echo")
    assert row["deployment"] is None and not row["tokens_in"] and not row["cost"]


def test_a_refused_request_is_no_live_session_a_cancel_query_could_reach(tmp_path: Path):
    """The row of a refusal is written in the caller's own task — a connection's reader — and the
    ``sessions`` query listed that task as the refused request's: a ``cancel`` query for the id cancelled
    the reader, every session of the connection with it, and the refusal never reached its client."""
    import asyncio

    from gtl_nb.engine.context import RequestContext
    from gtl_nb.gateway.live import live_sessions
    from gtl_nb.gateway.refusals import recorded_refusal

    client = gtl_nb.connect(config={"ledger": {"path": str(tmp_path / "ledger.sqlite")}})
    engine = client.backend.engine
    registry = live_sessions(engine)
    written = engine._finish

    async def slow_finish(*args: Any, **kwargs: Any) -> Any:  # a ledger slow to end the row (PostgreSQL's)
        try:
            await asyncio.sleep(0.2)
        finally:
            await written(*args, **kwargs)

    engine._finish = slow_finish
    request = client.request("echo", "hi", session_id="refused-1")

    async def reader() -> tuple[str, list[object]]:
        refusing = asyncio.ensure_future(
            recorded_refusal(engine, request, RequestContext(principal="ann"), OverloadedError("at the cap"))
        )
        listed: list[object] = []
        while not refusing.done():
            listed += registry.find("refused-1")  # what the sessions and cancel queries look up
            await asyncio.sleep(0.01)
        return (await refusing).code, listed

    try:
        code, listed = client.backend.loop.run(reader())
    finally:
        engine._finish = written
        client.close()
    assert code == "OVERLOADED" and listed == []
    rows = Ledger(tmp_path / "ledger.sqlite").rows(session_id="refused-1")
    assert [(row["status"], row["error_code"]) for row in rows] == [("error", "OVERLOADED")]
