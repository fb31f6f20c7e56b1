"""``gtl_nb.words``: how messages name what they were given."""

from __future__ import annotations

import pytest

from gtl_nb.words import a_kind_of, with_article


@pytest.mark.parametrize(
    ("name", "said"),
    [("int", "an int"), ("error", "an error"), ("answer", "an answer"), ("list", "a list"), ("Object", "an Object")],
)
def test_a_name_takes_the_article_its_first_letter_asks_for(name, said):
    assert with_article(name) == said


def test_a_value_is_named_by_its_type():
    assert a_kind_of(7) == "an int" and a_kind_of([]) == "a list" and a_kind_of(object()) == "an object"
