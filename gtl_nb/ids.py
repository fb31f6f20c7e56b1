"""Unique ids for sessions and answers, most without a system call per id.

``uuid.uuid4()`` reads 16 bytes from the operating system for every id (a system call, and a ``UUID``
object): 1.7 % of the gateway's CPU per whole answer in a profile. Here an id is a random prefix, drawn
once per process (again in a forked child), and a counter: unique within the process by the counter,
across processes and restarts by the prefix (64 random bits). Ids are names, not secrets: nothing
grants access by knowing one (a session is cancelled by its own connection or its principal).

A client may name its own sessions, though, so an id another user can foresee could be taken
first; the gateway's ``cancel`` therefore acts on the asker's own sessions only (``gateway.queries``),
and the client's session ids (``time_ordered_hex``) carry 64 fresh random bits each — after the
time, so that an index of them (the ledger's) takes each new id beside the last.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time

__all__ = ["time_ordered_hex", "unique_hex"]

_prefix = secrets.token_hex(8)
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(8)  # a forked child must not repeat its parent's ids
    _counter = itertools.count()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def unique_hex() -> str:
    """32 lower-case hex digits, unique among the ids of every process (like ``uuid.uuid4().hex``)."""
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def time_ordered_hex() -> str:
    """28 lower-case hex digits: the wall clock's milliseconds (12), then 64 random bits (16) —
    unguessable, unique, and sorted by time, so an index takes each new id beside the last (random
    ids land anywhere in it: one page rewritten per row). One ``getrandom`` call an id (~0.5 us)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"
