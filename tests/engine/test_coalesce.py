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


def test_readers_that_share_a_session_id_still_have_one_payer():
    """Ids are the clients': two identical requests of one id (one token on two connections) shared a
    call, and the follower — its id equal to the leader's — was taken for the payer, whoever read the
    usage first: the call's cost landed on both rows."""

    async def scenario():
        flight = published(Flight())
        leader = flight.follow("lead", own=True)
        await leader.__anext__()
        follower = await read(flight, "lead")  # reads the usage first
        rest = [event async for event in leader]
        after = await read(published(Flight()), "lead")  # nobody else: a lone reader pays
        return follower, rest, after

    follower, rest, after = asyncio.run(scenario())
    assert costs(follower) == [0.0] and costs(rest) == [0.5] and costs(after) == [0.5]


def test_a_leader_that_left_before_the_usage_hands_the_cost_to_the_next_reader_of_its_id():
    async def scenario():
        flight = published(Flight())
        await read(flight, "lead", own=True, stop_after=Token)
        return await read(flight, "lead"), await read(flight, "lead")

    first, second = asyncio.run(scenario())
    assert costs(first) == [0.5] and costs(second) == [0.0]


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


class _Payer:
    """The payer claim two replicas share (``SET NX`` on one key): the first claim wins, claiming
    again answers the same; ``reply`` seconds pass between a claim landing and its answer."""

    def __init__(self, reply: float = 0.0) -> None:
        self.holder: str | None = None
        self.reply = reply
        self.asked: list[str] = []
        self.landed = asyncio.Event()

    def claim_for(self, replica: str):
        async def claim() -> bool:
            self.asked.append(replica)
            if self.holder is None:
                self.holder = replica
            self.landed.set()
            await asyncio.sleep(self.reply)  # the answer is on its way back
            return self.holder == replica

        return claim


def test_a_claim_won_while_its_reader_is_cancelled_still_leaves_one_paying_row():
    """Replica A's only reader leaves while its claim's answer is on the way: the claim landed, so B's
    reader sees it taken (cost 0) — A's reader must carry the cost: its row gets the paid usage
    before the cancellation goes on."""
    payer = _Payer(reply=0.05)

    async def scenario():
        here, there = published(Flight()), published(Flight())
        here.claim, there.claim = payer.claim_for("a"), payer.claim_for("b")
        seen: list = []

        async def lead() -> None:
            async with aclosing(here.follow("lead", own=True)) as events:
                async for event in events:
                    seen.append(event)

        task = asyncio.ensure_future(lead())
        await payer.landed.wait()
        task.cancel()  # the caller disconnects during the claim's round trip
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        return seen, outcome, await read(there, "b1")

    seen, outcome, elsewhere = asyncio.run(scenario())
    assert isinstance(outcome, asyncio.CancelledError)  # the cancellation still ends the session
    assert costs(elsewhere) == [0.0]
    assert costs(seen) == [0.5]  # exactly one row pays: the cancelled one, with the usage it was handed


def test_readers_here_wait_for_a_claim_under_way_and_one_of_them_pays_if_the_claimant_left():
    """The claimant is cancelled twice (it stops waiting for the answer): the claim still won for this
    replica, so the next reader here pays — without asking again."""
    payer = _Payer(reply=0.05)

    async def scenario():
        flight = published(Flight())
        flight.claim = payer.claim_for("a")
        leader = asyncio.ensure_future(read(flight, "lead", own=True))
        await payer.landed.wait()
        leader.cancel()
        await asyncio.sleep(0)
        leader.cancel()  # a second cancel: it stops waiting for the claim's answer
        await asyncio.gather(leader, return_exceptions=True)
        return await read(flight, "f1"), await read(flight, "f2")

    first, second = asyncio.run(scenario())
    assert costs(first) == [0.5] and costs(second) == [0.0]
    assert payer.asked == ["a"]  # asked once: the answer it had not waited for still counted
