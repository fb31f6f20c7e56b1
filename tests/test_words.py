"""``gtl_nb.words``: how messages name what they were given."""

from __future__ import annotations

import pytest

from gtl_nb.words import a_kind_of, dollars, with_article


@pytest.mark.parametrize(
    ("name", "said"),
    [("int", "an int"), ("error", "an error"), ("answer", "an answer"), ("list", "a list"), ("Object", "an Object")],
)
def test_a_name_takes_the_article_its_first_letter_asks_for(name, said):
    assert with_article(name) == said


def test_a_value_is_named_by_its_type():
    assert a_kind_of(7) == "an int" and a_kind_of([]) == "a list" and a_kind_of(object()) == "an object"


@pytest.mark.parametrize(
    ("cost", "said"),
    [
        (0, "$0"),
        (0.000046, "$0.000046"),
        (1.5e-7, "$0.00000015"),  # a one-token request of a cheap model: paid, never $0.000000
        (1e-13, "<$0.000000000001"),
        (0.0099999, "$0.0100"),  # what six places would print as $0.010000 is a cent
        (1.25, "$1.2500"),
        (1234.5, "$1,234.5000"),
    ],
)
def test_a_cost_reads_as_dollars_never_a_paid_one_as_zero(cost, said):
    assert dollars(cost) == said
