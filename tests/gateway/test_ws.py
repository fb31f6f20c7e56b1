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
