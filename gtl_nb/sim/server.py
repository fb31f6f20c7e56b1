"""The simulator core: a loopback HTTP/1.1 server (standard library only) hosting one provider module.

Each request is parsed into a :class:`SimRequest`, recorded in ``Simulator.requests``, matched with the next
fault of the script, and answered by the provider module. Streamed bodies go out with
``Transfer-Encoding: chunked``, one HTTP chunk per provider chunk, each written straight to the socket (the
handler's write file is unbuffered), with ``pace`` seconds between chunks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gtl_nb.sim.base import (
    DEFAULT_API_KEY,
    DEFAULT_AWS_ACCESS_KEY_ID,
    DEFAULT_AWS_REGION,
    DEFAULT_AWS_SECRET_ACCESS_KEY,
    ProviderSim,
    SimContext,
    SimRequest,
    SimResponse,
    load_provider,
)
from gtl_nb.sim.faults import Fault, FaultsArg, FaultScript

__all__ = ["Simulator", "running", "serve"]

log = logging.getLogger("gtl_nb.sim")


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its open connections so ``close()`` can cut them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # a provider takes many connections at once (socketserver's default is 5)

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client vanishing mid-request (reset, closed by a fault or by close()) is normal here
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def cut_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Dropped(Exception):
    """The fault closed the connection on purpose."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Stream chunks are small writes: without TCP_NODELAY, Nagle's algorithm and the client's
        # delayed ACK hold each one back by up to 40 ms, which real streaming servers avoid too.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.server.sim.provider_name, *args)

    # every method goes through one dispatcher
    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _parse(self) -> SimRequest:
        body = self._read_body()
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            k = key.lower()
            headers[k] = f"{headers[k]}, {value}" if k in headers else value
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        return SimRequest(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            json=parsed,
            raw_path=self.path,
        )

    def _dispatch(self) -> None:
        sim = self.server.sim
        try:
            req = self._parse()
        except (ValueError, OSError):
            self.close_connection = True
            return
        sim.requests.append(req)
        fault = sim.faults.next()
        provider = sim.provider
        try:
            if fault.action == "http":
                status = fault.status if fault.status is not None else int(getattr(provider, "overloaded_status", 503))
                resp = provider.error_response(status, fault.kind or "server_error", fault.retry_after)
            else:
                resp = provider.handle(req, sim.context)
        except Exception:  # a bug in a provider module must not kill the server
            log.exception("simulator %s failed on %s %s", sim.provider_name, req.method, req.path)
            resp = SimResponse(500, {"content-type": "text/plain"}, b"simulator error")
        try:
            self._write(resp, fault, provider)
        except _Dropped:
            self.close_connection = True
        except OSError:  # the client went away
            self.close_connection = True

    # -- writing --------------------------------------------------------------------------------------------

    def _start(self, resp: SimResponse, extra: dict[str, str]) -> None:
        self.send_response(resp.status)
        headers = {k.lower(): v for k, v in resp.headers.items()}
        headers.update(extra)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _drop(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Dropped

    def _write(self, resp: SimResponse, fault: Fault, provider: ProviderSim) -> None:
        sim = self.server.sim
        if resp.chunks is None:
            if fault.action == "slow_first_token":
                sim.wait(fault.seconds)
            body = b"" if self.command == "HEAD" else resp.body
            self._start(resp, {"content-length": str(len(resp.body))})
            if fault.action == "drop":
                self.wfile.write(body[: len(body) // 2])
                self._drop()
            self.wfile.write(body)
            return
        self._start(resp, {"transfer-encoding": "chunked"})
        self._stream(list(resp.chunks), fault, provider)

    def _chunk(self, data: bytes) -> None:
        if data:  # an empty HTTP chunk would end the body
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _inject(self, fault: Fault, provider: ProviderSim) -> bool:
        """Apply a stream fault at its chunk; True when the stream ends there."""
        sim = self.server.sim
        if fault.action == "drop":
            self._drop()
        elif fault.action == "malformed":
            self._chunk(provider.malformed_chunk())
        elif fault.action == "stall":
            sim.wait(fault.seconds)
            if sim.closing:
                self._drop()
        elif fault.action == "stream_error":
            error = provider.stream_error_chunk(fault.kind or "server_error")
            if not error:  # the provider has no in-stream error: the nearest thing is a cut
                self._drop()
            self._chunk(error)
            return True  # the body ends properly, the provider's own terminator never comes
        return False

    def _stream(self, chunks: list[bytes], fault: Fault, provider: ProviderSim) -> None:
        sim = self.server.sim
        at = max(0, min(fault.after, len(chunks) - 1))  # always before the provider's last chunk
        for i, chunk in enumerate(chunks):
            if i == 0 and fault.action == "slow_first_token":
                sim.wait(fault.seconds)
            elif i > 0 and sim.context.pace > 0:
                sim.wait(sim.context.pace)
            if sim.closing:  # close() cuts streams short instead of letting them finish
                self._drop()
            if i == at and self._inject(fault, provider):
                break
            self._chunk(chunk)
        self.wfile.write(b"0\r\n\r\n")


class Simulator:
    """A running simulator; use :func:`serve` or :func:`running` to make one."""

    def __init__(
        self,
        provider: str,
        faults: FaultsArg = None,
        *,
        seed: int = 0,
        pace: float = 0.0,
        api_key: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_region: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> None:
        self.provider_name = provider
        self.provider: ProviderSim = load_provider(provider)
        self.context = SimContext(
            provider=provider,
            seed=seed,
            pace=pace,
            api_key=api_key if api_key is not None else DEFAULT_API_KEY,
            aws_access_key_id=aws_access_key_id or DEFAULT_AWS_ACCESS_KEY_ID,
            aws_secret_access_key=aws_secret_access_key or DEFAULT_AWS_SECRET_ACCESS_KEY,
            aws_region=aws_region or DEFAULT_AWS_REGION,
            options=dict(options),
        )
        self.faults = FaultScript(faults)
        #: every request received, in order
        self.requests: list[SimRequest] = []
        self._closing = threading.Event()
        self._closed = False
        self._server = _Server((host, port), self)  # bound and listening: connections queue from here on
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"gtl-sim-{provider}",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The TCP port the simulator listens on."""
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` without any path."""
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL each official SDK expects (``…/v1`` for the OpenAI flavours, the bare root otherwise)."""
        return self.root_url + str(getattr(self.provider, "base_path", ""))

    def set_faults(self, faults: FaultsArg) -> None:
        """Replace the fault script (a Fault applied always, a list consumed per request, or None)."""
        self.faults.set(faults)

    @property
    def closing(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closing.is_set()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, cut short by :meth:`close`."""
        if seconds > 0:
            self._closing.wait(seconds)

    def close(self) -> None:
        """Stop serving, cut open connections and free the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._server.shutdown()
        self._server.cut_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.base_url
        return f"<Simulator {self.provider_name} {state}>"


def serve(
    provider: str,
    faults: FaultsArg = None,
    *,
    seed: int = 0,
    pace: float = 0.0,
    api_key: str | None = None,
    **options: Any,
) -> Simulator:
    """Start a simulator for ``provider`` on 127.0.0.1 (ephemeral port) in a background thread.

    Returns once the socket accepts connections. Extra keyword arguments: ``host``, ``port``,
    ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_region``, and provider options such as
    ``models=[...]`` (restrict the accepted models), ``context_windows={model: tokens}`` or
    ``check_key=True`` (openai_compatible).
    """
    return Simulator(provider, faults, seed=seed, pace=pace, api_key=api_key, **options)


@contextlib.contextmanager
def running(provider: str, faults: FaultsArg = None, **kwargs: Any) -> Iterator[str]:
    """``with running("openai") as base_url:`` — a simulator for the duration of the block."""
    sim = serve(provider, faults, **kwargs)
    try:
        yield sim.base_url
    finally:
        sim.close()
