"""Counting a request's input tokens without running it (``Engine.count_tokens``).

The count is of the request a completion would send, for the deployment routing would send it to:

* **Exact** where the provider counts: an HTTP dialect with ``count_request`` / ``parse_count``
  (Anthropic's ``POST /v1/messages/count_tokens``, Gemini's ``models/{model}:countTokens``) is asked,
  with the deployment's key — or the stored key the caller's token chose — and answers what its usage
  would report as input; a local generator with ``count_input`` (``echo``, its own tokenizer) counts
  what its answer's usage reports.
* **An estimate** elsewhere (``estimates.estimate_prompt_tokens``: about four characters a token, 1,000 an image):
  OpenAI, Azure, Bedrock, Ollama and OpenAI-compatible servers have no counting call the gateway makes
  (and a request a counting API cannot carry — Gemini asked for one tool call at most — is estimated too).
  ``TokenCount.exact`` says which, and a gateway's answer says so too (never an estimate presented as
  the provider's count).

The targets are tried in routing's order, as a completion's attempts are: a deployment that cannot be
reached, is overloaded or rate-limited gives the count to the next one (an estimate, when that one does
not count); a refusal of the request itself (a ``400``, an unknown model) is the caller's answer. No
breaker verdict, retry or failover status: a count is not a completion, and writes no ledger row.

**Bounded.** A count that calls a provider spends that provider's rate limit on the gateway's key, so it
is counted against the principal's ``requests_per_minute`` (and its tenant's) like a completion, before
the call, and refused (``RATE_LIMIT``) past it; its tokens and cost are 0 (nothing is generated). An
estimate calls nobody and counts against nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.estimates import estimate_prompt_tokens
from gtl_nb.engine.ratelimit import TENANT_PREFIX, Limits
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError, ModelNotFoundError, ProviderUnavailableError, error_from_event
from gtl_nb.protocol.messages import CompletionRequest
from gtl_nb.providers.base import NotServedHere
from gtl_nb.providers.registry import get_provider, is_local

if TYPE_CHECKING:
    from gtl_nb.engine.core import Engine
    from gtl_nb.engine.routing import Target
    from gtl_nb.engine.stores import Reservation

__all__ = ["TokenCount", "counted_input"]

log = get_logger("engine.counting")


@dataclass(frozen=True)
class TokenCount:
    """A request's input tokens: ``exact`` when the provider (or a local generator) counted them, else the
    gateway's estimate; ``deployment``, ``provider_type`` and ``model`` say whose."""

    input_tokens: int
    exact: bool
    deployment: str
    provider_type: str
    model: str


async def counted_input(engine: Engine, request: CompletionRequest, context: RequestContext) -> TokenCount:
    """``Engine.count_tokens`` (the module docstring): raises the ``GTLError`` routing, the token's
    allow-lists, a budget or the provider answered."""
    targets = engine.checked_targets(request, context)
    if isinstance(targets, GTLError):
        raise targets
    if not targets:  # (routing raises rather than answer nothing; kept as an error, not an IndexError)
        raise ModelNotFoundError(f"no deployment serves {request.model!r}")
    reserved: tuple[Reservation, ...] | None = None
    failed: GTLError | None = None
    for target in targets:
        sent = msgspec.structs.replace(request, model=target.model, provider=target.name, providers=None)
        provider = get_provider(target.deployment.type)
        if is_local(provider) or not hasattr(provider, "count_request"):
            counter = getattr(provider, "count_input", None) if is_local(provider) else None
            if counter is not None:
                return _count(counter(sent), True, target)
            return _count(estimate_prompt_tokens(request), False, target)
        if reserved is None:
            reserved = await _reserve(engine, request, context)
        try:
            return _count(await _asked(engine, provider, sent, target, context), True, target)
        except NotServedHere:  # what the API cannot carry (Gemini and one tool call at most): its count, estimated
            return _count(estimate_prompt_tokens(request), False, target)
        except GTLError as exc:
            if not _moves_on(exc):
                raise
            failed = exc
    assert failed is not None
    raise failed


def _count(tokens: int, exact: bool, target: Target) -> TokenCount:
    return TokenCount(tokens, exact, target.name, target.deployment.type, target.model)


def _moves_on(exc: GTLError) -> bool:
    """Whether a failed count goes to the next deployment: the provider's trouble (unreachable,
    overloaded, rate-limited, its key refused), never the request's (a ``400``, an unknown model)."""
    return exc.retryable or exc.code in ("AUTH_FAILED", "PROVIDER_UNAVAILABLE", "OVERLOADED", "TIMEOUT")


async def _reserve(engine: Engine, request: CompletionRequest, context: RequestContext) -> tuple[Reservation, ...]:
    """One request against the principal's ``requests_per_minute`` (and its tenant's), no tokens and no
    cost: raises the budget's refusal (``RATE_LIMIT``), the earlier reservation given back."""
    budgets = engine.budgets
    if budgets is None:
        return ()
    counted = [(context.principal, budgets.limits_for(context.principal).requests_per_minute)]
    if context.tenant:
        counted.append((TENANT_PREFIX + context.tenant, budgets.limits_for_tenant(context.tenant).requests_per_minute))
    held: list[Reservation] = []
    for key, per_minute in counted:
        if per_minute is None:
            continue
        try:
            held.append(
                await engine.stores.budgets.reserve(
                    key,
                    Limits(requests_per_minute=per_minute),
                    now=engine.wall_clock(),
                    session_id=request.session_id,
                )
            )
        except BaseException:
            for each in held:
                await engine.stores.budgets.release(each)
            raise
    return tuple(held)


async def _asked(
    engine: Engine, provider: Any, sent: CompletionRequest, target: Target, context: RequestContext
) -> int:
    """The provider's own count of ``sent`` (its ``count_request``), asked with the deployment's key or the
    stored one the caller's token chose; its errors as a completion's are worded for the same caller."""
    chosen = context.provider_keys.get(target.name)
    deployment = engine.caller_credentials(target.deployment, chosen)  # a set-up mistake: the operator's log
    description = provider.count_request(sent, deployment, now=engine.wall_clock())
    status, headers, body = await engine.provider_fetch(description, deployment, "cannot count tokens at", target.name)
    if status >= 400:
        raise error_from_event(engine.provider_error(provider, sent, target, deployment, status, headers, body))
    try:
        return int(provider.parse_count(body))
    except ValueError as exc:
        log.warning("deployment %s: unreadable token count: %s", target.name, exc)
        raise ProviderUnavailableError(f"unreadable token count from deployment {target.name!r}") from None
