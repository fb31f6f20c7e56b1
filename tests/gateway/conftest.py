"""Fixtures of the gateway tests: OpenAI simulators, gateway configuration files, stdio clients, a relay.

Every client here starts a real gateway child process (``python -m gtl_nb.gateway --stdio``) and
speaks frames over its pipes; ``connect`` returns once the hello exchange and the provider list are
through, so no test waits for start-up any other way.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.gateway.certs import DevCertificates, make_dev_certificates
from gtl_nb.protocol.messages import CompletionRequest, Message

SIM_KEY = "sim-key"
MODEL = "gpt-4o-mini"
# a prompt whose simulated answer streams in many pieces (the paced simulator takes seconds for it)
LONG_PROMPT = "Explain streaming, cancellation, pipes, gateways, ledgers and simulators, one by one, at length."


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """Write ``{"providers.openai": {...}, "ledger": {...}}`` as TOML tables."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def jwt_echo_gateway(
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    secret_env: str,
    more: dict[str, dict[str, Any]] | None = None,
) -> tuple[Path, Callable[..., str]]:
    """A GhostToken gateway's configuration in ``directory`` (the echo provider, every deployment open to
    every token, HS256 with a secret in ``secret_env``; ``more`` tables added or replaced), and
    ``mint(*scopes)`` for tokens of ``ann``."""
    from gtl_nb.gateway.tokens.mint import mint_token

    secret = secret_env.lower().ljust(40, "s")
    monkeypatch.setenv(secret_env, secret)
    config = write_toml(
        directory / "gtl.toml",
        {
            "ledger": {"path": str(directory / "ledger.sqlite")},
            "providers.echo": {},
            "gateway": {"auth": "jwt"},
            "gateway.jwt": {"issuer": "gtl-test", "secret_env": secret_env, "default_deployments": ["*"]},
            "gateway.http": {"port": 0},
            **(more or {}),
        },
    )

    def mint(*scopes: str, subject: str = "ann", **claims: Any) -> str:
        return mint_token(secret, subject=subject, scopes=scopes, lifetime=600, issuer="gtl-test", **claims)

    return config, mint


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """A development CA and a server certificate for localhost, 127.0.0.1 and ::1 (TLS and QUIC)."""
    return make_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def sims() -> Iterator[SimpleNamespace]:
    """``fast``: answers at once; ``slow``: 50 ms between streamed chunks (a stream takes seconds)."""
    fast = sim.serve("openai", seed=3, api_key=SIM_KEY)
    slow = sim.serve("openai", seed=3, api_key=SIM_KEY, pace=0.05)
    yield SimpleNamespace(fast=fast, slow=slow)
    fast.close()
    slow.close()


def base_providers(sims: SimpleNamespace) -> dict[str, dict[str, Any]]:
    """``openai`` (fast), ``slow`` (paced) and ``badkey`` (a key the simulator refuses)."""
    return {
        "openai": {"api_key": SIM_KEY, "base_url": sims.fast.base_url},
        "slow": {"type": "openai", "api_key": SIM_KEY, "base_url": sims.slow.base_url},
        "badkey": {"type": "openai", "api_key": "not-the-key", "base_url": sims.fast.base_url},
    }


def gateway_tables(
    providers: dict[str, dict[str, Any]], ledger: Path, gateway: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    tables = {f"providers.{name}": settings for name, settings in providers.items()}
    tables["ledger"] = {"path": str(ledger)}
    tables["gateway"] = {"max_frame_bytes": 64 * 1024, **(gateway or {})}
    return tables


@pytest.fixture(scope="module")
def base_config(tmp_path_factory: pytest.TempPathFactory, sims: SimpleNamespace) -> Path:
    """The shared gateway configuration: the three deployments, a 64 KiB frame limit, its own ledger."""
    directory = tmp_path_factory.mktemp("gateway")
    return write_toml(directory / "gtl.toml", gateway_tables(base_providers(sims), directory / "ledger.sqlite"))


@pytest.fixture(scope="module")
def client(base_config: Path) -> Iterator[gtl_nb.Client]:
    """One stdio client (one gateway process) shared by a module's tests."""
    remote = gtl_nb.connect(f"stdio://{base_config}")
    yield remote
    remote.close()


@pytest.fixture
def write_config(tmp_path: Path, sims: SimpleNamespace) -> Callable[..., Path]:
    """``write_config(providers=, gateway=, ledger=, defaults=)``: a configuration file of this test's own."""

    def write(
        providers: dict[str, dict[str, Any]] | None = None,
        gateway: dict[str, Any] | None = None,
        ledger: Path | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> Path:
        merged = {**base_providers(sims), **(providers or {})}
        tables = gateway_tables(merged, ledger or tmp_path / "ledger.sqlite", gateway)
        if defaults:
            tables["defaults"] = defaults
        return write_toml(tmp_path / "gtl.toml", tables)

    return write


@pytest.fixture
def open_client() -> Iterator[Callable[..., gtl_nb.Client]]:
    """``open_client(config, **connect_kwargs)``: a stdio client closed after the test."""
    opened: list[gtl_nb.Client] = []

    def open_(config: Path, **kwargs: Any) -> gtl_nb.Client:
        remote = gtl_nb.connect(f"stdio://{config}", **kwargs)
        opened.append(remote)
        return remote

    yield open_
    for remote in opened:
        remote.close()


class Relay:
    """A loopback TCP relay in front of a simulator that notices a client hanging up mid-response.

    ``cut`` is set when the client side (the gateway's HTTP pool) closes a connection while the
    upstream response is unfinished: the last bytes from upstream were not a chunked body's end.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._open += [downstream, upstream]
            tail = bytearray()
            threading.Thread(target=self._pump, args=(upstream, downstream, tail, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(downstream, upstream, tail, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, tail: bytearray, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if not from_client:
                    tail[:] = (bytes(tail) + data)[-5:]
                sink.sendall(data)
        except OSError:
            pass
        if from_client and bytes(tail) != b"0\r\n\r\n":
            self.cut.set()
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
        for end in self._open:
            end.close()


@pytest.fixture
def relay_to() -> Iterator[Callable[[sim.Simulator], Relay]]:
    """``relay_to(simulator)``: a ``Relay`` in front of it, closed after the test."""
    relays: list[Relay] = []

    def start(simulator: sim.Simulator) -> Relay:
        relays.append(Relay(simulator.port))
        return relays[-1]

    yield start
    for relay in relays:
        relay.close()


def marked_prompt_twice(prefix: str) -> list[CompletionRequest]:
    """Two requests that mark the same long system prompt (~2,000 tokens) at the ``anthropic`` deployment:
    the first writes it to the provider's prompt cache, the second reads it."""
    document = " ".join(f"Clause {i}: the tide turns at {i % 24} o'clock." for i in range(200))
    marked = Message(role="system", content=document, cache_point=True)
    return [
        CompletionRequest(
            session_id=f"{prefix}{i}",
            model="anthropic:claude-sonnet-4-5",
            messages=[marked, Message(role="user", content="?")],
        )
        for i in range(2)
    ]


def send_body(
    handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "application/json"
) -> None:
    """Answer an in-test fake upstream's request with ``status`` and ``body`` (its length said)."""
    handler.send_response(status)
    handler.send_header("content-type", content_type)
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
