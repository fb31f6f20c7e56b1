"""The stdio gateway when things go wrong: cancels, a killed gateway, refusals, early exits."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

import gtl_nb
from gtl_nb.protocol import (
    AuthenticationError,
    ConfigurationError,
    Error,
    ProviderUnavailableError,
    Token,
    VersionMismatchError,
    decode,
)
from gtl_nb.transports.stdio import gateway_command
from tests.ledger_wait import rows_when

MODEL = "gpt-4o-mini"
LONG_PROMPT = "Explain streaming, cancellation, pipes, gateways, ledgers and simulators, one by one, at length."


def first_token(stream) -> None:
    for event in stream:
        if isinstance(event, Token):
            return
    pytest.fail(f"the stream ended before any token: {stream.transcript.events}")


def command_endpoint(*argv: str) -> str:
    return "stdio://?command=" + quote(shlex.join(argv))


def test_a_cancel_reaches_the_upstream_simulator(write_config, open_client, sims, relay_to, tmp_path):
    relay = relay_to(sims.slow)
    relayed = {"type": "openai", "api_key": "sim-key", "base_url": relay.url + "/v1"}
    client = open_client(write_config(providers={"relayed": relayed}, ledger=tmp_path / "rows.sqlite"))
    stream = client.stream(f"relayed:{MODEL}", LONG_PROMPT)
    first_token(stream)
    stream.close()
    error = stream.transcript.error
    assert error is not None and (error.code, error.message) == ("CANCELLED", "cancelled by the client")  # gateway's
    assert relay.cut.wait(5), "the gateway left the upstream response open after the cancel"
    (row,) = rows_when(tmp_path / "rows.sqlite", session_id=stream.session_id)
    assert (row["status"], row["error_code"]) == ("cancelled", "CANCELLED")


def test_a_killed_gateway_ends_live_sessions_retryably_and_the_next_request_starts_another(base_config, open_client):
    client = open_client(base_config)
    killed = client.backend.channel.pid
    stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
    first_token(stream)
    os.kill(killed, signal.SIGKILL)
    started = time.monotonic()
    rest = list(stream)
    assert time.monotonic() - started < 5
    assert isinstance(rest[-1], Error)
    assert (rest[-1].code, rest[-1].retryable) == ("PROVIDER_UNAVAILABLE", True)
    answer = client.complete("echo", "are you there again?")
    assert "are you there again?" in answer.text
    assert client.backend.channel.pid != killed


def test_a_client_offering_an_unknown_version_is_refused(base_config):
    gateway = subprocess.run(
        gateway_command(base_config),
        input=b'{"type":"hello","versions":["9.9"]}\n',
        capture_output=True,
        timeout=30,
        check=False,
    )
    frames = [decode(line) for line in gateway.stdout.splitlines()]
    assert len(frames) == 1 and isinstance(frames[0], Error), frames
    assert frames[0].session_id == ""  # a connection-level error
    assert "no common GTL version" in frames[0].message
    assert gateway.returncode == 0


def test_a_gateway_answering_an_unknown_version_is_refused():
    fake = (
        "import sys; sys.stdin.readline(); "
        'sys.stdout.write(\'{"type":"hello","version":"9.9"}\\n\'); sys.stdout.flush(); sys.stdin.read()'
    )
    with pytest.raises(VersionMismatchError, match=r"9\.9"):
        gtl_nb.connect(command_endpoint(sys.executable, "-c", fake))


def test_a_gateway_that_exits_before_hello_is_named_with_its_last_words():
    fake = "import sys; sys.stderr.write('gtl gateway: error: no such deployment\\n'); sys.exit(3)"
    with pytest.raises(ProviderUnavailableError, match=r"status 3.*no such deployment"):
        gtl_nb.connect(command_endpoint(sys.executable, "-c", fake))


def test_the_development_token_is_checked(write_config, open_client, monkeypatch, tmp_path):
    monkeypatch.setenv("GTL_NB_DEV_TOKEN", "let-me-in")
    config = write_config(gateway={"auth": "token"}, ledger=tmp_path / "rows.sqlite")
    for token in ("not-it", None):
        with pytest.raises(AuthenticationError, match="token"):
            gtl_nb.connect(f"stdio://{config}", token=token)
    client = open_client(config, token="let-me-in", user="alice")
    answer = client.complete("echo", "who am I?")
    (row,) = rows_when(tmp_path / "rows.sqlite", session_id=answer.session_id)
    assert (row["user"], row["key_id"]) == ("alice", "dev-token")


def test_a_jwt_gateway_without_its_table_refuses_to_start_unchecked(write_config, capfd):
    """A configuration error is permanent: the configuration error class, not retryable, its message
    said once (raised, not also relayed from the child's standard error)."""
    with pytest.raises(ConfigurationError, match=r"cannot start: \[gateway\.jwt\] needs issuer") as caught:
        gtl_nb.connect(f"stdio://{write_config(gateway={'auth': 'jwt'})}")
    assert not caught.value.retryable and not isinstance(caught.value, ProviderUnavailableError)
    assert caught.value.message.count("needs issuer") == 1
    assert "needs issuer" not in capfd.readouterr().err


def test_a_gateway_refusing_its_arguments_is_a_configuration_error():
    fake = "import sys; sys.stderr.write('gtl gateway: error: --http takes HOST:PORT\\n'); sys.exit(2)"
    with pytest.raises(ConfigurationError, match=r"cannot start: --http takes HOST:PORT$"):
        gtl_nb.connect(command_endpoint(sys.executable, "-c", fake))
