"""Property: whatever is passed to ``Client.complete``, the result is a ``Completion`` or one of the
library's documented errors, in bounded time, and every request that was sent left exactly one row."""

from __future__ import annotations

import time

from client_strategies import complete_kwargs, messages, models, plausible_kwargs, plausible_messages, plausible_models
from hypothesis import HealthCheck, event, given, settings

import gtl_nb
from gtl_nb.completion import Completion
from gtl_nb.engine.ledger import Ledger
from gtl_nb.protocol.errors import GTLError

LEDGER = Ledger(":memory:")
CLIENT = gtl_nb.connect(ledger=LEDGER, environ={}, config={})


def row_count() -> int:
    return LEDGER.totals().requests


PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@PROPERTY
@given(model=models, prompt=messages, kwargs=complete_kwargs)
def test_hostile_arguments_give_a_completion_or_a_library_error_and_one_row_per_sent_request(model, prompt, kwargs):
    check_one_call(model, prompt, kwargs)


@PROPERTY
@given(model=plausible_models, prompt=plausible_messages, kwargs=plausible_kwargs)
def test_plausible_arguments_give_a_completion_or_a_library_error_and_one_row_per_sent_request(model, prompt, kwargs):
    check_one_call(model, prompt, kwargs)


def check_one_call(model: object, prompt: object, kwargs: dict) -> None:
    before = row_count()
    started = time.monotonic()
    try:
        outcome: object = CLIENT.complete(model, prompt, **kwargs)
    except GTLError as exc:
        outcome = exc
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"took {elapsed:.1f} s"
    sent = isinstance(outcome, Completion) or bool(getattr(outcome, "session_id", None))
    event(f"sent={sent} {type(outcome).__name__}")
    assert row_count() - before == int(sent), outcome
    rows = LEDGER.to_dataframe()
    assert "started" not in set(rows["status"])
