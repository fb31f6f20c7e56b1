"""The ``RevocationList`` contract (the GhostToken deny-list) against memory, SQLite and Redis, and
the Redis list's promise: a token revoked through one gateway replica is refused by every replica."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from store_kit import T0, FakeClock

from gtl_nb.gateway.tokens import MemoryRevocationList, RevocationList, SqliteTokenStore
from gtl_nb.gateway.tokens.redis_revocations import RedisRevocationList, RevocationStoreError
from gtl_nb.protocol.errors import GTLError


@pytest.fixture
def revocations(backend: str, tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest):
    if backend == "memory":
        yield MemoryRevocationList()
    elif backend == "sqlite":
        store = SqliteTokenStore(tmp_path / "tokens.sqlite3", clock=clock, refresh=5.0)
        yield store
        store.close()
    else:
        with RedisRevocationList(request.getfixturevalue("redis_url"), clock=clock, refresh=5.0) as shared:
            yield shared


def test_it_is_a_revocation_list(revocations: RevocationList):
    assert isinstance(revocations, RevocationList)


def test_a_revoked_token_is_refused_and_others_are_not(revocations: RevocationList):
    revocations.revoke("jti-1", T0 + 3600)
    assert revocations.is_revoked("jti-1") is True
    assert revocations.is_revoked("jti-2") is False


def test_prune_forgets_what_expired_and_keeps_the_later_of_two_revocations(revocations: RevocationList):
    revocations.revoke("short", T0 + 10)
    revocations.revoke("long", T0 + 100)
    revocations.revoke("long", T0 + 20)  # an earlier time does not shorten the entry
    assert revocations.prune(T0 + 50) == 1
    assert (revocations.is_revoked("short"), revocations.is_revoked("long")) == (False, True)
    assert revocations.prune(T0 + 100) == 1
    assert revocations.is_revoked("long") is False


# -- the Redis list's own promises --------------------------------------------------------------------


def test_a_token_revoked_through_one_replica_is_refused_by_the_other(replica_urls: tuple[str, str], clock: FakeClock):
    with (
        RedisRevocationList(replica_urls[0], clock=clock, refresh=5.0) as one,
        RedisRevocationList(replica_urls[1], clock=clock, refresh=5.0) as two,
    ):
        assert two.is_revoked("jti-1") is False  # read at construction: the watcher's next look is in 5 s
        one.revoke("jti-1", T0 + 3600)
        seen = [one.is_revoked("jti-1"), two.is_revoked("jti-1")]  # at once through one; the other at its look
        two.look()  # what its watcher does every 5 s
        seen.append(two.is_revoked("jti-1"))
        assert seen == [True, False, True]
        assert two.revoked() == {"jti-1": T0 + 3600}


def test_the_watcher_brings_a_revocation_made_elsewhere_within_refresh(replica_urls: tuple[str, str]):
    """Nobody calls ``look``: the list's own thread reads the change, with or without traffic."""
    with (
        RedisRevocationList(replica_urls[0], refresh=0.1) as one,
        RedisRevocationList(replica_urls[1], refresh=0.1) as two,
    ):
        assert two.loaded and two.is_revoked("jti-1") is False
        one.revoke("jti-1", time.time() + 3600)
        deadline = time.monotonic() + 5.0  # 0.1 s and a look, on a loaded machine: generous
        while not two.is_revoked("jti-1"):
            assert time.monotonic() < deadline, "the other replica's watcher did not read the revocation"
            time.sleep(0.02)


def test_an_emptied_server_gets_back_what_it_lost_at_the_next_look(redis_url: str, clock: FakeClock):
    import redis

    with RedisRevocationList(redis_url, clock=clock, refresh=5.0) as revocations:
        revocations.revoke("jti-1", T0 + 3600)
        revocations.revoke("jti-expired", T0 + 10)
        client = redis.Redis.from_url(redis_url)
        try:
            client.flushdb()  # as a Redis restarted without persistence: version key and set are gone
        finally:
            client.close()
        clock.now = T0 + 20
        revocations.look()  # the watcher's next look: what it read before goes back, but what expired
        assert revocations.is_revoked("jti-1") and not revocations.is_revoked("jti-expired")
        assert set(revocations.revoked()) == {"jti-1"}  # in Redis again: a replica that starts now reads it


def test_entries_evicted_or_deleted_without_the_version_are_written_back(redis_url: str, clock: FakeClock):
    """A Redis that evicts (allkeys-*) may drop the set and keep its version key: nothing moved, so
    nothing would be re-read — until the next revocation rebuilt the set with that one entry alone,
    which every replica would then read. The marker's absence, and a running replica's memory, catch it."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        with RedisRevocationList(redis_url, clock=clock, refresh=3600) as replica:
            replica.revoke("jti-old", T0 + 3600)
            client.delete("gtl:revoked")  # the set evicted, its version kept
            # the CLI revokes another token through a list of its own, with nothing read before the loss
            with RedisRevocationList(redis_url, clock=clock, refresh=3600) as cli:
                cli.revoke("jti-new", T0 + 3600)
            replica.look()  # the version moved: re-read, and what went missing is written back
            assert replica.is_revoked("jti-old") and replica.is_revoked("jti-new")
            assert set(replica.revoked()) == {"jti-old", "jti-new"}
            # a replica that starts now, without a token store of its own, reads the whole list
            with RedisRevocationList(redis_url, clock=clock, refresh=3600) as fresh:
                assert fresh.is_revoked("jti-old") and fresh.is_revoked("jti-new")
            # the set evicted again, nobody revoking: the missing marker is noticed at the next look
            client.delete("gtl:revoked")
            replica.look()
            assert set(replica.revoked()) == {"jti-old", "jti-new"}
    finally:
        client.close()


def test_an_unreachable_redis_fails_closed(redis_url: str, clock: FakeClock):
    """The authenticator refuses a token it cannot check: ``is_revoked`` raises a ``GTLError``."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    revocations = RedisRevocationList(f"redis://:hunter2@127.0.0.1:{port}/0", clock=clock)
    with pytest.raises(RevocationStoreError):  # whether the first read failed yet or is still under way
        revocations.is_revoked("jti-1")
    revocations.look()  # it has failed now (on a loaded machine, maybe after the constructor's wait)
    failures: list[Any] = []
    for call in (lambda: revocations.is_revoked("jti-1"), lambda: revocations.revoke("jti-1", T0 + 10)):
        with pytest.raises(RevocationStoreError) as info:
            call()
        failures.append(info.value)
    revocations.close()
    for error in failures:
        assert isinstance(error, GTLError) and error.retryable is True
        assert "unreachable" in error.message and "hunter2" not in error.message


def test_two_gateway_replicas_share_a_revocation_list_in_redis(tmp_path, redis_url, monkeypatch):
    """``[gateway.jwt] revocations = "redis://…"``: ``gtl token revoke`` on one machine reaches every
    replica, which refuses the token on its next connection."""
    import subprocess
    import sys

    import gtl_nb
    from gtl_nb.gateway.local import start_gateway
    from gtl_nb.gateway.tokens import mint_token
    from gtl_nb.protocol.errors import AuthenticationError
    from tests.gateway.conftest import write_toml

    secret = "r" * 40
    monkeypatch.setenv("GTL_TEST_REPLICA_SECRET", secret)
    jwt = {
        "issuer": "replicas",
        "secret_env": "GTL_TEST_REPLICA_SECRET",
        "revocations": redis_url,
        "refresh": 0,
        "default_deployments": ["*"],
    }
    configs = [
        write_toml(
            tmp_path / f"replica{n}.toml",
            {
                "ledger": {"path": str(tmp_path / f"ledger{n}.sqlite")},
                "providers.echo": {},
                "gateway": {"auth": "jwt"},
                "gateway.jwt": jwt,
                "gateway.http": {"port": 0},
            },
        )
        for n in (1, 2)
    ]
    token = mint_token(secret, subject="ana", scopes=["chat:write"], lifetime=600, issuer="replicas")
    claims = __import__("jwt").decode(token, options={"verify_signature": False})
    with start_gateway(configs[0]) as first, start_gateway(configs[1]) as second:
        for gateway in (first, second):
            with gtl_nb.connect(gateway.url("http"), token=token) as client:
                assert client.complete("echo", "before").text
        revoked = subprocess.run(
            [sys.executable, "-m", "gtl_nb", "--config", str(configs[0]), "token", "revoke", claims["jti"]],
            capture_output=True,
            text=True,
            timeout=60,
            env={**__import__("os").environ, "GTL_TEST_REPLICA_SECRET": secret},
            check=False,
        )
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        for gateway in (first, second):  # refresh = 0: each replica's watcher looks every 0.05 s
            deadline = time.monotonic() + 10.0
            while True:
                try:
                    with gtl_nb.connect(gateway.url("http"), token=token) as client:
                        client.complete("echo", "after")
                except AuthenticationError:
                    break
                assert time.monotonic() < deadline, "a replica still accepts the revoked token"
                time.sleep(0.05)
