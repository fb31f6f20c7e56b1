"""Backoff: bounds, full jitter, the server's retry_after, the request deadline."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gtl_nb.engine.retry import RetryPolicy
from gtl_nb.protocol import ConfigurationError

FAR = 1e9  # a deadline that never matters


def policy(**settings) -> RetryPolicy:
    settings.setdefault("rng", random.Random(7))
    return RetryPolicy(**settings)


def test_without_jitter_the_delay_is_the_exponential_ceiling_capped_at_max_delay():
    p = policy(max_attempts=10, base_delay=0.5, multiplier=2, max_delay=5, jitter=False)
    delays = [p.next_delay(attempt, None, 0.0, FAR) for attempt in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]


def test_stops_after_max_attempts():
    p = policy(max_attempts=3, jitter=False)
    assert p.next_delay(1, None, 0.0, FAR) is not None
    assert p.next_delay(2, None, 0.0, FAR) is not None
    assert p.next_delay(3, None, 0.0, FAR) is None


def test_one_attempt_means_never_retry():
    assert policy(max_attempts=1).next_delay(1, None, 0.0, FAR) is None


@given(
    attempt=st.integers(min_value=1, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32),
    base=st.floats(min_value=0.0, max_value=5.0),
    multiplier=st.floats(min_value=1.0, max_value=4.0),
)
def test_full_jitter_stays_between_zero_and_the_ceiling(attempt, seed, base, multiplier):
    rng = random.Random(seed)
    p = RetryPolicy(max_attempts=100, base_delay=base, max_delay=30.0, multiplier=multiplier, rng=rng)
    ceiling = min(30.0, base * multiplier ** (attempt - 1))
    delay = p.next_delay(attempt, None, 0.0, FAR)
    assert delay is not None
    assert 0.0 <= delay <= ceiling


def test_full_jitter_spreads_delays_over_the_whole_interval():
    p = policy(max_attempts=5, base_delay=8, max_delay=8, jitter=True)
    delays = [p.next_delay(1, None, 0.0, FAR) for _ in range(2000)]
    assert min(delays) < 0.5
    assert max(delays) > 7.5
    assert sum(delays) / len(delays) == pytest.approx(4.0, abs=0.3)  # uniform on [0, 8]


def test_same_seed_gives_the_same_delays():
    a = policy(rng=random.Random(42), max_attempts=10)
    b = policy(rng=random.Random(42), max_attempts=10)
    first = [a.next_delay(n, None, 0, FAR) for n in range(1, 9)]
    assert first == [b.next_delay(n, None, 0, FAR) for n in range(1, 9)]


@given(
    attempt=st.integers(min_value=1, max_value=4),
    retry_after=st.floats(min_value=0.0, max_value=100.0),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_never_retries_sooner_than_retry_after(attempt, retry_after, seed):
    p = RetryPolicy(max_attempts=5, max_retry_after=100.0, rng=random.Random(seed))
    delay = p.next_delay(attempt, retry_after, 0.0, FAR)
    assert delay is not None
    assert delay >= retry_after


def test_retry_after_may_exceed_max_delay():
    p = policy(max_delay=2, jitter=False, max_retry_after=60)
    assert p.next_delay(1, 45.0, 0.0, FAR) == 45.0


def test_a_retry_after_longer_than_max_retry_after_is_not_waited_here():
    # the provider asks for more than the caller should be kept waiting without a word: the request
    # fails over or ends with that error and its retry_after (the caller, or its SDK, waits once)
    p = policy(jitter=False)
    assert p.max_retry_after == 10.0
    assert p.next_delay(1, 10.0, 0.0, FAR) == 10.0
    assert p.next_delay(1, 10.5, 0.0, FAR) is None
    assert p.next_delay(1, None, 0.0, FAR) is not None  # no wait asked: the backoff alone
    assert policy(max_retry_after=0).next_delay(1, 0.5, 0.0, FAR) is None  # never wait on a provider's word


def test_gives_up_when_retry_after_passes_the_deadline():
    p = policy(jitter=False, max_retry_after=60)
    assert p.next_delay(1, 30.0, now=100.0, deadline=120.0) is None
    assert p.next_delay(1, 19.0, now=100.0, deadline=120.0) == 19.0


def test_gives_up_when_the_backoff_would_reach_the_deadline():
    p = policy(base_delay=4, max_delay=4, jitter=False)
    assert p.next_delay(1, None, now=10.0, deadline=14.0) is None
    assert p.next_delay(1, None, now=10.0, deadline=14.5) == 4.0


@given(
    attempt=st.integers(min_value=1, max_value=10),
    retry_after=st.none() | st.floats(min_value=0, max_value=200),
    now=st.floats(min_value=0, max_value=1e6),
    budget=st.floats(min_value=0, max_value=300),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_a_retry_always_starts_before_the_deadline(attempt, retry_after, now, budget, seed):
    p = RetryPolicy(max_attempts=20, rng=random.Random(seed))
    delay = p.next_delay(attempt, retry_after, now, now + budget)
    if delay is not None:
        assert delay >= 0
        assert now + delay < now + budget


def test_huge_attempt_numbers_do_not_overflow():
    p = policy(max_attempts=10**6, base_delay=1, multiplier=10, max_delay=7, jitter=False)
    assert p.next_delay(5000, None, 0.0, FAR) == 7


def test_deadline_from_adds_the_per_request_budget():
    assert policy(deadline=90).deadline_from(1000.0) == 1090.0


def test_from_dict_reads_the_routing_retry_table():
    p = RetryPolicy.from_dict(
        {
            "max_attempts": 5,
            "base_delay": 1,
            "max_delay": 10,
            "multiplier": 3,
            "jitter": False,
            "deadline": 45,
            "max_retry_after": 30,
        },
        rng=random.Random(1),
    )
    assert (p.max_attempts, p.base_delay, p.max_delay) == (5, 1, 10)
    assert (p.multiplier, p.jitter, p.deadline, p.max_retry_after) == (3, False, 45, 30)
    assert p.next_delay(2, None, 0.0, FAR) == 3.0
    assert RetryPolicy.from_dict(None) == RetryPolicy()


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"max_attempt": 3}, "did you mean 'max_attempts'"),
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"max_attempts": 2.5}, "integer"),
        ({"jitter": "full"}, "true or false"),
        ({"base_delay": 5, "max_delay": 1}, "base_delay <= max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": "1m"}, "number"),
        ({"max_retry_after": -1}, "max_retry_after must be >= 0"),
        ({"max_retry_after": float("nan")}, "max_retry_after must be >= 0"),
        ({"deadline": float("nan")}, "deadline must be > 0"),
        ({"base_delay": float("nan")}, "base_delay <= max_delay"),
        ({"multiplier": float("nan")}, "multiplier"),
        ("fast", "must be a table"),
    ],
)
def test_from_dict_rejects_bad_tables(table, fragment):
    with pytest.raises(ConfigurationError, match=r"routing\.retry") as info:
        RetryPolicy.from_dict(table)
    assert fragment in str(info.value)
