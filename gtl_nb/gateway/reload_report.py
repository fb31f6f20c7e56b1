"""What a gateway's reloads came to, kept in a small file beside its pid file, so that ``gtl reload``
can say whether the reload it asked for was taken.

SIGHUP carries nothing back: without this, ``gtl reload`` could only say it had sent the signal, and
a refused reload (a mistake in the file) was seen only by whoever read the gateway's standard error.
``gtl serve --pidfile FILE`` keeps ``FILE.reload``, a JSON object rewritten whole (written aside, then
renamed: a reader never sees half of it) at start, on each SIGHUP and after each reload:

* ``pid`` — the gateway's process id (a file left by another gateway is not read as this one's);
* ``signals`` — SIGHUPs received since start; ``covered`` — how many of them the last finished reload
  had received when it began reading the file (so it read every change made before them);
* ``running`` — a reload is underway, or another is queued behind it;
* ``ok``, ``line``, ``at`` — the last finished reload: taken or refused, its one line (what changed,
  or why nothing did), and when (seconds since the epoch); ``null`` before the first;
* ``partial`` — a reload taken but for a part that must be asked for again (a token policy whose new
  revocation list could not be read yet: the previous policy still checks tokens), or for settings
  that apply only at a restart (the line names them: "restart to apply: …").

The report is written only once the gateway handles SIGHUP (before, a SIGHUP would end it): ``gtl
reload`` sends nothing to a gateway whose report is not there yet.

``gtl reload`` reads ``signals`` (n), sends SIGHUP, and waits until ``covered`` > n with nothing
running: the outcome then belongs to a reload that read the file after its signal.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec

from gtl_nb.log import get_logger

__all__ = [
    "REPORT_SUFFIX",
    "ReloadReport",
    "ReloadReporter",
    "read_report",
    "report_path",
    "wait_for_reload",
    "wait_for_report",
]

log = get_logger("gateway.reload")

REPORT_SUFFIX = ".reload"
MAX_REPORT_BYTES = 64 * 1024
"""A report is a few hundred bytes; anything larger at that path is not one (and is not read whole)."""
MAX_LINE_CHARS = 4000
"""A reload's line is cut to this in the report (a refusal quotes the file's mistake, which may be long)."""


_Count = Annotated[int, msgspec.Meta(ge=0)]


class ReloadReport(msgspec.Struct, frozen=True):
    """One state of a gateway's reloads (see the module docstring); its types are checked when read."""

    pid: _Count
    signals: _Count = 0
    covered: _Count = 0
    running: bool = False
    ok: bool | None = None
    line: str | None = None
    at: float | None = None
    partial: bool = False


def report_path(pidfile: str | os.PathLike[str]) -> Path:
    """Where the gateway started with ``--pidfile pidfile`` keeps its reload report."""
    return Path(os.fspath(pidfile) + REPORT_SUFFIX).expanduser()


class ReloadReporter:
    """The gateway's side: counts SIGHUPs and reloads, and rewrites the report at ``path`` (``None``: a
    gateway without a pid file keeps the counts only). Called on the event loop; each write is one
    small file, a few times per reload."""

    def __init__(self, path: Path | None, *, pid: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._state = ReloadReport(pid=os.getpid() if pid is None else pid)
        self._failed = False
        self._write()

    @property
    def state(self) -> ReloadReport:
        return self._state

    def signalled(self) -> None:
        """A SIGHUP arrived: a reload will run (now, or after the one underway)."""
        self._update(signals=self._state.signals + 1, running=True)

    def starting(self) -> int:
        """A reload begins reading the file: returns the signals it covers (for ``finished``)."""
        return self._state.signals

    def finished(self, covers: int, *, ok: bool, line: str, again: bool, partial: bool = False) -> None:
        """The reload that began at ``covers`` signals ended (taken when ``ok``, in part when ``partial``);
        ``again``: another is queued."""
        # text any terminal can print: a refusal may quote a path that is not UTF-8 (a lone surrogate)
        line = line.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(line) > MAX_LINE_CHARS:
            line = line[: MAX_LINE_CHARS - 1] + "…"
        self._update(covered=covers, running=again, ok=ok, line=line, at=self._clock(), partial=partial)

    def remove(self) -> None:
        """Remove the report at exit, unless another gateway has taken the path over since."""
        if self.path is None:
            return
        found = read_report(self.path)
        if found is not None and found.pid == self._state.pid:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _update(self, **changes: Any) -> None:
        self._state = msgspec.structs.replace(self._state, **changes)
        self._write()

    def _write(self) -> None:
        """Write the state aside (a new file of our own: never one a link points to), then rename it over
        the report. Any failure is logged once and swallowed: a reload must never fail for its report."""
        if self.path is None:
            return
        aside: str | None = None
        try:
            data = msgspec.json.encode(self._state) + b"\n"  # (the line was made encodable by ``finished``)
            descriptor, aside = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(aside, self.path)
        except Exception as exc:
            if aside is not None:
                with contextlib.suppress(OSError):
                    os.unlink(aside)
            if not self._failed:  # once: the gateway serves on; only gtl reload's answer is lost
                self._failed = True
                log.warning(
                    "cannot write the reload report %s (%s): gtl reload will not see whether a reload was taken",
                    self.path,
                    getattr(exc, "strerror", None) or exc,
                )


def read_report(path: str | os.PathLike[str]) -> ReloadReport | None:
    """The report at ``path``; ``None`` when there is none, or what is there is not one."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_REPORT_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_REPORT_BYTES:
        return None
    try:
        return msgspec.json.decode(raw, type=ReloadReport)
    except (msgspec.DecodeError, RecursionError):
        return None


def wait_for_report(
    path: str | os.PathLike[str],
    *,
    pid: int,
    timeout: float,
    alive: Callable[[int], bool],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReloadReport | None:
    """Gateway ``pid``'s report once it is there (it handles SIGHUP from then on); ``None`` after
    ``timeout`` seconds or once ``alive(pid)`` says the gateway is gone."""
    return _poll(path, lambda found: found.pid == pid, pid=pid, timeout=timeout, alive=alive, clock=clock, sleep=sleep)


def wait_for_reload(
    path: str | os.PathLike[str],
    *,
    pid: int,
    after: int,
    timeout: float,
    alive: Callable[[int], bool],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReloadReport | None:
    """Wait until gateway ``pid`` has finished a reload that began after its ``after``-th SIGHUP, with
    none queued; that report, or ``None`` after ``timeout`` seconds or once ``alive(pid)`` says the
    gateway is gone."""

    def answered(found: ReloadReport) -> bool:
        return found.pid == pid and found.covered > after and not found.running

    return _poll(path, answered, pid=pid, timeout=timeout, alive=alive, clock=clock, sleep=sleep)


def _poll(
    path: str | os.PathLike[str],
    wanted: Callable[[ReloadReport], bool],
    *,
    pid: int,
    timeout: float,
    alive: Callable[[int], bool],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> ReloadReport | None:
    deadline = clock() + timeout
    pause = 0.01
    while True:
        found = read_report(path)
        if found is not None and wanted(found):
            return found
        if clock() >= deadline or not alive(pid):
            return None
        sleep(pause)
        pause = min(pause * 2, 0.2)  # most reloads end within tens of milliseconds
