"""What a caller may do on the gateway, asked in one place by every listener (the scope table is
``gateway.tokens.SCOPES``; docs/tokens.md).

* ``completion_context(context, authenticate)`` — the context an open connection's next session runs
  under (``rechecked``: narrowed when a reload took deployments from the token policy's defaults), or
  the error the session becomes (it still leaves its ledger row: ``run_session(..., refused=...)``):
  ``AUTH_FAILED`` when the token expired or was revoked after its connection opened, ``FORBIDDEN``
  when it lacks ``chat:write``; ``completion_refusal(context)`` the same error for a context just made
  from its token (an HTTP request, a gRPC call). Which deployments and models it may use the engine
  checks against the context's allow-lists.
* ``visible_providers(engine, context)`` — the provider list a caller is shown: none without
  ``models:read``, and only the deployments and models its allow-lists let it use.
* ``usage_scope(context, asked_user)`` — reading one's own rows needs ``usage:read``, anyone else's
  (or everyone's) ``usage:admin``.
"""

from __future__ import annotations

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.gateway.scopes import require_scope
from gtl_nb.protocol.errors import GTLError
from gtl_nb.protocol.messages import ModelInfo, ProviderInfo

__all__ = ["completion_context", "completion_refusal", "rechecked", "usage_scope", "visible_providers"]


def completion_refusal(context: RequestContext) -> GTLError | None:
    """Why this caller, its context just made from its token, may not start a completion at all, or
    ``None`` (an open connection's context: ``completion_context``)."""
    checked = completion_context(context, None)
    return checked if isinstance(checked, GTLError) else None


def completion_context(context: RequestContext, authenticate: object) -> RequestContext | GTLError:
    """The context an open connection's next completion runs under (``rechecked``), or the error the
    session becomes (it still leaves its ledger row: ``run_session(..., refused=...)``): ``AUTH_FAILED``
    when the token expired or was revoked after its connection opened, ``FORBIDDEN`` when it lacks
    ``chat:write``."""
    try:
        current = rechecked(context, authenticate)
        require_scope(current, "completion")
    except GTLError as exc:
        return exc
    return current


def rechecked(context: RequestContext, authenticate: object) -> RequestContext:
    """The context an open connection's next completion or query runs under: ``authenticate`` is the
    connection's authenticator, and when it can ``recheck`` a context (GhostTokens can), a token that
    expired or was revoked after the connection opened is refused here (``GTLError``), and deployments
    a reload took from the policy's defaults are taken from the context."""
    recheck = getattr(authenticate, "recheck", None)
    return context if recheck is None else recheck(context)  # type: ignore[no-any-return]


def visible_providers(engine: Engine, context: RequestContext) -> list[ProviderInfo]:
    """The gateway's provider list as this caller may see it (see the module docstring)."""
    try:
        require_scope(context, "providers.list")
    except GTLError:
        return []
    infos = engine.provider_info()
    if context.allowed_deployments is None and context.allowed_models is None:
        return infos
    shown: list[ProviderInfo] = []
    for info in infos:
        models: list[ModelInfo] = [model for model in info.models if context.allows(info.provider, model.name)]
        if models:
            shown.append(ProviderInfo(info.provider, models, info.offline, info.provider_type))
    return shown


def usage_scope(context: RequestContext, asked_user: object) -> None:
    """Check the caller may read the usage rows of ``asked_user`` (``None``: everyone's)."""
    require_scope(context, "usage.read" if asked_user == context.principal else "usage.admin")
