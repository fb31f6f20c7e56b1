"""A peer that knows only the GTL v1.0 spec, written by hand: no ``hello``, no gtl_nb client code.

It sends the spec's own example ``completion_request`` (the JSON below is copied from the spec's "Core
Message Types") over WebSocket (the ``websockets`` library), stdio (``gtl serve --stdio`` as a child
process), HTTP, SSE and gRPC, and checks it gets the spec's stream events back: a ``streaming``
status, tokens, usage, and exactly one ``done`` or ``error`` last — nothing it did not ask for (no
hello answer, no provider list) — and that the gateway's ledger holds one row for the session.

The gateway has a deployment named ``openai`` (an OpenAI-compatible simulator that serves any model
name), so the spec's ``"provider": "openai"`` and ``"model": "gpt-4"`` run as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import websockets
from google.protobuf import json_format

from gtl_nb import sim
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc
from tests.gateway.conftest import SIM_KEY, write_toml
from tests.ledger_wait import rows_when

# The spec's "1. Completion Request", verbatim.
SPEC_REQUEST = """{
  "type": "completion_request",
  "session_id": "sess_abc123",
  "provider": "openai",
  "model": "gpt-4",
  "messages": [
    {"role": "user", "content": "Hello AI!"}
  ],
  "stream": true,
  "max_tokens": 1000,
  "temperature": 0.7
}"""
SESSION = "sess_abc123"
SPEC_EVENTS = {"status", "token", "tool_call", "usage", "done", "error"}
"""The spec's "2. Stream Events"."""
WAIT = 30.0  # seconds a read may take before the test gives up (a guard against hanging, not a check)


def one_line(text: str) -> str:
    """The spec's JSON as one frame (a newline ends a frame on stdio)."""
    return json.dumps(json.loads(text))


@pytest.fixture(scope="module")
def spec_sim() -> Iterator[sim.Simulator]:
    """An OpenAI-compatible server that serves any model name (the spec's ``gpt-4`` too)."""
    simulator = sim.serve("openai_compatible", seed=3, api_key=SIM_KEY)
    yield simulator
    simulator.close()


def spec_config(
    directory: Path, simulator: sim.Simulator, more: dict[str, dict[str, Any]] | None = None, **gateway: Any
) -> Path:
    """A gateway whose deployment is named as the spec's example names it: ``openai`` (``more``: tables added)."""
    tables: dict[str, dict[str, Any]] = {
        "providers.openai": {"type": "openai_compatible", "base_url": simulator.base_url, "api_key": SIM_KEY},
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(directory / "ledger.sqlite")},
        "gateway": dict(gateway),
        "gateway.http": {"port": 0},
        "gateway.grpc": {"port": 0},
        **(more or {}),
    }
    return write_toml(directory / "gtl.toml", tables)


JWT_SECRET_ENV = "GTL_TEST_SPEC_PEER_SECRET"
JWT_SECRET = "a-ghost-token-secret-for-the-spec-peer-tests"


def jwt_spec_config(directory: Path, simulator: sim.Simulator) -> Path:
    """The spec gateway with ``auth = "jwt"``: every request needs a GhostToken."""
    jwt = {"issuer": "gtl-test", "secret_env": JWT_SECRET_ENV, "default_deployments": ["*"]}
    return spec_config(directory, simulator, {"gateway.jwt": jwt}, auth="jwt")


@pytest.fixture(scope="module")
def jwt_gateway(tmp_path_factory: pytest.TempPathFactory, spec_sim: sim.Simulator) -> Iterator[LocalGateway]:
    served = start_gateway(
        jwt_spec_config(tmp_path_factory.mktemp("spec-peer-jwt"), spec_sim), env={JWT_SECRET_ENV: JWT_SECRET}
    )
    yield served
    served.stop()


def assert_the_request_is_refused_then_the_connection(events: list[dict[str, Any]], where: str) -> None:
    """A hello-less peer without a token: its request gets its own ``AUTH_FAILED`` error saying where a token
    goes on this transport (``where``), then the connection ends with the same connection-level error."""
    ends = [(event["type"], event["session_id"], event["code"]) for event in events]
    assert ends == [("error", SESSION, "AUTH_FAILED"), ("error", "", "AUTH_FAILED")], ends
    for event in events:
        assert "needs a token and the connection carried none" in event["message"]
        assert where in event["message"]
    assert events[0]["message"] == events[1]["message"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, spec_sim: sim.Simulator) -> Iterator[LocalGateway]:
    served = start_gateway(spec_config(tmp_path_factory.mktemp("spec-peer"), spec_sim))
    yield served
    served.stop()


def ledger_of(gateway: LocalGateway) -> Path:
    return gateway.config.parent / "ledger.sqlite"


def rows_before(gateway: LocalGateway) -> int:
    return len(rows_when(ledger_of(gateway), 0, session_id=SESSION))


def assert_one_new_row(gateway: LocalGateway, before: int) -> None:
    rows = rows_when(ledger_of(gateway), before + 1, session_id=SESSION)
    assert len(rows) == before + 1
    newest = max(rows, key=lambda row: row["id"])
    assert newest["status"] == "ok" and newest["deployment"] == "openai"


def assert_the_spec_stream(events: list[dict[str, Any]]) -> None:
    """The spec's events of one session, ending in exactly one ``done`` (the request is a good one)."""
    kinds = [event["type"] for event in events]
    assert set(kinds) <= SPEC_EVENTS, kinds  # nothing the peer did not ask for (a hello, a provider list)
    assert all(event["session_id"] == SESSION for event in events)
    states = [event["state"] for event in events if event["type"] == "status"]
    assert "streaming" in states and kinds.index("status") < kinds.index("token")
    assert "usage" in kinds
    assert [kind for kind in kinds if kind in ("done", "error")] == ["done"] and kinds[-1] == "done"
    usage = events[kinds.index("usage")]
    assert usage["tokens_in"] > 0 and usage["tokens_out"] > 0
    assert "".join(event["text"] for event in events if event["type"] == "token")


# -- WebSocket ----------------------------------------------------------------------------------------


async def websocket_exchange(url: str, headers: dict[str, str], frame: str) -> tuple[Any, list[dict[str, Any]]]:
    """Send ``frame`` as the connection's first message; every message until the session's end."""
    async with websockets.connect(url, additional_headers=headers) as socket_:
        await socket_.send(frame)
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] not in ("done", "error"):
            events.append(json.loads(await asyncio.wait_for(socket_.recv(), WAIT)))
        return socket_.response, events


async def websocket_until_closed(url: str, headers: dict[str, str], frame: str) -> list[dict[str, Any]]:
    """Send ``frame`` as the connection's first message; every message until the gateway closes."""
    async with websockets.connect(url, additional_headers=headers) as socket_:
        await socket_.send(frame)
        events: list[dict[str, Any]] = []
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                events.append(json.loads(await asyncio.wait_for(socket_.recv(), WAIT)))
        return events


def ws_url(gateway: LocalGateway) -> str:
    return gateway.url("ws") + "/v1/gtl/ws"


def test_websocket_without_hello(gateway: LocalGateway) -> None:
    before = rows_before(gateway)
    response, events = asyncio.run(websocket_exchange(ws_url(gateway), {"GTL-Version": "1.0"}, SPEC_REQUEST))
    assert response.headers["gtl-version"] == "1.0"  # the 101 names the version agreed, as HTTP does
    assert_the_spec_stream(events)
    assert_one_new_row(gateway, before)


def test_websocket_upgrade_naming_no_version_the_gateway_speaks_is_refused(gateway: LocalGateway) -> None:
    async def upgrade(version: str) -> Any:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(ws_url(gateway), additional_headers={"GTL-Version": version})
        return refused.value.response

    newer = asyncio.run(upgrade("2.0"))
    assert newer.status_code == 400
    error = json.loads(newer.body)
    assert error["code"] == "INVALID_REQUEST" and "no common GTL version" in error["message"]
    typo = json.loads(asyncio.run(upgrade("1")).body)
    assert "malformed GTL version '1'" in typo["message"]


def test_websocket_hello_without_versions_speaks_1_0(gateway: LocalGateway) -> None:
    async def hello() -> tuple[Any, dict[str, Any]]:
        async with websockets.connect(ws_url(gateway)) as socket_:
            await socket_.send('{"type": "hello"}')
            return socket_.response, json.loads(await asyncio.wait_for(socket_.recv(), WAIT))

    response, answer = asyncio.run(hello())
    assert answer["type"] == "hello" and answer["version"] == "1.0"
    assert response.headers["gtl-version"] == "1.0"  # no header asked: the 101 names what the gateway speaks


def test_websocket_without_hello_is_authenticated_by_its_header_or_told_where_a_token_goes(
    tmp_path: Path, spec_sim: sim.Simulator
) -> None:
    """On a gateway that needs a token, a hello-less peer's token is the upgrade's Authorization header;
    without one it is refused with AUTH_FAILED saying where a token goes."""
    token = "the-dev-token"
    served = start_gateway(spec_config(tmp_path, spec_sim, auth="token"), env={"GTL_NB_DEV_TOKEN": token})
    try:
        before = rows_before(served)
        _, events = asyncio.run(websocket_exchange(ws_url(served), {"Authorization": f"Bearer {token}"}, SPEC_REQUEST))
        assert_the_spec_stream(events)
        assert_one_new_row(served, before)
        refused = asyncio.run(websocket_until_closed(ws_url(served), {}, SPEC_REQUEST))
    finally:
        served.stop()
    assert_the_request_is_refused_then_the_connection(refused, "Authorization: Bearer header")
    assert token not in json.dumps(refused)


def test_websocket_without_hello_or_token_to_a_jwt_gateway_gets_its_request_answered(
    jwt_gateway: LocalGateway,
) -> None:
    refused = asyncio.run(websocket_until_closed(ws_url(jwt_gateway), {}, SPEC_REQUEST))
    assert_the_request_is_refused_then_the_connection(refused, "the upgrade request's Authorization: Bearer header")
    assert len(rows_when(ledger_of(jwt_gateway), 0, session_id=SESSION)) == 0  # refused before it ran


# -- stdio --------------------------------------------------------------------------------------------


class StdioPeer:
    """``gtl serve --stdio`` as a child process, read line by line from a thread."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        import os

        command = [sys.executable, "-m", "gtl_nb", "serve", "--stdio", "--config", str(config)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def send(self, frame: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(frame.encode() + b"\n")
        self.process.stdin.flush()

    def until_end(self, session_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            line = self.lines.get(timeout=WAIT)
            assert line, f"the gateway ended the pipe after {events}"
            events.append(json.loads(line))
            if events[-1]["type"] in ("done", "error") and events[-1]["session_id"] in (session_id, ""):
                return events

    def until_closed(self) -> list[dict[str, Any]]:
        """Every frame until the gateway ends its output."""
        events: list[dict[str, Any]] = []
        while line := self.lines.get(timeout=WAIT):
            events.append(json.loads(line))
        return events

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def test_stdio_without_hello(gateway: LocalGateway) -> None:
    before = rows_before(gateway)
    peer = StdioPeer(gateway.config)
    try:
        peer.send(one_line(SPEC_REQUEST))
        events = peer.until_end(SESSION)
    finally:
        peer.close()
    assert_the_spec_stream(events)
    assert_one_new_row(gateway, before)


def test_stdio_without_hello_is_told_where_the_token_goes(tmp_path: Path, spec_sim: sim.Simulator) -> None:
    """A gateway that needs a token, and a peer that sent none (the token rides in hello on stdio)."""
    config = spec_config(tmp_path, spec_sim, auth="token")
    peer = StdioPeer(config, env={"GTL_NB_DEV_TOKEN": "the-dev-token"})
    try:
        peer.send(one_line(SPEC_REQUEST))
        events = peer.until_closed()
    finally:
        peer.close()
    assert_the_request_is_refused_then_the_connection(events, '{"type":"hello","versions":["1.0"],"token":"..."}')
    assert "the-dev-token" not in json.dumps(events)


def test_stdio_without_hello_or_token_to_a_jwt_gateway_gets_its_request_answered(
    tmp_path: Path, spec_sim: sim.Simulator
) -> None:
    peer = StdioPeer(jwt_spec_config(tmp_path, spec_sim), env={JWT_SECRET_ENV: JWT_SECRET})
    try:
        peer.send(one_line(SPEC_REQUEST))
        events = peer.until_closed()
    finally:
        peer.close()
    hello = 'send it as token in a {"type":"hello","versions":["1.0"],"token":"..."} frame before any request'
    assert_the_request_is_refused_then_the_connection(events, hello)
    assert JWT_SECRET not in json.dumps(events)


# -- HTTP and SSE ----------------------------------------------------------------------------------------


def test_http_without_hello(gateway: LocalGateway) -> None:
    before = rows_before(gateway)
    headers = {"content-type": "application/json", "GTL-Version": "1.0"}
    reply = httpx.post(gateway.url("http") + "/v1/gtl", content=SPEC_REQUEST, headers=headers, timeout=WAIT)
    assert reply.status_code == 200 and reply.headers["gtl-version"] == "1.0"
    assert reply.headers["content-type"].startswith("application/x-ndjson")  # "stream": true: one frame a line
    assert_the_spec_stream([json.loads(line) for line in reply.text.splitlines() if line])
    assert_one_new_row(gateway, before)


def test_sse_without_hello(gateway: LocalGateway) -> None:
    before = rows_before(gateway)
    events: list[dict[str, Any]] = []
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    with httpx.stream("POST", gateway.url("http") + "/v1/gtl/sse", content=SPEC_REQUEST, headers=headers) as reply:
        assert reply.status_code == 200
        named = None
        for line in reply.iter_lines():
            if line.startswith("event:"):
                named = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                events.append(json.loads(line.partition(":")[2]))
                assert events[-1]["type"] == named  # each event named by its GTL type
    assert_the_spec_stream(events)
    assert_one_new_row(gateway, before)


# -- gRPC ----------------------------------------------------------------------------------------------


def spec_request_frame() -> pb.ClientFrame:
    """The spec's request as the gRPC binding's ``ClientFrame`` (gtl.proto: roles are enum values)."""
    request = json.loads(SPEC_REQUEST)
    del request["type"]  # the oneof case says it
    for message in request["messages"]:
        message["role"] = "ROLE_" + message["role"].upper()
    return json_format.ParseDict({"completion_request": request}, pb.ClientFrame())


def server_frames(responses: Any) -> list[dict[str, Any]]:
    """Each ``ServerFrame`` as the JSON event it carries (``{"type": case, ...fields}``)."""
    events = []
    for frame in responses:
        case = frame.WhichOneof("message")
        fields = json_format.MessageToDict(getattr(frame, case), preserving_proto_field_name=True)
        events.append({"type": case, **fields})
    return events


def test_grpc_session_without_hello(gateway: LocalGateway) -> None:
    before = rows_before(gateway)
    address = gateway.url("grpc").split("://", 1)[1]
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GTLStub(channel)
        call = stub.Session(iter([spec_request_frame()]), metadata=[("gtl-version", "1.0")], timeout=WAIT)
        events = server_frames(call)
        said = dict(call.initial_metadata())
    assert said["gtl-version"] == "1.0"
    for event in events:  # proto3 enums and int64s, back to the spec's JSON
        if event["type"] == "status":
            event["state"] = event["state"].removeprefix("STATUS_STATE_").lower()
        for count in ("tokens_in", "tokens_out"):
            if count in event:
                event[count] = int(event[count])
    assert_the_spec_stream(events)
    assert_one_new_row(gateway, before)


def test_grpc_session_naming_no_version_the_gateway_speaks_is_refused(gateway: LocalGateway) -> None:
    address = gateway.url("grpc").split("://", 1)[1]
    with grpc.insecure_channel(address) as channel:
        call = pb_grpc.GTLStub(channel).Session(iter([spec_request_frame()]), metadata=[("gtl-version", "2.0")])
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "no common GTL version" in refused.value.details()


def complete_request() -> pb.CompletionRequest:
    """The spec's request as ``Complete`` takes it (a ``CompletionRequest``, no frame around it)."""
    return spec_request_frame().completion_request


def test_grpc_complete_negotiates_its_gtl_version_metadata_as_session_does(gateway: LocalGateway) -> None:
    """``Complete`` has no hello either: the call's ``gtl-version`` is the spec's negotiation. A version the
    gateway speaks is answered, the one agreed named in the initial metadata (as ``Session`` names it);
    one it does not is refused before anything runs, naming the versions it speaks."""
    address = gateway.url("grpc").split("://", 1)[1]
    before = rows_before(gateway)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GTLStub(channel)
        result, call = stub.Complete.with_call(complete_request(), metadata=[("gtl-version", "1.0.2")], timeout=WAIT)
        said = dict(call.initial_metadata())
        assert said["gtl-version"] == "1.0"  # MAJOR.MINOR agrees, answered as the gateway spells it
        assert result.events[-1].WhichOneof("message") == "done"
        assert_one_new_row(gateway, before)
        _, unnamed = stub.Complete.with_call(complete_request(), timeout=WAIT)
        assert dict(unnamed.initial_metadata())["gtl-version"] == "1.0"  # none asked: the versions it speaks
        for offered, words in [("2.0", "no common GTL version"), ("1", "malformed GTL version '1'")]:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Complete(complete_request(), metadata=[("gtl-version", offered)], timeout=WAIT)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            details = refused.value.details()
            assert details.startswith("INVALID_REQUEST: ") and words in details
            assert "1.0" in details.partition(words)[2]  # the versions it speaks are named
    assert len(rows_when(ledger_of(gateway), before + 2, session_id=SESSION)) == before + 2  # refused: ran nothing


# -- a request whose session cannot be told ----------------------------------------------------------------


def test_a_request_without_a_usable_session_id_ends_the_connection_saying_exactly_what_was_wrong(
    gateway: LocalGateway,
) -> None:
    """On a connection, ``session_id`` ``""`` is the connection's own (its error ends it): a request with an
    empty or missing id cannot be answered alone, so the connection ends — its error says what was wrong
    with that request's id, why the connection ends, and what to do."""
    spec = json.loads(SPEC_REQUEST)
    missing = {key: value for key, value in spec.items() if key != "session_id"}
    for frame, fault in [
        ({**spec, "session_id": ""}, 'a completion_request has an empty session_id ("")'),
        (missing, "a completion_request has no session_id"),
        ({**spec, "session_id": 42}, "a completion_request has a session_id that is not a string (a number)"),
    ]:
        _, events = asyncio.run(websocket_exchange(ws_url(gateway), {}, json.dumps(frame)))
        assert [(event["type"], event["session_id"], event["code"]) for event in events] == [
            ("error", "", "INVALID_REQUEST")
        ]
        said = events[0]["message"]
        assert said.startswith(f"closing the connection: {fault}. "), said
        assert 'session_id "" names the connection itself' in said
        assert said.endswith("give each request a non-empty session_id of its own")


def test_a_grpc_session_request_with_an_empty_session_id_is_told_what_was_wrong(gateway: LocalGateway) -> None:
    frame = spec_request_frame()
    frame.completion_request.session_id = ""  # (proto3: the field's default, as if unset)
    address = gateway.url("grpc").split("://", 1)[1]
    with grpc.insecure_channel(address) as channel:
        events = server_frames(pb_grpc.GTLStub(channel).Session(iter([frame]), timeout=WAIT))
    assert [(event["type"], event.get("session_id", ""), event["code"]) for event in events] == [
        ("error", "", "ERROR_CODE_INVALID_REQUEST")
    ]
    assert events[0]["message"].startswith('closing the connection: a completion_request has an empty session_id ("")')


def test_grpc_session_without_hello_or_token_to_a_jwt_gateway_gets_its_request_answered(
    jwt_gateway: LocalGateway,
) -> None:
    """Its request gets its own ``AUTH_FAILED`` error, then the connection-level one, then the call ends
    ``UNAUTHENTICATED`` (the status a gRPC client reads without the frames)."""
    address = jwt_gateway.url("grpc").split("://", 1)[1]
    events: list[dict[str, Any]] = []
    with grpc.insecure_channel(address) as channel:
        call = pb_grpc.GTLStub(channel).Session(iter([spec_request_frame()]), timeout=WAIT)
        with pytest.raises(grpc.RpcError) as ended:
            for frame in call:
                events.extend(server_frames([frame]))
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    for event in events:  # proto3: the enum's name, and an empty session_id left out
        event["code"] = event["code"].removeprefix("ERROR_CODE_")
        event.setdefault("session_id", "")
    assert_the_request_is_refused_then_the_connection(events, "authorization: Bearer metadata on the call")
