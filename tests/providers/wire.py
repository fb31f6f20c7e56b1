"""The harness every provider dialect test shares, written once.

A dialect test replays a recorded (or hand-built) response body through a ``ResponseDecoder`` and compares
what comes out with the fixture's ``.expected.json``. The steps are the same for every provider:

* **split** the body — whole, one byte at a time, cut at seeded random points — because a decoder must give
  the same events however the network happens to chunk the bytes;
* **feed** the pieces to the decoder and **close** it;
* **check the sequence** against the decoder contract of ``gtl_nb.providers.base``;
* **summarise** the events (text, reasoning, tool calls, usage) in the shape of ``.expected.json`` and
  compare them with it;
* **load** the fixtures' ``.expected.json`` and ``.request.json`` files.

What is specific to one provider (its request defaults, finish-reason table, hand-built frames) stays in its
test file. ``tests/providers/conftest.py`` puts this folder on ``sys.path`` so the tests ``import wire``.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Reasoning,
    StreamEvent,
    Token,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.base import Deployment, HttpDialect, ResponseDecoder

FIXTURES_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "wire"

Splitter = Callable[[bytes], list[bytes]]


# ----------------------------------------------------------------------------------------------
# requests


def request_maker(*, session_id: str, model: str) -> Callable[..., CompletionRequest]:
    """A ``CompletionRequest`` builder with one test file's defaults.

    The builder takes ``messages`` (default: one user "hi") and any other request field; ``session_id`` and
    ``model`` default to the values given here.
    """

    def make(messages: list[Message] | None = None, **fields: Any) -> CompletionRequest:
        fields.setdefault("session_id", session_id)
        fields.setdefault("model", model)
        if messages is None:
            messages = [Message(role="user", content="hi")]
        return CompletionRequest(messages=messages, **fields)

    return make


# ----------------------------------------------------------------------------------------------
# splitting a body into the pieces a network might deliver


def whole(data: bytes) -> list[bytes]:
    """The body in one piece."""
    return [data]


def byte_by_byte(data: bytes) -> list[bytes]:
    """The body one byte at a time: every boundary (inside UTF-8 characters, frames, lines) is crossed."""
    return [data[i : i + 1] for i in range(len(data))]


def cut_at_random(data: bytes, rng: random.Random, cuts: int) -> list[bytes]:
    """The body cut at ``cuts`` distinct points drawn from ``rng`` (fewer when the body is shorter)."""
    points = sorted(rng.sample(range(1, len(data)), min(max(len(data) - 1, 0), cuts)))
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def random_splitter(cuts: int, seed: int | None = None) -> Splitter:
    """A splitter cutting at ``cuts`` random points, seeded by ``seed`` (by the body's length when None).

    Either way the cuts are fixed, so a failure reproduces.
    """

    def split(data: bytes) -> list[bytes]:
        return cut_at_random(data, random.Random(len(data) if seed is None else seed), cuts)

    return split


def named_splitters(*seeds: int, cuts: int = 40) -> dict[str, Splitter]:
    """``whole``, ``bytes`` and one ``random<seed>`` splitter per seed, by name (for ``parametrize`` ids)."""
    splitters: dict[str, Splitter] = {"whole": whole, "bytes": byte_by_byte}
    for seed in seeds:
        splitters[f"random{seed}"] = random_splitter(cuts, seed)
    return splitters


def piece_sets(body: bytes, *, seed: int, max_cuts: int, variants: int = 3) -> dict[str, list[bytes]]:
    """The body whole, one byte at a time, and cut at random ``variants`` times.

    The random cuttings (``random0``, ``random1``, …) come from one generator seeded with ``seed``; each has
    between 1 and ``max_cuts`` cuts.
    """
    sets = {"whole": whole(body), "bytes": byte_by_byte(body)}
    rng = random.Random(seed)
    for n in range(variants):
        sets[f"random{n}"] = cut_at_random(body, rng, rng.randint(1, max_cuts))
    return sets


# ----------------------------------------------------------------------------------------------
# decoding


def feed_all(decoder: ResponseDecoder, pieces: Iterable[bytes]) -> list[StreamEvent]:
    """Every event ``decoder`` emits for ``pieces`` fed in order, then for the end of the body."""
    events: list[StreamEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    return events


def checked_decoding(
    dialect: HttpDialect, deployment: Deployment, *, session_id: str
) -> Callable[..., tuple[list[StreamEvent], ResponseDecoder]]:
    """A ``decode(request, data, split=whole)`` for one dialect and deployment.

    It feeds ``data`` in ``split`` pieces to a fresh decoder, checks the events with :func:`check_sequence`
    (``session_id`` is the id the test file's requests carry) and returns them with the decoder, whose
    ``provider_data`` the test may then read.
    """

    def decode(
        request: CompletionRequest, data: bytes, split: Splitter = whole
    ) -> tuple[list[StreamEvent], ResponseDecoder]:
        decoder = dialect.response_decoder(request, deployment)
        events = feed_all(decoder, split(data))
        check_sequence(events, session_id)
        return events, decoder

    return decode


def decode_every_way(
    decode: Callable[[list[bytes]], list[StreamEvent]], body: bytes, *, seed: int, max_cuts: int
) -> list[StreamEvent]:
    """Decode ``body`` in each of its :func:`piece_sets`; every cutting must give the same events.

    ``decode`` turns a list of pieces into events (a fresh decoder each call). Returns the events.
    """
    results = [decode(pieces) for pieces in piece_sets(body, seed=seed, max_cuts=max_cuts).values()]
    assert all(events == results[0] for events in results)
    return results[0]


def check_sequence(events: list[StreamEvent], session_id: str) -> None:
    """The contract every decoder output obeys (``gtl_nb.providers.base``).

    Exactly one terminal event (``done`` or ``error``), last; every event carries the request's session id;
    a ``done`` is preceded by exactly one ``usage``, with ``cost`` None (the engine prices it); an ``error``
    comes with no ``usage``.
    """
    assert events, "a decoder must end with done or error"
    assert isinstance(events[-1], (Done, Error))
    assert not any(isinstance(e, (Done, Error)) for e in events[:-1])
    assert all(e.session_id == session_id for e in events)
    usages = [e for e in events if isinstance(e, Usage)]
    if isinstance(events[-1], Done):
        assert len(usages) == 1 and events[-2] is usages[0]
        assert usages[0].cost is None
    else:
        assert usages == []


# ----------------------------------------------------------------------------------------------
# summarising events in the shape of .expected.json


def texts(events: Iterable[StreamEvent], kind: type[Token] | type[Reasoning]) -> list[str]:
    """The text of each ``Token`` (or ``Reasoning``) event, in order."""
    return [e.text for e in events if isinstance(e, kind)]


def tool_calls(events: Iterable[StreamEvent]) -> list[dict[str, Any]]:
    """The tool calls as ``.expected.json`` lists them: ``id``, ``name``, ``arguments`` (parsed)."""
    return [
        {"id": e.function.id, "name": e.function.name, "arguments": json.loads(e.function.arguments)}
        for e in events
        if isinstance(e, ToolCallEvent)
    ]


UsageCounts = tuple[int | None, int | None, int | None, int | None]


def usage_counts(usage: Usage) -> UsageCounts:
    """``(tokens_in, tokens_out, cached_tokens_in, reasoning_tokens_out)``."""
    return (usage.tokens_in, usage.tokens_out, usage.cached_tokens_in, usage.reasoning_tokens_out)


def summarize(events: list[StreamEvent]) -> dict[str, Any]:
    """What a decoder extracted, keyed like ``.expected.json``.

    ``text`` and ``reasoning_text`` joined, ``tool_calls`` as :func:`tool_calls`, ``usage`` as
    :func:`usage_counts` of the first ``usage`` event (None without one), ``terminal`` the last event.
    """
    usage = next((e for e in events if isinstance(e, Usage)), None)
    return {
        "text": "".join(texts(events, Token)),
        "reasoning_text": "".join(texts(events, Reasoning)),
        "tool_calls": tool_calls(events),
        "usage": None if usage is None else usage_counts(usage),
        "terminal": events[-1],
    }


# ----------------------------------------------------------------------------------------------
# fixtures and what they expect


def fixture_dir(provider: str) -> Path:
    """``tests/fixtures/wire/<provider>``."""
    return FIXTURES_ROOT / provider


def expected(folder: Path, name: str) -> dict[str, Any]:
    """``<folder>/<name>.expected.json``: what a correct adapter extracts from that recording."""
    return json.loads((folder / f"{name}.expected.json").read_text())


def recorded_request(folder: Path, name: str) -> dict[str, Any]:
    """``<folder>/<name>.request.json``: the request body that was sent for that recording."""
    return json.loads((folder / f"{name}.request.json").read_text())


def expected_usage(exp: dict[str, Any]) -> UsageCounts:
    """The expected ``usage`` object as :func:`usage_counts` (all unknown when the recording had none)."""
    usage = exp["usage"]
    if usage is None:
        return (None, None, None, None)
    return (
        usage["input_tokens"],
        usage["output_tokens"],
        usage["cached_input_tokens"],
        usage["reasoning_tokens"],
    )


def assert_same_tool_calls(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Tool calls against ``.expected.json``'s: the same names and arguments in order; the recorded id where
    the provider sent one, else a made-up one; and no two calls sharing an id."""
    assert [(c["name"], c["arguments"]) for c in got] == [(c["name"], c["arguments"]) for c in want]
    for call, wanted in zip(got, want, strict=True):
        if wanted["id"] is not None:
            assert call["id"] == wanted["id"]
        else:
            assert call["id"]  # the provider sent none: the decoder makes one
    assert len({c["id"] for c in got}) == len(got)


def assert_matches_expected(
    events: list[StreamEvent],
    exp: dict[str, Any],
    *,
    finish_reason: str,
    provider: str | None = None,
    reasoning: bool = True,
) -> dict[str, Any]:
    """A decoded answer against its ``.expected.json``; returns the :func:`summarize` summary.

    ``finish_reason`` is the GTL value the recording's raw finish reason maps to (each test file reads that
    mapping from wire-formats.md itself); ``provider``, when given, is the deployment name ``done`` must
    carry; ``reasoning`` says whether the request asked for reasoning (if not, none may be shown). Check
    the sequence first (:func:`check_sequence`).
    """
    got = summarize(events)
    assert got["text"] == exp["text"]
    assert got["reasoning_text"] == (exp.get("reasoning_text", "") if reasoning else "")
    assert_same_tool_calls(got["tool_calls"], exp["tool_calls"])
    assert got["usage"] == expected_usage(exp)
    done = got["terminal"]
    assert isinstance(done, Done)
    assert done.finish_reason == finish_reason
    if provider is not None:
        assert done.provider == provider
    return got


def assert_error_as_expected(error: StreamEvent, exp: dict[str, Any]) -> None:
    """An ``error`` event against the ``error`` object of an ``.expected.json``: the suggested GTL code, the
    retryability and a piece of the message."""
    assert isinstance(error, Error)
    assert error.code == exp["suggested_gtl_code"]
    assert error.retryable is exp["retryable"]
    assert exp["message_contains"] in error.message
