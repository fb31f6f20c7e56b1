"""The OpenAI-compatible endpoints: ``POST /v1/chat/completions``, ``POST /v1/responses``, and a clear 404
for what GTL cannot serve.

``POST /v1/chat/completions`` maps the body to a GTL request (``openai_request``), runs it as one
session of the listener (``runner``) and answers a ``chat.completion`` object or, with ``stream:
true``, ``chat.completion.chunk`` events ending with ``data: [DONE]`` (``openai_response``).
``POST /v1/responses`` does the same with the Responses API (``responses_request``,
``responses_response``): a ``response`` object, or its ``response.*`` events. The key is
``Authorization: Bearer <GhostToken>`` (``intake``).

``/v1/embeddings`` and ``/v1/completions`` (and what lies under them) answer ``404`` in OpenAI's error
shape: GTL has no message for embeddings or bare-prompt completions, so there is nothing to translate
them into. What lies under ``/v1/responses`` (retrieve, delete, cancel, input items) is a ``404`` too:
the gateway stores no responses (each answers ``store: false``).

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``, with the status the SDK
turns into its own exception class (``ERRORS``; docs/gateway.md has the same table). Every error
also says ``x-should-retry`` (the GTL error's ``retryable``), which the SDK obeys before its own
rules, and ``retry-after`` when the error has one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgspec
from starlette.responses import RedirectResponse

from gtl_nb.engine.core import Engine
from gtl_nb.gateway.compat import intake
from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.gateway.compat.openai_request import chat_request
from gtl_nb.gateway.compat.openai_response import ChunkEncoder, completion_object
from gtl_nb.gateway.compat.replay_state import restored
from gtl_nb.gateway.compat.reply import Reply, error_headers, json_reply, retried_already, try_later
from gtl_nb.gateway.compat.responses_request import responses_request
from gtl_nb.gateway.compat.responses_response import ResponseEventEncoder, response_object
from gtl_nb.gateway.compat.runner import EventEncoder, Refuse, SessionRunner, StreamedSession, collect
from gtl_nb.gateway.offload import converted
from gtl_nb.gateway.refusals import REFUSED_BEFORE_START, UNCHECKABLE_RETRY_AFTER, GatewayStopping, TokenUncheckable
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.ids import unique_hex
from gtl_nb.protocol.errors import AuthenticationError, FrameTooLargeError, GTLError, OverloadedError
from gtl_nb.protocol.messages import CompletionRequest, Error
from gtl_nb.protocol.session import Transcript
from gtl_nb.providers.base import ONE_CALL_PARAM

__all__ = ["ERRORS", "UNSUPPORTED", "OpenAIEndpoints", "error_body", "error_fields", "error_reply"]

ERRORS: Mapping[str, tuple[int, str, str | None]] = MappingProxyType(
    {
        # GTL code: (status, error.type, error.code)
        "INVALID_REQUEST": (400, "invalid_request_error", None),
        "CONTEXT_LENGTH_EXCEEDED": (400, "invalid_request_error", "context_length_exceeded"),
        "CONTENT_FILTERED": (400, "invalid_request_error", "content_filter"),
        "FORBIDDEN": (403, "request_forbidden", "forbidden"),
        "MODEL_NOT_FOUND": (404, "invalid_request_error", "model_not_found"),
        "RATE_LIMIT": (429, "requests", "rate_limit_exceeded"),
        "BUDGET_EXCEEDED": (429, "insufficient_quota", "insufficient_quota"),
        "INTERNAL": (500, "server_error", None),
        # a provider refused the gateway's key: the caller's own key was accepted (else the 401 below)
        "AUTH_FAILED": (502, "server_error", "upstream_authentication_failed"),
        "PROVIDER_UNAVAILABLE": (502, "server_error", "provider_unavailable"),
        "OVERLOADED": (503, "server_error", "overloaded"),
        "CANCELLED": (503, "server_error", "cancelled"),  # only a shutdown cancels a session whose caller waits
        "TIMEOUT": (504, "server_error", "timeout"),
    }
)
"""How a GTL error code is answered: the status picks the SDK's exception class (400 ``BadRequestError``,
403 ``PermissionDeniedError``, 404 ``NotFoundError``, 429 ``RateLimitError``, 5xx ``InternalServerError``).
Before a session runs: a refused key is ``401`` ``invalid_api_key`` (``AuthenticationError``), a body
over ``max_frame_bytes`` is ``400`` ``request_too_large``, a body that is not a request ``400``."""

UNSUPPORTED: Mapping[str, str] = MappingProxyType(
    {
        "embeddings": "GTL has no message for embeddings, so this gateway cannot serve /v1/embeddings",
        "completions": "GTL has no message for legacy prompt completions, so this gateway cannot serve /v1/completions",
    }
)
"""The OpenAI paths answered ``404`` (with what lies under them), and why."""

_SERVED = "; it serves POST /v1/chat/completions, POST /v1/responses, POST /v1/messages and GET /v1/models"


def _answered_as(error: Error) -> tuple[int, str, str | None]:
    """``error``'s row of ``ERRORS``. A provider's ``RATE_LIMIT`` that is not retryable is a quota used
    up (OpenAI's own ``insufficient_quota``, Bedrock's ``ServiceQuotaExceededException``, Gemini's daily
    quota): waiting a little will not help, so it is answered as OpenAI answers it — and as the gateway's
    own budgets are — ``insufficient_quota``, type and code, never ``rate_limit_exceeded``, which a caller
    reads as "wait"."""
    if error.code == "RATE_LIMIT" and not error.retryable:
        return ERRORS["BUDGET_EXCEEDED"]
    return ERRORS.get(error.code, ERRORS["INTERNAL"])


def error_fields(
    error: Error, *, param: str | None = None, code: str | None = None, kind: str | None = None
) -> dict[str, Any]:
    """The fields of OpenAI's error object for a GTL ``error``: ``message``, ``type``, ``param``, ``code``
    (``code`` and ``kind``, its ``type``, override the table's)."""
    _, table_kind, table_code = _answered_as(error)
    return {"message": error.message, "type": kind or table_kind, "param": param, "code": code or table_code}


def error_body(error: Error, *, param: str | None = None, code: str | None = None, kind: str | None = None) -> bytes:
    """OpenAI's error object for a GTL ``error`` (``error_fields``), as the body of an answer."""
    return msgspec.json.encode({"error": error_fields(error, param=param, code=code, kind=kind)})


_NAMED_PARAMS = frozenset(
    ("stop", "max_tokens", "temperature", "top_p", "tools", "tool_choice", "response_format", ONE_CALL_PARAM)
)
"""Parameters the engine's refusals name first (``stop: Bedrock's Converse takes …``): OpenAI's ``param``."""


def _param_named(message: str) -> str | None:
    """The parameter an engine refusal names before its first colon, when it is one of ``_NAMED_PARAMS``."""
    name, colon, _ = message.partition(": ")
    return name if colon and name in _NAMED_PARAMS else None


def _as_named(error: Error, names: Mapping[str, str]) -> tuple[Error, str | None]:
    """An engine refusal, and the parameter it names, said as the request named that parameter."""
    param = _param_named(error.message)
    if param is not None and names.get(param, param) != param:  # said as the request named it, there too
        error = msgspec.structs.replace(error, message=error.message.replace(param, names[param], 1))
        param = names[param]
    return error, param


def error_reply(
    error: Error,
    *,
    status: int | None = None,
    param: str | None = None,
    code: str | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    retried: bool = False,
    max_tokens_param: str = "max_tokens",
    renamed: Mapping[str, str] | None = None,
) -> Reply:
    """The whole answer for a GTL ``error``: its status from ``ERRORS`` unless given; ``retried``: the
    gateway tried again already (``reply.error_headers``); ``max_tokens_param``: what the request called
    its limit (``max_completion_tokens``), which an engine refusal of ``max_tokens`` names; ``renamed``:
    what the request called the other parameters an engine refusal names (the Responses API's
    ``text.format`` for ``response_format``)."""
    status = status or (503 if try_later(error) else _answered_as(error)[0])
    if param is None and error.code == "INVALID_REQUEST":
        names = {"max_tokens": max_tokens_param, ONE_CALL_PARAM: "parallel_tool_calls", **(renamed or {})}
        error, param = _as_named(error, names)
    extra = {**error_headers(error, retried=retried), **(headers or {})}
    if error.session_id:
        extra["x-request-id"] = error.session_id
    return Reply(status, error_body(error, param=param, code=code, kind=kind), {"cache-control": "no-store", **extra})


def refusal(exc: GTLError) -> Reply:
    """The answer for an error raised before a session ran (the key, the body)."""
    if isinstance(exc, TokenUncheckable):  # the gateway's trouble, not the key's: 503, retried (another replica)
        return error_reply(exc.to_event(), status=503, code="revocations_unreachable", headers=UNCHECKABLE_RETRY_AFTER)
    if isinstance(exc, AuthenticationError):
        # OpenAI's own answer to a wrong key: 401, invalid_request_error, invalid_api_key
        refused = exc.to_event()
        bearer = {"www-authenticate": "Bearer"}
        return error_reply(refused, status=401, code="invalid_api_key", kind="invalid_request_error", headers=bearer)
    if isinstance(exc, FrameTooLargeError):
        return error_reply(exc.to_event(), status=400, code="request_too_large")
    if isinstance(exc, intake.UnsupportedContentType):  # OpenAI's own word for it
        return error_reply(exc.to_event(), status=400, code="unsupported_content_type")
    if isinstance(exc, OverloadedError):  # the caller's own sessions at their cap: a 429 (RateLimitError), not a 503
        return error_reply(exc.to_event(), status=429, kind="requests", code="too_many_sessions")
    if isinstance(exc, GatewayStopping):  # the gateway is stopping: 503, which the SDK retries (another replica)
        return error_reply(exc.to_event(), status=503, code="shutting_down")
    return error_reply(exc.to_event(), param=exc.param if isinstance(exc, FieldError) else None)


@dataclass(frozen=True)
class _Asked:
    """A request read for one of the two OpenAI endpoints: the GTL request, and how its answer is written."""

    request: CompletionRequest
    encoder: Callable[[int], EventEncoder]  # a stream's encoder, given the answer's ``created``
    answer: Callable[[Transcript, int], dict[str, Any]]  # the whole answer of a session that ended with ``done``
    refuse: Refuse  # the whole answer for an error (``error_reply`` with the request's parameter names)


def _chat(body: dict[str, Any], session_id: str) -> _Asked:
    chat = chat_request(body, session_id)
    model, include_usage = chat.request.model, chat.include_usage
    return _Asked(
        restored(chat.request),
        encoder=lambda created: ChunkEncoder(
            session_id, model=model, created=created, include_usage=include_usage, error_body=error_body
        ),
        answer=lambda transcript, created: completion_object(transcript, model=model, created=created),
        refuse=functools.partial(error_reply, max_tokens_param=chat.max_tokens_param),
    )


_RESPONSES_NAMES = MappingProxyType({"max_tokens": "max_output_tokens", "response_format": "text.format"})
"""What the Responses API calls the parameters an engine refusal names."""


def _responses(body: dict[str, Any], session_id: str) -> _Asked:
    asked = responses_request(body, session_id)
    model, settings = asked.request.model, asked.settings
    return _Asked(
        restored(asked.request),
        encoder=lambda created: ResponseEventEncoder(
            session_id, model=model, created=created, settings=settings, error_fields=error_fields
        ),
        answer=lambda transcript, created: response_object(transcript, model=model, created=created, settings=settings),
        refuse=functools.partial(error_reply, renamed=_RESPONSES_NAMES),
    )


class OpenAIEndpoints:
    """The OpenAI-compatible handlers of one listener."""

    def __init__(self, engine: Engine, *, authenticate: Authenticate, sessions: SessionRunner, max_bytes: int) -> None:
        self.engine = engine
        self.authenticate = authenticate
        self.sessions = sessions
        self.max_bytes = max_bytes

    async def chat_completions(self, request: Any) -> Any:
        """``POST /v1/chat/completions``."""
        return await self._serve(request, f"chatcmpl-{unique_hex()}", _chat)

    async def responses(self, request: Any) -> Any:
        """``POST /v1/responses``."""
        return await self._serve(request, f"resp_{unique_hex()}", _responses)

    async def _serve(self, request: Any, session_id: str, read: Callable[[dict[str, Any], str], _Asked]) -> Any:
        """One completion request of either endpoint, its body read by ``read``: one GTL session."""
        try:
            context = intake.authenticated(self.authenticate, intake.bearer(request.headers), request, api="openai")
            body, size = await intake.read_json(request, self.max_bytes)
        except GTLError as exc:
            return refusal(exc)
        try:
            asked = await converted(size, read, body, session_id)  # (a large body: in a thread)
        except GTLError as exc:  # a completion request refused for what it asks: its ledger row, then the 400
            return refusal(await intake.record_refused(self.sessions, body, session_id, context, exc))
        created = int(time.time())
        if asked.request.stream:
            return StreamedSession(
                self.sessions,
                asked.request,
                context,
                encoder=asked.encoder(created),
                refuse=asked.refuse,
                refused=refusal,
                headers={"x-request-id": session_id},
            )
        try:
            transcript = await collect(self.sessions, asked.request, context, request.receive)
        except REFUSED_BEFORE_START as exc:  # refused before it started (the principal's cap, the stop)
            exc.session_id = session_id
            return refusal(exc)
        if transcript.done is None:
            error = transcript.error or Error(session_id=session_id, code="INTERNAL", message="the session ended early")
            return asked.refuse(error, retried=retried_already(transcript.statuses))
        return json_reply(200, asked.answer(transcript, created), {"x-request-id": session_id})

    async def unsupported(self, request: Any) -> Any:
        """``/v1/embeddings``, ``/v1/completions``: 404, and why."""
        name = request.url.path.removeprefix("/v1/").split("/", 1)[0]
        message = UNSUPPORTED.get(name, f"this gateway does not serve {request.url.path}") + _SERVED
        error = Error(session_id="", code="MODEL_NOT_FOUND", message=message)
        return error_reply(error, status=404, code="unsupported_endpoint")

    async def stored_completions(self, request: Any) -> Any:
        """Any other method on ``/v1/chat/completions``, and anything under it (OpenAI's stored chat
        completions: list, retrieve, update, delete): 405 or 404 in OpenAI's shape, and why."""
        stored = "GTL has no message for stored chat completions, and this gateway stores none"
        return _stored(request, "/v1/chat/completions", stored)

    async def stored_responses(self, request: Any) -> Any:
        """Any other method on ``/v1/responses``, and anything under it (retrieve, delete, cancel,
        ``input_items``, ``input_tokens``, ``compact``): 405 or 404 in OpenAI's shape, and why."""
        stored = (
            "this gateway stores no responses (each is answered with store: false), so none can be retrieved, "
            "cancelled or deleted; keep the answer you were given, and send earlier turns in input"
        )
        return _stored(request, "/v1/responses", stored)


def _stored(request: Any, endpoint: str, stored: str) -> Any:
    """A wrong method on ``endpoint`` (405, ``Allow: POST``), or a path under it (404), and why: ``stored``."""
    path = request.url.path
    if path == endpoint:
        message = f"{request.method} {path} is not served: {stored}; use POST {path}"
        if request.method == "OPTIONS":  # a browser's CORS preflight: no web page is served cross-origin
            message = (
                f"OPTIONS {path} is not served: this gateway answers no CORS preflight, so a web page on "
                "another origin cannot call it; call it from a server, a notebook or a script"
            )
        error = Error(session_id="", code="INVALID_REQUEST", message=message)
        return error_reply(error, status=405, code="method_not_allowed", headers={"allow": "POST"})
    if not request.path_params.get("rest"):  # ``/v1/chat/completions/``: where the router's slash redirect sent it
        return RedirectResponse(request.url.replace(path=path.rstrip("/")), status_code=307)
    error = Error(
        session_id="", code="MODEL_NOT_FOUND", message=f"{request.method} {path} is not served: {stored}{_SERVED}"
    )
    return error_reply(error, status=404, code="unsupported_endpoint")
