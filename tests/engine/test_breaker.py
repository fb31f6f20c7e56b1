"""Circuit breakers with a fake clock: every transition of the state diagram, and the board."""

from __future__ import annotations

import pytest

from gtl_nb.engine.breaker import MOMENTARY_LIMIT, WINDOW_BUCKETS, BreakerBoard, BreakerConfig, CircuitBreaker
from gtl_nb.protocol import ConfigurationError


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **settings) -> CircuitBreaker:
    return CircuitBreaker("dep", BreakerConfig(**settings), clock=clock)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


# -- consecutive failures -------------------------------------------------------------------------


def test_closed_breaker_allows_calls():
    breaker = make(FakeClock())
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(100))


def test_opens_after_n_consecutive_failures():
    breaker = make(FakeClock(), failure_threshold=3, error_rate_threshold=0)
    fail(breaker, 2)
    assert breaker.state == "closed"
    fail(breaker, 1)
    assert breaker.state == "open"
    assert not breaker.allow()
    assert not breaker.would_allow()


def test_a_success_ends_the_failure_streak():
    breaker = make(FakeClock(), failure_threshold=3, error_rate_threshold=0)
    fail(breaker, 2)
    breaker.record_success()
    fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.snapshot()["consecutive_failures"] == 2


def test_consecutive_rule_can_be_switched_off():
    breaker = make(FakeClock(), failure_threshold=0, error_rate_threshold=0)
    fail(breaker, 50)
    assert breaker.state == "closed"


# -- error rate over the sliding window ----------------------------------------------------------


def test_opens_when_error_rate_reaches_threshold_with_enough_calls():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=0, error_rate_threshold=0.5, window=60, min_calls=4)
    for ok in (True, False, True):
        breaker.record_success() if ok else breaker.record_failure()
        clock.advance(1)
    assert breaker.state == "closed"  # 1 of 3: below min_calls anyway
    breaker.record_failure()  # 2 of 4 = 50 %
    assert breaker.state == "open"


def test_error_rate_needs_min_calls():
    breaker = make(FakeClock(), failure_threshold=0, error_rate_threshold=0.5, min_calls=5)
    fail(breaker, 4)  # 100 % but only 4 calls
    assert breaker.state == "closed"
    fail(breaker, 1)
    assert breaker.state == "open"


def test_error_rate_below_threshold_stays_closed():
    breaker = make(FakeClock(), failure_threshold=0, error_rate_threshold=0.5, min_calls=4)
    for _ in range(10):
        breaker.record_success()
        breaker.record_success()
        breaker.record_failure()  # one in three
    assert breaker.state == "closed"
    assert breaker.snapshot()["error_rate"] == pytest.approx(1 / 3)


def test_failures_older_than_the_window_do_not_count():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=0, error_rate_threshold=0.5, window=10, min_calls=4)
    fail(breaker, 3)
    clock.advance(10)  # the three failures slide out (the window is the last 10 s, exclusive)
    for _ in range(3):
        breaker.record_success()
    breaker.record_failure()  # 1 of 4 in the window
    assert breaker.state == "closed"
    snap = breaker.snapshot()
    assert snap["calls_in_window"] == 4
    assert snap["error_rate"] == pytest.approx(0.25)


def test_failures_inside_the_window_still_count():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=0, error_rate_threshold=0.5, window=10, min_calls=4)
    fail(breaker, 3)
    clock.advance(9.9)
    breaker.record_success()  # 3 of 4 in the window
    assert breaker.state == "closed"  # a success never opens...
    breaker.record_failure()  # ...but the next failure sees 4 of 5
    assert breaker.state == "open"


# -- cooldown and half-open probes ----------------------------------------------------------------


def test_open_circuit_turns_half_open_after_cooldown():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=30)
    fail(breaker, 1)
    clock.advance(29.999)
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.state == "half_open"
    assert breaker.would_allow()


def test_half_open_lets_k_probes_through_at_a_time():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=5, half_open_probes=2)
    fail(breaker, 1)
    clock.advance(5)
    assert breaker.allow()
    assert breaker.would_allow()
    assert breaker.allow()
    assert not breaker.would_allow()
    assert not breaker.allow()
    assert breaker.snapshot()["probes_in_flight"] == 2


def test_probe_success_closes_the_circuit_and_clears_history():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, cooldown=5)
    fail(breaker, 2)
    clock.advance(5)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    snap = breaker.snapshot()
    assert snap["consecutive_failures"] == 0
    assert snap["calls_in_window"] == 0
    assert snap["opened_at"] is None
    fail(breaker, 1)  # the streak starts again from zero
    assert breaker.state == "closed"


def test_probe_failure_reopens_with_a_fresh_cooldown():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=10)
    fail(breaker, 1)
    clock.advance(12)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.snapshot()["opened_at"] == clock.now
    clock.advance(9)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_release_returns_a_probe_slot_without_a_verdict():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=1, half_open_probes=1)
    fail(breaker, 1)
    clock.advance(1)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.state == "half_open"
    assert breaker.allow()


def test_results_arriving_while_open_are_ignored():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=10)
    fail(breaker, 1)
    breaker.record_success()  # a call that started before the circuit opened
    assert breaker.state == "open"
    breaker.record_failure()
    clock.advance(10)
    assert breaker.state == "half_open"  # the late failure did not restart the cooldown


# -- a provider's Retry-After ----------------------------------------------------------------------


def test_a_retry_after_past_the_cooldown_holds_the_opening_circuit_open_until_then():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, error_rate_threshold=0, cooldown=30)
    breaker.record_failure(retry_after=500.0)  # no opening: only the failure that opens sets the hold
    assert breaker.record_failure(retry_after=120.0) == ("closed", "open")
    snap = breaker.snapshot()
    assert (snap["retry_at"], snap["retry_in"], snap["provider_retry_after"]) == (1120.0, 120.0, 120.0)
    clock.advance(119.999)
    assert breaker.state == "open" and not breaker.allow()  # not probed while the provider refuses
    clock.advance(0.001)
    assert breaker.acquire() == "probe"
    assert breaker.record_success() == ("half_open", "closed")
    assert breaker.snapshot()["provider_retry_after"] is None
    fail(breaker, 2)  # opened again without a wait asked: the plain cooldown
    assert breaker.snapshot()["retry_in"] == 30.0


def test_a_retry_after_shorter_than_the_cooldown_holds_the_circuit_open_for_that_wait_alone():
    """The provider said when it takes requests again: the probe goes then, not after the 30 s cooldown."""
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, error_rate_threshold=0, cooldown=30)
    breaker.record_failure()
    assert breaker.record_failure(retry_after=3.0) == ("closed", "open")
    snap = breaker.snapshot()
    assert (snap["retry_at"], snap["retry_in"], snap["provider_retry_after"]) == (1003.0, 3.0, 3.0)
    clock.advance(2.999)
    assert breaker.state == "open" and not breaker.allow()
    clock.advance(0.001)
    assert breaker.acquire() == "probe"
    assert breaker.record_failure(retry_after=4.0) == ("half_open", "open")  # the probe's wait: anew
    assert breaker.snapshot()["retry_in"] == 4.0


@pytest.mark.parametrize(
    ("retry_after", "held"),
    [
        (3.0, 3.0),  # shorter than the cooldown
        (30.0, 30.0),
        (120.0, 120.0),  # longer
        (300.0, 300.0),
        (86_400.0, 300.0),  # longer than max_cooldown: held to it
        (float("inf"), 300.0),  # (never from the provider parsers, which drop it) held to the ceiling
        (1.0, 1.0),
        (0.25, 1.0),  # under MOMENTARY_LIMIT: held for it
        (0.001, 1.0),
    ],
)
def test_the_opening_failures_wait_holds_the_circuit_open_within_the_floor_and_max_cooldown(retry_after, held):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=30, max_cooldown=300)
    breaker.record_failure(retry_after=retry_after)
    assert breaker.snapshot()["retry_in"] == held
    clock.advance(held - 0.001)
    still = breaker.state
    clock.advance(0.001)
    assert (still, breaker.state) == ("open", "half_open")
    assert MOMENTARY_LIMIT == 1.0


@pytest.mark.parametrize("retry_after", [None, 0.0, -4.0, float("nan")])
def test_a_failure_asking_for_no_wait_opens_for_the_cooldown(retry_after):
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=30, max_cooldown=300)
    breaker.record_failure(retry_after=retry_after)
    snap = breaker.snapshot()
    assert (snap["retry_in"], snap["provider_retry_after"]) == (30.0, None)
    clock.advance(29.999)
    assert breaker.state == "open"
    clock.advance(0.001)
    assert breaker.state == "half_open"


def test_the_hold_is_bounded_by_max_cooldown_and_zero_switches_it_off():
    clock = FakeClock()
    bounded = make(clock, failure_threshold=1, cooldown=30, max_cooldown=300)
    off = make(clock, failure_threshold=1, cooldown=30, max_cooldown=0)
    off_short = make(clock, failure_threshold=1, cooldown=30, max_cooldown=0)
    bounded.record_failure(retry_after=86_400.0)
    off.record_failure(retry_after=120.0)
    off_short.record_failure(retry_after=3.0)  # 0: providers' waits are ignored, shorter ones too
    assert (bounded.snapshot()["retry_in"], bounded.snapshot()["provider_retry_after"]) == (300.0, 300.0)
    assert (off.snapshot()["retry_in"], off.snapshot()["provider_retry_after"]) == (30.0, None)
    assert (off_short.snapshot()["retry_in"], off_short.snapshot()["provider_retry_after"]) == (30.0, None)
    clock.advance(300)
    assert bounded.state == "half_open"


def test_a_max_cooldown_under_the_floor_is_still_the_ceiling():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=30, max_cooldown=0.5)
    breaker.record_failure(retry_after=10.0)
    assert breaker.snapshot()["retry_in"] == 0.5


def test_a_failed_probe_that_asks_for_longer_reopens_for_that_long():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=10)
    breaker.record_failure(retry_after=60.0)
    clock.advance(60)
    assert breaker.acquire() == "probe"
    assert breaker.record_failure(retry_after=90.0) == ("half_open", "open")
    clock.advance(89)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.acquire() == "probe"
    assert breaker.record_failure() == ("half_open", "open")  # no wait asked this time: the cooldown
    assert breaker.snapshot()["retry_in"] == 10.0


def test_the_error_rate_rule_opens_with_the_hold_too():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=0, error_rate_threshold=0.5, min_calls=2, cooldown=10)
    breaker.record_success()
    assert breaker.record_failure(retry_after=45.0) == ("closed", "open")
    assert breaker.snapshot()["retry_in"] == 45.0


def test_a_wait_asked_while_open_changes_nothing():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=10)
    breaker.record_failure()
    breaker.record_failure(retry_after=200.0)  # a call started before it opened: ignored, as any result
    clock.advance(10)
    assert breaker.state == "half_open"


def test_the_hold_survives_export_and_a_lowered_ceiling_bounds_it_again():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=30)
    breaker.record_failure(retry_after=250.0)
    state = breaker.to_state()
    assert state["provider_retry_after"] == 250.0
    again = CircuitBreaker.from_state(state, "dep", BreakerConfig(failure_threshold=1, cooldown=30), clock=clock)
    lowered = CircuitBreaker.from_state(
        state, "dep", BreakerConfig(failure_threshold=1, cooldown=30, max_cooldown=100), clock=clock
    )
    switched_off = CircuitBreaker.from_state(
        state, "dep", BreakerConfig(failure_threshold=1, cooldown=30, max_cooldown=0), clock=clock
    )
    assert (again.snapshot()["retry_in"], lowered.snapshot()["retry_in"]) == (250.0, 100.0)
    assert switched_off.snapshot()["retry_in"] == 30.0  # a reload set 0: the cooldown alone
    unfloored = {**state, "provider_retry_after": 0.5}  # kept as asked (the Redis script does): floored on reading
    floored = CircuitBreaker.from_state(unfloored, "dep", BreakerConfig(cooldown=30), clock=clock)
    assert floored.snapshot()["retry_in"] == 1.0
    older = {key: value for key, value in state.items() if key != "provider_retry_after"}  # before it existed
    assert CircuitBreaker.from_state(older, "dep", BreakerConfig(cooldown=30), clock=clock).snapshot()["retry_in"] == 30


def test_a_single_deployment_is_cooled_down_too():
    clock = FakeClock()
    board = BreakerBoard(BreakerConfig(failure_threshold=2, cooldown=30), clock=clock)
    for _ in range(2):
        assert board.get("only").allow()
        board.get("only").record_failure()
    assert not board.get("only").allow()
    assert not board.would_allow("only")
    assert board.states() == {"only": "open"}
    clock.advance(30)
    assert board.would_allow("only")


# -- snapshot, listener, switches -----------------------------------------------------------------


def test_snapshot_reports_state_counts_and_times():
    clock = FakeClock(500.0)
    breaker = make(clock, failure_threshold=2, cooldown=30)
    breaker.record_success()
    fail(breaker, 2)
    clock.advance(10)
    snap = breaker.snapshot()
    assert snap == {
        "deployment": "dep",
        "state": "open",
        "consecutive_failures": 2,
        "calls_in_window": 3,
        "error_rate": pytest.approx(2 / 3),
        "opened_at": 500.0,
        "retry_at": 530.0,
        "retry_in": 20.0,
        "provider_retry_after": None,
        "probes_in_flight": 0,
    }


def test_state_changes_are_reported_to_the_listener():
    clock = FakeClock()
    changes = []
    breaker = CircuitBreaker(
        "east",
        BreakerConfig(failure_threshold=1, cooldown=5),
        clock=clock,
        on_change=lambda *change: changes.append(change),
    )
    fail(breaker, 1)
    clock.advance(5)
    assert breaker.allow()
    breaker.record_success()
    assert changes == [
        ("east", "closed", "open"),
        ("east", "open", "half_open"),
        ("east", "half_open", "closed"),
    ]


def test_a_listener_may_read_the_breaker_it_is_told_about():
    clock = FakeClock()
    seen = []
    board = BreakerBoard(BreakerConfig(failure_threshold=1), clock=clock)
    board.on_change = lambda name, old, new: seen.append(board.get(name).snapshot()["state"])
    board.get("east").record_failure()
    assert seen == ["open"]


def test_would_allow_reserves_nothing():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=1, half_open_probes=1)
    fail(breaker, 1)
    clock.advance(1)
    assert all(breaker.would_allow() for _ in range(10))
    assert breaker.allow()
    assert not breaker.would_allow()


def test_disabled_breaker_always_allows():
    breaker = make(FakeClock(), enabled=False, failure_threshold=1)
    fail(breaker, 10)
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.would_allow()


def test_reset_closes_an_open_circuit():
    breaker = make(FakeClock(), failure_threshold=1)
    fail(breaker, 1)
    breaker.reset()
    assert breaker.state == "closed"
    assert breaker.allow()


# -- the board -------------------------------------------------------------------------------------


def test_board_creates_one_breaker_per_deployment_on_demand():
    board = BreakerBoard(BreakerConfig(failure_threshold=1), clock=FakeClock())
    assert board.states() == {}
    assert board.would_allow("never-seen")
    assert board.states() == {}  # a health check creates nothing
    assert board.get("a") is board["a"]
    board.get("b").record_failure()
    assert board.states() == {"a": "closed", "b": "open"}
    assert set(board.snapshots()) == {"a", "b"}


# -- configuration --------------------------------------------------------------------------------


def test_config_defaults_are_documented_values():
    config = BreakerConfig.from_dict({})
    assert config == BreakerConfig()
    assert (config.failure_threshold, config.error_rate_threshold, config.min_calls) == (5, 0.5, 10)
    assert (config.window, config.cooldown, config.half_open_probes) == (60.0, 30.0, 1)
    assert config.max_cooldown == 300.0


def test_config_from_routing_breaker_table():
    config = BreakerConfig.from_dict(
        {"failure_threshold": 2, "error_rate_threshold": 0.25, "window": 30, "min_calls": 8, "cooldown": 2.5}
    )
    assert config.failure_threshold == 2
    assert config.error_rate_threshold == 0.25
    assert config.window == 30
    assert config.cooldown == 2.5


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"failure_treshold": 3}, "did you mean 'failure_threshold'"),
        ({"cooldown": "30s"}, "cooldown must be a number"),
        ({"failure_threshold": 2.5}, "must be an integer"),
        ({"enabled": 1}, "true or false"),
        ({"error_rate_threshold": 1.5}, "between 0 and 1"),
        ({"half_open_probes": 0}, ">= 1"),
        ({"max_cooldown": -1}, "max_cooldown must be a finite number >= 0"),
        ({"max_cooldown": float("inf")}, "max_cooldown must be a finite number >= 0"),
        ({"max_cooldown": float("nan")}, "max_cooldown must be a finite number >= 0"),
        ({"max_cooldown": "5m"}, "max_cooldown must be a number"),
        (5, "must be a table"),
    ],
)
def test_config_rejects_bad_tables(table, fragment):
    with pytest.raises(ConfigurationError, match=r"\[routing\.breaker\]") as info:
        BreakerConfig.from_dict(table)
    assert fragment in str(info.value)


def test_config_backend_is_a_store_url():
    assert BreakerConfig().backend == "memory://"
    assert BreakerConfig.from_dict({"backend": "sqlite:///breakers.db"}).backend == "sqlite:///breakers.db"
    with pytest.raises(ConfigurationError, match=r"\[routing\.breaker\]: backend must be a string"):
        BreakerConfig.from_dict({"backend": 1})
    with pytest.raises(ConfigurationError, match="postgresql:// holds the usage ledger only"):
        BreakerConfig.from_dict({"backend": "postgresql://db/gtl"})


# -- state as data, and the changes a verdict causes --------------------------------------------------


def test_record_calls_return_the_change_they_caused():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2, error_rate_threshold=0, cooldown=10)
    assert breaker.record_failure() is None
    assert breaker.record_failure() == ("closed", "open")
    assert breaker.record_failure() is None  # ignored while open
    clock.advance(10)
    assert breaker.acquire() == "probe"
    assert breaker.record_success() == ("half_open", "closed")
    assert breaker.record_success() is None


def test_a_cooldown_that_ends_inside_a_verdict_reports_from_half_open():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, cooldown=10)
    breaker.record_failure()
    clock.advance(10)  # nobody looked: the verdict itself finds the cooldown over
    assert breaker.record_failure() == ("half_open", "open")


def test_state_exports_and_restores_with_the_same_behaviour():
    clock = FakeClock()
    original = make(clock, failure_threshold=3, error_rate_threshold=0.5, min_calls=4, half_open_probes=2)
    for outcome in (True, False, True):
        original.record_failure() if outcome else original.record_success()
    state = original.to_state()
    assert state == {
        "state": "closed",
        "consecutive": 1,
        "buckets": [[333, 3, 2]],  # bucket 333 of 3 s: [999, 1002); 3 calls, 2 failed
        "bucket_width": "3.0",
        "opened_at": None,
        "provider_retry_after": None,
        "probes": 0,
    }
    restored = CircuitBreaker.from_state(state, "dep", original.config, clock=clock)
    assert restored.snapshot() == original.snapshot()
    assert restored.record_failure() == original.record_failure() == ("closed", "open")  # 3 of 4 failed
    clock.advance(30)
    assert original.acquire() == "probe"
    again = CircuitBreaker.from_state(original.to_state(), "dep", original.config, clock=clock)
    assert again.to_state() == original.to_state()
    assert [again.acquire(), again.acquire()] == ["probe", None]  # one of two slots was already taken


@pytest.mark.parametrize("state", [{}, {"state": "melted"}, {"state": "open", "consecutive": "x"}, []])
def test_state_that_is_not_a_breakers_is_refused(state):
    with pytest.raises(ValueError):
        CircuitBreaker.from_state(state)


def test_the_state_stays_small_however_many_calls_the_window_holds():
    clock = FakeClock()
    breaker = make(clock, failure_threshold=0, error_rate_threshold=0.5, window=60, min_calls=10)
    for index in range(30_000):  # 500 calls a second for a minute
        clock.now = 1000.0 + index / 500
        breaker.record_failure() if index % 4 == 0 else breaker.record_success()
    state = breaker.to_state()
    assert len(state["buckets"]) == WINDOW_BUCKETS
    snap = breaker.snapshot()
    assert snap["calls_in_window"] == sum(calls for _, calls, _ in state["buckets"])
    assert 57 * 500 - 1 <= snap["calls_in_window"] <= 60 * 500  # between 19/20 of the window and all of it
    assert snap["error_rate"] == pytest.approx(0.25, abs=0.001)
    assert breaker.state == "closed"


def test_a_result_counts_for_at_least_19_20_of_the_window_and_never_longer_than_it():
    for offset in (0.0, 0.25, 0.49, 0.5, 0.99):  # where in its bucket (of 0.5 s) the failure fell
        clock = FakeClock(1000.0 + offset)
        breaker = make(clock, failure_threshold=0, error_rate_threshold=0.5, window=10, min_calls=1)
        breaker.record_success()
        clock.advance(9.5 - 1e-9)  # 19/20 of the window later: still counted
        assert breaker.snapshot()["calls_in_window"] == 1, offset
        clock.advance(0.5 + 1e-9)  # the whole window later: gone, wherever it fell in its bucket
        assert breaker.snapshot()["calls_in_window"] == 0, offset


def test_state_of_an_earlier_version_listing_every_call_is_read_into_buckets():
    clock = FakeClock(1010.0)
    config = BreakerConfig(failure_threshold=5, error_rate_threshold=0.5, window=10, min_calls=4)
    old = {
        "state": "closed",
        "consecutive": 2,
        "window": [[999.0, False], [1003.2, True], [1003.4, False], [1009.9, True]],
        "opened_at": None,
        "probes": 0,
        "probe_at": None,  # what the stores added
        "token": "x",
    }
    breaker = CircuitBreaker.from_state(old, "dep", config, clock=clock)
    snap = breaker.snapshot()  # the call at 999 has left the window
    assert (snap["consecutive_failures"], snap["calls_in_window"], snap["error_rate"]) == (2, 3, pytest.approx(2 / 3))
    assert breaker.to_state()["buckets"] == [[2006, 2, 1], [2019, 1, 1]]
    assert breaker.record_failure() == ("closed", "open")  # 3 of 4 failed


def test_buckets_of_another_width_are_moved_into_this_configurations():
    clock = FakeClock(1000.0)
    wide = make(clock, failure_threshold=0, error_rate_threshold=0.5, window=60, min_calls=1)
    wide.record_failure()  # bucket 333 of 3 s: [999, 1002)
    narrow = CircuitBreaker.from_state(wide.to_state(), "dep", BreakerConfig(window=30, min_calls=1), clock=clock)
    assert narrow.to_state()["buckets"] == [[666, 1, 1]]  # [999, 1000.5) in buckets of 1.5 s
    assert narrow.snapshot()["calls_in_window"] == 1


def test_a_result_reported_late_goes_to_its_own_bucket():
    clock = FakeClock(1000.0)
    late = make(clock, failure_threshold=0, error_rate_threshold=0.5, window=10, min_calls=1)
    late.record_success()  # bucket 2000
    clock.now = 1002.0
    late.record_success()  # bucket 2004
    clock.now = 1001.0  # another process's clock, a little behind
    late.record_failure()  # bucket 2002: between the two
    assert late.to_state()["buckets"] == [[2000, 1, 0], [2002, 1, 1], [2004, 1, 0]]
