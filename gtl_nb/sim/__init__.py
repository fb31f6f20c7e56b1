"""Offline simulators that speak each provider's real wire format on loopback.

    >>> from gtl_nb import sim
    >>> with sim.running("openai", seed=1) as base_url:      # http://127.0.0.1:PORT/v1
    ...     ...                                               # point the official SDK at base_url

``serve(provider, faults=None, *, seed=0, pace=0.0, api_key=None, ...)`` returns a :class:`Simulator`
(``.base_url``, ``.requests``, ``.set_faults()``, ``.close()``); :class:`Fault` scripts errors, drops,
stalls and malformed chunks. Standard library only, and independent of the rest of gtl_nb: the simulators
are witnesses of the documented formats, not re-uses of the adapters under test.
"""

from __future__ import annotations

from gtl_nb.sim.answers import Answer
from gtl_nb.sim.base import PROVIDERS, ProviderSim, SimContext, SimRequest, SimResponse, UnknownProviderError
from gtl_nb.sim.faults import Fault
from gtl_nb.sim.server import Simulator, running, serve

__all__ = [
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
