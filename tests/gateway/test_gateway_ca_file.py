"""The CA of a private gateway (``gtl certs``' ``ca.pem``) for the terminal and for ``connect``: ``gtl --verify
FILE`` and ``$GTL_NB_CA_FILE``; a refused certificate's error names them in the terminal; and gRPC's own log lines
("Handshake failed …") stay off the terminal while discovery tries ``grpcs://`` and goes on to another transport.

One gateway process serves TLS on its HTTP and gRPC listeners, with a static development token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import gtl_nb
from gtl_nb.cli import main
from gtl_nb.gateway.certs import DevCertificates
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol.errors import ConfigurationError
from tests.gateway.conftest import write_toml

TOKEN = "ca-file-test-token"


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory, certs: DevCertificates) -> Iterator[LocalGateway]:
    folder = tmp_path_factory.mktemp("ca-file")
    config = write_toml(
        folder / "gtl.toml",
        {"providers.echo": {}, "ledger": {"path": str(folder / "ledger.sqlite")}, "gateway": {"auth": "token"}},
    )
    with start_gateway(
        config,
        http="127.0.0.1:0",
        grpc="127.0.0.1:0",
        tls_cert=certs.certificate,
        tls_key=certs.key,
        env={"GTL_NB_DEV_TOKEN": TOKEN},
    ) as running:
        yield running


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal's environment: the token in ``$GTL_TOKEN``, no CA file, no gateway set."""
    monkeypatch.setenv("GTL_TOKEN", TOKEN)
    for name in ("GTL_NB_CA_FILE", "GTL_NB_GATEWAY", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)


def providers_listed(out: str) -> list[str]:
    return [json.loads(line)["provider"] for line in out.splitlines()]


def test_gtl_verify_gives_the_gateway_s_ca(tls_gateway, certs, terminal, capsys):
    https = tls_gateway.url("https")
    assert main(["--gateway", https, "models", "--json"]) == 2  # the system's store knows no such CA
    err = capsys.readouterr().err
    assert err.startswith("gtl: error:") and "gtl --verify FILE" in err and "$GTL_NB_CA_FILE" in err, err
    assert "verify=" not in err  # the Python advice, rephrased for the terminal
    assert main(["--gateway", https, "--verify", str(certs.ca), "models", "--json"]) == 0
    assert "echo" in providers_listed(capsys.readouterr().out)
    assert main(["models", "--json", "--gateway", https, "--verify", str(certs.ca)]) == 0  # after the command too
    assert "echo" in providers_listed(capsys.readouterr().out)
    grpcs = tls_gateway.url("grpcs")
    assert main(["--gateway", grpcs, "complete", "over grpcs", "--model", "echo"]) == 2
    err = capsys.readouterr().err
    assert "gtl --verify FILE" in err and "verify=" not in err, err  # gRPC's own wording, rephrased alike
    assert main(["--gateway", grpcs, "--verify", str(certs.ca), "complete", "over grpcs", "--model", "echo"]) == 0
    assert "over grpcs" in capsys.readouterr().out


def test_the_ca_file_variable_serves_gtl_and_connect(tls_gateway, certs, terminal, capsys, monkeypatch):
    https = tls_gateway.url("https")
    monkeypatch.setenv("GTL_NB_CA_FILE", str(certs.ca))
    assert main(["--gateway", https, "models", "--json"]) == 0
    assert "echo" in providers_listed(capsys.readouterr().out)
    with gtl_nb.connect(https, token=TOKEN) as client:  # connect reads it when given no verify=
        assert "from Python" in client.complete("echo", "from Python").text
    with gtl_nb.connect(tls_gateway.url("grpcs"), token=TOKEN) as client:
        assert client.transport == "grpcs" and "grpc" in client.complete("echo", "grpc").text
    monkeypatch.setenv("GTL_NB_CA_FILE", str(certs.ca) + ".missing")
    assert main(["--gateway", https, "models"]) == 2
    err = capsys.readouterr().err
    assert "$GTL_NB_CA_FILE names" in err and "not a readable file" in err, err
    with pytest.raises(ConfigurationError, match=r"\$GTL_NB_CA_FILE names"):
        gtl_nb.connect(https, token=TOKEN)


def test_verify_without_a_gateway_or_with_a_missing_file_is_refused(terminal, capsys, tmp_path):
    assert main(["--verify", str(tmp_path / "ca.pem"), "models"]) == 2
    err = capsys.readouterr().err
    assert "give the gateway too" in err and "--gateway" in err, err
    assert main(["--gateway", "https://127.0.0.1:9", "--verify", str(tmp_path / "ca.pem"), "models"]) == 2
    assert "no such file" in capsys.readouterr().err


_DISCOVER = textwrap.dedent(
    """
    import sys, gtl_nb
    with gtl_nb.connect(sys.argv[1], token=sys.argv[2]) as client:
        print(client.transport, client.complete("echo", "found").text)
    """
)


def _discover_in_a_process(url: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``connect(url)`` in a fresh interpreter (gRPC reads its log settings when first imported), its stderr kept."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GRPC_", "GTL_NB_CA"))}
    env.update(environ)
    return subprocess.run(
        [sys.executable, "-c", _DISCOVER, url, TOKEN], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_discovery_s_grpcs_try_leaves_no_grpc_log_lines_on_the_terminal(tls_gateway, certs):
    """Discovery trusts the CA through ``SSL_CERT_FILE`` (which gRPC does not read): its ``grpcs://`` try fails on
    the certificate and ``wss://`` is used — with nothing of gRPC's C core on standard error, unless the user
    asked gRPC for its log lines (``GRPC_VERBOSITY``)."""
    https = tls_gateway.url("https")
    quiet = _discover_in_a_process(https, {"SSL_CERT_FILE": str(certs.ca)})
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("wss ") and "found" in quiet.stdout
    assert "Handshake failed" not in quiet.stderr and "ssl_transport_security" not in quiet.stderr, quiet.stderr
    asked = _discover_in_a_process(https, {"SSL_CERT_FILE": str(certs.ca), "GRPC_VERBOSITY": "INFO"})
    assert asked.returncode == 0 and asked.stdout.startswith("wss ")
    assert "Handshake failed" in asked.stderr  # the user's own setting stands


def test_the_package_leaves_a_set_grpc_verbosity_alone():
    code = "import os, gtl_nb.transports.grpc; print(os.environ['GRPC_VERBOSITY'])"
    env = {key: value for key, value in os.environ.items() if key != "GRPC_VERBOSITY"}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout == "ERROR\n"
    env["GRPC_VERBOSITY"] = "DEBUG"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout == "DEBUG\n"


def test_the_help_names_verify_and_its_variable(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--verify FILE" in out and "GTL_NB_CA_FILE" in out


@pytest.mark.parametrize("address", ["http://127.0.0.1:9", "ws://127.0.0.1:9", "grpc://127.0.0.1:9", "sse://h:9"])
def test_an_address_without_tls_is_not_refused_for_the_ca_variable(address, monkeypatch, tmp_path):
    """A $GTL_NB_CA_FILE naming no file refused http://, ws://, grpc:// and stdio:// connections too, which
    never use it; an address that may use TLS is still refused, naming the variable."""
    from gtl_nb.client import _gateway_options

    monkeypatch.setenv("GTL_NB_CA_FILE", str(tmp_path / "gone.pem"))
    assert _gateway_options(address, {}) is True
    with pytest.raises(ConfigurationError, match=r"\$GTL_NB_CA_FILE names"):
        _gateway_options(address.replace("://", "s://", 1), {})  # https, wss, grpcs, sses
