"""GTLConnection under random traffic: sessions interleaved at random, cancels, bad frames, split streams.

A scripted server answers each request with a legal event sequence drawn from the message
strategies; a scheduler interleaves the client's requests, the server's events and the pumping of
bytes; the client cancels some sessions after a drawn number of events. Every plan runs twice —
bytes delivered whole, and cut at random offsets — and both runs must receive the same events.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import msgspec
from connection_pair import ConnectionPair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import bad_frames, dones, errors, reasonings, requests, statuses, tokens, tool_call_events, usages

from gtl_nb.protocol import (
    DEFAULT_MAX_BAD_FRAMES,
    Cancel,
    CompletionRequest,
    ConnectionTerminated,
    Done,
    Error,
    HandshakeComplete,
    ProtocolViolation,
    SessionStateMachine,
    StreamEvent,
)

FAST = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TERMINAL = (Done, Error)


def mine(strategy: st.SearchStrategy[Any], sid: str) -> st.SearchStrategy[Any]:
    return strategy.map(lambda event: msgspec.structs.replace(event, session_id=sid))


@st.composite
def scripts(draw: st.DrawFn, sid: str) -> list[StreamEvent]:
    """A legal event sequence for one session, ending with one done or error."""
    if draw(st.integers(0, 9)) == 0:
        return [draw(mine(errors, sid))]  # refused before it started
    events = [draw(mine(statuses, sid))]
    events += draw(st.lists(mine(st.one_of(tokens, reasonings, tool_call_events, statuses), sid), max_size=5))
    if draw(st.booleans()):
        events.append(draw(mine(usages, sid)))
    events.append(draw(mine(dones | errors, sid)))
    return events


@dataclass
class Plan:
    requests: list[CompletionRequest]
    scripts: dict[str, list[StreamEvent]]
    cancel_after: dict[str, int | None]
    schedule: list[int]
    to_server_cuts: list[int]
    to_client_cuts: list[int]
    bad: dict[int, tuple[str, int, bytes]] = field(default_factory=dict)  # step -> (direction, session, frame)


@st.composite
def plans(draw: st.DrawFn, with_bad_frames: bool = False) -> Plan:
    sids = [f"sess-{i}" for i in range(draw(st.integers(1, 4)))]
    plan = Plan(
        requests=[msgspec.structs.replace(draw(requests), session_id=sid) for sid in sids],
        scripts={sid: draw(scripts(sid)) for sid in sids},
        cancel_after={sid: draw(st.sampled_from([None, None, 0, 1, 2, 4])) for sid in sids},
        schedule=draw(st.lists(st.integers(0, 1000), min_size=5, max_size=40)),
        to_server_cuts=draw(st.lists(st.integers(0, 6000), max_size=12)),
        to_client_cuts=draw(st.lists(st.integers(0, 6000), max_size=12)),
    )
    if with_bad_frames:
        steps = draw(st.lists(st.integers(0, len(plan.schedule) + 5), max_size=8, unique=True))
        one_way = draw(st.sampled_from([None, "to_server", "to_client"]))  # enough bad frames on one side end it
        for step in steps:
            direction = one_way or draw(st.sampled_from(["to_server", "to_client"]))
            plan.bad[step] = (direction, draw(st.integers(0, 3)), draw(bad_frames | st.just(b"")))
    return plan


class Run:
    """Plays a plan over a ConnectionPair, as a client application and a scripted server would."""

    def __init__(self, plan: Plan, pair: ConnectionPair) -> None:
        self.plan, self.pair = plan, pair
        self.unsent = list(plan.requests)
        self.started: list[str] = []
        self.remaining: dict[str, deque[StreamEvent]] = {}  # the server's scripts in progress
        self.sent: dict[str, list[StreamEvent]] = {}  # what the server application sent per session
        self.server_ends: Counter[str] = Counter()  # terminals on the server side, sent or received
        self.cancelled: set[str] = set()

    def play(self) -> Run:
        self.pair.handshake()
        for step, choice in enumerate(self.plan.schedule):
            self.inject(step)
            actions = [self.send_request] if self.unsent else []
            actions += [lambda sid=sid: self.server_step(sid) for sid in sorted(self.remaining)]
            actions.append(self.react)
            actions[choice % len(actions)]()
        for step in range(len(self.plan.schedule), 200):  # then play everything out
            self.inject(step)
            while self.unsent:
                self.send_request()
            for sid in sorted(self.remaining):
                while sid in self.remaining:
                    self.server_step(sid)
            if self.react() == ([], []) and not self.remaining and not self.unsent:
                return self
        raise AssertionError("the plan did not finish")

    def inject(self, step: int) -> None:
        if step not in self.plan.bad:
            return
        direction, index, frame = self.plan.bad[step]
        sid = self.started[index % len(self.started)] if self.started else "ghost"
        if not frame:  # a damaged frame that still names a session
            kind = b"cancel" if direction == "to_server" else b"token"
            frame = b'{"type":"' + kind + b'","session_id":"' + sid.encode() + b'",,}'
        getattr(self.pair, f"inject_{direction}")(frame + b"\n")

    def send_request(self) -> None:
        request = self.unsent.pop(0)
        if self.pair.client.closed:
            return  # never started
        self.pair.client_send(request)
        self.started.append(request.session_id)
        self.maybe_cancel(request.session_id)

    def maybe_cancel(self, sid: str) -> None:
        after = self.plan.cancel_after[sid]
        received = sum(1 for e in self.pair.client_events if getattr(e, "session_id", None) == sid)
        if after is not None and received >= after and sid not in self.cancelled:
            self.cancelled.add(sid)
            self.pair.client_send(Cancel(session_id=sid))

    def server_step(self, sid: str) -> None:
        assert sid in self.pair.server.live_sessions  # the connection told us of every end it caused
        script = self.remaining[sid]
        event = script.popleft()
        if not script:
            del self.remaining[sid]
        self.pair.server_send(event)
        self.sent[sid].append(event)
        if isinstance(event, TERMINAL):
            self.server_ends[sid] += 1

    def react(self) -> tuple[list[object], list[object]]:
        client_events, server_events = self.pair.pump()
        for event in server_events:
            sid = getattr(event, "session_id", None)
            if isinstance(event, CompletionRequest):
                self.remaining[sid] = deque(self.plan.scripts[sid])
                self.sent[sid] = []
            elif isinstance(event, Cancel):  # stop now: the one terminal event is a CANCELLED error
                self.remaining[sid] = deque([Error(session_id=sid, code="CANCELLED", message="cancelled")])
            elif isinstance(event, Error):  # the connection ended it on this side
                self.remaining.pop(sid, None)
                self.server_ends[sid] += 1
        for sid in self.started:
            if sid in self.pair.client.live_sessions:
                self.maybe_cancel(sid)
        return client_events, server_events

    def client_session(self, sid: str) -> list[object]:
        return [e for e in self.pair.client_events if getattr(e, "session_id", None) == sid]


def comparable(event: object) -> object:
    """Events as values (exceptions compare by identity)."""
    if isinstance(event, ProtocolViolation):
        return ("violation", type(event.error).__name__, str(event.error), event.session_id, event.bad_frames)
    if isinstance(event, ConnectionTerminated):
        return ("end", type(event.error).__name__, str(event.error), event.by_peer)
    if isinstance(event, HandshakeComplete):
        return ("hello", event.version, event.features)
    return event


def both_ways(plan: Plan) -> Run:
    """Play ``plan`` whole and cut; the two runs must receive the same events. The cut run is returned."""
    whole = Run(plan, ConnectionPair()).play()
    cut = Run(plan, ConnectionPair(to_server_cuts=plan.to_server_cuts, to_client_cuts=plan.to_client_cuts)).play()
    for side in ("client_events", "server_events"):
        assert [comparable(e) for e in getattr(cut.pair, side)] == [comparable(e) for e in getattr(whole.pair, side)]
    return cut


def ends_exactly_once(events: list[object]) -> bool:
    return sum(isinstance(e, TERMINAL) for e in events) == 1 and isinstance(events[-1], TERMINAL)


@FAST
@given(plans())
def test_every_session_ends_exactly_once_on_both_sides_and_arrives_as_sent(plan):
    run = both_ways(plan)
    assert run.started == [r.session_id for r in plan.requests]
    for sid in run.started:
        machine = SessionStateMachine(sid)
        for event in plan.scripts[sid]:
            machine.advance(event)  # the scripts themselves are legal
        received = run.client_session(sid)
        assert received == run.sent[sid]  # nothing lost, nothing reordered, nothing added
        assert ends_exactly_once(received)
        assert run.server_ends[sid] == 1
        cancels = [e for e in run.pair.server_events if isinstance(e, Cancel) and e.session_id == sid]
        assert len(cancels) <= 1
        if cancels:
            assert received[-1] == Error(session_id=sid, code="CANCELLED", message="cancelled")
    for events in (run.pair.client_events, run.pair.server_events):
        assert not [e for e in events if isinstance(e, (ProtocolViolation, ConnectionTerminated))]
    assert not run.pair.client.live_sessions and not run.pair.server.live_sessions


@FAST
@given(plans(with_bad_frames=True))
def test_bad_frames_end_their_sessions_and_enough_of_them_the_connection(plan):
    run = both_ways(plan)
    for sid in run.started:
        # a damaged frame may name a session after its end: reported as a violation, not a second end
        ended = [e for e in run.client_session(sid) if not isinstance(e, ProtocolViolation)]
        assert ends_exactly_once(ended), run.client_session(sid)
        if sid in run.sent or run.server_ends[sid]:  # the server saw the request
            assert run.server_ends[sid] == 1
    for connection in (run.pair.client, run.pair.server):
        assert connection.bad_frames <= DEFAULT_MAX_BAD_FRAMES
        assert connection.closed or connection.bad_frames < DEFAULT_MAX_BAD_FRAMES
        assert not connection.live_sessions
    # a closed connection said so exactly once, last; an open one never reported an end
    for events, connection in ((run.pair.client_events, run.pair.client), (run.pair.server_events, run.pair.server)):
        ends = [e for e in events if isinstance(e, ConnectionTerminated)]
        assert len(ends) == int(connection.closed)
        if ends:
            assert events[-1] is ends[0]
