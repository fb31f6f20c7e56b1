"""Who a request is for: the request context carried through budgets, ledger rows, hooks and (next)
the audit log.

``principal`` is the ``user=`` given to ``connect()`` when embedded (the operating-system user by
default) and the token's ``sub`` behind the gateway; it is never read from request fields or
``metadata``, which the caller controls.

Behind the gateway a GhostToken also carries what the principal may do (``gateway.tokens``):
``scopes``, and the allow-lists ``allowed_models`` / ``allowed_deployments`` with ``provider_keys``.
Their defaults grant no scope and restrict nothing; only the gateway checks them (embedded, the
caller already holds the keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["RequestContext"]


@dataclass(frozen=True)
class RequestContext:
    """The identity and tracing facts of one request (all optional but ``principal``)."""

    principal: str = ""
    """Who is accounted: budgets are per principal; the ledger's ``user`` column."""
    tenant: str | None = None
    """The organisation the principal belongs to (the gateway's token claim)."""
    key_id: str | None = None
    """Which credential authenticated the caller (a GhostToken's ``jti`` or key id), never the key."""
    trace_id: str | None = None
    """Joins ledger rows, audit records and logs of one request (W3C trace id when one came in)."""
    peer: str | None = None
    """The caller's network address behind the gateway; ``None`` when embedded."""
    transport: str | None = None
    """The scheme the request came over behind the gateway (``ws``, ``grpc``, …; metrics count by it)."""
    api: str | None = None
    """The API the caller speaks behind the gateway: ``"openai"`` or ``"anthropic"`` on the compatible
    endpoints, ``None`` for GTL (its errors point at that API's own ways, ``GET /v1/models``)."""
    scopes: frozenset[str] = frozenset()
    """What the principal may do (``gateway.tokens.SCOPES``); none unless a token granted them."""
    allowed_models: frozenset[str] | None = None
    """Models the principal may use (a trailing ``*`` matches a prefix); ``None``: no restriction."""
    allowed_deployments: frozenset[str] | None = None
    """Deployments the principal may use; ``None``: no restriction."""
    expires_at: float | None = None
    """When the credential behind this context stops being valid (Unix seconds; a GhostToken's ``exp``)."""
    verified_by: str | None = field(default=None, repr=False)
    """A fingerprint of the key that verified the credential (one-way, never the key): an open connection's
    later requests are refused once the gateway no longer trusts that key (a secret replaced by a reload,
    a key removed from the JWKS file)."""
    failover_after_content: bool = True
    """Whether the caller can take a failover once the answer began (GTL's ``failover`` status: discard what
    came). A compatible API's stream cannot take back what it passed on: with ``False`` a failure after
    content ends the session with that failure — the row and the metrics name the deployment that failed —
    instead of moving to a deployment whose answer could never reach the caller."""
    # a read-only mapping, left out of the hash (a mapping has none) and of the repr (a misused claim
    # could hold a real key)
    provider_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False, repr=False)
    """Deployment → the name of the stored provider key its requests use (the token's claim)."""

    def traced(self, trace_id: str) -> RequestContext:
        """This context with ``trace_id`` (what ``dataclasses.replace`` gives, without its per-call
        introspection of the fields: every embedded request takes this step). A subclass — which may
        keep its fields in slots or derive some in ``__post_init__`` — goes through ``replace``."""
        return self._with("trace_id", trace_id)

    def unrestartable(self) -> RequestContext:
        """This context for a caller that cannot take a failover once the answer began
        (``failover_after_content`` false: a compatible API's stream)."""
        return self._with("failover_after_content", False)

    def _with(self, name: str, value: Any) -> RequestContext:
        if type(self) is not RequestContext:
            return dataclasses.replace(self, **{name: value})
        copy = object.__new__(RequestContext)
        copy.__dict__.update(self.__dict__)
        copy.__dict__[name] = value
        return copy

    def allows(self, deployment: str, model: str) -> bool:
        """Whether the allow-lists let this principal use ``model`` on ``deployment``: deployments are
        named exactly; an ``allowed_models`` entry matches the model, exactly or — ending in ``*`` — by
        prefix, and an entry with a colon also ``deployment:model``. (Only such an entry reaches the
        deployment's name: ``gpt-4o*`` matched ``gpt-4o-azure:o1-pro`` by its deployment, any model of
        a deployment named like one.)"""
        if self.allowed_deployments is not None and deployment not in self.allowed_deployments:
            return False
        if self.allowed_models is None:
            return True
        qualified = f"{deployment}:{model}"
        return any(
            _matches(entry, model) or (":" in entry and _matches(entry, qualified)) for entry in self.allowed_models
        )

    def allowances(self, most: int = 10) -> str:
        """What the allow-lists let this principal use, for a refusal to name (its own lists, no one
        else's): ``"deployments a, b; models x*"``, ``"no deployment"``; ``""`` when nothing is restricted."""
        said: list[str] = []
        if self.allowed_deployments is not None:
            if not self.allowed_deployments:
                return "no deployment"
            said.append("deployments " + _first(self.allowed_deployments, most))
        if self.allowed_models is not None:
            said.append("models " + _first(self.allowed_models, most) if self.allowed_models else "no model")
        return "; ".join(said)


def _first(names: frozenset[str], most: int) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - most} more" if len(ordered) > most else ""
    return ", ".join(ordered[:most]) + more


def _matches(entry: str, name: str) -> bool:
    return name.startswith(entry[:-1]) if entry.endswith("*") else name == entry
