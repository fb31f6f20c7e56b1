"""Routing strategies: each one's ordering, fairness over many calls, and health-awareness."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from gtl_nb.engine.breaker import BreakerBoard, BreakerConfig
from gtl_nb.engine.routing import Target
from gtl_nb.engine.strategies import (
    FailoverStrategy,
    LowestCostStrategy,
    LowestLatencyStrategy,
    RoundRobinStrategy,
    WeightedStrategy,
    make_strategy,
    strategy_from_routing,
)
from gtl_nb.protocol import ConfigurationError
from gtl_nb.providers.base import Deployment


@dataclass(frozen=True)
class Candidate:
    name: str
    model: str = "m"


A, B, C, D = (Candidate(n) for n in "abcd")


def names(ordered) -> str:
    return "".join(c.name for c in ordered)


def sick(*down: str):
    return lambda deployment: deployment not in down


# -- failover -------------------------------------------------------------------------------------


def test_failover_keeps_the_given_order():
    strategy = FailoverStrategy()
    assert names(strategy.order([C, A, B])) == "cab"
    assert names(strategy.order([C, A, B])) == "cab"


def test_failover_moves_unhealthy_deployments_last_in_their_order():
    strategy = FailoverStrategy(healthy=sick("a", "c"))
    assert names(strategy.order([A, B, C, D])) == "bdac"


def test_all_unhealthy_are_kept_so_the_engine_can_explain():
    strategy = FailoverStrategy(healthy=sick("a", "b"))
    assert names(strategy.order([A, B])) == "ab"


def test_empty_candidate_list_orders_to_empty():
    assert RoundRobinStrategy().order([]) == []


# -- round robin ----------------------------------------------------------------------------------


def test_round_robin_rotates_one_position_per_request():
    strategy = RoundRobinStrategy()
    orders = [names(strategy.order([A, B, C], "gpt")) for _ in range(4)]
    assert orders == ["abc", "bca", "cab", "abc"]


def test_round_robin_is_fair_over_many_calls():
    strategy = RoundRobinStrategy()
    firsts = Counter(strategy.order([A, B, C], "gpt")[0].name for _ in range(300))
    assert firsts == {"a": 100, "b": 100, "c": 100}


def test_round_robin_keeps_one_rotation_per_model():
    strategy = RoundRobinStrategy()
    assert names(strategy.order([A, B], "x")) == "ab"
    assert names(strategy.order([A, B], "x")) == "ba"
    assert names(strategy.order([C, D], "y")) == "cd"  # y starts its own rotation
    assert names(strategy.order([A, B], "x")) == "ab"


def test_round_robin_rotates_among_healthy_ones_only():
    down = {"b"}
    strategy = RoundRobinStrategy(healthy=lambda name: name not in down)
    orders = [names(strategy.order([A, B, C], "gpt")) for _ in range(4)]
    assert orders == ["acb", "cab", "acb", "cab"]
    firsts = Counter(strategy.order([A, B, C], "gpt")[0].name for _ in range(100))
    assert firsts == {"a": 50, "c": 50}


# -- weighted -------------------------------------------------------------------------------------


def test_weighted_leads_in_proportion_to_weights():
    strategy = WeightedStrategy({"a": 3, "b": 1, "c": 1})
    firsts = Counter(strategy.order([A, B, C], "m")[0].name for _ in range(500))
    assert firsts == {"a": 300, "b": 100, "c": 100}


def test_weighted_is_smooth_not_bursty():
    strategy = WeightedStrategy({"a": 2, "b": 1})
    leaders = names(strategy.order([A, B], "m")[0] for _ in range(6))
    assert leaders == "abaaba"
    assert "aaa" not in names(strategy.order([A, B], "m")[0] for _ in range(300))


def test_weighted_puts_the_rest_in_weight_order():
    strategy = WeightedStrategy({"a": 1, "b": 5, "c": 3})
    ordered = strategy.order([A, B, C], "m")
    assert names(ordered) == "bca"


def test_weighted_missing_weight_counts_as_one_and_zero_never_leads():
    strategy = WeightedStrategy({"a": 0, "b": 2})
    firsts = Counter(strategy.order([A, B, C], "m")[0].name for _ in range(300))
    assert firsts == {"b": 200, "c": 100}
    assert strategy.order([A, B, C], "m")[-1] == A


def test_weighted_skips_unhealthy_deployments():
    strategy = WeightedStrategy({"a": 5, "b": 1}, healthy=sick("a"))
    assert all(strategy.order([A, B], "m")[0] == B for _ in range(20))


# -- lowest cost ----------------------------------------------------------------------------------


def test_lowest_cost_orders_by_price_with_unknown_prices_last():
    prices = {"a": 2.0, "b": None, "c": 0.5, "d": 2.0}
    strategy = LowestCostStrategy(lambda c: prices[c.name])
    assert names(strategy.order([A, B, C, D])) == "cadb"  # ties keep the given order


def test_lowest_cost_sends_an_unhealthy_cheap_one_after_healthy_expensive_ones():
    prices = {"a": 0.1, "b": 5.0, "c": 1.0}
    strategy = LowestCostStrategy(lambda c: prices[c.name], healthy=sick("a"))
    assert names(strategy.order([A, B, C])) == "cba"


def test_lowest_cost_prices_each_candidate_by_its_model():
    prices = {"cheap": 0.1, "dear": 3.0}
    strategy = LowestCostStrategy(lambda c: prices.get(c.model))
    ordered = strategy.order([Candidate("a", "dear"), Candidate("a", "cheap"), Candidate("b", "new")])
    assert [c.model for c in ordered] == ["cheap", "dear", "new"]


# -- lowest latency -------------------------------------------------------------------------------


def test_lowest_latency_tries_unmeasured_deployments_first_then_fastest():
    strategy = LowestLatencyStrategy()
    strategy.observe_ttft("a", 0.9)
    strategy.observe_ttft("c", 0.2)
    assert names(strategy.order([A, B, C, D])) == "bdca"


def test_lowest_latency_uses_an_exponentially_weighted_average():
    strategy = LowestLatencyStrategy(alpha=0.5)
    strategy.observe_ttft("a", 1.0)
    strategy.observe_ttft("a", 3.0)
    assert strategy.ttft["a"] == pytest.approx(2.0)
    strategy.observe_ttft("a", 2.0)
    assert strategy.ttft["a"] == pytest.approx(2.0)


def test_lowest_latency_reorders_when_a_deployment_slows_down():
    strategy = LowestLatencyStrategy(alpha=0.5)
    strategy.observe_ttft("a", 0.1)
    strategy.observe_ttft("b", 0.3)
    assert names(strategy.order([A, B])) == "ab"
    for _ in range(3):
        strategy.observe_ttft("a", 1.0)
    assert names(strategy.order([A, B])) == "ba"


def test_lowest_latency_puts_unhealthy_fast_ones_last():
    strategy = LowestLatencyStrategy(healthy=sick("a"))
    strategy.observe_ttft("a", 0.01)
    strategy.observe_ttft("b", 2.0)
    assert names(strategy.order([A, B])) == "ba"


def test_only_lowest_latency_keeps_ttft_observations():
    strategy = RoundRobinStrategy()
    strategy.observe_ttft("a", 1.0)  # accepted and ignored, so the engine can always report
    assert names(strategy.order([A, B], "m")) == "ab"


# -- with the real breaker board and router targets -----------------------------------------------


def test_strategies_order_router_targets_using_the_breaker_board():
    board = BreakerBoard(BreakerConfig(failure_threshold=1))
    board.get("east").record_failure()
    strategy = make_strategy("round_robin", healthy=board.would_allow)
    targets = [Target(Deployment(name=n, type="openai"), "gpt-4o") for n in ("east", "west", "north")]
    orders = [[t.name for t in strategy.order(targets, "gpt-4o")] for _ in range(2)]
    assert orders == [["west", "north", "east"], ["north", "west", "east"]]


# -- the factory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("failover", FailoverStrategy),
        ("round_robin", RoundRobinStrategy),
        ("round-robin", RoundRobinStrategy),
        ("Weighted", WeightedStrategy),
        ("lowest_latency", LowestLatencyStrategy),
    ],
)
def test_make_strategy_by_name(name, cls):
    assert type(make_strategy(name)) is cls


def test_make_strategy_passes_weights_alpha_and_prices():
    weighted = make_strategy("weighted", weights={"a": 2, "b": 1})
    assert isinstance(weighted, WeightedStrategy)
    assert weighted.weights == {"a": 2.0, "b": 1.0}
    latency = make_strategy("lowest_latency", latency_alpha=0.8)
    assert isinstance(latency, LowestLatencyStrategy)
    assert latency.alpha == 0.8
    cost = make_strategy("lowest_cost", price_of=lambda c: 1.0)
    assert isinstance(cost, LowestCostStrategy)


def test_strategy_from_routing_reads_the_section_and_skips_sub_tables():
    section = {
        "strategy": "weighted",
        "weights": {"a": 1, "b": 3},
        "breaker": {"cooldown": 5},
        "retry": {"max_attempts": 2},
    }
    strategy = strategy_from_routing(section, healthy=sick())
    assert isinstance(strategy, WeightedStrategy)
    assert strategy.weights == {"a": 1.0, "b": 3.0}
    assert isinstance(strategy_from_routing(None), FailoverStrategy)


def test_settings_of_another_strategy_are_tolerated_but_still_validated():
    assert isinstance(make_strategy("round_robin", weights={"a": 2}), RoundRobinStrategy)
    with pytest.raises(ConfigurationError, match=r"weights\.a"):
        make_strategy("round_robin", weights={"a": -1})
    with pytest.raises(ConfigurationError, match="latency_alpha"):
        make_strategy("failover", latency_alpha=2)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "round_robbin"}, "did you mean 'round_robin'"),
        ({"name": "failover", "weigths": {}}, "unknown key 'weigths'"),
        ({"name": "weighted", "weights": [1, 2]}, "weights must be a table"),
        ({"name": "weighted", "weights": {"a": "x"}}, "weights.a"),
        ({"name": "lowest_cost"}, "price_of"),
        ({"name": "lowest_latency", "latency_alpha": 0}, "latency_alpha"),
        ({"name": "lowest_latency", "latency_alpha": "fast"}, "latency_alpha"),
    ],
)
def test_make_strategy_rejects_bad_settings(kwargs, fragment):
    with pytest.raises(ConfigurationError) as info:
        make_strategy(**kwargs)
    assert fragment in str(info.value)


def test_strategy_name_must_be_a_string_and_routing_a_table():
    with pytest.raises(ConfigurationError, match="strategy must be a string"):
        strategy_from_routing({"strategy": 3})
    with pytest.raises(ConfigurationError, match="must be a table"):
        strategy_from_routing("round_robin")  # type: ignore[arg-type]
