"""Coalescing across replicas through Redis (``engine.stores.redis_flights``): two engines — two
replicas' — on one real ``redis-server``, in front of one slow simulated upstream.

Identical concurrent requests make one upstream call wherever they land; every caller gets the whole
answer, a late one from its first event; exactly one ledger row across the replicas carries the cost;
a leader whose caller leaves keeps the call for another replica's reader; a leader killed mid-call
ends its followers with a retryable error within the lease; with Redis gone each replica still
answers, coalescing in-process; and no provider key (or a key's name) ever reaches Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gtl_nb import sim
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.cache import CacheConfig, cache_key
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.engine.stores.flights import LocalFlights, LocalLead, open_flights
from gtl_nb.engine.stores.redis_flights import RedisFlights, _Names
from gtl_nb.protocol import CompletionRequest, Done, Error, Message, Status, StreamEvent, Token, Usage
from gtl_nb.protocol.errors import ConfigurationError

MODEL = "gpt-4o-mini"
PROMPT = "Explain in detail how replicas share one upstream call"
LEASE = 1.0  # short, so a dead leader is noticed quickly


def ask(sid: str, prompt: str = PROMPT) -> CompletionRequest:
    return CompletionRequest(
        session_id=sid, model=MODEL, messages=[Message(role="user", content=prompt)], temperature=0
    )


def replica(upstream: Any, url: str, name: str, *, api_key: str = "sim-key", **options: Any) -> Engine:
    """One replica's engine: its own pool on the shared server (``client_name``), its own ledger."""
    settings = load_settings(providers={"openai": {"api_key": api_key, "base_url": upstream.base_url}}, environ={})
    flights = RedisFlights(f"{url}?client_name={name}", lease=options.pop("lease", LEASE))
    return build_engine(settings, ledger="memory://", flights=flights, **options)


async def collect(engine: Engine, sid: str, *, context: RequestContext | None = None) -> list[StreamEvent]:
    return [event async for event in engine.stream(ask(sid), context=context or RequestContext(principal="ann"))]


def text(events: list[StreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, Token))


def shape(events: list[StreamEvent]) -> list[Any]:
    """The events without what differs per session (ids, timings)."""
    kept = []
    for event in events:
        if isinstance(event, Done):
            event = msgspec.structs.replace(event, ttft_ms=None, latency_ms=None)
        if isinstance(event, Usage):
            event = msgspec.structs.replace(event, cost=None)
        kept.append(msgspec.structs.replace(event, session_id=""))
    return kept


async def rows(*engines: Engine) -> list[dict[str, Any]]:
    found = []
    for engine in engines:
        found.extend(await engine.ledger.rows())
    return found


async def close(*engines: Engine) -> None:
    for engine in engines:
        await engine.aclose()


def calls(upstream: Any) -> int:
    return len(upstream.requests)


@pytest.fixture
def upstream() -> Iterator[Any]:
    with sim.serve("openai", pace=0.03) as simulator:
        yield simulator


# -- configuration ------------------------------------------------------------------------------------


def test_coalescing_follows_a_redis_cache_backend_unless_told_otherwise():
    url = "redis://cache.internal:6379/0"
    assert isinstance(open_flights(CacheConfig()), LocalFlights)  # embedded use: unchanged
    assert isinstance(open_flights(CacheConfig(backend=url)), RedisFlights)
    assert isinstance(open_flights(CacheConfig(backend=url, coalescing="memory://")), LocalFlights)
    assert isinstance(open_flights(CacheConfig(coalescing=url)), RedisFlights)
    with pytest.raises(ConfigurationError, match=r"\[cache\] coalescing"):
        CacheConfig.from_dict({"coalescing": "sqlite:///flights.db"})


def test_every_event_reaches_the_other_replica_even_the_ones_published_while_a_batch_is_written(redis_url):
    """The protocol alone: one registry leads, another follows; the terminal event, published (with
    ``finish``) while the writer is still sending the batch before it, is sent before the lock goes."""
    published = [Token(session_id="lead", text=f"piece {index} ") for index in range(300)]
    published.append(Done(session_id="lead"))

    async def scenario():
        one, two = RedisFlights(f"{redis_url}?client_name=one"), RedisFlights(f"{redis_url}?client_name=two")
        try:
            lead, follow = await one.join("k"), await two.join("k")
            assert lead.leads and not follow.leads
            reading = asyncio.ensure_future(_all(follow.events()))
            for event in published[:-1]:
                lead.publish(event)
            while lead._frames:  # until the writer has taken them and is sending them
                await asyncio.sleep(0)
            lead.publish(published[-1])
            lead.finish()
            return await asyncio.wait_for(reading, 10)
        finally:
            await one.aclose()
            await two.aclose()

    received = asyncio.run(scenario())
    assert received == [msgspec.structs.replace(event, session_id="") for event in published]


async def _all(events: Any) -> list[StreamEvent]:
    return [event async for event in events]


# -- sharing ------------------------------------------------------------------------------------------


def test_identical_requests_on_two_replicas_make_one_upstream_call_and_one_row_pays(upstream, redis_url):
    async def scenario():
        one, two = replica(upstream, redis_url, "one"), replica(upstream, redis_url, "two")
        try:
            engines = [one, two, one, two, one, two]
            streams = await asyncio.gather(*(collect(engine, f"s{i}") for i, engine in enumerate(engines)))
            return streams, await rows(one, two)
        finally:
            await close(one, two)

    streams, ledger = asyncio.run(scenario())
    assert calls(upstream) == 1
    assert all(isinstance(events[-1], Done) for events in streams), [events[-1] for events in streams]
    assert text(streams[0]) and len({text(events) for events in streams}) == 1
    assert all(shape(events) == shape(streams[0]) for events in streams)  # the whole stream, event for event
    assert len(ledger) == 6 and all(row["status"] == "ok" for row in ledger)
    paying = [row for row in ledger if row["cost"]]
    assert len(paying) == 1 and paying[0]["cost"] > 0, [(row["session_id"], row["cost"]) for row in ledger]
    assert sum(1 for row in ledger if row["coalesced"]) == 5


def test_a_follower_joining_mid_stream_gets_every_event_from_the_first(upstream, redis_url):
    async def scenario():
        one, two = replica(upstream, redis_url, "one"), replica(upstream, redis_url, "two")
        try:
            early: list[StreamEvent] = []

            async def leader() -> None:
                async for event in one.stream(ask("lead"), user="ann"):
                    early.append(event)

            task = asyncio.ensure_future(leader())
            while sum(isinstance(event, Token) for event in early) < 5:
                await asyncio.sleep(0.01)
            late = await collect(two, "late")
            await task
            return early, late, await rows(one, two)
        finally:
            await close(one, two)

    early, late, ledger = asyncio.run(scenario())
    assert calls(upstream) == 1
    assert isinstance(late[-1], Done) and text(late) == text(early)
    assert shape(late) == shape(early)
    assert [row["coalesced"] for row in sorted(ledger, key=lambda row: row["session_id"])] == [True, False]
    assert sum(1 for row in ledger if row["cost"]) == 1


def test_the_leaders_caller_leaving_keeps_the_call_for_a_reader_on_another_replica(upstream, redis_url):
    async def scenario():
        one, two = replica(upstream, redis_url, "one"), replica(upstream, redis_url, "two")
        try:
            first = one.stream(ask("lead"), user="ann")
            async for event in first:
                if isinstance(event, Token):
                    break
            follower: list[StreamEvent] = []

            async def follow() -> None:
                async for event in two.stream(ask("follow"), user="bob"):
                    follower.append(event)

            task = asyncio.ensure_future(follow())
            while not any(isinstance(event, Token) for event in follower):
                await asyncio.sleep(0.01)
            await first.aclose()  # the caller that started the call leaves: the other replica still reads
            await asyncio.wait_for(task, 30)
            return follower, await rows(one, two)
        finally:
            await close(one, two)

    follower, ledger = asyncio.run(scenario())
    assert calls(upstream) == 1
    assert isinstance(follower[-1], Done), follower[-1]
    assert "You said" in text(follower)  # the sim's answer, from its first piece
    by_session = {row["session_id"]: row for row in ledger}
    assert by_session["lead"]["status"] == "cancelled" and not by_session["lead"]["cost"]
    assert by_session["follow"]["status"] == "ok" and by_session["follow"]["cost"] > 0  # exactly one row pays


def test_a_call_nobody_reads_any_more_is_cancelled_and_its_lock_released(upstream, redis_url):
    import redis

    async def scenario():
        one = replica(upstream, redis_url, "one")
        try:
            first = one.stream(ask("lead"), user="ann")
            async for event in first:
                if isinstance(event, Token):
                    break
            await first.aclose()
            deadline = time.monotonic() + 5
            while one._flights and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return dict(one._flights)
        finally:
            await close(one)

    assert asyncio.run(scenario()) == {}
    client = redis.Redis.from_url(redis_url)
    try:
        assert not list(client.scan_iter(match="gtl:flight:*:lock"))  # a new request anywhere leads a new call
    finally:
        client.close()


# -- failures -----------------------------------------------------------------------------------------

_LEADER = textwrap.dedent(
    """
    import asyncio, sys
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.engine.stores.redis_flights import RedisFlights, _Names
    from gtl_nb.protocol import CompletionRequest, Message, Status, Token

    base_url, redis_url, prompt = sys.argv[1:4]
    tell = sys.argv[4] if len(sys.argv) > 4 else "token"  # print at the first token, or at "streaming"

    async def main():
        settings = load_settings(providers={"openai": {"api_key": "sim-key", "base_url": base_url}}, environ={})
        flights = RedisFlights(redis_url + "?client_name=doomed", lease=1.0)
        engine = build_engine(settings, ledger=False, flights=flights)
        request = CompletionRequest(
            session_id="doomed", model="gpt-4o-mini", messages=[Message(role="user", content=prompt)], temperature=0
        )
        async for event in engine.stream(request, user="ann"):
            if isinstance(event, Token) and tell == "token":
                print("token", flush=True)
            elif isinstance(event, Status) and event.state == "streaming" and tell == "streaming":
                print("streaming", flush=True)

    asyncio.run(main())
    """
)


def _doomed_leader(base_url: str, redis_url: str, tell: str) -> subprocess.Popen[str]:
    """A leader replica in a process of its own (``_LEADER``), once it has ``tell`` (``token``/``streaming``)."""
    leader = subprocess.Popen(
        [sys.executable, "-c", _LEADER, base_url, redis_url, PROMPT, tell],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert leader.stdout is not None and leader.stdout.readline().strip() == tell
    return leader


def test_followers_of_a_leader_that_died_end_with_a_retryable_error_within_the_lease(redis_url):
    with sim.serve("openai", pace=0.2) as slow:  # about ten seconds of answer: it dies long before its end
        leader = _doomed_leader(slow.base_url, redis_url, "token")
        try:

            async def scenario():
                two = replica(slow, redis_url, "two")
                try:
                    events: list[StreamEvent] = []

                    async def follow() -> None:
                        async for event in two.stream(ask("follow"), user="bob"):
                            events.append(event)

                    task = asyncio.ensure_future(follow())
                    while not any(isinstance(event, Token) for event in events):
                        await asyncio.sleep(0.01)
                    leader.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    await asyncio.wait_for(task, 15)
                    return events, time.monotonic() - killed, await two.ledger.rows()
                finally:
                    await close(two)

            events, waited, ledger = asyncio.run(scenario())
        finally:
            leader.kill()
            leader.wait(10)
        assert len(slow.requests) == 1  # the follower did not start a call of its own mid-answer
    end = events[-1]
    assert isinstance(end, Error) and end.code == "PROVIDER_UNAVAILABLE" and end.retryable, end
    assert waited < LEASE + 3, f"the follower waited {waited:.1f} s after its leader died"
    assert [row["status"] for row in ledger] == ["error"]


def test_with_redis_stopped_each_replica_still_answers_coalescing_in_process(upstream, redis_server, tmp_path, caplog):
    kit = sys.modules["gtl_nb_tests_redis_server"]  # loaded by conftest.py
    own = kit.RedisServer.start(tmp_path / "redis")
    url = own.url
    own.stop()

    async def scenario():
        one, two = replica(upstream, url, "one"), replica(upstream, url, "two")
        try:
            engines = [one, two, one, two]
            streams = await asyncio.gather(*(collect(engine, f"s{i}") for i, engine in enumerate(engines)))
            return streams, [one.flights.degraded_reason, two.flights.degraded_reason], await rows(one, two)
        finally:
            await close(one, two)

    with caplog.at_level(logging.WARNING, logger="gtl_nb"):
        streams, reasons, ledger = asyncio.run(scenario())
    assert all(isinstance(events[-1], Done) for events in streams)
    assert len({text(events) for events in streams}) == 1
    assert calls(upstream) == 2  # one call per replica: each coalesced its own two requests
    assert all(reason and "unreachable" in reason for reason in reasons), reasons
    assert sum(1 for row in ledger if row["cost"]) == 2
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("coalescing:")]
    assert len(warnings) == 2, warnings  # one per replica's registry, not one per request


def test_followers_of_a_leader_engine_closed_mid_call_end_at_once_with_a_retryable_error(redis_url):
    with sim.serve("openai", pace=0.1) as slow:

        async def scenario():
            one, two = replica(slow, redis_url, "one"), replica(slow, redis_url, "two")
            lead: list[StreamEvent] = []
            follow: list[StreamEvent] = []

            async def read(engine: Engine, sid: str, into: list[StreamEvent]) -> None:
                async for event in engine.stream(ask(sid), user="ann"):
                    into.append(event)

            leading = asyncio.ensure_future(read(one, "lead", lead))
            try:
                while not any(isinstance(event, Token) for event in lead):
                    await asyncio.sleep(0.01)
                following = asyncio.ensure_future(read(two, "follow", follow))
                while not any(isinstance(event, Token) for event in follow):
                    await asyncio.sleep(0.01)
                await one.aclose()  # a replica shutting down: it ends what it shares instead of going quiet
                closed = time.monotonic()
                await asyncio.wait_for(following, 10)
                return follow, time.monotonic() - closed
            finally:
                leading.cancel()
                await close(two)

        follow, waited = asyncio.run(scenario())
    end = follow[-1]
    assert isinstance(end, Error) and end.code == "PROVIDER_UNAVAILABLE" and end.retryable, end
    assert waited < LEASE, f"the follower waited {waited:.1f} s: the lease, not the shutdown, ended it"


def test_a_leader_that_died_before_its_first_event_is_replaced_by_the_follower(upstream, redis_url):
    """A lock held by a replica that died at once (nothing in its stream): when the lease lapses the
    follower, having given its callers nothing yet, runs the call itself instead of failing."""
    import redis

    flight_key = "flight:" + cache_key("openai", MODEL, ask("any"))
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(_Names("gtl:", flight_key).lock, "f" * 32, px=int(LEASE * 1000))
    finally:
        client.close()

    async def scenario():
        two = replica(upstream, redis_url, "two")
        try:
            started = time.monotonic()
            events = await collect(two, "follow")
            return events, time.monotonic() - started, await two.ledger.rows()
        finally:
            await close(two)

    events, waited, ledger = asyncio.run(scenario())
    assert isinstance(events[-1], Done) and text(events)
    assert calls(upstream) == 1
    assert waited < LEASE + 5
    assert ledger[0]["cost"] > 0 and not ledger[0]["coalesced"]  # its own call: its row pays


def test_a_leader_that_died_with_only_a_status_shared_is_replaced_by_the_follower(upstream, redis_url):
    """A provider slow to its first token: the leader had shared its ``streaming`` status, nothing of
    the answer, when its replica died. The follower, whose callers have nothing to take back, runs the
    call itself and answers — it failed with ``PROVIDER_UNAVAILABLE`` at the lapse, as if mid-answer."""
    with sim.serve("openai", sim.Fault.slow_first_token(30.0)) as slow:
        leader = _doomed_leader(slow.base_url, redis_url, "streaming")
        try:

            async def scenario():
                two = replica(upstream, redis_url, "two")  # (the same deployment's name: the same flight)
                try:
                    events: list[StreamEvent] = []

                    async def follow() -> None:
                        async for event in two.stream(ask("follow"), user="bob"):
                            events.append(event)

                    task = asyncio.ensure_future(follow())
                    while not any(isinstance(event, Status) and event.state == "streaming" for event in events):
                        await asyncio.sleep(0.01)  # the leader's status, read from its stream
                    leader.send_signal(signal.SIGKILL)
                    await asyncio.wait_for(task, 15)
                    return events, await two.ledger.rows()
                finally:
                    await close(two)

            events, ledger = asyncio.run(scenario())
        finally:
            leader.kill()
            leader.wait(10)
    assert isinstance(events[-1], Done) and text(events), events[-3:]
    assert calls(upstream) == 1  # the follower's own call
    assert [row["status"] for row in ledger] == ["ok"] and ledger[0]["cost"] > 0


def test_a_request_finding_a_lock_left_unrenewed_runs_its_own_call_rather_than_replay_a_dead_one(upstream, redis_url):
    """The leader died mid-answer; before its lock lapses a new request arrives. Joining, it would replay
    what the dead leader wrote and then fail mid-answer at the lapse, past any retry of its caller's. A
    lock not renewed for two turns (under ``lease/3`` left) is not joined: the request runs here."""
    import redis

    with sim.serve("openai", pace=0.2) as slow:
        leader = _doomed_leader(slow.base_url, redis_url, "token")
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
        lock = _Names("gtl:", "flight:" + cache_key("openai", MODEL, ask("any"))).lock
        client = redis.Redis.from_url(redis_url)
        try:
            deadline = time.monotonic() + 5
            # inside its last third: not renewed since (or gone already, on a machine too busy to see it:
            # the request then leads, and answers just the same)
            while client.pttl(lock) >= LEASE * 1000 / 4:
                assert time.monotonic() < deadline, "the dead leader's lock never aged"
                time.sleep(0.005)
        finally:
            client.close()

        async def scenario():
            two = replica(upstream, redis_url, "two")
            try:
                return await collect(two, "late"), await two.ledger.rows()
            finally:
                await close(two)

        events, ledger = asyncio.run(scenario())
    assert isinstance(events[-1], Done) and text(events), events[-3:]
    assert calls(upstream) == 1 and [row["status"] for row in ledger] == ["ok"]


def test_redis_dying_mid_call_never_fails_the_leaders_callers(upstream, redis_server, tmp_path):
    """The leader's replica goes on for its own callers (and pays); the other replica's reader, cut off
    after its first events, ends with a retryable error."""
    kit = sys.modules["gtl_nb_tests_redis_server"]
    own = kit.RedisServer.start(tmp_path / "redis")

    async def scenario():
        one, two = replica(upstream, own.url, "one"), replica(upstream, own.url, "two")
        try:
            lead: list[StreamEvent] = []
            follow: list[StreamEvent] = []

            async def read(engine: Engine, sid: str, into: list[StreamEvent]) -> None:
                async for event in engine.stream(ask(sid), user="ann"):
                    into.append(event)

            leading = asyncio.ensure_future(read(one, "lead", lead))
            while not any(isinstance(event, Token) for event in lead):
                await asyncio.sleep(0.01)
            following = asyncio.ensure_future(read(two, "follow", follow))
            while not any(isinstance(event, Token) for event in follow):
                await asyncio.sleep(0.01)
            own.stop()
            await asyncio.wait_for(asyncio.gather(leading, following), 30)
            return lead, follow, await rows(one, two)
        finally:
            await close(one, two)

    try:
        lead, follow, ledger = asyncio.run(scenario())
    finally:
        own.stop()
    assert isinstance(lead[-1], Done) and text(lead)
    end = follow[-1]
    assert isinstance(end, Error) and end.code == "PROVIDER_UNAVAILABLE" and end.retryable, end
    assert "127.0.0.1" not in end.message  # the callers are not told where the shared store lives
    assert calls(upstream) == 1
    assert {row["session_id"]: bool(row["cost"]) for row in ledger} == {"lead": True, "follow": False}


# -- security -----------------------------------------------------------------------------------------

CANARY_KEY = "sk-canary-flight-7e3b1c9d"
CANARY_NAME = "canary-key-name-41f0"


class _Vault:
    """A resolver that picks the key a token names (as the gateway's vault does)."""

    def resolve(self, deployment: Any) -> Any:
        return deployment

    def resolve_for(self, deployment: Any, name: str) -> Any:
        assert name == CANARY_NAME
        return dataclasses.replace(deployment, api_key=CANARY_KEY)


def dump(url: str) -> bytes:
    """Every key of the server and everything each holds, as bytes."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        found = []
        for name in client.scan_iter(match="*"):
            found.append(name)
            kind = client.type(name)
            if kind == b"string":
                found.append(client.get(name) or b"")
            elif kind == b"stream":
                found.extend(repr(entry).encode() for entry in client.xrange(name))
            elif kind == b"zset":
                found.extend(member for member, _ in client.zrange(name, 0, -1, withscores=True))
            elif kind == b"hash":
                found.append(repr(client.hgetall(name)).encode())
        return b"\n".join(found)
    finally:
        client.close()


def test_no_provider_key_nor_a_keys_name_reaches_redis(redis_url):
    with sim.serve("openai", pace=0.03, api_key=CANARY_KEY) as upstream:
        seen: list[bytes] = []

        async def scenario():
            one = replica(upstream, redis_url, "one", api_key="sk-not-this-one", credentials=_Vault())
            two = replica(upstream, redis_url, "two", api_key="sk-not-this-one", credentials=_Vault())
            context = RequestContext(principal="ann", provider_keys={"openai": CANARY_NAME})
            try:

                async def watch() -> None:
                    while True:
                        seen.append(dump(redis_url))
                        await asyncio.sleep(0.05)

                watcher = asyncio.ensure_future(watch())
                streams = await asyncio.gather(collect(one, "a", context=context), collect(two, "b", context=context))
                seen.append(dump(redis_url))
                watcher.cancel()
                return streams
            finally:
                await close(one, two)

        streams = asyncio.run(scenario())
        assert calls(upstream) == 1 and all(isinstance(events[-1], Done) for events in streams)
    everything = b"\n".join(seen)
    assert b"flight:{" in everything and b":events" in everything  # the flight was in Redis meanwhile
    for secret in (CANARY_KEY, CANARY_NAME, "sk-not-this-one"):
        assert secret.encode() not in everything, f"{secret} reached Redis"


# -- races and limits -------------------------------------------------------------------------------


def test_a_leader_whose_caller_leaves_during_its_claims_round_trip_still_leaves_one_paying_row(
    upstream, redis_url, monkeypatch
):
    """The leader's claim lands in Redis, its caller disconnects before the answer is back: the other
    replica's reader sees the claim taken (cost 0), so the leader's row must carry the cost."""
    from gtl_nb.engine.stores import redis_flights

    landed = asyncio.Event()
    claim = redis_flights._Lead.claim

    async def slow_answer(self: Any) -> bool:
        won = await claim(self)  # the SET NX is in Redis ...
        landed.set()
        await asyncio.sleep(0.3)  # ... and its answer still on the way back
        return won

    monkeypatch.setattr(redis_flights._Lead, "claim", slow_answer)

    async def scenario():
        one, two = replica(upstream, redis_url, "one"), replica(upstream, redis_url, "two")
        try:
            lead: list[StreamEvent] = []
            follow: list[StreamEvent] = []

            async def read(engine: Engine, sid: str, into: list[StreamEvent], who: str) -> None:
                async for event in engine.stream(ask(sid), context=RequestContext(principal=who)):
                    into.append(event)

            leading = asyncio.ensure_future(read(one, "lead", lead, "ann"))
            while not any(isinstance(event, Token) for event in lead):
                await asyncio.sleep(0.01)
            following = asyncio.ensure_future(read(two, "follow", follow, "bob"))
            while not any(isinstance(event, Token) for event in follow):
                await asyncio.sleep(0.01)
            await asyncio.wait_for(landed.wait(), 30)
            leading.cancel()  # the leader's client disconnects during the claim's round trip
            await asyncio.gather(leading, return_exceptions=True)
            await asyncio.wait_for(following, 30)
            return follow, await rows(one, two)
        finally:
            await close(one, two)

    follow, ledger = asyncio.run(scenario())
    assert calls(upstream) == 1 and isinstance(follow[-1], Done)
    paying = [(row["session_id"], row["cost"]) for row in ledger if row["cost"]]
    assert [session for session, _ in paying] == ["lead"], [(row["session_id"], row["cost"]) for row in ledger]


def test_a_claim_redis_cannot_answer_is_paid_by_the_reader_that_asked(redis_url, monkeypatch):
    """Whichever role asks, a claim Redis cannot answer pays here: possibly twice, never nobody."""
    from gtl_nb.engine.stores.redis_client import RedisUnavailableError

    async def scenario():
        one, two = RedisFlights(f"{redis_url}?client_name=one"), RedisFlights(f"{redis_url}?client_name=two")
        try:
            lead, follow = await one.join("k"), await two.join("k")
            assert lead.leads and not follow.leads

            async def unanswered(*args: Any) -> Any:
                raise RedisUnavailableError("Redis at redis://x is unreachable (claiming a flight's cost): gone")

            for registry in (one, two):
                monkeypatch.setattr(registry, "_script", unanswered)
            return await lead.claim(), await follow.claim()
        finally:
            lead.finish()
            await one.aclose()
            await two.aclose()

    assert asyncio.run(scenario()) == (True, True)


def test_one_replica_follows_more_flights_than_its_pool_has_connections(redis_url, caplog):
    """Readers do not hold a connection each: a replica with a pool of 3 follows 12 calls of another,
    one upstream call each, and never takes its busy pool for Redis being down."""
    count = 12

    def question(number: int) -> CompletionRequest:
        return ask(f"s{number}", prompt=f"{PROMPT}, number {number}")

    with sim.serve("openai", pace=0.05) as slow:

        async def scenario():
            settings = load_settings(
                providers={"openai": {"api_key": "sim-key", "base_url": slow.base_url}}, environ={}
            )
            one = replica(slow, redis_url, "one")
            flights = RedisFlights(f"{redis_url}?client_name=two&max_connections=3", lease=LEASE)
            two = build_engine(settings, ledger="memory://", flights=flights)
            started = [asyncio.Event() for _ in range(count)]

            async def read(engine: Engine, number: int, leads: bool) -> StreamEvent:
                if not leads:
                    await started[number].wait()
                last: StreamEvent | None = None
                async for event in engine.stream(question(number), user="ann"):
                    last = event
                    if leads and isinstance(event, Token):
                        started[number].set()
                assert last is not None
                return last

            try:
                ends = await asyncio.wait_for(
                    asyncio.gather(
                        *(read(one, n, True) for n in range(count)), *(read(two, n, False) for n in range(count))
                    ),
                    60,
                )
                return ends, two.flights.degraded_reason, await rows(two)
            finally:
                await close(one, two)

        with caplog.at_level(logging.INFO, logger="gtl_nb"):
            ends, reason, followers = asyncio.run(scenario())
        upstream_calls = calls(slow)
    assert all(isinstance(end, Done) for end in ends), [end for end in ends if not isinstance(end, Done)]
    assert upstream_calls == count  # every follower shared its leader's call
    assert all(row["coalesced"] for row in followers)
    assert reason is None
    assert not [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "coalescing" in r.getMessage()
    ]


def test_a_busy_pool_runs_the_flight_here_without_declaring_redis_down(redis_url, caplog, monkeypatch):
    from gtl_nb.engine.stores import redis_client

    monkeypatch.setattr(redis_client, "POOL_WAIT", 0.2)  # how long a caller waits for a free connection
    flights = RedisFlights(f"{redis_url}?client_name=busy&max_connections=1")

    async def scenario():
        try:
            holding = asyncio.ensure_future(flights.redis.run("holding", lambda client: client.blpop(["nothing"], 0.6)))
            await asyncio.sleep(0.1)  # the pool's one connection is taken
            role = await flights.join("k")
            reason = flights.degraded_reason
            await holding
            again = await flights.join("k2")  # and shared again once a connection is free
            if again.leads:
                again.finish()
            return role, reason, again
        finally:
            await flights.aclose()

    with caplog.at_level(logging.INFO, logger="gtl_nb"):
        role, reason, again = asyncio.run(scenario())
    assert isinstance(role, LocalLead) and reason is None
    assert not isinstance(again, LocalLead)
    assert not [r.getMessage() for r in caplog.records if "coalescing" in r.getMessage()]


def test_a_leader_that_lost_its_lease_stops_sharing_and_leaves_the_new_lock_alone(redis_url):
    """The leader's replica stalls longer than the lease; another replica leads a new call meanwhile. The
    old leader's later events never reach its stream, and its end does not delete the new holder's lock."""
    import redis

    async def scenario():
        one, two = RedisFlights(f"{redis_url}?client_name=one", lease=0.5), RedisFlights(f"{redis_url}?client_name=two")
        try:
            old = await one.join("k")
            assert old.leads
            old.publish(Token(session_id="lead", text="before the stall"))
            while old._frames:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            time.sleep(0.8)  # the whole replica stalls: its lock lapses
            new = await two.join("k")
            assert new.leads  # the lock was free: a new call for the same request
            for number in range(3):
                old.publish(Token(session_id="lead", text=f"after the stall {number}"))
                await asyncio.sleep(0.2)
            old.publish(Done(session_id="lead"))
            old.finish()
            await asyncio.wait_for(old._task, 5)
            client = redis.Redis.from_url(redis_url)
            try:
                names = _Names("gtl:", "k")
                entries = client.xrange(names.events(old._token))
                holder = client.get(names.lock)
            finally:
                client.close()
            new.finish()
            return entries, holder, new._token
        finally:
            await one.aclose()
            await two.aclose()

    entries, holder, token = asyncio.run(scenario())
    assert b"".join(fields[b"e"] for _, fields in entries).count(b"after the stall") == 0, entries
    assert holder == token.encode()
