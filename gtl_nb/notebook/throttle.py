"""Coalesce redraws: at most one draw per ``min_interval`` seconds, and the last change always drawn.

Streams deliver tokens much faster than a notebook frontend can repaint, so a view asks for a
redraw on every event and the ``Throttle`` decides when one actually happens:

* the first request draws at once (the first token shows immediately);
* a request inside the quiet period schedules one trailing draw at its end (a ``threading.Timer``),
  and further requests before then ride on that same draw;
* ``close(final)`` cancels any pending draw and runs ``final`` — so the final state is drawn exactly
  once, after every live draw, whichever thread gets there first.

Draws are serialised by a lock of their own, so a draw always shows the state at the moment it
runs, never an older one overtaking a newer one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    """Rate-limit calls to ``draw`` (see the module docstring). Thread-safe."""

    def __init__(
        self, draw: Callable[[], None], min_interval: float = 0.25, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must be >= 0 seconds")
        self.min_interval = float(min_interval)
        self.draws = 0  # how many draws ran (live ones and the final one)
        self._draw = draw
        self._clock = clock
        self._lock = threading.Lock()  # guards the schedule below
        self._draw_lock = threading.Lock()  # serialises the draws themselves
        self._last: float | None = None
        self._timer: threading.Timer | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def request(self) -> None:
        """Something changed: draw now, or once the quiet period ends."""
        with self._lock:
            if self._closed or self._timer is not None:
                return  # closed, or a trailing draw is already due and will show this change
            now = self._clock()
            wait = 0.0 if self._last is None else self._last + self.min_interval - now
            if wait > 0:
                self._timer = threading.Timer(wait, self._fire)
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = now
        self._run()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed:
                return
            self._last = self._clock()
        self._run()

    def _run(self) -> None:
        with self._draw_lock:
            if self._closed:  # the final draw happened (or is about to): a live draw must not follow it
                return
            self._draw()
            self.draws += 1

    def close(self, final: Callable[[], None] | None = None) -> None:
        """Cancel any pending draw and run ``final`` (default: one last ``draw``). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        with self._draw_lock:
            (final or self._draw)()
            self.draws += 1
