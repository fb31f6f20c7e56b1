"""``Flight``'s rules on their own: who pays, who may leave, when the call is cancelled."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from gtl_nb.engine.coalesce import Flight
from gtl_nb.protocol import Done, Status, Token, Usage

EVENTS = [
    Status(session_id="lead", state="streaming"),
    Token(session_id="lead", text="one answer"),
    Usage(session_id="lead", tokens_in=3, tokens_out=2, cost=0.5),
    Done(session_id="lead"),
]


def published(flight: Flight) -> Flight:
    flight.publish(Status(session_id="lead", state="queued"))
    for event in EVENTS:
        flight.publish(event)
    return flight


async def read(flight: Flight, sid: str, *, own: bool = False, stop_after: type | None = None) -> list:
    seen = []
    async with aclosing(flight.follow(sid, own=own)) as events:
        async for event in events:
            seen.append(event)
            if stop_after is not None and isinstance(event, stop_after):
                break
    return seen


def costs(events: list) -> list[float | None]:
    return [event.cost for event in events if isinstance(event, Usage)]


def test_the_leader_pays_and_followers_see_cost_zero_whoever_reads_the_usage_first():
    async def scenario():
        flight = published(Flight())
        leader = flight.follow("lead", own=True)
        await leader.__anext__()  # the leader is reading, but slower than the follower
        follower = await read(flight, "f1")
        rest = [event async for event in leader]
        return follower, rest

    follower, rest = asyncio.run(scenario())
    assert costs(follower) == [0.0] and costs(rest) == [0.5]
    assert {event.session_id for event in follower} == {"f1"}


def test_a_leader_that_left_before_the_usage_hands_the_cost_to_the_next_reader():
    async def scenario():
        flight = published(Flight())
        await read(flight, "lead", own=True, stop_after=Token)
        return await read(flight, "f1"), await read(flight, "f2")

    first, second = asyncio.run(scenario())
    assert costs(first) == [0.5] and costs(second) == [0.0]


def test_a_reader_that_read_the_usage_and_then_left_still_is_the_only_payer():
    async def scenario():
        flight = published(Flight())
        paid = await read(flight, "lead", own=True, stop_after=Usage)  # its row keeps the usage it saw
        return paid, await read(flight, "f1")

    paid, follower = asyncio.run(scenario())
    assert costs(paid) == [0.5] and costs(follower) == [0.0]


def test_a_claim_lost_to_another_replica_means_nobody_here_pays():
    asked = []

    async def lost() -> bool:
        asked.append(True)
        return False

    async def scenario():
        flight = published(Flight())
        flight.claim = lost
        return await read(flight, "lead", own=True), await read(flight, "f1")

    leader, follower = asyncio.run(scenario())
    assert costs(leader) == [0.0] and costs(follower) == [0.0] and asked == [True]  # asked once per flight


def test_the_last_reader_leaving_cancels_the_call_unless_readers_elsewhere_want_it():
    async def scenario(keep: bool) -> tuple[bool, bool]:
        flight = Flight()
        flight.task = asyncio.ensure_future(asyncio.sleep(10))
        flight.on_idle = lambda: keep
        flight.publish(Token(session_id="lead", text="a"))
        await read(flight, "lead", own=True, stop_after=Token)
        await asyncio.sleep(0)
        cancelled = flight.task.cancelled() or flight.task.cancelling() > 0
        flight.task.cancel()
        return flight.abandoned, cancelled

    assert asyncio.run(scenario(keep=False)) == (True, True)
    assert asyncio.run(scenario(keep=True)) == (False, False)
