"""``[gateway] max_sessions_per_principal`` on a real GhostToken gateway: one principal's sessions are
counted together over every transport and connection of the process — WebSocket, HTTP (the GTL and the
compatible endpoints), gRPC (``Session`` and ``Complete``) and QUIC — one more is refused with a
retryable ``OVERLOADED`` (HTTP ``429``) naming the limit and nobody, another principal is not touched,
and a session gives its place back exactly once however it ends (done, an error, a cancel, a client
that vanished, a connection closed under it)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb.gateway.certs import DevCertificates
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol import Error, Token
from gtl_nb.protocol.errors import GTLError, ModelNotFoundError, OverloadedError, error_from_event
from tests.gateway.conftest import jwt_echo_gateway

CAP = 3
SLOW = "slowecho:echo"  # an echo deployment at 0.1 s a token: a long prompt streams for minutes
LONG = " ".join(f"word{i}" for i in range(2000))
SCOPES = ("chat:write", "models:read")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: DevCertificates) -> Iterator[Any]:
    """The gateway (HTTP, gRPC and QUIC listeners; ``max_sessions_per_principal = 3``) and ``mint(sub)``."""
    tls = {"port": 0, "tls_cert": str(certs.certificate), "tls_key": str(certs.key)}
    more = {
        "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
        "gateway": {"auth": "jwt", "max_sessions_per_principal": CAP},
        "gateway.grpc": {"port": 0},
        "gateway.quic": tls,
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "PER_PRINCIPAL_SECRET", more)
    with start_gateway(config) as gateway:
        yield gateway, lambda subject: mint(*SCOPES, subject=subject)


def _gtl_request(model: str, content: str, *, stream: bool = True) -> dict[str, Any]:
    return {
        "type": "completion_request",
        "session_id": "",
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }


class HttpStream:
    """One streamed ``POST /v1/gtl`` held open after its first token (``refused``: its answer when not 200)."""

    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.Client(timeout=30)
        request = self.client.build_request(
            "POST", f"{base}/v1/gtl", json=_gtl_request(SLOW, LONG), headers={"authorization": f"Bearer {token}"}
        )
        self.response = self.client.send(request, stream=True)
        self.refused: httpx.Response | None = None
        if self.response.status_code != 200:
            self.response.read()
            self.refused = self.response
            self.close()
            return
        self.lines = self.response.iter_lines()  # kept: a reader dropped mid-body closes the connection
        while json.loads(next(self.lines))["type"] != "token":
            pass

    def close(self) -> None:
        self.response.close()
        self.client.close()


def _held_ws_stream(client: gtl_nb.Client) -> Any:
    """A slow stream over ``client``, read to its first token and left running (its error raised)."""
    stream = client.stream(SLOW, LONG)
    for event in stream:
        if isinstance(event, Token):
            return stream
        if isinstance(event, Error):
            raise error_from_event(event)
    raise AssertionError("the stream ended before its first token")


def _refused_as_the_cap(error: BaseException | httpx.Response | None) -> None:
    """The refusal names the limit, and no principal."""
    if isinstance(error, httpx.Response):
        assert error.status_code == 429, error.text
        body = error.json()
        message = body["message"] if "message" in body else body["error"]["message"]
        assert body.get("code", "OVERLOADED") == "OVERLOADED"
    else:
        assert isinstance(error, OverloadedError) and error.retryable, repr(error)
        message = error.message
    assert "max_sessions_per_principal" in message and str(CAP) in message, message
    assert "ann" not in message and "bob" not in message, message


def _grpc_complete(url: str, token: str, model: str, content: str) -> Any:
    """One gRPC ``Complete`` call (what a client in any language makes); raises the GTL error of its status."""
    import grpc

    from gtl_nb.protocol.messages import CompletionRequest, Message
    from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc
    from gtl_nb.transports.grpc.mapping import to_proto
    from gtl_nb.transports.grpc.stream import status_error

    request = CompletionRequest(session_id="", model=model, messages=[Message(role="user", content=content)])
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        try:
            return pb_grpc.GTLStub(channel).Complete(
                to_proto(request), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
        except grpc.RpcError as exc:
            raise status_error(exc.code(), exc.details(), where="gateway") from None


def _grpc_cancelled(url: str, token: str) -> None:
    """A gRPC ``Complete`` call cancelled by its client while the session runs."""
    import grpc

    from gtl_nb.protocol.messages import CompletionRequest, Message
    from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc
    from gtl_nb.transports.grpc.mapping import to_proto
    from gtl_nb.transports.grpc.stream import status_error

    request = CompletionRequest(session_id="", model=SLOW, messages=[Message(role="user", content=LONG)])
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        call = pb_grpc.GTLStub(channel).Complete.future(
            to_proto(request), metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )
        try:
            call.result(timeout=0.3)  # (refused at once when the principal has no room)
        except grpc.FutureTimeoutError:
            call.cancel()
        except grpc.RpcError as exc:
            raise status_error(exc.code(), exc.details(), where="gateway") from None


def _error_of(call: Callable[[], Any]) -> BaseException | None:
    try:
        call()
    except GTLError as exc:
        return exc
    return None


def test_one_principals_sessions_are_counted_across_transports(served: Any, certs: DevCertificates):
    gateway, mint = served
    gateway: LocalGateway
    base, ann = gateway.url("http"), mint("ann")
    with (
        gtl_nb.connect(gateway.url("ws"), token=ann) as over_ws,
        gtl_nb.connect(gateway.url("quic"), token=ann, verify=str(certs.ca)) as over_quic,
    ):
        held_ws = _held_ws_stream(over_ws)
        held_quic = _held_ws_stream(over_quic)
        held_http = HttpStream(base, ann)
        assert held_http.refused is None
        try:  # three running, one on each transport: a fourth is refused on every one of them
            _refused_as_the_cap(HttpStream(base, ann).refused)
            body = {**_gtl_request("echo", "hi", stream=False), "session_id": "mine"}
            answer = httpx.post(f"{base}/v1/gtl", json=body, headers={"authorization": f"Bearer {ann}"}, timeout=30)
            _refused_as_the_cap(answer)
            assert answer.json()["session_id"] == "mine"
            _refused_as_the_cap(_error_of(lambda: over_ws.complete("echo", "a fourth")))
            _refused_as_the_cap(_error_of(lambda: over_quic.complete("echo", "a fourth")))
            _refused_as_the_cap(_error_of(lambda: _grpc_complete(gateway.url("grpc"), ann, "echo", "a fourth")))
            with gtl_nb.connect(gateway.url("grpc"), token=ann) as over_grpc:  # a new connection counts the same
                _refused_as_the_cap(_error_of(lambda: over_grpc.complete("echo", "a fourth")))
            compat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
            for stream in (False, True):
                openai = httpx.post(
                    f"{base}/v1/chat/completions",
                    json={**compat, "stream": stream},
                    headers={"authorization": f"Bearer {ann}"},
                    timeout=30,
                )
                _refused_as_the_cap(openai)
                assert openai.json()["error"]["type"] == "requests"
                anthropic = httpx.post(
                    f"{base}/v1/messages",
                    json={**compat, "max_tokens": 10, "stream": stream},
                    headers={"x-api-key": ann, "anthropic-version": "2023-06-01"},
                    timeout=30,
                )
                _refused_as_the_cap(anthropic)
                assert anthropic.json()["error"]["type"] == "rate_limit_error"
            # another principal is not counted with ann
            with gtl_nb.connect(gateway.url("ws"), token=mint("bob")) as bobs:
                assert bobs.complete("echo", "bob's own").text
            # one of ann's ends: there is room for one, and only one
            held_quic.close()
            _eventually(lambda: over_ws.complete("echo", "the place given back").text)
            again = HttpStream(base, ann)
            try:
                assert again.refused is None
                _refused_as_the_cap(_error_of(lambda: over_ws.complete("echo", "over again")))
            finally:
                again.close()
        finally:
            held_http.close()
            held_ws.close()


def _eventually(call: Callable[[], Any], seconds: float = 15.0) -> Any:
    """``call()`` once the place a session gave back is free (its task ends a moment after its client left)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except OverloadedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _http_gone(base: str, token: str) -> None:
    """A streamed request whose client closes its connection after the first token."""
    stream = HttpStream(base, token)
    if stream.refused is not None:
        raise OverloadedError(stream.refused.text)
    stream.close()


def _vanish(base: str, token: str) -> None:
    """A streamed request whose client vanishes after the first bytes: its socket reset, no goodbye."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(_gtl_request(SLOW, LONG)).encode()
    head = (
        f"POST /v1/gtl HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        answer = sock.recv(65536)
        if b" 429 " in answer.split(b"\r\n", 1)[0]:
            raise OverloadedError("max_sessions_per_principal")
        while b'"type":"token"' not in answer:
            more = sock.recv(65536)
            assert more, answer
            answer += more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset


def _abandoned_socket(url: str, token: str) -> None:
    """A WebSocket connection closed with two sessions running on it, without cancelling either."""
    from websockets.sync.client import connect as ws_connect

    with ws_connect(url + "/v1/gtl/ws", additional_headers={"authorization": f"Bearer {token}"}) as socket_:
        socket_.send(json.dumps({"type": "hello", "versions": ["1.0"]}))
        for sid in ("a", "b"):
            socket_.send(json.dumps({**_gtl_request(SLOW, LONG), "session_id": sid}))
        started: set[str] = set()
        while started != {"a", "b"}:
            frame = json.loads(socket_.recv(timeout=30))
            if frame["type"] == "error" and frame["code"] == "OVERLOADED":
                raise OverloadedError("max_sessions_per_principal")
            if frame["type"] == "token":
                started.add(frame["session_id"])


def test_a_session_gives_its_place_back_exactly_once_however_it_ends(served: Any, certs: DevCertificates):
    """100 sessions end every way while one more of the principal runs throughout; afterwards the
    principal has exactly its cap's room: two more start (none leaked) and a third is refused (none
    given back twice, which would have freed the held one's place too)."""
    gateway, mint = served
    base, ws_url, ann = gateway.url("http"), gateway.url("ws"), mint("ann")
    ends: dict[str, int] = {}

    def count(way: str) -> None:
        ends[way] = ends.get(way, 0) + 1

    with (
        gtl_nb.connect(ws_url, token=ann) as client,
        gtl_nb.connect(gateway.url("quic"), token=ann, verify=str(certs.ca)) as over_quic,
    ):
        held = _held_ws_stream(client)
        try:
            for _ in range(10):
                assert _eventually(lambda: client.complete("echo", "done").text)
                count("done")
                with pytest.raises(ModelNotFoundError):
                    _eventually(lambda: client.complete("nowhere:no-model", "an error"))
                count("error")
                _eventually(lambda: _held_ws_stream(client)).close()  # a cancel
                count("cancelled")
                _eventually(lambda: _http_gone(base, ann))  # the client disconnects mid-stream
                count("client gone")
                _eventually(lambda: _vanish(base, ann))  # the client's socket is reset
                count("client vanished")
                _eventually(lambda: _grpc_complete(gateway.url("grpc"), ann, "echo", "unary"))
                count("done over gRPC Complete")
                _eventually(lambda: _abandoned_socket(ws_url, ann))
                ends["connection closed"] = ends.get("connection closed", 0) + 2
                _eventually(lambda: _grpc_cancelled(gateway.url("grpc"), ann))
                count("gRPC Complete cancelled")
                _eventually(lambda: _held_ws_stream(over_quic)).close()
                count("cancelled over QUIC")
            with gtl_nb.connect(gateway.url("grpc"), token=ann) as over_grpc:
                for _ in range(16):
                    _eventually(lambda: asyncio.run(_cancelled_at_once(over_grpc)))
                    count("cancelled before it ran")
            assert sum(ends.values()) >= 100, ends
            first = _eventually(lambda: _held_ws_stream(client), seconds=30)
            second = HttpStream(base, ann)
            try:
                assert second.refused is None, second.refused.text if second.refused else ""
                _refused_as_the_cap(_error_of(lambda: client.complete("echo", "one more than the cap")))
                _refused_as_the_cap(HttpStream(base, ann).refused)
            finally:
                second.close()
                first.close()
        finally:
            held.close()


async def _cancelled_at_once(client: gtl_nb.Client) -> None:
    """A session cancelled right behind its request (the gateway may cancel its task before it first ran)."""
    task = asyncio.ensure_future(client.acomplete(SLOW, LONG))
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, GTLError) as exc:
        if isinstance(exc, OverloadedError):
            raise


def test_the_count_itself():
    """``0`` is no cap; a task that could not be made takes no place; one cancelled before it ran gives
    its place back; one principal's count is not another's."""
    from gtl_nb.gateway.principal_sessions import PrincipalSessions

    counts = PrincipalSessions()
    for _ in range(5):
        counts.take("ann", 0)
    assert counts.running("ann") == 5 and len(counts) == 5
    for _ in range(5):
        counts.release("ann")
    assert counts.running("ann") == 0 and len(counts) == 0

    def broken() -> Any:
        raise RuntimeError("no task")

    with pytest.raises(RuntimeError):
        counts.start("ann", 1, broken)
    assert counts.running("ann") == 0

    async def cancelled_before_it_ran() -> None:
        task = counts.start("ann", 1, lambda: asyncio.ensure_future(asyncio.sleep(10)))
        with pytest.raises(OverloadedError, match="already runs 1 session"):
            counts.start("ann", 1, lambda: asyncio.ensure_future(asyncio.sleep(10)))
        other = counts.start("bob", 1, lambda: asyncio.ensure_future(asyncio.sleep(0)))
        task.cancel()
        await asyncio.gather(task, other, return_exceptions=True)
        await asyncio.sleep(0)  # (done callbacks run in the loop's next turn)

    asyncio.run(cancelled_before_it_ran())
    assert len(counts) == 0


@pytest.mark.parametrize("scheme", ["ws", "quic"])
def test_a_revoked_token_at_its_cap_is_refused_as_revoked_not_told_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: DevCertificates, scheme: str
):
    """The cap was counted before the token was checked again: a revoked client at its cap heard a
    retryable OVERLOADED, and retried until a place freed."""
    import jwt as pyjwt

    from gtl_nb.gateway.tokens.store import SqliteTokenStore
    from gtl_nb.protocol.errors import AuthenticationError

    revocations = tmp_path / "tokens.sqlite3"
    tls = {"port": 0, "tls_cert": str(certs.certificate), "tls_key": str(certs.key)}
    jwt_table = {"issuer": "gtl-test", "secret_env": "REVOKED_AT_CAP", "default_deployments": ["*"]}
    more = {
        "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
        "gateway": {"auth": "jwt", "max_sessions_per_principal": 2},
        "gateway.jwt": {**jwt_table, "revocations": str(revocations), "refresh": 0.2},
        "gateway.quic": tls,
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "REVOKED_AT_CAP", more)
    with start_gateway(config) as gateway:
        token = mint(*SCOPES, subject="ann")
        extra = {"verify": str(certs.ca)} if scheme == "quic" else {}
        with gtl_nb.connect(gateway.url(scheme), token=token, **extra) as client:
            held = [_held_ws_stream(client), _held_ws_stream(client)]  # at the cap
            jti = pyjwt.decode(token, options={"verify_signature": False})["jti"]
            SqliteTokenStore(revocations).revoke(jti, time.time() + 600)

            deadline = time.monotonic() + 10  # the list is read again every 0.2 s: OVERLOADED until then
            while True:
                try:
                    client.complete("echo", "after the revocation")
                except AuthenticationError:
                    break  # refused as what it is, though the principal is still at its cap
                except OverloadedError:
                    assert time.monotonic() < deadline, "a revoked token at its cap was told to retry"
                    time.sleep(0.05)
                else:
                    raise AssertionError("a revoked token was served")
            for stream in held:
                stream.close()


def test_a_token_lacking_a_scope_at_its_principals_cap_is_told_so_on_every_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: DevCertificates
):
    """HTTP and gRPC ``Complete`` counted the cap before the scope: a token without ``chat:write`` whose
    ``sub`` was at its cap (through another token) heard a retryable 429, WebSocket a FORBIDDEN."""
    from gtl_nb.protocol.errors import PermissionDeniedError

    more = {
        "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
        "gateway": {"auth": "jwt", "max_sessions_per_principal": 1},
        "gateway.grpc": {"port": 0},
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "SCOPE_AT_CAP", more)
    with start_gateway(config) as gateway:
        base, full, reader = gateway.url("http"), mint(*SCOPES, subject="ann"), mint("models:read", subject="ann")
        held = HttpStream(base, full)  # ann's one place
        try:
            assert held.refused is None
            body = _gtl_request("echo", "hi", stream=False)
            answer = httpx.post(f"{base}/v1/gtl", json=body, headers={"authorization": f"Bearer {reader}"}, timeout=30)
            assert answer.status_code == 403 and answer.json()["events"][-1]["code"] == "FORBIDDEN"
            result = _grpc_complete(gateway.url("grpc"), reader, "echo", "hi")  # the error in its result
            assert "FORBIDDEN" in str(result) and "OVERLOADED" not in str(result)
            with gtl_nb.connect(gateway.url("ws"), token=reader) as over_ws:
                assert isinstance(_error_of(lambda: over_ws.complete("echo", "hi")), PermissionDeniedError)
        finally:
            held.close()
