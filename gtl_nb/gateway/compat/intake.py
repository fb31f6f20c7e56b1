"""What a compatible endpoint does before a session: find the caller's key, authenticate it, read the body.

The GhostToken is the API key: ``Authorization: Bearer <token>`` (what the OpenAI SDK sends) or
``x-api-key: <token>`` (what the Anthropic SDK sends; it sends ``Authorization: Bearer`` when given an
``auth_token`` instead). Either is checked by the listener's own ``authenticate``, exactly as the
token of ``POST /v1/gtl``. Neither the key nor a part of it is ever put in a log line or an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.gateway.compat.duplicates import duplicated_key
from gtl_nb.gateway.compat.fields import FieldError
from gtl_nb.gateway.offload import converted
from gtl_nb.gateway.proxies import peer_text
from gtl_nb.gateway.sessions import Authenticate, authenticated_or_logged
from gtl_nb.gateway.streaming import SessionRunner
from gtl_nb.gateway.tracecontext import trace_id_from
from gtl_nb.ids import random_hex
from gtl_nb.protocol.codec import DEFAULT_MAX_DEPTH, json_problem, nesting_exceeds
from gtl_nb.protocol.errors import FrameTooLargeError, GTLError, InvalidRequestError
from gtl_nb.protocol.messages import MAX_NAME_LENGTH, CompletionRequest

__all__ = ["api_key", "authenticated", "bearer", "read_json", "record_refused"]


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or ``None``."""
    value = headers.get("authorization")
    return value[7:].strip() if value and value[:7].lower() == "bearer " else None


def api_key(headers: Mapping[str, str]) -> str | None:
    """The token of ``x-api-key`` (Anthropic's header), else of ``Authorization: Bearer``."""
    value = headers.get("x-api-key")
    return value.strip() if value else bearer(headers)


def authenticated(authenticate: Authenticate, token: str | None, request: Any, *, api: str) -> RequestContext:
    """The caller's ``RequestContext`` with its network address and the ``api`` it speaks (``"openai"`` or
    ``"anthropic"``); ``AuthenticationError`` when refused."""
    context = authenticated_or_logged(authenticate, token, peer_text(request.client))
    # a caller's W3C traceparent gives the request its trace id; without one a new one, made here as the
    # engine would make it (one dataclasses.replace of the context for both, not a second in the engine)
    trace_id = trace_id_from(request.headers.get("traceparent")) or random_hex(2)
    return dataclasses.replace(context, peer=peer_text(request.client), trace_id=trace_id, api=api)


class UnsupportedContentType(InvalidRequestError):
    """A compatible endpoint's body sent as something other than JSON."""


async def read_json(request: Any, max_bytes: int, *, dotted: bool = False) -> tuple[dict[str, Any], int]:
    """The request body as a JSON object, and its size in bytes: at most ``max_bytes`` (``FrameTooLargeError``
    beyond).

    A body said to be anything but JSON (``Content-Type`` other than ``application/json``, parameters such
    as ``charset`` aside) is refused before it is read (``UnsupportedContentType``), as OpenAI's API
    refuses it: a form or ``text/plain`` is what a web page may send without asking; no header is taken
    as JSON. The size is checked from ``Content-Length`` before anything is read, then while reading (a chunked
    body has no length); the nesting depth before parsing, so a hostile body cannot exhaust the parser.
    An object that holds a key twice is refused (``FieldError`` naming it by its path, written as the
    API writes one: ``messages[0].role``, or ``messages.0.role`` when ``dotted``): read last-wins here,
    first-wins by a proxy in front, it would be two different requests (``compat.duplicates``).
    """
    kind = request.headers.get("content-type")
    if kind is not None and kind.partition(";")[0].strip().lower() != "application/json":
        raise UnsupportedContentType(
            f"unsupported content type {kind[:100]!r}: this endpoint takes a JSON body, sent with the header "
            "Content-Type: application/json"
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise FrameTooLargeError(f"the body of {length} bytes exceeds the gateway's maximum of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise FrameTooLargeError(f"the body exceeds the gateway's maximum of {max_bytes} bytes")
    data = bytes(body)
    return await converted(len(data), _parsed, data, dotted), len(data)  # (a large body parsed in a thread)


def _parsed(data: bytes, dotted: bool) -> dict[str, Any]:
    """``read_json``'s object of ``data``: its depth, its JSON, its keys given once."""
    if nesting_exceeds(data, DEFAULT_MAX_DEPTH):
        raise InvalidRequestError(f"the body nests deeper than {DEFAULT_MAX_DEPTH} levels")
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {json_problem(exc, data)}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("the body must be a JSON object")
    try:
        twice = duplicated_key(data, value)
    except ValueError as exc:  # what msgspec read, json did not: never seen, refused rather than unchecked
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
    if twice == []:  # a body too large to name it in
        raise InvalidRequestError("a key is given twice in one object of the body; give each key once")
    if twice is not None:
        where = _path(twice, dotted=dotted)
        raise FieldError(where, f"the key {str(twice[-1])[:100]!r} is given twice in one object; give it once")
    return value


def _path(parts: list[str | int], *, dotted: bool) -> str:
    """A parameter's path as an API's error names it: ``messages[0].role`` (OpenAI), ``messages.0.role``."""
    text = ""
    for part in parts:
        if isinstance(part, int) and not dotted:
            text += f"[{part}]"
        else:
            text += f".{str(part)[:100]}" if text else str(part)[:100]
    return text


async def record_refused(
    sessions: SessionRunner, body: dict[str, Any], session_id: str, context: RequestContext, error: GTLError
) -> GTLError:
    """``error``, a refusal of the request ``body`` for what it asks (a field unknown or out of range),
    once its one ledger row and audit record are written (``gateway.refusals``): an authenticated
    caller's completion request, refused before any provider is called — its row says who asked, for
    which model, and why. ``error`` carries ``session_id`` then, so its answer names the row."""
    model = body.get("model")
    named = model if isinstance(model, str) and 0 < len(model) <= MAX_NAME_LENGTH else ""
    stand_in = CompletionRequest(session_id=session_id, model=named, messages=[], stream=body.get("stream") is True)
    await sessions.refused(stand_in, context, error)
    error.session_id = session_id
    return error
