"""Plots of the ledger draw the expected artists (matplotlib's Agg backend, no display)."""

from __future__ import annotations

import itertools
import re
import sys

import numpy as np
import pandas as pd
import pytest

from gtl_nb import analysis


@pytest.fixture
def plt(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib.pyplot as pyplot

    pyplot.switch_backend("Agg")  # in case another test imported pyplot first
    yield pyplot
    pyplot.close("all")


def legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_cost_over_time_draws_one_line_per_provider_with_a_legend(filled, plt):
    ax = analysis.plot_cost_over_time(filled.frame, freq="D")
    assert sorted(legend_texts(ax)) == ["anthropic", "echo", "openai"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"anthropic", "echo", "openai"}
    assert lines["anthropic"].get_ydata()[0] == pytest.approx(sum(a.cost for a in filled.answers["anthropic"]))
    assert ax.get_ylabel() == "cost (USD)"


def test_cumulative_cost_never_decreases_and_uses_the_given_axes(filled, plt):
    frame = filled.frame.copy()
    frame.loc[frame.index[::2], "time"] -= pd.Timedelta(days=1)
    _figure, given = plt.subplots()
    ax = analysis.plot_cost_over_time(frame, by="model", freq="D", cumulative=True, ax=given)
    assert ax is given
    for line in ax.get_lines():
        ydata = np.asarray(line.get_ydata(), dtype=float)
        assert len(ydata) == 2 and np.all(np.diff(ydata) >= 0)


def shifted(frame, **offsets):
    """``frame`` with its requests spread evenly over ``offsets`` (a Timedelta's keywords) from the first."""
    spread = frame.copy()
    step = pd.Timedelta(**offsets) / max(len(spread) - 1, 1)
    spread["time"] = spread["time"].min() + step * np.arange(len(spread))
    return spread


def x_span(ax) -> pd.Timedelta:
    import matplotlib.dates as mdates

    left, right = (mdates.num2date(value) for value in ax.get_xlim())
    return pd.Timedelta(right - left)


def test_a_few_minutes_of_requests_are_drawn_per_minute_on_an_axis_of_minutes(filled, plt):
    ax = analysis.plot_cost_over_time(shifted(filled.frame, minutes=5), cumulative=True)
    assert ax.get_xlabel() == "time (UTC, per minute)"
    assert pd.Timedelta(minutes=5) <= x_span(ax) <= pd.Timedelta(minutes=7)  # the data, half a bucket either side
    plt.gcf().canvas.draw()
    labels = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    assert labels and all(":" in label for label in labels[1:]), labels  # hours and minutes


def test_one_bucket_gets_an_axis_around_it_not_years(filled, plt):
    ax = analysis.plot_cost_over_time(filled.frame, freq="h", cumulative=True)
    assert x_span(ax) <= pd.Timedelta(hours=2)
    ax = analysis.plot_cost_over_time(shifted(filled.frame, days=60), freq="W")  # calendar weeks work too
    assert pd.Timedelta(days=60) <= x_span(ax) <= pd.Timedelta(days=75)


def test_latency_box_plot_has_one_box_per_provider(filled, plt):
    ax = analysis.plot_latency_distribution(filled.frame)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["anthropic", "echo", "openai"]
    medians = [line for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_xdata()[0] != 0]
    assert len(medians) >= 3
    assert "latency" in ax.get_title()


def test_ttft_histogram_overlays_the_groups(filled, plt):
    ax = analysis.plot_latency_distribution(filled.frame, by="model", column="ttft_ms", kind="hist")
    assert sorted(legend_texts(ax)) == ["claude-sonnet-4-5", "echo", "gpt-4o-mini"]
    assert len(ax.patches) >= 3
    assert ax.get_xlabel() == "ttft (ms)"
    ticks = [tick for tick in ax.get_yticks() if tick >= 0]
    assert ticks and all(float(tick).is_integer() for tick in ticks)  # counts of requests: whole numbers


def test_plots_of_nothing_say_so(filled, plt):
    ax = analysis.plot_cost_over_time(filled.frame.iloc[:0])
    assert [t.get_text() for t in ax.texts] == ["no requests"]
    ax = analysis.plot_latency_distribution(filled.frame.iloc[:0])
    assert [t.get_text() for t in ax.texts] == ["no timings"]


def test_bad_plot_arguments_are_refused(filled, plt):
    with pytest.raises(ValueError, match="latency_ms"):
        analysis.plot_latency_distribution(filled.frame, column="cost")
    with pytest.raises(ValueError, match="box"):
        analysis.plot_latency_distribution(filled.frame, kind="violin")


def test_a_frequency_pandas_does_not_know_is_one_clear_error(filled, plt):
    with pytest.raises(ValueError, match=r"^freq must be a pandas frequency such as .*, not 'fortnight'$") as caught:
        analysis.plot_cost_over_time(filled.frame, freq="fortnight")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # one error, no pandas chain
    assert plt.get_fignums() == []  # refused before a figure was made


def test_a_missing_matplotlib_names_the_extra(filled, monkeypatch):
    from gtl_nb.analysis import plots

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'gtl-nb\[plot\]'"):
        plots.plot_cost_over_time(filled.frame)


def drawn_path(line):
    """``line`` as drawn, in display coordinates: its points, joined as its draw style joins them."""
    from matplotlib.cbook import STEP_LOOKUP_MAP
    from matplotlib.path import Path as DrawnPath

    x, y = line.get_transform().transform(line.get_xydata()).T
    style = line.get_drawstyle()
    return DrawnPath(np.column_stack(STEP_LOOKUP_MAP[style](x, y) if style != "default" else (x, y)))


def test_drawn_path_sees_a_legend_over_a_line(filled, plt):
    ax = analysis.plot_cost_over_time(shifted(filled.frame, minutes=30), cumulative=True)
    ax.legend(loc="center", bbox_to_anchor=None)  # over the middle of the drawing, on purpose
    ax.figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert any(drawn_path(line).intersects_bbox(legend, filled=False) for line in ax.get_lines())


def test_requests_of_one_second_draw_a_readable_running_total(filled, plt):
    """A notebook run against the simulators makes its requests within a second (notebooks/03): the
    cumulative cost was one dot per provider over ticks reading 38.6, 38.8 … beside an offset."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))  # as the notebook draws it
    frame = shifted(filled.frame, milliseconds=600)
    ax = analysis.plot_cost_over_time(frame, by="provider", cumulative=True, ax=left)
    analysis.plot_latency_distribution(frame, by="provider", ax=right)
    figure.tight_layout()
    figure.canvas.draw()
    assert ax.get_xlabel() == "time (UTC, per 100 ms)"
    counts = frame.groupby("deployment").size()
    for line in ax.get_lines():
        points = len(set(line.get_xdata()))
        assert points > 1 or counts[line.get_label()] == 1, line.get_label()  # the total is seen growing
    ticks = [label for label in ax.get_xticklabels() if label.get_text()]
    assert len(ticks) >= 2 and all(re.fullmatch(r"\d\d:\d\d:\d\d(\.\d+)?", t.get_text()) for t in ticks), [
        t.get_text() for t in ticks
    ]  # clock times, never bare seconds
    boxes = [t.get_window_extent() for t in ticks]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))  # side by side, not over
    money = [label.get_text() for label in ax.get_yticklabels() if label.get_text()]
    assert money and all(text.startswith("$") for text in money), money
    legend = ax.get_legend().get_window_extent()
    for line in ax.get_lines():  # the legend hides no point and crosses no line
        assert not drawn_path(line).intersects_bbox(legend, filled=False), line.get_label()
    assert not legend.overlaps(right.get_window_extent())  # nor the panel beside it
    assert figure.bbox.contains(legend.x1, legend.y1)  # and is inside the figure


def test_a_cost_plot_drawn_on_its_own_figure_keeps_its_legend_inside_it(filled, plt):
    ax = analysis.plot_cost_over_time(shifted(filled.frame, minutes=30), cumulative=True)
    ax.figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert ax.figure.bbox.contains(legend.x1, legend.y0) and ax.figure.bbox.contains(legend.x1, legend.y1)
    assert not legend.overlaps(ax.get_window_extent())


def test_every_running_total_reaches_the_last_bucket_where_the_totals_are_compared(filled, plt):
    frame = shifted(filled.frame, minutes=10)
    last_model = frame.sort_values("time")["model"].iloc[-1]
    ax = analysis.plot_cost_over_time(frame, by="model", cumulative=True, freq="min")
    ends = {line.get_label(): (line.get_xdata()[-1], line.get_ydata()[-1]) for line in ax.get_lines()}
    assert len({end for end, _total in ends.values()}) == 1  # one right edge for all
    totals = frame.groupby("model")["cost"].sum()
    for model, (_end, total) in ends.items():
        assert total == pytest.approx(totals[model]), model
    early = next(line for line in ax.get_lines() if line.get_label() != last_model)
    marked = early.get_markevery()
    assert len(marked) < len(early.get_xdata())  # the held total is a line, not a request
