"""The processes of a bench run: the fake upstream, the gateway, LiteLLM's proxy, the load client.

Each runs in its own process so its CPU and memory can be read from ``/proc`` separately, and each
object here starts one, says when it is ready (by reading what the process prints, or for LiteLLM by
asking its liveness URL), and stops it with SIGTERM — SIGKILL after a grace period. Nothing here
sleeps to wait for a start-up except LiteLLM's poll.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.gateway_setup import GatewayFiles

REPO = Path(__file__).resolve().parents[1]
PEERS_VENV = REPO / ".venv-peers"


def _stop(process: subprocess.Popen[Any], grace: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers that cannot take port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Upstream:
    """``python -m bench.upstream`` (``pace``: seconds between streamed chunks)."""

    def __init__(self, pace: float = 0.0, extra_args: Sequence[str] = ()) -> None:
        command = [sys.executable, "-m", "bench.upstream", "--pace", str(pace), *extra_args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            _stop(self.process)
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        self.port = int(line.rsplit(" ", 1)[1])
        self.pid = self.process.pid

    def stop(self) -> None:
        _stop(self.process)


def gtl_command() -> list[str]:
    """``gtl`` as its script in this interpreter's environment (so valgrind can run it under python)."""
    script = Path(sys.executable).with_name("gtl")
    return [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "gtl_nb.cli"]


class Gateway:
    """``gtl serve --config FILE`` with ``files``' configuration; ``wrapper`` prefixes the command
    (``valgrind --tool=callgrind …``). ``urls`` maps ``http``/``grpc``/``quic`` to what it announced."""

    def __init__(self, files: GatewayFiles, wrapper: Sequence[str] = (), log: Path | None = None) -> None:
        from gtl_nb.gateway.local import LocalGateway

        command = [*wrapper, *gtl_command(), "serve", "--config", str(files.config)]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **files.env},
            cwd=files.config.parent,
        )
        # the project's own reader of the gateway's announcements ("listening on URL", "ready")
        self.local = LocalGateway(process, files.config)
        self.pid = process.pid
        self.files = files
        self.log = log

    def url(self, scheme: str) -> str:
        return self.local.url(scheme)

    def port(self, transport: str = "http") -> int:
        return self.local.ports[transport]

    def stop(self) -> None:
        self.local.stop(timeout=60)
        if self.log is not None:
            self.log.write_text("".join(self.local.output), encoding="utf-8")


def litellm_executable() -> Path | None:
    """LiteLLM's CLI in ``.venv-peers`` (``make bench-peers`` installs it), if present."""
    candidate = PEERS_VENV / "bin" / "litellm"
    return candidate if candidate.exists() else None


def litellm_version() -> str:
    """The installed LiteLLM version, read from its package metadata in ``.venv-peers``."""
    python = PEERS_VENV / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip() or "unknown"


class LiteLLM:
    """LiteLLM's proxy (one worker, no database) in front of the fake upstream; ``master_key`` is
    the key its clients send, as the gateway's clients send a token."""

    MODEL_NAME = "bench-model"

    def __init__(self, directory: Path, upstream_port: int, timeout: float = 180.0) -> None:
        executable = litellm_executable()
        if executable is None:
            raise RuntimeError("LiteLLM is not installed: run `make bench-peers`")
        self.master_key = "sk-bench-" + os.urandom(8).hex()
        config = directory / "litellm.yaml"
        # JSON is YAML: no YAML writer needed
        config.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": self.MODEL_NAME,
                            "litellm_params": {
                                "model": "openai/bench-model",
                                "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                                "api_key": "bench-upstream-key",
                            },
                        }
                    ],
                    "general_settings": {"master_key": self.master_key},
                }
            ),
            encoding="utf-8",
        )
        self.port = free_port()
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from the network
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
        }
        env.pop("DATABASE_URL", None)
        command = [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--num_workers", "1"]
        self.log = directory / "litellm.log"
        self._log_handle = self.log.open("w")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log_handle, stderr=subprocess.STDOUT, env=env, cwd=directory
        )
        self.pid = self.process.pid
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/health/liveliness"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"LiteLLM exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)  # LiteLLM prints no ready line we could read instead
        self.stop()
        raise RuntimeError(f"LiteLLM was not ready within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        _stop(self.process)
        self._log_handle.close()


class LoadClientProcess:
    """``python -m bench.loadclient``, driven one phase at a time (see its module docstring)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadclient"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.pid = self.process.pid

    def _send(self, payload: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((payload if isinstance(payload, str) else json.dumps(payload)) + "\n")
        self.process.stdin.flush()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load client exited ({self.process.wait()})")
        return json.loads(line)

    def phase(self, command: dict[str, Any], before: Callable[[], None]) -> dict[str, Any]:
        """Run one phase: warm up, call ``before`` (which reads the servers' CPU), go, return the summary."""
        self._send({"cmd": "phase", **command})
        self._read()  # ready
        before()
        self._send("go")
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self._send({"cmd": "close"})
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                _stop(self.process)
