"""GhostTokens (``gateway.tokens``, ``gtl token``): every refusal with a real signed token, the key
sources (HS256 secret, PEM, JWKS rotating by kid), scopes and allow-lists, revocation, minting, the
configuration table, the command, and canaries: no secret or token in a message, a repr or a log."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gtl_nb.engine.context import RequestContext
from gtl_nb.gateway import token_cli
from gtl_nb.gateway.permissions import completion_context
from gtl_nb.gateway.reload import SwappableAuthenticator
from gtl_nb.gateway.sessions import HeaderTokenFirst
from gtl_nb.gateway.tokens import (
    DEV_ISSUER,
    EXPIRED,
    IMPLIED_SCOPES,
    REFUSED,
    REQUIRED_CLAIMS,
    SCOPE_NAMES,
    SCOPES,
    MemoryRevocationList,
    MintedToken,
    RevocationList,
    SqliteTokenStore,
    TokenAuthenticator,
    TokenPolicy,
    TokenRefusedError,
    TokenRegistry,
    VerificationKey,
    check_allowed,
    has_scope,
    mint_token,
    require_scope,
)
from gtl_nb.gateway.tokens.store import MINTED_KEPT_AFTER_EXPIRY
from gtl_nb.log import redact
from gtl_nb.protocol.errors import AuthenticationError, ConfigurationError, InternalError, PermissionDeniedError

REPO = Path(__file__).resolve().parents[2]
SECRET = "CANARY-secret-7f3a9c2e1d8b4a6f0e5c3b2a1d9e8f7c6b5a4d3e2f1a0b9c"
ISSUER = "https://issuer.test"
NOW = 1_800_000_000.0


class Clock:
    """A settable Unix clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys() -> list[ec.EllipticCurvePrivateKey]:
    return [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": "gtl",
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": "jti-1",
        "scopes": ["chat:write", "models:read"],
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def hs(payload: dict[str, Any], headers: dict[str, Any] | None = None, secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers)


def raw_hs(payload: bytes, header: dict[str, Any] | None = None) -> str:
    """An HS256 token over exactly these payload bytes (for payloads PyJWT would not write)."""
    head = _b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = head + b"." + _b64(payload)
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(signature)).decode()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def hs_policy(**changes: Any) -> TokenPolicy:
    return TokenPolicy(issuer=ISSUER, secret=SECRET.encode(), **changes)


def authenticator(policy: TokenPolicy | None = None, clock: Clock | None = None, revocations=None):
    return TokenAuthenticator(policy or hs_policy(), revocations or MemoryRevocationList(), clock or Clock())


def refusal(auth: TokenAuthenticator, token: Any) -> TokenRefusedError:
    with pytest.raises(TokenRefusedError) as caught:
        auth(token)
    return caught.value


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_jwks(path: Path, keys: dict[str, Any]) -> Path:
    """Write a JWKS of ``kid → private key`` (their public halves), replacing the file atomically."""
    entries = []
    for kid, key in keys.items():
        algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
        entry = algorithm.to_jwk(key.public_key(), as_dict=True)
        entries.append({**entry, "kid": kid, "use": "sig"})
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"keys": entries}), encoding="utf-8")
    os.replace(temporary, path)
    return path


# ----------------------------------------------------------------------------------------------
# accepted tokens


def test_a_minted_hs256_token_gives_the_request_context():
    policy = hs_policy()
    token = mint_token(
        policy,
        subject="alice",
        scopes=["chat:write", "models:read"],
        lifetime=3600,
        provider_keys={"openai": "team-key"},
        allowed_models=["gpt-4o*"],
        tenant="acme",
        now=NOW,
    )
    context = authenticator(policy)(token)
    assert context.principal == "alice"
    assert context.tenant == "acme"
    assert context.key_id and context.key_id != token
    assert context.scopes == frozenset({"chat:write", "models:read"})
    assert dict(context.provider_keys) == {"openai": "team-key"}
    assert context.allowed_deployments == frozenset({"openai"})  # the deployments it holds keys for
    assert context.allowed_models == frozenset({"gpt-4o*"})
    with pytest.raises(TypeError):
        context.provider_keys["openai"] = "other"  # type: ignore[index]
    hash(context)  # still usable as a key
    assert "team-key" not in repr(context)  # a misused claim could hold a real key


def test_rs256_with_a_pem_public_key(tmp_path, rsa_key):
    (tmp_path / "issuer.pem").write_bytes(public_pem(rsa_key))
    policy = TokenPolicy.from_table({"issuer": ISSUER, "public_key_file": "issuer.pem"}, tmp_path, {})
    assert policy.algorithms == ("RS256",)
    token = mint_token(rsa_key, subject="bob", scopes=["chat:write"], lifetime=600, issuer=ISSUER, now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert authenticator(policy)(token).principal == "bob"


def test_es256_jwks_with_two_keys_rotates_by_kid(tmp_path, ec_keys):
    k1, k2, k3 = ec_keys
    jwks = write_jwks(tmp_path / "jwks.json", {"k1": k1, "k2": k2})
    policy = TokenPolicy.from_table({"issuer": ISSUER, "jwks_file": "jwks.json", "refresh": 5}, tmp_path, {})
    assert policy.algorithms == ("ES256",)
    clock = Clock()
    auth = authenticator(policy, clock)

    def token(key: Any, kid: str | None) -> str:
        return mint_token(key, subject=f"by-{kid}", scopes=[], lifetime=3600, issuer=ISSUER, kid=kid, now=NOW)

    assert auth(token(k1, "k1")).principal == "by-k1"
    assert auth(token(k2, "k2")).principal == "by-k2"
    assert refusal(auth, token(k3, "k3")).reason == "unknown-kid"
    assert refusal(auth, token(k1, None)).reason == "missing-kid"
    assert refusal(auth, token(k1, "k2")).reason == "bad-signature"  # signed by k1, claims k2's kid

    write_jwks(jwks, {"k2": k2, "k3": k3})  # rotation: k1 retired, k3 added
    clock.now += 1  # within refresh: the known keys still serve
    assert auth(token(k1, "k1")).principal == "by-k1"
    clock.now += 5
    assert refusal(auth, token(k1, "k1")).reason == "unknown-kid"
    assert auth(token(k3, "k3")).principal == "by-k3"
    assert auth(token(k2, "k2")).principal == "by-k2"

    (tmp_path / "jwks.json").write_text("{half a file", encoding="utf-8")  # a broken write keeps the keys
    clock.now += 5
    assert auth(token(k3, "k3")).principal == "by-k3"


def test_a_retired_key_stops_its_tokens_on_open_connections_and_in_the_memory_of_verified_ones(tmp_path, ec_keys):
    """A key removed from the JWKS file (rotated out, or leaked) verified a connection's token: that
    connection's next completion or query is refused, and a remembered token is checked again at once
    rather than living on for ``VERIFIED_FOR`` seconds."""
    k1, k2, _ = ec_keys
    jwks = write_jwks(tmp_path / "jwks.json", {"k1": k1, "k2": k2})
    policy = TokenPolicy.from_table({"issuer": ISSUER, "jwks_file": "jwks.json", "refresh": 5}, tmp_path, {})
    clock = Clock()
    auth = authenticator(policy, clock)
    old = mint_token(k1, subject="by-k1", scopes=[], lifetime=3600, issuer=ISSUER, kid="k1", now=NOW)
    kept = mint_token(k2, subject="by-k2", scopes=[], lifetime=3600, issuer=ISSUER, kid="k2", now=NOW)
    opened, staying = auth(old), auth(kept)
    auth.recheck(opened)
    write_jwks(jwks, {"k2": k2})  # k1 retired
    clock.now += 6  # past refresh: the file is looked at again
    with pytest.raises(TokenRefusedError) as refused:
        auth.recheck(opened)
    assert refused.value.reason == "key-retired" and refused.value.message == REFUSED
    assert refusal(auth, old).reason == "unknown-kid"  # remembered as verified 6 s ago: checked again
    auth.recheck(staying)
    assert auth(kept).principal == "by-k2"


def test_an_algorithm_a_reload_stopped_accepting_stops_the_tokens_it_verified(tmp_path, ec_keys):
    """A reload that narrowed ``algorithms`` to ES256 while the HS256 secret stayed configured refused new
    HS256 tokens, yet open connections verified by that secret went on without a limit."""
    k1, _, _ = ec_keys
    write_jwks(tmp_path / "jwks.json", {"k1": k1})
    table = {"issuer": ISSUER, "secret_env": "S", "jwks_file": "jwks.json"}
    clock = Clock()
    both = authenticator(TokenPolicy.from_table(table, tmp_path, {"S": SECRET}), clock)
    by_secret = both(hs(claims()))
    by_key = both(mint_token(k1, subject="bob", scopes=[], lifetime=600, issuer=ISSUER, kid="k1", now=NOW))
    narrowed = TokenPolicy.from_table({**table, "algorithms": ["ES256"]}, tmp_path, {"S": SECRET})
    reloaded = authenticator(narrowed, clock)
    with pytest.raises(TokenRefusedError) as refused:
        reloaded.recheck(by_secret)
    assert refused.value.reason == "key-retired"
    reloaded.recheck(by_key)  # ES256 is still accepted: its connections go on
    only_hs = authenticator(TokenPolicy.from_table({**table, "algorithms": ["HS256"]}, tmp_path, {"S": SECRET}), clock)
    with pytest.raises(TokenRefusedError):
        only_hs.recheck(by_key)
    only_hs.recheck(by_secret)


def test_a_token_within_the_leeway_is_accepted():
    clock = Clock(NOW + 3600 + 20)  # 20 s past exp, leeway 30
    assert authenticator(hs_policy(), clock)(hs(claims())).principal == "alice"
    clock.now = NOW - 20  # issued 20 s "in the future": clock skew
    assert authenticator(hs_policy(), clock)(hs(claims())).principal == "alice"


# ----------------------------------------------------------------------------------------------
# refusals


def test_no_token_is_refused_with_advice():
    auth = authenticator()
    for offered in (None, ""):
        error = refusal(auth, offered)
        assert error.reason == "missing" and "Authorization header" in error.message and "api_key" in error.message
        assert "gtl_nb.connect as its token argument" in error.message
        assert isinstance(error, AuthenticationError) and error.code == "AUTH_FAILED"
    # it is logged too: nothing in it looks like a credential to the log's redaction
    assert redact(error.message) == error.message


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg):
    token = jwt.encode(claims(), None, algorithm="none")
    head = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()).decode()
    token = head + token[token.index(".") :]
    error = refusal(authenticator(), token)
    assert error.reason == "alg-none" and error.message == REFUSED


def test_an_algorithm_off_the_policy_is_refused(rsa_key):
    auth = authenticator()  # HS256 only
    assert refusal(auth, jwt.encode(claims(), rsa_key, algorithm="RS256")).reason == "alg-not-accepted"
    assert refusal(auth, jwt.encode(claims(), SECRET * 2, algorithm="HS512")).reason == "alg-not-accepted"


def test_algorithm_confusion_an_rsa_public_key_as_hmac_secret(rsa_key):
    """The attacker knows the RS256 public key and signs HS256 with its PEM as the secret."""
    pem = public_pem(rsa_key)
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = head + b"." + _b64(json.dumps(claims(sub="mallory")).encode())
    forged = (signing_input + b"." + _b64(hmac.new(pem, signing_input, hashlib.sha256).digest())).decode()

    rs_only = TokenPolicy(
        issuer=ISSUER, algorithms=("RS256",), public_keys=(VerificationKey("RS256", rsa_key.public_key()),)
    )
    assert refusal(authenticator(rs_only), forged).reason == "alg-not-accepted"
    both = TokenPolicy(
        issuer=ISSUER,
        algorithms=("HS256", "RS256"),
        secret=SECRET.encode(),
        public_keys=(VerificationKey("RS256", rsa_key.public_key()),),
    )
    # HS256 is verified with the secret only, never with the public key
    assert refusal(authenticator(both), forged).reason == "bad-signature"
    assert authenticator(both)(jwt.encode(claims(), rsa_key, algorithm="RS256")).principal == "alice"


def test_a_kid_of_another_algorithm_is_refused(tmp_path, rsa_key, ec_keys):
    write_jwks(tmp_path / "jwks.json", {"rsa": rsa_key, "ec": ec_keys[0]})
    policy = TokenPolicy.from_table({"issuer": ISSUER, "jwks_file": "jwks.json"}, tmp_path, {})
    assert set(policy.algorithms) == {"RS256", "ES256"}
    token = mint_token(ec_keys[0], subject="x", scopes=[], lifetime=60, issuer=ISSUER, kid="rsa", now=NOW)
    assert refusal(authenticator(policy), token).reason == "alg-key-mismatch"


def test_expired_and_not_yet_valid():
    clock = Clock(NOW + 3600 + 31)
    error = refusal(authenticator(clock=clock), hs(claims()))
    assert error.reason == "expired" and error.message == EXPIRED
    clock.now = NOW
    assert refusal(authenticator(clock=clock), hs(claims(nbf=int(NOW) + 60))).reason == "not-yet-valid"
    assert refusal(authenticator(clock=clock), hs(claims(iat=int(NOW) + 60))).reason == "not-yet-valid"
    assert refusal(authenticator(clock=clock), hs(claims(nbf=int(NOW) + 60))).message == REFUSED


def test_a_lifetime_beyond_the_policy_is_refused():
    long_lived = claims(exp=int(NOW) + 31 * 86400)
    assert refusal(authenticator(), hs(long_lived)).reason == "lifetime-too-long"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "other"}, "wrong-audience"),
        ({"aud": ["other", "more"]}, "wrong-audience"),
        ({"aud": 7}, "bad-claim"),
        ({"iss": "https://elsewhere.test"}, "wrong-issuer"),
        ({"exp": "tomorrow"}, "bad-claim"),
        ({"iat": True}, "bad-claim"),
        ({"sub": "ali\nce"}, "bad-claim"),
        ({"sub": "\ud800"}, "bad-claim"),  # a lone surrogate: the ledger stored six other characters
        ({"sub": "ali\x85ce"}, "bad-claim"),  # a C1 control
        ({"sub": "tenant:acme"}, "bad-claim"),  # the name tenant acme's shared budget is counted under
        ({"jti": 12}, "bad-claim"),
        ({"tenant": ""}, "bad-claim"),
        ({"provider_keys": ["openai"]}, "bad-claim"),
        ({"provider_keys": {"openai": 3}}, "bad-claim"),
        ({"allowed_models": "gpt-4o"}, "bad-claim"),
        ({"scopes": "chat:write"}, "bad-scopes"),
        ({"scopes": ["chat:write", 1]}, "bad-scopes"),
        ({"scopes": [["chat:write"]]}, "bad-scopes"),
    ],
)
def test_wrong_claims_are_refused(changes, reason):
    error = refusal(authenticator(), hs(claims(**changes)))
    assert error.reason == reason and error.message == REFUSED


def test_a_list_audience_naming_gtl_is_accepted():
    assert authenticator()(hs(claims(aud=["other", "gtl"]))).principal == "alice"


@pytest.mark.parametrize("name", sorted(REQUIRED_CLAIMS))
def test_a_missing_required_claim_is_refused(name):
    error = refusal(authenticator(), hs(claims(**{name: None})))
    assert error.reason == "missing-claim"
    assert f"lacks the claim {name}, which this gateway requires" in error.message


def test_a_signed_token_of_the_specs_claims_hears_which_claims_it_lacks():
    """The GTL spec's example token has no ``iat`` or ``jti``: once its signature verifies, its caller is
    told so (it tells a forger nothing), with what each claim is for."""
    error = refusal(authenticator(), hs(claims(iat=None, jti=None)))
    assert error.reason == "missing-claim"
    assert error.message.startswith("the GhostToken lacks the claims iat, jti, which this gateway requires")
    assert "bounds its lifetime" in error.message and "revocation" in error.message
    assert redact(error.message) == error.message  # logged whole: nothing in it reads as a credential


@pytest.mark.parametrize("how", ["another secret", "alg none", "tampered"])
def test_a_token_whose_signature_fails_hears_nothing_of_its_claims(how):
    lacking = claims(iat=None, jti=None)
    token = {
        "another secret": lambda: hs(lacking, secret="another-secret-of-at-least-32-bytes!!"),
        "alg none": lambda: jwt.encode(lacking, None, algorithm="none"),
        "tampered": lambda: ".".join(
            [*hs(claims()).split(".")[:1], _b64(json.dumps(lacking).encode()).decode(), hs(claims()).split(".")[2]]
        ),
    }[how]()
    error = refusal(authenticator(), token)
    assert error.message == REFUSED and error.reason != "missing-claim"


def test_a_policy_may_require_more_claims():
    policy = hs_policy(required_claims=REQUIRED_CLAIMS | {"tenant"})
    assert refusal(authenticator(policy), hs(claims())).reason == "missing-claim"
    assert authenticator(policy)(hs(claims(tenant="acme"))).tenant == "acme"


def test_tampered_payload_and_signature_are_refused():
    token = hs(claims())
    head, payload, signature = token.split(".")
    forged_payload = _b64(json.dumps(claims(sub="admin", scopes=list(SCOPE_NAMES))).encode()).decode()
    assert refusal(authenticator(), f"{head}.{forged_payload}.{signature}").reason == "bad-signature"
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    assert refusal(authenticator(), f"{head}.{payload}.{flipped}").reason == "bad-signature"
    assert (
        refusal(authenticator(), hs(claims(), secret="another-secret-of-at-least-32-bytes!!")).reason == "bad-signature"
    )


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
def test_a_token_naming_its_own_key_is_refused(header):
    value: Any = {"kty": "oct", "k": "AAAA"} if header == "jwk" else "https://attacker.test/keys"
    error = refusal(authenticator(), hs(claims(), headers={header: value}))
    assert error.reason == "key-in-header" and error.message == REFUSED


def test_critical_and_unusual_headers_are_refused():
    assert refusal(authenticator(), hs(claims(), headers={"crit": ["exp"]})).reason == "critical-header"
    assert refusal(authenticator(), hs(claims(), headers={"typ": "dpop+jwt"})).reason == "wrong-type"


def test_an_oversized_token_is_refused_before_parsing():
    error = refusal(authenticator(), "x" * 8193)  # not even a JWT: the size speaks first
    assert error.reason == "oversized" and "8192" in error.message
    big = hs(claims(padding="p" * 9000))
    assert refusal(authenticator(), big).reason == "oversized"


@pytest.mark.parametrize(
    "token",
    ["not a token", "a.b", "a.b.c.d", "éé.éé.éé", "eyJhbGciOiJIUzI1NiJ9=.e30.sig", "!!!.e30.abc", "e30.e30.e30"],
)
def test_malformed_tokens_are_refused(token):
    assert refusal(authenticator(), token).reason == "malformed"


def test_payloads_a_json_parser_could_misread_are_refused():
    duplicate = b'{"iss":"%s","sub":"alice","sub":"admin","aud":"gtl","iat":%d,"exp":%d,"jti":"j"}' % (
        ISSUER.encode(),
        int(NOW),
        int(NOW) + 60,
    )
    assert refusal(authenticator(), raw_hs(duplicate)).reason == "malformed-claims"
    not_a_number = json.dumps(claims()).replace(str(int(NOW) + 3600), "NaN").encode()
    assert refusal(authenticator(), raw_hs(not_a_number)).reason == "malformed-claims"
    deep = json.dumps(claims(extra=[[[[[[[[[["deep"]]]]]]]]]])).encode()
    assert refusal(authenticator(), raw_hs(deep)).reason == "malformed-claims"
    assert refusal(authenticator(), raw_hs(b"[1, 2]")).reason == "malformed-claims"
    huge = json.dumps(claims()).replace(str(int(NOW) + 3600), "1" + "0" * 400).encode()
    assert refusal(authenticator(), raw_hs(huge)).reason == "bad-claim"  # never an OverflowError


_FUZZED = authenticator()
_GOOD = hs(claims())


@given(st.text(max_size=300))
def test_any_text_is_refused_with_the_documented_error(text):
    with pytest.raises(TokenRefusedError):
        _FUZZED(text)


@given(st.integers(min_value=0), st.sampled_from("AZaz09-_.=!é"))
def test_any_one_character_change_is_refused(position, char):
    index = position % len(_GOOD)
    mutated = _GOOD[:index] + char + _GOOD[index + 1 :]
    if mutated != _GOOD:
        with pytest.raises(TokenRefusedError):
            _FUZZED(mutated)


def test_a_revoked_jti_is_refused():
    revocations = MemoryRevocationList()
    auth = authenticator(revocations=revocations)
    assert auth(hs(claims())).key_id == "jti-1"
    revocations.revoke("jti-1", NOW + 3600 + 30)
    error = refusal(auth, hs(claims()))
    assert error.reason == "revoked" and error.message == REFUSED
    assert auth(hs(claims(jti="jti-2"))).key_id == "jti-2"


def test_an_open_connections_context_is_rechecked_for_expiry_and_revocation():
    """A connection authenticates once; each completion it starts asks ``recheck`` again."""
    clock, revocations = Clock(), MemoryRevocationList()
    auth = authenticator(clock=clock, revocations=revocations)
    context = auth(hs(claims()))
    assert context.expires_at == NOW + 3600
    assert auth.recheck(context) is context  # still valid: the same context
    assert completion_context(context, auth) is context
    clock.now = NOW + 3600 + 10  # past exp, within the 30 s leeway: accepted at connect, so at each completion too
    auth.recheck(context)
    clock.now = NOW + 3600 + 31
    with pytest.raises(TokenRefusedError) as expired:
        auth.recheck(context)
    assert expired.value.reason == "expired" and expired.value.code == "AUTH_FAILED"
    clock.now = NOW + 10
    revocations.revoke("jti-1", NOW + 3600 + 30)
    refused = completion_context(context, auth)
    assert isinstance(refused, TokenRefusedError) and refused.reason == "revoked"
    with pytest.raises(TokenRefusedError):
        SwappableAuthenticator(auth).recheck(context)  # the reloadable hook asks its target
    with pytest.raises(TokenRefusedError):
        HeaderTokenFirst(auth, None).recheck(context)  # so does a header token's wrapper


def test_a_reload_narrowing_default_deployments_narrows_open_connections_contexts():
    """An open connection's context came from the policy at its hello; a reload that takes deployments
    out of ``default_deployments`` takes them from its next completion and query too (through every
    wrapper the listeners hold). One that adds some reaches new connections only, and a token naming
    its own ``provider_keys`` is not the policy's to narrow."""
    wide = authenticator(hs_policy(default_deployments=None))  # "*"
    opened = wide(hs(claims()))
    keyed = wide(hs(claims(jti="jti-keys", provider_keys={"openai": "team-a"})))
    pinned = wide(hs(claims(jti="jti-pinned", allowed_deployments=["openai", "anthropic"])))
    assert opened.allowed_deployments is None
    narrow = authenticator(hs_policy(default_deployments=frozenset({"echo", "anthropic"})))
    for hook in (narrow, SwappableAuthenticator(narrow), HeaderTokenFirst(narrow, None)):
        assert hook.recheck(opened).allowed_deployments == {"echo", "anthropic"}
        assert hook.recheck(pinned).allowed_deployments == {"anthropic"}
        assert hook.recheck(keyed) is keyed
    narrowed = completion_context(opened, narrow)
    assert not isinstance(narrowed, Exception) and not narrowed.allows("openai", "gpt-4o")
    assert narrowed.allows("echo", "echo") and narrowed.principal == opened.principal
    assert wide.recheck(narrowed) is narrowed  # widened again: an open connection keeps the narrower set
    only_echo = authenticator(hs_policy(default_deployments=frozenset({"echo"})))
    assert only_echo.recheck(narrowed).allowed_deployments == {"echo"}


def test_a_verified_token_is_remembered_but_still_expires_and_can_be_revoked():
    clock, revocations = Clock(), MemoryRevocationList()
    auth = authenticator(clock=clock, revocations=revocations)
    token = hs(claims())
    verified = []
    original = auth._verify
    auth._verify = lambda t: (verified.append(t), original(t))[1]  # type: ignore[method-assign]
    first = auth(token)
    clock.now = NOW + 30
    assert auth(token) is first and len(verified) == 1  # remembered: the signature is not checked again
    clock.now = NOW + 61
    assert auth(token).key_id == first.key_id and len(verified) == 2  # remembered for at most VERIFIED_FOR s
    revocations.revoke("jti-1", NOW + 3600 + 30)
    with pytest.raises(TokenRefusedError) as revoked:
        auth(token)  # the revocation list is asked on every call, remembered or not
    assert revoked.value.reason == "revoked"
    short = hs(claims(jti="jti-short", exp=int(NOW) + 100))
    clock.now = NOW + 90
    auth(short)
    clock.now = NOW + 100 + 31  # past exp and the 30 s leeway
    with pytest.raises(TokenRefusedError) as expired:
        auth(short)  # never remembered past its exp: checked again, with the leeway
    assert expired.value.reason == "expired"


def test_an_unreadable_revocation_list_fails_closed():
    class Broken(MemoryRevocationList):
        def is_revoked(self, jti: str) -> bool:
            raise InternalError("disk on fire")

    error = refusal(authenticator(revocations=Broken()), hs(claims()))
    assert error.reason == "store-unavailable" and error.retryable
    # the gateway's trouble, not the caller's key: the retryable unavailable code on every transport
    # (a 503 over HTTP), while still an AuthenticationError that every transport refuses, logs and counts
    from gtl_nb.gateway.refusals import TokenUncheckable, unavailable_status

    assert isinstance(error, TokenUncheckable) and unavailable_status(error) == 503
    event = error.to_event("s")
    assert event.code == "PROVIDER_UNAVAILABLE" and event.retryable
    assert "revocation list is unreachable" in event.message
    # read whole in the log: the redactor takes "token: WORD" for a credential
    from gtl_nb.log import redact

    assert redact(event.message) == event.message, redact(event.message)


# ----------------------------------------------------------------------------------------------
# scopes and allow-lists


def test_every_operation_needs_its_scope():
    assert SCOPES["completion"] == "chat:write" and SCOPES["tools.execute"] == "tools:execute"
    assert {"session:read", "session:write", "session:admin", "models:read", "usage:read", "usage:admin"} <= SCOPE_NAMES
    for operation, scope in SCOPES.items():
        require_scope(RequestContext(principal="p", scopes=frozenset({scope})), operation)
        with pytest.raises(PermissionDeniedError) as caught:
            require_scope(RequestContext(principal="p", scopes=SCOPE_NAMES - {scope} - _implying(scope)), operation)
        assert caught.value.code == "FORBIDDEN" and scope in caught.value.message
    with pytest.raises(ValueError):
        require_scope(RequestContext(), "launch.missiles")


def _implying(scope: str) -> set[str]:
    return {held for held, granted in IMPLIED_SCOPES.items() if scope in granted}


def test_the_specs_chat_read_reads_ones_own_sessions_and_usage_and_nothing_more():
    reader = RequestContext(principal="ann", scopes=frozenset({"chat:read"}))
    assert "chat:read" in SCOPE_NAMES
    require_scope(reader, "session.read")
    require_scope(reader, "usage.read")
    for operation in sorted(set(SCOPES) - {"session.read", "usage.read"}):
        with pytest.raises(PermissionDeniedError):
            require_scope(reader, operation)
    assert mint_token(SECRET, subject="ann", scopes=["chat:read"], lifetime=60, issuer=ISSUER)


def test_administrator_scopes_imply_the_narrow_ones():
    admin = RequestContext(principal="root", scopes=frozenset({"session:admin", "usage:admin"}))
    assert has_scope(admin, "session:read") and has_scope(admin, "session:write") and has_scope(admin, "usage:read")
    assert not has_scope(RequestContext(scopes=frozenset({"usage:read"})), "usage:admin")
    assert not has_scope(RequestContext(), "chat:write")  # the default context grants nothing


def test_the_docs_table_is_the_scopes_table():
    text = (REPO / "docs" / "tokens.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([\w.]+)` \| `(\w+:\w+)` \|", text, flags=re.MULTILINE))
    assert rows == dict(SCOPES)


def test_allow_lists():
    context = RequestContext(
        principal="p",
        allowed_deployments=frozenset({"openai", "local"}),
        allowed_models=frozenset({"gpt-4o*", "local:llama3"}),
    )
    check_allowed(context, "openai", "gpt-4o-mini")
    check_allowed(context, "local", "llama3")
    for deployment, model, word in [
        ("anthropic", "claude", "deployment"),
        ("openai", "o3", "model"),
        ("openai", "llama3", "model"),
    ]:
        with pytest.raises(PermissionDeniedError) as caught:
            check_allowed(context, deployment, model)
        assert caught.value.code == "FORBIDDEN" and word in caught.value.message
    check_allowed(RequestContext(principal="embedded"), "anything", "any-model")  # None restricts nothing


def test_deployments_without_provider_keys_follow_the_policy():
    no_keys = hs(claims())
    assert authenticator()(no_keys).allowed_deployments == frozenset()  # none unless configured
    with pytest.raises(PermissionDeniedError):
        check_allowed(authenticator()(no_keys), "openai", "gpt-4o")
    assert authenticator(hs_policy(default_deployments=frozenset({"echo"})))(no_keys).allowed_deployments == {"echo"}
    assert authenticator(hs_policy(default_deployments=None))(no_keys).allowed_deployments is None
    narrowed = hs(claims(allowed_deployments=["echo", "openai"], provider_keys={"openai": "k", "anthropic": "k2"}))
    assert authenticator()(narrowed).allowed_deployments == {"openai"}
    only_claim = hs(claims(allowed_deployments=["openai"]))
    assert authenticator(hs_policy(default_deployments=None))(only_claim).allowed_deployments == {"openai"}


def test_a_token_whose_allow_lists_leave_it_nothing_is_not_minted():
    """``allowed_deployments`` narrows what the provider keys (or the policy's defaults) allow, never adds
    to it: a token whose lists do not meet would be refused every time, so minting it is refused."""
    keys = {"openai": "team-openai", "anthropic": "team-anthropic"}
    with pytest.raises(
        ConfigurationError, match=r"could use no deployment.*provider-key deployments \(anthropic, openai\)"
    ):
        mint_token(
            hs_policy(),
            subject="ann",
            scopes=["chat:write"],
            lifetime=60,
            now=NOW,
            provider_keys=keys,
            allowed_deployments=["echo"],
        )
    with pytest.raises(ConfigurationError, match=r"default_deployments \(none\).*list them in \[gateway.jwt\]"):
        mint_token(
            hs_policy(), subject="ann", scopes=["chat:write"], lifetime=60, now=NOW, allowed_deployments=["echo"]
        )
    meeting = mint_token(
        hs_policy(),
        subject="ann",
        scopes=["chat:write"],
        lifetime=60,
        now=NOW,
        provider_keys=keys,
        allowed_deployments=["openai", "echo"],
    )
    assert authenticator()(meeting).allowed_deployments == {"openai"}
    open_policy = hs_policy(default_deployments=None)  # "*": every deployment, narrowed to echo
    echo_only = mint_token(
        open_policy, subject="ann", scopes=["chat:write"], lifetime=60, now=NOW, allowed_deployments=["echo"]
    )
    assert authenticator(open_policy)(echo_only).allowed_deployments == {"echo"}


# ----------------------------------------------------------------------------------------------
# revocation stores and the registry


def test_the_memory_list_prunes():
    revocations = MemoryRevocationList()
    revocations.revoke("a", 100.0)
    revocations.revoke("b", 200.0)
    assert isinstance(revocations, RevocationList)
    assert revocations.prune(150.0) == 1
    assert not revocations.is_revoked("a") and revocations.is_revoked("b")


def test_the_sqlite_store_is_private_shared_and_cheap(tmp_path):
    clock = Clock()
    path = tmp_path / "state" / "tokens.sqlite3"
    gateway = SqliteTokenStore(path, clock=clock, refresh=5)
    operator = SqliteTokenStore(path, clock=clock, refresh=5)  # `gtl token revoke` in another process
    assert isinstance(gateway, RevocationList) and isinstance(gateway, TokenRegistry)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not gateway.is_revoked("j1")
    operator.revoke("j1", NOW + 100)
    assert operator.is_revoked("j1")  # its own revocation at once
    assert not gateway.is_revoked("j1")  # the gateway answers from memory until refresh has passed
    clock.now += 5
    assert gateway.is_revoked("j1")
    operator.revoke("j1", NOW + 50)  # an earlier time never shortens a revocation
    assert operator.revoked() == {"j1": NOW + 100}
    assert gateway.prune(NOW + 101) == 1
    assert not gateway.is_revoked("j1")
    gateway.close()
    operator.close()
    with SqliteTokenStore(path, clock=clock) as reopened:
        assert reopened.revoked() == {}
        assert "tokens.sqlite3" in repr(reopened)


def test_the_registry_records_minted_tokens_without_the_token(tmp_path):
    clock = Clock()
    with SqliteTokenStore(tmp_path / "tokens.sqlite3", clock=clock) as store:
        token = mint_token(
            hs_policy(), subject="carol", scopes=["chat:write"], lifetime=60, tenant="acme", registry=store, now=NOW
        )
        [minted] = store.minted()
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        assert minted == MintedToken(jti, "carol", ("chat:write",), NOW, NOW + 60, "acme")
        assert store.expiry_of(jti) == NOW + 60 and store.expiry_of("unknown") is None
        clock.now = NOW + 61  # expired: still listed for a week, so `gtl token list` can say "expired"
        assert store.prune(clock.now) == 0 and store.minted() == [minted]
        clock.now = NOW + 60 + MINTED_KEPT_AFTER_EXPIRY + 1
        assert store.prune(clock.now) == 1 and store.minted() == []
    assert token.encode() not in (tmp_path / "tokens.sqlite3").read_bytes()


def test_revocation_through_the_store_reaches_the_authenticator(tmp_path):
    clock = Clock()
    policy = hs_policy(refresh=2)
    with SqliteTokenStore(tmp_path / "t.sqlite3", clock=clock, refresh=policy.refresh) as store:
        token = mint_token(policy, subject="dave", scopes=["chat:write"], lifetime=600, registry=store, now=NOW)
        auth = TokenAuthenticator(policy, store, clock)
        jti = auth(token).key_id
        store.revoke(jti, NOW + 600 + policy.leeway)
        assert refusal(auth, token).reason == "revoked"


# ----------------------------------------------------------------------------------------------
# minting


def test_minting_checks_what_it_signs(rsa_key):
    with pytest.raises(ConfigurationError, match="chat:write"):
        mint_token(hs_policy(), subject="x", scopes=["chat:wirte"], lifetime=60)
    too_long = r"a lifetime of 31 days is longer than \[gateway.jwt\] max_lifetime \(30 days, 2592000 s\)"
    with pytest.raises(ConfigurationError, match=too_long):
        mint_token(hs_policy(), subject="x", scopes=[], lifetime=31 * 86400)
    with pytest.raises(ConfigurationError, match="positive"):
        mint_token(hs_policy(), subject="x", scopes=[], lifetime=0)
    with pytest.raises(ConfigurationError, match="names"):
        mint_token(hs_policy(), subject="", scopes=[], lifetime=60)
    with pytest.raises(ConfigurationError, match="count as the tenant's"):  # tenant acme's budget's own name
        mint_token(hs_policy(), subject="tenant:acme", scopes=[], lifetime=60)
    rs_only = TokenPolicy(
        issuer=ISSUER, algorithms=("RS256",), public_keys=(VerificationKey("RS256", rsa_key.public_key()),)
    )
    with pytest.raises(ConfigurationError, match="HS256"):
        mint_token(rs_only, subject="x", scopes=[], lifetime=60)
    with pytest.raises(ConfigurationError, match="32 bytes"):
        mint_token("short", subject="x", scopes=[], lifetime=60)


def test_minting_with_a_bare_secret_and_a_timedelta():
    token = mint_token(SECRET, subject="eve", scopes=["usage:read"], lifetime=datetime.timedelta(hours=1), now=NOW)
    payload = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        audience="gtl",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert payload["iss"] == DEV_ISSUER and payload["exp"] - payload["iat"] == 3600
    policy = TokenPolicy(issuer=DEV_ISSUER, secret=SECRET.encode())
    assert authenticator(policy)(token).scopes == {"usage:read"}


# ----------------------------------------------------------------------------------------------
# configuration


def test_from_table_reads_every_key(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    table = {
        "issuer": ISSUER,
        "audience": "gtl-prod",
        "algorithms": ["HS256"],
        "secret_file": "secret",
        "leeway": 10,
        "max_lifetime": 86400,
        "max_token_bytes": 4096,
        "required_claims": ["tenant"],
        "default_deployments": ["echo"],
        "revocations": "state/tokens.sqlite3",
        "refresh": 1,
    }
    policy = TokenPolicy.from_table(table, tmp_path, {})
    assert policy.secret == SECRET.encode()
    assert (policy.audience, policy.leeway, policy.max_lifetime, policy.max_token_bytes) == (
        "gtl-prod",
        10,
        86400,
        4096,
    )
    assert policy.required_claims == REQUIRED_CLAIMS | {"tenant"}
    assert policy.default_deployments == {"echo"} and policy.refresh == 1
    assert policy.store_path == tmp_path / "state" / "tokens.sqlite3"
    env_policy = TokenPolicy.from_table(
        {"issuer": ISSUER, "secret_env": "GTL_JWT", "default_deployments": ["*"]}, tmp_path, {"GTL_JWT": SECRET}
    )
    assert env_policy.algorithms == ("HS256",) and env_policy.default_deployments is None
    assert env_policy.store_path.name == "tokens.sqlite3"


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"secret_env": "GTL_JWT"}, "needs issuer"),
        ({"issuer": ISSUER}, "accepts no algorithm"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "algorithms": ["none"]}, "never accepted"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "algorithms": ["RS256"]}, "no public_key_file"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "leeway": 3600}, "leeway"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "leeway": "soon"}, "leeway must be"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "max_lifetime": 10**400}, "max_lifetime must be"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "refresh": float("nan")}, "refresh must be"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "required_claims": "tenant"}, "list"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "audiance": "x"}, "did you mean 'audience'"),
        ({"issuer": ISSUER, "secret_env": "UNSET_VARIABLE"}, "$UNSET_VARIABLE is not set"),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "secret_file": "s"}, "choose one"),
        ({"issuer": ISSUER, "public_key_file": "a.pem", "jwks_file": "b.json"}, "choose one"),
        ({"issuer": ISSUER, "public_key_file": "missing.pem"}, "no such file"),
    ],
)
def test_configuration_mistakes(tmp_path, table, words):
    with pytest.raises(ConfigurationError) as caught:
        TokenPolicy.from_table(table, tmp_path, {"GTL_JWT": SECRET})
    assert words in str(caught.value)


def test_weak_or_misplaced_secrets_are_refused(tmp_path, rsa_key):
    with pytest.raises(ConfigurationError, match="shorter than 32 bytes"):
        TokenPolicy.from_table({"issuer": ISSUER, "secret_env": "GTL_JWT"}, tmp_path, {"GTL_JWT": "short"})
    pem = public_pem(rsa_key).decode()
    with pytest.raises(ConfigurationError, match="PEM or SSH key"):
        TokenPolicy.from_table({"issuer": ISSUER, "secret_env": "GTL_JWT"}, tmp_path, {"GTL_JWT": pem})
    shared = tmp_path / "shared"
    shared.write_text(SECRET)
    shared.chmod(0o644)
    if os.name == "posix":
        with pytest.raises(ConfigurationError, match="chmod 600"):
            TokenPolicy.from_table({"issuer": ISSUER, "secret_file": "shared"}, tmp_path, {})


def test_key_files_that_are_refused(tmp_path, rsa_key):
    private = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "private.pem").write_bytes(private)
    with pytest.raises(ConfigurationError, match="private key"):
        TokenPolicy.from_table({"issuer": ISSUER, "public_key_file": "private.pem"}, tmp_path, {})
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "weak.pem").write_bytes(public_pem(weak))
    with pytest.raises(ConfigurationError, match="2048"):
        TokenPolicy.from_table({"issuer": ISSUER, "public_key_file": "weak.pem"}, tmp_path, {})
    p384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.pem").write_bytes(public_pem(p384))
    with pytest.raises(ConfigurationError, match="P-256"):
        TokenPolicy.from_table({"issuer": ISSUER, "public_key_file": "p384.pem"}, tmp_path, {})
    jwk = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)  # the private key as a JWK
    (tmp_path / "leaky.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k"}]}))
    with pytest.raises(ConfigurationError, match="private") as caught:
        TokenPolicy.from_table({"issuer": ISSUER, "jwks_file": "leaky.json"}, tmp_path, {})
    assert jwk["d"] not in str(caught.value)
    (tmp_path / "oct.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": SECRET, "kid": "s"}]}))
    with pytest.raises(ConfigurationError, match="symmetric"):
        TokenPolicy.from_table({"issuer": ISSUER, "jwks_file": "oct.json"}, tmp_path, {})
    (tmp_path / "nokid.json").write_text(
        json.dumps({"keys": [RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)]})
    )
    with pytest.raises(ConfigurationError, match="kid"):
        TokenPolicy.from_table({"issuer": ISSUER, "jwks_file": "nokid.json"}, tmp_path, {})
    (tmp_path / "none.json").write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "e"}]}))
    with pytest.raises(ConfigurationError, match="no RS256 or ES256"):
        TokenPolicy.from_table({"issuer": ISSUER, "jwks_file": "none.json"}, tmp_path, {})


# ----------------------------------------------------------------------------------------------
# canaries: no secret, no token in a message, a repr or a log


def test_no_secret_or_token_reaches_a_message_a_repr_or_a_log(tmp_path, caplog, rsa_key):
    caplog.set_level(logging.DEBUG, logger="gtl_nb")
    policy = hs_policy()
    auth = authenticator(policy)
    good = hs(claims())
    tokens = [
        good,
        hs(claims(), headers={"jku": "https://attacker.test"}),
        hs(claims(aud="other")),
        hs(claims(sub="admin"), secret=SECRET[::-1]),
        hs(claims(exp=int(NOW) - 3600)),
        hs(claims(scopes="chat:write")),
        good[:-4] + "AAAA",
        jwt.encode(claims(), rsa_key, algorithm="RS256"),
        "x" * 9000,
    ]
    texts = [repr(policy), repr(auth), str(policy)]
    for token in tokens:
        try:
            context = auth(token)
        except TokenRefusedError as exc:
            texts += [str(exc), repr(exc), exc.message, str(exc.to_event("s"))]
        else:
            texts += [repr(context), str(context)]
    for table, environ in [
        ({"issuer": ISSUER, "secret": SECRET}, {}),
        ({"issuer": ISSUER, "secret_env": SECRET}, {}),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT"}, {"GTL_JWT": SECRET[:20]}),
        ({"issuer": ISSUER, "secret_file": SECRET}, {}),
        ({"issuer": ISSUER, "secret_env": "GTL_JWT", "algorithms": ["RS256"]}, {"GTL_JWT": SECRET}),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            TokenPolicy.from_table(table, tmp_path, environ)
        texts.append(str(caught.value))
    texts += [record.getMessage() for record in caplog.records]
    assert any("GhostToken refused" in record.getMessage() for record in caplog.records)
    assert any("GhostToken accepted" in record.getMessage() for record in caplog.records)
    for text in texts:
        assert SECRET not in text and SECRET[:20] not in text and SECRET[::-1] not in text
        assert "[redacted]" not in text  # nothing needed the log filter's help
        for token in tokens:
            assert token not in text and token.split(".")[-1] not in text


# ----------------------------------------------------------------------------------------------
# the command


@pytest.fixture
def gtl(tmp_path, monkeypatch):
    """``gtl`` with ``token`` registered and ``[gateway.jwt]`` known (until the lead wires both in)."""
    from gtl_nb import cli
    from gtl_nb.engine import config

    if "jwt" not in config.SECTION_SCHEMAS["gateway"]:
        monkeypatch.setitem(config.SECTION_SCHEMAS["gateway"], "jwt", config.Field((dict,), None, "GhostTokens"))
    original = cli._optional_subcommands

    def with_tokens(sub: Any) -> None:
        original(sub)
        if "token" not in sub.choices:
            token_cli.add_subcommands(sub)

    monkeypatch.setattr(cli, "_optional_subcommands", with_tokens)
    monkeypatch.setenv("GTL_TEST_TOKEN_SECRET", SECRET)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # never the user's own vault or stores
    path = tmp_path / "gtl.toml"
    path.write_text(
        '[gateway.jwt]\nissuer = "https://issuer.test"\nsecret_env = "GTL_TEST_TOKEN_SECRET"\n'
        'revocations = "tokens.sqlite3"\n',
        encoding="utf-8",
    )

    def run(*argv: str) -> int:
        return cli.main(["--config", str(path), *argv])

    run.config = path  # type: ignore[attr-defined]
    return run


def test_gtl_token_mint_list_revoke(gtl, capsys, tmp_path):
    argv = ["token", "mint", "--sub", "alice", "--scope", "chat:write", "--scope", "models:read", "--ttl", "8h"]
    assert gtl(*argv, "--provider-key", "openai=team-key", "--model", "gpt-4o*", "--tenant", "acme") == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and "this configuration has no [gateway.vault]" in err  # minted all the same
    token = out.strip()
    policy = TokenPolicy.from_table(
        {"issuer": ISSUER, "secret_env": "GTL_TEST_TOKEN_SECRET", "revocations": "tokens.sqlite3"},
        tmp_path,
        {"GTL_TEST_TOKEN_SECRET": SECRET},
    )
    with SqliteTokenStore(policy.store_path, refresh=0) as store:
        auth = TokenAuthenticator(policy, store)
        context = auth(token)
        assert (context.principal, context.tenant, dict(context.provider_keys)) == (
            "alice",
            "acme",
            {"openai": "team-key"},
        )

        assert gtl("token", "list") == 0
        listing = capsys.readouterr().out
        assert context.key_id in listing and "alice" in listing and "active" in listing and token not in listing
        head, line = listing.splitlines()
        assert head.index("SUBJECT") == line.index("alice")  # the columns line up under their heads
        assert gtl("token", "revoke", context.key_id) == 0
        assert context.key_id in capsys.readouterr().out
        assert refusal(auth, token).reason == "revoked"
        assert gtl("token", "list", "--json") == 0
        [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert row["state"] == "revoked" and row["scopes"] == ["chat:write", "models:read"]
        assert gtl("token", "revoke", "minted-elsewhere") == 0
        assert "max_lifetime" in capsys.readouterr().out
        assert store.is_revoked("minted-elsewhere")


def test_gtl_token_list_shows_an_expired_token_as_expired_for_a_week(gtl, capsys, monkeypatch):
    """Whoever looks for why a client's token stopped working finds it listed ``expired`` — not gone
    half a minute after its ``exp`` (revocations of it are forgotten then; the record is not)."""
    assert gtl("token", "mint", "--sub", "ann", "--scope", "models:read", "--ttl", "90s") == 0
    capsys.readouterr()
    later = time.time() + 3600
    monkeypatch.setattr(token_cli.time, "time", lambda: later)
    assert gtl("token", "list", "--json") == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["subject"], row["state"]) == ("ann", "expired")
    assert gtl("token", "revoke", row["jti"]) == 0  # nothing to revoke: it is refused already, and stays expired
    assert "nothing to revoke" in capsys.readouterr().out
    assert gtl("token", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "expired"
    monkeypatch.setattr(token_cli.time, "time", lambda: later + MINTED_KEPT_AFTER_EXPIRY)
    assert gtl("token", "list") == 0
    assert "no tokens minted here" in capsys.readouterr().out


@pytest.mark.parametrize(
    "where",
    [
        lambda config, action: ["--config", config, "token", action],  # before the command
        lambda config, action: ["token", "--config", config, action],  # after `token`
        lambda config, action: ["token", action, "--config", config],  # after the action, where a user adds it
    ],
    ids=["before-token", "after-token", "after-the-action"],
)
def test_token_commands_take_config_before_or_after_their_names(gtl, capsys, where):
    from gtl_nb import cli

    config = str(gtl.config)
    assert cli.main([*where(config, "mint"), "--sub", "ann", "--scope", "models:read"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.count(".") == 2  # a JWT, signed with this configuration's secret
    assert cli.main([*where(config, "list"), "--json"]) == 0
    assert [json.loads(line)["subject"] for line in capsys.readouterr().out.splitlines()] == ["ann"]


def test_revoking_an_id_close_to_a_minted_one_is_refused_as_a_typo(gtl, capsys):
    assert gtl("token", "mint", "--sub", "ann", "--scope", "models:read") == 0
    capsys.readouterr()
    assert gtl("token", "list", "--json") == 0
    jti = json.loads(capsys.readouterr().out)["jti"]
    typo = jti[:10] + ("0" if jti[10] != "0" else "1") + jti[11:]  # one character wrong
    for typed in (typo, jti[:8]):  # a slip, and an id cut short
        assert gtl("token", "revoke", typed) == 2
        err = capsys.readouterr().err
        assert f"did you mean {jti}?" in err and "Nothing was revoked" in err and "--minted-elsewhere" in err
    assert gtl("token", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "active"  # the typo revoked nothing
    assert gtl("token", "revoke", typo, "--minted-elsewhere") == 0  # the operator insists: as typed
    assert "not minted here" in capsys.readouterr().out
    assert gtl("token", "revoke", "someone-elses-token-7") == 0  # nothing close: revoked as before


def test_minting_a_chat_token_that_may_call_nothing_is_warned_of(gtl, capsys):
    assert gtl("token", "mint", "--sub", "ann", "--scope", "chat:write") == 0  # no provider key, no defaults
    captured = capsys.readouterr()
    assert captured.out.count(".") == 2 and "may call no deployment" in captured.err
    assert gtl("token", "mint", "--sub", "ann", "--scope", "usage:read") == 0  # it calls nothing: nothing to say
    assert capsys.readouterr().err == ""


def test_listing_and_revoking_need_no_signing_secret(gtl, capsys, monkeypatch):
    """During an incident the operator revoking a token may not hold the secret that mints them."""
    assert gtl("token", "mint", "--sub", "ann", "--scope", "chat:write") == 0
    token = capsys.readouterr().out.strip()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    monkeypatch.delenv("GTL_TEST_TOKEN_SECRET")
    assert gtl("token", "list") == 0 and jti in capsys.readouterr().out
    assert gtl("token", "revoke", jti) == 0 and f"revoked {jti}" in capsys.readouterr().out
    assert gtl("token", "revoke", jti) == 0 and f"{jti} was already revoked" in capsys.readouterr().out
    assert gtl("token", "mint", "--sub", "ann", "--scope", "chat:write") == 2  # minting still needs it
    assert "GTL_TEST_TOKEN_SECRET is not set" in capsys.readouterr().err
    with SqliteTokenStore(gtl.config.parent / "tokens.sqlite3") as store:
        assert store.is_revoked(jti)


def test_gtl_token_mistakes(gtl, capsys):
    assert gtl("token", "mint", "--sub", "a", "--scope", "chat:wirte") == 2
    assert "did you mean 'chat:write'" in capsys.readouterr().err
    assert gtl("token", "mint", "--sub", "a", "--scope", "chat:write", "--ttl", "soon") == 2
    assert "--ttl" in capsys.readouterr().err
    leaked = "sk-" + "CANARYKEY" * 4
    assert gtl("token", "mint", "--sub", "a", "--scope", "chat:write", "--provider-key", f"openai={leaked}") == 2
    out, err = capsys.readouterr()
    assert "looks like a key" in err and leaked not in err and out == ""
    assert gtl("token", "mint", "--sub", "a", "--scope", "chat:write", "--ttl", "90d") == 2
    assert "max_lifetime" in capsys.readouterr().err
    assert gtl("token") == 2


def test_a_token_for_a_deployment_the_configuration_lacks_is_not_minted(gtl, capsys):
    """A mistyped --deployment (or --provider-key deployment) minted a token refused every time, with
    no word; the configuration names its deployments, so the mint refuses one it does not have."""
    gtl.config.write_text(
        gtl.config.read_text(encoding="utf-8") + 'default_deployments = ["*"]\n'
        '[providers.primary]\ntype = "openai"\napi_key = "sim-key"\nbase_url = "http://127.0.0.1:9/v1"\n',
        encoding="utf-8",
    )
    assert gtl("token", "mint", "--sub", "a", "--scope", "chat:write", "--deployment", "primray") == 2
    out, err = capsys.readouterr()
    assert out == "" and "no deployment 'primray'" in err and "did you mean 'primary'?" in err
    assert gtl("token", "mint", "--sub", "a", "--scope", "chat:write", "--provider-key", "nosuch=team-key") == 2
    assert "no deployment 'nosuch'" in capsys.readouterr().err
    assert gtl("token", "mint", "--sub", "a", "--scope", "chat:write", "--deployment", "primary") == 0
    assert capsys.readouterr().out.count(".") == 2  # the token


def test_gtl_token_without_a_jwt_table(tmp_path, monkeypatch, capsys, gtl):
    from gtl_nb import cli

    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    assert cli.main(["--config", str(empty), "token", "list"]) == 2
    assert f"[gateway.jwt] table in the configuration; {empty} has none" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # no file named, none in the user's folder
    assert cli.main(["token", "list"]) == 2
    assert "no configuration file was found: name the gateway's with --config" in capsys.readouterr().err


def test_parse_duration():
    assert [token_cli.parse_duration(text) for text in ("90s", "30m", "8h", "2d", "1w", "1.5h")] == [
        90,
        1800,
        28800,
        172800,
        604800,
        5400,
    ]
    for text in ("", "h", "-1h", "0", "nanh", "infh", "8 hours"):
        with pytest.raises(ConfigurationError):
            token_cli.parse_duration(text)
    with pytest.raises(ConfigurationError, match="give its unit: 8s, 8m, 8h, 8d or 8w"):
        token_cli.parse_duration("8")  # hours or seconds? never guessed


def test_the_operators_log_line_says_why_a_token_was_refused_and_never_holds_it(caplog):
    from gtl_nb.gateway.sessions import authenticated_or_logged

    revocations = MemoryRevocationList()
    auth = authenticator(revocations=revocations)
    revocations.revoke("jti-1", NOW + 7200)
    expired = hs(claims(jti="jti-2", iat=int(NOW) - 7200, exp=int(NOW) - 3600))
    for token in (hs(claims()), expired):
        with caplog.at_level("INFO", logger="gtl_nb"), pytest.raises(TokenRefusedError) as refused:
            authenticated_or_logged(auth, token, "127.0.0.1:5000")
        assert "[" not in refused.value.message  # the client hears only its message
    lines = [record.getMessage() for record in caplog.records if "refused client" in record.getMessage()]
    assert len(lines) == 2 and all("127.0.0.1:5000" in line for line in lines)
    assert len([record for record in caplog.records if "refused" in record.getMessage()]) == 2  # one line each
    assert "[revoked (sub='alice', jti='jti-1')]" in lines[0]
    assert "[expired" in lines[1]
    assert not any(token_part in caplog.text for token_part in hs(claims()).split(".") + expired.split("."))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "other-service"}, "wrong-audience"),
        ({"iss": "https://evil.test"}, "wrong-issuer"),
        ({"aud": 7}, "bad-claim (aud)"),
        ({"exp": "tomorrow"}, "bad-claim (exp)"),
    ],
)
def test_a_verified_token_for_another_audience_or_issuer_is_logged_with_its_sub_and_jti(changes, reason, caplog):
    """docs/tokens.md: the reason word "with sub and jti once the signature has verified" — and these
    signatures did: an operator asked why a token does not work must see whose token hit this gateway.
    The client still hears the one generic message."""
    from gtl_nb.gateway.sessions import authenticated_or_logged

    token = hs(claims(sub="eve", jti="jti-wrong-place", **changes))
    with caplog.at_level("INFO", logger="gtl_nb"), pytest.raises(TokenRefusedError) as refused:
        authenticated_or_logged(authenticator(), token, "127.0.0.1:5000")
    assert refused.value.message == REFUSED and "eve" not in refused.value.message
    (line,) = [record.getMessage() for record in caplog.records if "refused client" in record.getMessage()]
    assert f"[{reason} (sub='eve', jti='jti-wrong-place')]" in line, line


def test_a_token_whose_signature_fails_is_logged_without_the_claims_it_carries(caplog):
    from gtl_nb.gateway.sessions import authenticated_or_logged

    forged = hs(claims(sub="mallory-claimed", aud="other-service"), secret="another-secret-of-32-bytes-or-more!")
    with caplog.at_level("INFO", logger="gtl_nb"), pytest.raises(TokenRefusedError):
        authenticated_or_logged(authenticator(), forged, "127.0.0.1:5000")
    assert "[bad-signature]" in caplog.text and "mallory-claimed" not in caplog.text


def test_gtl_token_mint_warns_of_a_provider_key_the_vault_does_not_hold(gtl, capsys, tmp_path, monkeypatch):
    from gtl_nb.gateway.vault import MasterKey, Vault, generate_master_key

    master = generate_master_key()
    monkeypatch.setenv("GTL_TEST_MINT_VAULT_KEY", master)
    Vault(tmp_path / "vault.json", MasterKey.from_text(master, "test")).add("team-a", "sk-test-secret-a", "openai")
    with open(gtl.config, "a", encoding="utf-8") as config:
        config.write('\n[gateway.vault]\npath = "vault.json"\nmaster_key_env = "GTL_TEST_MINT_VAULT_KEY"\n')
    argv = ["token", "mint", "--sub", "alice", "--scope", "chat:write", "--ttl", "1h"]
    assert gtl(*argv, "--provider-key", "openai=team-a") == 0
    assert capsys.readouterr().err == ""  # held, and for that deployment
    assert gtl(*argv, "--provider-key", "openai=team-b", "--provider-key", "azure=team-a") == 0
    out, err = capsys.readouterr()
    assert out.count(".") == 2  # minted all the same (the vault may change before it is used)
    assert "--provider-key openai=team-b: the vault" in err and "holds no key 'team-b'" in err
    assert "--provider-key azure=team-a: key 'team-a'" in err and "is for deployment 'openai'" in err
    assert "sk-test-secret-a" not in out + err
    monkeypatch.delenv("GTL_TEST_MINT_VAULT_KEY")  # the vault cannot be opened here: nothing to say
    assert gtl(*argv, "--provider-key", "openai=team-b") == 0
    assert capsys.readouterr().err == ""


def test_gtl_token_revoke_with_the_shared_list_away_says_the_gateways_still_accept_it(gtl, capsys, tmp_path):
    """Redis refuses the connection: one line says the shared list cannot be written and why, names the
    store without its password, says this machine's store has the revocation and the gateways do not
    (never an INTERNAL error, as for a bug), and the status is 1."""
    import socket

    from gtl_nb.gateway.tokens import SqliteTokenStore

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    gtl.config.write_text(
        '[gateway.jwt]\nissuer = "https://issuer.test"\nsecret_env = "GTL_TEST_TOKEN_SECRET"\n'
        f'revocations = "redis://:canary-pw-5e0a@127.0.0.1:{dead}/0"\n',
        encoding="utf-8",
    )
    assert gtl("token", "revoke", "jti-away", "--minted-elsewhere") == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(
        f"gtl: error: the shared revocation list cannot be written: Redis at redis://:***@127.0.0.1:{dead}/0 is "
        "unreachable (revoking a token): "
    ), err
    assert "INTERNAL" not in err and "canary-pw" not in err and ".." not in err
    assert "jti-away is revoked in this machine's token store (" in err and "only: the gateways still accept it" in err
    assert "run gtl token revoke jti-away again once the shared list can be written" in err
    stores = list(tmp_path.rglob("tokens.sqlite3"))
    assert len(stores) == 1 and str(stores[0]) in err  # the store it names ...
    with SqliteTokenStore(stores[0]) as store:
        assert "jti-away" in store.revoked()  # ... did take it


def test_gtl_token_list_says_when_a_revocation_never_reached_the_shared_list(gtl, capsys, tmp_path):
    """``revoke`` failed to write the replicas' list (Redis away): the token is revoked on this machine
    only, the gateways still accept it, and ``list`` must not show it "revoked" as if they did not."""
    import importlib.util

    from tests.redis_server import RedisServer, find_redis_server

    if importlib.util.find_spec("redis") is None or find_redis_server() is None:
        pytest.skip("redis-server or redis-py is not installed")
    server = RedisServer.start(tmp_path / "redis", password="canary-pw-3c1d")
    try:
        gtl.config.write_text(
            gtl.config.read_text(encoding="utf-8").replace(
                'revocations = "tokens.sqlite3"', f'revocations = "{server.url}"'
            ),
            encoding="utf-8",
        )
        assert gtl("token", "mint", "--sub", "ann", "--scope", "models:read") == 0
        capsys.readouterr()
        assert gtl("token", "list", "--json") == 0
        jti = json.loads(capsys.readouterr().out)["jti"]
        server.freeze()
        try:
            assert gtl("token", "revoke", jti) == 1
            assert "still accept it" in capsys.readouterr().err
            assert gtl("token", "list", "--json") == 0
            seen = capsys.readouterr()
            assert json.loads(seen.out)["state"] == "revoked"  # this machine's record, and it says so
            assert "cannot read the shared revocation list" in seen.err and "canary-pw" not in seen.err
        finally:
            server.thaw()
        assert gtl("token", "list", "--json") == 0
        seen = capsys.readouterr()
        assert json.loads(seen.out)["state"] == "revoked here only", seen
        assert f"run gtl token revoke {jti} again" in seen.err
        assert gtl("token", "list") == 0
        head, line = capsys.readouterr().out.splitlines()
        assert head.index("EXPIRES") == line.index("revoked here only") + len("revoked here only") + 2  # aligned
        assert gtl("token", "revoke", jti) == 0
        said = capsys.readouterr().out  # what the second revoke did, not "already revoked" alone
        assert f"{jti} was already revoked here; the shared revocation list has it now too" in said
        assert gtl("token", "list", "--json") == 0
        assert json.loads(capsys.readouterr().out)["state"] == "revoked"
    finally:
        server.stop()
