"""HTTP and SSE: a caller that cancels while the gateway's refusal is on its way hears the refusal the
gateway recorded, as WebSocket, gRPC and QUIC callers do (their client waits for the server's end).

A relay between the client and a real gateway holds the gateway's bytes back. A request the gateway
refuses — a ``RATE_LIMIT`` of a user whose budget allows none (its ``200`` stream's ``error``), a cap's
``OVERLOADED`` (a ``429``) — is recorded in the ledger while the client has heard nothing; the caller then
closes its stream, and the relay lets the answer through. The caller's last event and the ledger row say
the same: the refusal. A session that runs when it is cancelled still ends ``CANCELLED`` on both sides.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol import Error, Token
from tests.gateway.conftest import jwt_echo_gateway

WAIT = 30.0  # a bound for polling, never a timing assertion
LIMITED = "flooder"
SCOPES = ("chat:write", "models:read", "session:write")


class HoldingRelay:
    """A loopback TCP relay to ``port`` whose gateway-to-client bytes wait while ``passing`` is clear."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.passing = threading.Event()
        self.passing.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            gateway = socket.create_connection(("127.0.0.1", self.port))
            self._open += [client, gateway]
            threading.Thread(target=self._pump, args=(client, gateway, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(gateway, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, held: bool) -> None:
        try:
            while data := source.recv(65536):
                if held:
                    self.passing.wait(WAIT)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.passing.set()
        self._listener.close()
        for end in self._open:
            end.close()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalGateway, Any, Path, HoldingRelay]]:
    """The gateway (each principal runs one session at once; ``flooder`` may send none), ``mint``, its
    ledger's path and a relay in front of its HTTP listener."""
    more = {
        "providers.slowecho": {"type": "echo", "options": {"pace": 0.1}},
        "budgets": {"users": {LIMITED: {"requests_per_minute": 0}}},
        "gateway": {"auth": "jwt", "max_sessions_per_principal": 1},
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "HTTP_CANCEL_SECRET", more)
    gateway = start_gateway(config)
    relay = HoldingRelay(int(gateway.url("http").rsplit(":", 1)[1]))
    try:
        yield gateway, mint, tmp_path / "ledger.sqlite", relay
    finally:
        relay.close()
        gateway.stop()


def _row(ledger: Path, session_id: str, final: bool = True) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        rows = [row for row in Ledger(ledger).rows() if row["session_id"] == session_id]
        if rows and (not final or rows[0]["status"] != "started"):
            return rows[0]
        assert time.monotonic() < deadline, f"no {'final ' if final else ''}row for {session_id}"
        time.sleep(0.02)


def _release_soon(relay: HoldingRelay) -> threading.Thread:
    """Let the held bytes through once the caller is cancelling (its close() is under way)."""
    thread = threading.Thread(target=lambda: (time.sleep(0.2), relay.passing.set()), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("scheme", ["http", "sse"])
def test_a_cancel_while_a_rate_limit_is_on_its_way_reports_the_rate_limit(scheme, served):
    _, mint, ledger, relay = served
    client = gtl_nb.connect(f"{scheme}://{relay.address}", token=mint(*SCOPES, subject=LIMITED))
    try:
        relay.passing.clear()
        stream = client.stream("echo", "refuse me", session_id=f"refused-{scheme}")
        reader = threading.Thread(target=lambda: next(iter(stream), None), daemon=True)
        reader.start()  # the request goes out; its answer stays in the relay
        row = _row(ledger, f"refused-{scheme}")
        assert (row["status"], row["error_code"]) == ("error", "RATE_LIMIT")
        releasing = _release_soon(relay)
        stream.close()
        reader.join(WAIT)
        releasing.join(WAIT)
        end = stream.transcript.events[-1]
    finally:
        relay.passing.set()
        client.close()
    assert isinstance(end, Error) and end.code == "RATE_LIMIT", end


@pytest.mark.parametrize("scheme", ["http", "sse"])
def test_a_cancel_while_a_caps_refusal_is_on_its_way_reports_the_refusal(scheme, served):
    """The cap's ``429`` needs no ``cancel`` query: the answer's status is the gateway's end (so a token
    without ``session:write`` hears it too)."""
    gateway, mint, ledger, relay = served
    holder = gtl_nb.connect(gateway.url("http"), token=mint("chat:write", "models:read"))
    client = gtl_nb.connect(f"{scheme}://{relay.address}", token=mint("chat:write", "models:read"))
    try:
        running = holder.stream("slowecho:echo", "a long answer " * 50, session_id=f"holding-{scheme}")
        for event in running:  # the principal's one session runs
            if isinstance(event, Token):
                break
        relay.passing.clear()
        stream = client.stream("echo", "one too many", session_id=f"capped-{scheme}")
        reader = threading.Thread(target=lambda: next(iter(stream), None), daemon=True)
        reader.start()
        row = _row(ledger, f"capped-{scheme}")
        assert (row["status"], row["error_code"]) == ("error", "OVERLOADED")
        releasing = _release_soon(relay)
        stream.close()
        reader.join(WAIT)
        releasing.join(WAIT)
        end = stream.transcript.events[-1]
        running.close()
    finally:
        relay.passing.set()
        client.close()
        holder.close()
    assert isinstance(end, Error) and end.code == "OVERLOADED", end


@pytest.mark.parametrize("scheme", ["http", "sse"])
def test_a_cancelled_running_session_ends_cancelled_on_both_sides(scheme, served):
    _, mint, ledger, relay = served
    client = gtl_nb.connect(f"{scheme}://{relay.address}", token=mint(*SCOPES))
    try:
        stream = client.stream("slowecho:echo", "a long answer " * 50, session_id=f"running-{scheme}")
        for event in stream:
            if isinstance(event, Token):
                break
        stream.close()
        end = stream.transcript.events[-1]
        row = _row(ledger, f"running-{scheme}")
    finally:
        client.close()
    assert isinstance(end, Error) and end.code == "CANCELLED", end
    assert (row["status"], row["error_code"]) == ("cancelled", "CANCELLED")


CHAT_ONLY = ("chat:write", "models:read")  # no session:write: the scopes a plain chat token has


@pytest.mark.parametrize("scheme", ["http", "sse"])
def test_a_token_without_session_write_hears_the_rate_limit_that_crossed_its_cancel(scheme, served):
    """The ``cancel`` query of a token without ``session:write`` was refused (``FORBIDDEN``), so the client
    closed the response and told its caller ``CANCELLED`` — though the gateway had refused the request with a
    ``RATE_LIMIT`` inside the ``200`` stream. The token that started a session may ask after it: the caller
    hears the refusal its ledger row says."""
    _, mint, ledger, relay = served
    client = gtl_nb.connect(f"{scheme}://{relay.address}", token=mint(*CHAT_ONLY, subject=LIMITED))
    try:
        relay.passing.clear()
        stream = client.stream("echo", "refuse me", session_id=f"refused-chat-{scheme}")
        reader = threading.Thread(target=lambda: next(iter(stream), None), daemon=True)
        reader.start()  # the request goes out; its answer stays in the relay
        row = _row(ledger, f"refused-chat-{scheme}")
        assert (row["status"], row["error_code"]) == ("error", "RATE_LIMIT")
        releasing = _release_soon(relay)
        stream.close()
        reader.join(WAIT)
        releasing.join(WAIT)
        ends = [event for event in stream.transcript.events if isinstance(event, Error)]
    finally:
        relay.passing.set()
        client.close()
    assert [end.code for end in ends] == ["RATE_LIMIT"], ends


def test_the_token_that_started_a_session_cancels_it_and_no_other_principal_can(served):
    """Without ``session:write``: the token that started a session cancels it (from another client too); another
    principal's token is told no such session runs (with or without the scope), and the session runs on;
    another token of the same principal still needs the scope."""
    from gtl_nb.protocol.errors import InvalidRequestError, PermissionDeniedError

    gateway, mint, ledger, _ = served
    url = gateway.url("http")
    credential = mint(*CHAT_ONLY, subject="starter")
    with (
        gtl_nb.connect(url, token=credential) as owner,
        gtl_nb.connect(url, token=credential) as same_token,
        gtl_nb.connect(url, token=mint(*CHAT_ONLY, subject="stranger")) as stranger,
        gtl_nb.connect(url, token=mint(*SCOPES, subject="stranger")) as stranger_with_scope,
        gtl_nb.connect(url, token=mint(*CHAT_ONLY, subject="starter")) as sibling,
    ):
        stream = owner.stream("slowecho:echo", "a long answer " * 50, session_id="own-token")
        events = iter(stream)
        next(event for event in events if isinstance(event, Token))
        for other in (stranger, stranger_with_scope):
            with pytest.raises(InvalidRequestError, match="no session 'own-token'"):
                other.cancel_session("own-token")
        with pytest.raises(PermissionDeniedError, match="session:write"):
            sibling.cancel_session("own-token")
        assert isinstance(next(events), Token)  # it runs on
        assert same_token.cancel_session("own-token") == 1
        *_, end = events
    assert isinstance(end, Error) and end.code == "CANCELLED", end
    row = _row(ledger, "own-token")
    assert (row["status"], row["error_code"]) == ("cancelled", "CANCELLED")
