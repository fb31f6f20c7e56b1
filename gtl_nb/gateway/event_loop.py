"""Which event loop the gateway runs on (``[gateway] event_loop``): uvloop when it is installed.

uvloop (libuv under asyncio's API) runs the same listeners, the same engine and the same upstream
client with less of the loop's own Python per request: its call scheduling, socket reads and writes
and timers are compiled (docs/benchmarks.md, "The event loop"). The choice is the embedded engine's
(``engine.loop.loop_factory``, where ``GTL_NB_EVENT_LOOP`` sets it):

* ``"auto"`` (default) — uvloop when it can be imported, else asyncio's own loop;
* ``"uvloop"`` — uvloop, or a ``ConfigurationError`` saying how to install it;
* ``"asyncio"`` — asyncio's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gtl_nb.engine.loop import EVENT_LOOPS, loop_factory

__all__ = ["CHOICES", "loop_name", "run"]

CHOICES = EVENT_LOOPS
SETTING = "[gateway] event_loop"
T = TypeVar("T")


def loop_name(choice: str = "auto") -> str:
    """``"uvloop <version>"`` or ``"asyncio"``: what ``run(…, choice)`` will run on."""
    factory = loop_factory(choice, setting=SETTING)
    module = getattr(factory, "__module__", "") or ""
    if module.startswith("uvloop"):
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (module docstring)."""
    factory = loop_factory(choice, setting=SETTING)
    if hasattr(asyncio, "Runner"):  # Python >= 3.11
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    return _run_310(main, factory)


def _run_310(main: Coroutine[Any, Any, T], factory: Callable[[], asyncio.AbstractEventLoop]) -> T:
    """Python 3.10 has no ``asyncio.Runner``: a fresh loop set as current, cleaned up and closed at the end."""
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
