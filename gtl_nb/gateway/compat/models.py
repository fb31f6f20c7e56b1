"""``GET /v1/models``: the gateway's models, as the OpenAI or the Anthropic SDK lists them.

Every model of every deployment (``engine.provider_info()``) is listed as ``deployment:model`` — the
form that always reaches that deployment — and also once under its bare name, the name a request may
use: its owner is the deployment that lists it, or, when several do (a request for the bare name goes
to any of them, as ``[routing] strategy`` orders them), all of them, comma-separated. The shape
follows the caller: the Anthropic SDK sends an ``anthropic-version`` header and gets ``{"data":
[{"type": "model", …}], "has_more", "first_id", "last_id"}``, a page at a time (``limit``,
``after_id``, ``before_id``); anyone else gets OpenAI's ``{"object": "list", "data": [{"id",
"object": "model", "created", "owned_by"}]}`` (``owned_by`` is the deployment, or those of a bare name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gtl_nb.protocol.messages import ProviderInfo

__all__ = ["anthropic_listing", "find_model", "model_ids", "openai_listing"]


def model_ids(infos: list[ProviderInfo]) -> list[tuple[str, str]]:
    """``(model id, owner)`` of every listed model: ``deployment:model`` ids, owned by that deployment, then
    each bare name once, owned by the deployments that list it (comma-separated when several do)."""
    listed = list(dict.fromkeys((info.provider, model.name) for info in infos for model in info.models))
    owners: dict[str, list[str]] = {}
    for deployment, name in listed:
        owners.setdefault(name, []).append(deployment)
    ids = [(f"{deployment}:{name}", deployment) for deployment, name in listed]
    ids += [(name, ",".join(deployments)) for name, deployments in owners.items()]
    return ids


def openai_listing(infos: list[ProviderInfo]) -> dict[str, Any]:
    """OpenAI's model list."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": owner} for name, owner in model_ids(infos)]
    return {"object": "list", "data": data}


ANTHROPIC_PAGE = 20
"""Models a page of Anthropic's list holds when ``limit`` is not given (its API's default)."""
ANTHROPIC_MAX_PAGE = 1000


def anthropic_listing(infos: list[ProviderInfo], query: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Anthropic's model list, one page of it as its API pages: ``limit`` (1 to 1,000, default 20),
    then the models after ``after_id`` or before ``before_id``; ``has_more`` says whether more follow
    (the SDK's iterator walks the pages). ``ValueError`` names a parameter it cannot read."""
    query = query or {}
    ids = [name for name, _ in model_ids(infos)]
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
    data = [{"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"} for name in page]
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
    infos: list[ProviderInfo], model: str, canonical: Callable[[str, str], str | None] | None = None
) -> tuple[str, str] | None:
    """``(id, deployment)`` of one listed model id, or ``None``.

    ``canonical(deployment, name)``, when given, is the name the deployment lists for ``name`` (the
    catalog's: an alias such as ``claude-sonnet-4-5``, or a dated id, for the entry listed): a name
    the gateway answers to in a request is found here too, under the id the list shows for it."""
    ids = model_ids(infos)
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
