"""Engines for tests, built the one way the project builds them: ``build_engine`` from ``Settings``."""

from __future__ import annotations

from typing import Any

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.cache import CacheConfig
from gtl_nb.engine.core import Engine
from gtl_nb.engine.http import Timeouts
from gtl_nb.engine.ratelimit import BudgetConfig
from gtl_nb.engine.settings import RoutingSettings, Settings
from gtl_nb.providers.base import Deployment


def make_engine(
    deployments: dict[str, Deployment],
    *,
    routing: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    budgets: dict[str, Any] | None = None,
    timeouts: Timeouts | None = None,
    deployment_timeouts: dict[str, Timeouts] | None = None,
    ledger: Any = False,
    **builder: Any,
) -> Engine:
    """An engine over hand-made deployments; ``builder`` goes to ``build_engine`` (clock, sleep, …)."""
    routing = dict(routing or {})
    settings = Settings(
        deployments=deployments,
        timeouts=timeouts or Timeouts(),
        deployment_timeouts=deployment_timeouts or {},
        routing=RoutingSettings.from_table(routing, routing.get("weights") or {}),
        cache=CacheConfig.from_dict(cache),
        budgets=BudgetConfig.from_dict(budgets) if budgets else None,
    )
    return build_engine(settings, ledger=ledger, **builder)
