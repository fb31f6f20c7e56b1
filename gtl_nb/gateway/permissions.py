"""What a caller may do on the gateway, asked in one place by every listener (the scope table is
``gateway.tokens.SCOPES``; docs/tokens.md).

* ``completion_refusal(context, authenticate)`` — ``None``, or the error a session becomes (it still
  leaves its ledger row: ``run_session(..., refused=...)``): ``AUTH_FAILED`` when the token expired or
  was revoked after its connection opened, ``FORBIDDEN`` when it lacks ``chat:write``;
  which deployments and models it may use the engine checks against the context's allow-lists.
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

__all__ = ["completion_refusal", "usage_scope", "visible_providers"]


def completion_refusal(context: RequestContext, authenticate: object = None) -> GTLError | None:
    """Why this caller may not start a completion at all, or ``None``.

    ``authenticate`` is the connection's authenticator: when it can ``recheck`` a context (GhostTokens
    can), a token that expired or was revoked after the connection opened is refused here."""
    recheck = getattr(authenticate, "recheck", None)
    try:
        if recheck is not None:
            recheck(context)
        require_scope(context, "completion")
    except GTLError as exc:
        return exc
    return None


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
