"""What each ``stdio://`` endpoint starts, and the mistakes ``connect`` refuses before starting anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import gtl_nb
from gtl_nb.protocol import ConfigurationError
from gtl_nb.transports.stdio import parse_stdio

GATEWAY = [sys.executable, "-m", "gtl_nb.gateway", "--stdio"]


def test_the_bare_endpoint_runs_the_gateway_with_the_usual_configuration():
    target = parse_stdio("stdio://")
    assert (target.argv, target.config, target.builtin) == (GATEWAY, None, True)


def test_a_path_names_the_gateways_configuration(tmp_path, monkeypatch):
    assert parse_stdio("stdio:///etc/gtl%20nb/gtl.toml").argv == [*GATEWAY, "--config", "/etc/gtl nb/gtl.toml"]
    monkeypatch.chdir(tmp_path)
    relative = parse_stdio("stdio://team.toml")
    assert relative.config == str(tmp_path / "team.toml")
    assert parse_stdio("stdio://team.toml", principal="alice").argv[-2:] == ["--principal", "alice"]


def test_a_command_runs_as_written():
    target = parse_stdio("stdio://?command=ssh%20gw.example%20gtl%20serve%20--stdio%20--config%20%27a%20b.toml%27")
    assert target.argv == ["ssh", "gw.example", "gtl", "serve", "--stdio", "--config", "a b.toml"]
    assert not target.builtin
    assert "ssh gw.example" in target.label


@pytest.mark.parametrize(
    ("endpoint", "principal", "message"),
    [
        ("stdio://?cmd=x", None, "unknown option 'cmd'"),
        ("stdio://x.toml?command=gtl", None, "both a config path and command="),
        ("stdio://?command=", None, "command= is empty"),
        ("stdio://?command=%22unclosed", None, "cannot split"),
        ("stdio://?command=gtl", "alice", "add --principal to it"),
        ("tcp://x", None, "not a stdio endpoint"),
    ],
)
def test_malformed_endpoints_are_refused(endpoint, principal, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_stdio(endpoint, principal=principal)


def test_connect_refuses_local_configuration_for_a_gateway(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="takes no providers="):
        gtl_nb.connect("stdio://", providers={"openai": {"api_key": "k"}})
    with pytest.raises(ConfigurationError, match="takes no ledger="):
        gtl_nb.connect("stdio://", ledger=False)
    with pytest.raises(ConfigurationError, match="does not exist"):
        gtl_nb.connect(f"stdio://{tmp_path / 'missing.toml'}")


def test_a_command_that_does_not_exist_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="cannot start"):
        gtl_nb.connect("stdio://?command=/nonexistent/gtl-gateway%20--stdio")
    with pytest.raises(ConfigurationError, match="cannot start") as bare_name:  # looked up in $PATH
        gtl_nb.connect("stdio://?command=no-such-gtl-command%20--stdio")
    assert "None" not in str(bare_name.value) and "no-such-gtl-command" in str(bare_name.value)


def _audited_config(tmp_path: Path) -> Path:
    config = tmp_path / "gtl.toml"
    config.write_text(
        f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n\n[gateway.audit]\npath = "{tmp_path / "audit.jsonl"}"\n',
        encoding="utf-8",
    )
    return config


def test_a_stdio_gateway_writes_the_audit_log_its_configuration_names(tmp_path: Path):
    """It opened its engine alone: every request left its ledger row and no audit record, silently."""
    from gtl_nb.engine.ledger import Ledger

    client = gtl_nb.connect(f"stdio://{_audited_config(tmp_path)}")
    try:
        answers = [client.complete("echo", f"audited {i}") for i in range(2)]
    finally:
        client.close()  # the gateway exits: its audit log and ledger closed
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    finished = [record for record in records if record.get("session_id")]
    assert sorted(r["session_id"] for r in finished) == sorted(a.session_id for a in answers)
    rows = {row["session_id"] for row in Ledger(tmp_path / "ledger.sqlite3").rows()}
    assert rows == {a.session_id for a in answers}  # one row and one record for each request


def test_a_second_stdio_gateway_on_the_same_audit_log_is_refused_in_words(tmp_path: Path):
    config = _audited_config(tmp_path)
    first = gtl_nb.connect(f"stdio://{config}")
    try:
        assert first.complete("echo", "holds the log").text
        with pytest.raises(gtl_nb.GTLError, match="another process is writing the audit log"):
            gtl_nb.connect(f"stdio://{config}").complete("echo", "refused")
    finally:
        first.close()
