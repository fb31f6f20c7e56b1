"""``[budgets.tenants.<name>]``: the members of a tenant (a GhostToken's ``tenant`` claim) share limits,
on top of each member's own, through the same atomic budget counter."""

from __future__ import annotations

import asyncio

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.settings import load_settings
from gtl_nb.protocol import CompletionRequest, Done, Error, Message

NOW = 1_800_000_000.0


def run(engine, principal: str, tenant: str | None, n: int) -> Done | Error:
    request = CompletionRequest(
        session_id=f"s-{principal}-{n}", model="echo", messages=[Message(role="user", content="hi")]
    )

    async def one() -> Done | Error:
        context = RequestContext(principal=principal, tenant=tenant)
        events = [event async for event in engine.stream(request, context=context)]
        return events[-1]

    return asyncio.run(one())


def engine_with(budgets: dict) -> object:
    settings = load_settings(config={"budgets": budgets, "ledger": {"enabled": False}})
    return build_engine(settings, wall_clock=lambda: NOW, ledger=False)


def test_members_of_a_tenant_share_its_request_budget_and_others_do_not():
    engine = engine_with({"tenants": {"acme": {"requests_per_minute": 2}}})
    assert isinstance(run(engine, "ana", "acme", 1), Done)
    assert isinstance(run(engine, "bo", "acme", 2), Done)
    refused = run(engine, "cy", "acme", 3)  # a third member: the tenant's two are used
    assert isinstance(refused, Error) and refused.code == "RATE_LIMIT" and refused.retry_after
    assert isinstance(run(engine, "dee", "other", 4), Done)  # another tenant, no table: no shared limit
    assert isinstance(run(engine, "eve", None, 5), Done)  # no tenant at all


def test_a_tenants_daily_usd_budget_is_not_retryable():
    engine = engine_with({"tenants": {"acme": {"usd_per_day": 0}}})
    refused = run(engine, "ana", "acme", 1)
    assert isinstance(refused, Error) and refused.code == "BUDGET_EXCEEDED" and not refused.retryable


def test_a_member_is_held_to_both_its_own_limits_and_the_tenants():
    engine = engine_with(
        {"users": {"ana": {"requests_per_minute": 1}}, "tenants": {"acme": {"requests_per_minute": 5}}}
    )
    assert isinstance(run(engine, "ana", "acme", 1), Done)
    refused = run(engine, "ana", "acme", 2)  # ana's own limit, though the tenant has room
    assert isinstance(refused, Error) and refused.code == "RATE_LIMIT"
    assert isinstance(run(engine, "bo", "acme", 3), Done)  # the tenant's room is still there for bo


def test_a_member_its_tenant_refuses_keeps_its_own_room():
    """The tenant's refusal gives the member's own reservation back whole: a refused request counts
    for no one (``ratelimit``'s "What counts")."""
    engine = engine_with(
        {"users": {"ana": {"requests_per_minute": 1}}, "tenants": {"acme": {"requests_per_minute": 1}}}
    )
    assert isinstance(run(engine, "bo", "acme", 1), Done)  # the tenant's one request
    refused = run(engine, "ana", "acme", 2)
    assert isinstance(refused, Error) and refused.code == "RATE_LIMIT" and "acme" in refused.message
    assert isinstance(run(engine, "ana", None, 3), Done)  # her own one request is still hers


def test_a_request_routing_refuses_uses_none_of_the_budget():
    """No deployment was chosen (an unknown one named), so no provider was called: the reservation
    made before routing decided is given back."""
    engine = engine_with({"requests_per_minute": 1, "usd_per_day": 1.0})
    for n in range(3):
        request = CompletionRequest(
            session_id=f"s-{n}", model="nowhere:gpt-4o-mini", messages=[Message(role="user", content="hi")]
        )

        async def refused(request: CompletionRequest = request) -> Done | Error:
            events = [event async for event in engine.stream(request, context=RequestContext(principal="ana"))]
            return events[-1]

        end = asyncio.run(refused())
        assert isinstance(end, Error) and end.code == "MODEL_NOT_FOUND"
    assert isinstance(run(engine, "ana", None, 4), Done)
    assert isinstance(run(engine, "ana", None, 5), Error)  # and the one answered counts
