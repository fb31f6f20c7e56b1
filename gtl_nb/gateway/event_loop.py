"""Which event loop the gateway runs on (``[gateway] event_loop``): uvloop when it is installed.

uvloop (libuv under asyncio's API) runs the same listeners, the same engine and the same upstream
client with less of the loop's own Python per request: its call scheduling, socket reads and writes
and timers are compiled. The gateway's profile at concurrency 1 spent about a third of its CPU in
asyncio's loop, selector and transports (docs/benchmarks.md, "The event loop"). It is an optional
dependency (the ``gateway`` extra installs it where it builds: not on Windows):

* ``"auto"`` (default) — uvloop when it can be imported, else asyncio's own loop;
* ``"uvloop"`` — uvloop, or a ``ConfigurationError`` saying how to install it;
* ``"asyncio"`` — asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["CHOICES", "loop_name", "run"]

CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def _uvloop(required: bool) -> Any:
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        if required:
            raise ConfigurationError(
                '[gateway] event_loop = "uvloop" needs uvloop: pip install uvloop (or the gateway extra)'
            ) from None
        return None


def loop_name(choice: str = "auto") -> str:
    """``"uvloop <version>"`` or ``"asyncio"``: what ``run(…, choice)`` will run on."""
    if choice not in CHOICES:
        raise ConfigurationError(f"[gateway] event_loop must be one of {', '.join(CHOICES)}, got {choice!r}")
    module = None if choice == "asyncio" else _uvloop(required=choice == "uvloop")
    return "asyncio" if module is None else f"uvloop {module.__version__}"


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (module docstring)."""
    if choice not in CHOICES:
        raise ConfigurationError(f"[gateway] event_loop must be one of {', '.join(CHOICES)}, got {choice!r}")
    module = None if choice == "asyncio" else _uvloop(required=choice == "uvloop")
    if module is None:
        return asyncio.run(main)
    if hasattr(asyncio, "Runner"):  # Python >= 3.11
        with asyncio.Runner(loop_factory=module.new_event_loop) as runner:
            return runner.run(main)
    with _Runner310(module) as runner:
        return runner.run(main)


class _Runner310:
    """Python 3.10 has no ``asyncio.Runner``: a fresh uvloop loop set as current, closed at the end."""

    def __init__(self, module: Any) -> None:
        self._loop = module.new_event_loop()

    def __enter__(self) -> _Runner310:
        asyncio.set_event_loop(self._loop)
        return self

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(main)

    def __exit__(self, *exc: object) -> None:
        try:
            pending = [task for task in asyncio.all_tasks(self._loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            self._loop.close()
