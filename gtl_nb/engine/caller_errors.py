"""A provider's errors as the engine's callers read them: its secrets and account ids out, and a gateway's
caller told only what is about its request.

Every error a provider answers reaches a caller through these: ``scrubbed`` takes the deployment's keys
(and anything shaped like a credential) out of its words; ``with_provider`` names the deployment. On a
gateway (``Engine._for_gateway_caller``) an error about the gateway's own account with the provider
(``OPERATORS_SIDE``: its key, permissions, quota, capacity) is told in the gateway's words
(``gateways_key_refused``, ``reworded_for_caller``), the provider's going to the operator's log; an error
about the caller's request keeps the provider's words, its account ids redacted
(``without_account_ids``). ``listing_for`` says where a gateway's caller sees what it serves;
``with_attempts``, how many calls a failed session made.
"""

from __future__ import annotations

import logging
import math
import re

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.routing import GATEWAY_LIST, Target
from gtl_nb.log import get_logger, redact, scrub_secret
from gtl_nb.protocol.messages import Error
from gtl_nb.providers.base import Deployment

__all__ = [
    "MODELS_READ",
    "OPERATORS_SIDE",
    "gateways_key_refused",
    "listing_for",
    "operators_side",
    "reworded_for_caller",
    "scrubbed",
    "with_attempts",
    "with_provider",
    "without_account_ids",
]

log = get_logger("engine")  # (the engine's logger: the operator reads these lines where they always were)

MODELS_READ = "models:read"
"""The gateway's scope for listing models (``gateway.scopes``): without it routing's errors name none."""


def scrubbed(event: Error, deployment: Deployment) -> Error:
    """``event`` with the deployment's secrets (``Deployment.secrets``: its headers' values too), and
    anything shaped like a credential, out of its message ("Incorrect API key provided: sk-…" reaches a
    gateway's clients and the ledger otherwise)."""
    message = event.message
    for secret in deployment.secrets:
        message = scrub_secret(message, secret)  # the key, and its masked form (prefix…last four)
    message = redact(message)
    return event if message == event.message else msgspec.structs.replace(event, message=message)


_ACCOUNT_IDS = (
    # OpenAI: "… in organization org-Ab12… on tokens per min"; project ids (24 characters each, so at
    # least 16 here: "org-settings" or a caller's "proj_summarizer" is left alone)
    re.compile(r"(?<![A-Za-z0-9])(org|proj)([-_])[A-Za-z0-9]{16,}"),
    # Anthropic: "… rate limit for your organization (a22cf6e6-a940-…) of 1,000,000 input tokens"
    re.compile(r"(organization\W{0,3})[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
    # AWS: "User: arn:aws:iam::123456789012:user/gateway-svc is not authorized …"
    re.compile(r"(arn:aws[a-z-]*:)[^\s\"',]*"),
)
"""A provider account's ids in an error's words: the gateway operator's, which a gateway's clients
need not learn. Each is linear: a fixed prefix, then one character class."""


def without_account_ids(event: Error) -> Error:
    """``event`` with the provider account ids in its message replaced (a gateway's clients only)."""
    message = event.message
    for pattern in _ACCOUNT_IDS:
        message = pattern.sub(lambda found: "".join(found.groups()) + "[redacted]", message)
    return event if message == event.message else msgspec.structs.replace(event, message=message)


def gateways_key_refused(event: Error, target: Target, key: str | None = None) -> Error:
    """A provider's refusal of the key a gateway holds, told to the gateway's client: the provider's
    own words ("Incorrect API key provided … find your API key at …") read as if the client's key
    were wrong, and the client can do nothing about it — they go to the operator's log instead, with
    ``key``, what the operator calls the key (a vault's stored key name and fingerprint), when known."""
    which = f" ({key})" if key else ""
    log.warning(
        "deployment %s: the provider refused the gateway's credentials%s: %s", target.name, which, event.message
    )
    status = f" (HTTP {event.http_status})" if event.http_status else ""
    message = (
        f"the provider of deployment {target.name!r} refused the gateway's own credentials for it{status}: "
        "your token was accepted; the gateway's operator must set a valid key for that deployment"
    )
    return msgspec.structs.replace(event, message=message, provider=event.provider or target.name)


OPERATORS_SIDE = frozenset({"AUTH_FAILED", "FORBIDDEN", "RATE_LIMIT", "OVERLOADED"})
"""Error codes a provider answers about the account the gateway calls it with — its key, its
permissions, its rate limits and quota, its capacity — never about the caller's request. A provider's
words for them name the gateway operator's organisation, project, plan or account pages ("Rate limit
reached … in organization org-… Visit https://platform.openai.com/account/rate-limits"), and the
caller can act on none of it: a gateway's caller hears the gateway's own words (the deployment, the
HTTP status, when to retry), the operator reads the provider's in the log. The provider's failures
(``PROVIDER_UNAVAILABLE``, ``INTERNAL``, ``TIMEOUT``) are worded so too when they are the provider's
answer (``http_status``: an error status, or 200 for an error inside an answer); the gateway's own words
about the connection (unreachable, a timeout, an answer cut short) stay. The caller's own mistakes (``INVALID_REQUEST``,
``CONTEXT_LENGTH_EXCEEDED``, ``CONTENT_FILTERED``, ``MODEL_NOT_FOUND``) keep the provider's words, which
say what to change, with account ids redacted (``_ACCOUNT_IDS``)."""

_PROVIDER_FAILURES = frozenset({"PROVIDER_UNAVAILABLE", "INTERNAL", "TIMEOUT"})


def operators_side(event: Error) -> bool:
    """Whether a gateway words ``event`` itself for its caller (``OPERATORS_SIDE``)."""
    if event.code in OPERATORS_SIDE:
        return True
    return event.code in _PROVIDER_FAILURES and event.http_status is not None


_CALLERS_WORDS = {
    "FORBIDDEN": "refused the gateway's request: the gateway's account with it may not do what was asked",
    "OVERLOADED": "is overloaded",
    "TIMEOUT": "timed out",
}


def reworded_for_caller(event: Error, target: Target) -> Error:
    """``event`` (a provider's, ``OPERATORS_SIDE``) in the gateway's words for its caller; the
    provider's words, scrubbed already, to the operator's log."""
    answered = event.http_status is not None and event.http_status >= 400
    status = f" (HTTP {event.http_status})" if answered else ""
    level = logging.INFO if event.retryable else logging.WARNING  # a quota used up, a refusal: the operator acts
    log.log(level, "deployment %s: the provider answered %s%s: %s", target.name, event.code, status, event.message)
    if event.code == "RATE_LIMIT":
        said = (
            "is rate-limiting the gateway"
            if event.retryable
            else "refused the request: the gateway's quota with it is used up"
        )
    else:
        said = _CALLERS_WORDS.get(event.code, "failed" if answered else "failed mid-answer")
    message = f"the provider of deployment {target.name!r} {said}{status}"
    if event.retry_after is not None:
        message += f"; retry in {math.ceil(event.retry_after)} s"
    elif not event.retryable:
        message += "; the gateway's operator can see why in its log"
    return msgspec.structs.replace(event, message=message, provider=event.provider or target.name)


def listing_for(context: RequestContext) -> str:
    """How a gateway's caller sees what it serves (``routing.GATEWAY_LIST`` for a GTL caller), in the
    caller's API: ``GET /v1/models`` for an OpenAI or Anthropic SDK, which knows no ``client.models()``;
    and the scope it needs only to a token that lacks it (a gateway checking no token grants every scope)."""
    listing = "GET /v1/models lists what this gateway serves" if context.api else GATEWAY_LIST
    if MODELS_READ not in context.scopes:
        listing += f", to a token with the {MODELS_READ} scope (this one has not)"
    return listing


def with_provider(event: Error, target: Target) -> Error:
    return event if event.provider else msgspec.structs.replace(event, provider=target.name)


def with_attempts(failed: Error, called: list[str]) -> Error:
    """``failed``, the session's last error, saying how many calls were made when there were several, and
    to which deployments when more than one (a retried timeout took their time together: the caller
    should know why it waited)."""
    if len(called) < 2:
        return failed
    deployments = list(dict.fromkeys(called))
    where = f" to {', '.join(deployments)}" if len(deployments) > 1 else ""
    return msgspec.structs.replace(failed, message=f"{failed.message} (after {len(called)} attempts{where})")
