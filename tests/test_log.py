"""The gtl_nb logger never writes a key."""

from __future__ import annotations

import logging

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
