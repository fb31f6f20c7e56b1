"""The Jupyter front end: ``%load_ext gtl_nb`` registers ``%%gtl`` / ``%gtl`` and ``%%gap`` / ``%gap``.

The magics module (and IPython, the client, pandas) is imported only when the extension loads, so
``import gtl_nb`` stays light. docs/magics.md is the reference.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]

_LOADED: dict[int, Any] = {}  # id(shell) -> the registered magics instance


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics on ``ipython`` (called by ``%load_ext gtl_nb``); loading twice is harmless."""
    if id(ipython) in _LOADED:
        return
    from gtl_nb.notebook.magics import GTLMagics, reach_the_magic

    magics = GTLMagics(ipython)
    ipython.register_magics(magics)
    if reach_the_magic not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(reach_the_magic)
    _LOADED[id(ipython)] = magics


def unload_ipython_extension(ipython: Any) -> None:
    """Close the notebook's clients and remove the magics (``%unload_ext gtl_nb``)."""
    magics = _LOADED.pop(id(ipython), None)
    if magics is None:
        return
    magics.session.close()
    from gtl_nb.notebook.magics import reach_the_magic

    if reach_the_magic in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(reach_the_magic)
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        for name in ("gtl", "gap"):
            manager.magics[kind].pop(name, None)
    if manager.registry.get(type(magics).__name__) is magics:
        del manager.registry[type(magics).__name__]
