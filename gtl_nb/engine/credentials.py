"""Credentials asked for at request time, so a rotated key needs no restart.

A ``CredentialResolver`` turns a configured deployment into the one a request is sent with: the
same deployment with its current credentials. The default, ``ConfiguredCredentials``, keeps what
keyword arguments and the TOML file gave and reads the environment (and the AWS shared files)
again for what came from there; the gateway's key vault will be another resolver.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from gtl_nb.protocol.errors import AuthenticationError
from gtl_nb.providers.base import Deployment

__all__ = ["ConfiguredCredentials", "CredentialResolver", "StaticCredentials", "with_key"]


def with_key(credentials: CredentialResolver, deployment: Deployment, key_name: str | None) -> Deployment:
    """``deployment`` as it is sent: with its current key (``resolve``), or with the stored key ``key_name``
    a token chose (``provider_keys``), through a resolver that can choose (``resolve_for``, the gateway's
    vault) — never another key than the one named: ``AuthenticationError`` when none can be chosen."""
    if key_name is None:
        return credentials.resolve(deployment)
    choose = getattr(credentials, "resolve_for", None)
    if choose is None:
        raise AuthenticationError(f"the token names a stored key for {deployment.name!r}, but no key vault is set up")
    return choose(deployment, key_name)  # type: ignore[no-any-return]


@runtime_checkable
class CredentialResolver(Protocol):
    """Gives the deployment to send a request with, credentials current."""

    def resolve(self, deployment: Deployment) -> Deployment: ...


class StaticCredentials:
    """The deployments exactly as configured (tests, and callers that manage keys themselves)."""

    def resolve(self, deployment: Deployment) -> Deployment:
        return deployment


class ConfiguredCredentials:
    """Re-reads, per request, the credentials that came from the environment or the AWS files.

    ``rebuild(name, environ)`` is the configuration's own deployment builder (``engine.config``),
    so the precedence rules live in one place; ``watch(name)`` names the environment variables and
    files that deployment's credentials may come from. A deployment is rebuilt only when one of
    those changed since its last request, so an unchanged key costs a few dictionary look-ups.
    """

    def __init__(
        self,
        rebuild: Callable[[str, Mapping[str, str]], Deployment],
        watch: Callable[[str], tuple[tuple[str, ...], tuple[Path, ...]]],
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._rebuild = rebuild
        self._watch = watch
        self._environ = environ  # None: the live os.environ
        self._seen: dict[str, tuple[object, Deployment]] = {}
        # what to watch depends on the configuration alone (a reload builds new credentials)
        self._sources: dict[str, tuple[tuple[str, ...], tuple[Path, ...]]] = {}

    def resolve(self, deployment: Deployment) -> Deployment:
        environ = os.environ if self._environ is None else self._environ
        name = deployment.name
        sources = self._sources.get(name)
        if sources is None:
            sources = self._sources[name] = self._watch(name)
        variables, files = sources
        fingerprint = (tuple(environ.get(v) for v in variables), tuple(_mtime(p) for p in files))
        seen = self._seen.get(name)
        if seen is not None and seen[0] == fingerprint:
            return seen[1]
        current = self._rebuild(name, environ)
        self._seen[name] = (fingerprint, current)
        return current


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
