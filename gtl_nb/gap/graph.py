"""The context graph: messages, threads, platforms and entities as a networkx ``MultiDiGraph``.

Nodes (each with a ``kind`` attribute equal to its first element, except missing parents):

* ``("message", chat_id)`` — kind ``message``: ``role``, ``platform``, ``model``, ``timestamp``,
  ``thread_id``, ``content``; or kind ``missing`` for an id that is referred to (as a parent or as
  ``defined_in``) but not among the input messages.
* ``("thread", thread_id)`` — kind ``thread``.
* ``("platform", name)`` — kind ``platform``.
* ``("entity", thread_id, key)`` — kind ``entity``: ``key``, ``thread_id``, ``value``, ``type``,
  ``defined``. Entities are scoped to their thread: "the_system" in two threads is two nodes. The
  node shows the latest value any of its messages gives (input order), or ``None``.

Edges are keyed by their kind (and carry it as ``kind``):

* ``reply_to``: message -> parent message (``index`` = position in ``parent_messages``);
* ``in_thread``: message -> thread;  ``on_platform``: message -> platform;
* ``mentions``: message -> entity;  ``defined_in``: entity -> the message that defined it.

Threads stay apart: there is no directed path between messages of different threads. Messages
without a thread id form one unthreaded scope of their own. A reply or a ``defined_in`` that would
cross scopes is **refused**: the edge is not added and ``(from chat_id, to chat_id)`` is listed in
``graph.graph["refused_edges"]``. Every message needs a non-empty, unique ``chat_id`` (a message
given twice, identical, counts once).

networkx is imported when a function here runs, and pandas only by ``graph_to_dataframes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gtl_nb.gap.errors import GAPFormatError
from gtl_nb.gap.model import GAP_VERSION, WrappedMessage
from gtl_nb.words import a_kind_of

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx
    import pandas as pd

Node = tuple[Any, ...]


def _nx() -> Any:
    import networkx

    return networkx


def _index(messages: Iterable[WrappedMessage]) -> dict[str, WrappedMessage]:
    by_id: dict[str, WrappedMessage] = {}
    for position, message in enumerate(messages):
        if not isinstance(message, WrappedMessage):
            raise TypeError(f"message {position} is {a_kind_of(message)}, not a WrappedMessage")
        if not message.chat_id:
            raise ValueError(f"message {position} has no chat_id; graph nodes are keyed by chat_id")
        kept = by_id.get(message.chat_id)
        if kept is not None and kept != message:
            raise ValueError(f"two different messages share the chat_id {message.chat_id!r}")
        by_id[message.chat_id] = message
    return by_id


def create_context_graph(messages: Iterable[WrappedMessage]) -> nx.MultiDiGraph:
    """Build the context graph of ``messages`` (see the module docstring for its shape)."""
    nx = _nx()
    by_id = _index(messages)
    graph = nx.MultiDiGraph(gap_version=GAP_VERSION, refused_edges=[])

    def message_node(chat_id: str) -> Node:
        node = ("message", chat_id)
        if node not in graph:
            graph.add_node(node, kind="missing", chat_id=chat_id)
        return node

    def link(source: Node, target: Node, kind: str, **attributes: Any) -> None:
        graph.add_edge(source, target, key=kind, kind=kind, **attributes)

    for chat_id, message in by_id.items():
        graph.add_node(
            ("message", chat_id),
            kind="message",
            chat_id=chat_id,
            role=message.role,
            platform=message.platform,
            model=message.model,
            timestamp=message.timestamp,
            thread_id=message.thread_id,
            content=message.content,
        )
    for chat_id, message in by_id.items():
        node = ("message", chat_id)
        scope = message.thread_id
        if scope is not None:
            graph.add_node(("thread", scope), kind="thread", thread_id=scope)
            link(node, ("thread", scope), "in_thread")
        graph.add_node(("platform", message.platform), kind="platform", name=message.platform)
        link(node, ("platform", message.platform), "on_platform")
        for index, parent in enumerate(message.parent_messages):
            if parent in by_id and by_id[parent].thread_id != scope:
                graph.graph["refused_edges"].append((chat_id, parent))
                continue
            link(node, message_node(parent), "reply_to", index=index)
        for key, entity in message.entities.items():
            entity_node = ("entity", scope, key)
            if entity_node not in graph:
                graph.add_node(
                    entity_node,
                    kind="entity",
                    key=key,
                    thread_id=scope,
                    value=None,
                    type=entity.type,
                    defined=False,
                )
            attributes = graph.nodes[entity_node]
            if entity.value is not None:
                attributes.update(value=entity.value, type=entity.type, defined=True)
            link(node, entity_node, "mentions")
            if entity.defined_in is not None and entity.value is not None:
                origin = entity.defined_in
                if origin in by_id and by_id[origin].thread_id != scope:
                    graph.graph["refused_edges"].append((chat_id, origin))
                    continue
                link(entity_node, message_node(origin), "defined_in")
    return graph


def undefined_entities(graph: nx.MultiDiGraph) -> list[Node]:
    """Entity nodes that no message defines, sorted by thread then key."""
    nodes = [n for n, data in graph.nodes(data=True) if data.get("kind") == "entity" and data.get("value") is None]
    return sorted(nodes, key=lambda n: (n[1] is not None, n[1] or "", n[2]))


def entity_cooccurrence(graph: nx.MultiDiGraph) -> nx.Graph:
    """An undirected graph of entity nodes; an edge's ``weight`` counts the messages mentioning both."""
    nx = _nx()
    result = nx.Graph()
    for node, data in graph.nodes(data=True):
        if data.get("kind") != "message":
            continue
        mentioned = sorted(
            {target for _s, target, kind in graph.out_edges(node, keys=True) if kind == "mentions"}, key=repr
        )
        result.add_nodes_from(mentioned)
        for i, first in enumerate(mentioned):
            for second in mentioned[i + 1 :]:
                weight = result.get_edge_data(first, second, {}).get("weight", 0)
                result.add_edge(first, second, weight=weight + 1)
    return result


def reply_chain(graph: nx.MultiDiGraph, chat_id: str) -> list[str]:
    """The chat ids from the root of the conversation down to ``chat_id`` (following first parents).

    A missing parent ends the chain (and is its first element); a cycle stops at the repeat.
    """
    node = ("message", chat_id)
    if node not in graph:
        raise KeyError(f"no message {chat_id!r} in the graph")
    chain = [chat_id]
    seen = {node}
    while True:
        edges = graph.out_edges(node, keys=True, data=True)
        parents = sorted(
            ((data.get("index", 0), target) for _s, target, kind, data in edges if kind == "reply_to"),
            key=lambda item: item[0],
        )
        if not parents:
            break
        node = parents[0][1]
        if node in seen:
            break
        seen.add(node)
        chain.append(node[1])
    chain.reverse()
    return chain


def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


def graph_to_json(graph: nx.MultiDiGraph) -> dict[str, Any]:
    """networkx node-link data (``nodes`` / ``edges``) with tuple node ids as JSON arrays."""
    nx = _nx()
    try:
        data = nx.node_link_data(graph, edges="edges")
    except TypeError:  # networkx < 3.4 names the list "links"
        data = nx.node_link_data(graph)
        data["edges"] = data.pop("links")
    return _json_safe(data)


def graph_from_json(data: dict[str, Any]) -> nx.MultiDiGraph:
    """Rebuild a context graph from ``graph_to_json`` output (node ids become tuples again); data of
    another shape is a ``GAPFormatError`` naming what is missing or wrong."""
    nx = _nx()
    try:
        graph = nx.MultiDiGraph(**{k: v for k, v in data.get("graph", {}).items()})
        graph.graph["refused_edges"] = [tuple(pair) for pair in graph.graph.get("refused_edges", [])]
        for node in data["nodes"]:
            attributes = {k: v for k, v in node.items() if k != "id"}
            graph.add_node(tuple(node["id"]), **attributes)
        for edge in data["edges"]:
            attributes = {k: v for k, v in edge.items() if k not in ("source", "target", "key")}
            graph.add_edge(tuple(edge["source"]), tuple(edge["target"]), key=edge["key"], **attributes)
    except KeyError as exc:
        raise GAPFormatError(f"not a context graph's JSON: no {exc.args[0]!r}") from None
    except (TypeError, AttributeError, ValueError) as exc:  # a list for an object, a number for a list, …
        raise GAPFormatError(f"not a context graph's JSON: {type(exc).__name__}: {exc}") from None
    return graph


def graph_to_dataframes(graph: nx.MultiDiGraph) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(nodes, edges)`` as pandas DataFrames.

    ``nodes`` has a ``node`` column (the tuple id), ``kind``, ``label`` (chat id, thread id,
    platform name or entity key) and every attribute; ``edges`` has ``source``, ``target``, ``kind``
    and the edge attributes.
    """
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is a core dependency
        raise ImportError("graph_to_dataframes needs pandas: pip install pandas") from exc
    node_rows = [{"node": node, "label": node[-1], **data} for node, data in graph.nodes(data=True)]
    edge_rows = [
        {"source": source, "target": target, **data} for source, target, _key, data in graph.edges(keys=True, data=True)
    ]
    nodes = pd.DataFrame(node_rows, columns=_columns(node_rows, ["node", "kind", "label"]))
    edges = pd.DataFrame(edge_rows, columns=_columns(edge_rows, ["source", "target", "kind"]))
    return nodes, edges


def _columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    columns = list(first)
    for row in rows:
        columns.extend(column for column in row if column not in columns)
    return columns
