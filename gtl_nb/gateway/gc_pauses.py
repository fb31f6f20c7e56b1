"""``gtl_gc_pause_seconds``: how long CPython's garbage collections stop the gateway, per generation.

A full (generation 2) collection walks every live container object, and while it runs nothing else in
the process does: with thousands of open sessions it takes hundreds of milliseconds, and every request
in flight waits that long (docs/benchmarks.md, "Scale"). The time to first token's p99 shows such
stalls without saying why; this histogram says whether the collector is the cause.

``GcPauses`` times each collection with ``gc.callbacks`` (the interpreter calls them at the start and
the end of every collection, on the thread that triggered it, holding the GIL). The callback does two
``perf_counter`` calls and, at the end, one histogram observation (~5 µs a collection). The figure is
a bound from above: between the collection's end and the callback's first statement the interpreter
may let another thread run (the gateway has writer threads), and that slice is counted in.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

__all__ = ["GC_BUCKETS", "GcPauses"]

GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds: a young collection takes well under a millisecond; a full one with ten thousand sessions open
over a second."""


class GcPauses:
    """Observes every garbage collection's duration into ``gtl_gc_pause_seconds{generation}`` of
    ``registry`` from ``start()`` until ``stop()``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "gtl_gc_pause_seconds",
            "Seconds each garbage collection stopped the process, by generation.",
            ("generation",),
            buckets=GC_BUCKETS,
            registry=registry,
        )
        self._children = [self.histogram.labels(str(generation)) for generation in range(3)]
        self._began = 0.0
        self._watching = False

    def start(self) -> None:
        if not self._watching:
            # first in the list: the end of a collection is timed before other callbacks run (at its
            # start, theirs are counted in: a bound from above)
            gc.callbacks.insert(0, self._callback)
            self._watching = True

    def stop(self) -> None:
        if self._watching:
            self._watching = False
            try:
                gc.callbacks.remove(self._callback)
            except ValueError:  # (someone cleared the list)
                pass

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()  # first: any later bytecode may let another thread run
        if phase == "start":
            self._began = now
            return
        generation = info.get("generation", 2)
        if self._began and 0 <= generation <= 2:
            self._children[generation].observe(now - self._began)
        self._began = 0.0
