"""The gtl_nb logger never writes a key."""

from __future__ import annotations

import base64
import logging
import urllib.parse

import pytest

from gtl_nb.log import configure_logging, get_logger, redact


def test_redact_scrubs_every_kind_of_credential():
    text = (
        "openai sk-proj-abcdefghijklmnop1234 anthropic sk-ant-api03-ZZZZZZZZZZZZ gemini AIzaSyA1234567890abcdefghijk "
        "aws AKIAABCDEFGHIJKLMNOP bearer: Authorization: Bearer abc.def.ghi123456 api_key=hunter2hunter2 "
        '{"x-api-key": "s3cr3t-value"} jwt eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl'
    )
    cleaned = redact(text)
    for secret in (
        "abcdefghijklmnop1234",
        "ZZZZZZZZZZZZ",
        "AIzaSyA1234567890",
        "AKIAABCDEFGHIJKLMNOP",
        "abc.def.ghi123456",
        "hunter2hunter2",
        "s3cr3t-value",
        "c2lnbmF0dXJl",
    ):
        assert secret not in cleaned
    assert "[redacted]" in cleaned
    assert redact("nothing secret here: gpt-4o, 42 tokens") == "nothing secret here: gpt-4o, 42 tokens"


def test_child_loggers_redact_before_any_handler(caplog):
    configure_logging("DEBUG")
    with caplog.at_level(logging.DEBUG, logger="gtl_nb"):
        get_logger("engine.test").info("calling with key %s", "sk-abcdefghijklmnopqrstuv")
    assert "sk-abcdefghijklmnopqrstuv" not in caplog.text
    assert "[redacted]" in caplog.text
    configure_logging("WARNING")


def test_an_empty_gtl_nb_log_means_the_default_level(monkeypatch):
    """``GTL_NB_LOG=`` (an environment file's empty line) is WARNING, not an unknown level."""
    before = logging.getLogger("gtl_nb").level
    monkeypatch.setenv("GTL_NB_LOG", "")
    try:
        assert configure_logging().level == logging.WARNING
    finally:
        logging.getLogger("gtl_nb").setLevel(before)


def test_a_refused_keys_masked_rendering_is_scrubbed_too():
    from gtl_nb.log import scrub_secret

    key = "test-key-openai-0123"
    quoted = "Incorrect API key provided: test-key***0123. You can find your API key at https://platform.openai.com."
    assert scrub_secret(quoted, key) == (
        "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com."
    )
    assert scrub_secret(f"quoted whole: {key}", key) == "quoted whole: [redacted]"
    # stars that mask something else, or too little of the key, are left alone
    assert scrub_secret("a *bold* word, 2*3, ab**", key) == "a *bold* word, 2*3, ab**"
    # an sk- key masked as OpenAI does, caught by its shape even where the key is not known
    assert redact("provided: sk-proj-****************abcd.") == "provided: [redacted]."


@pytest.mark.parametrize(
    ("quoted", "scrubbed"),
    [
        ("sk-...abcd", "[redacted]"),
        ("sk-proj-\u2026abcd", "[redacted]"),
        ("sk-proj-\u2022\u2022\u2022\u2022abcd", "[redacted]"),
        ("sk-proj-AbC\u2026abcd", "[redacted]"),
        ("`sk-proj-****abcd`", "`[redacted]`"),
        ("<sk-proj-****abcd>", "<[redacted]>"),
        ("`****abcd`", "`[redacted]`"),
        ("****\u2026abcd", "[redacted]"),
        ('{"message": "key ****abcd\\"}', '{"message": "key [redacted]\\"}'),
        ("?key=****abcd&y=1", "?key=[redacted]&y=1"),
        ("key: sk-proj-****abcd.", "key: [redacted]."),
    ],
)
def test_masked_renderings_in_every_style_and_setting_are_scrubbed(quoted, scrubbed):
    from gtl_nb.log import scrub_secret

    key = "sk-proj-AbCdEfGh1234567890XyZwabcd"
    assert redact(scrub_secret(quoted, key)) == scrubbed


def test_ordinary_stars_dots_and_ellipses_are_left_alone():
    from gtl_nb.log import scrub_secret

    text = "a **bold** word, 2*3, e.g. the ... ellipsis\u2026 and api.openai.com"
    assert redact(scrub_secret(text, "sk-proj-AbCdEfGh1234567890XyZwabcd")) == text


def test_scrubbing_masked_keys_is_linear_in_the_text():
    from gtl_nb.log import scrub_secret

    hostile = "*" + "sk-" * 50_000 + " a*" * 50_000 + "." * 100_000 + "a." * 50_000 + "\u2022" * 100_000
    assert "[redacted]" in redact(hostile)  # returns at all: no backtracking over the runs
    assert scrub_secret(hostile, "sk-sk-sk-sk") != hostile


KEY_CANARY = "Canary+Provider/KEY-7f3A9c1e5b2d4f60"


@pytest.mark.parametrize(
    "quoted",
    [
        KEY_CANARY.lower(),
        KEY_CANARY.upper(),
        KEY_CANARY.swapcase(),
        KEY_CANARY[:12],  # the fewest first characters scrubbed
        KEY_CANARY[:20].lower(),
        KEY_CANARY[-12:].upper(),
        urllib.parse.quote(KEY_CANARY, safe=""),
        urllib.parse.quote(KEY_CANARY, safe="").lower(),
        urllib.parse.quote_plus(KEY_CANARY),
        base64.b64encode(KEY_CANARY.encode()).decode(),
        base64.urlsafe_b64encode(KEY_CANARY.encode()).decode().rstrip("="),
        base64.b64encode(f"u:{KEY_CANARY}".encode()).decode(),  # Basic authorisation: the key one byte on
        base64.b64encode(f"user:{KEY_CANARY}".encode()).decode(),  # and two
        f"{KEY_CANARY.lower()}{KEY_CANARY.upper()}",
    ],
)
def test_a_key_in_another_case_cut_or_encoded_is_scrubbed(quoted):
    from gtl_nb.log import scrub_secret

    text = f'{{"message": "not available to key {quoted}: see the docs"}}'
    scrubbed = scrub_secret(text, KEY_CANARY)
    assert scrubbed == '{"message": "not available to key [redacted]: see the docs"}'


def test_what_is_not_the_key_is_left_alone():
    from gtl_nb.log import scrub_secret

    text = f"canary provider key {KEY_CANARY[:11]} or {KEY_CANARY[-11:]}, base64 Q2FuYXJ5 — ordinary words"
    assert scrub_secret(text, KEY_CANARY) == text
    assert scrub_secret("Hello HELLO hello", "hello-world-key") == "Hello HELLO hello"


def test_scrubbing_a_key_in_its_forms_is_linear_in_the_text():
    from gtl_nb.log import scrub_secret

    periodic = "abababababababab"  # a key whose first 12 characters start again at every other one
    text = "ab" * 200_000 + "x" + base64.b64encode(periodic.encode()).decode() * 50_000
    assert scrub_secret(text, periodic).startswith("[redacted]")  # returns at all: no quadratic rescans


def test_quotes_secret_finds_a_key_whole_in_any_letter_case_or_masked_and_ignores_short_ones():
    from gtl_nb.log import quotes_secret

    key = "sk-canary-0123456789abcdef"
    assert quotes_secret(f"model-{key}", [key])
    assert quotes_secret(f"model-{key.upper()}", ["short", key])
    assert quotes_secret("sk-canary-01234…cdef", [key])
    assert quotes_secret("SK-CANARY-01234…CDEF", [key])  # masked, in another letter case
    assert not quotes_secret("gpt-4o-2024-08-06", [key])
    assert not quotes_secret("a model named short", ["short"])  # under 8 characters: no secret to find
    assert not quotes_secret(f"model-{key}", [])


@pytest.mark.parametrize(
    "quoted",
    [
        lambda key: f"Invalid x-api-key {key[:22]} (truncated)",  # cut at the key's own '_'
        lambda key: f"key '{key[:35]}' was revoked",  # cut at the key's own '-'
        lambda key: f"token={key[:20]}Q refused",  # a prefix, then a letter of the text's own
        lambda key: f"Invalid x-api-key {key[:20]} (truncated)",  # cut inside a run
    ],
)
def test_a_key_cut_where_its_own_punctuation_falls_is_still_scrubbed(quoted):
    """A provider's key (base64url: '-' and '_' fall anywhere in its random part) quoted up to one of
    its own punctuation marks is a leak like any other cut."""
    from gtl_nb.log import scrub_secret

    key = "sk-ant-api03-Zq8vT3kLm9_Xw2RbN7pQe4-HsJ6yUc1aFgD5oKiV0lMnB8tWx3ZrE9qYpA7sL2dGh4jK6fN1vC0bX5mQ-AbCdEfAA"
    assert key[13:20] not in scrub_secret(quoted(key), key)
