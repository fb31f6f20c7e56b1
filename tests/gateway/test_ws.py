"""The gateway over a WebSocket: many sessions on one socket through ``connect("ws://...")``."""

from __future__ import annotations

import pytest

import gtl_nb
from gtl_nb.protocol import AuthenticationError, Token
from tests.gateway.conftest import LONG_PROMPT, MODEL
from tests.gateway.test_http import gateway
from tests.ledger_wait import rows_when


def test_sessions_over_one_websocket(base_config):
    with gateway(base_config) as url, gtl_nb.connect(url.replace("http://", "ws://")) as client:
        assert client.complete("echo", "Hello over a socket").text.count("Hello over a socket") == 1
        tokens = [event.text for event in client.stream(f"openai:{MODEL}", "Say something") if isinstance(event, Token)]
        assert len(tokens) > 1
        results = client.batch([f"item {i}" for i in range(6)], model="echo", progress=False)
        assert all(result.text for result in results)
        with pytest.raises(AuthenticationError):
            client.complete(f"badkey:{MODEL}", "refused")


def test_a_bad_dev_token_is_refused_and_a_cancel_leaves_a_cancelled_row(write_config, tmp_path):
    ledger = tmp_path / "rows.sqlite"
    with gateway(write_config(ledger=ledger), token="right-token") as url:
        address = url.replace("http://", "ws://")
        with pytest.raises(AuthenticationError):
            gtl_nb.connect(address, token="wrong")
        with gtl_nb.connect(address, token="right-token") as client:
            stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
            for event in stream:
                if isinstance(event, Token):
                    break
            stream.close()
            sid = stream.session_id
    assert [row["status"] for row in rows_when(ledger, session_id=sid)] == ["cancelled"]


@pytest.mark.parametrize("offered", [True, False])
def test_frames_share_a_message_only_with_a_client_that_offered_gtl_ndjson(base_config, offered):
    """A client that offers the ``gtl.ndjson`` subprotocol may get several newline-separated frames in
    one message (a provider read's events together); any other client gets exactly one per message."""
    import json

    from websockets.sync.client import connect as ws_connect

    from gtl_nb.transports.messages import NDJSON_SUBPROTOCOL

    with (
        gateway(base_config) as url,
        ws_connect(
            url.replace("http://", "ws://") + "/v1/gtl/ws", subprotocols=[NDJSON_SUBPROTOCOL] if offered else None
        ) as socket_,
    ):
        assert socket_.subprotocol == (NDJSON_SUBPROTOCOL if offered else None)
        socket_.send(json.dumps({"type": "hello", "versions": ["1.0"]}))
        request = {"type": "completion_request", "session_id": "s1", "model": f"openai:{MODEL}", "stream": True}
        socket_.send(json.dumps({**request, "messages": [{"role": "user", "content": "Say something"}]}))
        messages: list[str] = []
        while not messages or json.loads(messages[-1].split("\n")[-1])["type"] not in ("done", "error"):
            messages.append(socket_.recv(timeout=30))
    frames = [json.loads(line) for message in messages for line in message.split("\n")]
    kinds = [frame["type"] for frame in frames]
    assert kinds[0] == "hello" and kinds[-1] == "done" and kinds.count("token") > 1
    assert "".join(frame["text"] for frame in frames if frame["type"] == "token")
    if offered:
        assert len(messages) < len(frames)  # the simulator's chunks arrive together: their frames share messages
    else:
        assert all("\n" not in message for message in messages)


def test_joined_frames_fit_a_gateway_whose_frame_limit_is_small(write_config):
    """The client joins the requests it sends as well: a message of several frames, each within a small
    ``max_frame_bytes``, is read frame by frame — the socket's message limit is at least a joined
    message's, and the per-frame limit still holds."""
    config = write_config(gateway={"max_frame_bytes": 8192})
    with gateway(config) as url, gtl_nb.connect(url.replace("http://", "ws://")) as client:
        prompts = [f"{'x' * 3000} {i}" for i in range(12)]  # ~3 KB frames, sent in the same loop turns
        results = client.batch(prompts, model="echo", progress=False)
        assert all(isinstance(result, gtl_nb.Completion) for result in results), results[:2]
        with pytest.raises(gtl_nb.GTLError, match="frame"):
            client.complete("echo", "y" * 9000)  # one frame over the limit: that session ends, not the socket
        assert client.complete("echo", "still here").text


def test_a_pretty_printed_frame_over_a_mebibyte_is_one_frame(write_config):
    """A text message that is one JSON value is one frame however it is broken into lines, up to the
    frame limit (``max_frame_bytes``, 8 MiB), not only up to the 1 MiB checked on the event loop: a
    pretty-printed request with a long document in it is served, and the request behind it too."""
    import json

    from websockets.sync.client import connect as ws_connect

    from gtl_nb.transports.messages import PRETTY_BYTES

    document = "word " * (PRETTY_BYTES * 3 // 10)  # ~1.5 MiB of prompt
    big = {"type": "completion_request", "session_id": "big", "model": "echo", "max_tokens": 5}
    big["messages"] = [{"role": "user", "content": document}]
    pretty = json.dumps(big, indent=2)
    assert PRETTY_BYTES < len(pretty) < 8 * 1024 * 1024 and pretty.count("\n") > 5
    small = {**big, "session_id": "after", "messages": [{"role": "user", "content": "after"}]}
    config = write_config(gateway={"max_frame_bytes": 8 * 1024 * 1024})  # the documented default
    with gateway(config) as url, ws_connect(url.replace("http://", "ws://") + "/v1/gtl/ws", max_size=None) as ws:
        ws.send(pretty)
        ws.send(json.dumps(small, indent=2))
        ends: dict[str, str] = {}
        while len(ends) < 2:
            frame = json.loads(ws.recv(timeout=60))
            assert frame.get("session_id"), frame  # nothing ended the connection
            if frame["type"] in ("done", "error"):
                ends[frame["session_id"]] = frame["type"] if frame["type"] == "done" else frame["message"]
    assert ends == {"big": "done", "after": "done"}


@pytest.mark.parametrize(
    ("first", "code"),
    [("this is not JSON", 1008), ('{"type": "hello", "versions": ["9.9"]}', 1008)],
)
def test_a_connection_ended_for_a_refused_frame_closes_with_a_close_code_that_says_so(base_config, first, code):
    """The gateway's connection-level ``error`` for a frame it refuses is followed by a close that is not
    ``1000`` (OK): ``1008`` (policy violation), as RFC 6455 gives an endpoint ending for a message it refuses."""
    import json

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    with gateway(base_config) as url, ws_connect(url.replace("http://", "ws://") + "/v1/gtl/ws") as ws:
        ws.send(first)
        said = []
        with pytest.raises(ConnectionClosed):
            while True:
                said.append(json.loads(ws.recv(timeout=30)))
        assert said and said[-1]["type"] == "error" and said[-1]["session_id"] == ""
        assert ws.close_code == code


@pytest.mark.parametrize("padding", [10_000, 70 * 1024])
def test_an_upgrades_head_is_held_to_the_listeners_one_limit(base_config, padding):
    """A WebSocket upgrade's head is bounded as ``POST /v1/gtl``'s is (``MAX_HEAD_BYTES``, 64 KiB): a 10 KB
    header line (a proxy's cookies, trace headers) is taken — websockets' own 8 KiB line limit answered a
    plain-text 431 — and a head over the limit gets the listener's 431 with a GTL error body."""
    import base64
    import json
    import os
    import socket

    from gtl_nb.gateway.http import MAX_HEAD_BYTES

    def answer(host: str, port: int, head: bytes) -> bytes:
        with socket.create_connection((host, port), timeout=30) as conn:
            conn.sendall(head)
            data = b""
            while b"\r\n\r\n" not in data or (not data.startswith(b"HTTP/1.1 101") and not data.endswith(b"}\n")):
                piece = conn.recv(65536)
                if not piece:
                    break
                data += piece
            return data

    with gateway(base_config) as url:
        host, _, port = url.removeprefix("http://").partition(":")
        key = base64.b64encode(os.urandom(16))
        head = (
            b"GET /v1/gtl/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
            b"X-Padding: " + b"a" * padding + b"\r\n\r\n"
        )
        data = answer(host, int(port), head)
    status = data.split(b"\r\n", 1)[0]
    if len(head) <= MAX_HEAD_BYTES:
        assert status.startswith(b"HTTP/1.1 101"), data[:300]
    else:
        assert status.startswith(b"HTTP/1.1 431"), data[:300]
        error = json.loads(data.partition(b"\r\n\r\n")[2].strip().splitlines()[-1])
        assert error["type"] == "error" and "head" in error["message"]


def test_a_connection_that_sends_no_hello_in_time_closes_saying_try_again(base_config):
    """The hello deadline ends a connection with a retryable error; its close says so (1013, try again
    later), not 1000 (OK)."""
    import json

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    from gtl_nb.gateway.listeners import Limits

    with (
        gateway(base_config, limits=Limits(header_timeout=0.5)) as url,
        ws_connect(url.replace("http://", "ws://") + "/v1/gtl/ws") as ws,
    ):
        said = []
        with pytest.raises(ConnectionClosed):
            while True:
                said.append(json.loads(ws.recv(timeout=30)))
        assert said and said[-1]["code"] == "PROVIDER_UNAVAILABLE" and "no hello" in said[-1]["message"]
        assert ws.close_code == 1013
