"""Offline simulators that speak each provider's real wire format on loopback.

    >>> from gtl_nb import sim
    >>> with sim.running("openai", seed=1) as base_url:      # http://127.0.0.1:PORT/v1
    ...     ...                                               # point the official SDK at base_url

``serve(provider, faults=None, *, seed=0, pace=0.0, api_key=None, ...)`` returns a :class:`Simulator`
(``.base_url``, ``.requests``, ``.set_faults()``, ``.close()``); :class:`Fault` scripts errors, drops,
stalls and malformed chunks. Each simulator knows its provider's models and answers another name with the
provider's real "model not found" error; ``serve(..., models=[...])`` replaces the list and
``models=ANY_MODEL`` (``"*"``) accepts any name. Usage counts the whole request (:mod:`gtl_nb.sim.tokens`), and
a request over the model's context window gets the provider's real refusal (``context_windows={...}`` sets
windows; Ollama, which trims by default, refuses nothing).
Standard library only, and independent of the rest of gtl_nb: the simulators are witnesses of the documented
formats, not re-uses of the adapters under test.
"""

from __future__ import annotations

from gtl_nb.sim.answers import Answer
from gtl_nb.sim.base import ANY_MODEL, PROVIDERS, ProviderSim, SimContext, SimRequest, SimResponse, UnknownProviderError
from gtl_nb.sim.faults import Fault
from gtl_nb.sim.server import Simulator, running, serve

__all__ = [
    "ANY_MODEL",
    "PROVIDERS",
    "Answer",
    "Fault",
    "ProviderSim",
    "SimContext",
    "SimRequest",
    "SimResponse",
    "Simulator",
    "UnknownProviderError",
    "running",
    "serve",
]
