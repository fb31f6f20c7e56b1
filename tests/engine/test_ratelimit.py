"""Budgets and rate limits per user, against a fake ledger and fixed unix times."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gtl_nb.engine.ratelimit import BudgetConfig, BudgetGuard, Limits, Spend, refusal, usage_report, utc_day_start
from gtl_nb.protocol import BudgetExceededError, ConfigurationError, RateLimitError

NOON = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()
MIDNIGHT = datetime(2024, 3, 2, 0, 0, tzinfo=timezone.utc).timestamp()  # the end of 2024-03-01


class Ledger:
    """``(user, unix time, tokens, usd)`` rows; ``usage`` is the ``usage_source`` callable."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, int, float]] = []
        self.queries: list[tuple[str, float]] = []

    def add(self, user: str, at: float, tokens: int = 0, usd: float = 0.0) -> None:
        self.rows.append((user, at, tokens, usd))

    def usage(self, user: str, since: float) -> tuple[int, int, float]:
        self.queries.append((user, since))
        rows = [r for r in self.rows if r[0] == user and r[1] >= since]
        return len(rows), sum(r[2] for r in rows), sum(r[3] for r in rows)


def guard(ledger: Ledger, **budgets) -> BudgetGuard:
    return BudgetGuard(BudgetConfig.from_dict(budgets), ledger.usage, clock_wall=lambda: NOON)


# -- no limits ------------------------------------------------------------------------------------


def test_without_limits_nothing_is_queried():
    ledger = Ledger()
    guard(ledger).check("ann", NOON)
    assert ledger.queries == []


# -- requests per minute --------------------------------------------------------------------------


def test_requests_below_the_limit_pass():
    ledger = Ledger()
    for seconds_ago in (50, 30):
        ledger.add("ann", NOON - seconds_ago)
    guard(ledger, requests_per_minute=3).check("ann", NOON)


def test_requests_at_the_limit_are_refused_with_the_wait_until_the_window_frees():
    ledger = Ledger()
    for seconds_ago in (50.5, 30, 10):
        ledger.add("ann", NOON - seconds_ago)
    with pytest.raises(RateLimitError) as info:
        guard(ledger, requests_per_minute=3).check("ann", NOON)
    error = info.value
    assert error.retryable is True
    assert error.code == "RATE_LIMIT"
    assert error.retry_after == 10.0  # the request from 50.5 s ago leaves the window in 9.5 s
    assert "3 requests per minute" in error.message
    event = error.to_event("s1")
    assert (event.code, event.retryable, event.retry_after) == ("RATE_LIMIT", True, 10.0)


def test_retry_after_is_rounded_up_to_whole_seconds_and_counts_every_excess_request():
    ledger = Ledger()
    for seconds_ago in (50, 49, 5, 1):
        ledger.add("ann", NOON - seconds_ago)
    expected = {
        4: 11.0,  # one must leave: the one 50 s ago is still in the window at +10 s (since is inclusive)
        3: 12.0,  # two must leave: 50 s and 49 s ago
        2: 56.0,  # three must leave: ... and 5 s ago
    }
    for limit, wait in expected.items():
        with pytest.raises(RateLimitError) as info:
            guard(ledger, requests_per_minute=limit).check("ann", NOON)
        assert info.value.retry_after == wait


def test_requests_over_the_limit_are_refused():
    ledger = Ledger()
    for seconds_ago in range(1, 11):
        ledger.add("ann", NOON - seconds_ago)
    with pytest.raises(RateLimitError) as info:
        guard(ledger, requests_per_minute=5).check("ann", NOON)
    assert 0 < info.value.retry_after <= 60


def test_requests_older_than_a_minute_do_not_count():
    ledger = Ledger()
    for seconds_ago in (61, 70, 120):
        ledger.add("ann", NOON - seconds_ago)
    guard(ledger, requests_per_minute=1).check("ann", NOON)


def test_a_zero_limit_blocks_without_a_retry():
    with pytest.raises(RateLimitError) as info:
        guard(Ledger(), requests_per_minute=0).check("ann", NOON)
    assert info.value.retryable is False
    assert info.value.retry_after is None


def test_other_users_usage_does_not_count():
    ledger = Ledger()
    for _ in range(5):
        ledger.add("bob", NOON - 1)
    guard(ledger, requests_per_minute=1).check("ann", NOON)


# -- tokens per minute ----------------------------------------------------------------------------


def test_tokens_below_the_limit_pass():
    ledger = Ledger()
    ledger.add("ann", NOON - 5, tokens=999)
    guard(ledger, tokens_per_minute=1000).check("ann", NOON)


def test_tokens_at_the_limit_are_refused_until_enough_tokens_leave_the_window():
    ledger = Ledger()
    ledger.add("ann", NOON - 40.5, tokens=600)
    ledger.add("ann", NOON - 20.5, tokens=300)
    ledger.add("ann", NOON - 0.5, tokens=100)
    with pytest.raises(RateLimitError) as info:
        guard(ledger, tokens_per_minute=1000).check("ann", NOON)
    assert info.value.retryable is True
    assert info.value.retry_after == 20.0  # the 600 tokens from 40.5 s ago must leave
    assert "1000 tokens per minute" in info.value.message


def test_tokens_over_the_limit_are_refused():
    ledger = Ledger()
    ledger.add("ann", NOON - 1, tokens=5000)
    with pytest.raises(RateLimitError):
        guard(ledger, tokens_per_minute=1000).check("ann", NOON)


# -- money per UTC day ----------------------------------------------------------------------------


def test_spend_below_the_daily_budget_passes():
    ledger = Ledger()
    ledger.add("ann", NOON - 3600, usd=4.99)
    guard(ledger, usd_per_day=5).check("ann", NOON)


@pytest.mark.parametrize("spent", [5.0, 7.25])
def test_spend_at_or_over_the_daily_budget_is_refused_and_says_when_it_resets(spent):
    ledger = Ledger()
    ledger.add("ann", NOON - 3600, usd=spent)
    with pytest.raises(BudgetExceededError) as info:
        guard(ledger, usd_per_day=5).check("ann", NOON)
    error = info.value
    assert error.retryable is False
    assert error.code == "BUDGET_EXCEEDED"
    assert "$5.00" in error.message
    assert f"${spent:.4f}" in error.message
    assert "2024-03-02 00:00 UTC" in error.message
    assert "in 12 h 0 min" in error.message


def test_the_daily_budget_resets_at_utc_midnight():
    ledger = Ledger()
    ledger.add("ann", MIDNIGHT - 60, usd=10.0)  # 23:59 UTC on March 1st
    budget = guard(ledger, usd_per_day=5)
    with pytest.raises(BudgetExceededError):
        budget.check("ann", MIDNIGHT - 1)
    budget.check("ann", MIDNIGHT)  # a new UTC day
    budget.check("ann", MIDNIGHT + 1)
    assert ledger.queries[-1] == ("ann", MIDNIGHT)


def test_utc_day_start_is_midnight_utc():
    assert utc_day_start(NOON) == datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp()
    assert utc_day_start(MIDNIGHT) == MIDNIGHT
    assert utc_day_start(MIDNIGHT - 0.001) == MIDNIGHT - 86_400


def test_spent_budget_is_reported_before_the_rate_limit():
    ledger = Ledger()
    for _ in range(3):
        ledger.add("ann", NOON - 1, usd=2.0)
    with pytest.raises(BudgetExceededError):
        guard(ledger, requests_per_minute=1, usd_per_day=5).check("ann", NOON)


# -- configuration and per-user overrides ---------------------------------------------------------


def test_per_user_overrides_replace_only_the_keys_they_set():
    config = BudgetConfig.from_dict(
        {
            "requests_per_minute": 10,
            "usd_per_day": 5,
            "users": {"ann": {"requests_per_minute": 2}, "root": {"usd_per_day": "unlimited"}},
        }
    )
    assert config.limits_for("ann") == Limits(requests_per_minute=2, usd_per_day=5.0)
    assert config.limits_for("root") == Limits(requests_per_minute=10, usd_per_day=None)
    assert config.limits_for("bob") == Limits(requests_per_minute=10, usd_per_day=5.0)


def test_guard_applies_the_users_own_limits():
    ledger = Ledger()
    for user in ("ann", "bob", "ann", "bob"):
        ledger.add(user, NOON - 1)
    config = BudgetConfig.from_dict({"requests_per_minute": 5, "users": {"ann": {"requests_per_minute": 2}}})
    budget = BudgetGuard(config, ledger.usage)
    with pytest.raises(RateLimitError):
        budget.check("ann", NOON)
    budget.check("bob", NOON)


def test_an_unlimited_user_is_not_queried():
    ledger = Ledger()
    config = BudgetConfig.from_dict({"usd_per_day": 1, "users": {"root": {"usd_per_day": "unlimited"}}})
    BudgetGuard(config, ledger.usage).check("root", NOON)
    assert ledger.queries == []


def test_check_reads_the_wall_clock_when_no_time_is_given():
    ledger = Ledger()
    ledger.add("ann", NOON - 1)
    budget = guard(ledger, requests_per_minute=1)
    with pytest.raises(RateLimitError):
        budget.check("ann")
    assert ledger.queries[0] == ("ann", NOON - 60)


def test_status_reports_limits_and_usage():
    ledger = Ledger()
    ledger.add("ann", NOON - 10, tokens=40, usd=0.5)
    ledger.add("ann", NOON - 7200, tokens=10, usd=1.0)
    status = guard(ledger, requests_per_minute=10, usd_per_day=5).status("ann", NOON)
    assert status == {
        "user": "ann",
        "requests_per_minute": 10,
        "requests_last_minute": 1,
        "tokens_per_minute": None,
        "tokens_last_minute": 40,
        "usd_per_day": 5.0,
        "usd_today": 1.5,
        "day_resets_at": MIDNIGHT,
    }


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"request_per_minute": 3}, "did you mean 'requests_per_minute'"),
        ({"requests_per_minute": 2.5}, "whole number"),
        ({"tokens_per_minute": -1}, "whole number >= 0"),
        ({"usd_per_day": "5$"}, "usd_per_day must be a number"),
        ({"usd_per_day": "unlimited"}, "usd_per_day must be a number >= 0, got"),  # only users may lift
        ({"users": ["ann"]}, "[budgets.users] must be a table"),
        ({"users": {"ann": 5}}, "[budgets.users.ann] must be a table"),
        ({"users": {"ann": {"rpm": 5}}}, "[budgets.users.ann]: unknown key 'rpm'"),
        ({"users": {"ann": {"usd_per_day": True}}}, 'or "unlimited"'),
    ],
)
def test_config_rejects_bad_tables(table, fragment):
    with pytest.raises(ConfigurationError) as info:
        BudgetConfig.from_dict(table)
    assert fragment in str(info.value)


def test_config_errors_name_the_file_they_came_from():
    with pytest.raises(ConfigurationError, match=r"\[budgets\.users\.ann\] in gtl\.toml: unknown key"):
        BudgetConfig.from_dict({"users": {"ann": {"rpm": 1}}}, where="[budgets] in gtl.toml")
    with pytest.raises(ConfigurationError, match=r"\[budgets\] in gtl\.toml must be a table"):
        BudgetConfig.from_dict(["x"], where="[budgets] in gtl.toml")  # type: ignore[arg-type]


# -- the backend and the shared decision of every BudgetCounter ----------------------------------------


def test_config_backend_is_a_store_url():
    assert BudgetConfig.from_dict({"requests_per_minute": 1}).backend is None  # the ledger's file, or memory
    config = BudgetConfig.from_dict({"backend": "sqlite:///budgets.db", "usd_per_day": 5})
    assert (config.backend, config.default.usd_per_day) == ("sqlite:///budgets.db", 5.0)
    assert BudgetConfig.from_dict({"backend": "memory://"}).backend == "memory://"
    with pytest.raises(ConfigurationError, match=r"\[budgets\] backend in gtl\.toml: unknown store 'mem'"):
        BudgetConfig.from_dict({"backend": "mem"}, where="[budgets] in gtl.toml")
    with pytest.raises(ConfigurationError, match="postgresql:// holds the usage ledger only"):
        BudgetConfig(backend="postgresql://db/gtl")
    with pytest.raises(ConfigurationError, match="unknown key 'backend'"):
        BudgetConfig.from_dict({"users": {"ann": {"backend": "memory://"}}})


def test_refusal_matches_the_guard_on_the_same_usage():
    """``refusal`` (every BudgetCounter's decision) and ``BudgetGuard`` refuse alike, with the same words."""
    spends = [Spend(NOON - ago, tokens) for ago, tokens in ((50.5, 400), (30, 300), (10, 300))]
    ledger = Ledger()
    for spend in spends:
        ledger.add("ann", spend.time, tokens=spend.tokens)
    for limits in ({"requests_per_minute": 3}, {"tokens_per_minute": 1000}, {"tokens_per_minute": 600}):
        with pytest.raises(RateLimitError) as guarded:
            guard(ledger, **limits).check("ann", NOON)
        decided = refusal("ann", Limits(**limits), now=NOON, minute=spends, spent_today=0.0)
        assert isinstance(decided, RateLimitError)
        assert (decided.message, decided.retry_after) == (guarded.value.message, guarded.value.retry_after)
    assert refusal("ann", Limits(requests_per_minute=4), now=NOON, minute=spends, spent_today=0.0) is None


def test_refusal_checks_the_day_first_and_ignores_spends_outside_the_window():
    old = [Spend(NOON - 61, 10_000)]
    assert refusal("ann", Limits(tokens_per_minute=1), now=NOON, minute=old, spent_today=0.0) is None
    spent = refusal("ann", Limits(usd_per_day=2.0, requests_per_minute=0), now=NOON, minute=old, spent_today=2.0)
    assert isinstance(spent, BudgetExceededError) and "resets at 2024-03-02 00:00 UTC" in spent.message
    assert usage_report(now=NOON, minute=[*old, Spend(NOON, 5)], spent_today=1.5) == {
        "requests_last_minute": 1,
        "tokens_last_minute": 5,
        "usd_today": 1.5,
    }


def test_a_budget_under_a_cent_is_written_with_its_digits_in_the_refusal():
    """A budget of $0.0005 a day was refused as "daily budget of $0.00": every digit the budget has."""
    from gtl_nb.engine.ratelimit import _day_refusal

    assert "daily budget of $0.000500 for user 'cents' is used up: $0.000600 spent today" in (
        _day_refusal("cents", 1_700_000_000.0, 0.0005, 0.0006).message
    )
    assert "daily budget of $5.00 for user 'ann' is used up: $5.2500 spent today" in (
        _day_refusal("ann", 1_700_000_000.0, 5.0, 5.25).message
    )
