"""Is the process that wrote a ledger row still running? Process identities for crash recovery.

A pid alone cannot answer that: pids are reused. ``process_identity`` adds what changes when a pid is
handed out again — the start time (and on Linux the boot id) — so a row's writer is judged gone when
its pid runs *as another process*. ``docs/ledger.md`` ("Crash recovery") describes the identities:

* Linux: ``linux:<boot id>:<start time in clock ticks>`` from ``/proc``;
* Windows: ``win:<process creation FILETIME>``;
* other POSIX systems: ``ps:<start time>`` as ``ps -o lstart`` prints it.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["own_identity", "process_alive", "process_identity"]


def process_identity(pid: int) -> str | None:
    """An identity of the running process ``pid`` that changes when the pid is reused.

    Linux: ``linux:<boot id>:<start time in clock ticks>`` from ``/proc``; Windows: the creation
    FILETIME; other POSIX systems: the start time ``ps -o lstart`` prints. None when the process
    is not running or its identity cannot be read.
    """
    return _probe(pid)[1]


def process_alive(pid: int, identity: str | None) -> bool:
    """Whether ``pid`` still runs *as the process that recorded* ``identity``.

    A pid that runs with a different identity was reused: the recorded process is gone. When
    either identity is unknown, a running pid counts as alive (never interrupt a live request).
    """
    alive, current = _probe(pid)
    if not alive:
        return False
    return identity is None or current is None or identity == current


_own_identity: dict[int, str | None] = {}


def own_identity() -> tuple[int, str | None]:
    """``(pid, identity)`` of this process, the identity read once per pid."""
    pid = os.getpid()  # re-read every time: a forked child has a new pid and identity
    if pid not in _own_identity:
        _own_identity[pid] = process_identity(pid)
    return pid, _own_identity[pid]


# ----------------------------------------------------------------------------------------------
# the platform probes


def _probe(pid: int) -> tuple[bool, str | None]:
    """``(running, identity or None)`` for ``pid``; zombies count as not running."""
    if pid <= 0:
        return False, None
    if sys.platform.startswith("linux"):
        return _probe_linux(pid)
    if sys.platform == "win32":
        return _probe_windows(pid)
    return _probe_ps(pid)


_boot_id: str | None = None


def _linux_boot_id() -> str:
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _boot_id = f.read().strip()
        except OSError:
            _boot_id = "?"
    return _boot_id


def _probe_linux(pid: int) -> tuple[bool, str | None]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False, None
    except OSError:  # /proc mounted with hidepid: fall back to a signal probe
        return _signal_alive(pid), None
    # The command name (field 2) is in parentheses and may itself contain ") ": split at the last one.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X", b"x"):
        return False, None
    return True, f"linux:{_linux_boot_id()}:{int(fields[19])}"  # field 22: starttime


def _signal_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # POSIX only: signal 0 checks existence without delivering anything
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _probe_ps(pid: int) -> tuple[bool, str | None]:
    if not _signal_alive(pid):
        return False, None
    try:
        out = subprocess.run(
            ["ps", "-o", "stat=", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return True, None
    if not out:
        return _signal_alive(pid), None
    state, _, started = out.partition(" ")
    if state.startswith("Z"):
        return False, None
    return True, "ps:" + " ".join(started.split())


def _probe_windows(pid: int) -> tuple[bool, str | None]:  # pragma: no cover - exercised on Windows only
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5, None  # ERROR_ACCESS_DENIED: it exists
    try:
        code = wintypes.DWORD()
        if kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) and code.value != 259:  # STILL_ACTIVE
            return False, None
        times = [wintypes.FILETIME() for _ in range(4)]
        if not kernel32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
            return True, None
        created = times[0]
        return True, f"win:{(created.dwHighDateTime << 32) | created.dwLowDateTime}"
    finally:
        kernel32.CloseHandle(handle)
