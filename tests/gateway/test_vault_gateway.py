"""A gateway and its vault file as an operator meets them: a ``path`` that names no file while ``keys``
gives stored keys refuses the start (naming the path); a vault damaged under a running gateway is
``degraded`` in ``/readyz`` and ``gtl_store_degraded{store="vault"}`` until a good file is read again
(said in one line); ``gtl keys list`` of a file that does not exist says so, with a non-zero status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from gtl_nb.gateway.local import start_gateway
from gtl_nb.gateway.vault import MasterKey, Vault, generate_master_key
from tests.gateway.conftest import write_toml

OPENAI_KEY = "sk-vault-gateway-openai-0123456789"


def _vault(folder: Path) -> Path:
    """A vault holding one key for deployment ``openai``; its master key in a private file (returned)."""
    text = generate_master_key()
    key_file = folder / "vault.key"
    key_file.write_text(text + "\n")
    key_file.chmod(0o600)
    Vault(folder / "vault.json", MasterKey.from_text(text, str(key_file))).add("team-openai", OPENAI_KEY, "openai")
    return key_file


def _tables(folder: Path, vault_path: str) -> dict[str, dict[str, Any]]:
    return {
        "providers.openai": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},  # never called
        "providers.echo": {},
        "ledger": {"path": folder / "ledger.sqlite"},
        "gateway": {"shutdown_grace": 1},
        "gateway.http": {"port": 0},
        "gateway.metrics": {"require_token": False},
        "gateway.vault": {
            "path": vault_path,  # relative: read from the configuration file's folder
            "master_key_file": folder / "vault.key",
            "keys": {"openai": "team-openai"},
            "check_interval": 0,
        },
    }


def _gtl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gtl_nb", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_a_vault_path_that_names_no_file_refuses_the_start_naming_it(tmp_path: Path) -> None:
    _vault(tmp_path)
    config = write_toml(tmp_path / "gtl.toml", _tables(tmp_path, "vault.jsn"))
    start = _gtl("serve", "--config", str(config), "--http", "127.0.0.1:0")
    assert start.returncode == 2, (start.stdout, start.stderr)
    assert f"[gateway.vault] path: no vault file at {tmp_path / 'vault.jsn'}" in start.stderr, start.stderr
    assert "'team-openai' for 'openai'" in start.stderr and "gtl gateway: ready" not in start.stderr
    assert not (tmp_path / "vault.jsn").exists() and OPENAI_KEY not in start.stderr


def test_gtl_keys_list_of_a_vault_file_that_does_not_exist_says_so(tmp_path: Path) -> None:
    key_file = _vault(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GTL_NB_")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    missing = tmp_path / "vault.jsn"
    listed = _gtl("keys", "list", "--key-file", str(key_file), "--vault", str(missing), env=env)
    assert listed.returncode == 2, (listed.stdout, listed.stderr)
    assert f"no vault file at {missing}" in listed.stderr and listed.stdout == ""
    assert not missing.exists()
    real = _gtl("keys", "list", "--key-file", str(key_file), "--vault", str(tmp_path / "vault.json"), env=env)
    assert real.returncode == 0 and "team-openai" in real.stdout, real.stderr


def test_a_vault_damaged_under_a_running_gateway_is_degraded_until_a_good_file_is_read(tmp_path: Path) -> None:
    _vault(tmp_path)
    good = (tmp_path / "vault.json").read_bytes()
    config = write_toml(tmp_path / "gtl.toml", _tables(tmp_path, "vault.json"))
    with start_gateway(config, env={"GTL_NB_LOG": ""}) as gateway:
        base = gateway.url("http")

        def ready() -> httpx.Response:
            return httpx.get(base + "/readyz", timeout=10)

        def degraded_metric() -> str:
            lines = httpx.get(base + "/metrics", timeout=10).text.splitlines()
            return next(line for line in lines if line.startswith('gtl_store_degraded{store="vault"}'))

        assert ready().json() == {"status": "ready"}
        assert degraded_metric().endswith(" 0.0")
        (tmp_path / "vault.json").write_bytes(good[: len(good) // 2])  # truncated in place
        answer = ready()
        assert answer.status_code == 200 and answer.json()["status"] == "degraded", answer.text
        reason = answer.json()["degraded"]["vault"]  # a loopback caller of a development gateway reads reasons
        assert "damaged or truncated" in reason and "serving the 1 key loaded before" in reason, reason
        assert degraded_metric().endswith(" 1.0")
        assert OPENAI_KEY not in answer.text
        (tmp_path / "vault.json").write_bytes(good)
        assert ready().json() == {"status": "ready"}
        assert degraded_metric().endswith(" 0.0")
        output = "".join(gateway.output)
    again = [line for line in output.splitlines() if "can be used again" in line]
    assert len(again) == 1 and str(tmp_path / "vault.json") in again[0], output
    assert OPENAI_KEY not in output
