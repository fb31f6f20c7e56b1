"""A gateway in a child process of this one: ``start_gateway()`` for notebooks, scripts and tests.

    with start_gateway(config="gtl.toml", http="127.0.0.1:0", grpc="127.0.0.1:0") as gateway:
        client = gtl_nb.connect(gateway.url("grpc"))

It runs ``python -m gtl_nb.gateway --config FILE --http … --grpc …`` and returns once the gateway has
announced every listener (it reads the lines the gateway prints, it never sleeps and polls), or raises
``ConfigurationError`` with the gateway's own error line. ``stop()`` sends SIGTERM — a graceful
shutdown: running sessions get the configured grace period — and waits for the exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["LocalGateway", "start_gateway"]

READY_LINE = "gtl gateway: ready"
LISTENING = "listening on "
ERROR_LINE = "gtl gateway: error"


class LocalGateway:
    """A running gateway child process and the URLs it listens on (see the module docstring)."""

    def __init__(self, process: subprocess.Popen[str], config: Path | None) -> None:
        self.process = process
        self.config = config
        self.urls: dict[str, str] = {}
        """Listener transport (``http``, ``grpc``, ``quic``) -> the URL it announced."""
        self.output: list[str] = []
        """Every line the gateway printed on standard error so far."""
        self._read_announcements()
        threading.Thread(target=self._read_rest, name="gtl-gateway-stderr", daemon=True).start()

    def _read_announcements(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.output.append(line)
            if LISTENING in line:
                url = line.rsplit(LISTENING, 1)[1].strip()
                scheme = url.split("://", 1)[0]
                self.urls[{"https": "http", "grpcs": "grpc"}.get(scheme, scheme)] = url
            if line.startswith(READY_LINE):
                return
            if line.startswith(ERROR_LINE):
                break
        self.process.wait()
        problem = next((line for line in reversed(self.output) if line.startswith(ERROR_LINE)), None)
        raise ConfigurationError(
            (problem or f"the gateway exited with status {self.process.returncode} before it was ready").strip()
        )

    def _read_rest(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.output.append(line)

    def url(self, scheme: str = "http") -> str:
        """The client URL for ``scheme``, with the TLS form when the listener has TLS: ``http``, ``sse``
        and ``ws`` (and ``https``, ``sses``, ``wss``) are the HTTP listener's, ``grpc``/``grpcs`` and
        ``quic`` their own listeners'."""
        transport = {"grpcs": "grpc", "https": "http", "sse": "http", "sses": "http", "ws": "http", "wss": "http"}
        listener = self.urls.get(transport.get(scheme, scheme))
        if listener is None:
            raise ConfigurationError(f"this gateway serves no {scheme}:// listener (it serves: {', '.join(self.urls)})")
        if transport.get(scheme, scheme) != "http":
            return listener
        secure = listener.startswith("https://")
        plain = {"https": "http", "sses": "sse", "wss": "ws"}.get(scheme, scheme)
        wanted = {"http": "https", "sse": "sses", "ws": "wss"}[plain] if secure else plain
        return wanted + "://" + listener.split("://", 1)[1]

    @property
    def ports(self) -> dict[str, int]:
        """Listener transport -> the port it got (to restart a gateway on the same ports)."""
        return {name: int(url.rsplit(":", 1)[1]) for name, url in self.urls.items()}

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful shutdown), then wait; kill after ``timeout`` seconds. Returns the exit status."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the gateway dies as in a crash (no session is ended, no connection closed politely)."""
        if self.running:
            self.process.kill()
        self.process.wait()

    def __enter__(self) -> LocalGateway:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return f"<LocalGateway {' '.join(self.urls.values())} {state}>"


def start_gateway(
    config: str | os.PathLike[str] | None = None,
    *,
    http: str | None = None,
    grpc: str | None = None,
    quic: str | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> LocalGateway:
    """Start a gateway child process (see the module docstring).

    ``http``/``grpc``/``quic`` are ``HOST:PORT`` addresses that add a listener or move the configured
    one (port 0: any free port); with none given and none configured, the HTTP listener takes any free
    port on 127.0.0.1 (never the fixed default, which another gateway may hold). ``tls_cert``/``tls_key``
    secure the listeners given here. ``env`` is added to this process's
    environment for the child (``GTL_NB_DEV_TOKEN``, say).
    """
    if http is None and grpc is None and quic is None and not _configured_listeners(config):
        http = "127.0.0.1:0"
    command = [sys.executable, "-m", "gtl_nb.gateway"]
    if config is not None:
        command += ["--config", os.fspath(config)]
    for name, address in (("http", http), ("grpc", grpc), ("quic", quic)):
        if address is not None:
            command += [f"--{name}", address]
    if tls_cert is not None or tls_key is not None:
        if tls_cert is None or tls_key is None:
            raise ConfigurationError("start_gateway() needs tls_cert and tls_key together")
        command += ["--tls-cert", os.fspath(tls_cert), "--tls-key", os.fspath(tls_key)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        return LocalGateway(process, Path(config) if config is not None else None)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise


def _configured_listeners(config: str | os.PathLike[str] | None) -> bool:
    """Whether the configuration the gateway will read names any listener (a bad file is left for the
    gateway to report, in its own words)."""
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.settings import GatewaySettings

    try:
        return bool(GatewaySettings.from_settings(load_settings(config=config)).listeners)
    except (ConfigurationError, OSError):
        return False
