"""Minting development tokens: ``mint_token`` signs with the policy's HS256 secret (or a bare secret,
or a private key) and records what it minted in the registry, never the token itself."""

from __future__ import annotations

import datetime
import difflib
import math
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gtl_nb.engine.ratelimit import TENANT_PREFIX
from gtl_nb.gateway.scopes import SCOPE_NAMES
from gtl_nb.gateway.tokens.claims import DEFAULT_AUDIENCE, DEV_ISSUER, MAX_NAME, MAX_TIME, is_name
from gtl_nb.gateway.tokens.keys import PrivateKey, check_secret
from gtl_nb.gateway.tokens.policy import TokenPolicy
from gtl_nb.gateway.tokens.store import MintedToken, TokenRegistry
from gtl_nb.log import redact
from gtl_nb.protocol.errors import ConfigurationError


def mint_token(
    signer: TokenPolicy | str | bytes | PrivateKey,
    *,
    subject: str,
    scopes: Iterable[str],
    lifetime: float | datetime.timedelta,
    provider_keys: Mapping[str, str] | None = None,
    allowed_models: Iterable[str] | None = None,
    allowed_deployments: Iterable[str] | None = None,
    tenant: str | None = None,
    kid: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    registry: TokenRegistry | None = None,
    now: float | None = None,
) -> str:
    """A signed GhostToken for ``subject`` valid for ``lifetime`` seconds from ``now``.

    ``signer`` is a ``TokenPolicy`` (its HS256 secret, issuer and audience; ``lifetime`` at most its
    ``max_lifetime``), a bare HS256 secret (issuer ``DEV_ISSUER`` unless given), or an RSA/P-256
    private key (RS256/ES256; pass the ``kid`` a JWKS knows it by). Scopes must be names from
    ``SCOPES``. When ``registry`` is given it records the token's id, subject, scopes and times —
    never the token.
    """
    seconds = lifetime.total_seconds() if isinstance(lifetime, datetime.timedelta) else lifetime
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_TIME:
        raise ConfigurationError("a token's lifetime must be a positive number of seconds")
    key, algorithm, default_issuer, default_audience = _signing_key(signer, seconds)
    scope_list = sorted(set(scopes))
    models = None if allowed_models is None else sorted(set(allowed_models))
    deployments = None if allowed_deployments is None else sorted(set(allowed_deployments))
    unknown = [scope for scope in scope_list if scope not in SCOPE_NAMES]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(SCOPE_NAMES), n=1, cutoff=0.6)
        raise ConfigurationError(
            f"unknown scope {unknown[0]!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (scopes: {', '.join(sorted(SCOPE_NAMES))})"
        )
    names = [subject, tenant, kid, *(provider_keys or {}).keys(), *(provider_keys or {}).values()]
    names += [*(models or ()), *(deployments or ())]
    if not all(name is None or is_name(name) for name in names):
        raise ConfigurationError(
            "a token's subject, tenant, kid, provider keys, models and deployments must be names of 1 to "
            f"{MAX_NAME} printable characters"
        )
    if subject.startswith(TENANT_PREFIX):
        raise ConfigurationError(
            f"a token's subject may not start with {TENANT_PREFIX!r}: a tenant's shared budget is counted under "
            "that name, and the subject's requests would count as the tenant's"
        )
    _refuse_useless(provider_keys, deployments, signer.default_deployments if isinstance(signer, TokenPolicy) else None)
    issued = math.floor(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer or default_issuer,
        "sub": subject,
        "aud": audience or default_audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + math.ceil(seconds),
        "jti": secrets.token_hex(16),  # hex: never starts with "-", which `gtl token revoke` would take for an option
        "scopes": scope_list,
    }
    optional = {
        "tenant": tenant,
        "provider_keys": dict(provider_keys) if provider_keys is not None else None,
        "allowed_models": models,
        "allowed_deployments": deployments,
    }
    claims.update({name: value for name, value in optional.items() if value is not None})
    token = jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)
    if isinstance(signer, TokenPolicy) and len(token) > signer.max_token_bytes:
        raise ConfigurationError(
            f"the token would be {len(token)} bytes, more than [gateway.jwt] max_token_bytes ({signer.max_token_bytes})"
        )
    if registry is not None:
        registry.record(MintedToken(claims["jti"], subject, tuple(scope_list), issued, claims["exp"], tenant))
    return token


def _refuse_useless(
    provider_keys: Mapping[str, str] | None, deployments: list[str] | None, defaults: frozenset[str] | None
) -> None:
    """Refuse a token whose allow-lists leave it no deployment at all (it would be refused every time).

    A token may use its provider keys' deployments, else the policy's default ones (``defaults``;
    ``None``: every one), and ``allowed_deployments`` narrows that set — it never adds to it."""
    if deployments is None:
        return
    if provider_keys is not None:
        usable, source = set(provider_keys), "its --provider-key deployments"
    elif defaults is not None:
        usable, source = set(defaults), "[gateway.jwt] default_deployments"
    else:
        return
    if not usable & set(deployments):
        names = ", ".join(sorted(usable)) or "none"
        fix = (
            "give each a --provider-key, or leave --deployment out"
            if usable
            else "give --provider-key DEPLOYMENT=KEY_NAME, or list them in [gateway.jwt] default_deployments"
        )
        raise ConfigurationError(
            f"the token could use no deployment: --deployment only narrows {source} ({names}), and "
            f"none of {', '.join(deployments)} is among them; {fix}"
        )


def _spoken(seconds: float) -> str:
    """A lifetime as a person reads it: ``60 days``, ``8 h``, ``90 s``."""
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = f"{seconds / size:.4g}"
            return f"{count} {unit}{'s' if unit == 'day' and count != '1' else ''}"
    return f"{seconds:g} s"


def _exact(seconds: float) -> str:
    """Seconds as written in a configuration: ``2592000``, never ``2.592e+06``."""
    return f"{seconds:.0f}" if seconds == int(seconds) else f"{seconds:g}"


def _signing_key(signer: Any, seconds: float) -> tuple[Any, str, str, str]:
    """The key, algorithm, issuer and audience ``mint_token`` signs with."""
    if isinstance(signer, TokenPolicy):
        if signer.secret is None or "HS256" not in signer.algorithms:
            raise ConfigurationError(
                "minting signs with the HS256 secret, and this gateway accepts no HS256 token; tokens for "
                f"{signer.issuer} come from that issuer"
            )
        if seconds > signer.max_lifetime:
            raise ConfigurationError(
                f"a lifetime of {_spoken(seconds)} is longer than [gateway.jwt] max_lifetime "
                f"({_spoken(signer.max_lifetime)}, {_exact(signer.max_lifetime)} s)"
            )
        return signer.secret, "HS256", signer.issuer, signer.audience
    if isinstance(signer, (str, bytes)):
        secret = signer.encode() if isinstance(signer, str) else signer
        check_secret(secret, "the secret given to mint_token")
        return secret, "HS256", DEV_ISSUER, DEFAULT_AUDIENCE
    if isinstance(signer, rsa.RSAPrivateKey):
        return signer, "RS256", DEV_ISSUER, DEFAULT_AUDIENCE
    if isinstance(signer, ec.EllipticCurvePrivateKey) and isinstance(signer.curve, ec.SECP256R1):
        return signer, "ES256", DEV_ISSUER, DEFAULT_AUDIENCE
    raise ConfigurationError("mint_token signs with a TokenPolicy, an HS256 secret, an RSA or a P-256 private key")


def looks_like_a_key(value: str) -> bool:
    """Whether ``value`` looks like a credential itself (the log filter's patterns) rather than a key's name."""
    return redact(value) != value
