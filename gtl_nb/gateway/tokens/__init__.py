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

The modules, one concern each: ``claims`` (the algorithms, the required claims, the limits and the
strict JSON reading), ``keys`` (the secret, PEM and JWKS keys), ``policy`` (``TokenPolicy``),
``verify`` (``TokenAuthenticator``), ``scopes`` (``SCOPES``), ``store`` (revocation and the registry),
``mint`` (``mint_token``). Import from this package, not from them.
"""

from __future__ import annotations

from gtl_nb.gateway.scopes import IMPLIED_SCOPES as IMPLIED_SCOPES
from gtl_nb.gateway.scopes import SCOPE_NAMES, SCOPES, check_allowed, has_scope, require_scope

# ``NAME as NAME``: public names that, as before the split into modules, are not in ``__all__``
from gtl_nb.gateway.tokens.claims import ALGORITHMS, DEFAULT_AUDIENCE, DEV_ISSUER, REQUIRED_CLAIMS
from gtl_nb.gateway.tokens.keys import MIN_RSA_BITS as MIN_RSA_BITS
from gtl_nb.gateway.tokens.keys import MIN_SECRET_BYTES as MIN_SECRET_BYTES
from gtl_nb.gateway.tokens.keys import PrivateKey as PrivateKey
from gtl_nb.gateway.tokens.keys import PublicKey as PublicKey
from gtl_nb.gateway.tokens.keys import VerificationKey
from gtl_nb.gateway.tokens.keys import load_jwks as load_jwks
from gtl_nb.gateway.tokens.keys import load_public_key_file as load_public_key_file
from gtl_nb.gateway.tokens.mint import looks_like_a_key, mint_token
from gtl_nb.gateway.tokens.policy import DEFAULT_LEEWAY as DEFAULT_LEEWAY
from gtl_nb.gateway.tokens.policy import DEFAULT_MAX_LIFETIME as DEFAULT_MAX_LIFETIME
from gtl_nb.gateway.tokens.policy import DEFAULT_MAX_TOKEN_BYTES as DEFAULT_MAX_TOKEN_BYTES
from gtl_nb.gateway.tokens.policy import MAX_LEEWAY as MAX_LEEWAY
from gtl_nb.gateway.tokens.policy import TABLE_KEYS, TokenPolicy
from gtl_nb.gateway.tokens.store import DEFAULT_REFRESH as DEFAULT_REFRESH
from gtl_nb.gateway.tokens.store import (
    MemoryRevocationList,
    MintedToken,
    RevocationList,
    SqliteTokenStore,
    TokenRegistry,
    default_token_store_path,
)
from gtl_nb.gateway.tokens.verify import EXPIRED as EXPIRED
from gtl_nb.gateway.tokens.verify import FORBIDDEN_HEADERS as FORBIDDEN_HEADERS
from gtl_nb.gateway.tokens.verify import MISSING as MISSING
from gtl_nb.gateway.tokens.verify import REFUSED as REFUSED
from gtl_nb.gateway.tokens.verify import TokenAuthenticator, TokenRefusedError

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
