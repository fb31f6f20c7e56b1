"""What a reload changed in place, as the reload's line names it (``gateway.reload``).

``applied_changes(old, new, token_policy=...)`` compares two ``Settings`` part by part — what
``Engine.reload`` takes — and names only the parts that differ, in the words of the configuration
file: ``2 deployments (+b, -c, ~a)``, ``[routing] strategy round_robin``, ``[routing] weights``,
``[routing.retry]``, ``[routing.breaker]`` (its thresholds), ``[timeouts]``, ``[catalog]``,
``[budgets] limits`` (the default ones), ``[budgets.users.NAME]``, ``[budgets.tenants.NAME]``, and
``token policy renewed (issuer, secret)``. A part that did not change is not named, so a reload of
an unchanged file says ``no change to apply``.

``policy_changes(old, new)`` names the ``[gateway.jwt]`` settings in which two token policies differ:
each by its key (``secret`` for a new secret, however it was given — never the secret itself),
``public keys`` for other public keys (a PEM file or a JWKS file), ``revocations`` for another
revocation list. Public keys compare by their encoded form, not by identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["NO_CHANGE", "applied_changes", "policy_changes"]

NO_CHANGE = "no change to apply"
"""What the reload's line says when nothing it can apply in place changed."""
_NAMED = 5  # budget users or tenants named one by one; more are counted

# TokenPolicy fields by the [gateway.jwt] key an operator changes for them
_POLICY_KEYS = {
    "public_keys": "public keys",
    "revocations_url": "revocations",
}


def applied_changes(old: Any, new: Any, *, token_policy: Iterable[str] = ()) -> str:
    """The changes from ``old`` to ``new`` settings that a reload applies in place, each named once
    (module docstring), or ``NO_CHANGE``; ``token_policy``: the ``[gateway.jwt]`` keys that changed."""
    parts = [
        *_deployments(old, new),
        *_routing(old.routing, new.routing),
        *(["[timeouts]"] if old.timeouts != new.timeouts else []),
        *(["[catalog]"] if dict(old.catalog_overrides) != dict(new.catalog_overrides) else []),
        *_budgets(old.budgets, new.budgets),
    ]
    keys = list(dict.fromkeys(token_policy))
    if keys:
        parts.append(f"token policy renewed ({', '.join(keys)})")
    return ", ".join(parts) or NO_CHANGE


def policy_changes(old: Any, new: Any) -> list[str]:
    """The ``[gateway.jwt]`` keys in which token policies ``old`` and ``new`` differ (module docstring)."""
    if old is None or new is None:
        return [] if old is new else ["[gateway.jwt]"]
    changed: list[str] = []
    for field in dataclasses.fields(new):
        if not field.compare:
            continue
        before, after = getattr(old, field.name, None), getattr(new, field.name)
        same = _same_keys(before, after) if field.name == "public_keys" else before == after
        if not same:
            changed.append(_POLICY_KEYS.get(field.name, field.name))
    return list(dict.fromkeys(changed))


def _deployments(old: Any, new: Any) -> list[str]:
    """``N deployments (+added, -removed, ~changed)`` when any was added, removed or changed (its own
    table or its own timeouts), else nothing."""
    added = sorted(new.deployments.keys() - old.deployments.keys())
    removed = sorted(old.deployments.keys() - new.deployments.keys())
    changed = sorted(
        name
        for name in new.deployments.keys() & old.deployments.keys()
        if new.deployments[name] != old.deployments[name]
        or old.deployment_timeouts.get(name) != new.deployment_timeouts.get(name)
    )
    marks = [f"+{name}" for name in added] + [f"-{name}" for name in removed] + [f"~{name}" for name in changed]
    if not marks:
        return []
    count = len(new.deployments)
    return [f"{count} deployment{'s' if count != 1 else ''} ({', '.join(marks)})"]


def _routing(old: Any, new: Any) -> list[str]:
    """The ``[routing]`` keys and tables that changed (the breaker's backend is a restart's: left out)."""
    parts = [f"[routing] strategy {new.strategy}"] if old.strategy != new.strategy else []
    before, after = dict(old.strategy_options), dict(new.strategy_options)
    parts += [f"[routing] {key}" for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
    if dict(old.context_fallbacks) != dict(new.context_fallbacks):
        parts.append("[routing] context_fallbacks")
    if old.retry != new.retry:
        parts.append("[routing.retry]")
    if dataclasses.replace(old.breaker, backend=new.breaker.backend) != new.breaker:
        parts.append("[routing.breaker]")
    return parts


def _budgets(old: Any, new: Any) -> list[str]:
    """The budget limits that changed: the default ones, and each user's and tenant's table (the
    backend is a restart's: left out)."""
    parts = []
    if (old.default if old is not None else None) != (new.default if new is not None else None):
        parts.append("[budgets] limits")
    for kind in ("users", "tenants"):
        before: Mapping[str, Any] = getattr(old, kind, None) or {}
        after: Mapping[str, Any] = getattr(new, kind, None) or {}
        names = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        parts += [f"[budgets.{kind}.{name}]" for name in names[:_NAMED]]
        if len(names) > _NAMED:
            parts.append(f"{len(names) - _NAMED} more [budgets.{kind}.*]")
    return parts


def _same_keys(old: Any, new: Any) -> bool:
    """Whether two tuples of ``VerificationKey`` hold the same keys (algorithm, kid, encoded key)."""
    old, new = tuple(old or ()), tuple(new or ())
    return len(old) == len(new) and all(_key_id(a) == _key_id(b) for a, b in zip(old, new, strict=True))


def _key_id(key: Any) -> tuple[Any, ...]:
    from cryptography.hazmat.primitives import serialization

    encoded = key.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return (key.algorithm, key.kid, encoded)
