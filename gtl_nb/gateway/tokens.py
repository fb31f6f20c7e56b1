"""GhostTokens: the gateway's authentication (docs/tokens.md is the user-facing description).

A GhostToken is a JWT (RFC 7519) in compact form. ``TokenAuthenticator(policy, revocations, clock)``
is the gateway's ``Authenticate``: it turns the token a client's ``hello`` (or ``Authorization:
Bearer``) carried into the ``RequestContext`` every session of the connection runs under, or raises
``TokenRefusedError`` (an ``AuthenticationError``: ``AUTH_FAILED``).

* **Policy** (``TokenPolicy``, from ``[gateway.jwt]`` through ``TokenPolicy.from_table``): the issuer
  and audience, the algorithms the *server* accepts (HS256 with a shared secret read from an
  environment variable or an owner-only file, never a configuration value; RS256/ES256 with a PEM
  public key or a JWKS file whose keys rotate by ``kid``), the leeway, the longest lifetime, the
  largest token, and the deployments a token without ``provider_keys`` may use.
* **Verification** (``TokenAuthenticator``), in this order, each step refusing before the next costs
  anything: size (before any parsing) → shape (three base64url segments) → header (``alg`` on the
  allow-list, no ``jku``/``x5u``/``jwk``/``x5c``, no ``crit``/``b64``, a known ``kid``) → signature
  with a key whose type matches the algorithm → claims (required, typed, issuer, audience, time
  window, lifetime) → revocation. The client hears one generic message, except for a missing, an
  oversized or an expired token; the server log names the reason (``TokenRefusedError.reason``),
  never the token.
* **Scopes** (``SCOPES``): one table from gateway operation to the scope it needs;
  ``require_scope`` and ``check_allowed`` raise ``PermissionDeniedError`` (``FORBIDDEN``).
* **Revocation** (``RevocationList``): a deny-list of ``jti`` values with the time each may be
  forgotten. ``SqliteTokenStore`` keeps it, and the registry of minted tokens, in one owner-only
  SQLite file; a check reads memory and looks at the file at most every ``refresh`` seconds, and then
  only re-reads it when SQLite's change counter moved.
* **Minting** (``mint_token``): development tokens signed with the policy's HS256 secret (or a
  private key), recorded in the registry without the token itself.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import default_ledger_path
from gtl_nb.engine.sqlite_files import create_private_file
from gtl_nb.log import get_logger, redact
from gtl_nb.protocol.codec import nesting_exceeds
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    GTLError,
    InternalError,
    PermissionDeniedError,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_AUDIENCE",
    "DEV_ISSUER",
    "REQUIRED_CLAIMS",
    "SCOPES",
    "SCOPE_NAMES",
    "TABLE_KEYS",
    "MemoryRevocationList",
    "MintedToken",
    "RevocationList",
    "SqliteTokenStore",
    "TokenAuthenticator",
    "TokenPolicy",
    "TokenRefusedError",
    "TokenRegistry",
    "VerificationKey",
    "check_allowed",
    "default_token_store_path",
    "has_scope",
    "looks_like_a_key",
    "mint_token",
    "require_scope",
]

log = get_logger("gateway.tokens")

ALGORITHMS = ("HS256", "RS256", "ES256")
"""Every algorithm the gateway can accept; a policy accepts a subset. ``none`` never."""
REQUIRED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "jti"})
"""Claims every token must carry; a policy may require more, never fewer."""
DEFAULT_AUDIENCE = "gtl"
DEV_ISSUER = "gtl-dev"
"""The issuer of tokens minted with a bare secret (``mint_token(secret, ...)``)."""
DEFAULT_LEEWAY = 30.0
MAX_LEEWAY = 300.0
DEFAULT_MAX_LIFETIME = 30 * 86400.0
DEFAULT_MAX_TOKEN_BYTES = 8192
DEFAULT_REFRESH = 5.0
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash
MIN_RSA_BITS = 2048

FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
"""Header parameters that name or carry a key: the gateway never lets a token choose its own key."""
_ACCEPTED_TYPES = ("jwt", "at+jwt", "application/at+jwt")
_MAX_JSON_DEPTH = 8  # claims are flat; provider_keys is the deepest (2)
_MAX_NAME = 256  # sub, jti, kid, tenant, a scope, a model or deployment name
_MAX_ITEMS = 256  # entries of scopes, provider_keys and the allow-lists
_MAX_TIME = 1e12  # seconds: some 30,000 years either side of 1970
_MAX_JWKS_BYTES = 1 << 20
_MAX_SECRET_FILE_BYTES = 1 << 16

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


# ----------------------------------------------------------------------------------------------
# Scopes: the one table


SCOPES: Mapping[str, str] = MappingProxyType(
    {
        "completion": "chat:write",  # run a completion_request (and cancel it on its own connection)
        "session.read": "session:read",  # read the state of one's own sessions
        "session.cancel": "session:write",  # cancel one's own sessions (from another connection)
        "session.admin": "session:admin",  # read or cancel other principals' sessions
        "providers.list": "models:read",  # the provider list after hello
        "models.list": "models:read",  # a deployment's live model list
        "breakers.read": "models:read",  # the circuit breakers' states (which deployments answer)
        "usage.read": "usage:read",  # one's own ledger rows
        "usage.admin": "usage:admin",  # everyone's ledger rows
        "tools.execute": "tools:execute",  # reserved: server-side tool execution is not served yet
    }
)
"""Gateway operation → the scope a token needs for it (docs/tokens.md has the same table)."""

IMPLIED_SCOPES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "session:admin": frozenset({"session:read", "session:write"}),
        "usage:admin": frozenset({"usage:read"}),
    }
)
"""An administrator's scope also grants the principal's own narrower one."""

SCOPE_NAMES = frozenset(SCOPES.values())
"""The scopes this gateway gives meaning to (a token's other scopes are kept but grant nothing)."""


def has_scope(context: RequestContext, scope: str) -> bool:
    """Whether ``context`` holds ``scope``, directly or through an administrator's scope."""
    if scope in context.scopes:
        return True
    return any(scope in IMPLIED_SCOPES.get(held, ()) for held in context.scopes)


def require_scope(context: RequestContext, operation: str) -> None:
    """``PermissionDeniedError`` (``FORBIDDEN``) naming the scope unless ``context`` may do ``operation``."""
    scope = SCOPES.get(operation)
    if scope is None:  # a programming error in the gateway, never a client's
        raise ValueError(f"unknown gateway operation {operation!r}; known: {', '.join(sorted(SCOPES))}")
    if not has_scope(context, scope):
        raise PermissionDeniedError(f"this token lacks the scope {scope!r}, which {operation} needs")


def check_allowed(context: RequestContext, deployment: str, model: str) -> None:
    """``PermissionDeniedError`` unless the token's allow-lists let it use ``model`` on ``deployment``.

    ``allowed_deployments`` lists names exactly; an ``allowed_models`` entry matches the model, or
    ``deployment:model``, exactly or — ending in ``*`` — by prefix. ``None`` restricts nothing.
    """
    if context.allowed_deployments is not None and deployment not in context.allowed_deployments:
        raise PermissionDeniedError(
            f"this token may not use the deployment {deployment!r}; it may use: {_listing(context.allowed_deployments)}"
        )
    if context.allowed_models is not None:
        qualified = f"{deployment}:{model}"
        if not any(_matches(entry, model) or _matches(entry, qualified) for entry in context.allowed_models):
            raise PermissionDeniedError(
                f"this token may not use the model {model!r}; it may use: {_listing(context.allowed_models)}"
            )


def _matches(entry: str, name: str) -> bool:
    return name.startswith(entry[:-1]) if entry.endswith("*") else name == entry


def _listing(names: Iterable[str], most: int = 10) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    more = f" and {len(ordered) - most} more" if len(ordered) > most else ""
    return ", ".join(ordered[:most]) + more


# ----------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class VerificationKey:
    """A public key the gateway verifies signatures with, and the one algorithm it serves."""

    algorithm: str
    key: PublicKey = field(repr=False)
    kid: str | None = None


def load_public_key_file(path: Path) -> VerificationKey:
    """The RS256 (RSA, 2048 bits or more) or ES256 (P-256) key of a PEM public key file."""
    data = _read_limited(path, _MAX_JWKS_BYTES, "public_key_file")
    if b"PRIVATE KEY" in data:
        raise ConfigurationError(
            f"[gateway.jwt] public_key_file {path} holds a private key; give the gateway only the public half "
            "(openssl pkey -in KEY -pubout)"
        )
    try:
        key = load_pem_public_key(data)
    except Exception:
        raise ConfigurationError(f"[gateway.jwt] public_key_file {path} is not a PEM public key") from None
    return VerificationKey(_algorithm_of(key, f"public_key_file {path}"), key)  # type: ignore[arg-type]


def load_jwks(path: Path) -> tuple[VerificationKey, ...]:
    """The signing keys of a JWKS file (RFC 7517), each with its ``kid``.

    Keys for other algorithms or uses are skipped (with a warning); a key with private members, a
    symmetric key, a duplicate or missing ``kid``, or a file with no usable key is a ``ConfigurationError``.
    """
    where = f"[gateway.jwt] jwks_file {path}"
    data = _read_limited(path, _MAX_JWKS_BYTES, "jwks_file")
    document = _json_object(data)
    if document is None or not isinstance(document.get("keys"), list):
        raise ConfigurationError(f'{where} is not a JSON Web Key Set (an object with a "keys" list)')
    found: dict[str, VerificationKey] = {}
    for index, entry in enumerate(document["keys"]):
        key = _jwks_entry(entry, f"{where}: key {index}")
        if key is None:
            continue
        if key.kid in found:
            raise ConfigurationError(f"{where}: two keys have the kid {key.kid!r}")
        found[key.kid or ""] = key
    if not found:
        raise ConfigurationError(f"{where} has no RS256 or ES256 signing key")
    return tuple(found.values())


def _jwks_entry(entry: Any, where: str) -> VerificationKey | None:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} is not a JSON object")
    private = sorted({"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(entry))
    if private:  # never echo them: they are the secret
        raise ConfigurationError(
            f"{where} holds private or symmetric key material ({', '.join(private)}); a JWKS file for the "
            "gateway holds public keys only"
        )
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > _MAX_NAME:
        raise ConfigurationError(f'{where} has no "kid"; keys rotate by kid, so each needs one')
    kty, alg, use = entry.get("kty"), entry.get("alg"), entry.get("use")
    expected = {"RSA": "RS256", "EC": "ES256"}.get(kty) if isinstance(kty, str) else None
    if use not in (None, "sig") or expected is None or alg not in (None, expected):
        log.warning("%s (kid %r) skipped: only RS256/ES256 signing keys are used", where, kid)
        return None
    if kty == "EC" and entry.get("crv") != "P-256":
        log.warning("%s (kid %r) skipped: ES256 needs the curve P-256", where, kid)
        return None
    try:
        key = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(dict(entry))
    except Exception:
        raise ConfigurationError(f"{where} (kid {kid!r}) is not a valid {kty} public key") from None
    return VerificationKey(_algorithm_of(key, f"{where} (kid {kid!r})"), key, kid)  # type: ignore[arg-type]


def _algorithm_of(key: Any, where: str) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigurationError(f"[gateway.jwt] {where}: an RSA key needs at least {MIN_RSA_BITS} bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigurationError(f"[gateway.jwt] {where}: ES256 needs a P-256 key, not {key.curve.name}")
        return "ES256"
    raise ConfigurationError(f"[gateway.jwt] {where}: only RSA (RS256) and P-256 (ES256) public keys are accepted")


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ConfigurationError(f"[gateway.jwt] {what} {path}: no such file") from None
    except OSError as exc:
        raise ConfigurationError(f"[gateway.jwt] {what} {path}: cannot read it ({exc.strerror})") from None
    if len(data) > limit:
        raise ConfigurationError(f"[gateway.jwt] {what} {path} is larger than {limit} bytes")
    return data


class _KeyRing:
    """The policy's public keys, re-read from the JWKS file when it changes (checked every ``refresh`` s)."""

    def __init__(self, policy: TokenPolicy, clock: Callable[[], float]) -> None:
        self._path = policy.jwks_file
        self._refresh = policy.refresh
        self._clock = clock
        self._keys = policy.public_keys
        self._stamp = _stamp(self._path) if self._path is not None else None
        self._checked = clock()
        self._lock = threading.Lock()

    def keys(self) -> tuple[VerificationKey, ...]:
        if self._path is None:
            return self._keys
        now = self._clock()
        with self._lock:
            if now < self._checked or now - self._checked >= self._refresh:
                self._checked = now
                stamp = _stamp(self._path)
                if stamp != self._stamp:
                    try:
                        self._keys = load_jwks(self._path)
                        log.info("JWKS %s re-read: kids %s", self._path, ", ".join(k.kid or "" for k in self._keys))
                    except ConfigurationError as exc:  # a half-written file: keep serving the known keys
                        log.warning("keeping the previous keys: %s", exc)
                    self._stamp = stamp
            return self._keys


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


# ----------------------------------------------------------------------------------------------
# The policy


TABLE_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "issuer": "the iss every token must carry (required)",
        "audience": f'the aud every token must name (default "{DEFAULT_AUDIENCE}")',
        "algorithms": "accepted algorithms, from HS256, RS256, ES256 (default: those the configured keys serve)",
        "secret_env": "environment variable holding the HS256 shared secret (32 bytes or more)",
        "secret_file": "file holding the HS256 shared secret, readable by its owner only (chmod 600)",
        "public_key_file": "PEM public key (RSA 2048+ for RS256, P-256 for ES256)",
        "jwks_file": "JSON Web Key Set of public keys, each with a kid; re-read when it changes",
        "leeway": f"seconds of clock skew on exp, nbf and iat (default {DEFAULT_LEEWAY:g}, at most {MAX_LEEWAY:g})",
        "max_lifetime": f"longest accepted exp - iat in seconds (default {DEFAULT_MAX_LIFETIME:g}: 30 days)",
        "max_token_bytes": f"larger tokens are refused unread (default {DEFAULT_MAX_TOKEN_BYTES})",
        "required_claims": "claims required beyond iss, sub, aud, exp, iat and jti",
        "default_deployments": 'deployments a token without provider_keys may use (default none; "*": all)',
        "revocations": "SQLite file of revoked and minted tokens (default: tokens.sqlite3 beside the ledger)",
        "refresh": f"seconds between looks at the revocation list and the JWKS file (default {DEFAULT_REFRESH:g})",
    }
)
"""The keys of ``[gateway.jwt]`` and what each means (``TokenPolicy.from_table`` reads them)."""

_SECRET_LOOKING_KEYS = ("secret", "key", "jwt_secret", "hs256_secret", "shared_secret", "password")


@dataclass(frozen=True)
class TokenPolicy:
    """What the gateway accepts as a GhostToken (``from_table`` builds it from ``[gateway.jwt]``).

    Construction checks consistency: every algorithm on ``algorithms`` has a key of its type, the
    secret is long enough, the required claims include ``REQUIRED_CLAIMS``.
    """

    issuer: str
    audience: str = DEFAULT_AUDIENCE
    algorithms: tuple[str, ...] = ("HS256",)
    secret: bytes | None = field(default=None, repr=False)
    public_keys: tuple[VerificationKey, ...] = ()
    jwks_file: Path | None = None
    required_claims: frozenset[str] = REQUIRED_CLAIMS
    leeway: float = DEFAULT_LEEWAY
    max_lifetime: float = DEFAULT_MAX_LIFETIME
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    default_deployments: frozenset[str] | None = frozenset()
    """Deployments a token without ``provider_keys`` may use; ``None`` (``"*"``): every one."""
    revocations: Path | None = None
    """The token store's file (``default_token_store_path()`` when ``None``)."""
    refresh: float = DEFAULT_REFRESH
    secret_source: str = field(default="the secret", compare=False)
    """Where the secret came from (``$NAME`` or a file), for messages; never the secret."""

    def __post_init__(self) -> None:
        where = "[gateway.jwt]"
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ConfigurationError(f"{where} needs issuer: the iss claim every token must carry")
        if not isinstance(self.audience, str) or not self.audience:
            raise ConfigurationError(f"{where} audience must be a non-empty string")
        if not self.algorithms:
            raise ConfigurationError(
                f"{where} accepts no algorithm; configure secret_env, secret_file, public_key_file or jwks_file"
            )
        for alg in self.algorithms:
            if alg not in ALGORITHMS:
                advice = "a token without a signature is never accepted" if alg.lower() == "none" else ""
                raise ConfigurationError(
                    f"{where} algorithms: {alg!r} is not accepted; choose from {', '.join(ALGORITHMS)}"
                    + (f" ({advice})" if advice else "")
                )
            if alg == "HS256" and self.secret is None:
                raise ConfigurationError(f"{where} accepts HS256 but has no secret; set secret_env or secret_file")
            if alg != "HS256" and not any(key.algorithm == alg for key in self.public_keys):
                raise ConfigurationError(f"{where} accepts {alg} but no public_key_file or jwks_file key serves it")
        if self.secret is not None:
            _check_secret(self.secret, self.secret_source)
        if not self.required_claims >= REQUIRED_CLAIMS:
            missing = ", ".join(sorted(REQUIRED_CLAIMS - self.required_claims))
            raise ConfigurationError(f"{where} required_claims cannot drop {missing}")
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ConfigurationError(f"{where} leeway must be 0..{MAX_LEEWAY:g} seconds")
        if not self.max_lifetime > 0:
            raise ConfigurationError(f"{where} max_lifetime must be a positive number of seconds")
        if not 1024 <= self.max_token_bytes <= 65536:
            raise ConfigurationError(f"{where} max_token_bytes must be 1024..65536")
        if self.refresh < 0:
            raise ConfigurationError(f"{where} refresh must not be negative")

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str] | None = None
    ) -> TokenPolicy:
        """The policy of a ``[gateway.jwt]`` table (keys: ``TABLE_KEYS``); relative paths start at
        ``base_dir`` (the configuration file's folder). A mistake is a ``ConfigurationError`` that
        names the key and never quotes a secret (nor a value that could be one)."""
        environ = os.environ if environ is None else environ
        where = "[gateway.jwt]"
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table")
        for key in table:
            if key not in TABLE_KEYS:
                raise ConfigurationError(_unknown_key(str(key)))
        reader = _TableReader(table, base_dir)
        secret, source = _read_secret(reader, environ)
        public_keys: tuple[VerificationKey, ...] = ()
        key_file, jwks_file = reader.path("public_key_file"), reader.path("jwks_file")
        if key_file is not None and jwks_file is not None:
            raise ConfigurationError(f"{where} names public_key_file and jwks_file; choose one")
        if key_file is not None:
            public_keys = (load_public_key_file(key_file),)
        if jwks_file is not None:
            public_keys = load_jwks(jwks_file)
        served = (("HS256",) if secret is not None else ()) + tuple(
            alg for alg in ALGORITHMS[1:] if any(key.algorithm == alg for key in public_keys)
        )
        algorithms = reader.strings("algorithms")
        default_deployments = reader.strings("default_deployments") or []
        revocations = reader.path("revocations")
        return cls(
            issuer=reader.string("issuer", required=True) or "",
            audience=reader.string("audience") or DEFAULT_AUDIENCE,
            algorithms=tuple(dict.fromkeys(algorithms)) if algorithms is not None else served,
            secret=secret,
            public_keys=public_keys,
            jwks_file=jwks_file,
            required_claims=REQUIRED_CLAIMS | frozenset(reader.strings("required_claims") or ()),
            leeway=reader.number("leeway", DEFAULT_LEEWAY),
            max_lifetime=reader.number("max_lifetime", DEFAULT_MAX_LIFETIME),
            max_token_bytes=int(reader.number("max_token_bytes", DEFAULT_MAX_TOKEN_BYTES, integer=True)),
            default_deployments=None if "*" in default_deployments else frozenset(default_deployments),
            revocations=revocations,
            refresh=reader.number("refresh", DEFAULT_REFRESH),
            secret_source=source,
        )

    @property
    def store_path(self) -> Path:
        """The token store's file: ``revocations``, or the default beside the ledger."""
        return self.revocations if self.revocations is not None else default_token_store_path()


def _unknown_key(key: str) -> str:
    if key.lower() in _SECRET_LOOKING_KEYS:
        return (
            f"[gateway.jwt] {key}: a secret is never a configuration value; put it in an environment variable "
            "named by secret_env, or in a file readable by its owner only named by secret_file"
        )
    matches = difflib.get_close_matches(key, sorted(TABLE_KEYS), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    return f"unknown key {key!r} in [gateway.jwt]{hint} (known: {', '.join(sorted(TABLE_KEYS))})"


class _TableReader:
    """Typed reads of ``[gateway.jwt]`` keys; messages name the key and the expected kind, never the value."""

    def __init__(self, table: Mapping[str, Any], base_dir: Path) -> None:
        self.table = table
        self.base_dir = base_dir

    def _fail(self, key: str, kind: str) -> ConfigurationError:
        return ConfigurationError(f"[gateway.jwt] {key} must be {kind}")

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.table.get(key)
        if value is None:
            if required:
                raise ConfigurationError(f"[gateway.jwt] needs {key}: {TABLE_KEYS[key]}")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, "a non-empty string")
        return value.strip()

    def strings(self, key: str) -> list[str] | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self._fail(key, "a list of non-empty strings")
        return list(value)

    def number(self, key: str, default: float, *, integer: bool = False) -> float:
        value = self.table.get(key, default)
        kinds = (int,) if integer else (int, float)
        # the range test also refuses NaN, infinities and integers too large for a float
        if isinstance(value, bool) or not isinstance(value, kinds) or not 0 <= value <= 1e12:
            raise self._fail(key, "a whole number" if integer else "a number of seconds")
        return float(value)

    def path(self, key: str) -> Path | None:
        value = self.string(key)
        return None if value is None else self.base_dir / Path(value).expanduser()


def _read_secret(reader: _TableReader, environ: Mapping[str, str]) -> tuple[bytes | None, str]:
    """The HS256 secret and where it came from; the messages never quote the secret nor the key's value
    (a secret pasted where a name belongs must not be echoed either)."""
    name, file_value = reader.table.get("secret_env"), reader.table.get("secret_file")
    if name is not None and file_value is not None:
        raise ConfigurationError("[gateway.jwt] names secret_env and secret_file; choose one")
    if name is not None:
        if not _is_variable_name(name):
            raise ConfigurationError(
                "[gateway.jwt] secret_env must name an environment variable (capital letters, digits, _), "
                "not hold the secret itself"
            )
        raw = environ.get(name, "")
        value = raw.strip()
        if not value:
            raise ConfigurationError(f"[gateway.jwt] secret_env: ${name} is not set (or empty)")
        if value != raw:  # whoever else signs with it may not trim it
            log.warning("[gateway.jwt] the secret in $%s had surrounding whitespace; it was removed", name)
        return value.encode(), f"${name}"
    if file_value is not None:
        if not isinstance(file_value, str) or not file_value.strip():
            raise ConfigurationError("[gateway.jwt] secret_file must be a non-empty string (a path)")
        path = reader.base_dir / Path(file_value.strip()).expanduser()
        try:
            info = path.stat()
        except OSError:  # the path is not echoed: a secret pasted here would be
            raise ConfigurationError(
                f"[gateway.jwt] secret_file names no readable file (relative paths start at {reader.base_dir})"
            ) from None
        if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"[gateway.jwt] secret_file {path} can be read by other users; make it the owner's only (chmod 600)"
            )
        data = _read_limited(path, _MAX_SECRET_FILE_BYTES, "secret_file").strip()
        if not data:
            raise ConfigurationError(f"[gateway.jwt] secret_file {path} is empty")
        return data, f"secret_file {path}"
    return None, "the secret"


def _is_variable_name(name: Any) -> bool:
    if not isinstance(name, str) or not 0 < len(name) <= 64 or name[0].isdigit():
        return False
    return all(ch.isascii() and (ch.isupper() or ch.isdigit() or ch == "_") for ch in name)


def _check_secret(secret: bytes, source: str) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the HS256 secret in {source} is shorter than {MIN_SECRET_BYTES} bytes; make a random one "
            "(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    if secret.lstrip().startswith((b"-----BEGIN", b"ssh-", b"ecdsa-sha2-")):
        # a public key used as an HMAC secret is the classic algorithm-confusion attack
        raise ConfigurationError(
            f"the HS256 secret in {source} is a PEM or SSH key; HS256 needs a random shared secret, and public "
            "keys belong in public_key_file or jwks_file"
        )


def default_token_store_path() -> Path:
    """``tokens.sqlite3`` in the ledger's folder (``<user data dir>/gtl_nb/``)."""
    return default_ledger_path().with_name("tokens.sqlite3")


# ----------------------------------------------------------------------------------------------
# Verification


class TokenRefusedError(AuthenticationError):
    """A GhostToken the gateway refused. ``message`` is what the client may hear; ``reason`` is a fixed
    word for the server's log and the tests (never a value from the token)."""

    def __init__(self, message: str, reason: str, *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.reason = reason

    def __repr__(self) -> str:
        return f"TokenRefusedError(reason={self.reason!r})"


REFUSED = "the gateway refused the token; ask the gateway's administrator for a valid GhostToken"
"""The one message for every refusal that could teach an attacker something (signature, claims, keys)."""
EXPIRED = "the GhostToken has expired; get a new one"
MISSING = "the gateway needs a GhostToken: connect(..., token=...) with one its administrator gave you"


class _Refusal(Exception):
    """Internal: why a token was refused; turned into ``TokenRefusedError`` at the boundary."""

    def __init__(self, reason: str, message: str = REFUSED, *, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.message, self.detail = reason, message, detail


class TokenAuthenticator:
    """The gateway's ``Authenticate`` for GhostTokens: ``authenticator(token) -> RequestContext``.

    ``revocations`` is checked for every token that passed everything else; ``clock`` (Unix
    seconds, ``time.time`` by default) judges ``exp``, ``nbf`` and ``iat``, and paces the JWKS re-reads.
    """

    def __init__(
        self, policy: TokenPolicy, revocations: RevocationList, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy
        self.revocations = revocations
        self.clock = clock
        self._keys = _KeyRing(policy, clock)
        self._jws = jwt.PyJWS(algorithms=list(policy.algorithms))

    def __repr__(self) -> str:
        return f"TokenAuthenticator(issuer={self.policy.issuer!r}, algorithms={list(self.policy.algorithms)})"

    def __call__(self, token: str | None) -> RequestContext:
        """The context of the client that offered ``token``; ``TokenRefusedError`` when refused."""
        try:
            claims = self._verify(token)
            context = self._context(claims)
        except _Refusal as refusal:
            log.info("GhostToken refused: %s%s", refusal.reason, refusal.detail)
            raise TokenRefusedError(refusal.message, refusal.reason) from None
        if self._revoked(context.key_id or ""):
            log.info("GhostToken refused: revoked (sub=%r, jti=%r)", context.principal, context.key_id)
            raise TokenRefusedError(REFUSED, "revoked")
        log.debug(
            "GhostToken accepted: sub=%r, jti=%r, scopes=%s", context.principal, context.key_id, sorted(context.scopes)
        )
        return context

    def _revoked(self, jti: str) -> bool:
        try:
            return self.revocations.is_revoked(jti)
        except GTLError as exc:  # fail closed, but say it may pass later
            log.error("cannot check the revocation list: %s", exc)
            raise TokenRefusedError(
                "the gateway could not check the token against its revocation list; try again",
                "store-unavailable",
                retryable=True,
            ) from None

    # the steps, in order: each refuses before the next one costs anything

    def _verify(self, token: str | None) -> dict[str, Any]:
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
        key = self._key(header)
        try:
            payload = self._jws.decode_complete(token, key=key, algorithms=[header["alg"]])["payload"]
        except Exception:  # PyJWT's messages are never passed on: one refusal for every signature problem
            raise _Refusal("bad-signature") from None
        claims = _json_object(payload)
        if claims is None:
            raise _Refusal("malformed-claims")
        self._check_claims(claims)
        return claims

    def _header(self, token: str) -> dict[str, Any]:
        try:
            raw = jwt.utils.base64url_decode(token.split(".", 1)[0])
        except Exception:
            raise _Refusal("malformed") from None
        header = _json_object(raw)
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
        if kid is not None and (not isinstance(kid, str) or len(kid) > _MAX_NAME):
            raise _Refusal("malformed")
        return header

    def _key(self, header: dict[str, Any]) -> Any:
        """The verifying key for ``header``: its type always matches the algorithm (HS256: the secret
        bytes; RS256: an RSA public key; ES256: a P-256 public key), so no key serves two algorithms."""
        alg = header["alg"]
        if alg == "HS256":
            return self.policy.secret
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
        return chosen.key

    def _check_claims(self, claims: dict[str, Any]) -> None:
        policy = self.policy
        missing = sorted(name for name in policy.required_claims if claims.get(name) is None)
        if missing:
            raise _Refusal("missing-claim", detail=f" ({', '.join(missing)})")
        if claims["iss"] != policy.issuer:
            raise _Refusal("wrong-issuer")
        audience = claims["aud"]
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            raise _Refusal("bad-claim", detail=" (aud)")
        if policy.audience not in audiences:
            raise _Refusal("wrong-audience")
        for name in ("sub", "jti"):
            if not _is_name(claims[name]):
                raise _Refusal("bad-claim", detail=f" ({name})")
        times = {name: claims.get(name) for name in ("exp", "iat", "nbf")}
        for name, value in times.items():
            if value is not None and not _is_time(value):
                raise _Refusal("bad-claim", detail=f" ({name})")
        who = f" (sub={claims['sub']!r}, jti={claims['jti']!r})"
        now, leeway = self.clock(), policy.leeway
        exp, iat, nbf = times["exp"], times["iat"], times["nbf"]
        if exp is not None and now > exp + leeway:
            raise _Refusal("expired", EXPIRED, detail=who)
        if (nbf is not None and now + leeway < nbf) or (iat is not None and now + leeway < iat):
            raise _Refusal("not-yet-valid", detail=who)
        if exp is not None and iat is not None and exp - iat > policy.max_lifetime:
            raise _Refusal("lifetime-too-long", detail=who)

    def _context(self, claims: dict[str, Any]) -> RequestContext:
        scopes = _string_list(claims.get("scopes"), "scopes")
        models = _string_list(claims.get("allowed_models"), "allowed_models")
        deployments = _string_list(claims.get("allowed_deployments"), "allowed_deployments")
        tenant = claims.get("tenant")
        if tenant is not None and not _is_name(tenant):
            raise _Refusal("bad-claim", detail=" (tenant)")
        keys = claims.get("provider_keys")
        if keys is not None and not (
            isinstance(keys, dict)
            and len(keys) <= _MAX_ITEMS
            and all(_is_name(name) and _is_name(value) for name, value in keys.items())
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
        )


def _string_list(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > _MAX_ITEMS or not all(_is_name(item) for item in value):
        raise _Refusal("bad-scopes" if name == "scopes" else "bad-claim", detail=f" ({name})")
    return value


def _is_name(value: Any) -> bool:
    """A non-empty string of at most ``_MAX_NAME`` characters without control characters."""
    return isinstance(value, str) and 0 < len(value) <= _MAX_NAME and all(ch >= " " and ch != "\x7f" for ch in value)


def _is_time(value: Any) -> bool:
    """A NumericDate the arithmetic can use: NaN and infinities fail the comparison, and a huge integer
    (JSON has no limit) is refused before ``exp + leeway`` could overflow into a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return -_MAX_TIME <= value <= _MAX_TIME


class _DuplicateName(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # RFC 7519 §4: a parser may not silently pick one of two claims
        raise _DuplicateName
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON, and NaN would compare false with every time


def _json_object(data: bytes) -> dict[str, Any] | None:
    """``data`` as a JSON object, or ``None`` for anything else (too deep, duplicate names, NaN, not JSON)."""
    if nesting_exceeds(data, _MAX_JSON_DEPTH):
        return None
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------------------------
# Revocation and the registry of minted tokens


@runtime_checkable
class RevocationList(Protocol):
    """A deny-list of token ids. ``expires_at`` (Unix seconds) is when an entry may be forgotten: the
    token's ``exp`` plus the policy's leeway, after which the token is refused as expired anyway.
    ``is_revoked`` is called for every connection, so it must be cheap (memory, not I/O)."""

    def revoke(self, jti: str, expires_at: float) -> None: ...

    def is_revoked(self, jti: str) -> bool: ...

    def prune(self, now: float) -> int:
        """Forget the entries whose ``expires_at`` has passed; how many were forgotten."""
        ...


@dataclass(frozen=True)
class MintedToken:
    """What the registry keeps of a minted token: never the token itself."""

    jti: str
    subject: str
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    tenant: str | None = None


@runtime_checkable
class TokenRegistry(Protocol):
    """Where ``mint_token`` records what it minted (``gtl token list`` reads it)."""

    def record(self, token: MintedToken) -> None: ...

    def minted(self) -> list[MintedToken]: ...


class MemoryRevocationList:
    """A ``RevocationList`` in memory: for tests and single-process gateways without a file."""

    def __init__(self) -> None:
        self._entries: dict[str, float] = {}
        self._lock = threading.Lock()

    def revoke(self, jti: str, expires_at: float) -> None:
        with self._lock:
            self._entries[jti] = max(expires_at, self._entries.get(jti, expires_at))

    def is_revoked(self, jti: str) -> bool:
        return jti in self._entries

    def prune(self, now: float) -> int:
        with self._lock:
            gone = [jti for jti, until in self._entries.items() if until <= now]
            for jti in gone:
                del self._entries[jti]
        return len(gone)


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS revoked (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL, revoked_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS minted (jti TEXT PRIMARY KEY, subject TEXT NOT NULL, scopes TEXT NOT NULL, "
    "tenant TEXT, issued_at REAL NOT NULL, expires_at REAL NOT NULL)",
)


class SqliteTokenStore:
    """The revocation list and the registry of minted tokens in one SQLite file, readable by its owner only.

    ``is_revoked`` answers from a set in memory. At most every ``refresh`` seconds (by ``clock``) it asks
    SQLite's ``PRAGMA data_version`` whether another connection — ``gtl token revoke`` in another
    process — committed since, and re-reads the deny-list only then; a revocation made through this
    object is in the set at once. So a revocation reaches a running gateway within ``refresh`` seconds,
    and a connection costs a set look-up. Entries are forgotten by ``prune`` (``revoke`` and ``record``
    prune too), never on the authentication path, which only reads.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time, refresh: float = DEFAULT_REFRESH
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._refresh = refresh
        self._lock = threading.Lock()
        create_private_file(self.path, what="token store", advice="set [gateway.jwt] revocations to another file")
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode = WAL")
            for statement in _SCHEMA:
                self._conn.execute(statement)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"the token store {self.path} cannot be used ({exc})") from None
        self._revoked: frozenset[str] = frozenset()
        self._version: int | None = None
        self._checked: float | None = None

    def __repr__(self) -> str:
        return f"SqliteTokenStore({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteTokenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, what: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return work(self._conn)
        except sqlite3.Error as exc:
            raise InternalError(f"the token store {self.path}: {what} failed ({exc})") from None

    # RevocationList

    def revoke(self, jti: str, expires_at: float) -> None:
        """Deny ``jti`` until ``expires_at`` (an earlier revocation's later time is kept)."""
        now = self._clock()
        with self._lock:
            self._run(
                "revoking",
                lambda conn: conn.execute(
                    "INSERT INTO revoked (jti, expires_at, revoked_at) VALUES (?, ?, ?) ON CONFLICT (jti) "
                    "DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
                    (jti, float(expires_at), now),
                ),
            )
            self._prune(now)
            self._reload(force=True)

    def is_revoked(self, jti: str) -> bool:
        now = self._clock()
        with self._lock:
            # a clock that went backwards also looks again, rather than trusting the set for that long
            if self._checked is None or now < self._checked or now - self._checked >= self._refresh:
                self._reload(force=False)
                self._checked = now
            return jti in self._revoked

    def prune(self, now: float) -> int:
        with self._lock:
            count = self._prune(now)
            self._reload(force=True)
            return count

    def _prune(self, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            gone = conn.execute("DELETE FROM revoked WHERE expires_at <= ?", (now,)).rowcount
            return gone + conn.execute("DELETE FROM minted WHERE expires_at <= ?", (now,)).rowcount

        return int(self._run("pruning", work))

    def _reload(self, *, force: bool) -> None:
        version = self._run("reading", lambda conn: conn.execute("PRAGMA data_version").fetchone()[0])
        if force or version != self._version:
            rows = self._run("reading", lambda conn: conn.execute("SELECT jti FROM revoked").fetchall())
            self._revoked = frozenset(row[0] for row in rows)
            self._version = version

    def revoked(self) -> dict[str, float]:
        """Every revoked ``jti`` and when it may be forgotten."""
        with self._lock:
            return dict(
                self._run("reading", lambda conn: conn.execute("SELECT jti, expires_at FROM revoked").fetchall())
            )

    # TokenRegistry

    def record(self, token: MintedToken) -> None:
        now = self._clock()
        with self._lock:
            self._run(
                "recording a minted token",
                lambda conn: conn.execute(
                    "INSERT OR REPLACE INTO minted (jti, subject, scopes, tenant, issued_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        token.jti,
                        token.subject,
                        json.dumps(list(token.scopes)),
                        token.tenant,
                        token.issued_at,
                        token.expires_at,
                    ),
                ),
            )
            self._prune(now)

    def minted(self) -> list[MintedToken]:
        with self._lock:
            rows = self._run(
                "reading",
                lambda conn: conn.execute(
                    "SELECT jti, subject, scopes, issued_at, expires_at, tenant FROM minted ORDER BY issued_at, jti"
                ).fetchall(),
            )
        return [MintedToken(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5]) for row in rows]

    def expiry_of(self, jti: str) -> float | None:
        """The ``exp`` of a token minted here, ``None`` for one this store never recorded."""
        with self._lock:
            row = self._run(
                "reading", lambda conn: conn.execute("SELECT expires_at FROM minted WHERE jti = ?", (jti,)).fetchone()
            )
        return None if row is None else float(row[0])


# ----------------------------------------------------------------------------------------------
# Minting (development)


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
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= _MAX_TIME:
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
    if not all(name is None or _is_name(name) for name in names):
        raise ConfigurationError(
            "a token's subject, tenant, kid, provider keys, models and deployments must be names of 1 to "
            f"{_MAX_NAME} printable characters"
        )
    issued = math.floor(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer or default_issuer,
        "sub": subject,
        "aud": audience or default_audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + math.ceil(seconds),
        "jti": secrets.token_urlsafe(16),
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
                f"a lifetime of {seconds:g} s is longer than [gateway.jwt] max_lifetime ({signer.max_lifetime:g} s)"
            )
        return signer.secret, "HS256", signer.issuer, signer.audience
    if isinstance(signer, (str, bytes)):
        secret = signer.encode() if isinstance(signer, str) else signer
        _check_secret(secret, "the secret given to mint_token")
        return secret, "HS256", DEV_ISSUER, DEFAULT_AUDIENCE
    if isinstance(signer, rsa.RSAPrivateKey):
        return signer, "RS256", DEV_ISSUER, DEFAULT_AUDIENCE
    if isinstance(signer, ec.EllipticCurvePrivateKey) and isinstance(signer.curve, ec.SECP256R1):
        return signer, "ES256", DEV_ISSUER, DEFAULT_AUDIENCE
    raise ConfigurationError("mint_token signs with a TokenPolicy, an HS256 secret, an RSA or a P-256 private key")


def looks_like_a_key(value: str) -> bool:
    """Whether ``value`` looks like a credential itself (the log filter's patterns) rather than a key's name."""
    return redact(value) != value
