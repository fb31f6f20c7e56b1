"""A completion request the gateway refuses while it shuts down still leaves exactly one ledger row and
one audit record (status ``error``, ``PROVIDER_UNAVAILABLE``, the code its client read), written before
the ledger and the audit log close — on every transport, over real loopback gateways.

A session held open on each connection keeps the stop in its drain (``shutdown_grace`` is long); the
requests are sent then, on connections opened before the stop: WebSocket, a gRPC ``Session``, QUIC, and
HTTPS connections whose TLS handshake had not begun when the port closed (the one way a request still
reaches the HTTP listener's routes once it stopped accepting: a connection it had accepted but not yet
served). Once the held sessions end, the gateway exits, and its ledger file and audit log are read.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.certs import DevCertificates
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol.errors import GTLError, ProviderUnavailableError
from tests.gateway.conftest import jwt_echo_gateway, write_toml
from tests.gateway.test_sessions_per_principal import LONG, SLOW, _held_ws_stream

SCOPES = ("chat:write", "models:read")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: DevCertificates) -> Iterator[Any]:
    """A GhostToken gateway on HTTPS (with WebSocket and SSE), gRPC and QUIC, with an audit log and a
    minute of grace. Yields the gateway, ``mint(sub)`` and the paths of its ledger and audit log."""
    tls = {"port": 0, "tls_cert": str(certs.certificate), "tls_key": str(certs.key)}
    audit = tmp_path / "audit.jsonl"
    more = {
        "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
        "gateway": {"auth": "jwt", "shutdown_grace": 60},
        "gateway.http": tls,
        "gateway.grpc": {"port": 0},
        "gateway.quic": tls,
        "gateway.audit": {"path": str(audit), "fsync": False},
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "SHUTDOWN_ROWS_SECRET", more)
    gateway = start_gateway(config)
    try:
        yield gateway, lambda subject: mint(*SCOPES, subject=subject), tmp_path / "ledger.sqlite", audit
    finally:
        gateway.kill()


def _until(check: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}")
        time.sleep(0.02)


def _port_closed(port: int) -> bool:
    """Whether the HTTP listener stopped accepting (``serve_http`` closes its port and shuts its connections
    down in one step: once a connection is refused, every connection it had served is shut)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except (ConnectionRefusedError, ConnectionResetError):  # (reset: queued for accept as the port closed)
        return True
    return False


# -- HTTP: requests on connections accepted before the stop, served after it --------------------------


def _gtl_body(session_id: str, *, stream: bool) -> dict[str, Any]:
    return {
        "type": "completion_request",
        "session_id": session_id,
        "model": "echo",
        "messages": [{"role": "user", "content": "too late"}],
        "stream": stream,
    }


CHAT = {"model": "echo", "messages": [{"role": "user", "content": "too late"}]}
HTTP_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("/v1/gtl", "bearer", _gtl_body("late-whole", stream=False)),
    ("/v1/gtl", "bearer", _gtl_body("late-ndjson", stream=True)),
    ("/v1/gtl/sse", "bearer", _gtl_body("late-sse", stream=True)),
    ("/v1/chat/completions", "bearer", {**CHAT, "stream": False}),
    ("/v1/chat/completions", "bearer", {**CHAT, "stream": True}),
    ("/v1/responses", "bearer", {"model": "echo", "input": "too late", "stream": False}),
    ("/v1/responses", "bearer", {"model": "echo", "input": "too late", "stream": True}),
    ("/v1/messages", "x-api-key", {**CHAT, "max_tokens": 10, "stream": False}),
    ("/v1/messages", "x-api-key", {**CHAT, "max_tokens": 10, "stream": True}),
]
"""Path, how the token goes, body: every completion endpoint of the HTTP listener, whole and streamed."""


def _post(raw: socket.socket, ca: Path, port: int, path: str, auth: str, body: dict[str, Any], token: str) -> Any:
    """TLS over ``raw`` (connected before the stop), then one POST; the status, headers and body read
    (until the gateway closes the connection)."""
    context = ssl.create_default_context(cafile=str(ca))
    raw.settimeout(20)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        data = json.dumps(body).encode()
        credential = f"authorization: Bearer {token}" if auth == "bearer" else f"x-api-key: {token}"
        head = (
            f"POST {path} HTTP/1.1\r\nhost: localhost:{port}\r\ncontent-type: application/json\r\n"
            f"anthropic-version: 2023-06-01\r\n{credential}\r\ncontent-length: {len(data)}\r\n\r\n"
        )  # keep-alive asked (HTTP/1.1's default): the gateway closes the connection after its answer
        tls.sendall(head.encode() + data)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head_text, _, payload = answer.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(payload)


def _http_refusals(gateway: LocalGateway, sockets: list[socket.socket], ca: Path, token: str) -> list[str]:
    """Each completion endpoint answers ``503`` (in its own format's shape); the session ids its row has."""
    port = gateway.ports["http"]
    ids = []
    for raw, (path, auth, body) in zip(sockets, HTTP_REQUESTS, strict=True):
        status, headers, answer = _post(raw, ca, port, path, auth, body, token)
        assert status == 503 and headers["connection"] == "close", (path, headers, answer)
        if path.startswith("/v1/gtl"):
            assert (answer["code"], answer["retryable"]) == ("PROVIDER_UNAVAILABLE", True), answer
            assert answer["session_id"] == body["session_id"], answer
            ids.append(answer["session_id"])
        elif path in ("/v1/chat/completions", "/v1/responses"):
            assert answer["error"]["type"] == "server_error" and "shutting down" in answer["error"]["message"], answer
            ids.append(headers["x-request-id"])
        else:
            assert answer["error"]["type"] == "api_error" and "shutting down" in answer["error"]["message"], answer
            ids.append(headers["request-id"])
    return ids


def _refused(call: Callable[[], Any]) -> str:
    """The session id of a request refused as the gateway shuts down (a retryable PROVIDER_UNAVAILABLE)."""
    try:
        call()
    except ProviderUnavailableError as exc:
        assert exc.retryable and "shutting down" in exc.message, exc.message
        completion = getattr(exc, "completion", None)
        return completion.session_id if completion is not None else str(exc.session_id)
    except GTLError as exc:
        raise AssertionError(f"refused with {exc.code}: {exc.message}") from None
    raise AssertionError("the request was not refused")


def _audit_records(path: Path) -> list[dict[str, Any]]:
    return [record for line in path.read_text().splitlines() if (record := json.loads(line))["kind"] == "request"]


def test_requests_refused_during_the_drain_leave_one_row_and_one_audit_record(
    served: Any, certs: DevCertificates
) -> None:
    gateway, mint, ledger, audit = served
    token = mint("ann")
    port = gateway.ports["http"]
    # first: the gateway accepts them while the clients below connect (one not yet accepted when the port
    # closes is reset by the operating system)
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in HTTP_REQUESTS]  # no TLS yet
    clients = {
        scheme: gtl_nb.connect(gateway.url(scheme), token=token, verify=str(certs.ca))
        for scheme in ("wss", "grpc", "quic")
    }
    held = {scheme: _held_ws_stream(client) for scheme, client in clients.items()}  # the drain lasts while they run
    try:
        gateway.process.send_signal(signal.SIGTERM)
        _until(lambda: _port_closed(port), "the HTTP listener to stop accepting")
        refused = _http_refusals(gateway, sockets, certs.ca, token)
        for client in clients.values():
            for _ in range(3):
                refused.append(_refused(lambda client=client: client.complete("echo", "too late")))
        assert gateway.running  # still draining: the held sessions run on
    finally:
        for stream in held.values():
            stream.close()
        for client in clients.values():
            client.close()
        for raw in sockets:
            raw.close()
    assert gateway.process.wait(60) == 0  # the drain ends with the held sessions (stop() would signal again)

    rows = Ledger(ledger).rows()
    assert not [row for row in rows if row["status"] == "started"], rows
    by_id = Counter(row["session_id"] for row in rows)
    assert len(refused) == len(set(refused)) == 9 + 9 and all(by_id[sid] == 1 for sid in refused), (refused, by_id)
    late = [row for row in rows if row["session_id"] in refused]
    for row in late:
        assert (row["status"], row["error_code"], row["user"], row["model"]) == (
            "error",
            "PROVIDER_UNAVAILABLE",
            "ann",
            "echo",
        ), row
        assert row["deployment"] is None and not row["tokens_in"] and not row["cost"], row  # no provider called
    assert sorted(row["status"] for row in rows if row["session_id"] not in refused) == ["cancelled"] * 3  # the held

    records = Counter(record["session_id"] for record in _audit_records(audit))
    assert all(records[sid] == 1 for sid in refused), records
    for record in _audit_records(audit):
        if record["session_id"] in refused:
            assert (record["status"], record["error_code"], record["principal"]) == (
                "error",
                "PROVIDER_UNAVAILABLE",
                "ann",
            ), record


def test_a_refusal_over_stdio_during_the_drain_leaves_one_row(tmp_path: Path) -> None:
    """stdio's one connection, SIGTERM while a session runs on it: each request after that is refused with
    its row (every request before it has its row too: one per request, whichever side of the stop)."""
    ledger = tmp_path / "ledger.sqlite"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
            "ledger": {"path": str(ledger)},
            "gateway": {"shutdown_grace": 60},
        },
    )
    asked: list[str] = []
    refused: list[str] = []
    with gtl_nb.connect(f"stdio://{config}", user="sam") as client:
        held = client.stream(SLOW, LONG)
        next(iter(held))
        pid = client.backend.channel.pid
        import os

        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while len(refused) < 3:
            assert time.monotonic() < deadline, "no request was refused"
            try:
                asked.append(client.complete("echo", "before or after").session_id)
            except ProviderUnavailableError as exc:
                assert "shutting down" in exc.message, exc.message
                completion = getattr(exc, "completion", None)
                refused.append(completion.session_id if completion is not None else str(exc.session_id))
        assert client.backend.channel.pid == pid
        held.close()
    rows = Ledger(ledger).rows()
    assert not [row for row in rows if row["status"] == "started"], rows
    by_id = Counter(row["session_id"] for row in rows)
    assert all(by_id[sid] == 1 for sid in asked + refused), by_id
    for row in rows:
        if row["session_id"] in refused:
            assert (row["status"], row["error_code"], row["user"]) == ("error", "PROVIDER_UNAVAILABLE", "sam"), row


def test_on_postgresql_the_refusals_rows_and_audit_records_go_in_before_the_stores_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    """The PostgreSQL ledger and audit chain: the stop closes them (the ledger marks what it left
    ``started`` as ``interrupted``, the audit log drains its queue) only after the refusals were recorded."""
    import psycopg

    more = {
        "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
        "ledger": {"url": f"{postgres_url}?spool_path={tmp_path / 'ledger-spool.sqlite3'}"},
        "gateway": {"auth": "jwt", "shutdown_grace": 60},
        "gateway.audit": {"url": postgres_url, "replica": "gw", "spool_path": str(tmp_path / "spool.jsonl")},
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "SHUTDOWN_PG_SECRET", more)
    token = mint(*SCOPES, subject="ann")
    gateway = start_gateway(config)
    try:
        with gtl_nb.connect(gateway.url("ws"), token=token) as client:
            held = _held_ws_stream(client)
            gateway.process.send_signal(signal.SIGTERM)
            _until(lambda: _port_closed(gateway.ports["http"]), "the HTTP listener to stop accepting")
            refused = [_refused(lambda: client.complete("echo", "too late")) for _ in range(3)]
            held.close()
        assert gateway.process.wait(60) == 0
    finally:
        gateway.kill()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute('SELECT session_id, status, error_code, "user" FROM requests').fetchall()
        lines = [json.loads(line) for (line,) in conn.execute("SELECT line FROM audit_records").fetchall()]
    assert not [row for row in rows if row[1] in ("started", "interrupted")], rows
    assert sorted(row for row in rows if row[0] in refused) == sorted(
        (sid, "error", "PROVIDER_UNAVAILABLE", "ann") for sid in refused
    )
    records = [(r["session_id"], r["status"], r["error_code"]) for r in lines if r.get("kind") == "request"]
    assert sorted(record for record in records if record[0] in refused) == sorted(
        (sid, "error", "PROVIDER_UNAVAILABLE") for sid in refused
    )
