"""Plots of the usage ledger with matplotlib (the ``plot`` extra), imported only when a plot is drawn.

Each function draws on ``ax`` (a new figure when ``None``) and returns the ``Axes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from gtl_nb.analysis.usage import with_keys
from gtl_nb.words import install_extra

__all__ = ["auto_freq", "plot_cost_over_time", "plot_latency_distribution", "pyplot"]


def pyplot() -> Any:
    """``matplotlib.pyplot``, or an ImportError naming the extra that installs it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"gtl_nb.analysis plots need matplotlib: {install_extra('plot')}") from exc
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
    freq: str | None = None,
    cumulative: bool = False,
    ax: Any = None,
) -> Any:
    """Cost (USD) per ``freq`` bucket in UTC, one line per group; the time axis fits the data.

    ``freq`` is a pandas frequency (``"s"``, ``"min"``, ``"h"``, ``"D"``, ``"W"`` …); ``None`` picks the
    coarsest that still splits the requests' time span into a few buckets, so a few minutes of requests
    are drawn per minute, a month of them per day, and a second of them (a batch, a notebook run
    against simulators) per 100 or 10 ms. Unknown costs are left out of the sums;
    ``cumulative=True`` draws the running total, a step at each bucket, held to the last bucket of all.
    The cost axis reads as money (``$0.0015``); the legend stands beside the axes, over no line.
    """
    work, keys = with_keys(frame, by)
    created = ax is None
    if freq is not None:  # before anything is drawn: pandas' own refusal is a chained KeyError
        try:
            pd.tseries.frequencies.to_offset(freq)
        except (TypeError, ValueError):
            raise ValueError(
                f"freq must be a pandas frequency such as 's', 'min', 'h', 'D', 'W' or '100ms', not {freq!r}"
            ) from None
    ax = axes(ax, figsize=(8, 4))
    ax.set_title("cumulative cost" if cumulative else "cost over time")
    ax.set_ylabel("cost (USD)")
    ax.yaxis.set_major_formatter(_money_ticks())
    times = pd.to_datetime(work["time"], utc=True).dt.tz_localize(None)
    freq = freq or auto_freq(times)
    ax.set_xlabel(f"time (UTC, per {_FREQ_WORDS.get(freq, freq)})")
    if work.empty:
        ax.text(0.5, 0.5, "no requests", ha="center", va="center", transform=ax.transAxes)
        return ax
    work = work.assign(_bucket=_buckets(times, freq), _cost=work["cost"].astype("float64").fillna(0.0))
    first, last = work["_bucket"].min(), work["_bucket"].max()
    for key, group in work.groupby(keys if len(keys) > 1 else keys[0], dropna=False, sort=True):
        series = group.groupby("_bucket")["_cost"].sum().sort_index()
        if not cumulative:
            ax.plot(series.index, series.to_numpy(), marker="o", label=_group_label(key))
            continue
        # a running total holds until the next bucket, and to the end: every line ends at the last bucket,
        # where the totals are compared (one that stopped early read as a group that stopped counting)
        series = series.cumsum()
        if series.index[-1] != last:
            series[last] = series.iloc[-1]
        marked = list(range(len(group["_bucket"].unique())))  # a marker where the group's own requests are
        ax.plot(series.index, series.to_numpy(), marker="o", markevery=marked, drawstyle="steps-post",
                label=_group_label(key))  # fmt: skip
    fit_time_axis(ax, first, last, _bucket_length(first, freq))
    ax.set_ylim(bottom=0)  # a cost is never negative
    # beside the axes, never over a line: running totals rise to the top right, and a held total crosses
    # the whole width, so no corner inside stays free ("best" put it over one); tight_layout and Jupyter's
    # crop to the figure's contents make room for it
    ax.legend(title=" / ".join(keys), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    if created:  # room for it in the figure drawn here, saved whole (a figure handed in is the caller's)
        ax.figure.subplots_adjust(right=0.78)
    return ax


def _money_ticks() -> Any:
    """A tick formatter writing USD as money: ``$0``, ``$0.0015``, ``$12`` (never ``1.5e-3`` or an offset)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _position: "$0" if value == 0 else f"${value:.6g}")


#: ``plot_cost_over_time``'s automatic buckets, coarsest first, with their lengths
AUTO_FREQS = {
    "W": pd.Timedelta(weeks=1),
    "D": pd.Timedelta(days=1),
    "h": pd.Timedelta(hours=1),
    "min": pd.Timedelta(minutes=1),
    "s": pd.Timedelta(seconds=1),
    "100ms": pd.Timedelta(milliseconds=100),
    "10ms": pd.Timedelta(milliseconds=10),
}
_FREQ_WORDS = {"W": "week", "D": "day", "h": "hour", "min": "minute", "s": "second", "100ms": "100 ms", "10ms": "10 ms"}
_MIN_BUCKETS = 3  # a span split into fewer buckets than this is drawn at the next finer frequency


def auto_freq(times: pd.Series) -> str:
    """The coarsest of ``AUTO_FREQS`` that splits the span of ``times`` into a few buckets."""
    if times.empty:
        return "D"
    span = times.max() - times.min()
    return next((freq for freq, length in AUTO_FREQS.items() if span >= _MIN_BUCKETS * length), "10ms")


def _buckets(times: pd.Series, freq: str) -> pd.Series:
    """Each time's bucket start."""
    try:
        return times.dt.floor(freq)
    except ValueError:  # weeks, months: not fixed lengths, so buckets are calendar periods
        return times.dt.to_period(freq).dt.start_time


def _bucket_length(start: pd.Timestamp, freq: str) -> pd.Timedelta:
    offset = pd.tseries.frequencies.to_offset(freq)
    if isinstance(offset, pd.offsets.Tick):  # a fixed length: days down to milliseconds
        return pd.Timedelta(offset)
    try:
        period = pd.Period(start, freq=freq)
    except ValueError:  # a frequency periods do not take ("ME"): a day is padding enough
        return pd.Timedelta(days=1)
    return period.end_time - period.start_time


def fit_time_axis(ax: Any, first: pd.Timestamp, last: pd.Timestamp, step: pd.Timedelta) -> None:
    """Limit the x axis to the data, half a bucket either side, with ticks labelled at its scale.

    Without limits matplotlib widens a one-point date axis to years around it.
    """
    import matplotlib.dates as mdates

    pad = step / 2
    ax.set_xlim(first - pad, last + pad)
    # at most five ticks: a clock time to the hundredth of a second is eleven characters wide, and a
    # half-width panel (plt.subplots(1, 2)) holds five of them side by side
    locator = mdates.AutoDateLocator(minticks=3, maxticks=5)
    ax.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator)
    # ticks within a minute read as clock times (22:30:38.6), not bare seconds (38.6) beside an offset
    formatter.formats[5] = "%H:%M:%S.%f"
    formatter.zero_formats[5] = "%H:%M:%S"
    formatter.offset_formats[5] = "%Y-%m-%d"  # the labels carry the time: the offset only the day
    ax.xaxis.set_major_formatter(formatter)


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
        from matplotlib.ticker import MaxNLocator

        for label, values in groups:
            ax.hist(values, bins="auto", alpha=0.5, label=label)
        ax.set_xlabel(f"{column[:-3]} (ms)")
        ax.set_ylabel("requests")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of requests: no 2.5 ticks
        ax.legend(title=" / ".join(keys))
    return ax
