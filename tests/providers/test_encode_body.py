"""``encode_body``: the dialects' request bodies as compact UTF-8 JSON, the same values ``json.dumps``
would carry (it replaced ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gtl_nb.providers.base import encode_body

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6))
def test_any_body_reads_back_as_the_same_values(body):
    assert json.loads(encode_body(body)) == body


def test_a_typical_body_is_byte_for_byte_what_json_dumps_wrote():
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": 'héllo "quoted" \\ back\nslash \u0001 \u2028 😀'}],
        "temperature": 0.7,
        "max_tokens": 16,
        "stream": True,
        "stop": None,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    }
    assert encode_body(body) == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def test_a_value_json_cannot_carry_is_a_type_error():
    with pytest.raises(TypeError):
        encode_body({"extra": object()})
