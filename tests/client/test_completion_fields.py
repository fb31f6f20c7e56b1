"""``Completion.from_transcript`` makes its answer without the frozen dataclass's ``__init__``
(``Completion._of_fields``): the answer must be the one ``__init__`` makes from the same fields."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle

import pytest

import gtl_nb
from gtl_nb.completion import Completion
from gtl_nb.protocol.messages import Done, Error, Reasoning, Status, Token, ToolCall, ToolCallEvent, Usage
from gtl_nb.protocol.session import Transcript

FIELDS = [field.name for field in dataclasses.fields(Completion)]


def _transcript(*events: object) -> Transcript:
    transcript = Transcript(session_id="s1")
    for event in events:
        transcript.add(event)  # type: ignore[arg-type]
    return transcript


def _answered() -> Transcript:
    return _transcript(
        Status(session_id="s1", state="queued"),
        Token(session_id="s1", text="lost "),
        Status(session_id="s1", state="failover", from_provider="a", to_provider="b", reason="503"),
        Reasoning(session_id="s1", text="thinking"),
        Token(session_id="s1", text="kept"),
        ToolCallEvent(session_id="s1", function=ToolCall(id="c1", name="f", arguments="{}")),
        Usage(session_id="s1", tokens_in=3, tokens_out=2, cost=0.5),
        Done(
            session_id="s1",
            provider="b",
            model="m",
            ttft_ms=1.5,
            latency_ms=2.5,
            provider_data={"k": [1]},
            stop_sequence="END",
        ),
    )


def _failed() -> Transcript:
    return _transcript(
        Token(session_id="s1", text="partial"),
        Error(session_id="s1", code="PROVIDER_UNAVAILABLE", message="gone", retryable=True, provider="a"),
    )


def _as_init_makes_it(completion: Completion) -> Completion:
    return Completion(**{name: getattr(completion, name) for name in FIELDS})


@pytest.mark.parametrize("made", [_answered, _failed], ids=["answered", "failed"])
def test_a_completion_from_a_transcript_is_what_its_init_makes(made):
    completion = Completion.from_transcript(made(), "openai")
    assert list(vars(completion)) == FIELDS  # every field, in the order ``__init__`` sets them
    again = _as_init_makes_it(completion)
    assert completion == again
    assert repr(completion) == repr(again)
    assert pickle.loads(pickle.dumps(completion)) == completion
    assert copy.deepcopy(completion) == completion
    assert dataclasses.replace(completion, text="other").text == "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        completion.text = "changed"  # type: ignore[misc]


def test_the_fields_read_what_the_transcript_holds():
    answered = Completion.from_transcript(_answered(), "openai")
    assert (answered.text, answered.reasoning, answered.provider, answered.model) == ("kept", "thinking", "b", "m")
    assert answered.failovers == ["a -> b: 503"] and answered.steps == [] and answered.error is None
    assert answered.tool_calls == [ToolCall(id="c1", name="f", arguments="{}")]
    assert (answered.ttft_ms, answered.latency_ms, answered.stop_sequence) == (1.5, 2.5, "END")
    assert answered.provider_data == {"k": [1]} and answered.usage is not None and answered.usage.cost == 0.5
    assert answered.provider_type == "openai" and answered.created_at is not None
    failed = Completion.from_transcript(_failed())
    assert (failed.text, failed.provider, failed.finish_reason, failed.error.code) == (  # type: ignore[union-attr]
        "partial",
        "a",
        None,
        "PROVIDER_UNAVAILABLE",
    )
    # the lists a completion holds are its own: a transcript's go on changing while a stream is read
    transcript = _answered()
    own = Completion.from_transcript(transcript)
    assert own.events == transcript.events and own.events is not transcript.events
    assert own.tool_calls == transcript.tool_calls and own.tool_calls is not transcript.tool_calls


def test_an_awaited_answer_is_what_its_init_makes():
    async def run() -> Completion:
        client = await gtl_nb.aconnect(environ={})
        try:
            return await client.acomplete("echo", "hello there", max_tokens=4)
        finally:
            await client.aclose()

    completion = asyncio.run(run())
    assert completion.text and list(vars(completion)) == FIELDS
    assert completion == _as_init_makes_it(completion)
