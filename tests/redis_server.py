"""A real ``redis-server`` for tests: its own process on a free loopback port, its files in a
temporary folder, no persistence, stopped at the end.

``RedisServer.start(folder)`` returns a running server (``url``, ``port``); ``stop()`` ends it and
``restart()`` starts it again on the same port (an outage and a return). ``password=`` makes it
require one (``requirepass``; ``url`` carries it), ``appendonly=True`` keeps its data across a
restart. ``find_redis_server()`` is the binary (``$REDIS_SERVER``, else on ``PATH``, else the Debian
path), or ``None``. Used by the store tests' fixtures; the gateway-replica tests can use it alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RedisServer", "RedisServerError", "find_redis_server", "free_port"]

START_SECONDS = 20.0  # a loaded CI machine may be slow to start it; a healthy one takes milliseconds


class RedisServerError(RuntimeError):
    """The server could not be started."""


def find_redis_server() -> str | None:
    """The ``redis-server`` binary to run, or ``None`` when there is none."""
    named = os.environ.get("REDIS_SERVER")
    if named:
        return named if os.access(named, os.X_OK) else None
    found = shutil.which("redis-server")
    if found:
        return found
    debian = "/usr/bin/redis-server"
    return debian if os.access(debian, os.X_OK) else None


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    """A running ``redis-server`` child process."""

    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    binary: str = "redis-server"
    password: str | None = None
    appendonly: bool = False

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @classmethod
    def start(
        cls,
        folder: Path,
        *,
        binary: str | None = None,
        attempts: int = 3,
        password: str | None = None,
        appendonly: bool = False,
    ) -> RedisServer:
        """Start a server with its files in ``folder``; retried on another port if one was taken meanwhile."""
        binary = binary or find_redis_server()
        if binary is None:
            raise RedisServerError("redis-server is not installed")
        folder.mkdir(parents=True, exist_ok=True)
        problem = ""
        for _ in range(attempts):
            port = free_port()
            process = _launch(binary, port, folder, password, appendonly)
            server = cls(process, port, folder, binary, password, appendonly)
            if server._wait_ready():
                return server
            server.stop()
            problem = server._log_tail()
        raise RedisServerError(f"redis-server did not start on a loopback port; its log ends with:\n{problem}")

    def restart(self) -> None:
        """Start the stopped server again on its port (with ``appendonly``, with the data it had)."""
        self.stop()
        self.process = _launch(self.binary, self.port, self.folder, self.password, self.appendonly)
        if not self._wait_ready():
            self.stop()
            raise RedisServerError(f"redis-server did not start again on port {self.port}:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        log = self.folder / f"redis-{self.port}.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

    def _wait_ready(self) -> bool:
        """Whether the server answers PING before ``START_SECONDS`` (or exited first)."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.02)
        return False

    def ping(self) -> bool:
        """Whether the server answers ``PING`` (spoken in RESP by hand: no client library needed); a
        server with a password answers ``NOAUTH``, which says as much."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(b"*1\r\n$4\r\nPING\r\n")
                return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def freeze(self) -> None:
        """Stop the server in its tracks (SIGSTOP): its port still accepts, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server run again (SIGCONT)."""
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL if it lingers) and wait for it."""
        if self.process.poll() is None:
            self.thaw()  # a frozen server would take SIGTERM only once it runs
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=10)


def _launch(binary: str, port: int, folder: Path, password: str | None, appendonly: bool) -> subprocess.Popen[bytes]:
    """``redis-server`` on ``port``, its files (log, append-only file) in ``folder``."""
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--protected-mode", "yes",
        "--dir", str(folder),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--daemonize", "no",
        "--logfile", str(folder / f"redis-{port}.log"),
        "--databases", "16",
    ]  # fmt: skip
    if password:
        command += ["--requirepass", password]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
