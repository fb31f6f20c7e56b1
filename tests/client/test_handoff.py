"""Events cross from the loop thread to a stream's reader in batches: one per loop turn, and a
terminal event at once."""

from __future__ import annotations

import asyncio
import queue

import pytest

from gtl_nb.handoff import AsyncEventHandoff, Batcher, EventHandoff
from gtl_nb.protocol.messages import Done, Error, Token


def token(text: str) -> Token:
    return Token(session_id="s", text=text)


def test_one_loop_turn_is_one_batch_and_the_end_goes_at_once():
    sent: list[list[object]] = []
    batcher = Batcher(sent.append)

    async def turn() -> None:
        for text in "abc":
            batcher.deliver(token(text))
        assert sent == []  # held until the turn ends
        await asyncio.sleep(0)
        assert [[event.text for event in batch] for batch in sent] == [["a", "b", "c"]]
        batcher.deliver(token("d"))
        batcher.deliver(Done(session_id="s", finish_reason="stop"))  # with what is pending, at once
        assert len(sent) == 2 and isinstance(sent[1][-1], Done) and sent[1][0].text == "d"
        await asyncio.sleep(0)  # the turn's scheduled flush finds nothing left
        assert len(sent) == 2

    asyncio.run(turn())


def test_off_a_loop_each_event_goes_alone():
    sent: list[list[object]] = []
    batcher = Batcher(sent.append)
    batcher.deliver(token("a"))
    batcher.deliver(Error(session_id="s", code="CANCELLED", message="x"))
    assert [len(batch) for batch in sent] == [1, 1]


def test_the_thread_reader_gets_events_in_order_and_times_out_cleanly():
    handoff = EventHandoff()

    async def produce() -> None:
        for text in "xyz":
            handoff.deliver(token(text))
        await asyncio.sleep(0)
        handoff.deliver(Done(session_id="s", finish_reason="stop"))

    asyncio.run(produce())
    got = [handoff.next(timeout=1) for _ in range(4)]
    assert [getattr(event, "text", None) for event in got] == ["x", "y", "z", None] and isinstance(got[-1], Done)
    with pytest.raises(queue.Empty):
        handoff.next(timeout=0.01)


def test_the_async_reader_on_another_loop():
    async def main() -> list[object]:
        handoff = AsyncEventHandoff(asyncio.get_running_loop())

        def produce() -> None:
            async def turn() -> None:
                handoff.deliver(token("p"))
                handoff.deliver(token("q"))
                await asyncio.sleep(0)
                handoff.deliver(Done(session_id="s", finish_reason="stop"))

            asyncio.run(turn())  # another loop, in another thread, as the engine's is

        await asyncio.to_thread(produce)
        return [await handoff.next() for _ in range(3)]

    events = asyncio.run(main())
    assert [getattr(event, "text", None) for event in events] == ["p", "q", None]


def test_close_from_one_thread_while_another_starts_reading_never_strands_the_reader():
    """``close()`` reads the session's end itself when no reader is waiting yet; a reader that starts at
    the same moment must not wait for an event the closer already took."""
    import threading

    import gtl_nb

    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.02}}}, ledger=False, environ={})
    try:
        for _ in range(15):
            stream = client.stream("echo", "a long enough answer to still be running when it is closed")
            events = iter(stream)
            next(events)
            read: list[object] = []
            closer = threading.Thread(target=stream.close, daemon=True)
            reader = threading.Thread(target=lambda: read.extend(events), daemon=True)  # noqa: B023
            closer.start()
            reader.start()
            reader.join(10)
            closer.join(10)
            assert not reader.is_alive() and not closer.is_alive()
            assert stream.finished and stream.transcript.error is not None
            assert stream.transcript.error.code == "CANCELLED"
    finally:
        client.close()
