"""The HTTP listener's limits, compression and graceful shutdown, on real loopback sockets.

* a request head that trickles in is cut at ``header_timeout`` (uvicorn alone waits for it for ever), and so
  is a body, while one arriving steadily may take longer; a body over the limit is refused before it ends;
* one connection more than ``max_connections_per_address`` is answered 429 (HTTP and WebSocket alike);
* gzip is used only when asked for, and a gzip stream still delivers each event as it is produced;
* permessage-deflate is agreed on a WebSocket unless either end turns it off;
* a shutdown lets running streams finish, refuses new work, and ends what outlives the grace period
  with ``CANCELLED`` — every ledger row complete; a body still arriving is answered 503 at once, and a client
  leaving mid-body is one log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.listeners import Limits
from gtl_nb.protocol import Done, Error, Token
from gtl_nb.protocol.errors import OverloadedError, ProviderUnavailableError
from tests.gateway.conftest import LONG_PROMPT, MODEL, SIM_KEY
from tests.gateway.test_http import serving

REQUEST = {"type": "completion_request", "session_id": "s1", "messages": [{"role": "user", "content": "Say something"}]}
HEALTH = b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n"


@pytest.fixture(scope="module")
def paced() -> Iterator[SimpleNamespace]:
    """``brisk``: 10 ms between chunks (a short answer takes under a second); ``crawl``: 100 ms (seconds)."""
    brisk = sim.serve("openai", seed=3, api_key=SIM_KEY, pace=0.01)
    crawl = sim.serve("openai", seed=3, api_key=SIM_KEY, pace=0.1)
    yield SimpleNamespace(brisk=brisk, crawl=crawl)
    brisk.close()
    crawl.close()


@pytest.fixture
def paced_config(write_config, paced, tmp_path: Path) -> Path:
    providers = {
        "brisk": {"type": "openai", "api_key": SIM_KEY, "base_url": paced.brisk.base_url},
        "crawl": {"type": "openai", "api_key": SIM_KEY, "base_url": paced.crawl.base_url},
    }
    return write_config(providers=providers, ledger=tmp_path / "rows.sqlite")


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.partition("://")[2].rpartition(":")
    return host, int(port)


def _trickle(sock: socket.socket, data: bytes, interval: float) -> tuple[bytes, float]:
    """Send ``data`` one byte every ``interval`` seconds, reading between bytes, until the server closes;
    returns what it sent and how long after the first byte it closed."""
    sock.settimeout(interval)
    answer, started, sent = b"", time.monotonic(), 0
    while time.monotonic() - started < 10:
        try:
            piece = sock.recv(4096)
        except TimeoutError:
            piece = None
        except ConnectionResetError:
            piece = b""
        if piece == b"":
            return answer, time.monotonic() - started
        answer += piece or b""
        if sent < len(data) and not answer:  # once the server answered, nothing more is sent (it would reset)
            sock.sendall(data[sent : sent + 1])
            sent += 1
    raise AssertionError("the server kept the connection open for 10 s")


def _ask(sock: socket.socket, request: bytes = HEALTH) -> bytes:
    """One request on a kept-alive raw connection; returns the response (head and body)."""
    sock.settimeout(5)
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def test_a_trickling_request_head_is_cut_at_the_header_timeout(base_config):
    limits = Limits(max_frame_bytes=64 * 1024, header_timeout=0.5, idle_timeout=30)
    with serving(base_config, limits=limits) as served:
        # a new connection sending its head a byte every 0.1 s (the whole head would take 4 s)
        with socket.create_connection(_address(served.url)) as sock:
            answer, after = _trickle(sock, HEALTH, 0.1)
        assert answer.startswith(b"HTTP/1.1 408") and b'"code":"TIMEOUT"' in answer
        assert 0.4 < after < 2.0
        # a kept-alive connection may sit idle longer than the header timeout (idle_timeout governs that);
        # the deadline starts with the first byte of its next request
        with socket.create_connection(_address(served.url)) as sock:
            assert _ask(sock).startswith(b"HTTP/1.1 200")
            time.sleep(0.8)  # idle between requests: longer than header_timeout, not cut
            answer, after = _trickle(sock, HEALTH, 0.1)
        assert answer.startswith(b"HTTP/1.1 408") and 0.4 < after < 2.0
        assert httpx.get(f"{served.url}/healthz").status_code == 200  # prompt clients are not affected


def test_one_connection_too_many_from_an_address_is_answered_429(base_config):
    limits = Limits(max_frame_bytes=64 * 1024, max_connections_per_address=2)
    with serving(base_config, limits=limits) as served:
        first = socket.create_connection(_address(served.url))
        second = socket.create_connection(_address(served.url))
        try:
            assert _ask(first).startswith(b"HTTP/1.1 200") and _ask(second).startswith(b"HTTP/1.1 200")
            refused = httpx.get(f"{served.url}/healthz")
            assert refused.status_code == 429 and refused.headers["connection"] == "close"
            assert refused.json()["code"] == "OVERLOADED" and refused.json()["retryable"] is True
            assert refused.headers["gtl-version"] == "1.0"  # a GTL error frame, as every GTL answer says
            with pytest.raises(OverloadedError):
                gtl_nb.connect(served.url)
            with pytest.raises(OverloadedError):  # the WebSocket upgrade is refused the same way
                gtl_nb.connect(served.url.replace("http://", "ws://"))
            silent = socket.create_connection(_address(served.url))  # one too many, sending nothing
            silent.settimeout(5)
            started = time.monotonic()
            answer = silent.recv(4096)  # closed within about a second, not held until header_timeout
            assert answer.startswith(b"HTTP/1.1 429") and time.monotonic() - started < 3, answer
            assert silent.recv(4096) == b""
            silent.close()
            first.close()
            _ask(second)  # answered after the server has seen the first connection close
            assert httpx.get(f"{served.url}/healthz").status_code == 200
        finally:
            first.close()
            second.close()


def _gzip_stream(url: str, path: str, body: dict, encoding: str) -> tuple[httpx.Headers, bytes, float]:
    """POST and read the raw body, decompressing each piece as it arrives; returns the headers, the decoded
    body and the seconds from the first token to the end of the body."""
    decoder = zlib.decompressobj(31)
    text, first_token = b"", None
    with httpx.stream("POST", url + path, json=body, headers={"accept-encoding": encoding}) as response:
        gzip = response.headers.get("content-encoding") == "gzip"
        for raw in response.iter_raw():
            text += decoder.decompress(raw) if gzip else raw
            if first_token is None and b'"type":"token"' in text:
                first_token = time.monotonic()
        ended = time.monotonic()
    assert first_token is not None
    if gzip:
        assert decoder.eof  # a complete gzip member, trailer included
    return response.headers, text, ended - first_token


@pytest.mark.parametrize("path", ["/v1/gtl", "/v1/gtl/sse"])
def test_gzip_when_asked_and_the_first_token_still_arrives_at_once(paced_config, path):
    body = {**REQUEST, "model": f"brisk:{MODEL}"}
    with serving(paced_config) as served:
        headers, text, rest = _gzip_stream(served.url, path, body, "gzip")
        assert headers["content-encoding"] == "gzip" and headers["vary"] == "accept-encoding"
        assert b'"type":"done"' in text
        # ~60 chunks 10 ms apart: the first token was decoded while the stream still had most of its way to go
        assert rest > 0.3
        echo = {**REQUEST, "model": "echo"}
        headers, _, _ = _gzip_stream(served.url, path, echo, "identity")  # not asked for: not compressed
        assert "content-encoding" not in headers
        with gtl_nb.connect(served.url) as client:  # httpx asks for gzip by itself and decodes it
            assert client.complete("echo", "Say something").text.count("Say something") == 1


def test_permessage_deflate_is_agreed_and_either_end_can_turn_it_off(base_config):
    with serving(base_config) as served:
        address = served.url.replace("http://", "ws://")
        with gtl_nb.connect(address) as client:
            assert client.complete("echo", "deflated").text.count("deflated") == 1
            assert client.backend.channel.extensions == ("permessage-deflate",)
        with gtl_nb.connect(address + "?compression=none") as client:
            assert client.complete("echo", "plain").text.count("plain") == 1
            assert client.backend.channel.extensions == ()
    with serving(base_config, compression=False) as served:
        with gtl_nb.connect(served.url.replace("http://", "ws://")) as client:
            client.complete("echo", "plain")
            assert client.backend.channel.extensions == ()
        response = httpx.post(
            f"{served.url}/v1/gtl", json={**REQUEST, "model": "echo"}, headers={"accept-encoding": "gzip"}
        )
        assert response.status_code == 200 and "content-encoding" not in response.headers


def _first_token(stream: gtl_nb.EventStream) -> None:
    for event in stream:
        if isinstance(event, Token):
            return
    raise AssertionError(f"the session ended before its first token: {stream.transcript.events[-1]}")


def _last(stream: gtl_nb.EventStream) -> Done | Error:
    events = list(stream)
    return events[-1] if events else stream.transcript.events[-1]  # type: ignore[return-value]


def test_shutdown_lets_streams_finish_refuses_new_work_then_cancels_the_rest(paced_config, tmp_path):
    with serving(paced_config, grace=2.5) as served:
        over_http = gtl_nb.connect(served.url)
        over_ws = gtl_nb.connect(served.url.replace("http://", "ws://"))
        try:
            finishing = over_http.stream(f"brisk:{MODEL}", "Say something")  # under a second
            outlasting = over_http.stream(f"crawl:{MODEL}", LONG_PROMPT)  # about 7 s
            outlasting_ws = over_ws.stream(f"crawl:{MODEL}", LONG_PROMPT)
            for stream in (finishing, outlasting, outlasting_ws):
                _first_token(stream)
            started = time.monotonic()
            served.begin_shutdown()
            with pytest.raises(ProviderUnavailableError):  # no new connection, or a 503 "shutting down"
                gtl_nb.connect(served.url)
            refused = _last(over_ws.stream("echo", "too late"))  # the open WebSocket takes no new session
            assert isinstance(refused, Error) and "shutting down" in refused.message
            assert isinstance(_last(finishing), Done)
            ends = {}
            threads = [
                threading.Thread(target=lambda s=s: ends.__setitem__(s.session_id, _last(s)))
                for s in (outlasting, outlasting_ws)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(15)
            for end in ends.values():
                assert isinstance(end, Error) and end.code == "CANCELLED" and "shutting down" in end.message
            assert served.stopped.wait(15)  # serve_http returned by itself
            assert 2.0 < time.monotonic() - started < 8.0  # the grace period, then the cancels
        finally:
            over_http.close()
            over_ws.close()
    rows = {row["session_id"]: row["status"] for row in Ledger(tmp_path / "rows.sqlite").rows()}
    assert rows[finishing.session_id] == "ok"
    assert rows[outlasting.session_id] == rows[outlasting_ws.session_id] == "cancelled"
    assert "started" not in rows.values()


# -- request bodies: bounded in size and in time, cut cleanly at shutdown ---------------------------------


def _head(path: str, *headers: str) -> bytes:
    """A complete request head for ``POST path`` with ``headers`` (each ``"name: value"``)."""
    return "\r\n".join([f"POST {path} HTTP/1.1", "host: gateway", *headers, "", ""]).encode()


def _response(sock: socket.socket, timeout: float = 5) -> bytes:
    """What the server sends until it closes the connection, or has sent a whole head and JSON body."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            piece = b""
        if not piece:
            return data
        data += piece
        head, _, body = data.rpartition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 ") and b"content-length" in head and body.endswith(b"}"):
            return data


def _continued(sock: socket.socket, head: bytes) -> None:
    """Send ``head`` (which says ``expect: 100-continue``) and wait for the ``100 Continue``: the application
    has started reading the body (a synchronisation point, not a sleep)."""
    sock.settimeout(5)
    sock.sendall(head)
    assert sock.recv(4096).startswith(b"HTTP/1.1 100 ")


@pytest.mark.parametrize("path", ["/v1/gtl", "/v1/gtl/query"])
def test_a_body_over_the_limit_is_refused_before_it_ends(base_config, path):
    """The body is read a piece at a time and refused once it passes ``max_frame_bytes`` — not first read whole
    (``/v1/gtl/query`` held a 400 MB chunked body in memory before answering 413)."""
    limits = Limits(max_frame_bytes=64 * 1024)
    with serving(base_config, limits=limits) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(_head(path, "transfer-encoding: chunked", "content-type: application/json"))
        for _ in range(4):  # 128 KiB, and no last chunk: the body has not ended
            sock.sendall(b"8000\r\n" + b" " * 0x8000 + b"\r\n")
        answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b'"code":"INVALID_REQUEST"' in answer


def test_an_answer_before_the_body_has_arrived_says_the_connection_closes(base_config):
    """An endpoint may answer before reading the body (``/v1/completions`` is a 404 whatever it says): the
    connection then closes, and the answer says so (``connection: close``), so no client sends its next
    request on it. (One that did got "connection reset": the official SDK, now and then, in CI.) When the
    body has arrived first, the connection is kept."""
    body = b'{"model": "m", "prompt": "hello"}'
    with serving(base_config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(_head("/v1/completions", f"content-length: {len(body)}", "content-type: application/json"))
        early = _response(sock)  # (the body is sent only after the answer)
        with contextlib.suppress(ConnectionResetError):  # (a reset: the body arrived after the close)
            sock.sendall(body)
            assert sock.recv(4096) == b""  # closed by the gateway
    head = early.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 404") and b"\r\nconnection: close" in head
    with serving(base_config) as served, socket.create_connection(_address(served.url)) as sock:
        for _ in range(2):
            sock.sendall(_head("/v1/completions", f"content-length: {len(body)}") + body)
            answer = _response(sock)
            assert answer.startswith(b"HTTP/1.1 404") and b"connection: close" not in answer.lower()


@pytest.mark.parametrize("path", ["/v1/gtl", "/v1/gtl/sse", "/v1/gtl/query"])
def test_a_trickling_request_body_is_cut_at_the_header_timeout(base_config, path):
    """A whole head, then the body a byte every 0.1 s: cut with 408 as a trickling head is."""
    limits = Limits(max_frame_bytes=64 * 1024, header_timeout=0.5, idle_timeout=30)
    with serving(base_config, limits=limits) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(_head(path, "content-length: 1000"))
        answer, after = _trickle(sock, b" " * 1000, 0.1)
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"TIMEOUT"' in answer
    assert b"connection: close" in answer.lower()
    assert 0.3 < after < 2.0


def test_a_body_arriving_steadily_may_take_longer_than_the_header_timeout(base_config):
    """Each piece received extends the deadline: 192 KiB at about 160 KiB/s takes over a second (twice
    ``header_timeout``) and is answered, not cut."""
    limits = Limits(max_frame_bytes=256 * 1024, header_timeout=0.5, idle_timeout=30)
    body = json.dumps({**REQUEST, "model": "echo", "stream": False}).encode().ljust(192 * 1024)
    with serving(base_config, limits=limits) as served, socket.create_connection(_address(served.url)) as sock:
        started = time.monotonic()
        sock.sendall(_head("/v1/gtl", f"content-length: {len(body)}", "content-type: application/json"))
        for offset in range(0, len(body), 8 * 1024):
            sock.sendall(body[offset : offset + 8 * 1024])
            time.sleep(0.05)  # the pace of a slow uplink, not a wait for the server
        answer = _response(sock)
        assert time.monotonic() - started > 1.0
    assert answer.startswith(b"HTTP/1.1 200") and b'"type":"done"' in answer


def test_a_shutdown_answers_bodies_still_arriving_with_503(base_config, caplog):
    """SIGTERM while two bodies are half sent: each client gets ``503`` and a GTL error at once (not a plain
    ``500`` five seconds later), and no traceback is logged."""
    caplog.set_level(logging.INFO)
    with serving(base_config, grace=10) as served:
        socks = [socket.create_connection(_address(served.url)) for _ in range(2)]
        try:
            for sock, path in zip(socks, ["/v1/gtl", "/v1/gtl/query"], strict=True):
                _continued(sock, _head(path, "content-length: 1000", "expect: 100-continue"))
                sock.sendall(b'{"type":')
            started = time.monotonic()
            served.begin_shutdown()
            answers = [_response(sock) for sock in socks]
            assert served.stopped.wait(10)
            took = time.monotonic() - started
        finally:
            for sock in socks:
                sock.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 503") and b'"code":"PROVIDER_UNAVAILABLE"' in answer, answer
        assert b"shutting down" in answer
    assert took < 2.0  # no grace to wait for: nothing was running
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]


def test_a_client_leaving_mid_body_is_one_info_line(base_config, caplog):
    caplog.set_level(logging.INFO)
    with serving(base_config) as served:
        with socket.create_connection(_address(served.url)) as sock:
            _continued(sock, _head("/v1/gtl", "content-length: 1000", "expect: 100-continue"))
            sock.sendall(b'{"type":')
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not [r for r in caplog.records if "mid-body" in r.getMessage()]:
            time.sleep(0.01)  # polling for the server's log line
        assert httpx.get(f"{served.url}/healthz").status_code == 200
    lines = [record for record in caplog.records if "mid-body" in record.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].name == "gtl_nb.gateway.http"
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]


def test_a_pipelined_request_whose_body_arrives_later_is_answered(base_config):
    """A GET and, behind it on the same connection, a POST whose body is still arriving when the GET is
    answered: the connection stays open for the POST (only a refused request's own body closes it)."""
    body = json.dumps({**REQUEST, "model": "echo", "stream": False}).encode()
    limits = Limits(max_frame_bytes=64 * 1024, header_timeout=5, idle_timeout=30)
    with serving(base_config, limits=limits) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(HEALTH + _head("/v1/gtl", f"content-length: {len(body)}", "content-type: application/json"))
        sock.sendall(body[:10])
        time.sleep(0.3)  # the GET has been answered by now
        sock.sendall(body[10:])
        sock.settimeout(10)
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or b'"type":"done"' not in received:
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    assert received.count(b"HTTP/1.1 200") == 2 and b'"type":"done"' in received


def test_a_head_over_the_limit_in_several_reads_on_a_kept_alive_connection_is_431(base_config):
    """The head's size is counted as llhttp parses it, so a 150 KiB head is refused however it is cut."""
    with serving(base_config) as served, socket.create_connection(_address(served.url)) as sock:
        assert _ask(sock).startswith(b"HTTP/1.1 200")
        head = b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-padding: " + b"a" * (150 * 1024) + b"\r\n\r\n"
        sock.sendall(head[: 64 * 1024])
        time.sleep(0.1)
        sock.sendall(head[64 * 1024 :])
        assert _response(sock).startswith(b"HTTP/1.1 431")


def test_a_pipelined_head_arriving_while_an_answer_streams_does_not_cut_it(paced_config):
    """A streamed answer, and the first bytes of a next request behind it: the answer is written whole;
    only then does the next request's head deadline start (and cut it: it never completes)."""
    limits = Limits(max_frame_bytes=64 * 1024, header_timeout=0.5, idle_timeout=30)
    request = json.dumps({**REQUEST, "model": "brisk:gpt-4o-mini"}).encode()
    with serving(paced_config, limits=limits) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(_head("/v1/gtl/sse", f"content-length: {len(request)}", "content-type: application/json"))
        sock.sendall(request + b"GET /healthz HTTP/1.1\r\nho")  # a pipelined head, never finished
        sock.settimeout(30)
        received = b""
        while b"HTTP/1.1 408" not in received:
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    answer, _, after = received.partition(b"event: done")
    assert b"event: done" in received and b"408" not in answer  # nothing written inside the stream
    assert b"HTTP/1.1 408" in after


def test_a_shutdown_never_answers_a_pipelined_body_inside_the_answer_streaming_before_it(paced_config):
    """A stream, and behind it on the same connection a request whose body is still arriving when the
    gateway shuts down: the stream is written whole; no ``503`` lands inside it (the connection closes)."""
    request = json.dumps({**REQUEST, "model": "crawl:gpt-4o-mini"}).encode()
    with serving(paced_config, grace=30) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(_head("/v1/gtl/sse", f"content-length: {len(request)}", "content-type: application/json"))
        sock.sendall(request + _head("/v1/gtl", "content-length: 1000", "content-type: application/json") + b"{")
        sock.settimeout(30)
        received = sock.recv(65536)  # the stream has begun
        served.begin_shutdown()
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    answer, done, _ = received.partition(b"event: done")
    assert done and b"HTTP/1.1 503" not in answer, received[-600:]  # the stream ended whole, nothing inside it


def _until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What arrives until the gateway closes the connection (``True``) or ``seconds`` pass (``False``)."""
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, True
        if not piece:
            return data, True
        data += piece
    return data, False


def test_a_pipelined_body_that_stops_arriving_is_cut_at_the_header_timeout(base_config):
    """A GET, and behind it a POST whose body stops after one byte: once the GET is answered, the POST's
    deadline runs (it held the connection for ever before)."""
    limits = Limits(max_frame_bytes=64 * 1024, header_timeout=0.5, idle_timeout=30)
    with serving(base_config, limits=limits) as served, socket.create_connection(_address(served.url)) as sock:
        sock.sendall(HEALTH + _head("/v1/gtl", "content-length: 100", "content-type: application/json") + b"{")
        data, closed = _until_closed(sock, 10)
    assert closed and data.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in data


@pytest.fixture(scope="module")
def sleepy() -> Iterator[Any]:
    server = sim.serve("openai", sim.Fault.slow_first_token(2.0), seed=3, api_key=SIM_KEY)
    yield server
    server.close()


def test_a_shutdown_with_a_pipelined_body_arriving_has_the_answer_before_it_announce_the_close(
    write_config, sleepy, tmp_path
):
    """The answer the pipelined request waits behind has not begun when the gateway starts shutting down:
    it is sent whole and says ``connection: close``, then the connection closes."""
    providers = {"sleepy": {"type": "openai", "api_key": SIM_KEY, "base_url": sleepy.base_url}}
    config = write_config(providers=providers, ledger=tmp_path / "rows.sqlite")
    request = json.dumps({**REQUEST, "model": "sleepy:gpt-4o-mini", "stream": False}).encode()
    with serving(config, grace=30) as served, socket.create_connection(_address(served.url)) as sock:
        first = _head("/v1/gtl", f"content-length: {len(request)}", "content-type: application/json") + request
        sock.sendall(first + _head("/v1/gtl", "content-length: 1000", "content-type: application/json") + b"{")
        time.sleep(0.2)
        served.begin_shutdown()
        data, closed = _until_closed(sock, 30)
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert closed and head.startswith(b"http/1.1 200") and b"\r\nconnection: close" in head
    assert data.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("scheme", ["http", "sse"])
def test_a_request_over_the_gateways_frame_limit_is_refused_by_the_client_with_the_reason(base_config, scheme):
    # the gateway says its limit with its provider list; without it, it would close the connection
    # mid-upload and the caller would read "lost the gateway" (retryable) for its own oversized prompt
    from gtl_nb.protocol.errors import InvalidRequestError

    with (
        serving(base_config, limits=Limits(max_frame_bytes=64 * 1024)) as served,
        gtl_nb.connect(served.url.replace("http://", f"{scheme}://", 1)) as client,
    ):
        with pytest.raises(InvalidRequestError, match="exceeds the maximum frame size of 65536 bytes") as refused:
            client.complete(f"echo:{MODEL}", "x" * (100 * 1024))
        assert refused.value.retryable is False
        assert client.complete(f"echo:{MODEL}", "a question that fits").text  # the client goes on


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_a_closed_client_says_so_with_one_error_class_whatever_the_transport(base_config, scheme):
    from gtl_nb.protocol.errors import ConfigurationError

    with serving(base_config) as served:
        client = gtl_nb.connect(served.url.replace("http://", f"{scheme}://", 1))
        client.close()
        for call in (lambda: client.complete(f"echo:{MODEL}", "hi"), client.usage):
            with pytest.raises(ConfigurationError, match="this client is closed"):
                call()


@pytest.mark.parametrize(("tls", "plain"), [("https", "http"), ("sses", "sse"), ("wss", "ws")])
def test_tls_asked_of_a_plaintext_port_says_which_scheme_to_use(base_config, tls, plain):
    from gtl_nb.protocol.errors import GTLError

    with serving(base_config) as served:
        url = served.url.replace("http://", f"{tls}://", 1)
        # (https:// is discovery's, which may try other forms: its error is "found no gateway", with the hint)
        with pytest.raises(GTLError, match=f"(plain text, not TLS|serves no TLS).*connect with {plain}://"):
            gtl_nb.connect(url).complete(f"echo:{MODEL}", "hi")


@pytest.mark.parametrize("codings", [b"gzip, chunked", b"deflate", b"identity"])
def test_a_transfer_coding_other_than_chunked_is_answered_501(base_config, codings):
    """RFC 9112: a transfer coding the server does not know is answered 501 — read as plain chunked,
    "gzip, chunked" handed compressed bytes to the JSON reader as if they were the body."""
    body = json.dumps(REQUEST).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = b"POST /v1/gtl HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    with serving(base_config) as served, socket.create_connection(_address(served.url)) as sock:
        sock.settimeout(5)
        sock.sendall(head + b"transfer-encoding: " + codings + b"\r\n\r\n" + chunked)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 501"), answer[:200]
        assert b"only chunked is understood" in answer
        assert httpx.get(f"{served.url}/healthz").status_code == 200
