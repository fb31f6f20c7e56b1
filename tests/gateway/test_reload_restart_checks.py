"""A reload checks the tables it cannot apply as a start checks them: a change a start would refuse
refuses the reload ("reload refused, still serving the previous configuration", ``gtl reload`` exit 1)
instead of advising a restart that then fails (a vault ``keys`` mistake was "restart to apply", exit 3,
and the advised restart did not start)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.auth import build_credentials
from gtl_nb.gateway.certs import make_dev_certificates
from gtl_nb.gateway.local import LocalGateway
from gtl_nb.gateway.reload import Reloader, SwappableAuthenticator
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.gateway.vault import MasterKey, Vault, generate_master_key
from gtl_nb.protocol.errors import ConfigurationError
from tests.gateway.conftest import write_toml

OPENAI_KEY = "sk-restart-check-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-restart-check-0123456789"


def _vault(tmp_path: Path) -> Path:
    """A vault with one key bound to each of two deployments; its master key in a private file."""
    text = generate_master_key()
    key_file = tmp_path / "vault.key"
    key_file.write_text(text + "\n")
    key_file.chmod(0o600)
    vault = Vault(tmp_path / "vault.json", MasterKey.from_text(text, str(key_file)))
    vault.add("team-openai", OPENAI_KEY, "openai")
    vault.add("team-anthropic", ANTHROPIC_KEY, "anthropic")
    return key_file


def _tables(tmp_path: Path, keys: dict[str, str], **more: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        # never called: the tests send no request
        "providers.openai": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "providers.anthropic": {"type": "anthropic", "base_url": "http://127.0.0.1:9"},
        "ledger": {"path": tmp_path / "ledger.sqlite"},
        "gateway": {"shutdown_grace": 1},
        "gateway.vault": {"path": tmp_path / "vault.json", "master_key_file": tmp_path / "vault.key", "keys": keys},
        **more,
    }


def _gtl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gtl_nb", *args], capture_output=True, text=True, timeout=60)


GOOD_KEYS = {"openai": "team-openai", "anthropic": "team-anthropic"}


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ({"openai": "team-anthropic"}, "[gateway.vault] keys: stored key 'team-anthropic' is for deployment "),
        ({"openai": "team-openai", "anthropc": "team-anthropic"}, "keys names deployment 'anthropc', which is not"),
    ],
    ids=["key-of-another-deployment", "deployment-not-configured"],
)
def test_a_vault_keys_mistake_refuses_the_reload_in_the_starts_own_words(
    tmp_path: Path, keys: dict[str, str], words: str
) -> None:
    _vault(tmp_path)
    config = write_toml(tmp_path / "gtl.toml", _tables(tmp_path, GOOD_KEYS))
    pidfile = tmp_path / "gateway.pid"
    command = [sys.executable, "-m", "gtl_nb", "serve", "--config", str(config), "--http", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*command, "--pidfile", str(pidfile)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with LocalGateway(process, config) as gateway:
        pid = gateway.process.pid
        write_toml(config, _tables(tmp_path, keys))
        start = _gtl("serve", "--config", str(config), "--http", "127.0.0.1:0")  # what the advised restart meets
        assert start.returncode == 2 and words in start.stderr, start.stderr
        reasons = start.stderr.strip().removeprefix("gtl: error: ")
        refused = _gtl("reload", "--pidfile", str(pidfile))
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        said = f"gtl reload: gateway {pid}: reload refused, still serving the previous configuration: {reasons}"
        assert refused.stderr.strip() == said, refused.stderr
        # a change a start takes is still "restart to apply" (exit 3), as before
        write_toml(config, _tables(tmp_path, {"openai": "team-openai"}))
        in_part = _gtl("reload", "--pidfile", str(pidfile))
        assert in_part.returncode == 3, (in_part.stdout, in_part.stderr)
        assert "restart the gateway to apply [gateway.vault]" in in_part.stderr, in_part.stderr
        assert gateway.running
    for secret in (OPENAI_KEY, ANTHROPIC_KEY):
        assert secret not in "".join(gateway.output) + refused.stderr + start.stderr


def _reloader(tmp_path: Path, more: dict[str, dict[str, Any]]) -> tuple[Reloader, Any, Path]:
    _vault(tmp_path)
    config = write_toml(tmp_path / "gtl.toml", _tables(tmp_path, GOOD_KEYS, **more))
    settings = load_settings(config=config, environ={})
    credentials = build_credentials(settings, GatewaySettings.from_settings(settings))
    engine = build_engine(settings, credentials=credentials)
    reloader = Reloader(engine, config=config, settings=settings, authenticate=SwappableAuthenticator(lambda _: None))
    return reloader, engine, config


def _certificates(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "tls"
    pair = make_dev_certificates(folder) if not (folder / "ca.pem").exists() else None
    cert, key = (pair.certificate, pair.key) if pair is not None else (folder / "server.pem", folder / "server-key.pem")
    return {"port": 0, "tls_cert": cert, "tls_key": key}


@pytest.mark.parametrize(
    ("changed", "words"),
    [
        (
            lambda tmp: {"gateway.http": {**_certificates(tmp), "tls_cert": tmp / "tls" / "nope.pem"}},
            "cannot load the TLS certificate",
        ),
        (
            lambda tmp: {"gateway.quic": {**_certificates(tmp), "tls_key": tmp / "tls" / "missing-key.pem"}},
            "cannot load the TLS certificate",
        ),
        (
            lambda tmp: {"ledger": {"url": "postgresql://gtl@127.0.0.1:9/gtl?bogus_opt=1"}},
            "ledger: 'postgresql://gtl@127.0.0.1:9/gtl?bogus_opt=1' is not a valid PostgreSQL URL",
        ),
        (
            lambda tmp: {"gateway.audit": {"url": "mysql://gtl:pw@127.0.0.1/gtl"}},
            "[gateway.audit] url: mysql:// is not a database the audit log can use",
        ),
        (
            lambda tmp: {"gateway.tracing": {"enabled": True, "exporter": "zipkin"}},
            "[gateway.tracing] exporter must be one of",
        ),
    ],
    ids=["http-tls-cert", "quic-tls-key", "ledger-url", "audit-url", "tracing-exporter"],
)
def test_a_restart_only_table_a_start_refuses_refuses_the_whole_reload(tmp_path: Path, changed: Any, words: str):
    """Each restart-only table gets the start's check: the reload raises its words, and nothing of the
    same file is applied (the deployment it adds is not served)."""
    base = {"gateway.http": _certificates(tmp_path), "gateway.quic": _certificates(tmp_path)}
    reloader, engine, config = _reloader(tmp_path, base)
    try:
        more = {**base, **changed(tmp_path), "providers.added": {"type": "echo"}}
        write_toml(config, _tables(tmp_path, GOOD_KEYS, **more))
        with pytest.raises(ConfigurationError) as refused:
            reloader.reload()
        assert words in str(refused.value), refused.value
        assert "pw@" not in str(refused.value)
        assert "added" not in engine.deployments
        # the same file without the mistake: taken, the restart-only table named
        write_toml(config, _tables(tmp_path, GOOD_KEYS, **{**base, "providers.added": {"type": "echo"}}))
        assert "+added" in reloader.reload()
    finally:
        asyncio.run(engine.aclose())


def test_a_vault_table_a_start_accepts_is_restart_to_apply_in_process(tmp_path: Path) -> None:
    reloader, engine, config = _reloader(tmp_path, {})
    try:
        write_toml(config, _tables(tmp_path, {"openai": "team-openai"}))
        assert reloader.reload().endswith("restart to apply: [gateway.vault]")
        write_toml(config, _tables(tmp_path, {"openai": "team-anthropic"}))
        with pytest.raises(ConfigurationError, match="'team-anthropic' is for deployment 'anthropic', not 'openai'"):
            reloader.reload()
    finally:
        asyncio.run(engine.aclose())
