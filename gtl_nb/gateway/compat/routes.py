"""The compatible endpoints as Starlette routes of the HTTP listener (``compat_routes``), and ``/v1/models``."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from gtl_nb.engine.core import Engine
from gtl_nb.gateway.compat import anthropic, intake, openai
from gtl_nb.gateway.compat.models import (
    anthropic_listing,
    find_model,
    listed_times,
    model_time,
    openai_listing,
    rfc3339,
    routed_model,
    routed_owners,
)
from gtl_nb.gateway.compat.reply import Reply, json_reply
from gtl_nb.gateway.compat.runner import SessionRunner
from gtl_nb.gateway.listeners import Limits
from gtl_nb.gateway.permissions import visible_providers
from gtl_nb.gateway.scopes import require_scope
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.protocol.errors import GTLError, InvalidRequestError, ModelNotFoundError
from gtl_nb.protocol.messages import Error

__all__ = ["compat_refusal", "compat_routes"]

_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]  # (and HEAD, added with GET)
_BUT_POST = [method for method in _ANY_METHOD if method != "POST"]
_BUT_GET = [method for method in _ANY_METHOD if method != "GET"]


def compat_routes(
    engine: Engine, *, authenticate: Authenticate, sessions: SessionRunner, limits: Limits
) -> list[Route]:
    """The OpenAI- and Anthropic-compatible routes, on the listener's ``authenticate`` and session runner."""
    chat = openai.OpenAIEndpoints(
        engine, authenticate=authenticate, sessions=sessions, max_bytes=limits.max_frame_bytes
    )
    messages = anthropic.AnthropicEndpoints(
        engine, authenticate=authenticate, sessions=sessions, max_bytes=limits.max_frame_bytes
    )
    listing = _Models(engine, authenticate)
    routes = [
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/responses", chat.responses, methods=["POST"]),
        Route("/v1/messages", messages.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages.count_tokens, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages.not_allowed, methods=_BUT_POST),
        Route("/v1/messages/{rest:path}", messages.unsupported, methods=_ANY_METHOD),
        Route("/v1/models", listing.list, methods=["GET"]),
        Route("/v1/models/{model:path}", listing.retrieve, methods=["GET"]),
        # a wrong method on a compatible path is refused in that API's shape, which its SDK can read
        Route("/v1/chat/completions", chat.stored_completions, methods=_BUT_POST),
        Route("/v1/chat/completions/{rest:path}", chat.stored_completions, methods=_ANY_METHOD),
        Route("/v1/responses", chat.stored_responses, methods=_BUT_POST),
        Route("/v1/responses/{rest:path}", chat.stored_responses, methods=_ANY_METHOD),
        Route("/v1/messages", messages.not_allowed, methods=_BUT_POST),
        Route("/v1/models", listing.not_allowed, methods=_BUT_GET),
        Route("/v1/models/{model:path}", listing.not_allowed, methods=_BUT_GET),
    ]
    for name in openai.UNSUPPORTED:
        routes.append(Route(f"/v1/{name}", chat.unsupported, methods=_ANY_METHOD))
        routes.append(Route(f"/v1/{name}/{{rest:path}}", chat.unsupported, methods=_ANY_METHOD))
    return routes


class _Models:
    """``GET /v1/models`` and ``GET /v1/models/{id}``, shaped for whichever SDK asks (``compat.models``)."""

    def __init__(self, engine: Engine, authenticate: Authenticate) -> None:
        self.engine = engine
        self.authenticate = authenticate

    async def list(self, request: Any) -> Any:
        styled = _is_anthropic(request)
        try:
            context = intake.authenticated(
                self.authenticate, intake.api_key(request.headers), request, api="anthropic" if styled else "openai"
            )
            # asked for outright, the list is refused without the scope (an empty one would read as "serves
            # nothing"); the GTL provider list a client reads on connecting stays empty instead
            require_scope(context, "models.list", doing="listing models (GET /v1/models)")
        except GTLError as exc:
            return compat_refusal(exc, styled)
        infos = visible_providers(self.engine, context)  # what this token may see, as on /v1/gtl/providers
        owners, times = routed_owners(self.engine, context), await listed_times(self.engine, context, infos)
        if not styled:
            return json_reply(200, openai_listing(infos, owners, times))
        try:
            return json_reply(200, anthropic_listing(infos, request.query_params, owners, times))
        except ValueError as exc:
            return compat_refusal(InvalidRequestError(str(exc)), styled)

    def _listed_name(self, deployment: str, name: str) -> str | None:
        """The catalog's name of the entry ``name`` is an alias of, at ``deployment``'s provider type, or
        ``None``. Exactly, as requests are routed: no case folding, no dated-id rule (a name chat would
        refuse must not be found here)."""
        configured = self.engine.deployments.get(deployment)
        catalog = getattr(self.engine, "catalog", None)
        if configured is None or catalog is None:
            return None
        return next((entry.name for entry in catalog.entries(configured.type) if name in entry.aliases), None)

    async def retrieve(self, request: Any) -> Any:
        styled = _is_anthropic(request)
        try:
            context = intake.authenticated(
                self.authenticate, intake.api_key(request.headers), request, api="anthropic" if styled else "openai"
            )
            require_scope(context, "models.list", doing="reading a model (GET /v1/models/{model})")
            asked = request.path_params["model"]
            owners, infos = routed_owners(self.engine, context), visible_providers(self.engine, context)
            found = find_model(infos, asked, self._listed_name, owners)
            if found is None:  # not listed, and still a name a completion is served under (routing's ways)
                found = await routed_model(self.engine, context, asked)
            owning = [info for info in infos if info.provider in found[1].split(",")]  # (only their lists)
            made = model_time(*found, await listed_times(self.engine, context, owning))
        except ModelNotFoundError as exc:
            return anthropic.refusal(exc) if styled else openai.error_reply(exc.to_event(), param="model")
        except GTLError as exc:
            return compat_refusal(exc, styled)
        name, owner = found
        if styled:
            return json_reply(200, {"type": "model", "id": name, "display_name": name, "created_at": rfc3339(made)})
        return json_reply(200, {"id": name, "object": "model", "created": made, "owned_by": owner})

    async def not_allowed(self, request: Any) -> Any:
        """Any method but GET on ``/v1/models`` and under it: 405, shaped for whichever SDK asks."""
        path = request.url.path
        use = path if request.path_params.get("model") else "/v1/models"  # (``/v1/models/`` names no model)
        message = f"{request.method} {path} is not served; use GET {use}"
        error = Error(session_id="", code="INVALID_REQUEST", message=message)
        allow = {"allow": "GET, HEAD"}
        if _is_anthropic(request):
            return anthropic.error_reply(error, status=405, headers=allow)
        return openai.error_reply(error, status=405, code="method_not_allowed", headers=allow)


def _is_anthropic(request: Any) -> bool:
    """The Anthropic SDK always sends ``anthropic-version``; the OpenAI SDK never does."""
    return "anthropic-version" in request.headers


def compat_refusal(exc: GTLError, anthropic_style: bool) -> Reply:
    """A refusal before any session, in Anthropic's error shape or OpenAI's."""
    return anthropic.refusal(exc) if anthropic_style else openai.refusal(exc)
