"""``GET /v1/models``: the gateway's models, as the OpenAI or the Anthropic SDK lists them.

Every model of every deployment (``engine.provider_info()``) is listed as ``deployment:model`` — the
form that always reaches that deployment — and also once under its bare name, the name a request may
use. The shape follows the caller: the Anthropic SDK sends an ``anthropic-version`` header and gets
``{"data": [{"type": "model", …}], "has_more", "first_id", "last_id"}``, a page at a time (``limit``,
``after_id``, ``before_id``); anyone else gets OpenAI's ``{"object": "list", "data": [{"id", "object":
"model", "created", "owned_by"}]}``.

``owned_by`` is one string in OpenAI's API (the organisation that owns the model: ``openai``,
``system``, a user's org for a fine-tune). Here it says which deployment answers a request naming the
id: for ``deployment:model``, that deployment; for a bare name, every deployment a request for it may
go to — the same list routing makes for this caller (``routed_owners``: the deployments that list it,
then those of each provider type the catalog has it for, e.g. ``claude-sonnet-4-5-20250929`` on both
``anthropic`` and ``bedrock``; only those its token may use), comma-separated in routing's order, which
is the failover order; ``[routing] strategy`` may reorder them per request. One name would be untrue
whenever the request may fail over or be balanced to another.

``created`` (Anthropic's ``created_at``) is the provider's own time for the model where its model list
gives one (``listed_times``: OpenAI's and Azure's ``created``, Anthropic's ``created_at``), else
``UNKNOWN_TIME``, the epoch: the honest "unknown", where a time of the gateway's making would read as
the model's.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections.abc import Callable, Mapping
from typing import Any

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.routing import OPEN_MODEL_TYPES, Target
from gtl_nb.gateway.model_lists import model_lists
from gtl_nb.protocol.errors import GTLError, InvalidRequestError, ModelNotFoundError
from gtl_nb.protocol.messages import CompletionRequest, ProviderInfo
from gtl_nb.providers.registry import get_provider, is_local

__all__ = [
    "anthropic_listing",
    "find_model",
    "model_ids",
    "not_listed",
    "openai_listing",
    "routed_model",
    "routed_owners",
]


Owners = Callable[[str], str | None]
"""``owners(bare_name)``: the deployments a request naming it goes to, comma-separated (``routed_owners``),
or ``None`` to keep the deployments that list it."""


def model_ids(infos: list[ProviderInfo], owners: Owners | None = None) -> list[tuple[str, str]]:
    """``(model id, owner)`` of every listed model: ``deployment:model`` ids, owned by that deployment, then
    each bare name once, owned by the deployments a request for it goes to (``owners``; without it, or
    when it says ``None``, those that list it), comma-separated when several do."""
    listed = list(dict.fromkeys((info.provider, model.name) for info in infos for model in info.models))
    listing: dict[str, list[str]] = {}
    for deployment, name in listed:
        listing.setdefault(name, []).append(deployment)
    ids = [(f"{deployment}:{name}", deployment) for deployment, name in listed]
    for name, deployments in listing.items():
        routed = owners(name) if owners is not None else None
        ids.append((name, routed or ",".join(deployments)))
    return ids


def routed_owners(engine: Engine, context: RequestContext) -> Owners:
    """``Owners`` from routing, as a completion naming the model from this caller would be routed
    (``Engine.checked_targets``: its allow-lists applied, so no deployment it may not use is named)."""

    def owners(name: str) -> str | None:
        targets = engine.checked_targets(CompletionRequest(session_id="models", model=name, messages=[]), context)
        if isinstance(targets, GTLError) or not targets:
            return None
        return ",".join(dict.fromkeys(target.name for target in targets))

    return owners


Times = Mapping[str, Mapping[str, int]]
"""Deployment → model → when its provider's list says the model was made (Unix seconds): ``listed_times``."""

LISTING_WAIT = 2.0
"""Seconds a model list waits for the providers' own lists (their creation times) before answering without."""

UNKNOWN_TIME = 0
"""``created`` of a model no provider's list gives a time for (``model_time``): the Unix epoch, which no
model was made at, rather than a time the gateway would make up (its start, the hour of the request)
that changes from one list to the next and reads as true."""


async def listed_times(engine: Engine, context: RequestContext, infos: list[ProviderInfo]) -> Times:
    """The creation times the live model lists of the deployments in ``infos`` give (``ModelLists.times``,
    on the caller's key: one provider call shared by every caller for a minute), for the providers whose
    list has them (``model_times``: OpenAI's and Azure's, an OpenAI-compatible server's, Anthropic's —
    Gemini's, Bedrock's and Ollama's give none, so they are not asked). A list that fails, or is not had
    within ``LISTING_WAIT`` seconds (it is still asked, for the next caller), gives none."""
    lists = model_lists(engine)

    async def one(name: str) -> tuple[str, Mapping[str, int]]:
        deployment = engine.deployments.get(name)
        if deployment is None or not hasattr(get_provider(deployment.type), "model_times"):
            return name, {}
        try:
            asked = lists.times(deployment, context.provider_keys.get(name))
            return name, await asyncio.wait_for(asked, LISTING_WAIT)
        except (GTLError, asyncio.TimeoutError):
            return name, {}

    found = await asyncio.gather(*(one(info.provider) for info in infos))
    return {name: times for name, times in found if times}


def model_time(model_id: str, owner: str, times: Times | None) -> int:
    """When the provider's list says ``model_id`` was made: a ``deployment:model`` id's from that
    deployment's list, a bare name's from the first of its owners whose list has it (they list one model,
    so the time is one too); ``UNKNOWN_TIME`` when none does."""
    if not times:
        return UNKNOWN_TIME
    owners = owner.split(",")
    if len(owners) == 1 and model_id.startswith(f"{owner}:"):
        return times.get(owner, {}).get(model_id[len(owner) + 1 :], UNKNOWN_TIME)
    return next((times[o][model_id] for o in owners if model_id in times.get(o, {})), UNKNOWN_TIME)


def rfc3339(seconds: int) -> str:
    """Unix seconds as Anthropic writes ``created_at`` (``2025-02-19T00:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def openai_listing(
    infos: list[ProviderInfo], owners: Owners | None = None, times: Times | None = None
) -> dict[str, Any]:
    """OpenAI's model list (``owners``: see ``model_ids``; ``created`` from ``times``: ``model_time``)."""
    ids = model_ids(infos, owners)
    data = [
        {"id": name, "object": "model", "created": model_time(name, owner, times), "owned_by": owner}
        for name, owner in ids
    ]
    return {"object": "list", "data": data}


ANTHROPIC_PAGE = 20
"""Models a page of Anthropic's list holds when ``limit`` is not given (its API's default)."""
ANTHROPIC_MAX_PAGE = 1000


def anthropic_listing(
    infos: list[ProviderInfo],
    query: Mapping[str, str] | None = None,
    owners: Owners | None = None,
    times: Times | None = None,
) -> dict[str, Any]:
    """Anthropic's model list, one page of it as its API pages: ``limit`` (1 to 1,000, default 20),
    then the models after ``after_id`` or before ``before_id``; ``has_more`` says whether more follow
    (the SDK's iterator walks the pages). ``created_at`` from ``times`` (``model_time``; the epoch when
    unknown). ``ValueError`` names a parameter it cannot read."""
    query = query or {}
    owned = dict(model_ids(infos, owners))
    ids = list(owned)
    limit = _page_size(query.get("limit"))
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise ValueError("give after_id or before_id, not both")
    if before is not None:
        end = ids.index(before) if before in ids else len(ids)
        page, more = ids[max(0, end - limit) : end], end - limit > 0
    else:
        start = ids.index(after) + 1 if after in ids else 0
        page, more = ids[start : start + limit], start + limit < len(ids)
    data = [
        {"type": "model", "id": name, "display_name": name, "created_at": rfc3339(model_time(name, owned[name], times))}
        for name in page
    ]
    return {
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _page_size(raw: str | None) -> int:
    if raw is None:
        return ANTHROPIC_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= ANTHROPIC_MAX_PAGE:
        raise ValueError(f"limit: expected a whole number from 1 to {ANTHROPIC_MAX_PAGE}, not {raw[:20]!r}")
    return int(raw)


def find_model(
    infos: list[ProviderInfo],
    model: str,
    canonical: Callable[[str, str], str | None] | None = None,
    owners: Owners | None = None,
) -> tuple[str, str] | None:
    """``(id, deployment)`` of one listed model id, or ``None``.

    ``canonical(deployment, name)``, when given, is the name the deployment lists for ``name`` (the
    catalog's: an alias such as ``claude-sonnet-4-5``, or a dated id, for the entry listed): a name
    the gateway answers to in a request is found here too, under the id the list shows for it. ``owners``:
    as ``model_ids``'s."""
    ids = model_ids(infos, owners)
    found = next((pair for pair in ids if pair[0] == model), None)
    if found is not None or canonical is None:
        return found
    named, sep, bare = model.partition(":")
    if not sep or named not in {info.provider for info in infos}:
        named, bare = "", model
    for info in infos:
        if named and info.provider != named:
            continue
        listed = canonical(info.provider, bare)
        if listed is None or listed == bare or listed not in {entry.name for entry in info.models}:
            continue
        wanted = f"{info.provider}:{listed}"
        bare_id = next((pair for pair in ids if pair[0] == listed and info.provider in pair[1].split(",")), None)
        return bare_id if bare_id is not None and not named else (wanted, info.provider)
    return None


LISTING = "GET /v1/models lists what this gateway serves"


def not_listed(model: str, offer: list[str] | None = None) -> ModelNotFoundError:
    """The 404 of ``GET /v1/models/{model}``, in OpenAI's words for it ("The model … does not exist"), with
    the names like it a completion's "did you mean" would offer."""
    maybe = f" (did you mean {', '.join(repr(name) for name in offer)}?)" if offer else ""
    return ModelNotFoundError(f"The model {model!r} does not exist on this gateway{maybe}; {LISTING}")


async def routed_model(engine: Engine, context: RequestContext, model: str) -> tuple[str, str]:
    """``(model, owners)`` for a name the model list does not show but a completion naming it would be
    served under: routing's answer for this caller (``Engine.checked_targets``, with its allow-lists, so a
    deployment it may not use is never named), each deployment kept only when it is known to serve the
    name, since routing alone does not check it — ``deployment:model`` goes to the deployment whatever
    follows the prefix, the single local-model deployment takes any name no other serves
    (``Target.catch_all``), and the catalog's lookup that picks a provider type folds case and reads
    dated ids, which the provider may refuse. Known to serve: the deployment's ``models``; the
    catalog's names and aliases of its type, as written (not for a local-model server, which has only
    what was pulled); or its live model list (``model_lists``, on the caller's key). A provider with no
    listing endpoint is taken at routing's word; a listing that fails is that error.

    ``owners`` are the deployments, comma-separated in routing's order. Anything else raises
    ``ModelNotFoundError`` (404) with the offer a completion's "not found" makes: routing's own for a name
    it cannot route, the names like it that the deployment serves for one it could not confirm."""
    request = CompletionRequest(session_id="models", model=model, messages=[])
    targets = engine.checked_targets(request, context)
    if isinstance(targets, ModelNotFoundError):  # routing's refusal: its "did you mean" and pointer, worded for the API
        raise targets
    if isinstance(targets, InvalidRequestError):  # (the name's own: a prefix naming several deployments, …)
        raise ModelNotFoundError(targets.message)
    if isinstance(targets, GTLError) or not targets:  # (a token's allow-lists: as if it did not exist)
        raise not_listed(model)
    owners: list[str] = []
    unlisted: GTLError | None = None  # a live list that could not be had: said only when no other deployment serves
    for target in targets:
        try:
            if target.name not in owners and await _serves(engine, context, target, model):
                owners.append(target.name)
        except GTLError as exc:
            unlisted = unlisted or exc
    if not owners and unlisted is not None:
        raise unlisted
    if not owners:
        raise not_listed(model, await _offer(engine, context, targets[0], model))
    return model, ",".join(owners)


async def _serves(engine: Engine, context: RequestContext, target: Target, asked: str) -> bool:
    """Is ``target.model`` known to be served by ``target.deployment`` (``routed_model``)?"""
    deployment = target.deployment
    bare = engine.router.bare_model(asked)
    names = {target.model, bare}
    configured = {*deployment.models, *([deployment.model] if deployment.model else [])}
    if not names.isdisjoint(configured):
        return True
    if deployment.type not in OPEN_MODEL_TYPES and bare in engine.router.served_names(deployment):
        return True
    provider = get_provider(deployment.type)
    if not is_local(provider) and not hasattr(provider, "models_request"):
        return True  # no list to ask: nothing but the provider's answer to a completion could say otherwise
    listed = set(await model_lists(engine).names(deployment, context.provider_keys.get(deployment.name)))
    if deployment.type == "ollama":  # Ollama reads a name without a tag as ``:latest``
        names |= {f"{name}:latest" for name in names if ":" not in name}
    return not names.isdisjoint(listed)


async def _offer(engine: Engine, context: RequestContext, target: Target, asked: str) -> list[str]:
    """The names a completion's "not found" would offer for ``asked`` (``Engine._with_close_models``):
    routing's across every deployment for a name only the catch-all took, else the names like it that
    ``target``'s deployment serves (configured, the catalog's, its live list), as ``deployment:model``."""
    router = engine.router
    visible = context.allows  # (the scope to list models was asked already)
    if target.catch_all:
        return router.close_names(router.bare_model(asked), visible)
    deployment = target.deployment
    known = set(router.served_names(deployment))
    try:
        known.update(await model_lists(engine).names(deployment, context.provider_keys.get(deployment.name)))
    except GTLError:
        pass  # (an offer without the live list)
    shown = sorted(name for name in known if visible(deployment.name, name))
    close = difflib.get_close_matches(router.bare_model(asked), shown, n=5, cutoff=0.6)
    return [f"{deployment.name}:{name}" for name in close]
