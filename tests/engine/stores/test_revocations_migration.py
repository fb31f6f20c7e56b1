"""Moving revocations from a gateway's token store to Redis (docs/deploy.md, "Moving revocations to
Redis"): a token revoked on the single gateway must stay refused by the replicas.

Each replica reads the token store of its own data directory (the systemd unit sets
``XDG_DATA_HOME`` to its state directory), never the one ``gtl token revoke`` wrote before the move:
a replica that finds the shared list new and has nothing to write into it says so loudly, and
``gtl token push-revocations --from STORE`` copies the old store into the shared list.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from gtl_nb.gateway.local import start_gateway
from gtl_nb.gateway.tokens import mint_token
from tests.gateway.conftest import write_toml

SECRET = "migration-secret-0123456789abcdef01234567"
SECRET_ENV = "GTL_TEST_MIGRATION_SECRET"
ISSUER = "gtl-migration-test"
PROMPT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def tables(tmp_path: Path, revocations: str | None) -> dict[str, dict[str, Any]]:
    jwt: dict[str, Any] = {"issuer": ISSUER, "secret_env": SECRET_ENV, "default_deployments": ["*"], "refresh": 0.2}
    if revocations is not None:
        jwt["revocations"] = revocations
    return {
        "providers.echo": {},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        "gateway": {"auth": "jwt", "shutdown_grace": 1},
        "gateway.jwt": jwt,
    }


def gtl(config: Path, data_home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_DATA_HOME": str(data_home), SECRET_ENV: SECRET}
    return subprocess.run(
        [sys.executable, "-m", "gtl_nb", "--config", str(config), "token", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_revocation_made_before_the_move_to_redis_is_announced_and_pushed(tmp_path: Path, redis_url: str):
    single = write_toml(tmp_path / "single.toml", tables(tmp_path, None))
    shared = write_toml(tmp_path / "shared.toml", tables(tmp_path, redis_url))
    operator_home = tmp_path / "operator"  # where gtl token revoke ran, on the single gateway's host
    bearer = mint_token(SECRET, subject="leaked", scopes=("chat:write",), lifetime=600, issuer=ISSUER)
    jti = str(__import__("jwt").decode(bearer, options={"verify_signature": False})["jti"])
    revoked = gtl(single, operator_home, "revoke", jti, "--minted-elsewhere")
    assert revoked.returncode == 0, revoked.stderr
    old_store = operator_home / "gtl_nb" / "tokens.sqlite3"
    assert f"in the token store {old_store}" in revoked.stdout  # the file it wrote, named

    replica_home = tmp_path / "replica-a"  # the unit's XDG_DATA_HOME: its own, empty data directory
    env = {SECRET_ENV: SECRET, "XDG_DATA_HOME": str(replica_home)}
    with start_gateway(shared, env=env) as gateway, httpx.Client(timeout=30) as client:
        url = f"{gateway.url('http')}/v1/chat/completions"
        headers = {"authorization": f"Bearer {bearer}"}
        output = "".join(gateway.output)
        # the replica cannot know the old store: it says the list is new and it had nothing for it
        assert "is NOT in the shared list, and its token is accepted" in output, output
        assert str(replica_home / "gtl_nb" / "tokens.sqlite3") in output
        assert "token push-revocations --from" in output

        pushed = gtl(shared, tmp_path / "elsewhere", "push-revocations", "--from", str(old_store))
        assert pushed.returncode == 0, pushed.stderr
        assert f"pushed 1 unexpired revocation(s) from {old_store}" in pushed.stdout

        deadline = time.monotonic() + 15
        while client.post(url, json=PROMPT, headers=headers).status_code == 200:
            assert time.monotonic() < deadline, "the pushed revocation never reached the replica"
            time.sleep(0.1)
        assert client.post(url, json=PROMPT, headers=headers).status_code == 401
    # a second replica starting now finds the list marked: no warning, and the token refused
    with start_gateway(shared, env={**env, "XDG_DATA_HOME": str(tmp_path / "replica-b")}) as gateway:
        assert "is NOT in the shared list" not in "".join(gateway.output)
        with httpx.Client(timeout=30) as client:
            answer = client.post(f"{gateway.url('http')}/v1/chat/completions", json=PROMPT, headers=headers)
        assert answer.status_code == 401


def test_push_revocations_says_what_it_needs(tmp_path: Path, redis_url: str):
    single = write_toml(tmp_path / "single.toml", tables(tmp_path, None))
    shared = write_toml(tmp_path / "shared.toml", tables(tmp_path, redis_url))
    refused = gtl(single, tmp_path / "op", "push-revocations")
    assert refused.returncode != 0 and "names no redis:// URL" in refused.stderr, refused.stderr
    missing = gtl(shared, tmp_path / "op", "push-revocations", "--from", str(tmp_path / "nope.sqlite3"))
    assert missing.returncode != 0 and f"no token store at {tmp_path / 'nope.sqlite3'}" in missing.stderr
    assert "Traceback" not in refused.stderr + missing.stderr


def test_push_revocations_writes_nothing_into_the_file_it_reads_and_refuses_one_that_is_no_token_store(
    tmp_path: Path, redis_url: str
):
    """``--from`` named a ledger's copy: it gained ``revoked`` and ``minted`` tables and the command said
    "pushed 0", exit 0. The source is opened read-only; a file that is not a token store is refused."""
    shared = write_toml(tmp_path / "shared.toml", tables(tmp_path, redis_url))
    ledger = tmp_path / "ledger-copy.sqlite"
    with sqlite3.connect(ledger) as conn:
        conn.execute("CREATE TABLE usage (session_id TEXT, cost REAL)")
        conn.execute("INSERT INTO usage VALUES ('s1', 0.5)")
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 20)
    for source in (ledger, text):
        before = hashlib.sha256(source.read_bytes()).hexdigest()
        refused = gtl(shared, tmp_path / "op", "push-revocations", "--from", str(source))
        assert refused.returncode != 0, (refused.stdout, refused.stderr)
        assert f"{source} is not a token store" in refused.stderr and "nothing was pushed" in refused.stderr
        assert "pushed" not in refused.stdout and "Traceback" not in refused.stderr, refused.stderr
        assert hashlib.sha256(source.read_bytes()).hexdigest() == before  # not a byte written
    with sqlite3.connect(ledger) as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["usage"]
    conn.close()


def test_push_revocations_writes_thousands_in_a_bounded_number_of_redis_calls(tmp_path: Path):
    """Each revocation was written with its own call, then the set pruned and read whole again: quadratic
    (4,000 took a minute). Counted in Redis's own command statistics, never timed."""
    import redis

    from gtl_nb.gateway.tokens import SqliteTokenStore
    from tests.redis_server import RedisServer

    count = 3000
    server = RedisServer.start(tmp_path / "redis")  # its own: no other test's list talks to it
    try:
        config = tables(tmp_path, server.url)
        config["gateway.jwt"]["refresh"] = 3600  # the command's list looks once, when it opens
        shared = write_toml(tmp_path / "shared.toml", config)
        store = tmp_path / "old" / "tokens.sqlite3"
        store.parent.mkdir()
        with SqliteTokenStore(store):
            pass
        later, now = time.time() + 3600, time.time()
        with sqlite3.connect(store) as conn:
            rows = [(f"jti-{n:05d}", later + n, now) for n in range(count)]
            rows.append(("jti-expired", now - 10, now - 20))  # expired: not pushed
            conn.executemany("INSERT INTO revoked (jti, expires_at, revoked_at) VALUES (?, ?, ?)", rows)
        conn.close()
        before = hashlib.sha256(store.read_bytes()).hexdigest()
        client = redis.Redis.from_url(server.url)
        try:
            client.config_resetstat()
            pushed = gtl(shared, tmp_path / "op", "push-revocations", "--from", str(store))
            assert pushed.returncode == 0, pushed.stderr
            assert f"pushed {count} unexpired revocation(s)" in pushed.stdout, pushed.stdout
            assert f"(it holds {count} now)" in pushed.stdout, pushed.stdout
            stats = client.info("commandstats")
            calls = {name.removeprefix("cmdstat_"): entry["calls"] for name, entry in stats.items()}
            # a few scripts (batches of REVOKE_BATCH, the prune, the first look's marker), a few reads
            assert calls.get("eval", 0) <= 10 and calls.get("zrange", 0) <= 10, calls
            # what a replica reads: every entry, with its own expiry
            members = dict(client.zrange("gtl:revoked", 0, -1, withscores=True))
            assert members[b"jti-00000"] == later and members[f"jti-{count - 1:05d}".encode()] == later + count - 1
            assert b"jti-expired" not in members and len(members) == count + 1  # (and the marker)
        finally:
            client.close()
        assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    finally:
        server.stop()


def test_revoke_many_is_revoke_for_each(redis_url: str):
    """As ``revoke`` one by one: an earlier revocation's later time kept, an expired one pruned, the list
    read again (``is_revoked`` knows them at once)."""
    from gtl_nb.gateway.tokens.redis_revocations import RedisRevocationList

    now = time.time()
    with RedisRevocationList(redis_url, refresh=3600) as shared:
        shared.revoke("a", now + 100)
        shared.revoke("b", now + 100)
        shared.revoke_many({"a": now + 50, "b": now + 200, "c": now + 300, "gone": now - 1})
        assert shared.revoked() == {"a": now + 100, "b": now + 200, "c": now + 300}
        assert shared.is_revoked("c") and not shared.is_revoked("gone")
        shared.revoke_many({})  # nothing to write: nothing written


def test_a_replica_writing_back_its_own_revocations_says_others_are_not_among_them(redis_url: str, caplog):
    from gtl_nb.gateway.tokens.redis_revocations import RedisRevocationList

    own = {"revoked-on-this-replica": time.time() + 600}
    source = "/state/a/tokens.sqlite3"
    with (
        caplog.at_level("WARNING", logger="gtl_nb"),
        RedisRevocationList(redis_url, restore_from=lambda: own, restore_source=source),
    ):
        pass
    assert "wrote back 1 revocation(s)" in caplog.text
    assert "another token store than /state/a/tokens.sqlite3 is not among them" in caplog.text
    assert "gtl token push-revocations --from" in caplog.text
