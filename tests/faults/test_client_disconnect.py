"""A client that disconnects mid-stream: the gateway cancels the upstream request and the row says
``cancelled`` — over HTTP/SSE, WebSocket and the OpenAI-compatible endpoint.

The gateway (a child process) reaches a paced simulator through a ``Witness`` relay, which sees the
gateway close the upstream connection before the answer's last chunk. Each client is raw — httpx or
websockets, not ``gtl_nb.connect`` — so the test controls exactly how it goes away: it reads up to the
first token, then drops its connection (the WebSocket without a closing handshake).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from gtl_nb import sim
from tests.faults.conftest import (
    LONG_PROMPT,
    SIM_KEY,
    Witness,
    audit_records,
    gateway_file,
    ledger_rows,
    start,
    token,
    wait_until,
)

MODEL = "paced:gpt-4o-mini"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A gateway whose ``paced`` deployment streams slowly (50 ms a chunk) through a witness."""
    directory = tmp_path_factory.mktemp("client-disconnect")
    paced = sim.serve("openai", api_key=SIM_KEY, pace=0.05)
    witness = Witness(paced.port)
    tables = {"providers.paced": {"type": "openai", "api_key": SIM_KEY, "base_url": witness.url()}}
    gateway = start(gateway_file(directory, tables))
    yield SimpleNamespace(
        gateway=gateway, witness=witness, ledger=directory / "ledger.sqlite", audit=directory / "audit.jsonl"
    )
    gateway.stop()
    witness.close()
    paced.close()


def _request(session_id: str, prompt: str) -> dict[str, Any]:
    return {
        "type": "completion_request",
        "session_id": session_id,
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
    }


def _auth() -> dict[str, str]:
    return {"authorization": f"Bearer {token()}"}


def leave_sse(base: str, prompt: str) -> str:
    """``POST /v1/gtl/sse``: read events up to the first token, then close the connection."""
    session_id = f"sse-{uuid.uuid4().hex[:8]}"
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", base + "/v1/gtl/sse", json=_request(session_id, prompt), headers=_auth()) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == "event: token":
                break
        else:
            raise AssertionError("the stream ended before its first token")
    return session_id  # leaving both blocks closed the connection with the answer unfinished


def leave_ws(base: str, prompt: str) -> str:
    """``/v1/gtl/ws``: hello, one session, read up to its first token, then cut the TCP connection."""
    session_id = f"ws-{uuid.uuid4().hex[:8]}"
    url = base.replace("http://", "ws://") + "/v1/gtl/ws"
    with ws_connect(url, additional_headers=_auth(), compression=None) as socket_:
        socket_.send(json.dumps({"type": "hello", "versions": ["1.0"]}))
        socket_.send(json.dumps(_request(session_id, prompt)))
        while True:
            frame = json.loads(socket_.recv(timeout=30))
            assert frame.get("type") != "error", frame
            if frame.get("type") == "token" and frame.get("session_id") == session_id:
                break
        socket_.socket.shutdown(socket.SHUT_RDWR)  # gone without a closing handshake
    return session_id


def leave_openai(base: str, prompt: str) -> str:
    """``POST /v1/chat/completions`` with ``stream: true``: read the first content chunk, then close."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", base + "/v1/chat/completions", json=body, headers=_auth()) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    return str(chunk["id"])  # the answer's id is the session id
    raise AssertionError("the stream ended before its first content")


CLIENTS: dict[str, Callable[[str, str], str]] = {"sse": leave_sse, "ws": leave_ws, "openai": leave_openai}


@pytest.mark.parametrize("kind", list(CLIENTS))
def test_a_client_leaving_mid_stream_cancels_the_upstream_and_the_row(kind: str, served: SimpleNamespace):
    marker = f"[{kind}-{uuid.uuid4().hex[:8]}]"  # finds this session's upstream connection at the witness
    session_id = CLIENTS[kind](served.gateway.url("http"), f"{marker} {LONG_PROMPT}")

    crossing = served.witness.carrying(marker)
    assert crossing is not None, "the gateway never called the upstream"
    wait_until(crossing.ended.is_set, timeout=10, what="the gateway closing its upstream connection")
    assert crossing.cut.is_set(), "the upstream answer ran to its end: the upstream request was not cancelled"

    def finished() -> list[dict[str, Any]]:
        rows = ledger_rows(served.ledger, [session_id])
        return rows if rows and rows[0]["status"] != "started" else []

    rows = wait_until(finished, timeout=10, what=f"the row of {session_id} finished")
    assert [(row["status"], row["error_code"]) for row in rows] == [("cancelled", "CANCELLED")]
    records = wait_until(
        lambda: [record for record in audit_records(served.audit) if record["session_id"] == session_id],
        timeout=10,
        what=f"the audit record of {session_id}",
    )
    assert [(record["status"], record["error_code"]) for record in records] == [("cancelled", "CANCELLED")]
