"""Start-up warnings about secrets written in the gateway's configuration file: a file every user of the
host can read that holds one gets the ``chmod`` to run; a literal ``api_key`` the vault overrides is
said to be never used. Neither message quotes a secret."""

from __future__ import annotations

import io
import os
from pathlib import Path

from gtl_nb.cli import main as gtl
from gtl_nb.gateway.config_exposure import config_file_warnings
from gtl_nb.gateway.local import start_gateway
from tests.gateway.conftest import write_toml

KEY = "sk-canary-inconfig-7777aa"
PASSWORD = "redis-canary-pw-93b1"


def _tables(folder: Path, **vault: object) -> dict[str, dict[str, object]]:
    tables: dict[str, dict[str, object]] = {
        "providers.openai": {"type": "openai", "api_key": KEY, "base_url": "http://127.0.0.1:9/v1"},
        "gateway.http": {"port": 0},
        "ledger": {"path": str(folder / "ledger.sqlite3")},
    }
    if vault:
        tables["gateway.vault"] = vault
    return tables


def test_a_world_readable_file_holding_a_key_gets_a_warning_with_the_chmod(tmp_path: Path):
    config = write_toml(tmp_path / "gtl.toml", _tables(tmp_path))
    os.chmod(config, 0o644)
    with start_gateway(config, env={"GTL_NB_LOG": ""}) as gateway:
        output = "".join(gateway.output)
    warned = [line for line in gateway.output if "every user of this host can read it" in line]
    assert len(warned) == 1, output
    assert warned[0].startswith(f"gtl gateway: warning: the configuration file {config} holds secrets")
    assert "[providers.openai] api_key" in warned[0] and f"chmod o-rwx {config}" in warned[0]
    assert "(mode 0644)" in warned[0] and KEY not in output


def test_a_private_file_or_one_without_secrets_gets_no_warning(tmp_path: Path):
    config = write_toml(tmp_path / "gtl.toml", _tables(tmp_path))
    os.chmod(config, 0o640)  # the shipped layout: root:gtl 0640
    assert config_file_warnings(config) == []
    plain = write_toml(tmp_path / "plain.toml", {"providers.echo": {}, "gateway.http": {"port": 0}})
    os.chmod(plain, 0o644)
    assert config_file_warnings(plain) == []


def test_a_url_with_a_password_and_a_secret_key_count_and_a_secret_env_does_not(tmp_path: Path):
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "budgets": {"backend": f"redis://:{PASSWORD}@127.0.0.1:6379/0"},
            "providers.proxied": {"type": "openai", "headers": {"x-proxy-key": PASSWORD}},
            "gateway.jwt": {"secret_env": "GTL_JWT_SECRET", "issuer": "gtl"},
        },
    )
    os.chmod(config, 0o644)
    (warning,) = config_file_warnings(config)
    assert "[budgets] backend (a URL with a password)" in warning and "secret_env" not in warning
    assert "[providers.proxied] headers" in warning
    assert PASSWORD not in warning


def test_a_literal_api_key_the_vault_overrides_is_said_to_be_never_used(tmp_path: Path, monkeypatch):
    master = tmp_path / "vault.key"
    assert gtl(["keys", "genkey", "--out", str(master)]) == 0
    vault = tmp_path / "vault.json"  # (a vault path naming no file refuses the start: it is made first)
    where = ["--vault", str(vault), "--key-file", str(master)]
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-vault-held-0123456789\n"))
    assert gtl(["keys", "add", "team-openai", "--deployment", "openai", *where]) == 0
    tables = _tables(tmp_path, path=str(vault), master_key_file=str(master), keys={"openai": "team-openai"})
    config = write_toml(tmp_path / "gtl.toml", tables)
    os.chmod(config, 0o600)
    with start_gateway(config, env={"GTL_NB_LOG": ""}) as gateway:
        output = "".join(gateway.output)
    warned = [line for line in gateway.output if "api_key is never used" in line]
    assert len(warned) == 1, output
    assert "[providers.openai] api_key is never used: [gateway.vault] keys gives 'openai' the stored key" in warned[0]
    assert "every user of this host" not in output and KEY not in output
