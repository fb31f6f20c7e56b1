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
writer or the engine's loop thread busy, taking it back is a hand-over between threads (cProfile of
the embedded client: 23 us a request for two draws, against 0.5 us for one draw on an idle thread;
``python -m bench.gil_handover`` times a draw beside a busy thread).
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time

__all__ = ["random_hex", "time_ordered_hex", "unique_hex"]

_POOL_BYTES = 4096  # one system call per 512 draws of 64 bits

_prefix: str  # 64 random bits of this process, before ``unique_hex``'s counter
_counter: itertools.count[int]
_lock: threading.Lock  # held for ``unique_hex``'s step of the counter
_draws: list[str]  # 16 hex digits (64 bits) of OS randomness each, not yet handed out


def _reseed() -> None:
    """This process's id state, fresh: at import, and in a forked child, which must not repeat its
    parent's ids nor draw the random bits its parent will draw (nor inherit a lock held mid-draw)."""
    global _prefix, _counter, _lock, _draws
    _prefix = secrets.token_hex(8)
    _counter = itertools.count()
    _lock = threading.Lock()
    _draws = []


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def unique_hex() -> str:
    """32 lower-case hex digits, unique among the ids of every process (like ``uuid.uuid4().hex``)."""
    with _lock:
        number = next(_counter)
    return f"{_prefix}{number & 0xFFFFFFFFFFFFFFFF:016x}"


def random_hex(words: int = 1) -> str:
    """``16 * words`` lower-case hex digits of the operating system's randomness (``words`` draws of 64
    bits), as unguessable as ``secrets.token_hex(8 * words)``, without a system call per draw.

    Safe from any thread, and a forked child starts with an empty pool (it never draws what its
    parent will). A refill (~15 us) falls on the thread whose draw found the pool empty, once per 512
    draws. What this does not cover: a process copied whole (a virtual machine's snapshot restored
    twice, CRIU) hands out the same remaining draws in each copy, where ``os.urandom`` per id would
    not; and the pool sits in the process's memory (ids are names, never secrets: see above).
    """
    if words == 1:
        return _draw()
    if words < 0:
        raise ValueError(f"random_hex: words must not be negative, not {words}")
    return "".join([_draw() for _ in range(words)])


def _draw() -> str:
    """One draw of 64 bits. ``list.pop`` hands each draw to exactly one caller, whatever the threads
    (it is atomic, with or without the interpreter lock), so no lock is taken per id."""
    try:
        return _draws.pop()
    except IndexError:  # (empty: once in 512 draws)
        return _refill()


def _refill() -> str:
    """A draw, the pool filled again from one system call. Two threads that find it empty at once
    both refill: each adds fresh bits, none are handed out twice."""
    digits = os.urandom(_POOL_BYTES).hex()
    fresh = [digits[start : start + 16] for start in range(16, len(digits), 16)]
    _draws.extend(fresh)
    return digits[:16]


def time_ordered_hex() -> str:
    """28 lower-case hex digits: the wall clock's milliseconds (12), then 64 random bits (16) —
    unguessable, unique, and sorted by time, so an index takes each new id beside the last (random
    ids land anywhere in it: one page rewritten per row)."""
    return f"{time.time_ns() // 1_000_000:012x}{_draw()}"
