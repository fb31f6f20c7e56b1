"""The gateway's command line: ``python -m gtl_nb.gateway`` and the ``gtl serve`` subcommand."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

import pytest

from gtl_nb.gateway import cli, main
from gtl_nb.gateway.listeners import ListenerSettings
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol.errors import ConfigurationError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    return parser.parse_args(argv)


def test_without_a_listener_anywhere_the_gateway_serves_http_on_loopback_8787(tmp_path):
    options = main._with_command_line(GatewaySettings(), parse())
    [listener] = options.listeners
    assert (listener.transport, listener.host, listener.port, listener.tls) == ("http", "127.0.0.1", 8787, None)


def test_command_line_listeners_join_or_move_the_configured_ones(tmp_path):
    configured = GatewaySettings(listeners=(ListenerSettings("grpc", port=9000),))
    options = main._with_command_line(configured, parse("--http", "127.0.0.1:0", "--quic", "[::1]:0", *tls(tmp_path)))
    by_name = {listener.transport: listener for listener in options.listeners}
    assert by_name["grpc"].port == 9000 and by_name["grpc"].tls is None
    assert by_name["http"].url() == "https://127.0.0.1:0" and by_name["quic"].url() == "quic://[::1]:0"


def test_a_command_line_port_beyond_65535_is_a_configuration_error_on_every_listener():
    # the HTTP listener's bind raised a traceback, and gRPC bound 99999 % 65536 = 34463 without a word
    for transport in ("http", "grpc", "quic"):
        with pytest.raises(ConfigurationError, match=f"--{transport} localhost:99999: the port must be 0..65535"):
            main._with_command_line(GatewaySettings(), parse(f"--{transport}", "localhost:99999"))


@pytest.mark.parametrize("port", ["\u00b2", "\u0661\u0662\u0663\u0664\u0665", "1" * 5000])
def test_a_command_line_port_of_other_digits_or_thousands_of_them_is_a_configuration_error(port):
    # str.isdigit takes '²' (then int() raised) and Arabic-Indic digits (bound as 12345, unsaid); int() of
    # 5,000 digits raises past Python's digit limit: each is one line, as any port that is not one
    with pytest.raises(ConfigurationError, match="--http"):
        main._with_command_line(GatewaySettings(), parse("--http", f"127.0.0.1:{port}"))


def tls(tmp_path) -> list[str]:
    return ["--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key")]


def test_listener_mistakes_are_one_line_with_status_2(tmp_path):
    cases = [
        (["--http", "nonsense"], "HOST:PORT"),
        (["--http", "0.0.0.0:0"], "loopback only"),
        (["--quic", "127.0.0.1:0"], "tls_cert"),
        (["--stdio", "--http", "127.0.0.1:0"], "no listener with it"),
        (["--http", "127.0.0.1:0", "--tls-cert", "x.pem"], "go together"),
    ]
    for argv, expected in cases:
        done = subprocess.run(
            [sys.executable, "-m", "gtl_nb.gateway", *argv], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.startswith("gtl gateway: error:") and expected in done.stderr, (argv, done.stderr)
        assert done.stdout == ""


def test_a_configuration_mistake_is_one_line_on_standard_error_and_nothing_on_the_frames(tmp_path):
    config = tmp_path / "gtl.toml"
    config.write_text('[gateway]\nauth = "jwt"\n', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "gtl_nb.gateway", "--stdio", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("gtl gateway: error:") and "[gateway.jwt] needs issuer" in done.stderr
    assert done.stdout == ""


def test_gtl_serve_takes_the_config_before_or_after_the_subcommand():
    parser = argparse.ArgumentParser(prog="gtl")
    parser.add_argument("--config")
    cli.add_subcommands(parser.add_subparsers(dest="command"))
    for argv in (["serve", "--stdio", "--config", "a.toml"], ["--config", "a.toml", "serve", "--stdio"]):
        args = parser.parse_args(argv)
        assert (args.stdio, args.serve_config or args.config, args.principal) == (True, "a.toml", None)
        assert args.handler is cli._serve


def test_gtl_serve_takes_the_log_level_after_the_subcommand_as_configuration_md_writes_it(tmp_path):
    """``gtl serve --log info`` (docs/configuration.md) was refused: "unrecognized arguments"."""
    import os

    gtl = [sys.executable, "-c", "import sys; from gtl_nb.cli import main; sys.exit(main())"]
    ledger = tmp_path / "ledger.sqlite"
    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\npath = "{ledger}"\n[providers.echo]\n', encoding="utf-8")
    child = subprocess.Popen(
        [*gtl, "serve", "--log", "info", "--config", str(config), "--http", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={name: value for name, value in os.environ.items() if name != "GTL_NB_LOG"},
    )
    try:
        assert child.stderr is not None
        seen = []
        for line in child.stderr:
            seen.append(line)
            if line.startswith("gtl gateway: ready"):
                break
        assert any("INFO each TCP listener holds at most" in line for line in seen), seen
        child.send_signal(signal.SIGTERM)
        assert child.wait(15) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_sigterm_stops_the_gateway_when_nobody_reads_its_standard_error_any_more(tmp_path, loop):
    """A supervisor's log pipe that closed must not turn SIGTERM into a no-op (the shutdown line's
    print used to raise BrokenPipeError before the shutdown began)."""
    from tests.gateway.conftest import write_toml

    config = write_toml(
        tmp_path / "gtl.toml",
        {"ledger": {"path": str(tmp_path / "ledger.sqlite")}, "gateway": {"shutdown_grace": 1, "event_loop": loop}},
    )
    command = [sys.executable, "-m", "gtl_nb.gateway", "--config", str(config), "--http", "127.0.0.1:0"]
    child = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stderr is not None
        for line in child.stderr:
            if line.startswith("gtl gateway: ready"):
                break
        child.stderr.close()  # the reader goes away
        child.send_signal(signal.SIGTERM)
        assert child.wait(15) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_gtl_serve_shows_its_warnings_without_being_asked(tmp_path):
    """``gtl serve`` (the README's command) logs at ``$GTL_NB_LOG`` or WARNING like ``python -m
    gtl_nb.gateway``: an operator sees an upstream it cannot reach without passing ``--log``."""
    import os
    import socket

    import httpx

    from tests.gateway.conftest import write_toml

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "providers.closed": {"type": "openai", "api_key": "sk-test", "base_url": f"http://127.0.0.1:{port}/v1"},
            "routing.retry": {"max_attempts": 1},
            "ledger": {"path": str(tmp_path / "ledger.sqlite")},
            "gateway": {"shutdown_grace": 1},
        },
    )
    gtl = [sys.executable, "-c", "import sys; from gtl_nb.cli import main; sys.exit(main())"]
    child = subprocess.Popen(
        [*gtl, "serve", "--config", str(config), "--http", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={name: value for name, value in os.environ.items() if name != "GTL_NB_LOG"},
    )
    try:
        assert child.stderr is not None
        url = None
        for line in child.stderr:
            if line.startswith("gtl gateway: listening on "):
                url = line.split()[-1]
            if line.startswith("gtl gateway: ready"):
                break
        assert url is not None
        body = {"model": "closed:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30).status_code == 502
        child.send_signal(signal.SIGTERM)
        rest = child.stderr.read()
        assert child.wait(15) == 0
        assert f"WARNING deployment closed: cannot reach http://127.0.0.1:{port}" in rest
        assert rest.rstrip().endswith("gtl gateway: stopped")  # the log says it ended, not only that it began to
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
