"""Plots of the usage ledger with matplotlib (the ``plot`` extra), imported only when a plot is drawn.

Each function draws on ``ax`` (a new figure when ``None``) and returns the ``Axes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from gtl_nb.analysis.usage import with_keys

__all__ = ["plot_cost_over_time", "plot_latency_distribution", "pyplot"]


def pyplot() -> Any:
    """``matplotlib.pyplot``, or an ImportError naming the extra that installs it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("gtl_nb.analysis plots need matplotlib: pip install gtl-nb[plot]") from exc
    return plt


def axes(ax: Any = None, **figure: Any) -> Any:
    """``ax``, or the axes of a new figure."""
    if ax is not None:
        return ax
    _figure, new = pyplot().subplots(**figure)
    return new


def _label(value: Any) -> str:
    return "(unknown)" if value is None or value is pd.NA or value != value else str(value)


def _group_label(key: Any) -> str:
    return " / ".join(_label(k) for k in key) if isinstance(key, tuple) else _label(key)


def plot_cost_over_time(
    frame: pd.DataFrame,
    *,
    by: str | Sequence[str] = "provider",
    freq: str = "D",
    cumulative: bool = False,
    ax: Any = None,
) -> Any:
    """Cost (USD) per ``freq`` bucket (``"D"`` day, ``"h"`` hour, ``"W"`` week) in UTC, one line per group.

    Unknown costs are left out of the sums; ``cumulative=True`` draws the running total.
    """
    work, keys = with_keys(frame, by)
    ax = axes(ax, figsize=(8, 4))
    ax.set_title("cumulative cost" if cumulative else "cost over time")
    ax.set_ylabel("cost (USD)")
    ax.set_xlabel(f"time (UTC, per {freq})")
    if work.empty:
        ax.text(0.5, 0.5, "no requests", ha="center", va="center", transform=ax.transAxes)
        return ax
    bucket = pd.to_datetime(work["time"], utc=True).dt.floor(freq).dt.tz_localize(None)
    work = work.assign(_bucket=bucket, _cost=work["cost"].astype("float64").fillna(0.0))
    for key, group in work.groupby(keys if len(keys) > 1 else keys[0], dropna=False, sort=True):
        series = group.groupby("_bucket")["_cost"].sum().sort_index()
        if cumulative:
            series = series.cumsum()
        ax.plot(series.index, series.to_numpy(), marker="o", label=_group_label(key))
    ax.legend(title=" / ".join(keys))
    ax.figure.autofmt_xdate()
    return ax


def plot_latency_distribution(
    frame: pd.DataFrame,
    *,
    by: str | Sequence[str] = "provider",
    column: str = "latency_ms",
    kind: str = "box",
    status: str | Sequence[str] | None = "ok",
    ax: Any = None,
) -> Any:
    """The distribution of ``column`` (``latency_ms`` or ``ttft_ms``) per group.

    ``kind="box"`` draws one box per group (labelled on the x axis); ``kind="hist"`` overlays one
    histogram per group with a legend. Only ``status`` rows count (default ``ok``; ``None``: all).
    """
    if column not in ("latency_ms", "ttft_ms"):
        raise ValueError(f"column must be 'latency_ms' or 'ttft_ms', not {column!r}")
    if kind not in ("box", "hist"):
        raise ValueError(f"kind must be 'box' or 'hist', not {kind!r}")
    work, keys = with_keys(frame, by)
    if status is not None:
        work = work[work["status"].isin([status] if isinstance(status, str) else list(status))]
    ax = axes(ax, figsize=(8, 4))
    name = "time to first token" if column == "ttft_ms" else "latency"
    ax.set_title(f"{name} by {' / '.join(keys)}")
    groups = [
        (_group_label(key), group[column].astype("float64").dropna().to_numpy())
        for key, group in work.groupby(keys if len(keys) > 1 else keys[0], dropna=False, sort=True)
    ]
    groups = [(label, values) for label, values in groups if len(values)]
    if not groups:
        ax.text(0.5, 0.5, "no timings", ha="center", va="center", transform=ax.transAxes)
        return ax
    if kind == "box":
        ax.boxplot([values for _label_, values in groups], showfliers=True)
        ax.set_xticks(range(1, len(groups) + 1), [label for label, _values in groups])
        ax.set_ylabel(f"{column[:-3]} (ms)")
    else:
        for label, values in groups:
            ax.hist(values, bins="auto", alpha=0.5, label=label)
        ax.set_xlabel(f"{column[:-3]} (ms)")
        ax.set_ylabel("requests")
        ax.legend(title=" / ".join(keys))
    return ax
