"""Context graphs (``gap.create_context_graph``) as DataFrames and as a matplotlib drawing.

The graph itself and its basic queries live in ``gtl_nb.gap.graph`` (``undefined_entities``,
``entity_cooccurrence``, ``reply_chain``, ``graph_to_dataframes``); this module turns their answers
into tables and draws the graph with each kind of node in its own colour and shape.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from gtl_nb import gap
from gtl_nb.analysis.plots import axes, pyplot

__all__ = [
    "NODE_STYLES",
    "cooccurrence_table",
    "draw_context_graph",
    "entity_table",
    "graph_summary",
    "layout",
    "undefined_entities_table",
]

#: How each kind of node is drawn: legend label, marker and colour (entities split by definedness).
NODE_STYLES: dict[str, dict[str, str]] = {
    "message": {"label": "message", "shape": "o", "color": "#4c72b0"},
    "missing": {"label": "missing parent", "shape": "X", "color": "#c44e52"},
    "thread": {"label": "thread", "shape": "s", "color": "#55a868"},
    "platform": {"label": "platform", "shape": "h", "color": "#8c8c8c"},
    "entity": {"label": "entity (defined)", "shape": "^", "color": "#dd8452"},
    "undefined": {"label": "entity (undefined)", "shape": "v", "color": "#f2c45a"},
}
#: How each kind of edge is drawn: each its own pair of line style and colour (the colour of the kind
#: of node it leads to or from), so the legend tells every kind apart.
EDGE_STYLES: dict[str, dict[str, Any]] = {
    "reply_to": {"style": "solid", "width": 1.6, "alpha": 0.9, "color": "#222222"},
    "in_thread": {"style": "dashed", "width": 0.8, "alpha": 0.5, "color": "#55a868"},
    "on_platform": {"style": "dotted", "width": 0.8, "alpha": 0.5, "color": "#8c8c8c"},
    "mentions": {"style": "dotted", "width": 1.2, "alpha": 0.7, "color": "#dd8452"},
    "defined_in": {"style": "dashdot", "width": 1.0, "alpha": 0.7, "color": "#937860"},
}


def _style_key(data: dict[str, Any]) -> str:
    kind = data.get("kind", "missing")
    if kind == "entity" and data.get("value") is None:
        return "undefined"
    return kind if kind in NODE_STYLES else "missing"


def _node_label(node: tuple[Any, ...]) -> str:
    label = str(node[-1])
    return label if len(label) <= 18 else label[:17] + "…"


def _in_time_order(times: list[str]) -> list[str]:
    """ISO-8601 timestamps sorted by the instant they name (a time without an offset counts as UTC).

    As strings, "12:00:00+02:00" sorts after "11:00:00Z" though it is an hour before it; when one
    does not parse, they are sorted as strings.
    """
    try:
        instants = [datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith("Z") else t) for t in times]
    except ValueError:
        return sorted(times)
    utc = [i.replace(tzinfo=timezone.utc) if i.tzinfo is None else i for i in instants]
    return [t for _instant, t in sorted(zip(utc, times, strict=True), key=lambda pair: pair[0])]


def graph_summary(graph: Any) -> pd.DataFrame:
    """One row per thread (``thread_id`` ``<NA>`` for unthreaded messages).

    Columns: ``messages``, ``platforms`` (sorted names), ``entities``, ``undefined``, ``missing_parents``
    (ids referred to but absent), ``first`` and ``last`` (the earliest and latest timestamps, written as
    given), all counts Int64.
    """
    rows: dict[Any, dict[str, Any]] = {}

    def row(thread: Any) -> dict[str, Any]:
        return rows.setdefault(
            thread,
            {"messages": 0, "platforms": set(), "entities": 0, "undefined": 0, "missing": set(), "times": []},
        )

    for node, data in graph.nodes(data=True):
        kind = data.get("kind")
        if kind == "message":
            entry = row(data.get("thread_id"))
            entry["messages"] += 1
            entry["platforms"].add(data.get("platform"))
            if data.get("timestamp"):
                entry["times"].append(str(data["timestamp"]))
            for _source, target, key in graph.out_edges(node, keys=True):
                if key == "reply_to" and graph.nodes[target].get("kind") == "missing":
                    entry["missing"].add(target[1])
        elif kind == "entity":
            entry = row(data.get("thread_id"))
            entry["entities"] += 1
            entry["undefined"] += data.get("value") is None
    records = [
        {
            "thread_id": thread,
            "messages": entry["messages"],
            "platforms": ", ".join(sorted(p for p in entry["platforms"] if p)),
            "entities": entry["entities"],
            "undefined": entry["undefined"],
            "missing_parents": len(entry["missing"]),
            "first": _in_time_order(entry["times"])[0] if entry["times"] else None,
            "last": _in_time_order(entry["times"])[-1] if entry["times"] else None,
        }
        for thread, entry in sorted(rows.items(), key=lambda item: (item[0] is None, item[0] or ""))
    ]
    columns = ["thread_id", "messages", "platforms", "entities", "undefined", "missing_parents", "first", "last"]
    frame = pd.DataFrame(records, columns=columns)
    return frame.astype(
        {
            "thread_id": "string",
            "messages": "Int64",
            "platforms": "string",
            "entities": "Int64",
            "undefined": "Int64",
            "missing_parents": "Int64",
            "first": "string",
            "last": "string",
        }
    )


def _mentioned_by(graph: Any, node: tuple[Any, ...]) -> list[str]:
    return sorted(source[1] for source, _target, key in graph.in_edges(node, keys=True) if key == "mentions")


def entity_table(graph: Any) -> pd.DataFrame:
    """Every entity: ``thread_id``, ``key``, ``type``, ``value``, ``defined``, ``defined_in``, ``mentions``
    (how many messages mention it) and ``messages`` (their chat ids), sorted by thread then key."""
    records = []
    for node, data in graph.nodes(data=True):
        if data.get("kind") != "entity":
            continue
        origins = [target[1] for _s, target, key in graph.out_edges(node, keys=True) if key == "defined_in"]
        messages = _mentioned_by(graph, node)
        records.append(
            {
                "thread_id": data.get("thread_id"),
                "key": data.get("key"),
                "type": data.get("type"),
                "value": data.get("value"),
                "defined": data.get("value") is not None,
                "defined_in": origins[0] if origins else None,
                "mentions": len(messages),
                "messages": messages,
            }
        )
    columns = ["thread_id", "key", "type", "value", "defined", "defined_in", "mentions", "messages"]
    frame = pd.DataFrame(records, columns=columns)
    frame = frame.astype(
        {
            "thread_id": "string",
            "key": "string",
            "type": "string",
            "value": "string",
            "defined": "boolean",
            "defined_in": "string",
            "mentions": "Int64",
        }
    )
    order = frame.assign(_unthreaded=frame["thread_id"].isna()).sort_values(["_unthreaded", "thread_id", "key"])
    return order.drop(columns="_unthreaded").reset_index(drop=True)


def undefined_entities_table(graph: Any) -> pd.DataFrame:
    """The entities no message defines (``gap.undefined_entities``): ``thread_id``, ``key``, ``type``,
    ``mentions`` and ``messages``, in that function's order (thread, then key)."""
    records = []
    for node in gap.undefined_entities(graph):
        data = graph.nodes[node]
        messages = _mentioned_by(graph, node)
        records.append(
            {
                "thread_id": node[1],
                "key": node[2],
                "type": data.get("type"),
                "mentions": len(messages),
                "messages": messages,
            }
        )
    frame = pd.DataFrame(records, columns=["thread_id", "key", "type", "mentions", "messages"])
    return frame.astype({"thread_id": "string", "key": "string", "type": "string", "mentions": "Int64"})


def cooccurrence_table(graph: Any) -> pd.DataFrame:
    """Pairs of entities mentioned by the same messages (``gap.entity_cooccurrence``).

    Columns: ``thread_id``, ``entity_a``, ``entity_b`` (keys, ``a < b``) and ``weight`` (messages
    mentioning both), heaviest first.
    """
    pairs = gap.entity_cooccurrence(graph)
    records = []
    for first, second, data in pairs.edges(data=True):
        a, b = sorted((first, second), key=lambda n: n[2])
        records.append({"thread_id": a[1], "entity_a": a[2], "entity_b": b[2], "weight": data.get("weight", 1)})
    frame = pd.DataFrame(records, columns=["thread_id", "entity_a", "entity_b", "weight"])
    frame = frame.astype({"thread_id": "string", "entity_a": "string", "entity_b": "string", "weight": "Int64"})
    return frame.sort_values(
        ["weight", "thread_id", "entity_a", "entity_b"], ascending=[False, True, True, True], na_position="last"
    ).reset_index(drop=True)


SPRING_WITHOUT_SCIPY = 500
"""Nodes from which networkx's spring layout solves with scipy's sparse matrices (it is no dependency)."""
FORCE_LAYOUT_NODES = 1000
"""Nodes up to which the scipy-free force layout is drawn; its time and memory grow with their square
(~1.5 s at 500 nodes, ~5 s at 1,000, ~17 s at 2,000 on a 2-core machine)."""


def layout(graph: Any, seed: int = 0) -> dict[Any, Any]:
    """Node positions for ``graph``: networkx's spring layout (seeded). From ``SPRING_WITHOUT_SCIPY``
    nodes that layout needs scipy; without it, ForceAtlas2 (numpy only: a notebook with a couple of
    hundred messages has that many nodes), and past ``FORCE_LAYOUT_NODES`` a circle, which costs
    nothing — a drawing that large is read by its legend and colours, not its edges."""
    import networkx as nx

    nodes = graph.number_of_nodes()
    if nodes < SPRING_WITHOUT_SCIPY or importlib.util.find_spec("scipy") is not None:
        return dict(nx.spring_layout(graph, seed=seed))
    force = getattr(nx, "forceatlas2_layout", None)  # (networkx 3.4 and later)
    if force is not None and nodes <= FORCE_LAYOUT_NODES:
        return dict(force(graph, seed=seed))
    return dict(nx.circular_layout(graph))


def draw_context_graph(
    graph: Any,
    ax: Any = None,
    *,
    labels: bool = True,
    platforms: bool = True,
    seed: int = 0,
) -> Any:
    """Draw a context graph: messages, missing parents, threads, platforms and entities (defined and
    undefined) each in its own colour and shape, edge kinds in their own line styles, with a legend of
    each beside the drawing (nodes above, edges below: never over a node) and each node's label under
    its marker.

    The layout is networkx's spring layout with a fixed ``seed`` (the same picture every run; for a
    graph too large for it without scipy, ``layout`` says what stands in);
    ``platforms=False`` leaves the platform nodes out. Returns the ``Axes``.
    """
    import networkx as nx

    plt = pyplot()
    created = ax is None
    ax = axes(ax, figsize=(11, 6))
    shown = graph if platforms else graph.subgraph(n for n, d in graph.nodes(data=True) if d.get("kind") != "platform")
    ax.set_axis_off()
    ax.set_title("context graph")
    if shown.number_of_nodes() == 0:
        ax.text(0.5, 0.5, "empty graph", ha="center", va="center", transform=ax.transAxes)
        return ax
    position = layout(nx.Graph(shown), seed)
    edge_handles = []
    for kind, style in EDGE_STYLES.items():
        edges = [(u, v) for u, v, key in shown.edges(keys=True) if key == kind]
        if edges:
            nx.draw_networkx_edges(
                shown, position, edgelist=edges, ax=ax, style=style["style"], width=style["width"],
                alpha=style["alpha"], edge_color=style["color"], arrows=True, arrowsize=8, node_size=300,
            )  # fmt: skip
            edge_handles.append(
                plt.Line2D([], [], color=style["color"], linestyle=style["style"], linewidth=style["width"],
                           alpha=max(style["alpha"], 0.6), label=kind.replace("_", " "))
            )  # fmt: skip
    handles = []
    for key, style in NODE_STYLES.items():
        nodes = [node for node, data in shown.nodes(data=True) if _style_key(data) == key]
        if not nodes:
            continue
        collection = nx.draw_networkx_nodes(
            shown, position, nodelist=nodes, ax=ax, node_shape=style["shape"], node_color=style["color"],
            node_size=300, edgecolors="black", linewidths=0.5, label=style["label"],
        )  # fmt: skip
        collection.set_gid(f"gtl-{key}")
        handles.append(
            plt.Line2D([], [], linestyle="none", marker=style["shape"], markersize=9, markerfacecolor=style["color"],
                       markeredgecolor="black", label=style["label"])
        )  # fmt: skip
    if labels:  # under each marker, not over it
        names = {node: _node_label(node) for node in shown.nodes}
        spread = max((abs(y) for _x, y in position.values()), default=1.0) or 1.0
        below = {node: (x, y - 0.06 * spread) for node, (x, y) in position.items()}
        nx.draw_networkx_labels(shown, below, labels=names, ax=ax, font_size=7, verticalalignment="top")
    # the legends stand beside the drawing, never over a node (a corner inside the axes hid one)
    nodes_legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="nodes")
    if edge_handles:  # a second legend: the line styles say what joins two nodes
        ax.add_artist(nodes_legend)
        # add_artist clips an artist to the axes, and a clipped artist counts only inside them when a figure
        # is cropped to its contents (bbox_inches="tight", as Jupyter shows figures): the legend beside
        # the drawing was cut off at the figure's edge ("entity (defined")
        nodes_legend.set_clip_on(False)
        ax.legend(handles=edge_handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8, title="edges")
    if created:  # room for them in the figure drawn here (a figure handed in is the caller's to lay out)
        ax.figure.subplots_adjust(left=0.02, right=0.8)
    return ax
