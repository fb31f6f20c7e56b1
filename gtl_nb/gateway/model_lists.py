"""A gateway's live model lists, shared by its callers for a while (the ``models`` query).

Every ``models`` query used to call the provider's model-list endpoint with the gateway's own key:
no budget counts such a call and no ledger row records it, so one ``models:read`` token, however
rate-limited its completions, could send the provider as many calls as it liked — spending the
provider's rate limit on that key, which every other caller shares. Here one call serves every caller
of a deployment for ``FRESH_FOR`` seconds (a failure for ``FAILED_FOR``), and callers asking while
a call is under way wait for that call instead of starting their own. A reload that changes a
deployment gives it a new ``Deployment`` object, so its list is asked again at once.

A list that was answered and has aged past ``FRESH_FOR`` is still served, at once, for up to
``STALE_FOR`` seconds more while one call in the background asks again (stale while revalidating):
a provider that hangs delays nobody's ``/v1/models`` once a minute — only the first caller ever, or
one after a failure or a long quiet, waits. A refresh that fails replaces the list with its error
(kept ``FAILED_FOR``): an operator whose key was revoked learns it within a minute, not ten.

``model_lists(engine).names(deployment, key_name)`` is the one way in. A list is kept per deployment
and per stored key: a caller whose token chooses a key of the vault (``provider_keys``) is answered
with what the provider lists for that key — a fine-tuned model of one team's account is never listed
to another team — and callers on the deployment's own key share one list (the query then narrows
each list to the caller's allow-lists).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gtl_nb.engine.core import Engine
from gtl_nb.log import get_logger, quotes_secret, redact
from gtl_nb.protocol.errors import GTLError, error_from_event
from gtl_nb.protocol.messages import Error
from gtl_nb.providers.base import Deployment

__all__ = ["FAILED_FOR", "FRESH_FOR", "STALE_FOR", "ModelLists", "model_lists"]

log = get_logger("gateway.model_lists")

FRESH_FOR = 60.0
"""Seconds a deployment's model list is served without asking the provider again."""
FAILED_FOR = 10.0
"""Seconds a failed listing is answered with its error (short: an operator mending a key sees it soon)."""
STALE_FOR = 600.0
"""Seconds past ``FRESH_FOR`` an answered list is still served at once while it is asked again."""


@dataclass(frozen=True)
class _Kept:
    deployment: Deployment  # the configuration it was asked with: another object (a reload) asks again
    until: float
    names: tuple[str, ...] = ()
    error: Error | None = None
    times: Mapping[str, int] = field(default_factory=dict)  # when the listing says a model was made


class ModelLists:
    """One engine's model lists, each kept for a while and asked once at a time (module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.monotonic,
        fresh_for: float = FRESH_FOR,
        failed_for: float = FAILED_FOR,
        stale_for: float = STALE_FOR,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.fresh_for = fresh_for
        self.failed_for = failed_for
        self.stale_for = stale_for
        self._kept: dict[tuple[str, str | None], _Kept] = {}
        self._asking: dict[tuple[str, str | None], tuple[Deployment, asyncio.Task[_Kept]]] = {}
        self._began: dict[tuple[str, str | None], float] = {}  # when each call under way was started

    async def names(self, deployment: Deployment, key_name: str | None = None) -> list[str]:
        """The live model list of ``deployment`` as its own key — or the vault's key ``key_name`` — sees
        it; raises the listing's ``GTLError`` (its copy)."""
        return list((await self._list(deployment, key_name)).names)

    async def times(self, deployment: Deployment, key_name: str | None = None) -> dict[str, int]:
        """When the models of that list were made, in Unix seconds, for those the provider's list gives a
        time (``Engine.listed_models``); the same call as ``names``, and its error."""
        return dict((await self._list(deployment, key_name)).times)

    async def times_within(self, deployment: Deployment, key_name: str | None, wait: float) -> dict[str, int]:
        """``times``, waited for at most ``wait`` seconds from when the provider was asked: a call already
        under way that long (a provider that accepts and never answers) is not waited for again, so it
        delays one listing, not each; ``{}`` then, and for a listing that failed."""
        which = (deployment.name, key_name)
        kept = self._at_once(deployment, key_name)
        if kept is not None:
            return {} if kept.error is not None else dict(kept.times)
        began = self._began.get(which)
        left = wait if began is None else wait - (self.clock() - began)
        if left <= 0:
            return {}
        try:
            return await asyncio.wait_for(self.times(deployment, key_name), left)
        except (GTLError, asyncio.TimeoutError):
            return {}

    async def _list(self, deployment: Deployment, key_name: str | None) -> _Kept:
        kept = self._at_once(deployment, key_name)
        if kept is None:
            # shielded: a caller that goes away (its connection closed) does not cancel the others' call;
            # the call's own answer, never what another configuration's call left kept meanwhile
            kept = await asyncio.shield(self._asked(deployment, key_name))
        return _answered(kept)

    def _at_once(self, deployment: Deployment, key_name: str | None) -> _Kept | None:
        """What this configuration's callers are answered without waiting: a list still fresh, a failure
        still kept, or an answered list gone stale (then asked again in the background); ``None`` when
        the caller must wait for the provider."""
        kept = self._kept.get((deployment.name, key_name))
        if kept is None or kept.deployment is not deployment:
            return None
        now = self.clock()
        if kept.until > now:
            return kept
        if kept.error is None and now < kept.until + self.stale_for:
            self._asked(deployment, key_name)
            return kept
        return None

    def _asked(self, deployment: Deployment, key_name: str | None) -> asyncio.Task[_Kept]:
        """The call under way for this configuration of the deployment and key, started if none is."""
        which = (deployment.name, key_name)
        asking = self._asking.get(which)
        if asking is None or asking[0] is not deployment:
            task = asyncio.get_running_loop().create_task(self._ask(deployment, key_name), name="gtl-model-list")
            self._asking[which] = asking = (deployment, task)
            self._began[which] = self.clock()
        return asking[1]

    async def _ask(self, deployment: Deployment, key_name: str | None) -> _Kept:
        """Ask the provider once; what it said is kept while this call is still the deployment's own (a
        reload that changed the deployment meanwhile started another, whose answer counts)."""
        which = (deployment.name, key_name)
        try:
            listed, times = await self.engine.listed_models(deployment.name, key_name)
            names = _without_secrets(listed, self.engine.caller_credentials(deployment, key_name))  # (its key)
            times = {name: made for name, made in times.items() if name in names}
            kept = _Kept(deployment, self.clock() + self.fresh_for, names=tuple(names), times=times)
        except GTLError as exc:
            kept = _Kept(deployment, self.clock() + self.failed_for, error=exc.to_event(""))
        except Exception as exc:  # a body no parser expected: kept like any failure, never asked again at once
            log.warning("the model list of %s could not be read", deployment.name, exc_info=True)
            problem = f"the model list of {deployment.name} could not be read ({type(exc).__name__})"
            error = Error(session_id="", code="PROVIDER_UNAVAILABLE", message=problem, provider=deployment.name)
            kept = _Kept(deployment, self.clock() + self.failed_for, error=error)
        finally:
            current = self._asking.get(which, (None,))[0] is deployment
            if current:
                del self._asking[which]
                self._began.pop(which, None)
        if current:
            self._kept[which] = kept
        return kept


def _answered(kept: _Kept) -> _Kept:
    """``kept``, or its listing's error raised (a copy)."""
    if kept.error is not None:
        raise error_from_event(kept.error)
    return kept


def _without_secrets(names: list[str], deployment: Deployment) -> list[str]:
    """``names`` without any that holds the deployment's secret in any letter case or a credential's shape
    (``quotes_secret``, ``redact``): a model id is the provider's text, passed to whoever may list models — the place a
    provider (or whoever answers at its address) could quote the key back. Dropped names are logged."""
    secrets = deployment.secrets
    kept = [name for name in names if not quotes_secret(name, secrets) and redact(name) == name]
    if len(kept) < len(names):
        log.warning(
            "the model list of %s: %d name(s) holding a credential left out", deployment.name, len(names) - len(kept)
        )
    return kept


_LISTS: weakref.WeakKeyDictionary[Engine, ModelLists] = weakref.WeakKeyDictionary()


def model_lists(engine: Engine) -> ModelLists:
    """The model lists of ``engine`` (made on first use)."""
    lists = _LISTS.get(engine)
    if lists is None:
        lists = _LISTS[engine] = ModelLists(engine)
    return lists
