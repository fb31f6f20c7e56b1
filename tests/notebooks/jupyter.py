"""A JupyterLab or Notebook 7 server on loopback, isolated from the developer's own Jupyter set-up.

The server gets a random token, a free port on 127.0.0.1, a temporary root directory, and its own
``HOME``, ``JUPYTER_*``, ``IPYTHONDIR`` and ``XDG_*`` directories, so no user settings, kernels, workspaces
or gtl_nb configuration leak in. Readiness is the API answering ``GET /api/status``, polled; no fixed sleeps.
Outbound fetches the server would make on its own (news feed, update check) are switched off.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .browser import wait_for

__all__ = ["APPS", "JupyterServer", "free_port", "isolated_env"]

# app name -> (the module that runs it, the URL path that opens a notebook)
APPS: dict[str, tuple[str, str]] = {
    "lab": ("jupyterlab", "lab/tree"),
    "notebook": ("notebook", "notebooks"),
}

_SERVER_CONFIG = {
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "extension_manager": "readonly",
    },
    "ServerApp": {"allow_remote_access": False, "open_browser": False},
}


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the server is told not to retry others)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_env(base: Path) -> dict[str, str]:
    """Environment variables that point every per-user directory into ``base``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "GTL_", "IPYTHON"))}
    dirs = {
        "HOME": base / "home",
        "JUPYTER_CONFIG_DIR": base / "jupyter" / "config",
        "JUPYTER_DATA_DIR": base / "jupyter" / "data",
        "JUPYTER_RUNTIME_DIR": base / "jupyter" / "runtime",
        "IPYTHONDIR": base / "ipython",
        "XDG_CONFIG_HOME": base / "xdg" / "config",
        "XDG_DATA_HOME": base / "xdg" / "data",
        "XDG_CACHE_HOME": base / "xdg" / "cache",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env.update({k: str(v) for k, v in dirs.items()})
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class JupyterServer:
    """``jupyter lab`` or ``jupyter notebook`` serving ``root``; a context manager."""

    def __init__(self, app: str, root: Path, base: Path) -> None:
        if app not in APPS:
            raise ValueError(f"app must be one of {sorted(APPS)}")
        self.app = app
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.env = isolated_env(base)
        config_dir = Path(self.env["JUPYTER_CONFIG_DIR"])
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(_SERVER_CONFIG))
        self.log_path = base / f"jupyter-{app}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, name: str) -> str:
        return f"{self.base_url}/{APPS[self.app][1]}/{name}?token={self.token}"

    def start(self, timeout: float = 90.0) -> JupyterServer:
        command = [
            sys.executable,
            "-m",
            APPS[self.app][0],
            "--no-browser",
            "--expose-app-in-browser",  # window.jupyterapp: the test runs cells with the app's commands
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # CI containers run as root
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(self._ready, timeout, f"jupyter {self.app} to answer /api/status", interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"jupyter {self.app} exited with {self.process.returncode}:\n{self.log()}")
        try:
            return self.api("status") is not None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}/api/{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the server and its kernels (all in the server's own process group)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, 15)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> JupyterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
