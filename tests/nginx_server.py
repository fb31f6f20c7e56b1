"""A real nginx for tests: the project's own ``deploy/nginx/gtl.conf.template`` rendered for replicas on
loopback, run in the foreground from a temporary folder (its pid file, logs and temp paths there), stopped
at the end.

``NginxServer.start(folder, http_replicas=[...], grpc_replicas=[...])`` returns a running server whose
``http_url`` and ``grpc_url`` are where clients connect; ``find_nginx()`` is the binary (``$NGINX``,
else on ``PATH``, else ``/usr/sbin/nginx``), or ``None``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TEMPLATE", "NginxServer", "NginxServerError", "find_nginx", "render_template"]

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "gtl.conf.template"
START_SECONDS = 20.0
START_ATTEMPTS = 3
_PLACEHOLDER = re.compile(r"\$\{(GTL_[A-Z_]+)\}")


class NginxServerError(RuntimeError):
    """nginx could not be started."""


def find_nginx() -> str | None:
    """The nginx binary to run, or ``None``."""
    named = os.environ.get("NGINX")
    if named:
        return named if os.access(named, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    debian = "/usr/sbin/nginx"
    return debian if os.access(debian, os.X_OK) else None


def render_template(values: dict[str, str], template: Path = TEMPLATE) -> str:
    """The template with its ``${GTL_*}`` placeholders replaced (nginx's own ``$variables`` untouched), as
    ``envsubst`` with a variable list does; a placeholder without a value is an error."""
    text = template.read_text()

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for ${{{name}}} in {template}")
        return values[name]

    return _PLACEHOLDER.sub(value, text)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _read_log(folder: Path) -> str:
    path = folder / "error.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _servers(addresses: list[str]) -> str:
    return "\n    ".join(f"server {address} max_fails=1 fail_timeout=5s;" for address in addresses)


@dataclass
class NginxServer:
    """A running nginx child process."""

    process: subprocess.Popen[bytes]
    folder: Path
    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def error_log(self) -> str:
        return _read_log(self.folder)

    @classmethod
    def start(
        cls, folder: Path, *, http_replicas: list[str], grpc_replicas: list[str], tls: tuple[Path, Path] | None = None
    ) -> NginxServer:
        """Render the template for ``http_replicas``/``grpc_replicas`` (``HOST:PORT`` each) and start nginx;
        ``tls`` (certificate, key): both listeners speak TLS, as the template's comment says to set it up."""
        binary = find_nginx()
        if binary is None:
            raise NginxServerError("nginx is not installed (apt-get install nginx)")
        folder.mkdir(parents=True, exist_ok=True)
        for _attempt in range(START_ATTEMPTS):
            server = cls._start_once(binary, folder, http_replicas, grpc_replicas, tls)
            if server is not None:
                return server
        raise NginxServerError(f"nginx could not bind free ports in {START_ATTEMPTS} attempts:\n{_read_log(folder)}")

    @classmethod
    def _start_once(
        cls,
        binary: str,
        folder: Path,
        http_replicas: list[str],
        grpc_replicas: list[str],
        tls: tuple[Path, Path] | None,
    ) -> NginxServer | None:
        """One start on two ports found free; ``None`` when another process took one of them first (the
        ports are free when picked, not when nginx binds them)."""
        http_port, grpc_port = _free_port(), _free_port()
        site = render_template(
            {
                "GTL_HTTP_LISTEN": f"127.0.0.1:{http_port}" + (" ssl" if tls else ""),
                "GTL_GRPC_LISTEN": f"127.0.0.1:{grpc_port}" + (" ssl" if tls else ""),
                "GTL_HTTP_REPLICAS": _servers(http_replicas),
                "GTL_GRPC_REPLICAS": _servers(grpc_replicas),
            }
        )
        (folder / "gtl.conf").write_text(site)
        if tls is not None:  # the template's TLS step: a file in gtl-tls/ beside nginx.conf
            (folder / "gtl-tls").mkdir(exist_ok=True)
            (folder / "gtl-tls" / "tls.conf").write_text(
                f"ssl_certificate {tls[0]};\nssl_certificate_key {tls[1]};\nssl_protocols TLSv1.2 TLSv1.3;\n"
            )
        # as root, workers would switch to "nobody", who cannot enter a private temporary folder
        user = "user root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        temp = {name: folder / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(exist_ok=True)
        (folder / "error.log").unlink(missing_ok=True)  # a failed attempt's lines are not this one's
        (folder / "nginx.conf").write_text(
            f"{user}worker_processes 1;\n"
            f"pid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} info;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "    access_log off;\n"
            f"    client_body_temp_path {temp['client_body']};\n"
            f"    proxy_temp_path {temp['proxy']};\n"
            f"    fastcgi_temp_path {temp['fastcgi']};\n"
            f"    uwsgi_temp_path {temp['uwsgi']};\n"
            f"    scgi_temp_path {temp['scgi']};\n"
            f"    include {folder / 'gtl.conf'};\n"
            "}\n"
        )
        command = [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"]
        checked = subprocess.run([*command[:-2], "-t"], capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            raise NginxServerError(f"nginx -t refused the rendered configuration:\n{checked.stderr[-2000:]}")
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        server = cls(process, folder, http_port, grpc_port)
        if server._wait_listening():
            return server
        server.stop()
        return None

    def _wait_listening(self) -> bool:
        """Whether nginx itself listens on both ports: it logs "start worker processes" only once its
        listeners are bound, and a port that answers before that may be another process's (``False``: nginx
        logged a failed ``bind()``)."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            log = self.error_log
            if "bind() to" in log:
                return False
            if self.process.poll() is not None:
                raise NginxServerError(f"nginx exited at start:\n{log[-2000:]}")
            if "start worker process" in log:
                try:
                    for port in (self.http_port, self.grpc_port):
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    pass
            time.sleep(0.02)
        self.stop()
        raise NginxServerError(f"nginx did not listen within {START_SECONDS:g} s:\n{self.error_log[-2000:]}")

    def stop(self) -> None:
        """Stop nginx (SIGQUIT would wait for open streams: SIGTERM closes them) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ValueError, OSError):
            if self.process.stderr is not None:
                self.process.stderr.close()
