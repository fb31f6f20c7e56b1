"""The rows a ledger's crash recovery marked ``interrupted``, handed to whoever keeps records of them.

Recovery lives in the ledger (``Ledger.recover`` for a SQLite file, the lease keeper of
``engine.stores.postgres_ledger``), but the record of a request the gateway keeps — its audit log —
lives in the gateway. A request that was running when its process was killed finishes in the ledger
only, through recovery: ``InterruptedRows`` carries those rows across, so the gateway writes one audit
record per row and the ledger and the audit log agree again.

Each ledger holds one ``InterruptedRows`` (``interrupted``). Recovery ``add``s the rows it marked —
only those, read in the transaction that marked them, so two processes recovering at once never hand
over a row twice — as dicts of ``COLUMNS`` (who, which session, model and deployment, when: never a key
or a token, which no row holds). ``follow(listener)`` hands the listener what is waiting, then every
later batch as it comes, on the thread that recovered it (a PostgreSQL ledger's own loop thread, for
a lease that ran out while the gateway runs). Until someone follows, at most ``KEPT`` rows wait; the
rest are counted (``overflow``) and said once in the log.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gtl_nb.log import get_logger

__all__ = ["COLUMNS", "KEPT", "InterruptedRows", "Listener"]

log = get_logger("engine.ledger")

COLUMNS: tuple[str, ...] = (
    "time",
    "end_time",
    "session_id",
    "user",
    "deployment",
    "provider_type",
    "model",
    "tenant",
    "key_id",
    "trace_id",
    "cache_hit",
)
"""What recovery reads of each row it interrupts (the ledger's column names)."""
KEPT = 10_000
"""Rows waiting for a listener at most; a gateway follows its ledger as it starts, long before this."""

Listener = Callable[[list[dict[str, Any]]], None]


class InterruptedRows:
    """The rows one ledger's recovery marked ``interrupted`` (module docstring); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: deque[dict[str, Any]] = deque()
        self._listeners: list[Listener] = []
        self.overflow = 0
        """Rows recovered while nobody followed and ``KEPT`` already waited: never handed over."""

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Hand ``rows`` (dicts of ``COLUMNS``) to the listeners, or keep them until one follows."""
        batch = [dict(row) for row in rows]
        if not batch:
            return
        with self._lock:
            listeners = list(self._listeners)
            if not listeners:
                room = KEPT - len(self._waiting)
                self._waiting.extend(batch[: max(room, 0)])
                lost = len(batch) - max(room, 0)
                if lost > 0:
                    if self.overflow == 0:
                        log.warning(
                            "%d interrupted request(s) recovered with nobody to record them: more than %d waited",
                            lost,
                            KEPT,
                        )
                    self.overflow += lost
                return
        _hand(listeners, batch)

    def follow(self, listener: Listener) -> Callable[[], None]:
        """Hand ``listener`` the rows waiting now (at once, on this thread), then each later batch; returns
        the call that stops it."""
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
            self._listeners.append(listener)
        if waiting:
            _hand([listener], waiting)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def waiting(self) -> int:
        """How many rows wait for a listener."""
        with self._lock:
            return len(self._waiting)

    def give_up(self, why: str) -> int:
        """Forget the rows waiting for a listener, naming in the log the requests that get no record and
        ``why`` (the gateway's audit log could not open after its ledger recovered them, or closed
        before them): they are ``interrupted`` in the ledger already, so no later start hands them over
        again. How many there were."""
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        if waiting:
            shown = ", ".join(str(row.get("session_id")) for row in waiting[:5])
            more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
            log.error(
                "%d request(s) the ledger marked interrupted have no audit record (%s): %s%s",
                len(waiting),
                why,
                shown,
                more,
            )
        return len(waiting)


def _hand(listeners: list[Listener], batch: list[dict[str, Any]]) -> None:
    for listener in listeners:
        try:
            listener(list(batch))
        except Exception:  # one failing listener must not stop recovery, nor the others
            log.exception("a listener of interrupted requests failed on %d row(s)", len(batch))
