"""Three gateway replicas behind nginx share one state: what clients see through the balancer.

One cluster for the module (``conftest.running_cluster``); none of these tests stops a server (the
outage tests, in ``test_outages.py``, have a cluster of their own).
"""

from __future__ import annotations

import concurrent.futures
import json
from collections import Counter
from collections.abc import Iterator

import httpx
import jwt
import pytest

import gtl_nb
from gtl_nb.completion import Completion
from gtl_nb.protocol.errors import AuthenticationError, GTLError, ProviderUnavailableError, RateLimitError
from gtl_nb.protocol.messages import Done
from tests.scaleout.conftest import (
    BUDGET_RPM,
    BUDGET_USER,
    REPLICAS,
    SECRET,
    UPSTREAM_KEY,
    Cluster,
    running_cluster,
    token,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("scaleout")) as running:
        yield running


def _served_by(cluster: Cluster, session_ids: list[str]) -> Counter[str]:
    return Counter(row["replica"] for row in cluster.settled_rows(session_ids))


@pytest.mark.parametrize("scheme", ["http", "sse", "ws", "grpc"])
def test_every_transport_passes_through_nginx(cluster: Cluster, scheme: str):
    url = cluster.grpc_url if scheme == "grpc" else cluster.http_url.replace("http://", f"{scheme}://")
    # a WebSocket or a gRPC Session call carries many completions: one connection stays on one replica
    clients = [gtl_nb.connect(url, token=token()) for _ in range(3 if scheme in ("ws", "grpc") else 1)]
    try:
        answers = [
            client.complete("openai:gpt-4o", f"through nginx {scheme} {i}") for client in clients for i in range(3)
        ]
        streamed = list(clients[0].stream("openai:gpt-4o", f"streamed through nginx {scheme}"))
    finally:
        for client in clients:
            client.close()
    assert all(answer.text for answer in answers)
    assert isinstance(streamed[-1], Done)
    served = _served_by(cluster, [answer.session_id for answer in answers])
    assert len(served) >= 2, f"nginx spreads requests over the replicas: {served}"
    rows = cluster.settled_rows([answer.session_id for answer in answers])
    assert {row["status"] for row in rows} == {"ok"}


def test_a_long_grpc_session_through_nginx_is_not_cut_at_a_body_limit(cluster: Cluster):
    """One gRPC Session call is one HTTP/2 request body for nginx: many completions exceed 1 MiB."""
    padding = "x" * 30_000
    with gtl_nb.connect(cluster.grpc_url, token=token()) as client:
        answers = [client.complete("openai:gpt-4o", f"{padding} {i}", max_tokens=8) for i in range(40)]
    assert len(answers) == 40 and all(answer.text for answer in answers)


def test_readiness_is_asked_of_each_replica_not_through_nginx(cluster: Cluster):
    assert httpx.get(cluster.http_url + "/readyz", timeout=10).status_code == 404
    assert all(httpx.get(r.url("http") + "/readyz", timeout=10).json()["status"] == "ready" for r in cluster.replicas)


def test_the_official_sdks_through_nginx(cluster: Cluster):
    import anthropic
    import openai

    with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key=token(), max_retries=0) as client:
        whole = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hello SDK"}])
        pieces = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Stream SDK"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in pieces if chunk.choices)
    assert whole.choices[0].message.content and text
    with anthropic.Anthropic(base_url=cluster.http_url, api_key=token(), max_retries=0) as client:
        message = client.messages.create(
            model="openai:gpt-4o", max_tokens=64, messages=[{"role": "user", "content": "Hello Anthropic SDK"}]
        )
    assert message.content[0].text
    refused = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="not-a-token", max_retries=0)
    with refused as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "refused"}])


def test_the_ledger_peer_is_the_client_behind_nginx(cluster: Cluster):
    """nginx is a trusted proxy: each replica records the client's address from X-Forwarded-For."""
    transport = httpx.HTTPTransport(local_address="127.0.0.7")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "who am I"}]}
    with httpx.Client(transport=transport, timeout=30) as http:
        answer = http.post(
            cluster.http_url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token()}"}
        )
        forged = http.post(
            cluster.replicas[0].url("http") + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {token()}", "x-forwarded-for": "10.9.9.9"},
        )
    assert answer.status_code == 200 and forged.status_code == 200
    through, around = answer.json()["id"], forged.json()["id"]

    def peers() -> dict[str, str]:
        found = {record.get("session_id"): record.get("peer") for record in cluster.audit_records()}
        return found if through in found and around in found else {}

    found = wait_until(peers, timeout=10, what="both requests in the audit logs")
    # through nginx: the client's address (its port is nginx's business); straight to a replica from an
    # address it does not trust: the forged header is ignored
    assert found[through] == "127.0.0.7"
    assert found[around].startswith("127.0.0.7:")


def test_discovery_through_nginx_offers_nginx(cluster: Cluster):
    document = httpx.get(cluster.http_url + "/.well-known/gtl", timeout=10).json()
    host = cluster.http_url.split("://", 1)[1]
    assert document["transports"]["ws"] == f"ws://{host}"
    with gtl_nb.connect(cluster.http_url, token=token()) as client:  # discovery picks a transport through nginx
        assert client.complete("openai:gpt-4o", "discovered").text


def test_a_budget_is_exact_across_replicas(cluster: Cluster):
    """``requests_per_minute = 9`` for one user: 24 requests at once through nginx admit exactly 9."""
    budget_token = token(BUDGET_USER)

    def one(index: int) -> object:
        with gtl_nb.connect(cluster.http_url, token=budget_token) as client:
            try:
                return client.complete("openai:gpt-4o", f"budgeted request {index}")
            except GTLError as exc:
                return exc

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    passed = [result for result in results if isinstance(result, Completion)]
    refused = [result for result in results if isinstance(result, RateLimitError)]
    assert len(passed) == BUDGET_RPM, [type(result).__name__ for result in results]
    assert len(refused) == 24 - BUDGET_RPM
    assert all(error.retry_after and error.retry_after > 0 for error in refused)
    served = _served_by(cluster, [answer.session_id for answer in passed])
    assert len(served) >= 2, f"the admitted requests reached several replicas: {served}"


def test_identical_requests_on_different_replicas_share_one_upstream_call(cluster: Cluster):
    """Coalescing across replicas: concurrent identical deterministic requests, one call upstream."""
    prompt = "Explain coalescing across replicas, slowly and at length, please."
    before = sum(1 for request in cluster.upstream.requests if prompt in json.dumps(request.body, default=str))
    clients = [gtl_nb.connect(replica.url("ws"), token=token()) for replica in cluster.replicas]

    def one(index: int) -> Completion:
        return clients[index % len(clients)].complete("openai:gpt-4o", prompt, temperature=0)

    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(one, range(6)))
    finally:
        for client in clients:
            client.close()
    calls = sum(1 for request in cluster.upstream.requests if prompt in json.dumps(request.body, default=str)) - before
    assert calls == 1, f"{calls} upstream calls for 6 identical requests on 3 replicas"
    assert len({answer.text for answer in answers}) == 1
    rows = cluster.settled_rows([answer.session_id for answer in answers])
    assert len({row["replica"] for row in rows}) == 3
    assert sum(1 for row in rows if row["cost"]) == 1, "exactly one row carries the call's cost"


def test_a_breaker_opened_by_one_replica_is_open_for_all(cluster: Cluster):
    first, *others = cluster.replicas
    with gtl_nb.connect(first.url("http"), token=token()) as client:
        for index in range(3):  # failure_threshold = 3 consecutive failures
            with pytest.raises(GTLError):
                client.complete("flaky:gpt-4o", f"failing {index}")
    calls = len(cluster.flaky.requests)
    for replica in others:
        with (
            gtl_nb.connect(replica.url("http"), token=token()) as client,
            pytest.raises(ProviderUnavailableError) as refused,
        ):
            client.complete("flaky:gpt-4o", "refused by the shared breaker")
        assert "circuit" in str(refused.value).lower() or "breaker" in str(refused.value).lower(), refused.value
    assert len(cluster.flaky.requests) == calls, "an open circuit sends nothing upstream, on any replica"


def test_a_token_revoked_once_is_refused_by_every_replica(cluster: Cluster):
    doomed = token("soon-revoked")
    for replica in cluster.replicas:
        with gtl_nb.connect(replica.url("http"), token=doomed) as client:
            assert client.complete("openai:gpt-4o", "before the revocation").text
    jti = jwt.decode(doomed, options={"verify_signature": False})["jti"]
    done = cluster.gtl("token", "revoke", jti)
    assert done.returncode == 0, done.stderr

    def refused_everywhere() -> bool:
        for replica in cluster.replicas:
            try:
                with gtl_nb.connect(replica.url("http"), token=doomed) as client:
                    client.complete("openai:gpt-4o", "after the revocation")
                return False
            except AuthenticationError:
                continue
        return True

    wait_until(refused_everywhere, timeout=10, what="every replica refusing the revoked token", every=0.3)


def test_a_key_replaced_in_the_shared_vault_reaches_every_replica(cluster: Cluster):
    """One vault file on shared storage: ``gtl keys add --replace`` reaches all replicas without a restart."""
    new_key = "sk-scaleout-rotated-8e2b5c1d"
    replaced = cluster.gtl(
        "keys", "add", "team-openai", "--replace", "--vault", str(cluster.vault), "--key-file", str(cluster.vault_key),
        stdin=new_key + "\n",
    )  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    cluster.upstream.context.api_key = new_key  # the provider now accepts only the new key
    try:

        def everyone_uses_it() -> bool:
            for replica in cluster.replicas:
                with gtl_nb.connect(replica.url("http"), token=token()) as client:
                    try:
                        client.complete("openai:gpt-4o", "with the rotated key")
                    except AuthenticationError:
                        return False
            return True

        wait_until(everyone_uses_it, timeout=15, what="every replica sending the new key", every=0.3)
    finally:
        restored = cluster.gtl(
            "keys", "add", "team-openai", "--replace", "--vault", str(cluster.vault),
            "--key-file", str(cluster.vault_key), stdin=UPSTREAM_KEY + "\n",
        )  # fmt: skip
        cluster.upstream.context.api_key = UPSTREAM_KEY
        assert restored.returncode == 0, restored.stderr


def test_the_teams_usage_through_the_gateway_and_straight_from_postgres(cluster: Cluster):
    with gtl_nb.connect(cluster.http_url, token=token("analyst")) as client:
        answers = [client.complete("openai:gpt-4o", f"usage row {i}") for i in range(4)]
    session_ids = [answer.session_id for answer in answers]
    cluster.settled_rows(session_ids)
    with gtl_nb.connect(cluster.http_url, token=token("analyst")) as client:
        mine = client.usage()
    assert set(session_ids) <= set(mine["session_id"]) and set(mine["user"]) == {"analyst"}
    admin = token("admin", scopes=("chat:write", "usage:read", "usage:admin"))
    with gtl_nb.connect(cluster.http_url, token=admin) as client:
        theirs = client.usage(user="analyst")  # another user's rows: usage:admin
    assert set(session_ids) <= set(theirs["session_id"])
    direct = gtl_nb.connect(ledger=cluster.database_url)
    try:
        frame = direct.usage(user="analyst")
    finally:
        direct.close()
    assert set(session_ids) <= set(frame["session_id"])
    assert UPSTREAM_KEY not in frame.to_csv() and SECRET not in frame.to_csv()


def test_every_replica_keeps_its_own_audit_chain_in_postgresql(cluster: Cluster):
    with gtl_nb.connect(cluster.http_url, token=token("audited")) as client:
        answers = [client.complete("openai:gpt-4o", f"audited {i}") for i in range(6)]
    cluster.settled_rows([answer.session_id for answer in answers])
    verified = wait_until(
        lambda: (done := cluster.gtl("audit", "verify", "--url", cluster.database_url)).returncode == 0 and done,
        timeout=10,
        what="gtl audit verify --url to pass",
        every=0.5,
    )
    assert sum("replica-" in line for line in verified.stdout.splitlines()) >= REPLICAS, verified.stdout
    import psycopg

    with psycopg.connect(cluster.database_url) as connection:
        rows = connection.execute("SELECT line FROM audit_records WHERE kind = 'request'").fetchall()
    audited = {answer.session_id for answer in answers}
    assert sum(any(sid in row[0] for sid in audited) for row in rows) == len(audited)
    assert not any(UPSTREAM_KEY in row[0] or SECRET in row[0] for row in rows)
