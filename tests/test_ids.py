"""``gtl_nb.ids.unique_hex``: ids as ``uuid4().hex`` looks, unique in a process and across a fork; the
client's session ids: sorted by time, with 64 random bits each."""

from __future__ import annotations

import os
import re
import sys
import time

import pytest

from gtl_nb.ids import unique_hex


def test_ids_are_32_hex_digits_and_never_repeat():
    ids = [unique_hex() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork")
def test_a_forked_child_draws_a_prefix_of_its_own():
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent, then out without running the parent's cleanup
        os.write(writing, unique_hex().encode())
        os._exit(0)
    os.close(writing)
    child = os.read(reading, 64).decode()
    os.close(reading)
    os.waitpid(pid, 0)
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
