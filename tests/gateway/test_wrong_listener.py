"""A client pointed at the gateway's other listener — an HTTP scheme at the gRPC port, ``grpc://`` at the
HTTP port — is told which scheme that port takes, and ``gtl`` does not ask whether the gateway runs."""

from __future__ import annotations

import socket

import pytest

import gtl_nb
from gtl_nb.cli import main
from gtl_nb.protocol.errors import ConfigurationError, ProviderUnavailableError
from tests.gateway.test_grpc import grpc_gateway
from tests.gateway.test_http import gateway


@pytest.mark.parametrize("scheme", ["http", "sse", "ws"])
def test_an_http_scheme_at_the_grpc_listener_names_grpc(base_config, scheme):
    with grpc_gateway(base_config) as running:
        address = running.url.partition("://")[2]
        with pytest.raises(ProviderUnavailableError) as unreachable:
            gtl_nb.connect(f"{scheme}://{address}")
    assert "if it is the gateway's gRPC listener, with grpc://" in str(unreachable.value)


def test_grpc_at_the_http_listener_names_the_http_schemes(base_config):
    with gateway(base_config) as url, pytest.raises(ConfigurationError) as wrong_scheme:  # the caller's to mend
        gtl_nb.connect(url.replace("http://", "grpc://"))
    said = str(wrong_scheme.value)
    assert "that port answers HTTP/1.1, not gRPC" in said and "connect with http://, sse:// or ws://" in said
    assert len(said) < 200  # the hint, not a paragraph of the channel's state before it


def test_the_cli_asks_whether_a_gateway_runs_only_when_nothing_answered(base_config, capsys):
    with gateway(base_config) as url:
        assert main(["--gateway", url.replace("http://", "grpc://"), "models"]) == 2  # a usage mistake
    err = capsys.readouterr().err
    assert "answers HTTP/1.1" in err and "is it running?" not in err  # it runs: the scheme is wrong
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]  # closed again before the dial: nothing listens there
    for scheme in ("ws://", "", "http://", "grpc://", "quic://"):  # "": discovery
        address = f"{scheme}127.0.0.1:{port}"
        assert main(["--gateway", address, "models"]) == 1
        assert capsys.readouterr().err.count("nothing accepts connections there (is it running?") == 1
        with pytest.raises(ProviderUnavailableError, match=r"nothing accepts connections there \(is it running\?"):
            gtl_nb.connect(address)  # the Python API says it too, whichever library's words it had


def test_grpcs_at_a_plaintext_listener_says_the_port_serves_no_tls(base_config, capsys):
    with grpc_gateway(base_config) as running:
        address = running.url.partition("://")[2]
        with pytest.raises(ConfigurationError, match=r"that port serves no TLS; connect with grpc://"):
            gtl_nb.connect(f"grpcs://{address}")
        assert main(["--gateway", f"grpcs://{address}", "models"]) == 2
    err = capsys.readouterr().err
    assert "connect with grpc://" in err and "is it running?" not in err


def test_discovery_at_the_grpc_listener_names_grpc(base_config, capsys):
    with grpc_gateway(base_config) as running:
        address = running.url.partition("://")[2]
        with pytest.raises(ProviderUnavailableError) as unreachable:
            gtl_nb.connect(address)
        assert main(["--gateway", address, "models"]) == 1
    assert "grpc://" in str(unreachable.value)
    assert "is it running?" not in capsys.readouterr().err


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_port_another_process_holds_is_one_line_naming_the_option_and_the_cause(base_config, transport):
    # (said "[gateway.http] cannot listen on …" for a port given with --http, and no more)
    from gtl_nb.gateway.local import start_gateway

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(ConfigurationError) as taken:
            start_gateway(base_config, **{transport: address})
    said = str(taken.value)
    assert f"the {transport} listener (--{transport} or [gateway.{transport}]) cannot listen on {address}" in said
    assert "another process holds that port" in said and "port 0 for any free one" in said
