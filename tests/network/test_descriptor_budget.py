"""Idle connections cannot take the gateway's file descriptors (``gateway.connection_budget``).

A gateway started with ``RLIMIT_NOFILE`` lowered to ``DESCRIPTORS`` is flooded with more idle connections
than it has descriptors — HTTP/2 connections to the gRPC listener that send the preface and SETTINGS and
then nothing (gRPC counted only calls), and HTTP connections from several addresses that send nothing. Each
listener holds only its share of ``[gateway] max_connections`` (by default half the descriptors, less a
reserve, split between the HTTP and gRPC listeners); what is beyond it is closed as soon as it is accepted,
the rest when their timeouts pass, and meanwhile a well-behaved client is served.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gtl_nb
from gtl_nb.gateway.connection_budget import listener_share
from gtl_nb.gateway.local import LocalGateway
from tests.gateway.conftest import write_toml
from tests.network.conftest import H2_PREFACE, Target, attacker, h2_frame

DESCRIPTORS = 512
"""The gateway's descriptor limit: the floods below open more connections than that."""
SHARE = listener_share(0, 2, DESCRIPTORS)
"""Connections each of its two TCP listeners may hold (112)."""
FLOOD = 600
TIMEOUT = 8.0
"""The gateway's ``header_timeout`` and ``idle_timeout``: how long a flood holds what it was let keep."""
DURING = 5.0
"""Seconds a new client gets to be served while a flood holds its connections (less than ``TIMEOUT``: a
gateway that stopped accepting until the flood's connections time out does not pass)."""
MARGIN = 3.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    directory = tmp_path_factory.mktemp("descriptor-budget")
    ledger = directory / "ledger.sqlite"
    config = write_toml(
        directory / "gtl.toml",
        {
            "providers.echo": {"type": "echo"},
            "ledger": {"path": str(ledger)},
            "gateway": {"header_timeout": TIMEOUT, "idle_timeout": TIMEOUT, "shutdown_grace": 1.0},
            "gateway.http": {"port": 0},
            "gateway.grpc": {"port": 0},
        },
    )

    def lower_limit() -> None:  # in the child, before the gateway starts
        resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))

    process = subprocess.Popen(
        [sys.executable, "-m", "gtl_nb.gateway", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lower_limit,
    )
    with LocalGateway(process, Path(config)) as running:
        yield Target(running, directory, ledger)


def served(url: str, within: float = 10.0) -> str | None:
    """Whether a new client of ``url`` completes a session within ``within`` seconds: ``None`` if it did,
    else what went wrong (run in a thread of its own, so that a gateway that stopped accepting is noticed)."""
    outcome: list[str | None] = []

    def run() -> None:
        try:
            with gtl_nb.connect(url) as client:
                text = client.complete("echo", "still served").text
            outcome.append(None if "still served" in text else f"answered {text!r}")
        except Exception as exc:  # reported by the test
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    return outcome[0] if outcome else f"no answer within {within} s"


def flood(target: Target, transport: str, hello: bytes, sources: int = 4) -> list[socket.socket]:
    """``FLOOD`` connections to ``transport``'s listener from ``sources`` fresh addresses, each sending
    ``hello`` and then nothing."""
    host, port = target.address(transport)
    addresses = [attacker() for _ in range(sources)]
    sockets = []
    for i in range(FLOOD):
        sock = socket.create_connection((host, port), timeout=5, source_address=(addresses[i % sources], 0))
        if hello:
            try:
                sock.sendall(hello)
            except OSError:  # closed at once: beyond the listener's share
                pass
        sockets.append(sock)
    return sockets


def still_open(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the gateway has not closed (each read without waiting)."""
    count = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            while sock.recv(65536):  # the gateway's SETTINGS, or an answer before its close
                pass
        except BlockingIOError:
            count += 1  # nothing more to read, not closed
        except OSError:
            pass  # reset
    return count


def until(predicate, limit: float) -> float | None:
    """Seconds until ``predicate()`` holds (polled every 0.2 s), or ``None`` if it did not within ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def test_idle_http2_connections_cannot_stop_the_gateway_serving(gateway: Target) -> None:
    with gtl_nb.connect(gateway.url("grpc")) as earlier:  # connected before the flood
        assert "before" in earlier.complete("echo", "before").text
        sockets = flood(gateway, "grpc", H2_PREFACE + h2_frame(4, 0, 0))
        try:
            assert served(gateway.url("http"), DURING) is None  # the HTTP listener still accepts
            assert "during" in earlier.complete("echo", "during").text  # a connection held is still served
            # what is beyond the gRPC listener's share was closed at once
            assert until(lambda: still_open(sockets) <= SHARE, 3.0) is not None, still_open(sockets)
            # the rest, which carry no call, are closed at idle_timeout
            assert until(lambda: still_open(sockets) == 0, TIMEOUT + MARGIN) is not None, still_open(sockets)
        finally:
            close_all(sockets)
    assert served(gateway.url("grpc")) is None
    assert gateway.process.running


def test_idle_http_connections_from_many_addresses_cannot_stop_the_gateway_serving(gateway: Target) -> None:
    sockets = flood(gateway, "http", b"", sources=4)  # 150 an address: under max_connections_per_address
    try:
        assert served(gateway.url("grpc"), DURING) is None  # the gRPC listener still accepts
        assert until(lambda: still_open(sockets) <= SHARE, 3.0) is not None, still_open(sockets)
        # the rest, which sent no request, are cut at header_timeout
        assert until(lambda: still_open(sockets) == 0, TIMEOUT + MARGIN) is not None, still_open(sockets)
    finally:
        close_all(sockets)
    assert served(gateway.url("http")) is None
    assert gateway.process.running
