"""The context graph: node kinds, edges, missing parents, thread isolation, helpers and exports."""

from __future__ import annotations

import itertools
import json

import networkx as nx
import pytest

from gtl_nb.gap import (
    WrappedMessage,
    create_context_graph,
    entity_cooccurrence,
    graph_from_json,
    graph_to_dataframes,
    graph_to_json,
    reply_chain,
    undefined_entities,
    update_entity,
    wrap_message,
)


def conversation():
    m1 = wrap_message("We run PostgreSQL 14 behind the API.", "claude.ai", "m1", thread_id="t1",
                      timestamp="2024-05-01T10:00:00Z", model="claude-3-opus")  # fmt: skip
    m2 = wrap_message("The system is slow. Is the API cached?", "chatgpt", "m2", thread_id="t1", role="user",
                      parent_messages=["m1"])  # fmt: skip
    m2 = update_entity(m2, "the_system", "PostgreSQL 14 primary")
    m3 = wrap_message("Check the API logs in app.log.", "claude.ai", "m3", thread_id="t1", parent_messages=["m2"])
    other = wrap_message("The system is fine here.", "gemini", "o1", thread_id="t2", parent_messages=["m3", "gone"])
    orphan = wrap_message("Start of a fork.", "claude.ai", "f1", thread_id="t1", parent_messages=["lost"])
    return [m1, m2, m3, other, orphan]


@pytest.fixture
def graph():
    return create_context_graph(conversation())


def kinds(graph):
    return {node: data["kind"] for node, data in graph.nodes(data=True)}


def test_it_is_a_multidigraph_with_keyed_nodes(graph):
    assert isinstance(graph, nx.MultiDiGraph)
    node_kinds = kinds(graph)
    assert node_kinds[("message", "m1")] == "message"
    assert node_kinds[("thread", "t1")] == "thread"
    assert node_kinds[("platform", "claude.ai")] == "platform"
    assert node_kinds[("entity", "t1", "the_system")] == "entity"
    assert node_kinds[("entity", "t2", "the_system")] == "entity"  # same key, other thread: another node
    assert node_kinds[("message", "gone")] == "missing" and node_kinds[("message", "lost")] == "missing"
    assert set(node_kinds.values()) == {"message", "thread", "platform", "entity", "missing"}


def test_nodes_carry_useful_attributes(graph):
    m1 = graph.nodes[("message", "m1")]
    assert (m1["role"], m1["model"], m1["timestamp"], m1["platform"], m1["thread_id"]) == (
        "assistant", "claude-3-opus", "2024-05-01T10:00:00Z", "claude.ai", "t1")  # fmt: skip
    system = graph.nodes[("entity", "t1", "the_system")]
    assert (system["value"], system["type"], system["defined"]) == ("PostgreSQL 14 primary", "user_defined", True)
    api = graph.nodes[("entity", "t1", "the_api")]
    assert (api["value"], api["type"], api["defined"]) == (None, "ambiguous_reference", False)


def test_edges_are_keyed_by_kind(graph):
    assert graph.has_edge(("message", "m2"), ("message", "m1"), key="reply_to")
    assert graph.has_edge(("message", "m2"), ("thread", "t1"), key="in_thread")
    assert graph.has_edge(("message", "m2"), ("platform", "chatgpt"), key="on_platform")
    assert graph.has_edge(("message", "m2"), ("entity", "t1", "the_system"), key="mentions")
    assert graph.has_edge(("entity", "t1", "the_system"), ("message", "m2"), key="defined_in")
    assert graph.has_edge(("entity", "t1", "postgresql"), ("message", "m1"), key="defined_in")
    assert graph.has_edge(("message", "f1"), ("message", "lost"), key="reply_to")
    for _source, _target, key, data in graph.edges(keys=True, data=True):
        assert data["kind"] == key
    assert {key for *_edge, key in graph.edges(keys=True)} == {
        "reply_to", "in_thread", "on_platform", "mentions", "defined_in"}  # fmt: skip


def test_cross_thread_replies_are_refused_and_recorded(graph):
    assert not graph.has_edge(("message", "o1"), ("message", "m3"))
    assert graph.graph["refused_edges"] == [("o1", "m3")]
    assert graph.has_edge(("message", "o1"), ("message", "gone"), key="reply_to")


def test_no_directed_path_between_messages_of_different_threads(graph):
    threads = {data["thread_id"]: [] for _n, data in graph.nodes(data=True) if data["kind"] == "message"}
    for node, data in graph.nodes(data=True):
        if data["kind"] == "message":
            threads[data["thread_id"]].append(node)
    for (first, a_nodes), (second, b_nodes) in itertools.permutations(threads.items(), 2):
        for a, b in itertools.product(a_nodes, b_nodes):
            assert not nx.has_path(graph, a, b), f"path from {a} ({first}) to {b} ({second})"


def test_cross_thread_definitions_are_refused():
    m1 = wrap_message("x", "p", "m1", thread_id="t1")
    m2 = wrap_message("y", "p", "m2", thread_id="t2", entities={"k": {"type": "user_defined", "value": "v",
                                                                        "defined_in": "m1"}})  # fmt: skip
    graph = create_context_graph([m1, m2])
    assert graph.graph["refused_edges"] == [("m2", "m1")]
    assert not nx.has_path(graph, ("message", "m2"), ("message", "m1"))


def test_unthreaded_messages_share_one_scope_without_a_thread_node():
    a = wrap_message("The system.", "p", "a")
    b = wrap_message("The system again.", "p", "b", parent_messages=["a"])
    graph = create_context_graph([a, b])
    assert ("entity", None, "the_system") in graph
    assert not any(data["kind"] == "thread" for _n, data in graph.nodes(data=True))
    assert graph.has_edge(("message", "b"), ("message", "a"), key="reply_to")


def test_message_ids_must_be_present_and_unique():
    with pytest.raises(ValueError, match="no chat_id"):
        create_context_graph([WrappedMessage("x", "p", "")])
    with pytest.raises(ValueError, match="share the chat_id 'c'"):
        create_context_graph([wrap_message("x", "p", "c"), wrap_message("y", "p", "c")])
    same = wrap_message("x", "p", "c")
    assert create_context_graph([same, same]).number_of_nodes() == 2  # message + platform
    with pytest.raises(TypeError):
        create_context_graph(["not a message"])


def test_undefined_entities(graph):
    assert undefined_entities(graph) == [("entity", "t1", "the_api"), ("entity", "t2", "the_system")]


def test_entity_cooccurrence_counts_messages(graph):
    co = entity_cooccurrence(graph)
    assert co[("entity", "t1", "postgresql")][("entity", "t1", "the_api")]["weight"] == 1
    assert co[("entity", "t1", "the_system")][("entity", "t1", "the_api")]["weight"] == 1
    assert not co.has_edge(("entity", "t1", "the_system"), ("entity", "t2", "the_system"))
    assert ("entity", "t2", "the_system") in co


def test_reply_chain_runs_from_the_root(graph):
    assert reply_chain(graph, "m3") == ["m1", "m2", "m3"]
    assert reply_chain(graph, "f1") == ["lost", "f1"]
    assert reply_chain(graph, "m1") == ["m1"]
    with pytest.raises(KeyError):
        reply_chain(graph, "nope")


def test_reply_chain_stops_on_a_cycle():
    a = wrap_message("a", "p", "a", parent_messages=["b"])
    b = wrap_message("b", "p", "b", parent_messages=["a"])
    assert reply_chain(create_context_graph([a, b]), "a") == ["b", "a"]


def test_graph_to_json_is_json_safe_node_link_data_and_round_trips(graph):
    data = graph_to_json(graph)
    text = json.dumps(data)
    assert {"nodes", "edges", "directed", "multigraph", "graph"} <= set(data)
    assert data["directed"] is True and data["multigraph"] is True
    assert ["message", "m1"] in [node["id"] for node in data["nodes"]]
    rebuilt = graph_from_json(json.loads(text))
    assert nx.utils.graphs_equal(rebuilt, graph)
    assert rebuilt.graph["refused_edges"] == [("o1", "m3")]


def test_graph_to_dataframes(graph):
    nodes, edges = graph_to_dataframes(graph)
    assert list(nodes.columns[:3]) == ["node", "kind", "label"]
    assert list(edges.columns[:3]) == ["source", "target", "kind"]
    assert len(nodes) == graph.number_of_nodes() and len(edges) == graph.number_of_edges()
    assert nodes.set_index("label").loc["m1", "role"] == "assistant"
    assert edges["kind"].value_counts()["reply_to"] == 4


def test_a_graph_of_something_not_a_message_names_what_it_was_given():
    with pytest.raises(TypeError, match=r"^message 1 is an int, not a WrappedMessage$"):
        create_context_graph([wrap_message("hi", "chatgpt", "a"), 7])


@pytest.mark.parametrize("data", [{}, {"nodes": 5, "edges": []}, {"nodes": [{"id": 1}], "edges": []}, {"graph": []}])
def test_json_of_another_shape_is_a_gap_format_error(data):
    """What ``graph_from_json`` reads may come from a file: another shape raised a bare KeyError, TypeError
    or AttributeError."""
    from gtl_nb.gap import GAPFormatError
    from gtl_nb.gap.graph import graph_from_json

    with pytest.raises(GAPFormatError, match="not a context graph's JSON"):
        graph_from_json(data)
