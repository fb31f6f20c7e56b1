"""Scopes: the one table from gateway operation to the scope it needs, and the checks that raise
``PermissionDeniedError`` (``FORBIDDEN``) when a token's scopes or allow-lists do not cover a request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from gtl_nb.engine.context import RequestContext
from gtl_nb.protocol.errors import PermissionDeniedError

SCOPES: Mapping[str, str] = MappingProxyType(
    {
        "completion": "chat:write",  # run a completion_request (and cancel it on its own connection)
        "tokens.count": "chat:write",  # count a request's input tokens (POST /v1/messages/count_tokens)
        "session.read": "session:read",  # read the state of one's own sessions
        "session.cancel": "session:write",  # cancel one's own sessions (from another connection)
        "session.admin": "session:admin",  # read or cancel other principals' sessions
        "providers.list": "models:read",  # the provider list after hello
        "models.list": "models:read",  # a deployment's live model list
        "breakers.read": "models:read",  # the circuit breakers' states (which deployments answer)
        "usage.read": "usage:read",  # one's own ledger rows
        "usage.admin": "usage:admin",  # everyone's ledger rows
        "metrics.read": "metrics:read",  # GET /metrics: aggregate figures, for a Prometheus scraper
        "tools.execute": "tools:execute",  # reserved: server-side tool execution is not served yet
    }
)
"""Gateway operation → the scope a token needs for it (docs/tokens.md has the same table)."""

DOING: Mapping[str, str] = MappingProxyType(
    {
        "completion": "running a completion",
        "tokens.count": "counting tokens (POST /v1/messages/count_tokens)",
        "session.read": "reading your sessions (client.sessions())",
        "session.cancel": "cancelling a session from another connection",
        "session.admin": "reading or cancelling other users' sessions (all_users=True)",
        "providers.list": "listing the providers",
        "models.list": "listing models (client.models())",
        "breakers.read": "reading the circuit breakers (client.breakers())",
        "usage.read": "reading usage (client.usage())",
        "usage.admin": "reading other users' usage (client.usage(all_users=True), or a user=)",
        "metrics.read": "reading metrics (GET /metrics)",
        "tools.execute": "executing tools on the gateway",
    }
)
"""Gateway operation → what the caller did, as a refusal says it: the caller knows its own call, not
the gateway's name for the operation."""

IMPLIED_SCOPES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "session:admin": frozenset({"session:read", "session:write"}),
        "usage:admin": frozenset({"usage:read"}),
        # the GTL spec's example scope: reading one's own chats — their sessions and their usage
        "chat:read": frozenset({"session:read", "usage:read"}),
    }
)
"""An administrator's scope also grants the principal's own narrower one; the spec's ``chat:read``
grants reading one's own sessions and usage (it needs no operation of its own)."""

SCOPE_NAMES = frozenset(SCOPES.values()) | frozenset(IMPLIED_SCOPES)
"""The scopes this gateway gives meaning to (a token's other scopes are kept but grant nothing)."""


def has_scope(context: RequestContext, scope: str) -> bool:
    """Whether ``context`` holds ``scope``, directly or through an administrator's scope."""
    if scope in context.scopes:
        return True
    return any(scope in IMPLIED_SCOPES.get(held, ()) for held in context.scopes)


def require_scope(context: RequestContext, operation: str, *, doing: str | None = None) -> None:
    """``PermissionDeniedError`` (``FORBIDDEN``) naming the scope unless ``context`` may do ``operation``;
    the refusal says what the caller did — ``doing``, else ``DOING``'s words for the operation."""
    scope = SCOPES.get(operation)
    if scope is None:  # a programming error in the gateway, never a client's
        raise ValueError(f"unknown gateway operation {operation!r}; known: {', '.join(sorted(SCOPES))}")
    if not has_scope(context, scope):
        raise PermissionDeniedError(f"this token lacks the scope {scope!r}, needed for {doing or DOING[operation]}")


def check_allowed(context: RequestContext, deployment: str, model: str) -> None:
    """``PermissionDeniedError`` unless the token's allow-lists let it use ``model`` on ``deployment``.

    ``allowed_deployments`` lists names exactly; an ``allowed_models`` entry matches the model exactly
    or — ending in ``*`` — by prefix, and an entry with a colon ``deployment:model`` too
    (``RequestContext.allows``). ``None`` restricts nothing.
    """
    if context.allows(deployment, model):
        return
    if context.allowed_deployments is not None and deployment not in context.allowed_deployments:
        raise PermissionDeniedError(
            f"this token may not use the deployment {deployment!r}; it may use: {_listing(context.allowed_deployments)}"
        )
    raise PermissionDeniedError(
        f"this token may not use the model {model!r}; it may use: {_listing(context.allowed_models or ())}"
    )


def _listing(names: Iterable[str], most: int = 10) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    more = f" and {len(ordered) - most} more" if len(ordered) > most else ""
    return ", ".join(ordered[:most]) + more
