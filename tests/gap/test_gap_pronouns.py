"""Pronoun rewriting: the spec's role maps, with grammar, capitals and untouchable text."""

from __future__ import annotations

import pytest

from gtl_nb.gap import transform_pronouns
from gtl_nb.gap.pronouns import third_person

A = "assistant"
U = "user"

CASES = [
    # the spec's three mappings
    (A, "Give me the logs.", "Give the AI assistant the logs."),
    (A, "That is my plan.", "That is the AI assistant's plan."),
    (A, "Yesterday I left.", "Yesterday the AI assistant left."),
    (U, "Give me the logs.", "Give the user the logs."),
    (U, "That is my plan.", "That is the user's plan."),
    (U, "Yesterday I left.", "Yesterday the user left."),
    # be / have / do, contractions and negations
    (A, "I'm sure.", "The AI assistant is sure."),
    (A, "I am sure.", "The AI assistant is sure."),
    (A, "I'm not sure.", "The AI assistant is not sure."),
    (A, "I am not sure.", "The AI assistant is not sure."),
    (A, "I was wrong.", "The AI assistant was wrong."),
    (A, "I wasn't there.", "The AI assistant wasn't there."),
    (A, "I've checked.", "The AI assistant has checked."),
    (A, "I have checked.", "The AI assistant has checked."),
    (A, "I haven't checked.", "The AI assistant hasn't checked."),
    (A, "I have not checked.", "The AI assistant has not checked."),
    (A, "I'd suggest caching.", "The AI assistant would suggest caching."),
    (A, "I'll retry.", "The AI assistant will retry."),
    (A, "I do care.", "The AI assistant does care."),
    (A, "I don't know.", "The AI assistant doesn't know."),
    (A, "I do not know.", "The AI assistant does not know."),
    (A, "I did that.", "The AI assistant did that."),
    (A, "I had a plan.", "The AI assistant had a plan."),
    (A, "I’m sure I don’t know.", "The AI assistant is sure the AI assistant doesn’t know."),
    (U, "I'm new here and I've no idea.", "The user is new here and the user has no idea."),
    # modals stay
    (A, "I can help.", "The AI assistant can help."),
    (A, "I could help.", "The AI assistant could help."),
    (A, "I will help.", "The AI assistant will help."),
    (A, "I would help.", "The AI assistant would help."),
    (A, "I should help.", "The AI assistant should help."),
    (A, "I must help.", "The AI assistant must help."),
    (A, "I can't help.", "The AI assistant can't help."),
    # regular present-tense verbs
    (A, "I think so.", "The AI assistant thinks so."),
    (A, "I try again.", "The AI assistant tries again."),
    (A, "I fix bugs.", "The AI assistant fixes bugs."),
    (A, "I go home.", "The AI assistant goes home."),
    (A, "I watch logs.", "The AI assistant watches logs."),
    (A, "I push code.", "The AI assistant pushes code."),
    (A, "I say yes.", "The AI assistant says yes."),
    (A, "I need help.", "The AI assistant needs help."),
    (A, "I guess so.", "The AI assistant guesses so."),
    (A, "I double-check it.", "The AI assistant double-checks it."),
    (A, "I really think so.", "The AI assistant really thinks so."),
    (A, "I also want tests.", "The AI assistant also wants tests."),
    (U, "I want a refund.", "The user wants a refund."),
    (U, "I prefer tabs.", "The user prefers tabs."),
    # past forms stay
    (A, "I fixed it.", "The AI assistant fixed it."),
    (A, "I wrote it.", "The AI assistant wrote it."),
    (A, "I agreed.", "The AI assistant agreed."),
    # questions: the auxiliary changes, the verb stays
    (A, "Do I need it?", "Does the AI assistant need it?"),
    (A, "Am I right?", "Is the AI assistant right?"),
    (A, "Have I missed it?", "Has the AI assistant missed it?"),
    (A, "Don't I know?", "Doesn't the AI assistant know?"),
    (A, "Can I help?", "Can the AI assistant help?"),
    (U, "Should I upgrade?", "Should the user upgrade?"),
    # compound subject keeps the plural verb
    (A, "You and I are done.", "You and the AI assistant are done."),
    # mine, myself
    (A, "The bug is mine.", "The bug is the AI assistant's."),
    (A, "I did it myself.", "The AI assistant did it itself."),
    (U, "I did it myself.", "The user did it themselves."),
    (U, "That one is mine.", "That one is the user's."),
    # capitals
    (A, "My plan works.", "The AI assistant's plan works."),
    (A, "Me too.", "The AI assistant too."),
    (A, "ok. I think so", "ok. The AI assistant thinks so"),
    (A, "Done! I think so", "Done! The AI assistant thinks so"),
    (A, "- I agree\n- I think so", "- The AI assistant agrees\n- The AI assistant thinks so"),
    (A, "## I fix it", "## The AI assistant fixes it"),
    (A, "so I think", "so the AI assistant thinks"),
    (A, "e.g. I think", "e.g. the AI assistant thinks"),
    (A, "**I** think", "**The AI assistant** thinks"),
    # words that must not change
    (A, "Illinois is a state.", "Illinois is a state."),
    (A, "A mystery remains.", "A mystery remains."),
    (A, "Send memes.", "Send memes."),
    (A, "Fast I/O matters.", "Fast I/O matters."),
    (A, "Read Section I first.", "Read Section I first."),
    (A, "After World War I ended.", "After World War I ended."),
    (A, "A Type I error.", "A Type I error."),
    (A, "Buy an iMac.", "Buy an iMac."),
    (A, "Some time, some name, meet them.", "Some time, some name, meet them."),
    (A, "Take the I-5 north.", "Take the I-5 north."),
    (A, "ME and MY are codes.", "ME and MY are codes."),
    (A, "Oh my!", "Oh my!"),
    (A, "The mine is deep.", "The mine is deep."),
    (A, "We mine data.", "We mine data."),
    (A, "Use MySQL and myapp.", "Use MySQL and myapp."),
    (A, "Visit me.com now.", "Visit me.com now."),
    (A, "Open ~/my/files.", "Open ~/my/files."),
    (A, "Install my-package.", "Install my-package."),
    (A, "i think", "i think"),
    # code and quotes are never touched
    (A, "Run `I think` now.", "Run `I think` now."),
    (A, "```\nI think\n```\nI think", "```\nI think\n```\nThe AI assistant thinks"),
    (A, 'He wrote "I think so" to me.', 'He wrote "I think so" to the AI assistant.'),
    (A, "She said “I am done” and I agree.", "She said “I am done” and the AI assistant agrees."),
    (A, "See https://example.com/I/my/me for me.", "See https://example.com/I/my/me for the AI assistant."),
    # a repeated subject is no verb ("Is"): each is rewritten, the verb after the second conjugated
    (A, "I I think so.", "The AI assistant the AI assistant thinks so."),
]


@pytest.mark.parametrize(("role", "text", "expected"), CASES, ids=[f"{r}:{t[:30]}" for r, t, _e in CASES])
def test_pronoun_table(role, text, expected):
    assert transform_pronouns(text, role) == expected


def test_pronoun_table_has_at_least_sixty_cases():
    assert len(CASES) >= 60


def test_system_role_is_left_alone():
    text = "I think my plan suits me."
    assert transform_pronouns(text, "system") == text


def test_unknown_role_is_a_value_error():
    with pytest.raises(ValueError, match="assistant, user, system"):
        transform_pronouns("I think", "robot")


def test_custom_pronoun_map_uses_its_names_with_the_same_grammar():
    mapping = {"I": "Claude", "my": "Claude's", "me": "Claude", "we": "the team"}
    text = "I think my plan suits me, and we agree. i.e. I'm sure."
    assert transform_pronouns(text, "assistant", pronoun_map=mapping) == (
        "Claude thinks Claude's plan suits Claude, and the team agree. i.e. Claude is sure."
    )


def test_a_partial_map_changes_only_its_words():
    assert transform_pronouns("I think my plan works.", "user", pronoun_map={"my": "their"}) == (
        "I think their plan works."
    )


def test_an_empty_map_changes_nothing():
    assert transform_pronouns("I think so.", "assistant", pronoun_map={}) == "I think so."


@pytest.mark.parametrize(
    ("verb", "expected"),
    [("think", "thinks"), ("try", "tries"), ("fix", "fixes"), ("go", "goes"), ("play", "plays"),
     ("have", "has"), ("do", "does"), ("watch", "watches"), ("Run", "Runs"), ("re-run", "re-runs")],
)  # fmt: skip
def test_third_person_forms(verb, expected):
    assert third_person(verb) == expected


def test_long_text_is_rewritten_in_linear_time():
    text = "I think my plan works. " * 5000
    out = transform_pronouns(text, "assistant")
    assert out.count("The AI assistant thinks the AI assistant's plan works.") == 5000
