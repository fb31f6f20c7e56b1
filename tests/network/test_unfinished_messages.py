"""Messages that begin and never end, on real sockets: each is cut within its bound (``gateway.unfinished``),
whatever bytes keep arriving, while well-behaved clients — a fragmented message arriving steadily among
them — are served.

A WebSocket message still arriving never reaches the GTL layer, whose timers count whole frames: before these
bounds, a client holding one open (~``ws_max_size`` of memory) kept its connection until ``idle_timeout``,
and one cut for sending no hello was still read for uvicorn's close wait. An HTTP body sent in a burst and
then stalled kept its request for the time its bytes had earned.
"""

from __future__ import annotations

import json
import time

from tests.network.conftest import (
    HEADER_TIMEOUT,
    MAX_FRAME,
    assert_serves,
    attacker,
    close_code,
    dial,
    gtl_errors,
    http_request,
    wait_closed,
    ws_frame,
    ws_hello,
    ws_messages,
    ws_upgrade,
)
from tests.network.test_gateway_slow_and_idle import MARGIN

BOUND = HEADER_TIMEOUT + MARGIN
"""A stalled message, or a hello not whole in time, is cut within this many seconds."""


def _cut_for(closed, words: str) -> None:
    errors = gtl_errors(ws_messages(closed.data))
    assert errors and words in errors[-1].message, (closed, errors)


def test_a_stalled_fragmented_message_after_hello_is_cut_at_the_header_timeout(gateway):
    with ws_upgrade(gateway, attacker()) as sock:
        sock.sendall(ws_hello() + ws_frame(b" " * 100_000, fin=False) + ws_frame(b" " * 100_000, opcode=0, fin=False))
        started = time.monotonic()
        closed = wait_closed(sock, BOUND + 10)
    assert closed.how != "open" and time.monotonic() - started < BOUND, closed.after
    _cut_for(closed, "stopped arriving")
    assert close_code(ws_messages(closed.data)) == 1008
    assert_serves(gateway, ("ws",))


def test_a_stalled_incomplete_frame_is_cut_at_the_header_timeout(gateway):
    frame = ws_frame(b" " * 200_000)
    with ws_upgrade(gateway, attacker()) as sock:
        sock.sendall(ws_hello() + frame[:150_000])  # the frame's head says 200,000 bytes; 150,000 come
        started = time.monotonic()
        closed = wait_closed(sock, BOUND + 10)
    assert closed.how != "open" and time.monotonic() - started < BOUND, closed.after
    _cut_for(closed, "stopped arriving")


def test_no_hello_is_cut_at_the_header_timeout_even_while_a_message_keeps_arriving(gateway):
    with ws_upgrade(gateway, attacker()) as sock:
        started = time.monotonic()
        sock.sendall(ws_frame(b'{"type":', fin=False))
        closed = None
        received = b""  # every window's bytes: the error may come in one window and the close in the next
        while time.monotonic() - started < BOUND + 10:  # a continuation byte every 0.1 s: never stalled
            try:
                sock.sendall(ws_frame(b" ", opcode=0, fin=False))
            except OSError:
                break
            closed = wait_closed(sock, 0.1)
            received += closed.data
            if closed.how != "open":
                break
    assert closed is not None and closed.how != "open" and time.monotonic() - started < BOUND
    # two deadlines fall due together here — the hello's and the message's, which began with the
    # connection — and whichever the loop runs first cuts it (the other may add its own error)
    said = [error.message for error in gtl_errors(ws_messages(received))]
    assert any("no hello" in text or "did not arrive in time" in text for text in said), (closed, said)


def test_a_message_arriving_steadily_in_fragments_may_take_longer_than_the_header_timeout(gateway):
    request = {
        "type": "completion_request",
        "session_id": "steady",
        "model": "echo",
        "messages": [{"role": "user", "content": "steady " + "x" * 150_000}],
    }
    body = json.dumps(request).encode()
    pieces = [body[i : i + 8_000] for i in range(0, len(body), 8_000)]  # ~53 KiB/s over ~2.8 s
    assert len(pieces) * 0.15 > 2 * HEADER_TIMEOUT and len(body) < MAX_FRAME
    with ws_upgrade(gateway, attacker()) as sock:
        sock.sendall(ws_hello() + ws_frame(pieces[0], fin=False))
        for piece in pieces[1:-1]:
            time.sleep(0.15)  # the client's pace
            sock.sendall(ws_frame(piece, opcode=0, fin=False))
        sock.sendall(ws_frame(pieces[-1], opcode=0))
        data, deadline = b"", time.monotonic() + 10
        sock.settimeout(0.5)
        while b'"type":"done"' not in data and time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                continue
            assert piece, f"the gateway closed the connection: {data[-300:]!r}"
            data += piece
    assert b'"type":"done"' in data and not gtl_errors(ws_messages(data))


def test_an_http_body_sent_at_once_then_stalled_is_cut_at_the_header_timeout(gateway):
    with dial(gateway, attacker()) as sock:
        # 150,000 bytes earn 4.6 s at 32 KiB/s; a stall is cut after header_timeout whatever was earned
        sock.sendall(http_request("POST", "/v1/gtl", b" " * 150_000, "content-length: 200000", length=False))
        started = time.monotonic()
        closed = wait_closed(sock, BOUND + 10)
    assert closed.status == 408 and time.monotonic() - started < BOUND, closed
    assert b"stopped arriving" in closed.data
