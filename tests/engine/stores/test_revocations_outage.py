"""The shared revocation list (``[gateway.jwt] revocations = "redis://…"``) while its Redis is away:
a frozen Redis (SIGSTOP: connections accepted, no reply) holds up no token check, no ``/healthz``,
no ``/readyz`` and not a gateway's start — the list's own thread talks to Redis — and a reload
while Redis is down keeps the set read before (valid tokens pass, revoked ones stay refused).

Every scenario runs a ``redis-server`` of its own (it is stopped or frozen); the gateway ones run
``gtl serve`` as a child process (``start_gateway``). The bounds on time are generous (0.5 s where a
blocked loop used to take 2 s): they catch a blocking call, not a slow machine.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.gateway.tokens import mint_token
from gtl_nb.gateway.tokens.redis_revocations import FIRST_READ_WAIT, RedisRevocationList, RevocationStoreError
from tests.gateway.conftest import write_toml

SECRET = "outage-secret-0123456789abcdef0123456789"
SECRET_ENV = "GTL_TEST_OUTAGE_SECRET"
ISSUER = "gtl-outage-test"
PROMPT_BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
BOUND = 0.5  # seconds: no request may take this long because Redis is frozen


@pytest.fixture
def server(redis_server: Any, tmp_path: Path) -> Iterator[Any]:
    """A ``redis-server`` of this test alone (it is frozen or stopped), with an append-only file.
    ``redis_server`` first: it skips or fails without redis-server."""
    kit = sys.modules["gtl_nb_tests_redis_server"]  # loaded by conftest.py
    started = kit.RedisServer.start(tmp_path / "redis", appendonly=True)
    try:
        yield started
    finally:
        thaw(started)
        started.stop()


def freeze(server: Any) -> None:
    os.kill(server.process.pid, signal.SIGSTOP)


def thaw(server: Any) -> None:
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)


def eventually(done: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the list itself -------------------------------------------------------------------------------


def test_a_frozen_redis_holds_up_neither_the_start_nor_a_token_check(server: Any):
    freeze(server)
    started = time.monotonic()
    revocations = RedisRevocationList(server.url, refresh=0.1)
    took = time.monotonic() - started
    try:
        assert took < FIRST_READ_WAIT + BOUND  # one connect timeout at most, not a reply timeout and a retry
        assert not revocations.loaded
        started = time.monotonic()
        with pytest.raises(RevocationStoreError):  # never read: refused (retryably), and at once
            revocations.is_revoked("jti-1")
        assert revocations.degraded_reason is not None
        assert time.monotonic() - started < BOUND
        thaw(server)
        eventually(lambda: revocations.loaded and revocations.degraded_reason is None, "the list was never read")
        assert revocations.is_revoked("jti-1") is False
    finally:
        revocations.close()


def test_a_list_read_before_redis_froze_answers_from_memory_at_once(server: Any):
    with RedisRevocationList(server.url, refresh=0.1) as revocations:
        revocations.revoke("jti-gone", time.time() + 3600)
        freeze(server)
        slowest = 0.0
        until = time.monotonic() + 3.0  # the watcher meanwhile waits for replies that never come
        while time.monotonic() < until:
            started = time.monotonic()
            answers = (revocations.is_revoked("jti-gone"), revocations.is_revoked("jti-fine"))
            _ = revocations.degraded_reason  # /readyz and /metrics read it on the event loop
            slowest = max(slowest, time.monotonic() - started)
            assert answers == (True, False)
            time.sleep(0.01)
        assert slowest < BOUND
        # the watcher's look gives up after a reply timeout and a retry (~2 s): then it says so
        eventually(lambda: revocations.degraded_reason is not None, "the frozen Redis was not noticed")
        reason = revocations.degraded_reason
        assert reason is not None and "1 revocations read at" in reason
        thaw(server)
        eventually(lambda: revocations.degraded_reason is None, "Redis was not noticed back")


# -- a gateway -------------------------------------------------------------------------------------------


def gateway_tables(tmp_path: Path, revocations: str, refresh: float) -> dict[str, dict[str, Any]]:
    return {
        "providers.echo": {},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        "gateway": {"auth": "jwt", "shutdown_grace": 1},
        "gateway.jwt": {
            "issuer": ISSUER,
            "secret_env": SECRET_ENV,
            "default_deployments": ["*"],
            "revocations": revocations,
            "refresh": refresh,
        },
    }


def token(subject: str, scopes: tuple[str, ...] = ("chat:write", "models:read")) -> str:
    return mint_token(SECRET, subject=subject, scopes=scopes, lifetime=600, issuer=ISSUER)


def operator() -> dict[str, str]:
    """The header of a token that may read operations data: ``/readyz`` says why a part is degraded."""
    return {"authorization": f"Bearer {token('ops', ('metrics:read',))}"}


def jti_of(minted: str) -> str:
    return str(__import__("jwt").decode(minted, options={"verify_signature": False})["jti"])


def ask(client: httpx.Client, base: str, bearer: str) -> httpx.Response:
    return client.post(f"{base}/v1/chat/completions", json=PROMPT_BODY, headers={"authorization": f"Bearer {bearer}"})


def accepted(response: httpx.Response) -> bool:
    return response.status_code == 200


def refused_as_revoked(response: httpx.Response) -> bool:
    """Refused, and not because the list could not be read (that one is a retryable 503)."""
    return response.status_code == 401


def reload_and_wait(gateway: LocalGateway, timeout: float = 30.0) -> str:
    seen = len(gateway.output)
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gateway.output[seen:]:
            if line.startswith("gtl gateway: reload"):
                return line
        assert gateway.running, "".join(gateway.output)
        time.sleep(0.02)
    raise AssertionError(f"no reload line within {timeout} s: {''.join(gateway.output[seen:])}")


def test_a_gateway_answers_at_once_while_its_redis_is_frozen(server: Any, tmp_path: Path):
    config = write_toml(tmp_path / "gtl.toml", gateway_tables(tmp_path, server.url, refresh=0.2))
    bearer = token("ann")
    with start_gateway(config, env={SECRET_ENV: SECRET}) as gateway, httpx.Client(timeout=30) as client:
        base = gateway.url("http")
        assert accepted(ask(client, base, bearer))
        freeze(server)
        slowest = {"/healthz": 0.0, "/v1/models": 0.0, "/v1/chat/completions": 0.0}
        until = time.monotonic() + 4.0  # several of the watcher's looks, each waiting ~2 s for nothing
        while time.monotonic() < until:
            for path in slowest:
                started = time.monotonic()
                if path == "/healthz":
                    response = client.get(f"{base}{path}")
                elif path == "/v1/models":
                    response = client.get(f"{base}{path}", headers={"authorization": f"Bearer {bearer}"})
                else:
                    response = ask(client, base, bearer)
                slowest[path] = max(slowest[path], time.monotonic() - started)
                assert response.status_code == 200, (path, response.text)
            time.sleep(0.05)

        headers = operator()

        def degraded() -> bool:
            started = time.monotonic()
            ready = client.get(f"{base}/readyz", headers=headers).json()
            slowest["/readyz"] = max(slowest.get("/readyz", 0.0), time.monotonic() - started)
            return "revocations read at" in ready.get("degraded", {}).get("revocations", "")

        eventually(degraded, "/readyz did not say the list is as last read")
        assert all(seconds < BOUND for seconds in slowest.values()), slowest
        thaw(server)


def uncheckable_grpc_codes(url: str, bearer: str) -> list[str]:
    """The status of each gRPC call — ``ListProviders``, ``Complete``, ``Session`` — with ``bearer``."""
    import grpc

    from gtl_nb.transports.grpc import gtl_pb2 as pb
    from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {bearer}"),)
    codes = []
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        stub = pb_grpc.GTLStub(channel)
        message = pb.ChatMessage(role=pb.ROLE_USER, content="hi")
        for call in (
            lambda: stub.ListProviders(pb.ListProvidersRequest(), metadata=metadata, timeout=30),
            lambda: stub.Complete(
                pb.CompletionRequest(session_id="s", model="echo", messages=[message]), metadata=metadata, timeout=30
            ),
        ):
            try:
                call()
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
        hello = pb.ClientFrame(hello=pb.Hello(versions=pb.StringList(values=["1.0"])))
        session = stub.Session(iter([hello]), metadata=metadata, timeout=30)
        try:
            frames = list(session)
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
        else:  # the error frame first (PROVIDER_UNAVAILABLE), then the call's status
            errors = [f.error.code for f in frames if f.WhichOneof("message") == "error"]
            assert errors and all(code == "PROVIDER_UNAVAILABLE" for code in errors), frames
            codes.append(session.code().name)
    return codes


def test_a_gateway_started_while_redis_is_down_is_not_ready_until_it_reads_the_list(server: Any, tmp_path: Path):
    """A replica that never read the list refuses every token: ``/readyz`` answers ``503`` then (an
    orchestrator must not send it traffic, nor let a rollout replace serving replicas with it), and
    ``200`` once the list is read."""
    tables = {**gateway_tables(tmp_path, server.url, refresh=0.2), "gateway.metrics": {"require_token": True}}
    config = write_toml(tmp_path / "gtl.toml", tables)
    bearer = token("ann")
    server.stop()
    with (
        start_gateway(config, http="127.0.0.1:0", grpc="127.0.0.1:0", env={SECRET_ENV: SECRET}) as gateway,
        httpx.Client(timeout=30) as client,
    ):
        base = gateway.url("http")
        # every token refused, as the gateway's trouble: a retryable 503, which the SDKs retry (through nginx,
        # to the next replica) — never a 401 that blames the caller's key
        response = ask(client, base, bearer)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["type"] == "server_error" and "revocation list is unreachable" in error["message"], error
        assert response.headers["x-should-retry"] == "true" and response.headers["retry-after"] == "1"
        messages = client.post(
            f"{base}/v1/messages",
            json={"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-api-key": bearer, "anthropic-version": "2023-06-01"},
        )
        assert messages.status_code == 503 and messages.json()["error"]["type"] == "api_error", messages.text
        assert messages.headers["retry-after"] == "1" and messages.headers["x-should-retry"] == "true"
        metrics = client.get(f"{base}/metrics", headers=operator())
        assert metrics.status_code == 503 and metrics.headers["retry-after"] == "1", metrics.text
        assert uncheckable_grpc_codes(gateway.url("grpc"), bearer) == ["UNAVAILABLE"] * 3
        gtl = client.post(
            f"{base}/v1/gtl",
            json={
                "type": "completion_request",
                "session_id": "s1",
                "model": "echo",
                "messages": PROMPT_BODY["messages"],
            },
            headers={"authorization": f"Bearer {bearer}"},
        )
        assert gtl.status_code == 503 and gtl.headers["retry-after"] == "1", gtl.text
        assert gtl.json()["code"] == "PROVIDER_UNAVAILABLE" and gtl.json()["retryable"] is True
        ready_line = next(line for line in gateway.output if line.startswith("gtl gateway: ready"))
        assert "refusing every token for now, retryably (503)" in ready_line, ready_line
        ready = client.get(f"{base}/readyz", headers=operator())
        assert ready.status_code == 503, ready.text
        # no token can be checked yet, an operator's neither: the part by name, and why in the log
        assert ready.json() == {"status": "unavailable", "degraded": ["revocations"]}
        assert "token revocations: Redis at" in "".join(gateway.output), gateway.output
        refused = [line for line in gateway.output if "could not check the token" in line]
        assert refused and not any("[redacted]" in line for line in refused), refused  # the message whole
        server.restart()
        eventually(lambda: client.get(f"{base}/readyz").status_code == 200, "the list was never read")
        assert client.get(f"{base}/readyz").json() == {"status": "ready"}
        assert accepted(ask(client, base, bearer))


def test_a_reload_while_redis_is_down_keeps_the_revocations_read_before(server: Any, tmp_path: Path):
    """Valid tokens still pass and a revoked one stays refused — through a reload that changes
    ``refresh`` and through one that names another (unreachable) Redis, which is not taken."""
    tables = gateway_tables(tmp_path, server.url, refresh=0.2)
    config = write_toml(tmp_path / "gtl.toml", tables)
    good, revoked = token("ann"), token("bob")
    with start_gateway(config, env={SECRET_ENV: SECRET}) as gateway, httpx.Client(timeout=30) as client:
        base = gateway.url("http")
        assert accepted(ask(client, base, revoked))
        with RedisRevocationList(server.url) as operator:  # as gtl token revoke does
            operator.revoke(jti_of(revoked), time.time() + 3600)
        eventually(lambda: refused_as_revoked(ask(client, base, revoked)), "the revocation did not reach the gateway")
        server.stop()

        def outage_seen() -> bool:
            assert accepted(ask(client, base, good))  # from the set read before
            return "revocations" in client.get(f"{base}/readyz").json().get("degraded", {})

        eventually(outage_seen, "the outage was not seen")

        tables["gateway.jwt"]["refresh"] = 0.3  # an operator's edit while Redis is down: same list
        write_toml(config, tables)
        line = reload_and_wait(gateway)
        assert "token policy renewed" in line, line
        for _ in range(3):  # and again after a few of the list's (failing) looks
            assert accepted(ask(client, base, good))
            assert refused_as_revoked(ask(client, base, revoked))
            time.sleep(0.3)

        tables["gateway.jwt"]["revocations"] = f"redis://127.0.0.1:{dead_port()}/0"  # a list it cannot read
        tables["gateway.jwt"]["issuer"] = "another-issuer"  # part of the token policy: not taken either
        write_toml(config, tables)
        line = reload_and_wait(gateway)
        assert "token policy not renewed" in line and "reload again once it answers" in line, line
        assert "token policy renewed" not in line, line
        assert accepted(ask(client, base, good))
        assert refused_as_revoked(ask(client, base, revoked))

        server.restart()  # the list kept through the reloads reads Redis again
        eventually(lambda: "degraded" not in client.get(f"{base}/readyz").json(), "Redis was not noticed back")
        assert accepted(ask(client, base, good)) and refused_as_revoked(ask(client, base, revoked))


# -- a Redis that lost the list ----------------------------------------------------------------------


def test_revocations_a_redis_lost_are_written_back_from_the_gateways_token_store(server: Any, tmp_path: Path, caplog):
    import redis

    from gtl_nb.gateway.auth import _recorded_revocations
    from gtl_nb.gateway.tokens import SqliteTokenStore

    now = time.time()
    store_path = tmp_path / "tokens.sqlite3"
    with SqliteTokenStore(store_path) as store:  # what gtl token revoke recorded here
        store.revoke("revoked-before", now + 600)
        store.revoke("expired-long-ago", now - 5)
    with caplog.at_level("WARNING", logger="gtl_nb"):
        # a list new to this Redis (the gateway moved from the SQLite file to Redis): restored at once
        revocations = RedisRevocationList(
            server.url, refresh=3600, restore_from=lambda: _recorded_revocations(store_path)
        )
    try:
        assert revocations.is_revoked("revoked-before")
        assert not revocations.is_revoked("expired-long-ago")
        assert "wrote back 1 revocation(s)" in caplog.text
        assert set(revocations.revoked()) == {"revoked-before"}  # in Redis: every replica reads it
        # Redis restarted without persistence: everything gone
        redis.Redis.from_url(server.url).flushall()
        caplog.clear()
        with caplog.at_level("WARNING", logger="gtl_nb"):
            revocations.look()
        assert revocations.is_revoked("revoked-before")  # never accepted in between: restored before the read
        assert set(revocations.revoked()) == {"revoked-before"}
        assert "lost its version" in caplog.text
        # a list that kept its version is left alone
        caplog.clear()
        with caplog.at_level("WARNING", logger="gtl_nb"):
            revocations.look()
        assert "wrote back" not in caplog.text
    finally:
        revocations.close()
    assert _recorded_revocations(tmp_path / "no-such-store.sqlite3") == {}  # a replica without the file


def test_a_write_back_that_fails_still_reads_the_list_and_says_so_once(server: Any, tmp_path: Path, caplog):
    import redis

    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "reader", "on", ">reader-pw", "~*", "+@read", "+multi", "+exec")
    admin.zadd("gtl:revoked", {"already-shared": time.time() + 600})  # a list without its version key
    reader_url = server.url.replace("redis://", "redis://reader:reader-pw@", 1)
    if "@" in server.url.removeprefix("redis://"):  # (a server with a password of its own)
        pytest.skip("the test's server has its own credentials")
    local = {"revoked-here": time.time() + 600}
    with caplog.at_level("WARNING", logger="gtl_nb"):
        revocations = RedisRevocationList(reader_url, refresh=3600, restore_from=lambda: local)
        try:
            assert revocations.loaded  # read, although nothing could be written back
            assert revocations.is_revoked("already-shared")
            # never fail open: what could not be shared stays refused here, and readiness says so
            assert revocations.is_revoked("revoked-here")
            assert "refused by this replica only" in (revocations.degraded_reason or "")
            for _ in range(3):
                revocations.look()
            warned = [r.getMessage() for r in caplog.records if "could not be written back" in r.getMessage()]
            assert len(warned) == 1, warned  # once, not a line a look
            admin.flushall()  # and Redis then loses what it had: what was read before stays refused too
            for _ in range(3):
                revocations.look()
            assert revocations.is_revoked("revoked-here") and revocations.is_revoked("already-shared")
            assert (revocations.degraded_reason or "").startswith("2 revocation(s) could not be written back")
        finally:
            revocations.close()
    warned = [r.getMessage() for r in caplog.records if "could not be written back" in r.getMessage()]
    assert len(warned) == 1, warned  # once for the one reason, whatever the counts

    caplog.clear()
    admin.zadd("gtl:revoked", {"already-shared": time.time() + 600})

    def unreadable() -> dict[str, float]:
        raise OSError("file is not a database")

    with caplog.at_level("WARNING", logger="gtl_nb"):
        revocations = RedisRevocationList(reader_url, refresh=3600, restore_from=unreadable)
        try:
            for _ in range(3):
                revocations.look()
            assert revocations.loaded and revocations.is_revoked("already-shared")
        finally:
            revocations.close()
    assert len([r for r in caplog.records if "could not be read" in r.getMessage()]) == 1


def test_a_replica_that_could_not_write_back_stays_degraded_and_keeps_trying(server: Any, tmp_path: Path):
    """A read-only replica after Redis lost the list, then a writer's revocation of another token: the
    replica refuses both, says so at every look (not only the first), and writes back once it may."""
    import redis

    admin = redis.Redis.from_url(server.url)
    if "@" in server.url.removeprefix("redis://"):  # (a server with a password of its own)
        pytest.skip("the test's server has its own credentials")
    admin.execute_command("ACL", "SETUSER", "ro", "on", ">ro-pw", "~gtl:*", "+@read", "+@transaction")
    with RedisRevocationList(server.url, refresh=3600) as writer:
        writer.revoke("jti-old", time.time() + 3600)
    replica = RedisRevocationList(server.url.replace("redis://", "redis://ro:ro-pw@", 1), refresh=3600)
    try:
        assert replica.is_revoked("jti-old")
        admin.flushall()  # Redis restarted without persistence
        with RedisRevocationList(server.url, refresh=3600) as writer:  # gtl token revoke, a list of its own
            writer.revoke("jti-new", time.time() + 3600)
        for _ in range(3):
            replica.look()
            assert replica.is_revoked("jti-old") and replica.is_revoked("jti-new")
            assert "1 revocation(s) could not be written back" in (replica.degraded_reason or "")
        admin.execute_command("ACL", "SETUSER", "ro", "+@write", "+@scripting")  # the operator gives it rights
        replica.look()
        assert replica.degraded_reason is None
        assert {member.decode() for member in admin.zrange("gtl:revoked", 0, -1)} >= {"jti-old", "jti-new"}
    finally:
        replica.close()
        admin.close()


def test_the_marker_is_never_a_token_that_passes(server: Any):
    from gtl_nb.gateway.tokens.redis_revocations import SENTINEL

    with RedisRevocationList(server.url, refresh=3600) as revocations:
        assert revocations.is_revoked(SENTINEL)  # a jti minted elsewhere could be it: refused
        revocations.revoke("jti-1", time.time() + 60)
        assert set(revocations.revoked()) == {"jti-1"}  # gtl token list never shows it


def test_behind_nginx_a_completions_503_reaches_the_client_whose_sdk_retries_it_on_the_next_replica(
    server: Any, tmp_path: Path
):
    """What docs/deploy.md ("What nginx retries") says, with one replica that never read its list: nginx
    sends no POST twice, so a completion's 503 reaches the client (retry-after, x-should-retry), and the
    OpenAI SDK's retry goes through nginx's round robin to the other replica; a GET nginx retries itself.
    The pages said nginx retried the completion (``proxy_next_upstream http_503``): it never does."""
    import openai

    from tests.nginx_server import NginxServer, find_nginx

    if find_nginx() is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    root = Path(__file__).resolve().parents[3]
    deploy = (root / "docs" / "deploy.md").read_text(encoding="utf-8")
    operations = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "proxy_next_upstream http_503` and the SDKs try another replica" not in deploy
    assert "nginx passes a completion's `503` on" in deploy and "nginx passes a completion's `503` on" in operations

    def replica(name: str, url: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        tables = gateway_tables(folder, url, refresh=0.2)
        tables["gateway"]["trusted_proxies"] = ["127.0.0.1"]
        return write_toml(folder / "gtl.toml", tables)

    bearer = token("ann")
    env = {SECRET_ENV: SECRET}
    unread = f"redis://127.0.0.1:{dead_port()}/0"
    with (
        start_gateway(replica("a", unread), env=env) as a,
        start_gateway(replica("b", server.url), env=env) as b,
    ):
        replicas = [a.url("http").split("://")[1], b.url("http").split("://")[1]]
        nginx = NginxServer.start(tmp_path / "nginx", http_replicas=replicas, grpc_replicas=replicas)
        try:
            with httpx.Client(timeout=30) as client:
                headers = {"authorization": f"Bearer {bearer}"}
                answers = [
                    client.post(f"{nginx.http_url}/v1/chat/completions", json=PROMPT_BODY, headers=headers)
                    for _ in range(4)
                ]
                codes = sorted(answer.status_code for answer in answers)
                assert 503 in codes and set(codes) <= {200, 503}, codes  # passed on, not retried by nginx
                for refused in (answer for answer in answers if answer.status_code == 503):
                    assert refused.headers["retry-after"] == "1" and refused.headers["x-should-retry"] == "true"
                sdk = openai.OpenAI(base_url=f"{nginx.http_url}/v1", api_key=bearer, max_retries=2)
                for _ in range(4):  # each refused try is retried by the SDK, and lands on the other replica
                    sdk.chat.completions.create(model="echo", messages=PROMPT_BODY["messages"])
                listed = [client.get(f"{nginx.http_url}/v1/models", headers=headers).status_code for _ in range(4)]
                assert listed == [200] * 4, listed  # a GET's 503: nginx's own retry, on the next replica
        finally:
            nginx.stop()
            print(f"nginx's error log:\n{nginx.error_log[-4000:]}")  # shown when the test fails
