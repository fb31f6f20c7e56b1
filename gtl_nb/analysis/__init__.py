"""Usage, cost and latency tables from the ledger, plots, prompt mapping and context-graph analysis.

    >>> from gtl_nb import analysis
    >>> frame = client.usage()                                     # doctest: +SKIP
    >>> analysis.usage_table(frame, by="model")                    # doctest: +SKIP
    >>> analysis.latency_percentiles(frame, by="provider")         # doctest: +SKIP
    >>> analysis.plot_cost_over_time(frame)                        # doctest: +SKIP

Modules: ``usage`` (tables; pandas), ``frames`` (``Table``: the DataFrame they return, with costs
shown as money), ``plots`` (matplotlib, the ``plot`` extra), ``batch``
(``map_prompt``), ``graphs`` (context graphs: tables and ``draw_context_graph``). Names resolve
lazily, so ``import gtl_nb.analysis`` loads neither pandas nor matplotlib until a function is used.
See ``docs/analysis.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "Table": "frames",
    "usage_table": "usage",
    "cost_per_1k": "usage",
    "latency_percentiles": "usage",
    "comparison_table": "usage",
    "plot_cost_over_time": "plots",
    "plot_latency_distribution": "plots",
    "map_prompt": "batch",
    "fill_template": "batch",
    "draw_context_graph": "graphs",
    "graph_summary": "graphs",
    "entity_table": "graphs",
    "undefined_entities_table": "graphs",
    "cooccurrence_table": "graphs",
}

__all__ = [
    "Table",
    "comparison_table",
    "cooccurrence_table",
    "cost_per_1k",
    "draw_context_graph",
    "entity_table",
    "fill_template",
    "graph_summary",
    "latency_percentiles",
    "map_prompt",
    "plot_cost_over_time",
    "plot_latency_distribution",
    "undefined_entities_table",
    "usage_table",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from gtl_nb.analysis.batch import fill_template, map_prompt
    from gtl_nb.analysis.frames import Table
    from gtl_nb.analysis.graphs import (
        cooccurrence_table,
        draw_context_graph,
        entity_table,
        graph_summary,
        undefined_entities_table,
    )
    from gtl_nb.analysis.plots import plot_cost_over_time, plot_latency_distribution
    from gtl_nb.analysis.usage import comparison_table, cost_per_1k, latency_percentiles, usage_table


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gtl_nb.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gtl_nb.analysis.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
