"""The policy: what the gateway accepts as a GhostToken, built from the ``[gateway.jwt]`` table
(``TokenPolicy.from_table``; ``TABLE_KEYS`` lists its keys)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gtl_nb.gateway.tokens.claims import ALGORITHMS, DEFAULT_AUDIENCE, REQUIRED_CLAIMS
from gtl_nb.gateway.tokens.keys import (
    VerificationKey,
    check_secret,
    load_jwks,
    load_public_key_file,
    read_secret,
)
from gtl_nb.gateway.tokens.store import DEFAULT_REFRESH, default_token_store_path
from gtl_nb.protocol.errors import ConfigurationError

DEFAULT_LEEWAY = 30.0
MAX_LEEWAY = 300.0
DEFAULT_MAX_LIFETIME = 30 * 86400.0
DEFAULT_MAX_TOKEN_BYTES = 8192

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
        "revocations": "SQLite file of revoked and minted tokens (default: tokens.sqlite3 beside the ledger), "
        "or a redis:// URL whose revocation list every replica shares",
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
    revocations_url: str | None = None
    """A ``redis://`` URL: the revocation list gateway replicas share (minted tokens stay in the file)."""
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
            check_secret(self.secret, self.secret_source)
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
        reader = _checked_reader(table, base_dir)
        secret, source = read_secret(table, base_dir, environ)
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
        revocations, revocations_url = _revocations(reader)
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
            revocations_url=revocations_url,
            refresh=reader.number("refresh", DEFAULT_REFRESH),
            secret_source=source,
        )

    @property
    def store_path(self) -> Path:
        """The token store's file: ``revocations``, or the default beside the ledger."""
        return self.revocations if self.revocations is not None else default_token_store_path()


@dataclass(frozen=True)
class RevocationSettings:
    """What listing and revoking tokens need of ``[gateway.jwt]``: where minted tokens and revocations
    are kept and how long an entry must live — and no key. Revoking a token during an incident must
    not need the secret that mints them (an operator may not hold it; an RS256 gateway's signing key
    is not even on the gateway)."""

    revocations: Path | None
    revocations_url: str | None
    refresh: float
    leeway: float
    max_lifetime: float

    @property
    def store_path(self) -> Path:
        """The token store's file (as ``TokenPolicy.store_path``)."""
        return self.revocations if self.revocations is not None else default_token_store_path()

    @classmethod
    def from_table(cls, table: Mapping[str, Any], base_dir: Path) -> RevocationSettings:
        """The settings of a ``[gateway.jwt]`` table, read as ``TokenPolicy.from_table`` reads them."""
        reader = _checked_reader(table, base_dir)
        revocations, revocations_url = _revocations(reader)
        settings = cls(
            revocations=revocations,
            revocations_url=revocations_url,
            refresh=reader.number("refresh", DEFAULT_REFRESH),
            leeway=reader.number("leeway", DEFAULT_LEEWAY),
            max_lifetime=reader.number("max_lifetime", DEFAULT_MAX_LIFETIME),
        )
        if not 0 <= settings.leeway <= MAX_LEEWAY or not settings.max_lifetime > 0 or settings.refresh < 0:
            raise ConfigurationError("[gateway.jwt] leeway, max_lifetime or refresh is out of range")
        return settings


def _checked_reader(table: Mapping[str, Any], base_dir: Path) -> _TableReader:
    """A reader of ``table``, which must be a table of known keys (a misspelt key is an error)."""
    if not isinstance(table, Mapping):
        raise ConfigurationError("[gateway.jwt] must be a table")
    for key in table:
        if key not in TABLE_KEYS:
            raise ConfigurationError(_unknown_key(str(key)))
    return _TableReader(table, base_dir)


def _revocations(reader: _TableReader) -> tuple[Path | None, str | None]:
    """``revocations`` as the token store's file, or as the ``redis://`` URL of the replicas' shared list."""
    value = reader.string("revocations")
    if value is not None and value.split("://", 1)[0].lower() in ("redis", "rediss"):
        from gtl_nb.engine.stores.urls import parse_store_url

        parse_store_url(value, where="[gateway.jwt] revocations")  # a typo fails at start-up
        return None, value
    from gtl_nb.engine.stores.urls import refuse_url_for_path

    # a postgresql:// URL (or redis:/ with one slash) read as a path was a folder named after its password,
    # and each replica kept its own list while the operator thought it shared
    refuse_url_for_path(
        value,
        "[gateway.jwt] revocations",
        "the token store's SQLite file, or a redis:// (rediss://) URL for a list the replicas share; "
        "no other store holds revocations",
    )
    return reader.path("revocations"), None


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
