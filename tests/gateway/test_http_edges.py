"""Edges of the HTTP listener's connections, on real loopback sockets: requests pipelined in front of one that
does not parse, and a client that shuts its side of the connection once it has sent its requests.

* the requests before a malformed one are answered whole, in order; then comes one ``400`` — in the shape of the
  malformed request's API when its path was read (OpenAI's, Anthropic's, else a GTL ``error``) — and the
  connection closes;
* a half-close after a whole request (legal HTTP/1.1: RFC 9112 lets a client shut its side once it has sent its
  requests) still gets the answer, and every request pipelined before it too; the connection closes after them.

Every request ends in exactly one ``done`` or ``error``, and leaves exactly one ledger row.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gtl_nb import sim
from gtl_nb.gateway import http as http_gateway
from tests.gateway.conftest import LONG_PROMPT, MODEL, SIM_KEY
from tests.gateway.test_http import serving
from tests.ledger_wait import rows_when

MALFORMED = b"GET /healthz HTTP/1.1\r\nhost gateway\r\n\r\n"  # a header line without its colon


@pytest.fixture(scope="module")
def paced() -> Iterator[Any]:
    """An OpenAI simulator 50 ms between chunks: a long answer streams for a second or more."""
    server = sim.serve("openai", seed=3, api_key=SIM_KEY, pace=0.05)
    yield server
    server.close()


@pytest.fixture
def gateway(write_config, paced, tmp_path: Path) -> SimpleNamespace:
    """A configuration with ``paced`` beside the shared deployments, and its own ledger."""
    ledger = tmp_path / "rows.sqlite"
    providers = {"paced": {"type": "openai", "api_key": SIM_KEY, "base_url": paced.base_url}}
    return SimpleNamespace(config=write_config(providers=providers, ledger=ledger), ledger=ledger)


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.partition("://")[2].rpartition(":")
    return host, int(port)


def _post(path: str, body: dict[str, Any], *headers: str) -> bytes:
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json", *headers]
    return "\r\n".join([*head, f"content-length: {len(data)}", "", ""]).encode() + data


def _gtl(session_id: str, model: str = "echo", **more: Any) -> dict[str, Any]:
    return {
        "type": "completion_request",
        "session_id": session_id,
        "model": model,
        "messages": [{"role": "user", "content": more.pop("prompt", "Say something")}],
        **more,
    }


def _until_closed(sock: socket.socket, seconds: float = 30) -> bytes:
    """Everything the gateway sends until it closes the connection (the test fails if it does not)."""
    sock.settimeout(seconds)
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
    return data


def _responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The whole responses in ``data``, in order: status, headers (lower-case names) and body (de-chunked)."""
    found = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"an unfinished response head: {head[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body, data = body + data[:size], data[size + 2 :]
                if size == 0:
                    break
        else:
            length = int(headers["content-length"])
            assert len(data) >= length, "an unfinished response body"
            body, data = data[:length], data[length:]
        found.append((status, headers, body))
    return found


def _terminals(body: bytes) -> list[dict[str, Any]]:
    """The ``done`` and ``error`` frames of a GTL answer (NDJSON, SSE, or the collected JSON object)."""
    text = body.decode()
    if text.startswith("{") and '"events"' in text.partition("\n")[0]:
        frames = json.loads(text)["events"]
    else:
        lines = [line.removeprefix("data: ") for line in text.splitlines() if line.strip()]
        frames = [json.loads(line) for line in lines if line.startswith("{")]
    return [frame for frame in frames if frame.get("type") in ("done", "error")]


def _one_row_each(ledger: Path, *session_ids: str) -> list[str]:
    """The status of each session's one ledger row (the listener has stopped: every row is complete)."""
    statuses = []
    for session_id in session_ids:
        rows = rows_when(ledger, session_id=session_id)
        assert len(rows) == 1, (session_id, rows)
        statuses.append(rows[0]["status"])
    return statuses


# -- a malformed request pipelined behind valid ones ------------------------------------------------------------


def test_requests_before_a_malformed_one_are_answered_then_it_gets_a_400(gateway):
    """Two requests and, in the same write, one llhttp cannot parse: both answers whole, in order, then one
    ``400`` (a GTL error: ``/healthz`` is no compatible API's path), then the connection closes."""
    first = _post("/v1/gtl", _gtl("p1", stream=False))
    second = _post("/v1/gtl", _gtl("p2"))  # streamed (NDJSON)
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(first + second + MALFORMED)
        data = _until_closed(sock)
    answers = _responses(data)
    assert [status for status, _, _ in answers] == [200, 200, 400], data[-400:]
    assert [[frame["type"] for frame in _terminals(body)] for _, _, body in answers[:2]] == [["done"], ["done"]]
    assert [frame["session_id"] for _, _, body in answers[:2] for frame in _terminals(body)] == ["p1", "p2"]
    _, headers, body = answers[2]
    refusal = json.loads(body)
    assert refusal["type"] == "error" and refusal["code"] == "INVALID_REQUEST"
    assert "not valid HTTP" in refusal["message"]
    assert headers["connection"] == "close"
    assert _one_row_each(gateway.ledger, "p1", "p2") == ["ok", "ok"]


def test_a_stream_before_a_malformed_request_is_written_whole_first(gateway):
    """The answer before the malformed request still streams (a paced provider: the 400 is due long before the
    answer ends); nothing is written inside it, and it is not cut."""
    request = _post("/v1/gtl/sse", _gtl("s1", model=f"paced:{MODEL}", prompt=LONG_PROMPT))
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(request + MALFORMED)
        data = _until_closed(sock)
    answers = _responses(data)
    assert [status for status, _, _ in answers] == [200, 400], data[-400:]
    assert [frame["type"] for frame in _terminals(answers[0][2])] == ["done"]
    assert _one_row_each(gateway.ledger, "s1") == ["ok"]


def test_a_malformed_request_on_a_compatible_path_is_refused_in_that_apis_shape(gateway):
    """The ``400`` for a request whose path was read is in its API's shape, so the SDK that sent it reads it:
    OpenAI's on ``/v1/chat/completions``, Anthropic's on ``/v1/messages``."""
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    valid = _post("/v1/chat/completions", chat)
    bad_openai = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: x\r\n\r\n"
    bad_anthropic = b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nanthropic-version: 2023-06-01\r\nbad\r\n\r\n"
    with serving(gateway.config) as served:
        with socket.create_connection(_address(served.url)) as sock:
            sock.sendall(valid + bad_openai)
            openai_answers = _responses(_until_closed(sock))
        with socket.create_connection(_address(served.url)) as sock:
            sock.sendall(bad_anthropic)  # alone on its connection: refused at once, in the same shape
            anthropic_answers = _responses(_until_closed(sock))
    assert [status for status, _, _ in openai_answers] == [200, 400]
    answered = json.loads(openai_answers[0][2])
    assert answered["object"] == "chat.completion" and answered["choices"][0]["finish_reason"] == "stop"
    refused = json.loads(openai_answers[1][2])["error"]
    assert refused["type"] == "invalid_request_error" and "not valid HTTP" in refused["message"]
    [(status, _, body)] = anthropic_answers
    refusal = json.loads(body)
    assert status == 400 and refusal["type"] == "error" and refusal["error"]["type"] == "invalid_request_error"
    assert _one_row_each(gateway.ledger, answered["id"]) == ["ok"]


def test_a_body_that_breaks_its_chunking_behind_an_answer_is_refused_after_it(gateway):
    """A request whose chunked body does not parse, pipelined behind one being answered: the earlier answer
    is whole, the broken request never runs (no row) and gets the ``400``."""
    first = _post("/v1/gtl", _gtl("c1", model=f"paced:{MODEL}", stream=False))
    broken = b"POST /v1/gtl HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n"
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(first + broken)
        data = _until_closed(sock)
    answers = _responses(data)
    assert [status for status, _, _ in answers] == [200, 400], data[-400:]
    assert [frame["type"] for frame in _terminals(answers[0][2])] == ["done"]
    assert _one_row_each(gateway.ledger, "c1") == ["ok"]


# -- a client that shuts its side ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/gtl", "/v1/gtl/sse"])
def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(gateway, path):
    """The whole request, then ``shutdown(SHUT_WR)`` at once: the answer (a paced stream, seconds long) comes
    whole, then the gateway closes the connection."""
    session_id = f"half-{path.rsplit('/', 1)[-1]}"
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(_post(path, _gtl(session_id, model=f"paced:{MODEL}", prompt=LONG_PROMPT)))
        sock.shutdown(socket.SHUT_WR)
        data = _until_closed(sock)
    [(status, _, body)] = _responses(data)
    assert status == 200 and [frame["type"] for frame in _terminals(body)] == ["done"]
    assert _one_row_each(gateway.ledger, session_id) == ["ok"]


def test_requests_pipelined_before_a_half_close_are_all_answered(gateway):
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(
            _post("/v1/gtl", _gtl("h1", model=f"paced:{MODEL}", stream=False)) + _post("/v1/gtl/sse", _gtl("h2"))
        )
        sock.shutdown(socket.SHUT_WR)
        data = _until_closed(sock)
    answers = _responses(data)
    assert [status for status, _, _ in answers] == [200, 200]
    assert [[frame["type"] for frame in _terminals(body)] for _, _, body in answers] == [["done"], ["done"]]
    assert _one_row_each(gateway.ledger, "h1", "h2") == ["ok", "ok"]


def test_a_client_that_closes_mid_stream_still_cancels_its_session(gateway):
    """A close cannot be told from a half-close when it arrives; the next event written finds the client gone
    (its reset), and the session ends ``cancelled``, as before."""
    with serving(gateway.config) as served:
        sock = socket.create_connection(_address(served.url))
        sock.sendall(_post("/v1/gtl", _gtl("gone", model=f"paced:{MODEL}", prompt=LONG_PROMPT)))
        sock.settimeout(10)
        received = b""
        while b'"type":"token"' not in received:
            received += sock.recv(65536)
        sock.close()
        rows = rows_when(gateway.ledger, session_id="gone")
    assert [row["status"] for row in rows] == ["cancelled"]


def test_a_half_close_in_the_middle_of_a_request_closes_the_connection(gateway):
    """A request the end cut short can never be whole: the connection closes, with nothing run and no row."""
    request = _post("/v1/gtl", _gtl("cut"))
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(request[:-5])
        sock.shutdown(socket.SHUT_WR)
        data = _until_closed(sock)
    assert b"HTTP/1.1 200" not in data
    assert rows_when(gateway.ledger, session_id="cut", timeout=0.5) == []


def test_a_shutdown_with_requests_before_a_malformed_one_answers_each_once(gateway):
    """A stream, a request queued behind it and a malformed one, then a shutdown: the stream is written whole,
    the queued request is refused as the stop refuses a request still arriving (``503``, retryable, with its
    row) and its answer says ``connection: close``; the connection then closes, with no ``400`` after it."""
    stream = _post("/v1/gtl/sse", _gtl("first", model=f"paced:{MODEL}", prompt=LONG_PROMPT))
    with serving(gateway.config, grace=30) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(stream + _post("/v1/gtl", _gtl("queued", stream=False)) + MALFORMED)
        sock.settimeout(30)
        received = sock.recv(65536)  # the stream has begun
        served.begin_shutdown()
        data = received + _until_closed(sock)
    answers = _responses(data)
    assert [status for status, _, _ in answers] == [200, 503], data[-400:]
    assert [frame["type"] for frame in _terminals(answers[0][2])] == ["done"]
    assert answers[1][1]["connection"] == "close"
    assert [(frame["type"], frame["code"]) for frame in _terminals(answers[1][2])] == [
        ("error", "PROVIDER_UNAVAILABLE")
    ]
    assert _one_row_each(gateway.ledger, "first", "queued") == ["ok", "error"]


# -- many requests pipelined behind a long answer ----------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["Say something", "x" * 40_000], ids=["short-bodies", "bodies-over-16-KiB"])
def test_requests_pipelined_behind_a_long_answer_wait_at_most_max_pipelined_and_are_all_answered(
    gateway, monkeypatch, prompt
):
    """A streamed answer lasting seconds, and behind it in one write a thousand requests (``GET /healthz`` and,
    every 50th, a GTL request of its own): the connection never holds more than ``MAX_PIPELINED`` of them
    parsed and waiting (the rest are not parsed, and the socket not read, until answers are complete), and
    every one is answered, in order (bodies longer than the 16 KiB pieces held bytes are parsed in too). Until
    2026-12-07 every request read was queued: 300,000 tiny ``GET``s grew the gateway by ~700 MiB."""
    depths: list[int] = []
    original = http_gateway._HttpProtocol.on_headers_complete

    def counted(self: Any) -> None:
        original(self)
        depths.append(len(self.pipeline))  # the requests read and waiting behind the one being answered

    monkeypatch.setattr(http_gateway._HttpProtocol, "on_headers_complete", counted)
    lead = _post("/v1/gtl", _gtl("lead", model=f"paced:{MODEL}", prompt=LONG_PROMPT))
    health = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    behind = [
        _post("/v1/gtl", _gtl(f"q{n}", stream=False, prompt=prompt)) if n % 50 == 49 else health for n in range(1000)
    ]
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(lead + b"".join(behind))
        sock.shutdown(socket.SHUT_WR)
        data = _until_closed(sock, seconds=60)
    answers = _responses(data)
    assert len(answers) == 1 + len(behind)
    assert all(status == 200 for status, _, _ in answers)
    sessions = [frame["session_id"] for _, _, body in answers[1:] for frame in _terminals(body)]
    assert sessions == [f"q{n}" for n in range(1000) if n % 50 == 49]  # in the order they were sent
    assert [frame["type"] for frame in _terminals(answers[0][2])] == ["done"]
    assert len(depths) == 1 + len(behind)
    assert max(depths) == http_gateway.MAX_PIPELINED  # the queue filled up to the limit, never past it


# -- blank lines inside a request's own body ----------------------------------------------------------------------


def _spaced_gtl(session_id: str, **more: Any) -> bytes:
    """A GTL request's JSON with 40 blank lines of whitespace after its first brace (valid JSON)."""
    text = json.dumps(_gtl(session_id, stream=False, **more), indent=1)
    return text.replace("{", "{" + "\n" * 41, 1).encode()


def _chunked_post(path: str, body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json", "transfer-encoding: chunked"]
    return "\r\n".join([*head, "", ""]).encode() + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


def _spaced_post(session_id: str, chunked: bool) -> bytes:
    body = _spaced_gtl(session_id)
    if chunked:
        return _chunked_post("/v1/gtl", body)
    head = ["POST /v1/gtl HTTP/1.1", "host: 127.0.0.1", "content-type: application/json"]
    return "\r\n".join([*head, f"content-length: {len(body)}", "", ""]).encode() + body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_holding_many_blank_lines_sent_with_its_head_is_answered(gateway, chunked):
    """Blank lines in a request's own body are no request heads: a POST whose pretty-printed JSON holds 40 of
    them, head and body in one write, is answered. Until 2026-12-08 the pipelining bound counted them as heads,
    held the rest of the body back and stopped reading: the request waited for its body for ever."""
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(_spaced_post("spaced", chunked))
        sock.shutdown(socket.SHUT_WR)
        answers = _responses(_until_closed(sock))
    assert [status for status, _, _ in answers] == [200]
    assert [frame["type"] for frame in _terminals(answers[0][2])] == ["done"]
    assert _one_row_each(gateway.ledger, "spaced") == ["ok"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_holding_many_blank_lines_pipelined_behind_a_long_answer_are_answered(gateway, chunked):
    """The same bodies, three of them pipelined in one write behind a streamed answer lasting seconds: each is
    answered, in order, after it (their blank lines are no requests waiting in the queue)."""
    lead = _post("/v1/gtl", _gtl("lead", model=f"paced:{MODEL}", prompt=LONG_PROMPT))
    behind = [_spaced_post(f"spaced{n}", chunked) for n in range(3)]
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(lead + b"".join(behind))
        sock.shutdown(socket.SHUT_WR)
        answers = _responses(_until_closed(sock))
    assert [status for status, _, _ in answers] == [200] * 4
    sessions = [frame["session_id"] for _, _, body in answers for frame in _terminals(body)]
    assert sessions == ["lead", "spaced0", "spaced1", "spaced2"]
    assert _one_row_each(gateway.ledger, "lead", "spaced0", "spaced1", "spaced2") == ["ok"] * 4


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_with_blank_lines_that_fills_the_pipelining_queue_is_read_whole_and_the_rest_waits(
    gateway, monkeypatch, chunked
):
    """Behind a long answer, 15 ``GET``s and then such a POST (the ``MAX_PIPELINED``-th request waiting): its
    body is read to its end although the queue is full, the requests after it wait, and every one is
    answered in order, the queue never past the limit."""
    depths: list[int] = []
    original = http_gateway._HttpProtocol.on_headers_complete

    def counted(self: Any) -> None:
        original(self)
        depths.append(len(self.pipeline))

    monkeypatch.setattr(http_gateway._HttpProtocol, "on_headers_complete", counted)
    lead = _post("/v1/gtl", _gtl("lead", model=f"paced:{MODEL}", prompt=LONG_PROMPT))
    health = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    before = health * (http_gateway.MAX_PIPELINED - 1)
    with serving(gateway.config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(lead + before + _spaced_post("spaced", chunked) + health * 20)
        sock.shutdown(socket.SHUT_WR)
        answers = _responses(_until_closed(sock))
    assert [status for status, _, _ in answers] == [200] * (1 + http_gateway.MAX_PIPELINED + 20)
    spaced = answers[http_gateway.MAX_PIPELINED]
    assert [frame["session_id"] for frame in _terminals(spaced[2])] == ["spaced"]
    assert max(depths) == http_gateway.MAX_PIPELINED
    assert _one_row_each(gateway.ledger, "lead", "spaced") == ["ok", "ok"]
