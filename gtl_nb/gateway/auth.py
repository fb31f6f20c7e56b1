"""How ``gtl serve`` checks its callers and finds its provider keys, from ``[gateway]``.

* ``build_authenticator`` — ``auth = "jwt"``: GhostTokens (``gateway.tokens``: ``[gateway.jwt]``, the
  revocation list beside the ledger); ``"token"`` and ``"none"``: the development stand-in
  (``gateway.devauth``).
* ``build_credentials`` — with a ``[gateway.vault]`` table, the engine's keys come from the encrypted
  vault (``gateway.vault_credentials``), a token's ``provider_keys`` choosing among them, the usual
  configured credentials for the deployments the vault does not serve; without one, ``None`` (the
  builder's default).
* ``check_exposure`` — a gateway that checks no token (``auth = "none"``) listens on loopback only,
  TLS or not: anyone who can reach the port would spend its provider keys.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gtl_nb.engine.credentials import ConfiguredCredentials, CredentialResolver
from gtl_nb.engine.settings import Settings
from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.listeners import is_loopback
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import missing_package

__all__ = [
    "build_authenticator",
    "build_credentials",
    "check_exposure",
    "close_revocations",
    "configured_fallback",
    "kept_revocations",
    "missing_extra",
    "revocation_list",
]


def _base_dir(settings: Settings) -> Path:
    config = settings.config
    return config.source_path.parent if config is not None and config.source_path is not None else Path.cwd()


def build_authenticator(
    settings: Settings,
    options: GatewaySettings,
    *,
    principal: str | None = None,
    environ: Mapping[str, str] | None = None,
    current: Authenticate | None = None,
) -> Authenticate:
    """The ``authenticate`` hook of ``[gateway] auth`` (a ``ConfigurationError`` says what is missing).

    ``current`` (a reload): the running gateway's hook; its revocation list is kept when the new
    policy names the same one (``revocation_list``)."""
    environ = os.environ if environ is None else environ
    if options.auth != "jwt":
        return DevAuth.from_settings(options.auth, principal=principal, environ=environ)
    if principal is not None:
        raise ConfigurationError('--principal is for the development modes; with auth = "jwt" the token names it')
    try:
        from gtl_nb.gateway.tokens import TokenAuthenticator, TokenPolicy
    except ImportError as exc:
        raise missing_extra(exc, '[gateway] auth = "jwt"') from None

    policy = TokenPolicy.from_table(options.jwt or {}, _base_dir(settings), environ)
    revocations = revocation_list(policy, current=current, gateway=True)
    try:
        return TokenAuthenticator(policy, revocations)
    except BaseException:
        if revocations is not kept_revocations(policy, current):
            close_revocations(revocations)
        raise


def missing_extra(exc: ImportError, what: str, extra: str = "gateway") -> Exception:
    """The error for ``what`` when an optional package it imports is not installed: a
    ``ConfigurationError`` with the ``pip install`` line (``words.missing_package``) — or ``exc``
    itself when gtl_nb's own module is what failed (a bug, not a missing extra)."""
    said = missing_package(exc, what, extra)
    return exc if said is None else ConfigurationError(said)


def revocation_list(policy: Any, *, current: Authenticate | None = None, gateway: bool = False) -> Any:
    """The revocation list ``[gateway.jwt] revocations`` names: Redis, shared by replicas, or the SQLite file.

    ``gateway``: a gateway's own list, which warns when it finds a new shared list and has no
    revocation of its own to write into it (``gtl token`` writes the list itself, and says what it did).
    With ``current`` (the running gateway's hook, on a reload), its own list when it is the same
    one (``kept_revocations``): a reload neither forgets the set it read nor reads it again (while
    Redis is down it could not, and a list never read refuses every token)."""
    kept = kept_revocations(policy, current)
    if kept is not None:
        return kept
    if policy.revocations_url is not None:
        from gtl_nb.gateway.tokens.redis_revocations import RedisRevocationList

        restore = functools.partial(_recorded_revocations, Path(policy.store_path))
        source = str(policy.store_path) if gateway else None
        return RedisRevocationList(
            policy.revocations_url, refresh=policy.refresh, restore_from=restore, restore_source=source
        )
    from gtl_nb.gateway.tokens import SqliteTokenStore

    return SqliteTokenStore(policy.store_path, refresh=policy.refresh)


def _recorded_revocations(path: Path) -> dict[str, float]:
    """The revocations ``gtl token revoke`` recorded in the SQLite token store at ``path`` (none when
    there is no such file here: a replica on another host), which a Redis list that lost them gets back."""
    if not path.is_file():
        return {}
    from gtl_nb.gateway.tokens import SqliteTokenStore

    with SqliteTokenStore(path) as store:
        return store.revoked()


def kept_revocations(policy: Any, current: Authenticate | None) -> Any:
    """``current``'s revocation list when ``policy`` names the same one, else ``None``: the same Redis
    URL (whatever ``refresh``: the reload sets the new one on it), or the same SQLite file read every
    ``refresh`` seconds as before."""
    old_policy = getattr(current, "policy", None)
    kept = getattr(current, "revocations", None)
    if old_policy is None or kept is None:
        return None
    if policy.revocations_url is not None:
        return kept if old_policy.revocations_url == policy.revocations_url and hasattr(kept, "refresh") else None
    if old_policy.revocations_url is None and old_policy.store_path == policy.store_path:
        return kept if old_policy.refresh == policy.refresh else None
    return None


def close_revocations(revocations: Any) -> None:
    """Let go of a revocation list nobody checks against any more (its watcher thread, its file)."""
    close = getattr(revocations, "close", None)
    if close is not None:
        close()


def build_credentials(settings: Settings, options: GatewaySettings) -> CredentialResolver | None:
    """The vault's credential resolver when ``[gateway.vault]`` is configured, else ``None``."""
    if options.vault is None:
        return None
    from gtl_nb.gateway.vault_credentials import VaultCredentials, VaultSettings

    config = settings.config
    environ: Any = config.environ if config is not None and config.environ is not None else os.environ
    vault = VaultSettings.from_table(options.vault, base=_base_dir(settings), environ=environ)
    fallback = configured_fallback(settings)
    return VaultCredentials.from_settings(vault, fallback=fallback, deployments=settings.deployments)


def configured_fallback(settings: Settings) -> CredentialResolver | None:
    """The configuration's own credential sources, for the deployments the vault's key table does not name."""
    config = settings.config
    if config is None:
        return None
    return ConfiguredCredentials(config.rebuild_deployment, config.credential_sources, environ=config.environ)


def check_exposure(options: GatewaySettings) -> None:
    """Refuse to serve beyond loopback without checking tokens (see the module docstring)."""
    if options.auth == "jwt":
        return
    for listener in options.listeners:
        if not is_loopback(listener.host):
            raise ConfigurationError(
                f'[gateway] auth = "{options.auth}" checks no GhostToken, so [gateway.{listener.transport}] may not '
                f'listen on {listener.host}: anyone reaching it would spend the provider keys; use auth = "jwt" '
                "([gateway.jwt], docs/tokens.md) or a loopback address"
            )
