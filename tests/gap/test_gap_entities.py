"""Entity detection, merging, update_entity, find_undefined and wrap_message's use of them."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gtl_nb.gap import (
    Entity,
    TransformHints,
    detect_entities,
    find_undefined,
    merge_entities,
    update_entity,
    wrap_message,
)

AMBIGUOUS = Entity("ambiguous_reference", None, None)


def ambiguous_keys(text: str) -> list[str]:
    return [k for k, e in detect_entities(text).items() if e.type == "ambiguous_reference"]


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("The system needs optimization", ["the_system"]),
        ("Check the database first.", ["the_database"]),
        ("I like the approach.", ["the_approach"]),
        ("Is that method safe?", ["that_method"]),
        ("This implementation leaks.", ["this_implementation"]),
        ("these APIs and those endpoints", ["these_apis", "those_endpoints"]),
        ("THE SERVER is down", ["the_server"]),
        ("the libraries and the frameworks", ["the_libraries", "the_frameworks"]),
        ("Restart the service, then the cluster.", ["the_service", "the_cluster"]),
        ("Update the config and the file.", ["the_config", "the_file"]),
        ("the model, the module, the function, the component", ["the_model", "the_module", "the_function",
                                                                 "the_component"]),
        ("Ship the pipeline with the solution.", ["the_pipeline", "the_solution"]),
        ("Pin the version.", ["the_version"]),
        ("the API's quota", ["the_api"]),
        ("the\nsystem", ["the_system"]),
    ],
)  # fmt: skip
def test_ambiguous_references_are_detected(text, keys):
    entities = detect_entities(text)
    assert ambiguous_keys(text) == keys
    assert all(entities[k] == AMBIGUOUS for k in keys)


@pytest.mark.parametrize(
    "text",
    [
        "ensure that files close",  # "that" as a conjunction before a plural
        "these system calls",  # number disagreement: not a reference
        "a system-level change",
        "the systematic approach",  # "systematic" is not "system"
        "theAPI and thesystem",
        "ecosystem",
        "some database",
        "`the system` in code",
        "```\nthe database\n```",
        "see https://example.com/the/system",
    ],
)
def test_non_references_are_not_detected(text):
    assert ambiguous_keys(text) == []


def test_nothing_is_detected_inside_fenced_or_inline_code():
    text = "Run:\n```python\nimport the_database  # PostgreSQL 14 in src/app.py\n```\nand `Redis 7` too"
    assert detect_entities(text) == {}


def test_tilde_fences_and_unclosed_fences_hide_their_content():
    assert detect_entities("~~~\nthe server on PostgreSQL\n~~~") == {}
    assert detect_entities("```\nthe server on PostgreSQL") == {}


@pytest.mark.parametrize(
    ("text", "key", "entity"),
    [
        ("the database PostgreSQL 14 is slow", "the_database", Entity("database", "PostgreSQL 14", "m1")),
        ("the framework: Django", "the_framework", Entity("framework", "Django", "m1")),
        ("the file config.yaml", "the_file", Entity("file_reference", "config.yaml", "m1")),
        ("the function `parse_args()` fails", "the_function", Entity("technical_component", "parse_args()", "m1")),
        ("the service AuthService", "the_service", Entity("technical_component", "AuthService", "m1")),
        ("the model GPT-4 answers", "the_model", Entity("technical_component", "GPT-4", "m1")),
        ('the module called "billing"', "the_module", Entity("technical_component", "billing", "m1")),
        ("the server (nginx 1.25) restarts", "the_server", Entity("software_version", "nginx 1.25", "m1")),
    ],
)
def test_immediately_defined_references_are_defined_entities(text, key, entity):
    entities = detect_entities(text, message_id="m1")
    assert entities[key] == entity
    assert all(e.value is not None for e in entities.values())


def test_a_definition_consumes_the_name_span():
    # one entity per span: "PostgreSQL 14" defines the reference and is not a second entity
    assert list(detect_entities("the database PostgreSQL 14")) == ["the_database"]


def test_a_plain_word_after_a_reference_does_not_define_it():
    assert ambiguous_keys("the approach Alice suggested") == ["the_approach"]
    assert ambiguous_keys("the system I built") == ["the_system"]


def test_a_later_definition_of_the_same_key_fills_it():
    entities = detect_entities("We tuned the database. Later the database PostgreSQL 16 was upgraded.", message_id="m")
    assert entities["the_database"] == Entity("database", "PostgreSQL 16", "m")


@pytest.mark.parametrize(
    ("text", "key", "entity_type", "value"),
    [
        ("We run PostgreSQL 14.5 in prod", "postgresql", "database", "PostgreSQL 14.5"),
        ("Postgres is fine", "postgresql", "database", "Postgres"),
        ("a redis cache", "redis", "database", "redis"),
        ("MongoDB 7.0", "mongodb", "database", "MongoDB 7.0"),
        ("SQLite3 file", "sqlite", "database", "SQLite3"),
        ("Built with Django 4.2", "django", "framework", "Django 4.2"),
        ("a Flask app", "flask", "framework", "Flask"),
        ("FastAPI and uvicorn", "fastapi", "framework", "FastAPI"),
        ("React 18 hooks", "react", "framework", "React 18"),
        ("Next.js pages", "nextjs", "framework", "Next.js"),
        ("Python 3.11 only", "python", "software_version", "Python 3.11"),
        ("Node.js 20 LTS", "nodejs", "software_version", "Node.js 20"),
        ("Ubuntu 22.04 hosts", "ubuntu", "software_version", "Ubuntu 22.04"),
        ("release v2.3.1 today", "v2_3_1", "software_version", "v2.3.1"),
        ("tag v1.0.0-rc1", "v1_0_0_rc1", "software_version", "v1.0.0-rc1"),
        ("version 3.2 ships", "v3_2", "software_version", "version 3.2"),
        ("edit src/app.py now", "src/app.py", "file_reference", "src/app.py"),
        ("see config.yaml.", "config.yaml", "file_reference", "config.yaml"),
        ("open ./scripts/run.sh", "./scripts/run.sh", "file_reference", "./scripts/run.sh"),
        ("cat /etc/hosts", "/etc/hosts", "file_reference", "/etc/hosts"),
        ("in ~/notes", "~/notes", "file_reference", "~/notes"),
        ("the .env.local file", ".env.local", "file_reference", ".env.local"),
        ("a Dockerfile", "Dockerfile", "file_reference", "Dockerfile"),
        ("data.tar.gz", "data.tar.gz", "file_reference", "data.tar.gz"),
        ("the AuthService calls", "auth_service", "technical_component", "AuthService"),
        ("an HTTPClient", "http_client", "technical_component", "HTTPClient"),
        ("call parse_args() first", "parse_args", "technical_component", "parse_args()"),
    ],
)
def test_typed_entities(text, key, entity_type, value):
    entities = detect_entities(text, message_id="m9")
    assert entities[key] == Entity(entity_type, value, "m9")


@pytest.mark.parametrize(
    "text",
    [
        "Python is nice",  # software without a version is not an entity
        "react quickly and express yourself in spring",  # common words need their capital
        "Section 3.2, km/h, I/O, and/or, 12/05/2024, e.g. a.m.",
        "example.com and foo@bar.py",
        "Node.js",  # a product name, not a .js file
    ],
)
def test_typed_non_entities(text):
    assert detect_entities(text) == {}


def test_one_entity_per_span_and_a_named_product_keeps_its_version():
    entities = detect_entities("PostgreSQL 14.5")
    assert entities == {"postgresql": Entity("database", "PostgreSQL 14.5", None)}


def test_a_versioned_mention_replaces_a_bare_one():
    entities = detect_entities("PostgreSQL is great. We use PostgreSQL 14.5.")
    assert entities["postgresql"].value == "PostgreSQL 14.5"


def test_entities_are_in_text_order():
    assert list(detect_entities("src/app.py uses Redis and the system")) == ["src/app.py", "redis", "the_system"]


def test_merge_provided_values_win_and_keep_detected_order():
    detected = {"the_system": AMBIGUOUS, "redis": Entity("database", "Redis", "m1")}
    provided = {
        "the_system": "PostgreSQL 14.5 cluster",
        "owner": Entity("user_defined", "ops team", None),
        "pending": None,
        "shape": {"type": "technical_component", "value": "queue"},
    }
    merged = merge_entities(detected, provided, defined_in="m1")
    assert list(merged) == ["the_system", "redis", "owner", "pending", "shape"]
    assert merged["the_system"] == Entity("user_defined", "PostgreSQL 14.5 cluster", "m1")
    assert merged["redis"] == Entity("database", "Redis", "m1")
    assert merged["owner"] == Entity("user_defined", "ops team", None)
    assert merged["pending"] == Entity("user_defined", None, None)
    assert merged["shape"] == Entity("technical_component", "queue", "m1")
    assert detected["the_system"] == AMBIGUOUS  # inputs untouched


def test_merge_rejects_non_string_keys():
    with pytest.raises(TypeError):
        merge_entities({}, {1: "x"})


def test_wrap_message_detects_and_merges_with_provided_winning():
    wrapped = wrap_message(
        "The system uses Redis.", "claude.ai", "s1", entities={"redis": "Redis 7 (managed)", "extra": "x"}
    )
    assert wrapped.entities == {
        "the_system": AMBIGUOUS,
        "redis": Entity("user_defined", "Redis 7 (managed)", "s1"),
        "extra": Entity("user_defined", "x", "s1"),
    }


def test_wrap_message_detect_false_keeps_only_provided():
    wrapped = wrap_message("The system uses Redis.", "claude.ai", "s1", detect=False, entities={"a": "b"})
    assert dict(wrapped.entities) == {"a": Entity("user_defined", "b", "s1")}


def test_wrap_message_defaults():
    wrapped = wrap_message("hello", "claude.ai", "s1")
    assert wrapped.role == "assistant"
    assert wrapped.timestamp is None
    assert wrapped.model is None and wrapped.thread_id is None
    assert wrapped.parent_messages == ()
    assert wrapped.transform_hints == TransformHints(pronoun_map={"I": "the AI assistant", "my": "the AI assistant's",
                                                                   "me": "the AI assistant"})  # fmt: skip


def test_wrap_message_hints_follow_the_role_and_accept_a_mapping():
    assert wrap_message("x", "p", "c", role="user").hints.pronoun_map["I"] == "the user"
    assert wrap_message("x", "p", "c", role="system").hints.pronoun_map == {}
    hints = wrap_message("x", "p", "c", transform_hints={"maintain_tense": "past"}).hints
    assert hints.maintain_tense == "past" and hints.pronoun_map["me"] == "the AI assistant"


def test_wrap_message_converts_datetime_and_keeps_strings():
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert wrap_message("x", "p", "c", timestamp=when).timestamp == "2024-05-01T12:00:00+00:00"
    assert wrap_message("x", "p", "c", timestamp="2024-05-01T12:00:00Z").timestamp == "2024-05-01T12:00:00Z"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"platform": ""}, ValueError),
        ({"chat_id": ""}, ValueError),
        ({"role": "tool"}, ValueError),
        ({"content": None}, TypeError),
        ({"parent_messages": [1]}, TypeError),
        ({"transform_hints": 3}, TypeError),
    ],
)
def test_wrap_message_rejects_bad_arguments(kwargs, error):
    arguments = {"content": "x", "platform": "p", "chat_id": "c", **kwargs}
    with pytest.raises(error):
        wrap_message(**arguments)


def test_update_entity_defines_with_type_and_origin():
    wrapped = wrap_message("The system needs optimization", "claude.ai", "session_123")
    updated = update_entity(wrapped, "the_system", "PostgreSQL 14.5 cluster")
    assert updated.entities["the_system"] == Entity("user_defined", "PostgreSQL 14.5 cluster", "session_123")
    assert wrapped.entities["the_system"] == AMBIGUOUS  # the original is unchanged
    typed = update_entity(wrapped, "the_system", "PostgreSQL 14.5", entity_type="database")
    assert typed.entities["the_system"].type == "database"
    added = update_entity(wrapped, "owner", "ops")
    assert list(added.entities) == ["the_system", "owner"]


def test_update_entity_to_none_makes_it_visibly_undefined():
    wrapped = update_entity(wrap_message("x", "p", "c"), "k", "v")
    cleared = update_entity(wrapped, "k", None)
    assert cleared.entities["k"] == Entity("user_defined", None, None)
    assert find_undefined(cleared) == ["k"]


def test_update_entity_needs_a_key():
    with pytest.raises(ValueError):
        update_entity(wrap_message("x", "p", "c"), "", "v")


def test_find_undefined_lists_null_values_in_order():
    wrapped = wrap_message("The system talks to the database via Redis and that method.", "p", "c")
    assert find_undefined(wrapped) == ["the_system", "the_database", "that_method"]
    wrapped = update_entity(wrapped, "the_database", "Redis")
    assert find_undefined(wrapped) == ["the_system", "that_method"]
