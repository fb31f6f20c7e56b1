"""The listener's budget of bytes held in messages still arriving (``max_unfinished_bytes``,
``gateway.unfinished``), on real sockets: a WebSocket message or an HTTP body that would pass it ends its
connection with a retryable ``OVERLOADED``, while small requests — within each connection's free 64 KiB —
are still served, and the bytes are given back when the holder goes."""

from __future__ import annotations

import base64
import os
import socket
import time

import gtl_nb
from gtl_nb.gateway.listeners import Limits
from tests.gateway.test_http import serving
from tests.network.conftest import close_code, gtl_errors, http_request, wait_closed, ws_frame, ws_hello, ws_messages

FRAME = 1024 * 1024
LIMITS = Limits(max_frame_bytes=FRAME, header_timeout=5.0, idle_timeout=30, max_unfinished_bytes=0)
"""A budget of 0 is raised to one largest message (``ws_max_size``) plus 64 KiB: one message near the
frame limit fits, a second one does not."""
HELD = 900 * 1024


def _upgraded(url: str, *, receive_buffer: int | None = None) -> socket.socket:
    """A raw socket upgraded to a WebSocket at ``url``'s gateway; ``receive_buffer`` sets ``SO_RCVBUF`` first."""
    host, _, port = url.partition("://")[2].rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    headers = ("upgrade: websocket", "connection: upgrade", "sec-websocket-version: 13", f"sec-websocket-key: {key}")
    sock.sendall(http_request("GET", "/v1/gtl/ws", b"", *headers))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def test_a_message_past_the_budget_ends_its_connection_while_small_ones_are_served(base_config):
    with serving(base_config, limits=LIMITS) as served:
        with _upgraded(served.url) as holder:
            holder.sendall(ws_hello() + ws_frame(b" " * HELD, fin=False))  # held, within the budget
            time.sleep(0.3)
            assert wait_closed(holder, 0.3).how == "open"
            with _upgraded(served.url) as second:
                second.sendall(ws_hello() + ws_frame(b" " * HELD, fin=False))
                closed = wait_closed(second, 3)
            assert closed.how != "open", "a second message past the budget was held"
            errors = gtl_errors(ws_messages(closed.data))
            assert errors and errors[-1].code == "OVERLOADED"
            assert close_code(ws_messages(closed.data)) == 1013
            # an HTTP body past the budget: 503, retryable
            host, _, port = served.url.partition("://")[2].rpartition(":")
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(http_request("POST", "/v1/gtl", b" " * HELD, f"content-length: {HELD + 10}", length=False))
                answer = wait_closed(sock, 3)
            assert answer.status == 503 and b'"code":"OVERLOADED"' in answer.data, answer
            # small requests are served meanwhile, over a WebSocket and over HTTP
            with gtl_nb.connect(served.url.replace("http", "ws", 1) + "/v1/gtl/ws") as client:
                assert client.complete("echo", "Say something").text
            with gtl_nb.connect(served.url) as client:
                assert client.complete("echo", "Say something").text
        # the holder gone, its bytes are free again: a large message fits
        time.sleep(0.3)
        with _upgraded(served.url) as third:
            third.sendall(ws_hello() + ws_frame(b" " * HELD, fin=False))
            assert wait_closed(third, 1).how == "open"
