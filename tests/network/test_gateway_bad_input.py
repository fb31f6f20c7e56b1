"""Bad input against a running gateway, on every transport, while a well-behaved client is served.

Deeply nested JSON (100,000 levels), invalid UTF-8, oversized frames and bodies, garbage, and gRPC's
length-prefixed framing broken every way (hypothesis over raw HTTP/2): each is refused with a clear error
within seconds, the gateway's memory stays bounded, and a normal completion succeeds during the attack.
(``tests/gateway/test_http_limits.py`` and ``test_grpc.py`` have the single-request cases in-process; here
they run many at once against the real process, with its memory watched.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import struct
import time
from typing import Any

import grpc
import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtl_nb.protocol import messages as m
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc.mapping import to_proto
from gtl_nb.transports.quic.wire import frame as quic_frame
from tests.network.conftest import (
    COMPLETE,
    H2_PREFACE,
    LONG_PROMPT,
    MAX_FRAME,
    Attack,
    RssWatch,
    Target,
    assert_serves,
    attacker,
    close_code,
    dial,
    grpc_message,
    gtl_errors,
    h2_call,
    h2_frame,
    h2_headers,
    http_request,
    quic_peer,
    wait_closed,
    ws_frame,
    ws_hello,
    ws_messages,
    ws_upgrade,
)

DEEP = strategies.nested(100_000)  # 200 KB: under MAX_FRAME, so it reaches the parser
DEEP_OBJECT = strategies.nested(40_000, "{")  # 240 KB
ROUNDS = 5  # each attack repeats this many times while the well-behaved client is checked


def gtl_request(session_id: str = "s1", *, content: str = "hi", **fields: Any) -> bytes:
    """A ``completion_request`` frame whose ``fields`` are JSON text spliced in as given."""
    body = {"type": "completion_request", "session_id": session_id, "model": "echo"}
    text = json.dumps({**body, "messages": [{"role": "user", "content": content}]})[:-1]
    extra = "".join(f',"{name}":{value}' for name, value in fields.items())
    return text.encode() + extra.encode() + b"}"


def post(target: Target, source: str, path: str, body: bytes, *headers: str) -> tuple[int | None, bytes, float]:
    """POST ``body`` on a raw connection from ``source``; the status, the whole answer and how long it took."""
    with dial(target, source) as sock:
        started = time.monotonic()
        sock.sendall(http_request("POST", path, body, "content-type: application/json", "connection: close", *headers))
        closed = wait_closed(sock, 10)
    return closed.status, closed.data, time.monotonic() - started


def grpc_call(target: Target, method: str, data: bytes) -> grpc.RpcError | bytes:
    """One unary call with raw bytes (send and receive limits raised: the gateway's limits are what is tested)."""
    host, port = target.address("grpc")
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(f"{host}:{port}", options=options) as channel:
        try:
            return channel.unary_unary(method)(data, timeout=10)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            return exc


def ws_exchange(target: Target, source: str, *messages: bytes, wait: float = 3) -> list[tuple[int, bytes]]:
    """Hello, then ``messages`` (whole frames) on a fresh WebSocket; the frames received within ``wait`` s."""
    with ws_upgrade(target, source) as sock:
        sock.sendall(ws_hello() + b"".join(messages))
        sock.settimeout(0.1)
        data, started = b"", time.monotonic()
        while time.monotonic() - started < wait:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                if b'"type":"done"' in data:
                    break
                continue
            except ConnectionResetError:
                break
            if not piece:
                break
            data += piece
    return ws_messages(data)


async def quic_streams(target: Target, source: str, *streams: bytes) -> list[list[Any]]:
    """Each of ``streams`` on a session stream of one QUIC connection; the frames each got back."""
    async with quic_peer(target, source) as raw:
        collectors = [raw.open(data, end=True) for data in streams]
        for index, collector in enumerate(collectors):
            try:  # generous: 200 KB over QUIC on a loaded machine can meet loss recovery's back-off
                await asyncio.wait_for(collector.ended.wait(), 20)
            except TimeoutError:
                raise AssertionError(f"stream {index} did not end: {bytes(collector.data[:300])!r}") from None
        return [collector.frames() for collector in collectors]


def codes(frames: list[Any]) -> list[str]:
    return [frame.code for frame in frames if isinstance(frame, m.Error)]


def done(frames: list[Any]) -> bool:
    return any(isinstance(frame, m.Done) for frame in frames)


# -- deeply nested JSON -------------------------------------------------------------------------------------------


def test_json_nested_100000_deep_is_refused_on_every_transport(gateway):
    source = attacker()
    http_cases = [
        ("/v1/gtl", DEEP),
        ("/v1/gtl", gtl_request(metadata=DEEP.decode())),
        ("/v1/gtl/sse", gtl_request(metadata=DEEP_OBJECT.decode())),
        ("/v1/gtl/query", b'{"type":"query","query_id":"q","name":"usage","params":' + DEEP_OBJECT + b"}"),
        ("/v1/chat/completions", b'{"model":"echo","messages":[],"metadata":' + DEEP + b"}"),
        ("/v1/messages", b'{"model":"echo","max_tokens":5,"messages":' + DEEP + b"}"),
    ]

    def over_http() -> None:
        for _ in range(ROUNDS):
            for path, body in http_cases:
                status, answer, took = post(gateway, source, path, body)
                assert status == 400 and b"deeper than 64" in answer, (path, answer[:300])
                assert took < 5

    def over_ws() -> None:
        for _ in range(ROUNDS):
            frames = ws_exchange(gateway, source, ws_frame(gtl_request("deep", metadata=DEEP.decode())),
                                 ws_frame(DEEP), ws_frame(gtl_request("after")))  # fmt: skip
            errors = gtl_errors(frames)
            assert [e.code for e in errors if e.session_id == "deep"] == ["INVALID_REQUEST"]
            assert any(b'"type":"done","session_id":"after"' in payload for _, payload in frames)

    def over_grpc() -> None:
        deep_metadata = pb.CompletionRequest(session_id="g", model="echo", metadata_json=DEEP.decode())
        for _ in range(ROUNDS):
            for data in (deep_metadata.SerializeToString(), b"\x0b" * 100_000 + b"\x0c" * 100_000):
                refused = grpc_call(gateway, COMPLETE, data)
                assert isinstance(refused, grpc.RpcError), refused
                assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert refused.details().startswith("INVALID_REQUEST: ")

    def over_quic() -> None:
        deep = gtl_request("deep", metadata=DEEP.decode()) + b"\n"
        for _ in range(ROUNDS):
            refused, after = asyncio.run(quic_streams(gateway, source, deep, quic_frame(_echo("after"))))
            assert codes(refused) == ["INVALID_REQUEST"] and done(after)

    with RssWatch(gateway) as memory, Attack(over_http, over_ws, over_grpc, over_quic) as attack:
        assert_serves(gateway)
        attack.join()
    memory.assert_bounded()


def _echo(session_id: str, content: str = "hi", model: str = "echo") -> m.CompletionRequest:
    return m.CompletionRequest(session_id=session_id, model=model, messages=[m.Message(role="user", content=content)])


# -- invalid UTF-8 ------------------------------------------------------------------------------------------------


def test_invalid_utf8_is_refused_on_every_transport_and_logs_no_traceback(gateway):
    source = attacker()
    # a byte that starts nothing, an overlong form, a UTF-16 surrogate, a code point beyond U+10FFFF
    invalid = [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]

    def over_http() -> None:
        for raw in invalid:
            body = gtl_request(content="x").replace(b'"x"', b'"' + raw + b'"')
            for path in ("/v1/gtl", "/v1/gtl/sse", "/v1/chat/completions", "/v1/messages"):
                status, answer, _ = post(gateway, source, path, body)
                assert status == 400, (path, answer[:300])
            with dial(gateway, source) as sock:  # in the request line
                sock.sendall(b"GET /v1/gtl/" + raw + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                assert wait_closed(sock, 5).status == 400
            # in a header: not a token the gateway accepts ("none" accepts any), never a server error
            bearer = "authorization: Bearer x" + raw.decode("latin-1")
            head = http_request("POST", "/v1/gtl", gtl_request(), bearer, "connection: close")
            with dial(gateway, source) as sock:
                sock.sendall(head.replace(raw.decode("latin-1").encode(), raw))
                status = wait_closed(sock, 5).status
            assert status is not None and status < 500

    def over_ws() -> None:
        for raw in invalid:
            with ws_upgrade(gateway, source) as sock:  # a text message that is not UTF-8: closed 1007
                sock.sendall(ws_hello() + ws_frame(gtl_request(content="x").replace(b'"x"', b'"' + raw + b'"')))
                closed = wait_closed(sock, 15)
            assert closed.how != "open" and close_code(ws_messages(closed.data)) in (1007, None)
            frames = ws_exchange(gateway, source, ws_frame(b"\xff" + raw, opcode=2), ws_frame(gtl_request("after")))
            # binary garbage: one bad frame naming no session (counted, not answered); the connection carries on
            assert gtl_errors(frames) == [] and any(b'"type":"done"' in payload for _, payload in frames)

    def over_grpc() -> None:
        good = to_proto(_echo("g")).SerializeToString()
        for raw in invalid:
            refused = grpc_call(gateway, COMPLETE, good + b"\x12" + bytes([len(raw)]) + raw)  # model: not UTF-8
            assert isinstance(refused, grpc.RpcError) and refused.code() is grpc.StatusCode.INVALID_ARGUMENT

    def over_quic() -> None:
        for raw in invalid:
            bad = gtl_request("bad", content="x").replace(b'"x"', b'"' + raw + b'"') + b"\n"
            refused, after = asyncio.run(quic_streams(gateway, source, bad, quic_frame(_echo("after"))))
            assert codes(refused) == ["INVALID_REQUEST"] and done(after)

    with RssWatch(gateway) as memory, Attack(over_http, over_ws, over_grpc, over_quic) as attack:
        assert_serves(gateway)
        attack.join()
    memory.assert_bounded()
    # uvicorn logged a traceback for each such WebSocket message: a client could fill the log with them
    assert "Traceback" not in gateway.output() and "Invalid UTF-8 sequence" not in gateway.output()


# -- oversized frames and bodies ------------------------------------------------------------------------------------


def test_oversized_frames_and_bodies_are_refused_without_being_held(gateway):
    source = attacker()

    def endless_body(path: str) -> int | None:
        """A chunked body that never ends: refused once it passes the limit, never read whole, and the
        connection closed at once (not kept reading the rest until the request's deadline)."""
        with dial(gateway, source) as sock:
            sock.sendall(http_request("POST", path, b"", "transfer-encoding: chunked", length=False))
            chunk = b"8000\r\n" + b" " * 0x8000 + b"\r\n"
            try:
                for _ in range(4 * MAX_FRAME // 0x8000):
                    sock.sendall(chunk)
            except OSError:
                pass  # the gateway answered and closed while this was still sending
            closed = wait_closed(sock, 10)
        assert closed.how != "open" and closed.after < 3, (path, closed)
        return closed.status

    def over_http() -> None:
        for path in ("/v1/gtl", "/v1/gtl/sse", "/v1/gtl/query", "/v1/chat/completions", "/v1/messages"):
            assert endless_body(path) in (400, 413), path
        with dial(gateway, source) as sock:  # a length far beyond it: refused before any byte of the body
            sock.sendall(http_request("POST", "/v1/gtl", b"", f"content-length: {10**12}", length=False))
            assert wait_closed(sock, 5).status == 413
        with dial(gateway, source) as sock:  # a head of 1 MiB (64 KiB is the limit, checked per read)
            try:
                sock.sendall(http_request("GET", "/healthz", b"", "x-padding: " + "a" * (1 << 20)))
            except OSError:
                pass  # refused while this was still sending
            assert wait_closed(sock, 5).status in (400, 431)

    def over_ws() -> None:
        frames = ws_exchange(gateway, source, ws_frame(gtl_request("big", content="y" * MAX_FRAME)),
                             ws_frame(gtl_request("after")))  # fmt: skip
        assert [e.code for e in gtl_errors(frames) if e.session_id == "big"] == ["INVALID_REQUEST"]
        assert any(b'"session_id":"after"' in payload and b'"done"' in payload for _, payload in frames)
        with ws_upgrade(gateway, source) as sock:  # beyond what the WebSocket takes: closed 1009
            sock.sendall(ws_hello() + ws_frame(b" " * (MAX_FRAME + 4096)))
            closed = wait_closed(sock, 15)
        assert close_code(ws_messages(closed.data)) == 1009

    def over_grpc() -> None:
        within_slack = to_proto(_echo("g", content="z" * (MAX_FRAME + 8 * 1024))).SerializeToString()
        beyond = to_proto(_echo("g", content="z" * (4 * MAX_FRAME))).SerializeToString()
        for data in (within_slack, beyond):
            refused = grpc_call(gateway, COMPLETE, data)
            assert isinstance(refused, grpc.RpcError) and refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    def over_quic() -> None:
        oversized = b'{"type":"completion_request","session_id":"big","pad":"' + b"a" * (2 * MAX_FRAME)
        refused, after = asyncio.run(quic_streams(gateway, source, oversized, quic_frame(_echo("after"))))
        assert codes(refused) == ["INVALID_REQUEST"] and done(after)

    many = [lambda: endless_body("/v1/gtl") for _ in range(20)]  # twenty at once: 20 x 1 MiB offered
    with RssWatch(gateway) as memory, Attack(over_http, over_ws, over_grpc, over_quic, *many) as attack:
        assert_serves(gateway)
        results = attack.join()
    assert results[4:] == [413] * 20
    memory.assert_bounded(100 * 1024)


# -- garbage ----------------------------------------------------------------------------------------------------------


def test_garbage_bytes_on_every_port_are_dropped(gateway):
    source = attacker()

    def over_tcp() -> None:
        for transport, answers in (("http", (400, 408)), ("grpc", (None,))):
            for garbage in (os.urandom(4096), bytes(range(256)) * 8, b"\x16\x03\x01\x02\x00" + os.urandom(512)):
                with dial(gateway, source, transport) as sock:
                    sock.sendall(garbage)
                    closed = wait_closed(sock, 5)
                assert closed.how != "open" and closed.after < 3, transport
                assert closed.status in answers  # HTTP: 400, or 408 at header_timeout when no line ever ends

    def over_udp() -> None:
        host, port = gateway.address("quic")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            for i in range(3000):
                if i % 3 == 0:  # a QUIC v1 Initial's header, random connection ids, random (undecryptable) body
                    head = b"\xc3\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00\x44\xb0"
                    datagram = head + os.urandom(1200)
                else:
                    datagram = os.urandom(1 + i % 1400)
                sock.sendto(datagram, (host, port))
                if i % 100 == 0:
                    time.sleep(0.01)  # paced so that most reach the gateway rather than a full socket buffer

    with RssWatch(gateway) as memory, Attack(over_tcp, over_udp) as attack:
        assert_serves(gateway)
        attack.join()
        assert_serves(gateway, ("quic",))
    # before QUIC's address validation (retry) each forged Initial held a connection (~80 KB) for a second
    memory.assert_bounded(40 * 1024)


def test_a_websocket_message_of_bad_lines_ends_its_connection_at_its_third(gateway):
    """One text message, a hello then 120,000 lines of junk (just under the frame limit): the connection is
    closed at its third bad frame. The lines after it are not decoded — each one decoded made an error of
    its own, ~20 µs and a traceback each: a 2 MB message held a core for 20 s and grew the gateway by
    gigabytes before its hello could be read."""
    source = attacker()
    junk = GTLConnection("client").data_to_send() + b"x\n" * 120_000
    assert len(junk) < MAX_FRAME

    def flood() -> list[float]:
        took = []
        for _ in range(5):
            with ws_upgrade(gateway, source) as sock:
                sock.settimeout(0.1)
                started, data = time.monotonic(), b""
                sock.sendall(ws_frame(junk))
                while close_code(ws_messages(data)) is None and time.monotonic() - started < 10:
                    with contextlib.suppress(TimeoutError):
                        piece = sock.recv(65536)
                        if not piece:
                            break
                        data += piece
                took.append(time.monotonic() - started)
            frames = ws_messages(data)
            assert close_code(frames) is not None, data[:200]
            assert any("3 bad frames" in error.message for error in gtl_errors(frames)), frames[:3]
        return took

    with RssWatch(gateway) as memory, Attack(flood) as attack:
        assert_serves(gateway, ("ws",))
        attack.join()
    assert max(attack.results[0]) < 2, attack.results  # (before: ~2.5 s a message of this size, on a quiet machine)
    memory.assert_bounded(40 * 1024)


# -- gRPC's length-prefixed framing, as raw HTTP/2 --------------------------------------------------------------------


@st.composite
def grpc_bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    """``(DATA payload, whether it is one well-formed message)``: a request whose 5-byte prefix or payload
    may be broken (compressed flag without an encoding, a length that lies, cut short, two messages)."""
    request = to_proto(_echo("raw")).SerializeToString()
    payload = draw(st.sampled_from([request, b"", os.urandom(40), request[: len(request) // 2]]))
    flag = draw(st.sampled_from([0, 0, 1, 2, 255]))
    length = len(payload) + draw(st.sampled_from([0, 0, -1, 1, 1 << 20, (1 << 32) - 1 - len(payload)]))
    length = max(0, length)
    data = grpc_message(payload, flag=flag, length=length)
    data = draw(st.sampled_from([data, data[: draw(st.integers(0, len(data)))], data + data]))
    good = flag == 0 and data == grpc_message(request)
    return data, good


def test_a_grpc_call_reset_in_the_burst_that_sent_it_runs_no_session_to_its_end(gateway):
    """Calls begun, then each one's request (END_STREAM) and RST_STREAM(CANCEL) written together: no session
    runs to its end for a client that is gone — 17 of 20 did (the provider paid, the row ``ok``), the reset
    coming before the handler's task could be cancelled for it. Each ends ``cancelled``."""
    calls = range(1, 2 * 12, 2)  # twelve streams: under the connection's cap of sessions
    heads = b"".join(h2_headers(stream, COMPLETE) for stream in calls)
    burst = b""
    for stream in calls:
        request = to_proto(_echo(f"reset-burst-{stream}", LONG_PROMPT, model="paced:echo")).SerializeToString()
        burst += h2_frame(0, 1, stream, grpc_message(request))
        burst += h2_frame(3, 0, stream, struct.pack("!I", 8))  # RST_STREAM(CANCEL)
    with dial(gateway, attacker(), "grpc") as sock:
        sock.sendall(H2_PREFACE + h2_frame(4, 0, 0) + h2_frame(4, 1, 0) + heads)  # (its SETTINGS acked unread)
        time.sleep(0.3)  # the calls' handlers wait for their requests
        sock.sendall(burst)
        sock.settimeout(0.2)
        until = time.monotonic() + 7  # a paced answer of the long prompt takes ~6 s: one not cancelled is ok by then
        while time.monotonic() < until:  # the connection stays open meanwhile: only the streams were reset
            with contextlib.suppress(TimeoutError):
                if not sock.recv(65536):
                    break
    for _ in range(20):
        statuses = [row["status"] for row in gateway.rows() if row["session_id"].startswith("reset-burst-")]
        if "started" not in statuses:
            break
        time.sleep(0.5)
    assert statuses and set(statuses) == {"cancelled"}, statuses
    assert_serves(gateway, ("grpc",))


def test_a_bad_frame_after_a_quic_request_ends_its_session_as_its_ledger_row_says(gateway):
    """A session stream carrying a request, then a line that is no frame: the client was told INVALID_REQUEST
    while the session ran on — its row ``ok`` (paid, an answer the client never got) or ``cancelled``. The
    session is ended now with ``INVALID_REQUEST``, its row too, as on WebSocket and gRPC; an answer already
    whole is delivered, as its row says."""

    async def main() -> dict[str, list[Any]]:
        seen = {}
        async with quic_peer(gateway, attacker()) as raw:
            for session_id, model in (("quic-then-junk-fast", "echo"), ("quic-then-junk-slow", "paced:echo")):
                stream = raw.open(quic_frame(_echo(session_id, LONG_PROMPT, model=model)) + b"not json\n")
                await asyncio.wait_for(stream.ended.wait(), 10)
                seen[session_id] = stream.frames()
            # at the connection's cap of sessions: a request refused with its row, then junk — the refusal ends it
            running = [raw.open(quic_frame(_echo(f"quic-cap-{n}", LONG_PROMPT, model="paced:echo"))) for n in range(16)]
            await asyncio.gather(*(s.wait_for(lambda s=s: b'"type":"token"' in s.data) for s in running))
            stream = raw.open(quic_frame(_echo("quic-refused-then-junk", "hi")) + b"not json\n")
            await asyncio.wait_for(stream.ended.wait(), 10)
            seen["quic-refused-then-junk"] = stream.frames()
        return seen

    for session_id, frames in asyncio.run(main()).items():
        end = frames[-1]
        for _ in range(50):  # (the gateway's ledger commits in groups: the row comes within a moment)
            rows = [row for row in gateway.rows() if row["session_id"] == session_id]
            if rows and rows[0]["status"] != "started":
                break
            time.sleep(0.1)
        assert len(rows) == 1 and [type(f).__name__ for f in frames].count(type(end).__name__) == 1, (rows, frames)
        if isinstance(end, m.Done):
            assert rows[0]["status"] == "ok", (rows, end)
        elif session_id == "quic-refused-then-junk":
            assert (rows[0]["status"], rows[0]["error_code"], end.code) == ("error", "OVERLOADED", "OVERLOADED")
        else:
            ended = (rows[0]["status"], rows[0]["error_code"], end.code)
            assert ended == ("error", "INVALID_REQUEST", "INVALID_REQUEST"), (rows, end)
    assert_serves(gateway, ("quic",))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grpc_bodies())
def test_broken_grpc_length_prefixed_frames_end_their_call_with_a_status(gateway, body):
    data, good = body
    outcome = h2_call(gateway, "127.0.0.250", h2_headers(1, COMPLETE) + h2_frame(0, 1, 1, data), limit=10)
    assert outcome.after < 5
    assert outcome.reset or outcome.status is not None  # never left unanswered
    if good:
        assert outcome.status == 0
    assert gateway.process.running


def test_a_compressed_grpc_message_that_inflates_beyond_the_limit_is_refused(gateway):
    bomb = gzip.compress(b"\x00" * (256 << 20))  # 250 KB that inflates to 256 MiB
    frames = h2_headers(1, COMPLETE, ("grpc-encoding", "gzip"))
    frames += b"".join(h2_frame(0, 0, 1, piece) for piece in _pieces(grpc_message(bomb, flag=1)))
    frames += h2_frame(0, 1, 1)
    with RssWatch(gateway) as memory:
        outcome = h2_call(gateway, attacker(), frames)
        assert_serves(gateway, ("grpc",))
    assert outcome.reset or outcome.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    memory.assert_bounded(64 * 1024)


def _pieces(data: bytes, size: int = 16 * 1024) -> list[bytes]:
    """``data`` cut to HTTP/2's default largest frame."""
    return [data[at : at + size] for at in range(0, len(data), size)]


def test_the_raw_http2_client_here_reads_a_good_call(gateway):
    """Guards the helpers above: a well-formed raw call is answered OK (status 0)."""
    payload = to_proto(_echo("raw")).SerializeToString()
    outcome = h2_call(gateway, "127.0.0.250", h2_headers(1, COMPLETE) + h2_frame(0, 1, 1, grpc_message(payload)))
    assert outcome.status == 0 and not outcome.reset
    assert struct.unpack("!I", h2_frame(0, 0, 1, b"abc")[:4])[0] >> 8 == 3
