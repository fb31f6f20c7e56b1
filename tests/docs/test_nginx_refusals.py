"""What the nginx template (deploy/nginx/gtl.conf.template) answers itself, before a replica sees the
request: a body over its ``client_max_body_size``, more requests at once from one address than its
``limit_conn``, plain HTTP sent to a TLS port. Each is a JSON error both official SDKs read — the
message, not nginx's HTML page shown as a bare status code. A real nginx serves the rendered template
in front of a stand-in replica that holds each request until told to answer."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

import gtl_nb
from gtl_nb.gateway.certs import make_dev_certificates
from tests.nginx_server import NginxServer, find_nginx

pytestmark = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (apt-get install nginx)")

PER_CLIENT = 256  # the template's `limit_conn gtl_per_client`


class _HeldReplica(http.server.BaseHTTPRequestHandler):
    """Counts the requests it holds and answers each once ``release`` is set."""

    held = 0
    lock = threading.Lock()
    release = threading.Event()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        with self.lock:
            type(self).held += 1
        self.release.wait(30)
        body = b'{"answered":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


@pytest.fixture
def replica() -> Iterator[str]:
    _HeldReplica.held = 0
    _HeldReplica.release = threading.Event()
    server = _Server(("127.0.0.1", 0), _HeldReplica)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        _HeldReplica.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def nginx(tmp_path: Path, replica: str) -> Iterator[NginxServer]:
    server = NginxServer.start(tmp_path / "nginx", http_replicas=[replica], grpc_replicas=[replica])
    try:
        yield server
    finally:
        server.stop()


def test_a_body_over_nginxs_limit_is_told_in_words_both_sdks_read(nginx: NginxServer):
    big = "x" * (9 * 1024 * 1024 + 1)
    messages = [{"role": "user", "content": big}]
    client = openai.OpenAI(base_url=f"{nginx.http_url}/v1", api_key="k", max_retries=0)
    with client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert caught.value.status_code == 413
    assert "exceeds the 9 MiB this gateway accepts" in caught.value.message
    assert caught.value.code == "request_too_large"
    claude = anthropic.Anthropic(base_url=nginx.http_url, api_key="k", max_retries=0)
    with claude, pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=messages)  # type: ignore[list-item]
    assert refused.value.status_code == 413
    assert refused.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert "exceeds the 9 MiB" in refused.value.message
    assert _HeldReplica.held == 0  # nginx answered; the replica never saw it


def test_one_address_holds_at_most_the_templates_share_of_requests(nginx: NginxServer):
    held = [_held_request(nginx.http_port) for _ in range(PER_CLIENT)]
    try:
        _wait_until(lambda: _HeldReplica.held == PER_CLIENT)
        client = openai.OpenAI(base_url=f"{nginx.http_url}/v1", api_key="k", max_retries=0)
        with client, pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "one more"}])
        assert caught.value.status_code == 429
        assert caught.value.code == "too_many_connections"
        assert "too many requests at once from this address" in caught.value.message
        assert caught.value.response.headers["retry-after"] == "1"
        _HeldReplica.release.set()
        for connection in held:  # the held ones are answered, none refused
            assert b"200 OK" in connection.recv(4096).split(b"\r\n", 1)[0]
        answer = httpx.post(f"{nginx.http_url}/v1/chat/completions", json={}, timeout=10)
        assert answer.status_code == 200  # a slot again once they ended
    finally:
        for connection in held:
            connection.close()


def test_plain_http_to_the_tls_port_says_to_use_https(tmp_path: Path, replica: str):
    certs = make_dev_certificates(tmp_path / "tls", ["127.0.0.1"])
    nginx = NginxServer.start(
        tmp_path / "nginx", http_replicas=[replica], grpc_replicas=[replica], tls=(certs.certificate, certs.key)
    )
    try:
        plain = f"http://127.0.0.1:{nginx.http_port}"
        client = openai.OpenAI(base_url=f"{plain}/v1", api_key="k", max_retries=0)
        with client, pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert "this port speaks TLS: connect with https://" in caught.value.message
        with pytest.raises(gtl_nb.GTLError, match="that port speaks TLS; connect with wss://"):
            gtl_nb.connect(f"ws://127.0.0.1:{nginx.http_port}").complete("echo", "hi")
        assert _HeldReplica.held == 0
    finally:
        nginx.stop()


def _held_request(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = b'{"model":"gpt-4o"}'
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    connection.sendall(head.encode() + b"content-type: application/json\r\n\r\n" + body)
    return connection


def _wait_until(condition: object, seconds: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the replica did not receive every held request"
        time.sleep(0.02)
