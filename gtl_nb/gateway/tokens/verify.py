"""Verification: ``TokenAuthenticator`` turns a token into the ``RequestContext`` its connection runs
under, or refuses it with ``TokenRefusedError``.

The steps run in order, each refusing before the next costs anything: size (before any parsing) →
shape (three base64url segments) → header (``alg`` on the allow-list, no ``jku``/``x5u``/``jwk``/``x5c``,
no ``crit``/``b64``, a known ``kid``) → signature with a key whose type matches the algorithm → claims
(required, typed, issuer, audience, time window, lifetime) → revocation.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import jwt

from gtl_nb.client import CONNECT_READS
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ratelimit import TENANT_PREFIX
from gtl_nb.gateway.refusals import TokenUncheckable
from gtl_nb.gateway.tokens.claims import MAX_ITEMS, MAX_NAME, is_name, is_time, json_object
from gtl_nb.gateway.tokens.keys import KeyRing, key_fingerprint
from gtl_nb.gateway.tokens.policy import TokenPolicy
from gtl_nb.gateway.tokens.store import RevocationList
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import AuthenticationError, GTLError

log = get_logger("gateway.tokens")

FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
"""Header parameters that name or carry a key: the gateway never lets a token choose its own key."""
_ACCEPTED_TYPES = ("jwt", "at+jwt", "application/at+jwt")
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


class TokenRefusedError(AuthenticationError):
    """A GhostToken the gateway refused. ``message`` is what the client may hear; ``reason`` is a fixed
    word for the server's log and the tests (never a value from the token)."""

    def __init__(self, message: str, reason: str, *, retryable: bool = False, detail: str = "") -> None:
        super().__init__(message, retryable=retryable)
        self.reason = reason
        self.detail = detail  # for the operator's log line (the subject and token id when known)

    @property
    def for_the_log(self) -> str:
        """Why, for the operator: the fixed reason word and its detail."""
        return f"{self.reason}{self.detail}"

    def __repr__(self) -> str:
        return f"TokenRefusedError(reason={self.reason!r})"


class TokenUncheckedError(TokenRefusedError, TokenUncheckable):
    """The revocation list cannot be read, so the token cannot be checked: refused (fail closed) as the
    gateway's retryable trouble — ``PROVIDER_UNAVAILABLE``, HTTP ``503`` — never as bad credentials."""

    def __repr__(self) -> str:
        return f"TokenUncheckedError(reason={self.reason!r})"


REFUSAL_REASONS = (
    *("missing", "malformed", "oversized", "malformed-claims", "bad-signature", "alg-none", "alg-not-accepted"),
    *("key-in-header", "critical-header", "wrong-type", "alg-key-mismatch", "missing-kid", "unknown-kid"),
    *("missing-claim", "wrong-issuer", "bad-claim", "wrong-audience", "expired", "not-yet-valid"),
    *("lifetime-too-long", "bad-scopes", "revoked", "key-retired", "store-unavailable"),
)
"""Every ``TokenRefusedError.reason``: the fixed words of the operator's log line and of the
``reason`` label of ``gtl_token_refusals_total`` (``gateway.metrics``)."""
REFUSED = "the gateway refused the token; ask the gateway's administrator for a valid GhostToken"
"""The one message for every refusal that could teach an attacker something (signature, claims, keys)."""
EXPIRED = "the GhostToken has expired; get a new one"
MISSING = (  # read by SDK, curl and gtl_nb users alike, and logged (worded so the log's redaction keeps it whole)
    "the gateway needs a GhostToken, the token its administrator gave you: send it in the Authorization "
    "header as a bearer token (an SDK takes it as its api_key; x-api-key works too), or give it to "
    f"gtl_nb.connect as its token argument {CONNECT_READS}"
)
_WHY_REQUIRED = {
    "iat": "when it was issued, which bounds its lifetime",
    "jti": "its id, which revocation and the ledger use",
}


def lacking_claims(missing: list[str]) -> str:
    """What the caller of a correctly signed token that lacks required claims hears: which ones (said
    only after the signature verified, so it tells a forger nothing)."""
    names = ", ".join(missing)
    why = "; ".join(f"{name}: {_WHY_REQUIRED[name]}" for name in missing if name in _WHY_REQUIRED)
    return (
        f"the GhostToken lacks the claim{'s' if len(missing) > 1 else ''} {names}, which this gateway requires"
        f"{f' ({why})' if why else ''}; ask the gateway's administrator for a token that has "
        f"{'them' if len(missing) > 1 else 'it'}"
    )


VERIFIED_CACHE = 4096
"""Tokens remembered as verified (the least recently used are forgotten first)."""
VERIFIED_FOR = 60.0
"""Seconds a verified token is remembered (never past its ``exp``)."""


class _Refusal(Exception):
    """Internal: why a token was refused; turned into ``TokenRefusedError`` at the boundary."""

    def __init__(self, reason: str, message: str = REFUSED, *, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.message, self.detail = reason, message, detail


class TokenAuthenticator:
    """The gateway's ``Authenticate`` for GhostTokens: ``authenticator(token) -> RequestContext``.

    ``revocations`` is checked for every token that passed everything else; ``clock`` (Unix
    seconds, ``time.time`` by default) judges ``exp``, ``nbf`` and ``iat``, and paces the JWKS re-reads.

    A token that passed is remembered (up to ``VERIFIED_CACHE`` of them, each for at most
    ``VERIFIED_FOR`` seconds and never past its ``exp``): an HTTP client sends its token with every
    request, and checking its signature again each time was 5 % of the gateway's CPU. The revocation
    list is still asked on every call; a key removed from the JWKS stops a remembered token within
    ``VERIFIED_FOR`` seconds.
    """

    def __init__(
        self, policy: TokenPolicy, revocations: RevocationList, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy
        self.revocations = revocations
        self.clock = clock
        self._keys = KeyRing(policy, clock)
        self._jws = jwt.PyJWS(algorithms=list(policy.algorithms))
        self._verified: OrderedDict[str, tuple[RequestContext, float]] = OrderedDict()
        # (a secret kept in the file while HS256 left ``algorithms`` verifies nothing any more)
        hs256 = policy.secret and "HS256" in policy.algorithms
        self._secret_print = key_fingerprint("HS256", policy.secret) if hs256 else None

    def __repr__(self) -> str:
        return f"TokenAuthenticator(issuer={self.policy.issuer!r}, algorithms={list(self.policy.algorithms)})"

    def __call__(self, token: str | None) -> RequestContext:
        """The context of the client that offered ``token``; ``TokenRefusedError`` when refused."""
        now = self.clock()
        remembered = self._verified.get(token) if isinstance(token, str) else None
        if remembered is not None and now < remembered[1] and self._trusts(remembered[0].verified_by):
            context = remembered[0]
        else:  # (a remembered token whose key was retired since is checked again, and refused)
            try:
                claims, verified_by = self._verify(token)
                context = self._context(claims, verified_by)
            except _Refusal as refusal:
                # (debug: the gateway logs each refusal once, with this reason — sessions.authenticated_or_logged)
                log.debug("GhostToken refused: %s%s", refusal.reason, refusal.detail)
                raise TokenRefusedError(refusal.message, refusal.reason, detail=refusal.detail) from None
            self._remember(token, context, now)
        if self._revoked(context.key_id or ""):
            log.debug("GhostToken refused: revoked (sub=%r, jti=%r)", context.principal, context.key_id)
            raise TokenRefusedError(REFUSED, "revoked", detail=f" (sub={context.principal!r}, jti={context.key_id!r})")
        log.debug(
            "GhostToken accepted: sub=%r, jti=%r, scopes=%s", context.principal, context.key_id, sorted(context.scopes)
        )
        return context

    def _remember(self, token: Any, context: RequestContext, now: float) -> None:
        until = now + VERIFIED_FOR
        if context.expires_at is not None:
            until = min(until, context.expires_at)
        if not isinstance(token, str) or until <= now:
            return
        self._verified[token] = (context, until)
        self._verified.move_to_end(token)
        while len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)

    def recheck(self, context: RequestContext) -> RequestContext:
        """The context an open connection's next completion or query runs under: ``context``, with its
        deployments narrowed to what this policy's ``default_deployments`` still allow — or refused,
        when its token has expired or been revoked since its connection was accepted, or its verifying
        key is not trusted (any more).

        A connection authenticates once, but may live for hours: each completion and query it starts
        asks again, from memory (the clock, the keys, the revocation set and the policy), so ``gtl
        token revoke``, a secret replaced by a reload, a key removed from the JWKS file and a
        deployment taken out of ``default_deployments`` by a reload reach open connections. (A reload
        that adds deployments reaches new connections only: narrowing is all an open one can learn,
        without its token's claims.)
        """
        if context.expires_at is not None and self.clock() > context.expires_at + self.policy.leeway:
            log.info("GhostToken refused on an open connection: expired (sub=%r)", context.principal)
            raise TokenRefusedError(EXPIRED, "expired")
        if not self._trusts(context.verified_by):
            log.info(
                "GhostToken refused on an open connection: its signing key is no longer trusted (sub=%r, jti=%r)",
                context.principal,
                context.key_id,
            )
            raise TokenRefusedError(REFUSED, "key-retired")
        if context.key_id and self._revoked(context.key_id):
            log.info(
                "GhostToken refused on an open connection: revoked (sub=%r, jti=%r)",
                context.principal,
                context.key_id,
            )
            raise TokenRefusedError(REFUSED, "revoked")
        return self._narrowed(context)

    def _narrowed(self, context: RequestContext) -> RequestContext:
        """``context`` within this policy's ``default_deployments`` when its token uses them (it names
        no ``provider_keys``: a token's own keys choose its deployments, not the policy)."""
        defaults = self.policy.default_deployments
        if defaults is None or context.provider_keys:
            return context
        current = context.allowed_deployments
        usable = defaults if current is None else current & defaults
        return context if usable == current else dataclasses.replace(context, allowed_deployments=usable)

    def _trusts(self, verified_by: str | None) -> bool:
        """Whether the key ``verified_by`` names is one this authenticator verifies with now (``None``:
        a context no GhostToken key verified, such as a development gateway's, is not judged here)."""
        if verified_by is None or verified_by == self._secret_print:
            return True
        trusted = self._keys.keys()  # (a KeyRing's current keys, the JWKS file re-read when due)
        accepted = self.policy.algorithms
        return any(key.fingerprint == verified_by and key.algorithm in accepted for key in trusted)

    def _revoked(self, jti: str) -> bool:
        try:
            return self.revocations.is_revoked(jti)
        except GTLError as exc:  # fail closed, but say it may pass later
            log.error("cannot check the revocation list: %s", exc)
            raise TokenUncheckedError(
                "the gateway could not check the token, as its revocation list is unreachable; try again "
                "(another replica may answer)",
                "store-unavailable",
                retryable=True,
            ) from None

    # the steps, in order: each refuses before the next one costs anything

    def _verify(self, token: str | None) -> tuple[dict[str, Any], str]:
        """The token's claims and the fingerprint of the key that verified it."""
        if token is None or token == "":
            raise _Refusal("missing", MISSING)
        if not isinstance(token, str):
            raise _Refusal("malformed")
        limit = self.policy.max_token_bytes
        if len(token) > limit:  # before anything is decoded (for ASCII, characters are bytes)
            raise _Refusal("oversized", f"the token is longer than {limit} bytes; the gateway does not read it")
        # three unpadded base64url segments (RFC 7515 §7.1), checked before any is decoded
        if token.count(".") != 2 or not _BASE64URL.issuperset(token):
            raise _Refusal("malformed")
        header = self._header(token)
        key, verified_by = self._key(header)
        try:
            payload = self._jws.decode_complete(token, key=key, algorithms=[header["alg"]])["payload"]
        except Exception:  # PyJWT's messages are never passed on: one refusal for every signature problem
            raise _Refusal("bad-signature") from None
        claims = json_object(payload)
        if claims is None:
            raise _Refusal("malformed-claims")
        self._check_claims(claims)
        return claims, verified_by

    def _header(self, token: str) -> dict[str, Any]:
        try:
            raw = jwt.utils.base64url_decode(token.split(".", 1)[0])
        except Exception:
            raise _Refusal("malformed") from None
        header = json_object(raw)
        if header is None:
            raise _Refusal("malformed")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _Refusal("malformed")
        if alg.lower() == "none":
            raise _Refusal("alg-none")
        if alg not in self.policy.algorithms:
            raise _Refusal("alg-not-accepted")
        if any(name in header for name in FORBIDDEN_HEADERS):
            raise _Refusal("key-in-header")  # a token never chooses the key that verifies it
        if "crit" in header or "b64" in header:
            raise _Refusal("critical-header")  # no extension is understood, so none may be critical
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES):
            raise _Refusal("wrong-type")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_NAME):
            raise _Refusal("malformed")
        return header

    def _key(self, header: dict[str, Any]) -> tuple[Any, str]:
        """The verifying key for ``header`` and its fingerprint: its type always matches the algorithm
        (HS256: the secret bytes; RS256: an RSA public key; ES256: a P-256 public key), so no key serves
        two algorithms."""
        alg = header["alg"]
        if alg == "HS256":
            if self._secret_print is None:
                raise _Refusal("alg-key-mismatch")
            return self.policy.secret, self._secret_print
        keys = self._keys.keys()
        if any(key.kid is not None for key in keys):  # a key set: the kid chooses, and must be in it
            kid = header.get("kid")
            if kid is None:
                raise _Refusal("missing-kid")
            chosen = next((key for key in keys if key.kid == kid), None)
            if chosen is None:
                raise _Refusal("unknown-kid")
        else:  # one PEM key, which has no kid
            chosen = next((key for key in keys if key.algorithm == alg), None)
        if chosen is None or chosen.algorithm != alg:
            raise _Refusal("alg-key-mismatch")
        return chosen.key, chosen.fingerprint

    def _check_claims(self, claims: dict[str, Any]) -> None:
        policy = self.policy
        missing = sorted(name for name in policy.required_claims if claims.get(name) is None)
        if missing:  # the signature verified: naming the claims tells a forger nothing
            raise _Refusal("missing-claim", lacking_claims(missing), detail=f" ({', '.join(missing)})")
        for name in ("sub", "jti"):
            if not is_name(claims[name]):
                raise _Refusal("bad-claim", detail=f" ({name})")
        # the signature verified: the operator's log names whose token it is (a token sent to the wrong
        # gateway, or minted for another service, is one an operator gets asked about)
        who = f" (sub={claims['sub']!r}, jti={claims['jti']!r})"
        if claims["iss"] != policy.issuer:
            raise _Refusal("wrong-issuer", detail=who)
        audience = claims["aud"]
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            raise _Refusal("bad-claim", detail=f" (aud){who}")
        if policy.audience not in audiences:
            raise _Refusal("wrong-audience", detail=who)
        if claims["sub"].startswith(TENANT_PREFIX):  # the name a tenant's shared budget is counted under
            raise _Refusal("bad-claim", detail=f" (sub: {TENANT_PREFIX!r} names a tenant's budget)")
        times = {name: claims.get(name) for name in ("exp", "iat", "nbf")}
        for name, value in times.items():
            if value is not None and not is_time(value):
                raise _Refusal("bad-claim", detail=f" ({name}){who}")
        now, leeway = self.clock(), policy.leeway
        exp, iat, nbf = times["exp"], times["iat"], times["nbf"]
        if exp is not None and now > exp + leeway:
            raise _Refusal("expired", EXPIRED, detail=who)
        if (nbf is not None and now + leeway < nbf) or (iat is not None and now + leeway < iat):
            raise _Refusal("not-yet-valid", detail=who)
        if exp is not None and iat is not None and exp - iat > policy.max_lifetime:
            raise _Refusal("lifetime-too-long", detail=who)

    def _context(self, claims: dict[str, Any], verified_by: str | None = None) -> RequestContext:
        scopes = _string_list(claims.get("scopes"), "scopes")
        models = _string_list(claims.get("allowed_models"), "allowed_models")
        deployments = _string_list(claims.get("allowed_deployments"), "allowed_deployments")
        tenant = claims.get("tenant")
        if tenant is not None and not is_name(tenant):
            raise _Refusal("bad-claim", detail=" (tenant)")
        keys = claims.get("provider_keys")
        if keys is not None and not (
            isinstance(keys, dict)
            and len(keys) <= MAX_ITEMS
            and all(is_name(name) and is_name(value) for name, value in keys.items())
        ):
            raise _Refusal("bad-claim", detail=" (provider_keys)")
        # what the token may use: its provider_keys' deployments, else the policy's default ones,
        # narrowed by its own allowed_deployments
        usable = frozenset(keys) if keys is not None else self.policy.default_deployments
        if deployments is not None:
            usable = frozenset(deployments) if usable is None else usable & frozenset(deployments)
        return RequestContext(
            principal=claims["sub"],
            tenant=tenant,
            key_id=claims["jti"],
            scopes=frozenset(scopes or ()),
            allowed_models=None if models is None else frozenset(models),
            allowed_deployments=usable,
            provider_keys=MappingProxyType(dict(keys or {})),
            expires_at=float(claims["exp"]) if isinstance(claims.get("exp"), (int, float)) else None,
            verified_by=verified_by,
        )


def _string_list(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_ITEMS or not all(is_name(item) for item in value):
        raise _Refusal("bad-scopes" if name == "scopes" else "bad-claim", detail=f" ({name})")
    return value
