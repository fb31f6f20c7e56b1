"""``gtl --gateway URL complete|models``: the terminal commands on a running gateway, its token read
from ``$GTL_TOKEN`` (never from the command line)."""

from __future__ import annotations

import json

import pytest

from gtl_nb.cli import main
from tests.gateway.conftest import MODEL
from tests.gateway.test_http import gateway


def test_complete_and_models_run_on_the_gateway_with_the_token_from_the_environment(write_config, capsys, monkeypatch):
    with gateway(write_config(), token="cli-token") as url:
        address = url.replace("http://", "ws://")
        monkeypatch.setenv("GTL_TOKEN", "cli-token")
        assert main(["--gateway", address, "complete", "Hello from a terminal", "--model", "echo"]) == 0
        out = capsys.readouterr().out
        assert "Hello from a terminal" in out and "--" in out  # the answer, then its footer
        assert main(["--gateway", address, "models", "--json"]) == 0
        providers = [json.loads(line)["provider"] for line in capsys.readouterr().out.splitlines()]
        assert "openai" in providers  # the gateway's deployments, not this process's
        # --gateway may follow the command's name too (where a user types it after a first try)
        assert main(["complete", "--gateway", address, "after the command", "--model", "echo"]) == 0
        assert "after the command" in capsys.readouterr().out
        assert main(["models", "--json", "--gateway", address]) == 0
        assert "openai" in [json.loads(line)["provider"] for line in capsys.readouterr().out.splitlines()]
        monkeypatch.setenv("GTL_NB_GATEWAY", address)  # the same from the environment
        assert main(["complete", "again", "--model", f"openai:{MODEL}", "--json"]) == 0
        assert '"type":"done"' in capsys.readouterr().out.replace(" ", "")
        monkeypatch.setenv("GTL_TOKEN", "wrong")
        assert main(["complete", "refused", "--model", "echo"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gtl: error:") and "does not accept" in err and "wrong" not in err
        assert "$GTL_TOKEN for gtl --gateway" in err  # the terminal's way to send it


def test_a_gateway_with_a_config_file_is_refused_before_connecting(capsys, tmp_path):
    config = tmp_path / "gtl.toml"
    config.write_text("")
    assert main(["--config", str(config), "--gateway", "ws://127.0.0.1:9", "models"]) == 2
    err = capsys.readouterr().err
    assert "has its own" in err and "$GTL_NB_GATEWAY" in err


def test_credentials_in_a_gateway_address_are_refused_without_being_echoed(capsys):
    assert main(["--gateway", "ws://someone:hunter2-secret@127.0.0.1:9", "models"]) == 2
    err = capsys.readouterr().err
    assert "carries no credentials" in err and "hunter2" not in err and "$GTL_TOKEN" in err


def test_a_token_in_a_gateway_addresss_query_is_refused_without_being_echoed(capsys):
    assert main(["--gateway", "http://127.0.0.1:9/?token=hunter2-secret", "models"]) == 2
    err = capsys.readouterr().err
    assert "query takes compression=none alone" in err and "hunter2" not in err and "$GTL_TOKEN" in err


@pytest.mark.parametrize("command", [["models"], ["complete", "hi"]])
def test_an_unreachable_gateway_is_one_line_saying_so(capsys, command):
    assert main(["--gateway", "ws://127.0.0.1:9", *command]) in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("gtl: error:") and "127.0.0.1:9" in err and "Traceback" not in err


def test_models_with_a_token_that_may_not_list_them_says_why_the_list_is_empty(tmp_path, capsys, monkeypatch):
    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import jwt_echo_gateway

    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "GTL_TEST_CLI_SECRET")
    monkeypatch.setenv("GTL_TOKEN", mint("chat:write"))
    with start_gateway(config) as running:
        assert main(["--gateway", running.url("ws"), "models"]) == 2  # as for a refused token: the command's
        refused = capsys.readouterr()
        assert main(["--gateway", running.url("ws"), "models", "--json"]) == 2
        refused_json = capsys.readouterr()
    for captured in (refused, refused_json):
        assert captured.out == "" and captured.err.startswith("gtl: error:")
        assert "models:read" in captured.err and "no providers listed" not in captured.err
    assert captured.err.count("\n") == 1  # one line


def test_usage_on_a_gateway_reads_what_the_token_may_see(tmp_path, capsys, monkeypatch):
    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import jwt_echo_gateway

    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "GTL_TEST_CLI_SECRET")
    with start_gateway(config) as running:
        address = running.url("ws")
        monkeypatch.setenv("GTL_TOKEN", mint("chat:write", "usage:read"))
        for prompt in ("one", "two"):
            assert main(["--gateway", address, "complete", prompt, "--model", "echo"]) == 0
        capsys.readouterr()
        assert main(["--gateway", address, "usage", "--json"]) == 0
        (group,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert group["model"] == "echo" and group["requests"] == 2 and group["tokens_out"] > 0
        assert main(["usage", "--json", "--gateway", address]) == 0  # the gateway's rows, typed after the command
        assert [json.loads(line)["requests"] for line in capsys.readouterr().out.splitlines()] == [2]
        assert main(["--gateway", address, "usage", "--by", "day"]) == 0
        captured = capsys.readouterr()
        assert captured.out.splitlines()[0].startswith("day") and f"gtl: read the gateway at {address}" in captured.err
        monkeypatch.setenv("GTL_NB_GATEWAY", address)  # the same URL in the environment: still typed, still asked
        assert main(["--gateway", address, "usage", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["requests"] == 2
        monkeypatch.setenv("GTL_TOKEN", mint("chat:write", "usage:admin", subject="boss"))
        assert main(["--gateway", address, "complete", "mine", "--model", "echo"]) == 0
        capsys.readouterr()
        assert main(["--gateway", address, "usage", "--by", "user", "--json"]) == 0  # everyone's, with usage:admin
        by_user = {row["user"]: row["requests"] for row in map(json.loads, capsys.readouterr().out.splitlines())}
        assert by_user == {"ann": 2, "boss": 1}
        monkeypatch.setenv("GTL_TOKEN", mint("chat:write"))  # no usage:read
        assert main(["--gateway", address, "usage"]) == 2
        err = capsys.readouterr().err
        assert "usage:read" in err and "gtl token mint ... --scope usage:read" in err  # the terminal's way to one
        assert "client.usage()" not in err  # (the Python call the gateway names for a Python caller)


def test_models_on_a_gateway_that_serves_nothing_says_so_and_succeeds(tmp_path, capsys, monkeypatch):
    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import jwt_echo_gateway

    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "GTL_TEST_CLI_SECRET")
    # the token may list models, but only of a deployment the gateway does not have: it sees none
    monkeypatch.setenv("GTL_TOKEN", mint("models:read", allowed_deployments=["elsewhere"]))
    with start_gateway(config) as running:
        assert main(["--gateway", running.url("ws"), "models"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no providers listed for this token" in captured.err


def test_models_when_asking_whether_the_token_may_list_them_fails_is_that_error(tmp_path, capsys, monkeypatch):
    from gtl_nb.client import Client
    from gtl_nb.gateway.local import start_gateway
    from gtl_nb.protocol.errors import ProviderUnavailableError
    from tests.gateway.conftest import jwt_echo_gateway

    def lost(self, deployment):
        raise ProviderUnavailableError("the connection to the gateway was lost")

    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "GTL_TEST_CLI_SECRET")
    monkeypatch.setenv("GTL_TOKEN", mint("chat:write"))
    monkeypatch.setattr(Client, "list_models", lost)
    with start_gateway(config) as running:
        assert main(["--gateway", running.url("ws"), "models"]) == 1  # not an empty list, exit 0
    err = capsys.readouterr().err
    assert err.startswith("gtl: error:") and "connection to the gateway was lost" in err


def test_with_both_token_variables_set_the_cli_and_connect_send_the_same_token(tmp_path, capsys, monkeypatch):
    """$GTL_TOKEN first, then $GTL_NB_TOKEN, for the terminal as for Python: the gateway's ledger
    records both requests under the one token's user (the command read the other variable first)."""
    import gtl_nb
    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import jwt_echo_gateway

    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "GTL_TEST_CLI_SECRET")
    monkeypatch.setenv("GTL_TOKEN", mint("chat:write", subject="first"))
    monkeypatch.setenv("GTL_NB_TOKEN", mint("chat:write", subject="fallback"))
    with start_gateway(config) as running:
        assert main(["--gateway", running.url("ws"), "complete", "from the terminal", "--model", "echo"]) == 0
        with gtl_nb.connect(running.url("ws")) as client:
            assert client.complete("echo", "from python").text
    capsys.readouterr()
    assert [row["user"] for row in Ledger(tmp_path / "ledger.sqlite").rows()] == ["first", "first"]
