"""Context-graph tables and drawing, on graphs from ``gap.create_context_graph``."""

from __future__ import annotations

import pytest

from gtl_nb import analysis, gap


@pytest.fixture
def graph():
    messages = [
        gap.wrap_message(
            "The system needs optimization. It runs PostgreSQL 14.5.",
            "claude.ai",
            "m1",
            thread_id="t1",
            timestamp="2024-05-01T12:00:00Z",
        ),
        gap.wrap_message(
            "The system is slow and the module leaks memory",
            "chatgpt",
            "m2",
            role="user",
            thread_id="t1",
            parent_messages=["m1"],
            timestamp="2024-05-01T12:05:00Z",
        ),
        gap.wrap_message("The config is broken", "gemini", "m3", thread_id="t2", parent_messages=["gone"]),
        gap.wrap_message("Plain words", "generic", "m4"),
    ]
    return gap.create_context_graph(messages)


@pytest.fixture
def plt(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib.pyplot as pyplot

    pyplot.switch_backend("Agg")
    yield pyplot
    pyplot.close("all")


def test_graph_summary_counts_each_thread(graph):
    summary = analysis.graph_summary(graph)
    assert list(summary["thread_id"].astype(object).where(summary["thread_id"].notna(), None)) == ["t1", "t2", None]
    t1, t2, unthreaded = (row for _i, row in summary.iterrows())
    assert (t1["messages"], t1["platforms"], t1["missing_parents"]) == (2, "chatgpt, claude.ai", 0)
    assert (t1["first"], t1["last"]) == ("2024-05-01T12:00:00Z", "2024-05-01T12:05:00Z")
    assert t1["undefined"] == len([n for n in gap.undefined_entities(graph) if n[1] == "t1"])
    assert (t2["messages"], t2["missing_parents"]) == (1, 1)
    assert unthreaded["messages"] == 1 and unthreaded["entities"] == 0
    assert summary["messages"].dtype == "Int64"


def test_graph_summary_orders_times_by_instant_not_as_strings():
    # 12:00+02:00 is 10:00 UTC: before 11:00Z, though it sorts after it as a string
    messages = [
        gap.wrap_message("x", "p", "a", thread_id="t", timestamp="2024-05-01T12:00:00+02:00"),
        gap.wrap_message("y", "p", "b", thread_id="t", timestamp="2024-05-01T11:00:00Z"),
        gap.wrap_message("z", "p", "c", thread_id="t", timestamp="2024-05-01T10:30:00"),  # no offset: UTC
    ]
    row = analysis.graph_summary(gap.create_context_graph(messages)).iloc[0]
    assert (row["first"], row["last"]) == ("2024-05-01T12:00:00+02:00", "2024-05-01T11:00:00Z")


def test_undefined_entities_table_follows_gap(graph):
    table = analysis.undefined_entities_table(graph)
    assert list(zip(table["thread_id"], table["key"], strict=True)) == [
        (n[1], n[2]) for n in gap.undefined_entities(graph)
    ]
    system = table[(table["thread_id"] == "t1") & (table["key"] == "the_system")].iloc[0]
    assert system["mentions"] == 2 and system["messages"] == ["m1", "m2"]


def test_entity_table_lists_defined_and_undefined_entities(graph):
    table = analysis.entity_table(graph)
    defined = table[table["defined"]]
    assert not defined.empty and set(defined["defined_in"]) == {"m1"}
    assert table["defined"].dtype == "boolean" and table["mentions"].dtype == "Int64"
    keys = {(node[1], node[2]) for node, data in graph.nodes(data=True) if data.get("kind") == "entity"}
    assert set(zip(table["thread_id"], table["key"], strict=True)) == keys


def test_cooccurrence_table_matches_gap_weights(graph):
    table = analysis.cooccurrence_table(graph)
    pairs = gap.entity_cooccurrence(graph)
    assert len(table) == pairs.number_of_edges() > 0
    for _i, row in table.iterrows():
        a = ("entity", row["thread_id"], row["entity_a"])
        b = ("entity", row["thread_id"], row["entity_b"])
        assert pairs[a][b]["weight"] == row["weight"]
    assert list(table["weight"]) == sorted(table["weight"], reverse=True)


def test_draw_context_graph_tells_each_kind_apart_with_a_legend(graph, plt):
    ax = analysis.draw_context_graph(graph)
    nodes, edges = (legend for legend in [*ax.artists, ax.get_legend()] if legend is not None)
    assert [t.get_text() for t in nodes.get_texts()] == [
        "message",
        "missing parent",
        "thread",
        "platform",
        "entity (defined)",
        "entity (undefined)",
    ]
    kinds = {edge_kind for _u, _v, edge_kind in graph.edges(keys=True)}
    assert [t.get_text() for t in edges.get_texts()] == [k.replace("_", " ") for k in gap_edge_order() if k in kinds]
    assert len({line.get_linestyle() for line in edges.get_lines()}) > 1  # the kinds are told apart by their lines
    groups = {c.get_gid(): c for c in ax.collections if c.get_gid()}
    assert set(groups) == {"gtl-message", "gtl-missing", "gtl-thread", "gtl-platform", "gtl-entity", "gtl-undefined"}
    assert len(groups["gtl-message"].get_offsets()) == 4
    assert len(groups["gtl-missing"].get_offsets()) == 1
    assert len(groups["gtl-undefined"].get_offsets()) == len(gap.undefined_entities(graph))
    colours = {tuple(c.get_facecolor()[0]) for c in groups.values()}
    assert len(colours) == len(groups)  # every kind has its own colour
    assert len(ax.texts) == graph.number_of_nodes()  # one label per node
    for text in ax.texts:  # each under its marker
        assert text.get_verticalalignment() == "top"
    assert ax.patches  # the edges (arrows)


def test_the_legends_cover_no_node_and_every_edge_kind_looks_its_own(graph, plt):
    ax = analysis.draw_context_graph(graph)
    figure = ax.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [legend.get_window_extent(renderer) for legend in [*ax.artists, ax.get_legend()] if legend is not None]
    assert len(boxes) == 2
    markers = [xy for c in ax.collections if c.get_gid() for xy in ax.transData.transform(c.get_offsets())]
    assert len(markers) == graph.number_of_nodes()
    for x, y in markers:  # no node's centre under either legend, and each legend inside the figure
        assert not any(box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1 for box in boxes), (x, y)
    assert all(box.x0 >= ax.get_window_extent(renderer).x1 and box.x1 <= figure.bbox.x1 for box in boxes)
    edges = ax.get_legend()
    looks = [(str(line.get_linestyle()), tuple(line.get_color()) if not isinstance(line.get_color(), str)
              else line.get_color()) for line in edges.get_lines()]  # fmt: skip
    assert len(looks) == len(set(looks)) >= 4  # reply, thread, platform, mentions, definitions: none alike


def test_both_legends_are_inside_the_figure_jupyter_shows(graph, plt):
    """``%gap graph`` draws on axes of its own figure, which Jupyter crops to its contents
    (``bbox_inches="tight"``): the nodes legend, added with ``add_artist``, was cut off at the edge."""
    figure, given = plt.subplots(figsize=(9, 6))  # as the magic draws it
    ax = analysis.draw_context_graph(graph, ax=given)
    renderer = figure.canvas.get_renderer()
    shown = figure.get_tightbbox(renderer)  # in inches, what the cropped image holds
    legends = [artist for artist in ax.get_children() if type(artist).__name__ == "Legend"]
    assert len(legends) == 2
    for legend in legends:
        extent = legend.get_window_extent(renderer).transformed(figure.dpi_scale_trans.inverted())
        assert shown.x1 >= extent.x1 and shown.y0 <= extent.y0, legend.get_title().get_text()


def test_draw_context_graph_without_platforms_and_on_given_axes(graph, plt):
    _figure, given = plt.subplots()
    ax = analysis.draw_context_graph(graph, ax=given, platforms=False, labels=False)
    assert ax is given
    gids = {c.get_gid() for c in ax.collections if c.get_gid()}
    assert "gtl-platform" not in gids and "gtl-message" in gids
    assert not ax.texts


def test_an_empty_graph_draws_a_note(plt):
    ax = analysis.draw_context_graph(gap.create_context_graph([]))
    assert [t.get_text() for t in ax.texts] == ["empty graph"]


@pytest.mark.parametrize("nodes", [600, 1200])
def test_a_graph_too_large_for_the_spring_layout_without_scipy_is_laid_out_all_the_same(monkeypatch, nodes):
    # networkx's spring layout needs scipy from 500 nodes (a notebook of ~170 messages): scipy is no
    # dependency, so the drawing must not fail for the want of it
    import importlib.util

    import networkx as nx

    from gtl_nb.analysis.graphs import layout

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)  # (imported, it would raise ImportError)
    graph = nx.path_graph(nodes)
    positions = layout(graph, seed=1)
    assert set(positions) == set(graph) and all(len(xy) == 2 for xy in positions.values())
    assert len({tuple(round(float(c), 6) for c in xy) for xy in positions.values()}) == nodes  # none on another


def test_a_large_context_graph_draws_without_scipy(plt, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)
    messages = [gap.wrap_message(f"message {i}", "chatgpt", f"m{i}", thread_id=f"t{i}") for i in range(260)]
    graph = gap.create_context_graph(messages)
    assert graph.number_of_nodes() >= 500
    ax = analysis.draw_context_graph(graph, labels=False)
    assert ax.get_title() == "context graph"


def gap_edge_order() -> list[str]:
    """The edge kinds in the order the drawing's legend lists them."""
    from gtl_nb.analysis.graphs import EDGE_STYLES

    return list(EDGE_STYLES)
