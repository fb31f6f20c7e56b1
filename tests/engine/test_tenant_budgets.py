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


def test_a_request_cancelled_between_its_two_counters_gives_the_first_back():
    """Cancelled while the tenant's counter is asked, the member's reservation (made just before) is
    given back: it neither keeps her minute's request nor leaves the request without its end."""
    engine = engine_with(
        {"users": {"ana": {"requests_per_minute": 1}}, "tenants": {"acme": {"requests_per_minute": 5}}}
    )
    counter = engine.stores.budgets
    real_reserve = counter.reserve

    async def slow_for_the_tenant(key, *args, **kwargs):
        if key.startswith("tenant:"):
            await asyncio.sleep(30)
        return await real_reserve(key, *args, **kwargs)

    counter.reserve = slow_for_the_tenant
    request = CompletionRequest(session_id="s-cut", model="echo", messages=[Message(role="user", content="hi")])

    async def cancelled_while_counting() -> None:
        context = RequestContext(principal="ana", tenant="acme")
        task = asyncio.ensure_future(_drain(engine.stream(request, context=context)))
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(cancelled_while_counting())
    counter.reserve = real_reserve
    assert isinstance(run(engine, "ana", "acme", 2), Done)  # her one request a minute is still hers


def test_a_refused_request_in_flight_holds_no_place_in_the_budget():
    """A request routing refuses reserves nothing, so while it waits for its caller to read its answer a
    valid request beside it is not refused for the budget, and it hears its own error, not RATE_LIMIT."""
    engine = engine_with({"requests_per_minute": 1})
    unknown = CompletionRequest(
        session_id="s-unknown", model="nowhere:gpt-4o-mini", messages=[Message(role="user", content="hi")]
    )

    async def beside_a_refused_one() -> tuple[Error, Done | Error]:
        refused = engine.stream(unknown, context=RequestContext(principal="ana"))
        first = await refused.__anext__()  # the refused request is in flight, its answer not yet read
        assert first
        valid = CompletionRequest(session_id="s-valid", model="echo", messages=[Message(role="user", content="hi")])
        ends = [event async for event in engine.stream(valid, context=RequestContext(principal="ana"))]
        rest = [event async for event in refused]
        return rest[-1], ends[-1]

    refused_end, valid_end = asyncio.run(beside_a_refused_one())
    assert isinstance(valid_end, Done)
    assert isinstance(refused_end, Error) and refused_end.code == "MODEL_NOT_FOUND"


async def _drain(events) -> None:
    async for _ in events:
        pass


def test_a_follower_of_a_call_refused_before_any_provider_is_not_counted():
    """Two identical requests share one call (coalescing); every circuit open, no provider is called:
    the follower's row names no deployment, and neither request counts — as its leader does not."""
    engine = engine_with({"requests_per_minute": 5})

    async def circuit_open(name: str) -> None:  # a breaker whose circuit is open: no provider is called
        await asyncio.sleep(0.05)
        return None

    engine._acquire = circuit_open

    async def one(session_id: str, principal: str) -> Done | Error:
        request = CompletionRequest(
            session_id=session_id, model="echo", temperature=0, messages=[Message(role="user", content="hi")]
        )
        return [event async for event in engine.stream(request, context=RequestContext(principal=principal))][-1]

    async def together() -> list[int]:
        ends = await asyncio.gather(one("lead", "ana"), one("follow", "bo"))
        assert all(isinstance(end, Error) for end in ends), ends
        now = engine.wall_clock()
        return [(await engine.stores.budgets.usage(who, now=now))["requests_last_minute"] for who in ("ana", "bo")]

    assert asyncio.run(together()) == [0, 0]


def test_a_failing_budget_counter_ends_the_request_internal_without_its_words():
    engine = engine_with({"requests_per_minute": 5})

    async def broken(*args, **kwargs):
        raise OSError("redis://user:hunter2@10.0.0.5:6379 unreachable")

    engine.stores.budgets.reserve = broken
    end = run(engine, "ana", None, 1)
    assert isinstance(end, Error) and end.code == "INTERNAL" and "hunter2" not in end.message
