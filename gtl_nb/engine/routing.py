"""From a request's ``model`` / ``provider`` / ``providers`` to the deployments that will answer it.

Rules (documented for users in docs/configuration.md):

* ``"deployment:model"`` — the prefix before the first colon is a provider only if it names a
  configured deployment or a known provider type (``"openai:gpt-4o"``); otherwise the whole string
  is the model (``"llama3.1:8b"``).
* ``provider=`` names a deployment (or a provider type with one deployment).
* A bare model goes to a deployment that lists it in ``models`` / ``model``; then to the catalog's
  provider types for that name that have a configured deployment; then, for a name the catalog does
  not know, to the single configured deployment of a type that serves arbitrary local models
  (``ollama``, ``openai_compatible``). A catalog model whose provider is not configured is a
  ``ConfigurationError`` naming what to set; an unknown name is a ``ModelNotFoundError`` listing
  close matches. A name after a deployment's prefix is not checked here (no list is complete): the
  provider's ``404`` for it gets the deployment's close matches (``Engine._with_close_models``).
* ``providers=[...]`` is the ordered failover list; each entry is a deployment name (keeping the
  requested model) or ``deployment:model``.
* Wherever a deployment or provider type is named, the spec's ``claude`` and ``google`` name the types
  ``anthropic`` and ``gemini`` (``providers.registry.PROVIDER_TYPE_ALIASES``), unless a deployment or a
  plugin's type has that name.

The errors speak to whoever can act on them (``audience``): in the embedded client, the user who
configures it (what to set, or ``providers=`` to pass to ``gtl_nb.connect``); in a gateway, its
client, who cannot configure it — a model, provider or deployment the gateway does not serve is a
``ModelNotFoundError`` (HTTP 404 on the compatible endpoints) that names none of its deployments,
"did you mean" offers only models the gateway serves *and the caller may see* (``visible``: a
token's allow-lists and its ``models:read`` scope), and the way to see them is the gateway's model
list (``GATEWAY_LIST``, which the engine words for the caller's API).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gtl_nb.engine.config import provider_needs
from gtl_nb.protocol.errors import ConfigurationError, InvalidRequestError, ModelNotFoundError
from gtl_nb.protocol.messages import CompletionRequest
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.registry import aliased_type, provider_types

OPEN_MODEL_TYPES = ("ollama", "openai_compatible")

EMBEDDED = "embedded"
GATEWAY = "gateway"
AUDIENCES = (EMBEDDED, GATEWAY)
"""Who reads the router's errors (see the module docstring)."""

GATEWAY_LIST = "the models query (gtl_nb's client.models()) lists what this gateway serves"
"""How a gateway's errors tell its GTL caller to see what it serves; the engine puts the caller's own
way in its place (``GET /v1/models`` on the compatible endpoints, and the scope a token lacks for it)."""

Visible = Callable[[str, str], bool]
"""``visible(deployment, model)``: may the caller learn that this deployment serves this model?"""


def credential_hint(provider_type: str) -> str:
    """What to set so ``provider_type`` is configured: the environment variables its dialect declares
    as making it usable (``ProviderNeeds.implied_by``)."""
    needs = provider_needs(provider_type)
    groups = needs.implied_by if needs is not None else ()
    return " or ".join(" and ".join(group) for group in groups) or "its credentials"


@dataclass(frozen=True)
class Target:
    """One deployment and the model to ask it for; ``catch_all`` when nothing chose the deployment but
    its taking any name no other deployment serves (the single local-model deployment): the provider's
    "not found" then most likely answers a typo meant for another deployment (``Engine._with_close_models``)."""

    deployment: Deployment
    model: str
    catch_all: bool = dataclasses.field(default=False, compare=False)

    @property
    def name(self) -> str:
        return self.deployment.name


class Router:
    """Resolves requests against the configured deployments and the model catalog."""

    def __init__(self, deployments: dict[str, Deployment], catalog: Any, *, audience: str = EMBEDDED) -> None:
        if audience not in AUDIENCES:
            raise ValueError(f"audience must be one of {AUDIENCES}, got {audience!r}")
        self.deployments = deployments
        self.catalog = catalog
        self.audience = audience

    def targets(self, request: CompletionRequest, visible: Visible | None = None) -> list[Target]:
        """Every target that may answer ``request``.

        With ``providers=[...]`` or ``provider=`` this is exactly what the request names, in its
        order; for a bare model it is every deployment that serves the model (the ones that list it,
        then each catalog provider type's deployments in preference order), for a routing strategy
        to order. ``visible`` bounds what a gateway's "did you mean" may name (``None``: everything).
        """
        if request.providers:
            return [self._entry(entry, request.model) for entry in request.providers]
        if request.provider:
            return [self._target(self._deployment(request.provider), self._split(request.model)[1])]
        return self.candidates(request.model, visible)

    def explicit(self, request: CompletionRequest) -> bool:
        """True when the request chose its deployments itself (their order is the failover order)."""
        return bool(request.providers or request.provider) or self._split(request.model)[0] is not None

    def candidates(self, model: str, visible: Visible | None = None) -> list[Target]:
        """All deployments serving ``model``; the first is what ``resolve_model`` picks."""
        prefix, name = self._split(model)
        if prefix is not None:
            return [self._target(self._deployment(prefix), name)]
        listed = [Target(d, name) for d in self.deployments.values() if name == d.model or name in d.models]
        by_type: list[Target] = []
        for provider_type in self.catalog.providers_for(name) if self.catalog is not None else []:
            by_type.extend(
                self._target(d, name)
                for d in self.deployments.values()
                if d.type == provider_type and all(t.deployment is not d for t in listed)
            )
        found = listed + by_type
        return found or [self.resolve_model(model, visible)]

    def _entry(self, entry: str, model: str) -> Target:
        prefix, sep, rest = entry.partition(":")
        if sep and rest:
            return self._target(self._deployment(prefix), rest)
        return self._target(self._deployment(entry), self._split(model)[1])

    def _target(self, deployment: Deployment, model: str) -> Target:
        """The model under the id this deployment's provider knows it by (aliases from the catalog:
        ``claude-sonnet-4-5`` on Bedrock is ``global.anthropic.claude-sonnet-4-5-…``).

        A model that itself begins with a deployment's or provider type's name and a colon
        (``openai-prod:anthropic:claude-x``: ``anthropic:claude-x`` asked of ``openai-prod``) is refused:
        no provider has such a model, and a token's ``allowed_models`` entry ``anthropic:claude-*``
        would read it as a model it allows, on a deployment it was not given."""
        if ":" in model and self._split(model)[0] is not None:
            raise InvalidRequestError(
                f"the model {model!r} asked of deployment {deployment.name!r} begins with another deployment's "
                "name: name the deployment once (deployment:model)"
            )
        if self.catalog is not None:
            model = self.catalog.model_id(deployment.type, model)
        return Target(deployment, model)

    def _deployment(self, name: str) -> Deployment:
        if name in self.deployments:
            return self.deployments[name]
        alias = aliased_type(name)  # the spec's "claude" for anthropic, "google" for gemini
        if alias is not None:
            return self._deployment(alias)
        of_type = [d for d in self.deployments.values() if d.type == name]
        if len(of_type) == 1:
            return of_type[0]
        if of_type:
            if self.audience == GATEWAY:  # which ones is for its model list to say, to whom it may
                raise InvalidRequestError(
                    f"{name!r} names several deployments on this gateway; name one: {GATEWAY_LIST}"
                )
            names = ", ".join(d.name for d in of_type)
            raise ConfigurationError(f"{name!r} has several deployments ({names}); name one of them")
        if name in provider_types():
            if self.audience == GATEWAY:
                raise ModelNotFoundError(
                    f"this gateway has no {name} provider ({self._operator_hint(name)}); {GATEWAY_LIST}"
                )
            extra = f" (set {credential_hint(name)}, or pass providers={{{name!r}: {{...}}}})"
            raise ConfigurationError(f"provider {name!r} is not configured{extra}")
        if self.audience == GATEWAY:
            raise ModelNotFoundError(f"this gateway has no deployment or provider named {name!r}; {GATEWAY_LIST}")
        known = ", ".join(sorted(self.deployments))
        raise ConfigurationError(f"unknown provider {name!r}; configured deployments: {known}")

    def names_deployment(self, model: str) -> bool:
        """True when ``model`` is ``deployment:model`` (or ``provider_type:model``): it chose its deployment."""
        return self._split(model)[0] is not None

    def bare_model(self, model: str) -> str:
        """``model`` without the ``deployment:`` or ``provider_type:`` prefix that chose its
        deployment (what the ledger's ``model`` column holds), unchanged when it has none."""
        return self._split(model)[1]

    def _split(self, model: str) -> tuple[str | None, str]:
        prefix, sep, rest = model.partition(":")
        if sep and rest and (prefix in self.deployments or prefix in provider_types() or aliased_type(prefix)):
            return prefix, rest
        return None, model

    def resolve_model(self, model: str, visible: Visible | None = None) -> Target:
        prefix, name = self._split(model)
        if prefix is not None:
            return self._target(self._deployment(prefix), name)
        for deployment in self.deployments.values():
            if name == deployment.model or name in deployment.models:
                return Target(deployment, name)
        candidates = self.catalog.providers_for(name) if self.catalog is not None else []
        for provider_type in candidates:
            matching = [d for d in self.deployments.values() if d.type == provider_type]
            if matching:
                return self._target(matching[0], name)
        if candidates:
            provider_type = candidates[0]
            if self.audience == GATEWAY:
                raise ModelNotFoundError(
                    f"model {name!r} is served by {provider_type}, and this gateway has no {provider_type} provider "
                    f"({self._operator_hint(provider_type)}); {GATEWAY_LIST}"
                )
            hint = credential_hint(provider_type)
            raise ConfigurationError(
                f"model {name!r} is served by {provider_type}, "
                f"but no {provider_type} provider is configured: "
                f"set {hint}, or pass providers={{{provider_type!r}: {{...}}}} to gtl_nb.connect"
            )
        open_deployments = [d for d in self.deployments.values() if d.type in OPEN_MODEL_TYPES and not d.models]
        if len(open_deployments) == 1:
            return dataclasses.replace(self._target(open_deployments[0], name), catch_all=True)
        raise ModelNotFoundError(self._unknown_message(name, visible))

    def served_names(self, deployment: Deployment) -> set[str]:
        """The names ``deployment`` is known to serve: its configured ``models``/``model``, and the
        catalog's models of its type with their aliases (never complete: a provider may know more)."""
        names = {*deployment.models, *([deployment.model] if deployment.model else [])}
        if self.catalog is not None:
            for entry in self.catalog.entries(deployment.type):
                names.add(entry.name)
                names.update(entry.aliases)
            names.update(name for name, ids in self.catalog.aliases().items() if deployment.type in ids)
        return names

    def misspelt_prefix(self, name: str, visible: Visible | None = None) -> list[str]:
        """``name`` as ``deployment:model`` with its prefix mended — ``opena:gpt-4o-mini`` →
        ``openai:gpt-4o-mini`` — when the prefix names no deployment or provider type, is like a
        deployment's name, and what follows it is a model that deployment is known to serve (so
        ``llama3.1:8bb``, an Ollama name with a tag, is never read as a misspelt ``ollama:``); only
        what the caller may see (``visible``, a gateway's)."""
        prefix, sep, model = name.partition(":")
        if not sep or not model or self._split(name)[0] is not None:
            return []
        gateway = self.audience == GATEWAY
        named = dict(self.deployments)  # a provider type with one deployment names it too (``_deployment``)
        for deployment in self.deployments.values():
            if deployment.type not in named and sum(d.type == deployment.type for d in self.deployments.values()) == 1:
                named[deployment.type] = deployment
        mended = []
        for close in difflib.get_close_matches(prefix, sorted(named), n=3, cutoff=0.6):
            deployment = named[close]
            if model not in self.served_names(deployment):
                continue
            if gateway and visible is not None and not visible(deployment.name, model):
                continue
            mended.append(f"{close}:{model}")
        return mended

    def close_names(self, name: str, visible: Visible | None = None) -> list[str]:
        """What an unknown ``name`` may have meant, as "did you mean" offers it: a mended deployment
        prefix first (``misspelt_prefix``), then the models like it that are configured or in the
        catalog — in a gateway, only those it serves and the caller may see (``visible``)."""
        gateway = self.audience == GATEWAY

        def shown(deployment: Deployment, model: str) -> bool:
            return not gateway or visible is None or visible(deployment.name, model)

        known: list[str] = []
        for deployment in self.deployments.values():
            listed = [*deployment.models, *([deployment.model] if deployment.model else [])]
            known.extend(model for model in listed if shown(deployment, model))
        if self.catalog is not None:
            close = self.catalog.close_matches(name, n=8)
            if gateway:  # only what this gateway serves, to whom may see it: its client cannot add a provider
                close = [
                    model
                    for model in close
                    if any(
                        deployment.type in self.catalog.providers_for(model) and shown(deployment, model)
                        for deployment in self.deployments.values()
                    )
                ]
            known.extend(close)
        mended = self.misspelt_prefix(name, visible)
        return mended + difflib.get_close_matches(name, sorted(set(known)), n=5 - len(mended), cutoff=0.5)

    def listing_pointer(self) -> str:
        """Where an unknown name's error points to see what is served (a gateway's ``GATEWAY_LIST`` the
        engine words for the caller's API)."""
        return GATEWAY_LIST if self.audience == GATEWAY else "`gtl models` lists what is available"

    def _unknown_message(self, name: str, visible: Visible | None = None) -> str:
        matches = self.close_names(name, visible)
        # a mended prefix is offered: say what was wrong with the name as written
        mended = self.misspelt_prefix(name, visible)
        unknown = f": {name.partition(':')[0]!r} names no deployment here" if mended else ""
        if self.audience == GATEWAY:
            offer = f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""
            return f"unknown model {name!r}{unknown}{offer}; {GATEWAY_LIST}"
        hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
        return f"unknown model {name!r}{unknown}{hint} ({self.listing_pointer()})"

    @staticmethod
    def _operator_hint(provider_type: str) -> str:
        """How the gateway's operator would add ``provider_type`` (its client is told, and may be the operator)."""
        return (
            f"its operator can add one: {credential_hint(provider_type)} in the gateway's environment, "
            f"or a [providers.{provider_type}] table in its configuration"
        )
