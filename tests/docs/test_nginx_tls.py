"""The nginx template's TLS step (deploy/nginx/gtl.conf.template, docs/deploy.md): "ssl" on the listen
addresses and the certificate lines in a file of ``gtl-tls/`` beside nginx.conf, which both servers
include. A real nginx serves the rendered template over TLS, in front of a stand-in replica — and in front
of a real gateway, whose clients then use ``grpcs://`` and ``https://`` as the page says."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import gtl_nb
from gtl_nb.gateway.certs import make_dev_certificates
from gtl_nb.gateway.local import LocalGateway, start_gateway
from tests.gateway.conftest import write_toml
from tests.nginx_server import NginxServer, find_nginx

TOKEN = "nginx-tls-test-token"


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


def _gateway(folder: Path, *, ports: dict[str, int] | None = None, grpc_offer: str | None = None) -> LocalGateway:
    """A gateway with plaintext HTTP and gRPC listeners on loopback (nginx speaks TLS in front of it), the
    echo provider and the static development token; ``grpc_offer``: what discovery offers for gRPC."""
    gateway: dict[str, object] = {"auth": "token"}
    if grpc_offer is not None:
        gateway["advertise"] = {"grpc": grpc_offer}
    config = write_toml(
        folder / "gtl.toml",
        {"providers.echo": {}, "ledger": {"path": str(folder / "ledger.sqlite")}, "gateway": gateway},
    )
    ports = ports or {"http": 0, "grpc": 0}
    return start_gateway(
        config,
        http=f"127.0.0.1:{ports['http']}",
        grpc=f"127.0.0.1:{ports['grpc']}",
        env={"GTL_NB_DEV_TOKEN": TOKEN},
    )


def test_grpcs_and_discovery_through_the_tls_template(tmp_path: Path):
    """``grpcs://`` through nginx over TLS (nginx passes the call's first headers on only once the client
    sent a message: the client sends its hello first), and ``https://`` discovery choosing it when offered."""
    if find_nginx() is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    pytest.importorskip("grpc")
    certs = make_dev_certificates(tmp_path / "tls", ["127.0.0.1"])
    gateway = _gateway(tmp_path)
    nginx: NginxServer | None = None
    try:
        replica = {name: url.split("://", 1)[1] for name, url in gateway.urls.items()}
        nginx = NginxServer.start(
            tmp_path / "nginx",
            http_replicas=[replica["http"]],
            grpc_replicas=[replica["grpc"]],
            tls=(certs.certificate, certs.key),
        )
        grpcs = f"grpcs://127.0.0.1:{nginx.grpc_port}"
        client = gtl_nb.connect(grpcs, token=TOKEN, verify=str(certs.ca))
        try:
            answer = client.complete("echo", "hello through nginx")
            assert answer.text and answer.error is None
            assert "hello through nginx" in answer.text  # echo answers with the prompt
        finally:
            client.close()

        # the same replica, restarted on its ports, now offers nginx's grpcs:// address: discovery uses it
        ports = gateway.ports
        gateway.stop()
        gateway = _gateway(tmp_path, ports=ports, grpc_offer=grpcs)
        discovered = gtl_nb.connect(f"https://127.0.0.1:{nginx.http_port}", token=TOKEN, verify=str(certs.ca))
        try:
            assert discovered.transport == "grpcs"
            assert "again" in discovered.complete("echo", "again").text
        finally:
            discovered.close()
    finally:
        if nginx is not None:
            nginx.stop()
        gateway.stop()
