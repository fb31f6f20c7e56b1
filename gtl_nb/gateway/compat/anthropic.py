"""The Anthropic-compatible endpoint: ``POST /v1/messages``, and a clear 404 for the rest of that API.

``POST /v1/messages`` maps the body to a GTL request (``anthropic_request``), runs it as one session
of the listener (``runner``) and answers a ``message`` object or, with ``stream: true``, the
Messages event stream (``anthropic_response``). The key is ``x-api-key: <GhostToken>`` or
``Authorization: Bearer <GhostToken>`` (``intake``); ``anthropic-version`` and ``anthropic-beta``
are accepted whatever they say.

``POST /v1/messages/count_tokens`` reads the same body (``anthropic_request.count_request``: no
``max_tokens``), with the same key, scope (``chat:write``: a count is the first step of a completion,
and a token that may not run one learns nothing from sizing one), routing and allow-lists, and answers
``{"input_tokens": N}`` from ``Engine.count_tokens``; its ``gtl-token-count`` header says ``exact`` (the
provider counted: Anthropic's or Gemini's own count, echo's) or ``estimate`` (the gateway's, for a provider whose
API has no counting call). Other paths under ``/v1/messages/`` (batches) answer 404.

Errors are Anthropic's ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the
status the SDK turns into its own exception class (``ERRORS``; docs/gateway.md has the same table),
plus ``x-should-retry`` and, when known, ``retry-after``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.gateway.compat import intake
from gtl_nb.gateway.compat.anthropic_request import count_request, messages_request
from gtl_nb.gateway.compat.anthropic_response import MessageEncoder, message_object
from gtl_nb.gateway.compat.models import not_listed, routed_model
from gtl_nb.gateway.compat.replay_state import restored
from gtl_nb.gateway.compat.reply import Reply, error_headers, json_reply, retried_already, try_later
from gtl_nb.gateway.compat.runner import SessionRunner, StreamedSession, collect
from gtl_nb.gateway.compat.thinking import NATIVE_KEYS, thinking_omitted
from gtl_nb.gateway.offload import converted
from gtl_nb.gateway.refusals import REFUSED_BEFORE_START, UNCHECKABLE_RETRY_AFTER, GatewayStopping, TokenUncheckable
from gtl_nb.gateway.scopes import SCOPES, has_scope, require_scope
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.ids import unique_hex
from gtl_nb.protocol.errors import (
    AuthenticationError,
    FrameTooLargeError,
    GTLError,
    ModelNotFoundError,
    OverloadedError,
)
from gtl_nb.protocol.messages import CompletionRequest, Error
from gtl_nb.providers.base import ONE_CALL_PARAM

__all__ = ["COUNT_HEADER", "ERRORS", "AnthropicEndpoints", "error_object", "error_reply"]

COUNT_HEADER = "gtl-token-count"
"""The header of a token count's answer: ``exact`` (the provider's own count) or ``estimate`` (the gateway's)."""

ERRORS: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        # GTL code: (status, error.type)
        "INVALID_REQUEST": (400, "invalid_request_error"),
        "CONTEXT_LENGTH_EXCEEDED": (400, "invalid_request_error"),  # Anthropic's own "prompt is too long" is a 400
        "CONTENT_FILTERED": (400, "invalid_request_error"),
        "FORBIDDEN": (403, "permission_error"),
        "MODEL_NOT_FOUND": (404, "not_found_error"),
        "RATE_LIMIT": (429, "rate_limit_error"),
        "BUDGET_EXCEEDED": (429, "rate_limit_error"),
        "INTERNAL": (500, "api_error"),
        # a provider refused the gateway's key: the caller's own key was accepted (else the 401 below)
        "AUTH_FAILED": (502, "api_error"),
        "PROVIDER_UNAVAILABLE": (502, "api_error"),
        "CANCELLED": (503, "api_error"),  # only a shutdown cancels a session whose caller waits
        "TIMEOUT": (504, "timeout_error"),
        "OVERLOADED": (529, "overloaded_error"),  # Anthropic's own status for it
    }
)
"""How a GTL error code is answered: the status picks the SDK's exception class (400 ``BadRequestError``,
403 ``PermissionDeniedError``, 404 ``NotFoundError``, 429 ``RateLimitError``, 500/502 ``InternalServerError``,
503 ``ServiceUnavailableError``, 504 ``GatewayTimeoutError``, 529 ``OverloadedError``). Before a session
runs: a refused key is ``401`` ``authentication_error`` (``AuthenticationError``), a body over
``max_frame_bytes`` is ``413`` ``request_too_large`` (``ContentTooLargeError``), a body that is not a
request ``400``."""


_BILLING = (402, "billing_error")


def _answered_as(error: Error) -> tuple[int, str]:
    """``error``'s row of ``ERRORS``. A provider's ``RATE_LIMIT`` that is not retryable is the account's
    credit or quota used up (Anthropic's own 402 ``billing_error`` and 400 "Your credit balance is too
    low", OpenAI's ``insufficient_quota``, Bedrock's ``ServiceQuotaExceededException``, Gemini's daily
    quota): waiting will not help, so it is Anthropic's ``402`` ``billing_error`` (the SDK's
    ``PaymentRequiredError``, never retried), not a ``429`` ``rate_limit_error`` that says "wait", nor a
    ``400`` that blames the request. The gateway's own refusal (a principal's ``requests_per_minute = 0``:
    no ``provider``) is no bill: a ``429`` as every other limit of the gateway's."""
    if error.code == "RATE_LIMIT" and not error.retryable and error.provider is not None:
        return _BILLING
    return ERRORS.get(error.code, ERRORS["INTERNAL"])


def error_object(error: Error, *, kind: str | None = None) -> dict[str, Any]:
    """Anthropic's inner error object for a GTL ``error``."""
    return {"type": kind or _answered_as(error)[1], "message": error.message}


_ONE_CALL_REFUSAL = f"{ONE_CALL_PARAM}: "


def error_reply(
    error: Error,
    *,
    status: int | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    retried: bool = False,
) -> Reply:
    """The whole answer for a GTL ``error``: its status from ``ERRORS`` unless given; ``retried``: the
    gateway tried again already (``reply.error_headers``)."""
    status = status or (503 if try_later(error) else _answered_as(error)[0])
    if error.code == "INVALID_REQUEST" and error.message.startswith(_ONE_CALL_REFUSAL):  # as the request said it
        message = "tool_choice.disable_parallel_tool_use: " + error.message[len(_ONE_CALL_REFUSAL) :]
        error = msgspec.structs.replace(error, message=message)
    body: dict[str, Any] = {"type": "error", "error": error_object(error, kind=kind)}
    headers = {**error_headers(error, retried=retried), **(headers or {})}
    if error.session_id:
        body["request_id"] = headers["request-id"] = error.session_id
    return json_reply(status, body, headers)


def refusal(exc: GTLError) -> Reply:
    """The answer for an error raised before a session ran (the key, the body)."""
    if isinstance(exc, TokenUncheckable):  # the gateway's trouble, not the key's: 503, retried (another replica)
        return error_reply(exc.to_event(), status=503, kind="api_error", headers=UNCHECKABLE_RETRY_AFTER)
    if isinstance(exc, AuthenticationError):
        return error_reply(exc.to_event(), status=401, kind="authentication_error")
    if isinstance(exc, FrameTooLargeError):
        return error_reply(exc.to_event(), status=413, kind="request_too_large")
    if isinstance(exc, OverloadedError):  # the caller's own sessions at their cap: a 429 (RateLimitError), not a 529
        return error_reply(exc.to_event(), status=429, kind="rate_limit_error")
    if isinstance(exc, GatewayStopping):  # the gateway is stopping: 503 (ServiceUnavailableError, retried)
        return error_reply(exc.to_event(), status=503, kind="api_error")
    return error_reply(exc.to_event())


def _read(body: dict[str, Any], session_id: str) -> CompletionRequest:
    """The GTL request of a Messages body, the replay state on its tool call ids restored (``replay_state``)."""
    return restored(messages_request(body, session_id))


async def _served(engine: Engine, context: RequestContext, model: str) -> None:
    """``ModelNotFoundError`` unless a completion naming ``model`` would be served (``routed_model``); its
    "did you mean" only to a token that may list models, as a completion's (``Engine._visible``)."""
    try:
        await routed_model(engine, context, model)
    except ModelNotFoundError:
        if has_scope(context, SCOPES["models.list"]):
            raise
        raise not_listed(model) from None


def _read_count(body: dict[str, Any], request_id: str) -> CompletionRequest:
    """The GTL request a count body describes, the replay state on its tool call ids restored."""
    return restored(count_request(body, request_id))


class AnthropicEndpoints:
    """The Anthropic-compatible handlers of one listener."""

    def __init__(self, engine: Engine, *, authenticate: Authenticate, sessions: SessionRunner, max_bytes: int) -> None:
        self.engine = engine
        self.authenticate = authenticate
        self.sessions = sessions
        self.max_bytes = max_bytes

    async def messages(self, request: Any) -> Any:
        """``POST /v1/messages``."""
        session_id = f"msg_{unique_hex()}"
        try:
            context = intake.authenticated(self.authenticate, intake.api_key(request.headers), request, api="anthropic")
            body, size = await intake.read_json(request, self.max_bytes, dotted=True)
        except GTLError as exc:
            return refusal(exc)
        try:
            message = await converted(size, _read, body, session_id)  # (a large body: in a thread)
        except GTLError as exc:  # a completion request refused for what it asks: its ledger row, then the 400
            return refusal(await intake.record_refused(self.sessions, body, session_id, context, exc))
        if message.stream:
            encoder = MessageEncoder(
                session_id, model=message.model, error_object=error_object, thinking_omitted=thinking_omitted(body)
            )
            return StreamedSession(
                self.sessions,
                message,
                context,
                encoder=encoder,
                refuse=error_reply,
                refused=refusal,
                headers={"request-id": session_id},
                native=NATIVE_KEYS,
            )
        try:
            transcript = await collect(self.sessions, message, context, request.receive, native=NATIVE_KEYS)
        except REFUSED_BEFORE_START as exc:  # refused before it started (the principal's cap, the stop)
            exc.session_id = session_id
            return refusal(exc)
        if transcript.done is None:
            error = transcript.error or Error(session_id=session_id, code="INTERNAL", message="the session ended early")
            return error_reply(error, retried=retried_already(transcript.statuses))
        answer = message_object(transcript, model=message.model, thinking_omitted=thinking_omitted(body))
        return json_reply(200, answer, {"request-id": session_id})

    async def count_tokens(self, request: Any) -> Any:
        """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, exact or estimated (module docstring).
        No session runs and no ledger row is written: nothing is generated (docs/ledger.md)."""
        request_id = f"req_{unique_hex()}"
        try:
            context = intake.authenticated(self.authenticate, intake.api_key(request.headers), request, api="anthropic")
            require_scope(context, "tokens.count")
            body, size = await intake.read_json(request, self.max_bytes, dotted=True)
            asked = await converted(size, _read_count, body, request_id)  # (a large body: in a thread)
        except GTLError as exc:  # the caller's key, scope or body
            exc.session_id = request_id
            return refusal(exc)
        try:  # from here on, answered as /v1/messages answers a session's error (a provider's 529 is a 529)
            counted = await self.engine.count_tokens(asked, context=context)
            if not counted.exact:  # nobody was asked: a name routing alone does not vouch for is checked
                # as GET /v1/models/{id} checks it (an unknown name at the local-model deployment is a 404)
                await _served(self.engine, context, asked.model)
        except GTLError as exc:
            return error_reply(exc.to_event(request_id))
        headers = {"request-id": request_id, COUNT_HEADER: "exact" if counted.exact else "estimate"}
        return json_reply(200, {"input_tokens": counted.input_tokens}, headers)

    async def unsupported(self, request: Any) -> Any:
        """``/v1/messages/…`` (batches): 404, and why."""
        message = (
            f"this gateway does not serve {request.url.path}: GTL has no message for it; it serves "
            "POST /v1/messages, POST /v1/messages/count_tokens, POST /v1/chat/completions, POST /v1/responses "
            "and GET /v1/models"
        )
        return error_reply(Error(session_id="", code="MODEL_NOT_FOUND", message=message))

    async def not_allowed(self, request: Any) -> Any:
        """Any method but POST on ``/v1/messages`` or ``/v1/messages/count_tokens``: 405 in Anthropic's shape."""
        path = request.url.path
        message = f"{request.method} {path} is not served; use POST {path}"
        error = Error(session_id="", code="INVALID_REQUEST", message=message)
        return error_reply(error, status=405, headers={"allow": "POST"})
