"""A URL given where a file's path is read — ``[ledger] path``, ``[gateway.audit] path``,
``[gateway.jwt] revocations`` (which takes a file or a redis:// URL only), ``[ledger] url`` written with
one slash, ``--ledger``, ``connect(ledger=…)`` — is refused where it is read, naming the setting, with
the URL's password masked: read as a path it became a folder named after the password
(``postgresql:/user:PASSWORD@host/db``), listable by every local user, and the setting silently did
something else than the operator meant."""

from __future__ import annotations

from pathlib import Path

import pytest

import gtl_nb
from gtl_nb.cli import main
from gtl_nb.engine.settings import load_settings
from gtl_nb.engine.stores.urls import is_url_shaped, masked_url
from gtl_nb.gateway.audit import AuditSettings
from gtl_nb.gateway.tokens.policy import RevocationSettings
from gtl_nb.protocol.errors import ConfigurationError

CANARY = "PWCANARY9x7z"
URLS = [
    f"postgresql://u:{CANARY}@127.0.0.1:1/db",
    f"postgresql:/u:{CANARY}@127.0.0.1:1/db",  # one slash: no "://" in it
    f"postgres://u:{CANARY}@127.0.0.1:1/db?sslmode=disable",
    f"mysql://u:{CANARY}@127.0.0.1:1/db",
    f"redis:/:{CANARY}@127.0.0.1:1/0",
]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path


def made_of(folder: Path) -> list[str]:
    """Every path under ``folder`` that names the canary (a folder made from the URL)."""
    return [str(path) for path in folder.rglob("*") if CANARY in str(path)]


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigurationError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def write_config(folder: Path, text: str) -> Path:
    path = folder / "gtl.toml"
    path.write_text("[providers.echo]\n" + text, encoding="utf-8")
    return path


@pytest.mark.parametrize("url", URLS)
def test_a_url_as_the_ledger_path_is_refused_at_load(folder, url):
    config = write_config(folder, f'[ledger]\npath = "{url}"\n')
    said = refused(load_settings, config=config)
    assert "[ledger]" in said and "path" in said and "is a URL, not a file's path" in said
    assert CANARY not in said and "***@" in said
    assert not made_of(folder)


def test_a_ledger_url_written_with_one_slash_is_refused_at_load(folder):
    config = write_config(folder, f'[ledger]\nurl = "postgresql:/u:{CANARY}@127.0.0.1:1/db"\n')
    said = refused(load_settings, config=config)
    assert "url" in said and "one slash after postgresql:" in said and "postgresql://" in said
    assert CANARY not in said and not made_of(folder)


@pytest.mark.parametrize("url", [URLS[1], f"mysql:/u:{CANARY}@127.0.0.1:1/db"])
def test_connect_with_a_one_slash_url_as_the_ledger_is_refused(folder, url):
    # (with two slashes the scheme was refused already: "unknown store mysql://…")
    said = refused(gtl_nb.connect, ledger=url)
    assert "is a URL, not a file's path" in said and CANARY not in said
    assert not made_of(folder)


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("key", ["path", "spool_path"])
def test_a_url_as_the_audit_logs_path_is_refused(folder, url, key):
    said = refused(AuditSettings.from_table, {"enabled": True, key: url}, base=folder)
    assert f"[gateway.audit] {key}" in said and CANARY not in said and not made_of(folder)


@pytest.mark.parametrize("url", [u for u in URLS if not u.startswith("redis:/:")] + [f"redis:/:{CANARY}@h:1/0"])
def test_revocations_in_a_store_that_cannot_hold_them_are_refused_saying_which_can(folder, url):
    said = refused(RevocationSettings.from_table, {"revocations": url}, folder)
    assert "[gateway.jwt] revocations" in said and "redis://" in said and "SQLite file" in said
    assert CANARY not in said and not made_of(folder)


def test_token_revoke_with_a_postgresql_revocations_url_refuses_and_makes_nothing(folder, capsys):
    config = write_config(folder, f'[gateway.jwt]\nissuer = "x"\nrevocations = "postgresql://u:{CANARY}@h:1/db"\n')
    assert main(["token", "revoke", "--config", str(config), "some-jti"]) == 2
    out, err = capsys.readouterr()
    assert "[gateway.jwt] revocations" in err and CANARY not in out + err and not made_of(folder)


@pytest.mark.parametrize("command", [["usage"], ["ledger", "prune", "--days", "3"]])
@pytest.mark.parametrize("url", [URLS[1], URLS[3], f"postgress://u:{CANARY}@h:1/db"])
def test_ledger_option_given_a_url_no_ledger_takes_is_refused(folder, capsys, command, url):
    assert main([*command, "--ledger", url]) == 2
    out, err = capsys.readouterr()
    assert "--ledger" in err and "is a URL, not a file's path" in err and CANARY not in out + err


def test_what_is_a_url_and_how_it_is_shown():
    assert not is_url_shaped("C:/Users/me/ledger.sqlite3")  # a Windows path: a one-letter "scheme"
    assert not is_url_shaped("ledger.sqlite3") and not is_url_shaped("/var/lib/gtl/ledger.sqlite3")
    assert masked_url(f"postgresql://u:{CANARY}@h:1/db?password={CANARY}") == "postgresql://u:***@h:1/db?…"
    assert masked_url(f"redis://{CANARY}@h:1/0") == "redis://***@h:1/0"
    assert masked_url(f"postgresql://u:a/b?{CANARY}@h/db") == "postgresql://u:***@h/db"  # unencoded / and ?
