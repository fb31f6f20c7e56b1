"""The nginx template's TLS step (deploy/nginx/gtl.conf.template, docs/deploy.md): "ssl" on the listen
addresses and the certificate lines in a file of ``gtl-tls/`` beside nginx.conf, which both servers
include. A real nginx serves the rendered template over TLS, in front of a stand-in replica."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gtl_nb.gateway.certs import make_dev_certificates
from tests.nginx_server import NginxServer, find_nginx


class _Replica(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def replica() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_template_serves_tls_with_the_documented_step(tmp_path: Path, replica: str):
    if find_nginx() is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    certs = make_dev_certificates(tmp_path / "tls", ["127.0.0.1"])
    nginx = NginxServer.start(
        tmp_path / "nginx", http_replicas=[replica], grpc_replicas=[replica], tls=(certs.certificate, certs.key)
    )
    try:
        trusted = ssl.create_default_context(cafile=str(certs.ca))
        with httpx.Client(verify=trusted, timeout=10) as client:
            base = f"https://127.0.0.1:{nginx.http_port}"
            assert client.get(f"{base}/healthz").json() == {"status": "ok"}  # through nginx, over TLS
            assert client.get(f"{base}/readyz").status_code == 404  # never public
        with pytest.raises(httpx.HTTPError):  # plaintext is not served there any more
            httpx.get(f"http://127.0.0.1:{nginx.http_port}/healthz", timeout=5).raise_for_status()
        with _tls_socket(nginx.grpc_port, trusted) as tls_socket:
            assert tls_socket.version() in ("TLSv1.2", "TLSv1.3")  # the gRPC listener too
    finally:
        nginx.stop()


def _tls_socket(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    import socket

    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")
