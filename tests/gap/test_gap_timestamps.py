"""GAP timestamps are ISO-8601 (the spec's ``"timestamp": "ISO-8601"``): wrapping and both readers refuse
anything else, and take the forms other writers use (RFC 3339's ``Z``, a long fraction, a date alone)."""

from __future__ import annotations

import json

import pytest

from gtl_nb.gap import GAPFormatError, WrappedMessage, from_json, from_markdown, to_json, to_markdown, wrap_message
from gtl_nb.gap.model import iso_timestamp

from .test_gap_cli import run

TAKEN = [
    "2024-05-01",
    "2024-05-01T12:00",
    "2024-05-01T12:00:00Z",
    "2024-05-01t12:00:00z",
    "2024-05-01 12:00:00+02:00",
    "2024-05-01T12:00:00.5-07:00",
    "2024-05-01T12:00:00.123Z",  # JavaScript's toISOString
    "2024-05-01T12:00:00.123456789Z",  # Go's RFC3339Nano
    "2024-05-01T12:00:00,25Z",  # ISO-8601's decimal comma
    "2024-05-01T12:00:00.123456+00:00",  # Python's isoformat()
    "2024-05-01T12:00:00+0000",  # strftime("%z"): taken on Python 3.10 too, as on 3.11 and later
    "2024-05-01T12:00:00-0800",
    "2024-05-01T12:00+02",  # an offset of whole hours
    "2024-05-01T12:00:00+02:00[Europe/Paris]",  # RFC 9557's zone name (Java's ZonedDateTime)
]
REFUSED = [
    "yesterday",
    "",
    "2024-13-01",  # no month 13
    "2024-02-30",
    "2024-05-01T25:00",
    "2024-05-01T12",  # a time has minutes
    "2024-05-01x12:00",
    "2024-05-01T12:00:00.Z",
    " 2024-05-01",
    "05/01/2024",
    "２０２４-05-01",  # full-width digits
    "1714564800",
    "2024-05-01T1200",  # ISO-8601's basic form: refused on every Python (3.11 would read it)
    "2024-05-01T12:00:00+2",
]


@pytest.mark.parametrize("timestamp", TAKEN)
def test_iso_8601_timestamps_are_taken_and_kept_as_written(timestamp):
    assert iso_timestamp(timestamp) is not None
    wrapped = wrap_message("x", "p", "c", timestamp=timestamp)
    assert wrapped.timestamp == timestamp
    assert from_json(to_json(wrapped)) == wrapped and from_markdown(to_markdown(wrapped)) == wrapped


@pytest.mark.parametrize("timestamp", REFUSED)
def test_wrapping_refuses_a_timestamp_that_is_not_iso_8601(timestamp):
    assert iso_timestamp(timestamp) is None
    with pytest.raises(ValueError, match="timestamp must be an ISO-8601 date"):
        wrap_message("x", "p", "c", timestamp=timestamp)
    with pytest.raises(ValueError, match="timestamp must be an ISO-8601 date"):
        WrappedMessage(content="x", platform="p", chat_id="c", timestamp=timestamp)


def _document(timestamp: str) -> str:
    valid = json.loads(to_json(wrap_message("x", "p", "c", timestamp="2024-05-01T12:00:00Z")))
    valid["message"]["source"]["timestamp"] = timestamp
    return json.dumps(valid)


@pytest.mark.parametrize("timestamp", REFUSED)
def test_the_json_reader_refuses_a_timestamp_that_is_not_iso_8601_naming_its_path(timestamp):
    with pytest.raises(GAPFormatError) as refused:
        from_json(_document(timestamp))
    assert refused.value.path == "message.source.timestamp" and "ISO-8601" in str(refused.value)


@pytest.mark.parametrize("timestamp", ["yesterday", "2024-13-01", "2024-05-01x12:00"])
def test_the_markdown_reader_refuses_a_timestamp_that_is_not_iso_8601_naming_its_line(timestamp):
    text = to_markdown(wrap_message("x", "p", "c", timestamp="2024-05-01T12:00:00Z"))
    text = text.replace("message from 2024-05-01T12:00:00Z", f"message from {timestamp}")
    with pytest.raises(GAPFormatError) as refused:
        from_markdown(text)
    assert refused.value.line == 3 and "ISO-8601" in str(refused.value) and timestamp in str(refused.value)


def test_gtl_gap_wrap_refuses_a_timestamp_that_is_not_iso_8601():
    code, out, err = run(["wrap", "--platform", "chatgpt", "--timestamp", "yesterday"], stdin="hello")
    assert (code, out) == (1, "")
    assert err.startswith("gtl gap wrap: error: timestamp must be an ISO-8601 date") and err.count("\n") == 1
