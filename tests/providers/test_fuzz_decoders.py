"""Every dialect against hostile bytes (``strategies.py``): random bodies, recorded bodies mutated, split anywhere.

Whatever arrives, a decoder raises nothing, ends with exactly one ``done`` or ``error`` after ``close()``, emits
only events that can travel as GTL frames, and finishes in bounded time; ``decode_error`` answers any status,
headers and body with one carriable ``error``. Reproducible (``derandomize``) and sized to run in seconds.
"""

from __future__ import annotations

import math
import time

import provider_strategies as ps
import pytest
import wire
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtl_nb.protocol.messages import Done, Error, StreamEvent
from gtl_nb.providers import get_provider
from gtl_nb.providers.base import is_carriable

SECONDS_PER_BODY = 3.0  # a body of a few megabytes at worst; the defects took seconds to minutes
FUZZ = settings(
    max_examples=150,
    deadline=None,  # timed by the test itself, with a margin for a machine shared with other work
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
DECODE_ERROR_FUZZ = settings(FUZZ, max_examples=150)


def decode(dialect_type: str, pieces: list[bytes], *, stream: bool) -> list[StreamEvent]:
    """The events of ``pieces`` through a fresh decoder, checked against the contract of every decoder."""
    decoder = get_provider(dialect_type).response_decoder(ps.request(stream=stream), ps.deployment(dialect_type))
    start = time.perf_counter()
    events = wire.feed_all(decoder, pieces)
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_BODY, f"decoding took {elapsed:.2f} s"
    wire.check_sequence(events, ps.SESSION_ID)
    assert all(is_carriable(event) for event in events), events
    assert decoder.feed(b"data: more\n\n") == [] and decoder.close() == []  # nothing after the terminal event
    data = decoder.provider_data
    assert data is None or is_carriable(Done(session_id=ps.SESSION_ID, provider_data=data))
    if isinstance(events[-1], Error):
        assert events[-1].provider == ps.deployment(dialect_type).name
    return events


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
@FUZZ
@given(data=st.data())
def test_random_bytes_end_in_one_terminal_event(dialect_type: str, data: st.DataObject) -> None:
    body = data.draw(ps.garbage, label="body")
    decode(dialect_type, data.draw(ps.splits(body), label="pieces"), stream=data.draw(st.booleans(), label="stream"))


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
@FUZZ
@given(data=st.data())
def test_mutated_recordings_end_in_one_terminal_event(dialect_type: str, data: st.DataObject) -> None:
    recorded = data.draw(st.sampled_from(ps.recorded_bodies(dialect_type)), label="recording")
    body = data.draw(ps.mutated_body(recorded), label="body")
    decode(dialect_type, data.draw(ps.splits(body), label="pieces"), stream=recorded.stream)


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
@pytest.mark.parametrize("piece", ps.HOSTILE, ids=lambda piece: f"{piece[:12]!r}x{len(piece)}")
def test_a_hostile_piece_as_the_whole_body_ends_in_one_terminal_event(dialect_type: str, piece: bytes) -> None:
    for stream in (True, False):
        decode(dialect_type, [piece], stream=stream)


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
@DECODE_ERROR_FUZZ
@given(status=ps.statuses, headers=ps.error_headers, data=st.data())
def test_decode_error_answers_anything_with_one_carriable_error(
    dialect_type: str, status: int, headers: dict[str, str], data: st.DataObject
) -> None:
    body = data.draw(ps.error_bodies(dialect_type), label="body")
    dialect = get_provider(dialect_type)
    start = time.perf_counter()
    error = dialect.decode_error(ps.request(stream=True), ps.deployment(dialect_type), status, headers, body)
    assert time.perf_counter() - start < SECONDS_PER_BODY
    assert isinstance(error, Error) and is_carriable(error)
    assert error.http_status == status and error.session_id == ps.SESSION_ID
    assert error.retry_after is None or (math.isfinite(error.retry_after) and error.retry_after >= 0)
