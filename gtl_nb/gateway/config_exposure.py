"""What a gateway says at start about secrets written in its configuration file.

* A file any user of the host may read (mode ``o+r``) that holds a secret — a provider's ``api_key``,
  ``aws_secret_access_key``/``aws_session_token`` or ``headers``, a key named like a secret or a password,
  a URL with a password (Redis's can only go there) — gets a warning naming the keys (never their values) and the
  ``chmod`` to run. Group-readable is fine: the shipped layout is ``root:gtl 0640``.
* A deployment given both a literal ``api_key`` and a stored key in ``[gateway.vault] keys`` uses the
  vault's (docs/vault.md, "Which key a request uses"): the literal one is never sent, and a warning says
  so, so a stale key does not sit in the file unnoticed.

Warnings only: neither stops a start (the file may be on a volume whose modes the operator cannot set).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["config_file_warnings"]

_SECRET_KEYS = frozenset({"api_key", "aws_secret_access_key", "aws_session_token"})
_SECRET_WORDS = ("secret", "password", "passwd")
_NAMES_A_PLACE = ("_env", "_file", "_path", "_name")  # secret_env names a variable, secret_file a file


def _is_secret_key(name: str) -> bool:
    lowered = name.lower()
    if lowered in _SECRET_KEYS:
        return True
    return any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(_NAMES_A_PLACE)


def _has_password(value: str) -> bool:
    if "://" not in value or "@" not in value:
        return False
    try:
        return bool(urlsplit(value).password)
    except ValueError:
        return True  # unparseable, with an @: perhaps a password; say so rather than not


def _secrets(table: Mapping[str, Any], where: str) -> Iterator[str]:
    """Where ``table`` holds a secret: ``[providers.openai] api_key``, ``[budgets] backend (a URL with a
    password)`` — names only."""
    for name, value in table.items():
        if isinstance(value, Mapping) and name == "headers" and where.startswith("providers."):
            if any(isinstance(text, str) and text for text in value.values()):
                yield f"[{where}] headers"  # a proxy's key, an Authorization header
        elif isinstance(value, Mapping):
            yield from _secrets(value, f"{where}.{name}" if where else name)
        elif isinstance(value, str) and value:
            if _is_secret_key(name):
                yield f"[{where}] {name}"
            elif _has_password(value):
                yield f"[{where}] {name} (a URL with a password)"
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str) and _has_password(item):
                    yield f"[{where}] {name} (a URL with a password)"
                    break


def _vault_keys(document: Mapping[str, Any]) -> Mapping[str, Any]:
    gateway = document.get("gateway")
    vault = gateway.get("vault") if isinstance(gateway, Mapping) else None
    keys = vault.get("keys") if isinstance(vault, Mapping) else None
    return keys if isinstance(keys, Mapping) else {}


def config_file_warnings(path: str | os.PathLike[str] | None) -> list[str]:
    """The start-up warnings for the configuration file at ``path`` — without one, the file the settings
    were read from (``$GTL_NB_CONFIG``, else the user configuration file) — none for no file, or one that
    cannot be read (loading it says why)."""
    if path is None:
        from gtl_nb.engine.config import user_config_path

        path = os.environ.get("GTL_NB_CONFIG") or user_config_path()
    file = Path(path)
    try:
        text = file.read_bytes()
        mode = file.stat().st_mode
    except OSError:
        return []
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return []
    warnings = []
    secrets = list(_secrets(document, ""))
    if secrets and os.name == "posix" and stat.S_IMODE(mode) & stat.S_IROTH:
        warnings.append(
            f"the configuration file {file} holds secrets ({', '.join(secrets)}) and every user of this host "
            f"can read it (mode {stat.S_IMODE(mode):04o}): chmod o-rwx {file} (0640, owned by root and the "
            "gateway's group), or move them out of it (the vault, an environment variable)"
        )
    providers = document.get("providers")
    if isinstance(providers, Mapping):
        for deployment, stored in _vault_keys(document).items():
            spec = providers.get(deployment)
            if isinstance(spec, Mapping) and isinstance(spec.get("api_key"), str) and spec.get("api_key"):
                warnings.append(
                    f"[providers.{deployment}] api_key is never used: [gateway.vault] keys gives {deployment!r} "
                    f"the stored key {stored!r}, which requests use instead; remove the literal api_key from "
                    f"{file}"
                )
    return warnings
