"""The immutable value types: equality, hashing, validation and the frozen mapping."""

from __future__ import annotations

import dataclasses

import pytest

from gtl_nb import gap
from gtl_nb.gap import Entity, FrozenMap, TransformHints, WrappedMessage


def test_wrapped_messages_are_frozen_hashable_and_compare_by_value():
    first = WrappedMessage("hi", "claude.ai", "c1", entities={"k": Entity("user_defined", "v", "c1")})
    second = WrappedMessage("hi", "claude.ai", "c1", entities=FrozenMap({"k": Entity("user_defined", "v", "c1")}))
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.content = "changed"  # type: ignore[misc]


def test_lists_and_dicts_are_converted_to_immutable_values():
    wrapped = WrappedMessage("x", "p", "c", parent_messages=["a", "b"], entities={"k": Entity("t")})
    assert wrapped.parent_messages == ("a", "b")
    assert isinstance(wrapped.entities, FrozenMap)
    with pytest.raises(TypeError):
        wrapped.entities["k"] = Entity("t")  # type: ignore[index]


def test_missing_hints_become_the_roles_defaults():
    assert WrappedMessage("x", "p", "c", role="user").hints == TransformHints.for_role("user")
    assert WrappedMessage("x", "p", "c") == WrappedMessage("x", "p", "c", transform_hints=TransformHints.for_role(
        "assistant"))  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [
        {"role": "tool"},
        {"content": 1},
        {"parent_messages": "abc"},
        {"parent_messages": [None]},
        {"entities": {"k": "not an entity"}},
        {"model": 3},
        {"transform_hints": {"pronoun_map": {}}},
    ],
)
def test_invalid_fields_are_rejected(kwargs):
    arguments = {"content": "x", "platform": "p", "chat_id": "c", **kwargs}
    with pytest.raises((TypeError, ValueError)):
        WrappedMessage(**arguments)


def test_an_empty_entity_key_is_refused_by_the_model_and_both_readers():
    """An entity keyed "" was read and listed as undefined, but could never be defined: ``update_entity``
    refuses an empty key, and the suggestions asked a model about ``- ("")``."""
    with pytest.raises(ValueError, match="entity key must not be empty"):
        WrappedMessage("x", "p", "c", entities={"": Entity("ambiguous_reference")})
    with pytest.raises(ValueError, match="entity key must not be empty"):
        gap.wrap_message("x", "p", "c", entities={"": "PostgreSQL"})
    block = '[GAP:START]\nFrom: p\nContext: user\nEntities: "k" = -, "" = -\n[GAP:CONTENT]\nx\n[GAP:END]'
    with pytest.raises(gap.GAPFormatError, match=r"line 4: Entities: an entity key must not be empty \(column 20\)"):
        gap.from_markdown(block)
    document = gap.to_dict(gap.wrap_message("x", "p", "c", entities={"k": None}))
    document["message"]["context"]["entities"][""] = document["message"]["context"]["entities"].pop("k")
    with pytest.raises(gap.GAPFormatError, match=r"message\.context\.entities: an entity key must not be empty"):
        gap.from_dict(document)


def test_entity_validation_and_defined_flag():
    assert Entity("user_defined", "v").defined
    assert not Entity("ambiguous_reference").defined
    with pytest.raises(TypeError):
        Entity("t", 5)  # type: ignore[arg-type]


def test_frozen_map_behaves_like_a_read_only_dict():
    mapping = FrozenMap({"b": 1, "a": 2})
    assert list(mapping) == ["b", "a"]
    assert mapping == {"a": 2, "b": 1}
    assert mapping != {"a": 2}
    assert mapping.to_dict() == {"b": 1, "a": 2}
    assert hash(mapping) == hash(FrozenMap({"a": 2, "b": 1}))
    assert "FrozenMap" in repr(mapping)


def test_transform_hints_validate_the_pronoun_map():
    with pytest.raises(TypeError):
        TransformHints(pronoun_map={"I": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        TransformHints(pronoun_map=["I"])  # type: ignore[arg-type]


def test_public_names_resolve_lazily_and_all_is_complete():
    for name in gap.__all__:
        assert getattr(gap, name) is not None
    assert {"wrap_message", "transform_for_platform", "to_markdown", "from_markdown", "parse_all", "to_json",
            "from_json", "update_entity", "create_context_graph", "detect_entities", "merge_entities",
            "suggest_definitions", "find_undefined", "transform_pronouns"} <= set(gap.__all__)  # fmt: skip
    assert set(gap.__all__) == set(gap._LAZY)
    with pytest.raises(AttributeError):
        gap.no_such_name  # noqa: B018
    assert "markdown" in dir(gap)
