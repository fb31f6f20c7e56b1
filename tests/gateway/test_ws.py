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
