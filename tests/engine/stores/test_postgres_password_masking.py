"""Passwords in database URLs and libpq connection strings never reach a message or a log, however libpq
lets them be written: quoted with spaces and escaped quotes (``password='a \\'b'``), escaped bare
(``password=a\\ b``), as a URL query option in another letter case (``?Password=``, refused by libpq by
its name), inside another option's value, or a whole keyword/value connection string given where a URL
or a file's path goes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from gtl_nb.engine.settings import load_settings
from gtl_nb.engine.stores.postgres_pool import describe, parse_postgres_url, shown_url
from gtl_nb.engine.stores.urls import hide_passwords, looks_like_keyword_dsn
from gtl_nb.protocol.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[3]
PIECES = ("Cn4ry", "s3cr3t", "qu0ted")  # what no message may hold of the passwords below
QUOTED = "'Cn4ry s3cr3t \\'qu0ted\\' x'"  # libpq's quoting: spaces, and escaped quotes inside
BARE = "Cn4ry\\ s3cr3t\\ qu0ted"  # libpq's bare value: a backslash escapes the blank after it
DSN = f"host=127.0.0.1 port=1 user=gtl password={QUOTED} dbname=gtl"


def leaks(text: str) -> list[str]:
    return [piece for piece in PIECES if piece.lower() in text.lower()]


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        (DSN, "host=127.0.0.1 port=1 user=gtl password=*** dbname=gtl"),
        (f"user=gtl password={BARE} sslmode=require", "user=gtl password=*** sslmode=require"),
        (f"PASSWORD = {QUOTED}", "PASSWORD = ***"),
        (f"sslpassword={QUOTED} passfile=/home/Cn4ry/.pgpass", "sslpassword=*** passfile=***"),
        ("password='Cn4ry s3cr3t never closed", "password=***"),
        ("?user=gtl&Password=Cn4ry&sslmode=require", "?user=gtl&Password=***&sslmode=require"),
        ("a passenger=3 and bypass=Cn4ry", "a passenger=3 and bypass=Cn4ry"),  # no password option: as it was
    ],
)
def test_hide_passwords_takes_a_password_options_whole_value_as_libpq_reads_it(text, hidden):
    assert hide_passwords(text) == hidden


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://gtl@127.0.0.1:1/gtl?password={quote(QUOTED, safe='')}",
        f"postgresql://gtl@127.0.0.1:1/gtl?Password={quote(QUOTED, safe='')}",  # refused by libpq by its name
        f"postgresql://gtl@127.0.0.1:1/gtl?passwd={quote(BARE, safe='')}",
        f"postgresql://gtl@127.0.0.1:1/gtl?sslmode=prefer&dbname={quote(DSN, safe='')}",  # inside another value
        f"postgresql://gtl@127.0.0.1:1/gtl?application_name=x&options={quote(f'-c password={QUOTED}', safe='')}",
        f"postgresql://gtl:{quote('Cn4ry s3cr3t qu0ted', safe='')}@127.0.0.1:1/gtl?sslmode=nonsense",
    ],
)
def test_a_url_is_shown_and_refused_without_its_password(url):
    pytest.importorskip("psycopg")
    assert leaks(shown_url(url)) == []
    try:
        parsed = parse_postgres_url(url)
    except ConfigurationError as refused:
        assert leaks(str(refused)) == []
    else:
        assert leaks(parsed.shown) == [] and leaks(repr(parsed)) == []


def test_a_keyword_value_connection_string_is_refused_unquoted_where_a_url_goes():
    pytest.importorskip("psycopg")
    assert looks_like_keyword_dsn(DSN) and not looks_like_keyword_dsn("/var/lib/gtl/ledger.sqlite3")
    with pytest.raises(ConfigurationError, match="keyword/value connection string") as refused:
        parse_postgres_url(DSN, where="[gateway.audit] url")
    assert leaks(str(refused.value)) == []
    with pytest.raises(ConfigurationError, match="expected a postgresql://") as refused:
        parse_postgres_url("mysql://gtl:Cn4ry%20s3cr3t@db/gtl?password=qu0ted")
    assert leaks(str(refused.value)) == []


def test_a_keyword_value_connection_string_as_the_ledgers_path_is_refused_unquoted(tmp_path: Path):
    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\npath = "{DSN.replace(chr(92), chr(92) * 2)}"\n')
    with pytest.raises(ConfigurationError, match="keyword/value connection string") as refused:
        load_settings(config=config, environ={})
    assert leaks(str(refused.value)) == []
    assert list(tmp_path.iterdir()) == [config]  # no file named after the password


@pytest.mark.parametrize("command", [["usage"], ["ledger", "prune", "--days", "3"]])
def test_gtl_refuses_a_connection_string_given_as_ledger_without_quoting_it(tmp_path: Path, command: list[str]):
    done = subprocess.run(
        [sys.executable, "-m", "gtl_nb", *command, "--ledger", DSN],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "keyword/value connection string" in done.stderr
    assert leaks(done.stdout + done.stderr) == []
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing named after the password


def test_a_libpq_message_repeating_a_password_option_is_described_without_it():
    error = RuntimeError(f'invalid connection option in "user=gtl password={QUOTED}"\nDETAIL: more')
    assert leaks(describe(error)) == []
    assert describe(error).startswith('invalid connection option in "user=gtl password=***')
