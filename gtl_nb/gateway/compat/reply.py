"""A whole JSON answer of a compatible endpoint, and the headers an error carries for the SDKs' retry logic."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gtl_nb.protocol.messages import Error, Status

__all__ = ["SDK_WAIT_LIMIT", "Reply", "error_headers", "json_reply", "retried_already", "try_later"]


@dataclass(frozen=True)
class Reply:
    """One whole HTTP answer: status, JSON body and extra headers. An ASGI application, so a route may
    return it as its response."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_reply(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    """``value`` as a JSON answer."""
    return Reply(status, msgspec.json.encode(value), {"cache-control": "no-store", **(headers or {})})


def retried_already(statuses: Iterable[Status]) -> bool:
    """Whether the gateway tried a deployment again under its retry policy (a ``retrying`` status) before
    the session ended: its error is then the answer to every attempt that policy allowed, and an SDK
    that retried it too would multiply them (the OpenAI and Anthropic SDKs retry twice by default: nine
    calls upstream for one, against three). A failover alone does not count — the deployment it left
    may never have been called (no key for it, a request it cannot serve) — so a gateway configured not
    to retry (``max_attempts = 1``) leaves the retries to the SDK."""
    return any(status.state == "retrying" for status in statuses)


SDK_WAIT_LIMIT = 8.0
"""Seconds an SDK is asked to wait before its retry at most: the OpenAI and Anthropic SDKs' own longest
backoff. A longer ``retry-after`` (every circuit open for half a minute, a provider's long 429) is
still sent, for the caller to schedule by, but the SDK is not told to sit through it: a notebook
cell or a request handler would block that long and, on its second try, often fail anyway."""


def try_later(error: Error) -> bool:
    """Whether ``error`` is a ``PROVIDER_UNAVAILABLE`` that says when to try again (``retry_after``):
    every circuit of the request open, or a provider's failure with a ``Retry-After``. It is answered
    ``503`` with ``retry-after``, as HTTP says a service unable to serve *for now* answers (RFC 9110,
    15.6.4), not ``502``, which says the upstream's answer was bad: on every HTTP face of the gateway
    (``POST /v1/gtl`` and both compatible endpoints). Both SDKs retry a ``502`` and a ``503`` alike; what
    decides whether they do is ``x-should-retry`` (``error_headers``)."""
    return error.code == "PROVIDER_UNAVAILABLE" and error.retry_after is not None


def error_headers(error: Error, *, retried: bool = False) -> dict[str, str]:
    """``x-should-retry`` (both SDKs obey it before their own status rules) and ``retry-after``:
    ``true`` for a retryable error the gateway did not try again (``retried``: it did) whose wait is
    at most ``SDK_WAIT_LIMIT``, else ``false``."""
    wait = error.retry_after
    short = wait is None or (math.isfinite(wait) and wait <= SDK_WAIT_LIMIT)
    headers = {"x-should-retry": "true" if error.retryable and not retried and short else "false"}
    if error.retry_after is not None and math.isfinite(error.retry_after):
        headers["retry-after"] = str(max(0, math.ceil(error.retry_after)))
    return headers
