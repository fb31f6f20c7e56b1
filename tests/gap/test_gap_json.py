"""The spec's JSON structure: exact shape, defaults for missing fields, errors naming the path."""

from __future__ import annotations

import json

import pytest

from gtl_nb.gap import GAP_VERSION, Entity, GAPFormatError, from_json, to_dict, to_json, update_entity, wrap_message


def test_to_json_has_the_specs_structure():
    wrapped = wrap_message(
        "The system needs optimization",
        "claude.ai",
        "session_123",
        model="claude-3-opus",
        timestamp="2024-05-01T12:00:00+00:00",
        thread_id="t1",
        parent_messages=["m0"],
    )
    wrapped = update_entity(wrapped, "the_system", "PostgreSQL 14.5 cluster")
    assert json.loads(to_json(wrapped)) == {
        "gap_version": "0.1.0",
        "message": {
            "content": "The system needs optimization",
            "source": {
                "platform": "claude.ai",
                "model": "claude-3-opus",
                "chat_id": "session_123",
                "timestamp": "2024-05-01T12:00:00+00:00",
                "role": "assistant",
            },
            "context": {
                "thread_id": "t1",
                "parent_messages": ["m0"],
                "entities": {
                    "the_system": {"type": "user_defined", "value": "PostgreSQL 14.5 cluster",
                                   "defined_in": "session_123"},
                },
            },
            "transform_hints": {
                "maintain_tense": None,
                "preserve_perspective": None,
                "pronoun_map": {"I": "the AI assistant", "my": "the AI assistant's", "me": "the AI assistant"},
            },
        },
    }  # fmt: skip
    assert GAP_VERSION == "0.1.0"


def test_to_json_is_one_line_by_default_and_indents_on_request():
    wrapped = wrap_message("a\nb", "p", "c")
    assert "\n" not in to_json(wrapped)
    assert to_json(wrapped, indent=2).startswith('{\n  "gap_version": "0.1.0"')
    assert from_json(to_json(wrapped, indent=2)) == wrapped


def test_minimal_document_takes_defaults():
    source = {"platform": "gemini", "chat_id": "g1"}
    text = json.dumps({"gap_version": "0.1.3", "message": {"content": "I think", "source": source}})
    wrapped = from_json(text)
    assert (wrapped.role, wrapped.model, wrapped.timestamp, wrapped.thread_id) == ("assistant", None, None, None)
    assert wrapped.parent_messages == () and wrapped.entities == {}
    assert wrapped.hints.pronoun_map["I"] == "the AI assistant"


def test_entity_type_defaults_from_its_value_and_unknown_keys_are_ignored():
    document = to_dict(wrap_message("x", "p", "c", detect=False))
    document["message"]["context"]["entities"] = {"a": {"value": None}, "b": {"value": "v", "extra": 1}}
    document["message"]["future"] = {"anything": True}
    wrapped = from_json(json.dumps(document))
    assert wrapped.entities == {"a": Entity("ambiguous_reference"), "b": Entity("user_defined", "v")}


def test_from_json_accepts_bytes():
    wrapped = wrap_message("héllo", "p", "c")
    assert from_json(to_json(wrapped).encode("utf-8")) == wrapped


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: d.pop("gap_version"), "gap_version", "required field is missing"),
        (lambda d: d.update(gap_version="1.0.0"), "gap_version", "unsupported GAP version"),
        (lambda d: d.update(gap_version=1), "gap_version", "expected a string"),
        (lambda d: d.pop("message"), "message", "required field is missing"),
        (lambda d: d["message"].pop("content"), "message.content", "required field is missing"),
        (lambda d: d["message"].update(content=None), "message.content", "expected a string, got null"),
        (lambda d: d["message"]["source"].update(platform=3), "message.source.platform", "expected a string"),
        (lambda d: d["message"]["source"].pop("chat_id"), "message.source.chat_id", "missing"),
        (lambda d: d["message"]["source"].update(role="tool"), "message.source.role", "role must be"),
        (lambda d: d["message"]["source"].update(role=""), "message.source.role", "role must be"),
        (lambda d: d["message"]["context"].update(parent_messages=[1]), "message.context.parent_messages[0]",
         "expected a string"),
        (lambda d: d["message"]["context"].update(entities=[]), "message.context.entities", "expected an object"),
        (lambda d: d["message"]["context"]["entities"].update(k=5), "message.context.entities.k",
         "expected an object"),
        (lambda d: d["message"]["context"]["entities"].update(k={"value": 5}), "message.context.entities.k.value",
         "expected a string"),
        (lambda d: d["message"]["transform_hints"].update(pronoun_map=None),
         "message.transform_hints.pronoun_map", "expected an object"),
        (lambda d: d["message"]["transform_hints"].update(pronoun_map={"I": 2}),
         "message.transform_hints.pronoun_map.I", "expected a string"),
    ],
)  # fmt: skip
def test_bad_documents_name_the_field(mutate, path, fragment):
    document = to_dict(wrap_message("x", "p", "c", detect=False))
    mutate(document)
    with pytest.raises(GAPFormatError) as caught:
        from_json(json.dumps(document))
    assert caught.value.path == path
    assert fragment in str(caught.value) and path in str(caught.value)


def test_invalid_json_text_reports_its_line():
    with pytest.raises(GAPFormatError) as caught:
        from_json('{\n  "gap_version": "0.1.0",\n  oops\n}')
    assert caught.value.line == 3
    with pytest.raises(GAPFormatError, match="must be a JSON object"):
        from_json("[]")


def test_a_python_value_json_cannot_show_is_named_with_its_article():
    from gtl_nb.gap.jsonfmt import _shown

    assert _shown(object()) == "an object"
