"""A client's connection-level ``error`` frame is the client going away: every session it had running
ends ``cancelled`` / ``CANCELLED`` in its ledger row and its audit record, whatever code the client
wrote. Before, the rows and the hash-chained audit log said the gateway or its provider had failed —
``INTERNAL``, ``RATE_LIMIT``, ``AUTH_FAILED`` … with the deployment named — as the client chose.

Over WebSocket and gRPC (a gateway child process with GhostTokens and an audit log) and stdio (a
gateway child on pipes, which keeps no audit log: its row); QUIC's own test is in ``test_quic.py``.
The paced OpenAI simulator upstream, on loopback; each session is ended once its first token arrived."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from websockets.sync.client import connect as ws_connect

from gtl_nb.gateway.audit import read_records
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol.codec import decode
from gtl_nb.transports.grpc import gtl_pb2
from gtl_nb.transports.grpc.mapping import to_frame
from gtl_nb.transports.stdio import gateway_command
from tests.gateway.conftest import LONG_PROMPT, SIM_KEY, jwt_echo_gateway, write_toml
from tests.ledger_wait import rows_when

# codes that name the gateway or a provider as the cause (a code no GTL error has is a bad frame already)
CODES = ["INTERNAL", "RATE_LIMIT", "AUTH_FAILED", "PROVIDER_UNAVAILABLE", "OVERLOADED"]


def request(sid: str) -> dict[str, Any]:
    return {
        "type": "completion_request",
        "session_id": sid,
        "model": "slow:gpt-4o-mini",
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "max_tokens": 200,
    }


def client_error(code: str) -> dict[str, Any]:
    """The frame a client gives up with: ``session_id`` ``""`` (the whole connection), its own words."""
    return {"type": "error", "session_id": "", "code": code, "message": "client-chosen words\n\x1b[31mforged"}


@pytest.fixture(scope="module")
def paced() -> Iterator[Any]:
    from gtl_nb import sim

    simulator = sim.serve("openai", seed=3, api_key=SIM_KEY, pace=0.02)
    yield simulator
    simulator.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, paced: Any) -> Iterator[tuple[Any, Any, Path, Path]]:
    directory = tmp_path_factory.mktemp("client-error")
    audit = directory / "audit.jsonl"
    more = {
        "providers.slow": {"type": "openai", "api_key": SIM_KEY, "base_url": paced.base_url},
        "gateway.grpc": {"host": "127.0.0.1", "port": 0},
        "gateway.audit": {"path": str(audit), "fsync": False},
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        config, mint = jwt_echo_gateway(directory, monkeypatch, "CLIENT_ERROR_SECRET", more)
        with start_gateway(config) as started:
            yield started, mint, directory / "ledger.sqlite", audit


def ended_as(ledger: Path, audit: Path, sid: str) -> tuple[Any, Any]:
    """The session's row and audit record, each as (status, error code)."""
    [row] = rows_when(ledger, session_id=sid)
    for _ in range(500):
        records = [record for record in read_records(audit) if record.get("session_id") == sid]
        if records:
            break
        threading.Event().wait(0.01)
    [record] = records
    return (row["status"], row["error_code"]), (record["status"], record["error_code"])


@pytest.mark.parametrize("code", CODES)
def test_a_websocket_clients_error_frame_cancels_its_sessions(gateway, code: str):
    started, mint, ledger, audit = gateway
    sid = f"ws-{code}"
    url = started.url("ws") + "/v1/gtl/ws"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {mint('chat:write')}"}) as socket_:
        socket_.send(json.dumps({"type": "hello", "versions": ["1.0"]}))
        assert json.loads(socket_.recv(timeout=10))["type"] == "hello"
        socket_.send(json.dumps(request(sid)))
        while json.loads(socket_.recv(timeout=10)).get("type") != "token":
            pass  # (the provider list, queued, streaming) until the answer has begun
        socket_.send(json.dumps(client_error(code)))
    assert ended_as(ledger, audit, sid) == (("cancelled", "CANCELLED"), ("cancelled", "CANCELLED"))


@pytest.mark.parametrize("code", CODES)
def test_a_grpc_clients_error_frame_cancels_its_sessions(gateway, code: str):
    started, mint, ledger, audit = gateway
    sid = f"grpc-{code}"

    def message(frame: dict[str, Any]) -> bytes:
        return to_frame(decode(json.dumps(frame).encode()), gtl_pb2.ClientFrame).SerializeToString()

    async def main() -> None:
        async with grpc.aio.insecure_channel(started.url("grpc").split("://", 1)[1]) as channel:
            session = channel.stream_stream("/gtl.v1.GTL/Session")
            call = session(metadata=[("authorization", f"Bearer {mint('chat:write')}")])
            await call.write(message({"type": "hello", "versions": ["1.0"]}))
            await call.write(message(request(sid)))
            while True:  # until the answer has begun
                frame = gtl_pb2.ServerFrame.FromString(await call.read())
                if frame.WhichOneof("message") == "token":
                    break
            await call.write(message(client_error(code)))
            with contextlib.suppress(grpc.aio.AioRpcError):  # read to the end, whatever status ends the call
                while await call.read() is not grpc.aio.EOF:
                    pass

    asyncio.run(main())
    assert ended_as(ledger, audit, sid) == (("cancelled", "CANCELLED"), ("cancelled", "CANCELLED"))


@pytest.mark.parametrize("code", ["INTERNAL", "RATE_LIMIT"])
def test_a_stdio_clients_error_frame_cancels_its_sessions(tmp_path: Path, paced: Any, code: str):
    ledger = tmp_path / "ledger.sqlite"  # (a stdio gateway keeps no audit log: its row is the record)
    tables = {
        "providers.slow": {"type": "openai", "api_key": SIM_KEY, "base_url": paced.base_url},
        "ledger": {"path": str(ledger)},
    }
    config = write_toml(tmp_path / "gtl.toml", tables)
    sid = f"stdio-{code}"
    child = subprocess.Popen(gateway_command(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdin is not None and child.stdout is not None

        def send(frame: dict[str, Any]) -> None:
            child.stdin.write(json.dumps(frame).encode() + b"\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]

        send({"type": "hello", "versions": ["1.0"]})
        send(request(sid))
        while json.loads(child.stdout.readline()).get("type") != "token":
            pass  # (hello, the provider list, queued, streaming) until the answer has begun
        send(client_error(code))
        child.stdin.close()
        child.stdout.read()  # to the gateway's end
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert [(row["status"], row["error_code"]) for row in rows_when(ledger, session_id=sid)] == [
        ("cancelled", "CANCELLED")
    ]
