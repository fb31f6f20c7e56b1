"""The conformance suite's gateway and clients: one scheme at a time, the same scenarios for each.

One gateway process per module (``python -m gtl_nb.gateway --config FILE``) serves the HTTP listener
(``http``, ``sse``, ``ws``), gRPC and QUIC (with a ``gtl certs`` certificate: QUIC is always TLS) on
free loopback ports; ``stdio`` starts its own gateway child per client from the same file. Start-up
is awaited by reading the lines the gateway announces, never by sleeping.

Every scenario compares what a remote client sees with what the embedded client sees for the same
configuration: the user must not be able to tell them apart.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.gateway.certs import make_dev_certificates
from gtl_nb.gateway.local import LocalGateway, start_gateway
from tests.gateway.conftest import SIM_KEY, write_toml

SCHEMES = ("stdio", "http", "sse", "ws", "grpc", "quic")
"""Every transport scheme; each scenario runs once per scheme."""

MULTIPLEXED = ("stdio", "ws", "grpc", "quic")
"""Schemes whose sessions share one connection (HTTP and SSE send one request per session)."""

FRAME_LIMIT = 64 * 1024


@pytest.fixture(scope="package")
def sims() -> Iterator[SimpleNamespace]:
    """``fast`` answers at once, ``slow`` paces its chunks, ``down`` always answers 503."""
    fast = sim.serve("openai", seed=3, api_key=SIM_KEY)
    slow = sim.serve("openai", seed=3, api_key=SIM_KEY, pace=0.05)
    down = sim.serve("openai", seed=3, api_key=SIM_KEY, faults=sim.Fault.http(503))
    limited = sim.serve("openai", seed=3, api_key=SIM_KEY, faults=sim.Fault.http(429, retry_after=7))
    yield SimpleNamespace(fast=fast, slow=slow, down=down, limited=limited)
    for simulator in (fast, slow, down, limited):
        simulator.close()


def providers_of(sims: SimpleNamespace) -> dict[str, dict[str, Any]]:
    def openai(simulator: sim.Simulator, key: str = SIM_KEY) -> dict[str, Any]:
        return {"type": "openai", "api_key": key, "base_url": simulator.base_url}

    return {
        "openai": openai(sims.fast),
        "slow": openai(sims.slow),
        "down": openai(sims.down),
        "limited": openai(sims.limited),
        "badkey": openai(sims.fast, "not-the-key"),
    }


def engine_tables(sims: SimpleNamespace, ledger: Path) -> dict[str, dict[str, Any]]:
    """What the embedded client and the gateway both run: the deployments, no retries and no breaker
    (so failover statuses are the same every run), a ledger."""
    tables: dict[str, dict[str, Any]] = {f"providers.{name}": spec for name, spec in providers_of(sims).items()}
    tables["routing.retry"] = {"max_attempts": 1}
    tables["routing.breaker"] = {"enabled": False}  # each side has seen a different number of failures
    tables["ledger"] = {"path": str(ledger)}
    return tables


@pytest.fixture(scope="package")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_dev_certificates(tmp_path_factory.mktemp("certs"), ["127.0.0.1", "localhost"])


def gateway_config(
    directory: Path, sims: SimpleNamespace, certs: Any, *, ports: dict[str, int] | None = None, **gateway: Any
) -> Path:
    """A gateway file: the engine tables, small frames, and the three listeners (port 0 unless given)."""
    ports = ports or {}
    tables = engine_tables(sims, directory / "ledger.sqlite")
    tables["gateway"] = {"max_frame_bytes": FRAME_LIMIT, **gateway}
    tables["gateway.http"] = {"port": ports.get("http", 0)}
    tables["gateway.grpc"] = {"port": ports.get("grpc", 0)}
    tables["gateway.quic"] = {
        "port": ports.get("quic", 0),
        "tls_cert": str(certs.certificate),
        "tls_key": str(certs.key),
    }
    return write_toml(directory / "gtl.toml", tables)


def start(config: Path, **kwargs: Any) -> LocalGateway:
    """The gateway of ``config`` in a child process, its listeners announced (``LocalGateway``)."""
    return start_gateway(config, http=None, **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, sims: SimpleNamespace, certs: Any) -> Iterator[LocalGateway]:
    """The module's gateway process (its ledger is ``served.config.parent / "ledger.sqlite"``)."""
    gateway = start(gateway_config(tmp_path_factory.mktemp("gateway"), sims, certs))
    yield gateway
    gateway.stop()


def connect_to(scheme: str, served: LocalGateway, certs: Any, **kwargs: Any) -> gtl_nb.Client:
    """A client of ``scheme`` to ``served`` (for ``stdio``: a gateway child reading the same file)."""
    if scheme == "stdio":
        return gtl_nb.connect(f"stdio://{served.config}", **kwargs)
    if scheme == "quic":
        kwargs.setdefault("verify", str(certs.ca))
    return gtl_nb.connect(served.url(scheme), **kwargs)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, sims: SimpleNamespace) -> Iterator[gtl_nb.Client]:
    """The embedded client with the gateway's engine configuration: what every transport must match."""
    tables = engine_tables(sims, tmp_path_factory.mktemp("embedded") / "ledger.sqlite")
    config = write_toml(tmp_path_factory.mktemp("embedded-config") / "gtl.toml", tables)
    client = gtl_nb.connect(config=str(config), environ={})
    yield client
    client.close()


@pytest.fixture
def open_client(served: LocalGateway, certs: Any) -> Iterator[Callable[..., gtl_nb.Client]]:
    """``open_client(scheme, **connect_kwargs)``: a client closed after the test."""
    opened: list[gtl_nb.Client] = []

    def open_(scheme: str, **kwargs: Any) -> gtl_nb.Client:
        opened.append(connect_to(scheme, served, certs, **kwargs))
        return opened[-1]

    yield open_
    for client in opened:
        client.close()


class Relay:
    """A loopback relay (TCP, or UDP for QUIC) between a client and the gateway; ``cut()`` drops every
    connection through it at once — a TCP peer reads the end, a QUIC peer hears nothing more."""

    def __init__(self, target_port: int, *, udp: bool = False) -> None:
        self.target = ("127.0.0.1", target_port)
        self.udp = udp
        self._cut = threading.Event()
        self._sockets: list[socket.socket] = []
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        self._listener = socket.socket(socket.AF_INET, kind)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        if not udp:
            self._listener.listen()
        threading.Thread(target=self._udp_loop if udp else self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._cut.is_set() and (data := source.recv(65536)):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _udp_loop(self) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream.connect(self.target)
        self._sockets.append(upstream)
        client: tuple[str, int] | None = None

        def back() -> None:
            while not self._cut.is_set():
                try:
                    data = upstream.recv(65536)
                except OSError:
                    return
                if client is not None and not self._cut.is_set():
                    self._listener.sendto(data, client)

        threading.Thread(target=back, daemon=True).start()
        while not self._cut.is_set():
            try:
                data, client = self._listener.recvfrom(65536)
            except OSError:
                return
            if not self._cut.is_set():
                upstream.send(data)

    def cut(self) -> None:
        self._cut.set()
        for sock in [self._listener, *self._sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def settled_rows(
    path: Path, keep: Callable[[dict[str, Any]], bool], count: int, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """The rows of ``path`` that ``keep`` selects, once ``count`` of them are there and finished.

    The gateway writes its ledger from a writer thread (group commits, every few ms under load): a
    client holds its answer a moment before the row is on disk for another process to read. Read in
    this process, through the gateway (``client.usage()``), a row is there at once."""
    import time

    from gtl_nb.engine.ledger import Ledger

    deadline = time.monotonic() + timeout
    while True:
        rows = [row for row in Ledger(path).rows() if keep(row)]
        settled = len(rows) >= count and all(row["status"] != "started" for row in rows)
        if settled or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)
