"""``gtl_nb.ids.unique_hex``: ids as ``uuid4().hex`` looks, unique in a process and across a fork; the
client's session ids made of them."""

from __future__ import annotations

import os
import re
import sys

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


def test_session_ids_of_one_process_count_up_so_the_ledger_index_takes_them_side_by_side():
    from gtl_nb.client import new_session_id

    ids = [new_session_id() for _ in range(1000)]
    assert all(re.fullmatch(r"sess_[0-9a-f]{32}", value) for value in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # each new row's index entry beside the last
