"""``[cache] scope``: behind a gateway, whose requests read one another's cached answers — one tenant's
never another's (by default), one principal's only its own (``"principal"``), or everyone's
(``"shared"``); the embedded engine, which has no tenants, keeps one cache as before."""

from __future__ import annotations

import asyncio

import pytest

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.cache import CacheConfig, cache_key, partition
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.engine.settings import load_settings
from gtl_nb.protocol import CompletionRequest, ConfigurationError, Message, Status

ANN = RequestContext(principal="ann", tenant="acme")
CAT = RequestContext(principal="cat", tenant="acme")
BOB = RequestContext(principal="bob", tenant="globex")
DAN = RequestContext(principal="dan")  # no tenant claim
EVE = RequestContext(principal="eve")
ACME = RequestContext(principal="acme")  # a principal named as a tenant is still not that tenant
REQUEST = CompletionRequest(
    session_id="s", model="echo", messages=[Message(role="user", content="the same question")], temperature=0
)


def engine_for(scope: str | None, *, gateway: bool = True) -> object:
    cache = {"enabled": True} if scope is None else {"enabled": True, "scope": scope}
    engine = build_engine(load_settings(config={"cache": cache, "ledger": {"enabled": False}}), ledger=False)
    if gateway:
        engine.set_audience(GATEWAY)  # as a gateway serving it does
    return engine


def cached(engine: object, context: RequestContext) -> bool:
    """Whether ``context``'s asking of the one question was answered from the cache."""

    async def ask() -> bool:
        events = [event async for event in engine.stream(REQUEST, context=context)]  # type: ignore[attr-defined]
        return any(isinstance(event, Status) and event.state == "cached" for event in events)

    return asyncio.run(ask())


def test_by_default_a_tenant_never_reads_another_tenants_answers_and_its_principals_share():
    engine = engine_for(None)
    assert [cached(engine, who) for who in (ANN, BOB, CAT, BOB)] == [False, False, True, True]


def test_principals_without_a_tenant_are_each_their_own():
    engine = engine_for("tenant")
    assert [cached(engine, who) for who in (DAN, EVE, DAN, EVE)] == [False, False, True, True]
    assert not cached(engine, ANN)  # and a tenant's member is none of theirs


def test_a_principal_named_as_a_tenant_reads_nothing_of_that_tenant():
    engine = engine_for("tenant")
    assert [cached(engine, who) for who in (ANN, ACME)] == [False, False]


def test_scope_principal_keeps_each_principals_answers_its_own():
    engine = engine_for("principal")
    assert [cached(engine, who) for who in (ANN, CAT, ANN)] == [False, False, True]


def test_scope_shared_shares_across_tenants():
    engine = engine_for("shared")
    assert [cached(engine, who) for who in (ANN, BOB, DAN)] == [False, True, True]


def test_the_embedded_engine_keeps_one_cache():
    """No tenants and one holder of every key: the scope does not apply (the keys are the ones it had)."""
    engine = engine_for("principal", gateway=False)
    assert [cached(engine, who) for who in (ANN, BOB)] == [False, True]
    assert cache_key("echo", "echo", REQUEST) == cache_key("echo", "echo", REQUEST, None)


def test_the_owner_is_part_of_the_key_and_never_shown_in_it():
    keys = {
        cache_key("d", "m", REQUEST, owner)
        for owner in (
            None,
            ["tenant", "acme"],
            ["tenant", "globex"],
            ["principal", "", "acme"],
            ["principal", "", "ann"],
        )
    }
    assert len(keys) == 5
    assert all(len(key) == 64 and "acme" not in key for key in keys)


def test_partition():
    assert partition("tenant", ANN) == ["tenant", "acme"]
    assert partition("tenant", DAN) == ["principal", "", "dan"]
    assert partition("principal", ANN) == ["principal", "acme", "ann"]
    # two tenants' tokens may carry one sub: under "principal" they are still two owners
    assert partition("principal", RequestContext(principal="ann", tenant="globex")) != partition("principal", ANN)
    assert partition("shared", ANN) is None
    assert partition("tenant", None) is None


def test_the_scope_is_checked():
    assert CacheConfig().scope == "tenant"
    with pytest.raises(ConfigurationError, match=r"\[cache\] scope must be one of tenant, principal, shared"):
        CacheConfig.from_dict({"scope": "everyone"})
    with pytest.raises(ConfigurationError, match="scope must be a str"):
        CacheConfig.from_dict({"scope": 1})


@pytest.mark.parametrize(("first", "second", "calls"), [(ANN, BOB, 2), (ANN, CAT, 1)])
def test_identical_requests_in_flight_share_one_call_within_the_scope_only(first, second, calls):
    """Coalescing is the cache's twin (an answer another's key pays for): the same partition only."""
    from gtl_nb import sim

    with sim.serve("openai", seed=1, api_key="k", pace=0.02) as upstream:
        providers = {"openai": {"api_key": "k", "base_url": upstream.base_url}}
        settings = load_settings(config={"providers": providers, "ledger": {"enabled": False}})
        engine = build_engine(settings, ledger=False)
        engine.set_audience(GATEWAY)
        request = CompletionRequest(
            session_id="s", model="openai:gpt-4o-mini", messages=[Message(role="user", content="hi")], temperature=0
        )

        async def both() -> None:
            async def one(context: RequestContext) -> None:
                async for _ in engine.stream(request, context=context):
                    pass

            await asyncio.gather(one(first), one(second))

        asyncio.run(both())
        assert len(upstream.requests) == calls
