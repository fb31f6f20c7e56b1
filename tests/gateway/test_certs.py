"""``gtl certs``: the development CA and server certificate work for a real TLS 1.3 handshake on
loopback, for each of the default names, and the key is private to its owner."""

from __future__ import annotations

import logging
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
from gtl_nb.gateway.listeners import TlsFiles

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


def gtl_certs(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gtl_nb.cli", "certs", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["afile"], "cannot write the certificates into 'afile': a file of that name is there"),
        (["afile/sub"], "cannot write the certificates into 'afile/sub': Not a directory"),
        (["--days", "0", "out"], "days (--days) must be a whole number from 1 to 3650, got 0"),
        (["--days", "-5", "out"], "days (--days) must be a whole number from 1 to 3650, got -5"),
        (["--days", "36500", "out"], "from 1 to 3650, got 36500"),
        (["--name", "bad name!", "out"], "--name 'bad name!' is neither an IP address nor a DNS name"),
        (["--name", "a..b", "out"], "--name 'a..b' is neither"),
    ],
)
def test_gtl_certs_says_a_mistake_in_one_line_and_writes_nothing(tmp_path, arguments, said):
    (tmp_path / "afile").write_text("")
    done = gtl_certs(*arguments, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("gtl: error: ") and said in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_gtl_certs_run_again_keeps_the_ca_clients_hold_unless_forced(tmp_path):
    """A second ``gtl certs DIR`` (to add a --name, say) silently made a new CA: every client given the
    old ca.pem then refused the gateway. The CA's key is not kept, so the old CA cannot sign again:
    the second run is refused, and ``--force`` replaces the three files."""
    assert gtl_certs("out", cwd=tmp_path).returncode == 0
    first = {name: (tmp_path / "out" / name).read_bytes() for name in ("ca.pem", "server.pem", "server-key.pem")}
    again = gtl_certs("out", "--name", "gw.test", cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    assert "'out' already holds ca.pem, server.pem, server-key.pem of an earlier gtl certs" in again.stderr
    assert "every client given the old ca.pem would refuse the gateway" in again.stderr and "--force" in again.stderr
    assert {name: (tmp_path / "out" / name).read_bytes() for name in first} == first  # nothing written
    forced = gtl_certs("out", "--name", "gw.test", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "out" / "ca.pem").read_bytes() != first["ca.pem"]


def test_names_a_certificate_may_list(tmp_path):
    files = make_dev_certificates(tmp_path, names=["*.gateway.test", "gw-1.internal", "10.0.0.7", "fe80::1"])
    assert files.certificate.exists()


def test_a_listener_whose_certificate_runs_out_within_a_week_is_warned_of_once(tmp_path, caplog):
    soon = make_dev_certificates(tmp_path / "soon", days=1)
    later = make_dev_certificates(tmp_path / "later", days=30)
    with caplog.at_level(logging.WARNING, logger="gtl_nb.gateway.tls"):
        for _ in range(3):  # every listener of one gateway loads the same pair
            TlsFiles(soon.certificate, soon.key).server_context()
        TlsFiles(later.certificate, later.key).server_context()
    warned = [record.getMessage() for record in caplog.records if record.name == "gtl_nb.gateway.tls"]
    assert len(warned) == 1, warned
    assert f"the TLS certificate {soon.certificate} expires on " in warned[0] and "gtl certs DIR" in warned[0]


def test_tls_file_mistakes_are_said_in_our_words(tmp_path):
    # OpenSSL says "no certificate assigned" for a key of another certificate and "PEM lib" for two
    # swapped paths: neither tells the operator which mistake it is
    from gtl_nb.protocol.errors import ConfigurationError

    one = make_dev_certificates(tmp_path / "one", ["127.0.0.1"])
    other = make_dev_certificates(tmp_path / "other", ["127.0.0.1"])
    TlsFiles(one.certificate, one.key).server_context()  # the pair itself loads
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    cases = [
        ((one.certificate, other.key), f"the key {other.key} does not belong to the certificate {one.certificate}"),
        ((one.key, one.certificate), "tls_cert and tls_key swapped?"),
        ((one.certificate, one.certificate), f"{one.certificate} holds a certificate, not a private key"),
        ((one.key, one.key), f"{one.key} holds a private key, not a certificate: tls_cert and tls_key swapped?"),
        ((not_pem, one.key), f"{not_pem} is not a PEM certificate"),
        ((one.certificate, not_pem), f"{not_pem} is not a PEM private key"),
    ]
    for (cert, key), words in cases:
        with pytest.raises(ConfigurationError) as refused:
            TlsFiles(cert, key).server_context()
        message = refused.value.message
        assert message.startswith(f"cannot load the TLS certificate {cert} and key {key}: "), message
        assert words in message, message
        assert "_ssl.c" not in message and "PEM lib" not in message, message
    # and from the command line, as an operator meets it
    started = subprocess.run(
        [
            *(sys.executable, "-m", "gtl_nb", "serve", "--http", "127.0.0.1:0"),
            *("--tls-cert", str(one.key), "--tls-key", str(one.certificate)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")},
    )
    assert started.returncode == 2, (started.stdout, started.stderr)
    assert f"{one.key} holds a private key and {one.certificate} a certificate: tls_cert and tls_key swapped?" in (
        started.stderr
    ), started.stderr
