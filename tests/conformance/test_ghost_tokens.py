"""GhostTokens on every transport: the conformance suite's parametrisation over the six schemes, with a
gateway whose ``[gateway] auth = "jwt"``.

Refused tokens (expired, tampered, ``alg: none``, another audience, revoked, oversized) fail at
``connect`` with ``AUTH_FAILED``; a valid token's scopes and allow-lists are enforced per operation
with ``FORBIDDEN``; every refused completion still leaves its one ledger row.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import jwt as pyjwt
import pytest

import gtl_nb
from gtl_nb.gateway.local import LocalGateway
from gtl_nb.gateway.tokens import SqliteTokenStore, mint_token
from gtl_nb.protocol import Error
from gtl_nb.protocol.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from tests.conformance.conftest import SCHEMES, gateway_config, settled_rows, start
from tests.gateway.conftest import LONG_PROMPT, MODEL, write_toml

pytestmark = pytest.mark.parametrize("scheme", SCHEMES)

SECRET_ENV = "GTL_CONFORMANCE_JWT_SECRET"
SECRET = "conformance-secret-" + "x" * 40
ISSUER = "gtl-conformance"
EVERYTHING = ["chat:write", "models:read", "usage:read"]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, sims: SimpleNamespace, certs: Any) -> Iterator[LocalGateway]:
    """A gateway that checks GhostTokens (HS256, the secret in the environment) on every listener."""
    directory = tmp_path_factory.mktemp("jwt-gateway")
    config = gateway_config(directory, sims, certs, auth="jwt")
    jwt = {
        "issuer": ISSUER,
        "secret_env": SECRET_ENV,
        "revocations": str(directory / "tokens.db"),
        "refresh": 0,
        "default_deployments": ["*"],
    }
    tables = {"gateway.jwt": jwt}
    with open(config, "a", encoding="utf-8") as extra:  # the stdio children read the same file
        extra.write("\n" + write_toml(directory / "jwt.toml", tables).read_text())
    previous = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = SECRET  # for the stdio gateways the clients start as children
    gateway = start(config, env={SECRET_ENV: SECRET})
    try:
        yield gateway
    finally:
        gateway.stop()
        if previous is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = previous


def token(scopes: list[str] = EVERYTHING, **claims: Any) -> str:
    return mint_token(
        SECRET, subject=claims.pop("subject", "ana"), scopes=scopes, lifetime=600, issuer=ISSUER, **claims
    )


def connect(scheme: str, guarded: LocalGateway, certs: Any, credential: str) -> gtl_nb.Client:
    if scheme == "stdio":
        return gtl_nb.connect(f"stdio://{guarded.config}", token=credential)
    extra = {"verify": str(certs.ca)} if scheme == "quic" else {}
    return gtl_nb.connect(guarded.url(scheme), token=credential, **extra)


def forged(good: str, **changes: Any) -> str:
    """``good`` with its payload changed and its signature kept (a tampered token)."""
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


def unsigned(good: str) -> str:
    claims = pyjwt.decode(good, options={"verify_signature": False})
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}."


def test_a_valid_token_is_served_and_its_principal_accounted(scheme, guarded, certs):
    with connect(scheme, guarded, certs, token(subject=f"ana-{scheme}")) as client:
        answer = client.complete("echo", "with a GhostToken")
        assert answer.text
        [row] = settled_rows(guarded.config.parent / "ledger.sqlite", lambda r: r["session_id"] == answer.session_id, 1)
        assert row["user"] == f"ana-{scheme}" and row["status"] == "ok" and row["key_id"]


@pytest.mark.parametrize(
    "attack",
    ["expired", "tampered", "alg-none", "other-audience", "other-issuer", "oversized", "no-token", "garbage"],
)
def test_refused_tokens_fail_at_connect_with_auth_failed(scheme, guarded, certs, attack):
    good = token()
    credential = {
        "expired": mint_token(SECRET, subject="ana", scopes=EVERYTHING, lifetime=60, issuer=ISSUER, now=1e9),
        "tampered": forged(good, sub="root"),
        "alg-none": unsigned(good),
        "other-audience": token(audience="not-gtl"),
        "other-issuer": mint_token(SECRET, subject="ana", scopes=EVERYTHING, lifetime=600, issuer="elsewhere"),
        "oversized": token(allowed_models=[f"model-{i:05d}-" + "m" * 40 for i in range(200)]),
        "no-token": None,
        "garbage": "not.a.token",
    }[attack]
    with pytest.raises(AuthenticationError) as refused:
        connect(scheme, guarded, certs, credential)  # type: ignore[arg-type]
    assert SECRET not in str(refused.value) and (credential is None or credential not in str(refused.value))


def test_a_revoked_token_is_refused_on_the_next_connection(scheme, guarded, certs):
    credential = token(subject=f"revoked-{scheme}")
    with connect(scheme, guarded, certs, credential) as client:
        assert client.complete("echo", "before the revocation").text
    claims = pyjwt.decode(credential, options={"verify_signature": False})
    SqliteTokenStore(guarded.config.parent / "tokens.db").revoke(claims["jti"], claims["exp"])
    with pytest.raises(AuthenticationError):
        client = connect(scheme, guarded, certs, credential)
        client.complete("echo", "after it")  # a connection-less transport (HTTP) is refused here


def test_a_token_revoked_while_its_connection_is_open_starts_nothing_more(scheme, guarded, certs):
    subject = f"revoked-open-{scheme}"
    credential = token(subject=subject)
    claims = pyjwt.decode(credential, options={"verify_signature": False})
    with connect(scheme, guarded, certs, credential) as client:
        assert client.complete("echo", "before the revocation").text
        SqliteTokenStore(guarded.config.parent / "tokens.db").revoke(claims["jti"], claims["exp"])
        with pytest.raises(AuthenticationError):
            client.complete("echo", "on the same connection, after it")
    expected = 1 if scheme in ("http", "sse") else 2
    rows = settled_rows(guarded.config.parent / "ledger.sqlite", lambda r: r["user"] == subject, expected)
    outcomes = [(r["status"], r["error_code"]) for r in rows]
    if scheme in ("http", "sse"):  # each request authenticates: refused like any bad token, before a session
        assert outcomes == [("ok", None)]
    else:  # the open connection's next session is refused, and leaves its row
        assert outcomes == [("ok", None), ("error", "AUTH_FAILED")]


def test_a_token_revoked_while_its_connection_is_open_answers_no_more_queries(scheme, guarded, certs):
    """Queries read everyone's usage and list or cancel anyone's session with an admin token: a revoked
    one keeps none of that on a connection opened before the revocation."""
    credential = token(["chat:write", "models:read", "usage:admin", "session:admin"], subject=f"revoked-q-{scheme}")
    claims = pyjwt.decode(credential, options={"verify_signature": False})
    with connect(scheme, guarded, certs, credential) as client:
        assert client.complete("echo", "before the revocation").text
        assert client.sessions(all_users=True) == [] and client.breakers() is not None
        SqliteTokenStore(guarded.config.parent / "tokens.db").revoke(claims["jti"], claims["exp"])
        asks = {
            "usage": lambda: client.usage(all_users=True),
            "sessions": lambda: client.sessions(all_users=True),
            "cancel": lambda: client.cancel_session("someone-elses"),
            "breakers": client.breakers,
            "models": lambda: client.list_models("echo"),
        }
        for name, ask in asks.items():
            with pytest.raises(AuthenticationError) as refused:
                ask()
            assert credential not in str(refused.value), name


def test_scopes_are_enforced_per_operation_and_a_refusal_leaves_its_row(scheme, guarded, certs):
    with connect(scheme, guarded, certs, token(["models:read"], subject=f"reader-{scheme}")) as client:
        assert client.providers()  # models:read: the provider list
        with pytest.raises(PermissionDeniedError, match="chat:write"):
            client.complete("echo", "no chat:write")
        with pytest.raises(PermissionDeniedError, match="usage:read"):
            client.usage()
    rows = settled_rows(guarded.config.parent / "ledger.sqlite", lambda r: r["user"] == f"reader-{scheme}", 1)
    assert [(r["status"], r["error_code"]) for r in rows] == [("error", "FORBIDDEN")]
    with connect(scheme, guarded, certs, token(["chat:write"], subject=f"writer-{scheme}")) as client:
        assert client.providers() == []  # no models:read: nothing listed, completions still served
        assert client.complete("echo", "chat:write only").text


def test_allow_lists_narrow_deployments_and_models(scheme, guarded, certs):
    credential = token(
        subject=f"narrow-{scheme}", allowed_deployments=["openai", "echo"], allowed_models=["echo", "gpt-4o*"]
    )
    with connect(scheme, guarded, certs, credential) as client:
        assert {info.provider for info in client.providers()} == {"openai", "echo"}
        assert client.complete(f"openai:{MODEL}", "allowed").text
        with pytest.raises(PermissionDeniedError, match="may not use"):
            client.complete(f"slow:{MODEL}", "another deployment")
        with pytest.raises(PermissionDeniedError, match="may not use"):
            client.complete("openai:gpt-3.5-turbo", "another model")


def test_usage_is_ones_own_unless_usage_admin(scheme, guarded, certs):
    with connect(scheme, guarded, certs, token(subject=f"own-{scheme}")) as client:
        client.complete("echo", "mine")
        assert set(client.usage()["user"]) == {f"own-{scheme}"}
        with pytest.raises(PermissionDeniedError, match="usage:admin"):
            client.usage(user="somebody-else")
    with connect(scheme, guarded, certs, token([*EVERYTHING, "usage:admin"], subject=f"admin-{scheme}")) as admin:
        assert f"own-{scheme}" in set(admin.usage(user=f"own-{scheme}")["user"])


def test_the_same_sub_in_another_tenant_reads_only_its_own_rows(scheme, guarded, certs):
    """Two tenants' tokens with one ``sub``: each ``usage:read`` read the other's rows as its own."""
    sub = f"shared-sub-{scheme}"
    with connect(scheme, guarded, certs, token(subject=sub, tenant="acme")) as acme:
        acme.complete("echo", "acme's")
    with connect(scheme, guarded, certs, token(subject=sub, tenant="beta")) as beta:
        beta.complete("echo", "beta's")
        mine = beta.usage()
        assert set(mine["tenant"]) == {"beta"} and len(mine) == 1
        with pytest.raises(PermissionDeniedError, match="usage:admin"):
            beta.usage(tenant="acme")


def test_a_token_of_one_user_cannot_reach_another_users_session(scheme, guarded, certs):
    if scheme == "stdio":
        pytest.skip("stdio: each client starts a gateway of its own, so no other connection shares its sessions")
    sessions = [*EVERYTHING, "session:read", "session:write"]
    with (
        connect(scheme, guarded, certs, token(sessions, subject=f"owner-{scheme}")) as owner,
        connect(scheme, guarded, certs, token(sessions, subject=f"other-{scheme}")) as other,
        connect(scheme, guarded, certs, token(sessions, subject=f"owner-{scheme}")) as owner_elsewhere,
    ):
        stream = owner.stream(f"slow:{MODEL}", LONG_PROMPT)
        events = iter(stream)
        next(events)
        sid = stream.session_id
        assert sid not in {s["session_id"] for s in other.sessions()}
        with pytest.raises(InvalidRequestError, match="of yours is running"):  # as for an id nothing runs under
            other.cancel_session(sid)
        with pytest.raises(PermissionDeniedError, match="session:admin"):
            other.sessions(all_users=True)
        assert sid in {s["session_id"] for s in owner_elsewhere.sessions()}  # the owner, on another connection
        squatter = other.stream(f"slow:{MODEL}", LONG_PROMPT, session_id=sid)  # a client may name its sessions
        squatted = iter(squatter)
        next(squatted)
        assert owner_elsewhere.cancel_session(sid) == 1  # the owner's own: not held hostage by the other's
        *_, last = events
        assert isinstance(last, Error) and last.code == "CANCELLED"
        assert not isinstance(next(squatted), Error)  # the other user's session runs on, untouched
        squatter.close()
    with connect(scheme, guarded, certs, token([*EVERYTHING, "session:admin"], subject=f"admin-{scheme}")) as admin:
        assert isinstance(admin.sessions(all_users=True), list)
