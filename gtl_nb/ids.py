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

Those random bits, and the engine's trace ids, come from ``random_hex``: the operating system's
randomness read 4 KiB at a time and handed out 64 bits per call. ``os.urandom`` per id was one
``getrandom`` system call, and CPython lets go of the interpreter lock around it: with the ledger's
writer or the engine's loop thread busy, taking it back cost 10-20 us of wall time (cProfile of the
embedded client: 23 us a request for two draws, against 0.5 us for one draw on an idle thread).
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Iterator

__all__ = ["random_hex", "time_ordered_hex", "unique_hex"]

_prefix = secrets.token_hex(8)
_counter = itertools.count()

_POOL_BYTES = 4096  # one system call per 512 draws
_pool: Iterator[str] = iter(())


def _refill() -> Iterator[str]:
    digits = os.urandom(_POOL_BYTES).hex()
    return iter([digits[start : start + 16] for start in range(0, len(digits), 16)])


def _reseed() -> None:
    global _prefix, _counter, _pool
    # A forked child must not repeat its parent's ids, nor draw the random bits its parent will draw.
    _prefix = secrets.token_hex(8)
    _counter = itertools.count()
    _pool = iter(())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def unique_hex() -> str:
    """32 lower-case hex digits, unique among the ids of every process (like ``uuid.uuid4().hex``)."""
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def random_hex(words: int = 1) -> str:
    """``16 * words`` lower-case hex digits of the operating system's randomness (``words`` draws of 64
    bits), as unguessable as ``secrets.token_hex(8 * words)``, without a system call per draw.

    Safe from any thread: a draw is one ``next`` on a list iterator, which the interpreter lock makes
    atomic, so two threads never get the same bits; two threads refilling at once each read fresh
    bits (one pool's remainder is dropped, never reused). A forked child starts with an empty pool.
    """
    global _pool
    drawn = []
    for _ in range(words):
        try:
            drawn.append(next(_pool))
        except StopIteration:
            _pool = _refill()
            drawn.append(next(_pool))
    return drawn[0] if words == 1 else "".join(drawn)


def time_ordered_hex() -> str:
    """28 lower-case hex digits: the wall clock's milliseconds (12), then 64 random bits (16) —
    unguessable, unique, and sorted by time, so an index takes each new id beside the last (random
    ids land anywhere in it: one page rewritten per row)."""
    return f"{time.time_ns() // 1_000_000:012x}{random_hex()}"
