"""``LingeringQueue``: a busy consumer is not woken per item, an idle one is, and nothing is lost or
left waiting when the queue closes."""

from __future__ import annotations

import random
import threading
import time

from gtl_nb.engine.lingering import LingeringQueue


def consume(queue: LingeringQueue[int], got: list[int]) -> threading.Thread:
    def run() -> None:
        while True:
            batch = queue.take(10)
            if batch:
                got.extend(batch)
            elif queue.closed:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_every_item_arrives_in_order_and_close_never_strands_the_consumer():
    rng = random.Random(7)
    for _ in range(200):  # races between put, the consumer's idle decision and close
        queue: LingeringQueue[int] = LingeringQueue(linger=0.001, idle_after=rng.choice([0.0, 0.002, 0.5]))
        got: list[int] = []
        thread = consume(queue, got)
        count = rng.randint(0, 5)
        for item in range(count):
            queue.put(item)
            time.sleep(rng.choice([0, 0.0003, 0.002]))
        time.sleep(rng.choice([0, 0.0005, 0.003]))
        queue.close()
        thread.join(5)
        assert not thread.is_alive()
        assert got == list(range(count))


def test_a_busy_consumer_is_not_woken_for_each_item():
    queue: LingeringQueue[int] = LingeringQueue(linger=0.002, idle_after=60)
    sets = []
    original = queue._wake.set
    queue._wake.set = lambda: (sets.append(1), original())[1]  # type: ignore[method-assign]
    got: list[int] = []
    thread = consume(queue, got)
    for item in range(500):
        queue.put(item)
        if item % 50 == 0:
            time.sleep(0.001)
    queue.close()
    thread.join(5)
    assert got == list(range(500))
    assert len(sets) <= 2  # the first put (the consumer started asleep) and the close


def test_an_idle_consumer_sleeps_until_a_put_wakes_it_and_the_bound_refuses():
    queue: LingeringQueue[int] = LingeringQueue(maxsize=2, linger=0.001, idle_after=0.0)
    assert queue.take(5, timeout=0.01) == []  # nothing came
    assert queue.put(1) and queue.put(2) and not queue.put(3)  # full: refused, nothing queued
    assert len(queue) == 2
    assert queue.take(5) == [1, 2]
    got: list[int] = []
    thread = consume(queue, got)
    time.sleep(0.02)  # asleep now (idle_after 0): only a put can wake it
    queue.put(9)
    queue.close()
    thread.join(5)
    assert got == [9]
