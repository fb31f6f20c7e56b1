"""Sessions that a gateway's forced stop ends: the client hears ``CANCELLED`` (as the ledger says), not a
lost connection.

``gtl serve`` takes a first SIGTERM as a graceful stop (running sessions get ``shutdown_grace``) and a
second as "stop now": the listeners are cancelled and every connection is closed at once. A session cut
that way is cancelled by the gateway, so its ledger row says ``cancelled``; the client must read the same,
over WebSocket (the listener closes the socket with 1012 before the session's ``error`` can go out: the
client reads the close code), SSE and gRPC.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import Error, Token
from tests.faults.conftest import LONG_PROMPT, SIM_KEY, gateway_file, ledger_rows, start, token, wait_until


@pytest.mark.parametrize("scheme", ["ws", "sse", "grpc"])
def test_a_forced_stop_ends_running_sessions_with_cancelled(tmp_path: Path, scheme: str):
    paced = sim.serve("openai", api_key=SIM_KEY, pace=0.2)  # an answer takes 15 s
    try:
        tables = {
            "providers.paced": {"type": "openai", "api_key": SIM_KEY, "base_url": paced.base_url},
            "gateway": {"auth": "jwt", "shutdown_grace": 60},
            "gateway.grpc": {"port": 0},
        }
        gateway = start(gateway_file(tmp_path, tables))
        try:
            with gtl_nb.connect(gateway.url(scheme), token=token()) as client:
                stream = iter(client.stream("paced:gpt-4o-mini", LONG_PROMPT))
                assert any(isinstance(event, Token) for event in stream)
                gateway.process.send_signal(signal.SIGTERM)  # graceful: the session may run on for 60 s
                wait_until(
                    lambda: any("shutting down" in line for line in gateway.output),
                    timeout=10,
                    what="the gateway beginning its graceful stop",
                )
                gateway.process.send_signal(signal.SIGTERM)  # the second one: stop now
                *_, last = stream
                session_id = last.session_id
            assert isinstance(last, Error), last
            assert (last.code, last.retryable) == ("CANCELLED", False), last
            assert gateway.process.wait(30) == 0
        finally:
            gateway.kill()
        rows = ledger_rows(tmp_path / "ledger.sqlite", [session_id])
        assert [(row["status"], row["error_code"]) for row in rows] == [("cancelled", "CANCELLED")]
    finally:
        paced.close()
