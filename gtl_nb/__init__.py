"""gtl_nb — every AI provider in a Jupyter notebook through one protocol.

``import gtl_nb`` is deliberately light: the public names and the subpackages below resolve
lazily on first attribute access (PEP 562), so importing the package never pulls in asyncio,
httpx, pandas or IPython.

    >>> import gtl_nb
    >>> client = gtl_nb.connect()               # embedded engine, offline default model "echo"
    >>> client.complete(model="echo", messages="hi").text
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY_NAMES: dict[str, str] = {
    "connect": "gtl_nb.client",
    "aconnect": "gtl_nb.client",
    "Client": "gtl_nb.client",
    "Completion": "gtl_nb.client",
    "Comparison": "gtl_nb.client",
    "CompletionRequest": "gtl_nb.protocol",
    "Message": "gtl_nb.protocol",
    "Tool": "gtl_nb.protocol",
    "ToolCall": "gtl_nb.protocol",
    "GTLError": "gtl_nb.protocol",
    "configure_logging": "gtl_nb.log",
    "tool_from_function": "gtl_nb.tools",
    "load_ipython_extension": "gtl_nb.notebook",
    "unload_ipython_extension": "gtl_nb.notebook",
}

_SUBPACKAGES = frozenset(
    {"protocol", "providers", "gap", "engine", "sim", "analysis", "notebook", "client", "cli", "tools"}
)

__all__ = [*sorted(_LAZY_NAMES), "__version__", *sorted(_SUBPACKAGES)]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from gtl_nb import analysis, engine, gap, protocol, providers, sim  # noqa: F401
    from gtl_nb.client import Client, Completion, aconnect, connect  # noqa: F401
    from gtl_nb.log import configure_logging  # noqa: F401
    from gtl_nb.protocol import CompletionRequest, GTLError, Message, Tool, ToolCall  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"gtl_nb.{name}")
        globals()[name] = module
        return module
    target = _LAZY_NAMES.get(name)
    if target is None:
        raise AttributeError(f"module 'gtl_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(target), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
