"""Routing strategies: the order in which one request tries its candidate deployments.

A strategy orders any objects with a ``.name`` (the deployment name), such as the router's
``Target``; the first is tried first, the rest are the failover order. ``order(candidates, model)``
takes the request's model as the key of per-model state.

======================  ========================================================================
``failover``            the order given (the request's ``providers`` list, or the configuration's)
``round_robin``         rotates the given order by one per request, separately for each model
``weighted``            smooth weighted round-robin (deterministic, as in nginx): over any run of
                        ``sum(weights)`` requests for a model, each deployment leads exactly its
                        weight's share, spread out rather than in bursts; the rest follow by weight.
                        Weights come from ``[routing] weights = {a = 2, b = 1}``; a deployment
                        without one weighs 1; weight 0 is only ever a fallback
``lowest_cost``         cheapest first by ``price_of(candidate)`` (the engine asks the catalog);
                        unknown prices (``None``) go last, ties keep the given order
``lowest_latency``      fastest first by an exponentially weighted moving average of observed time
                        to first token (``observe_ttft``); deployments never observed go *first*,
                        so each gets measured once instead of being starved forever
======================  ========================================================================

**Health.** A strategy built with ``healthy(deployment) -> bool`` (side-effect free:
``BreakerBoard.would_allow``) puts the unhealthy candidates after all healthy ones, ordered by the
same rule but without advancing any rotation state. They are kept rather than dropped so the
engine still has the full list and can say *why* nothing was tried ("every circuit is open,
retry in 12 s"); the engine asks each breaker's ``allow()`` before an attempt and skips refusals.

Strategies keep small in-memory state and are meant to be used from the engine's loop thread.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from gtl_nb.protocol.errors import ConfigurationError


class Named(Protocol):
    """Anything with a deployment name."""

    @property
    def name(self) -> str: ...


C = TypeVar("C", bound=Named)
Healthy = Callable[[str], bool]
PriceOf = Callable[[Any], float | None]  # (candidate) -> USD price, None if unknown


def _always_healthy(_deployment: str) -> bool:
    return True


class RoutingStrategy:
    """Base strategy: the given order, unhealthy candidates last. Subclasses override ``_rank``/``_sort``."""

    kind: ClassVar[str] = "failover"

    def __init__(self, *, healthy: Healthy | None = None) -> None:
        self.healthy = healthy or _always_healthy

    def order(self, candidates: Sequence[C], model: str = "") -> list[C]:
        """The candidates best first; unhealthy ones after all healthy ones."""
        well: list[C] = []
        unwell: list[C] = []
        for candidate in candidates:
            (well if self.healthy(candidate.name) else unwell).append(candidate)
        ranked = self._rank(well, model) if well else []
        return ranked + self._sort(unwell)

    def observe_ttft(self, deployment: str, seconds: float) -> None:
        """Report a measured time to first token (only ``lowest_latency`` uses it)."""

    def _rank(self, candidates: list[C], model: str) -> list[C]:
        """Order the healthy candidates of one request (may advance per-model state)."""
        return self._sort(candidates)

    def _sort(self, candidates: list[C]) -> list[C]:
        """The stateless preference order (also used for the unhealthy tail)."""
        return list(candidates)


class FailoverStrategy(RoutingStrategy):
    """The given order."""

    kind = "failover"


class RoundRobinStrategy(RoutingStrategy):
    """Rotates the given order by one position per request, with one counter per model."""

    kind = "round_robin"

    def __init__(self, *, healthy: Healthy | None = None) -> None:
        super().__init__(healthy=healthy)
        self._turns: dict[str, int] = {}

    def _rank(self, candidates: list[C], model: str) -> list[C]:
        turn = self._turns.get(model, 0)
        self._turns[model] = turn + 1
        start = turn % len(candidates)
        return candidates[start:] + candidates[:start]


class WeightedStrategy(RoutingStrategy):
    """Smooth weighted round-robin per model (see the module table)."""

    kind = "weighted"

    def __init__(self, weights: Mapping[str, float] | None = None, *, healthy: Healthy | None = None) -> None:
        super().__init__(healthy=healthy)
        self.weights = dict(weights or {})
        self._current: dict[str, dict[str, float]] = {}  # model -> deployment -> running score

    def weight(self, deployment: str) -> float:
        return float(self.weights.get(deployment, 1.0))

    def _rank(self, candidates: list[C], model: str) -> list[C]:
        names = list(dict.fromkeys(c.name for c in candidates))  # one vote per deployment
        total = sum(self.weight(n) for n in names)
        if total <= 0:
            return list(candidates)
        scores = self._current.setdefault(model, {})
        for n in names:
            scores[n] = scores.get(n, 0.0) + self.weight(n)
        leader = max(names, key=lambda n: scores[n])  # max keeps the first of equal scores
        scores[leader] -= total
        first = [c for c in candidates if c.name == leader]
        rest = [c for c in candidates if c.name != leader]
        return first + self._sort(rest)

    def _sort(self, candidates: list[C]) -> list[C]:
        return sorted(candidates, key=lambda c: -self.weight(c.name))


class LowestCostStrategy(RoutingStrategy):
    """Cheapest first by ``price_of(candidate)``; unknown prices last; ties keep the given order."""

    kind = "lowest_cost"

    def __init__(self, price_of: PriceOf, *, healthy: Healthy | None = None) -> None:
        super().__init__(healthy=healthy)
        self.price_of = price_of

    def _sort(self, candidates: list[C]) -> list[C]:
        def key(candidate: C) -> tuple[bool, float]:
            price = self.price_of(candidate)
            return (price is None, 0.0 if price is None else price)

        return sorted(candidates, key=key)


class LowestLatencyStrategy(RoutingStrategy):
    """Fastest first by the moving average of time to first token; unmeasured deployments first.

    ``ewma = alpha * sample + (1 - alpha) * ewma`` (the first sample is taken as is): a larger
    ``alpha`` follows changes faster, a smaller one smooths out single slow answers."""

    kind = "lowest_latency"

    def __init__(self, alpha: float = 0.3, *, healthy: Healthy | None = None) -> None:
        super().__init__(healthy=healthy)
        if not 0 < alpha <= 1:
            raise ConfigurationError(f"[routing] latency_alpha must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self.ttft: dict[str, float] = {}

    def observe_ttft(self, deployment: str, seconds: float) -> None:
        if seconds < 0:
            return
        previous = self.ttft.get(deployment)
        if previous is not None:
            seconds = self.alpha * seconds + (1 - self.alpha) * previous
        self.ttft[deployment] = seconds

    def _sort(self, candidates: list[C]) -> list[C]:
        def key(candidate: C) -> tuple[bool, float]:
            average = self.ttft.get(candidate.name)
            return (average is not None, 0.0 if average is None else average)

        return sorted(candidates, key=key)


STRATEGIES: dict[str, type[RoutingStrategy]] = {
    cls.kind: cls
    for cls in (
        FailoverStrategy,
        RoundRobinStrategy,
        WeightedStrategy,
        LowestCostStrategy,
        LowestLatencyStrategy,
    )
}
# Keys of [routing] that configure a strategy. Every one is accepted whichever strategy is chosen,
# so switching ``strategy`` does not force deleting the others' settings.
STRATEGY_KEYS = ("weights", "latency_alpha")


def make_strategy(
    name: str = "failover",
    *,
    healthy: Healthy | None = None,
    price_of: PriceOf | None = None,
    **config: Any,
) -> RoutingStrategy:
    """The strategy called ``name`` (``round-robin`` and ``round_robin`` both work), configured by
    the ``[routing]`` keys in ``config`` (``weights``, ``latency_alpha``)."""
    kind = str(name).strip().lower().replace("-", "_")
    if kind not in STRATEGIES:
        close = difflib.get_close_matches(kind, list(STRATEGIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(STRATEGIES)
        raise ConfigurationError(f"[routing] unknown strategy {name!r}{hint} (known: {known})")
    for key in config:
        if key not in STRATEGY_KEYS:
            known = ", ".join(STRATEGY_KEYS)
            raise ConfigurationError(f"[routing]: unknown key {key!r} (strategy keys: {known})")
    # every key is validated, also when the chosen strategy ignores it, so a typo shows up early
    weights = _weights(config.get("weights"))
    alpha = config.get("latency_alpha", 0.3)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ConfigurationError(f"[routing] latency_alpha must be a number in (0, 1], got {alpha!r}")
    if kind == "weighted":
        return WeightedStrategy(weights, healthy=healthy)
    if kind == "lowest_cost":
        if price_of is None:
            raise ConfigurationError("the lowest_cost strategy needs a price_of callable")
        return LowestCostStrategy(price_of, healthy=healthy)
    if kind == "lowest_latency":
        return LowestLatencyStrategy(float(alpha), healthy=healthy)
    return STRATEGIES[kind](healthy=healthy)


def strategy_from_routing(
    section: Mapping[str, Any] | None,
    *,
    healthy: Healthy | None = None,
    price_of: PriceOf | None = None,
    other_keys: Iterable[str] = ("breaker", "retry"),
) -> RoutingStrategy:
    """The strategy a whole ``[routing]`` table asks for (``strategy = "..."`` plus its keys);
    ``other_keys`` are sub-tables read elsewhere (``[routing.breaker]``, ``[routing.retry]``)."""
    if section is not None and not isinstance(section, Mapping):
        raise ConfigurationError(f"[routing] must be a table, got {section!r}")
    skip = set(other_keys)
    table = {k: v for k, v in (section or {}).items() if k not in skip}
    name = table.pop("strategy", "failover")
    if not isinstance(name, str):
        raise ConfigurationError(f"[routing] strategy must be a string, got {name!r}")
    return make_strategy(name, healthy=healthy, price_of=price_of, **table)


def _weights(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"[routing] weights must be a table of deployment = number, got {value!r}")
    weights: dict[str, float] = {}
    for deployment, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigurationError(f"[routing] weights.{deployment} must be a number >= 0, got {weight!r}")
        weights[str(deployment)] = float(weight)
    return weights
