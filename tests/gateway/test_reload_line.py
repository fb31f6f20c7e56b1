"""The reload's line names exactly what changed: budget limits by their tables, the token policy only
when it differs (and by the ``[gateway.jwt]`` keys that do), nothing for a file that did not change,
and ``[upstream]`` as a restart's. In process, with a ``Reloader`` on a real engine and token checker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.auth import build_authenticator
from gtl_nb.gateway.reload import Reloader, SwappableAuthenticator
from gtl_nb.gateway.reload_changes import policy_changes
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.gateway.tokens import TokenPolicy
from tests.gateway.conftest import write_toml

SECRET_ENV = "GTL_TEST_RELOAD_LINE_SECRET"
ENV_NOTE = (  # every reload line of a gateway reading its secret from the environment ends so
    "; [gateway.jwt] secret_env is read at start: restart to apply a new value of $GTL_TEST_RELOAD_LINE_SECRET "
    "(a secret_file is read again at each reload)"
)
SECRET = "reload-line-secret-0123456789abcdef-first"
ISSUER = "reload-line"


def _tables(tmp_path: Path, *, budgets: dict[str, Any] | None = None, **more: Any) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {
        "providers.echo": {},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        "gateway": {"auth": "jwt"},
        "gateway.jwt": {
            "issuer": ISSUER,
            "secret_env": SECRET_ENV,
            "default_deployments": ["*"],
            "revocations": str(tmp_path / "tokens.sqlite3"),
        },
    }
    for name, table in (budgets or {}).items():
        tables[name] = table
    tables.update(more)
    return tables


class _Gateway:
    """A configuration file, an engine and the swappable token checker a reload changes."""

    def __init__(self, tmp_path: Path, tables: dict[str, dict[str, Any]]) -> None:
        self.config = write_toml(tmp_path / "gtl.toml", tables)
        settings = load_settings(config=self.config)
        self.engine = build_engine(settings)
        self.hook = SwappableAuthenticator(build_authenticator(settings, GatewaySettings.from_settings(settings)))
        self.reloader = Reloader(self.engine, config=self.config, settings=settings, authenticate=self.hook)

    def reload(self, tables: dict[str, dict[str, Any]]) -> str:
        write_toml(self.config, tables)
        return self.reloader.reload()

    def close(self) -> None:
        self.hook.target.revocations.close()  # type: ignore[attr-defined]
        asyncio.run(self.engine.aclose())


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Gateway]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    made = _Gateway(tmp_path, _tables(tmp_path))
    yield made
    made.close()


def test_a_reload_of_an_unchanged_file_says_so_and_not_that_the_token_policy_was_renewed(
    tmp_path: Path, gateway: _Gateway
):
    assert gateway.reload(_tables(tmp_path)) == "reloaded the configuration: no change to apply" + ENV_NOTE


def test_a_new_secret_in_the_same_place_renews_the_token_policy_and_the_line_says_which_key(
    tmp_path: Path, gateway: _Gateway, monkeypatch: pytest.MonkeyPatch
):
    """The table is the same; the secret it points at is not (a rotation): the policy is renewed. (In a
    gateway process the environment never changes; an embedder's may, and the line then has no note.)"""
    monkeypatch.setenv(SECRET_ENV, "reload-line-secret-0123456789abcdef-second")
    line = gateway.reload(_tables(tmp_path))
    assert line == "reloaded the configuration: token policy renewed (secret)", line
    assert "0123456789" not in line


def test_budget_limit_changes_are_named_by_their_tables(tmp_path: Path, gateway: _Gateway):
    budgets = {
        "budgets": {"requests_per_minute": 60},
        "budgets.users.alice": {"requests_per_minute": 5},
        "budgets.tenants.acme": {"usd_per_day": 3.0},
    }
    line = gateway.reload(_tables(tmp_path, budgets=budgets))
    assert line == (
        "reloaded the configuration: [budgets] limits, [budgets.users.alice], [budgets.tenants.acme]" + ENV_NOTE
    ), line
    assert gateway.engine.budgets.limits_for("alice").requests_per_minute == 5
    # only alice's own limit changes now: the default and the tenant's stay, so neither is named
    budgets["budgets.users.alice"] = {"requests_per_minute": 6}
    assert gateway.reload(_tables(tmp_path, budgets=budgets)) == (
        "reloaded the configuration: [budgets.users.alice]" + ENV_NOTE
    )
    # many users at once: five are named, the rest counted
    many = {**budgets, **{f"budgets.users.u{number}": {"requests_per_minute": 1} for number in range(7)}}
    line = gateway.reload(_tables(tmp_path, budgets=many))
    assert line == (
        "reloaded the configuration: [budgets.users.u0], [budgets.users.u1], [budgets.users.u2], "
        "[budgets.users.u3], [budgets.users.u4], 2 more [budgets.users.*]" + ENV_NOTE
    ), line


def test_an_upstream_change_is_named_restart_to_apply(tmp_path: Path, gateway: _Gateway):
    """The HTTP client and its pool are made at start: a reload cannot change them, and says so."""
    line = gateway.reload(_tables(tmp_path, upstream={"max_connections": 7}))
    assert (
        line
        == "reloaded the configuration: no change to apply; changed but not reloadable, restart to apply: [upstream]"
        + ENV_NOTE
    )


def test_the_secret_env_note_is_no_item_of_what_a_partial_reload_left_undone(tmp_path: Path, gateway: _Gateway):
    """``gtl reload``'s "took the reload in part: …" lists what is left to do; the note that a secret in
    the environment is read at start is said on every such reload, whether the secret changed or not, so
    it stays in the gateway's line (once) and out of that list, where it read as one more pending restart."""
    from gtl_nb.gateway.reload_cli import _what_is_left

    line = gateway.reload(_tables(tmp_path, upstream={"max_connections": 7}))
    assert line.count("secret_env is read at start") == 1, line
    assert _what_is_left(line) == "restart the gateway to apply [upstream]"


def test_public_keys_compare_by_what_they_are_not_by_which_object(tmp_path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def key_file(name: str) -> Path:
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        path = tmp_path / name
        path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return path

    first, second = key_file("one.pem"), key_file("two.pem")

    def policy(path: Path, **more: Any) -> TokenPolicy:
        return TokenPolicy.from_table({"issuer": ISSUER, "public_key_file": str(path), **more}, tmp_path, {})

    assert policy_changes(policy(first), policy(first)) == []  # read twice: two objects, the same key
    assert policy_changes(policy(first), policy(second)) == ["public keys"]
    assert policy_changes(policy(first), policy(second, audience="other", leeway=5)) == [
        "audience",
        "public keys",
        "leeway",
    ]
