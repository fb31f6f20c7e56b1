"""``gtl certs``: the development CA and server certificate work for a real TLS 1.3 handshake on
loopback, for each of the default names, and the key is private to its owner."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gtl_nb.gateway.certs import make_dev_certificates

REPO = Path(__file__).resolve().parents[2]


def handshake(files, host: str, family: int = socket.AF_INET) -> str:
    """Serve one TLS connection on loopback with the server certificate; connect trusting only the CA."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_3
    server_context.load_cert_chain(files.certificate, files.key)
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(16))
        except (ssl.SSLError, OSError):  # the client refused us: its own error is what the test checks
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(files.ca))
    port = listener.getsockname()[1]
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        client_context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"ping")
        echoed = tls.recv(16)
        version = tls.version()
    thread.join(10)
    listener.close()
    assert echoed == b"ping"
    return version or ""


def test_the_dev_certificates_pass_a_verified_tls13_handshake(tmp_path):
    files = make_dev_certificates(tmp_path / "certs")
    assert handshake(files, "127.0.0.1") == "TLSv1.3"
    if socket.has_ipv6:
        try:
            assert handshake(files, "::1", socket.AF_INET6) == "TLSv1.3"
        except OSError:  # no IPv6 loopback in this sandbox
            pass
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600


def test_a_client_that_does_not_trust_the_ca_refuses_the_server(tmp_path):
    files = make_dev_certificates(tmp_path / "a")
    other = make_dev_certificates(tmp_path / "b")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(type(files)(other.ca, files.certificate, files.key), "127.0.0.1")


def test_a_name_not_on_the_certificate_is_refused(tmp_path):
    files = make_dev_certificates(tmp_path, names=["gateway.test"])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(files, "127.0.0.1")


def test_gtl_certs_writes_the_three_files(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "gtl_nb.cli", "certs", str(tmp_path / "out"), "--name", "localhost"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"ca.pem", "server.pem", "server-key.pem"}
    assert "verify=" in done.stdout
