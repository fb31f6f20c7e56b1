"""``gtl_nb.ids.unique_hex``: ids as ``uuid4().hex`` looks, unique in a process and across a fork; the
client's session ids: sorted by time, with 64 random bits each; ``random_hex``: pooled OS randomness that
no two threads, and no parent and child, ever draw twice."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable

import pytest

from gtl_nb import ids
from gtl_nb.ids import random_hex, unique_hex


def test_ids_are_32_hex_digits_and_never_repeat():
    ids = [unique_hex() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert len(set(ids)) == len(ids)


def in_a_forked_child(make: Callable[[], str]) -> str:
    """What ``make()`` returns in a forked child of this process."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its answer, to the parent, then out without running the parent's pytest
        try:
            os.write(writing, make().encode())
        finally:
            os._exit(0)
    os.close(writing)
    answer = os.read(reading, 4096).decode()
    os.close(reading)
    os.waitpid(pid, 0)
    return answer


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork")
def test_a_forked_child_draws_a_prefix_of_its_own():
    child = in_a_forked_child(unique_hex)
    mine = unique_hex()
    assert len(child) == 32 and child[:16] != mine[:16]


def test_session_ids_sort_by_time_and_cannot_be_foreseen():
    from gtl_nb.client import new_session_id
    from gtl_nb.ids import time_ordered_hex

    before = time.time_ns() // 1_000_000
    ids = [new_session_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert all(re.fullmatch(r"sess_[0-9a-f]{28}", value) for value in ids) and len(set(ids)) == len(ids)
    stamps = [int(value[5:17], 16) for value in ids]
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after  # each index entry beside the last
    tails = [value[17:] for value in ids]
    assert len(set(tails)) == len(tails) and tails != sorted(tails)  # 64 fresh random bits each, not a counter
    assert len(time_ordered_hex()) == 28


def test_random_hex_draws_64_bits_a_word_across_refills():
    drawn = [random_hex() for _ in range(3 * ids._POOL_BYTES // 8 + 5)]  # three refills and then some
    assert all(re.fullmatch(r"[0-9a-f]{16}", value) for value in drawn)
    assert len(set(drawn)) == len(drawn)
    pairs = [random_hex(2) for _ in range(1000)]  # a trace id: 128 bits
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in pairs) and len(set(pairs)) == len(pairs)
    assert len({value[:16] for value in pairs} | {value[16:] for value in pairs}) == 2000
    more = random_hex(3 * ids._POOL_BYTES // 8)  # more words than one pool holds
    assert len(more) == 6 * ids._POOL_BYTES and len({more[i : i + 16] for i in range(0, len(more), 16)}) > 1500


def test_threads_drawing_at_once_never_get_the_same_bits():
    drawn: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(drawn))

    def draw(into: list[str]) -> None:
        start.wait()
        for _ in range(2000):  # each thread crosses several refills, some at the same moment as another
            into.append(random_hex())

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for into in drawn for value in into]
    assert len(every) == 16_000 and len(set(every)) == len(every)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork")
def test_a_forked_child_does_not_draw_its_parents_next_random_bits():
    random_hex()  # the pool is full: a child that kept it would draw what the parent draws next
    child = in_a_forked_child(lambda: "".join(random_hex() for _ in range(4)))
    mine = "".join(random_hex() for _ in range(4))
    assert len(child) == 64 and child != mine
    assert not {child[i : i + 16] for i in range(0, 64, 16)} & {mine[i : i + 16] for i in range(0, 64, 16)}


def test_no_words_is_no_digits_and_fewer_is_refused():
    before = random_hex()
    assert random_hex(0) == ""
    with pytest.raises(ValueError, match="negative"):
        random_hex(-1)
    assert random_hex() != before  # nothing was handed out twice
