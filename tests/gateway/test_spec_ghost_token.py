"""The GTL spec's own GhostToken (``iss, sub, aud, exp, scopes, provider_keys``: no ``iat``, no ``jti``),
correctly signed, is refused — the gateway needs both — and its caller hears which claims it lacks, in
the GTL error and in the OpenAI- and Anthropic-compatible shapes alike; a token whose signature does not
verify still hears only that it was refused."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jwt
import openai
import pytest

import gtl_nb
from gtl_nb.gateway.local import start_gateway
from gtl_nb.gateway.tokens import REFUSED
from gtl_nb.protocol.errors import PermissionDeniedError
from tests.gateway.conftest import jwt_echo_gateway

SECRET_ENV = "GTL_TEST_SPEC_TOKEN_SECRET"
LACKING = "the GhostToken lacks the claims iat, jti, which this gateway requires"
HI = [{"role": "user", "content": "Hi"}]
REQUEST = {"type": "completion_request", "session_id": "s1", "model": "echo", "messages": HI}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, Any]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        config, mint = jwt_echo_gateway(tmp_path_factory.mktemp("spec-token"), monkeypatch, SECRET_ENV)
        with start_gateway(config) as running:
            yield running, SECRET_ENV.lower().ljust(40, "s"), mint


def spec_token(secret: str) -> str:
    """The spec's example claims, for this gateway's issuer, signed with ``secret``."""
    claims = {
        "iss": "gtl-test",
        "sub": "user_123",
        "aud": "gtl",
        "exp": int(time.time()) + 600,
        "scopes": ["chat:read", "chat:write", "session:admin"],
        "provider_keys": {"echo": "encrypted_key_hash"},
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def forged(token: str) -> str:
    """``token`` with its payload's ``sub`` changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "root"
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


def gtl_error(running: Any, token: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.post(f"{running.url('http')}/v1/gtl", json=REQUEST, headers={"Authorization": f"Bearer {token}"})
    last = json.loads(answer.text.strip().splitlines()[-1])
    return answer.status_code, last


def openai_error(running: Any, token: str) -> openai.AuthenticationError:
    client = openai.OpenAI(base_url=f"{running.url('http')}/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "Hi"}])
    return refused.value


def anthropic_error(running: Any, token: str) -> anthropic.AuthenticationError:
    client = anthropic.Anthropic(base_url=running.url("http"), api_key=token, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client.messages.create(model="echo", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    return refused.value


def test_the_gtl_error_names_the_missing_claims(gateway):
    running, secret, _ = gateway
    status, last = gtl_error(running, spec_token(secret))
    assert status == 401 and last["code"] == "AUTH_FAILED" and last["message"].startswith(LACKING)


def test_the_openai_shape_names_the_missing_claims(gateway):
    running, secret, _ = gateway
    error = openai_error(running, spec_token(secret))
    assert error.status_code == 401 and LACKING in error.message


def test_the_anthropic_shape_names_the_missing_claims(gateway):
    running, secret, _ = gateway
    error = anthropic_error(running, spec_token(secret))
    assert error.status_code == 401 and LACKING in error.message


@pytest.mark.parametrize("how", ["another secret", "tampered"])
def test_a_token_whose_signature_fails_hears_nothing_specific(gateway, how):
    running, secret, _ = gateway
    wrong = "another-secret-of-at-least-32-bytes!!"
    token = spec_token(wrong) if how == "another secret" else forged(spec_token(secret))
    status, last = gtl_error(running, token)
    assert status == 401 and last["message"] == REFUSED
    assert "claim" not in openai_error(running, token).message
    assert "claim" not in anthropic_error(running, token).message


def test_chat_read_reads_ones_own_sessions_and_usage_but_runs_nothing(gateway):
    running, _, mint = gateway
    with gtl_nb.connect(running.url("http"), token=mint("chat:write", subject="reader")) as writer:
        answer = writer.complete("echo", "to be read")
    with gtl_nb.connect(running.url("http"), token=mint("chat:read", subject="reader")) as reader:
        assert isinstance(reader.sessions(), list)  # FORBIDDEN without session:read
        assert answer.session_id in set(reader.usage()["session_id"])
        with pytest.raises(PermissionDeniedError) as refused:
            reader.complete("echo", "not allowed")
        assert "'chat:write'" in refused.value.message
        with pytest.raises(PermissionDeniedError):
            reader.usage(all_users=True)
