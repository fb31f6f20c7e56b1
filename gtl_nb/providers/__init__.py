"""Providers as sans-I/O dialects and local generators, behind one registry.

A dialect turns a ``CompletionRequest`` into an ``HttpRequest`` description and decodes the
provider's response bytes into GTL events; the engine owns every socket and clock. See
``gtl_nb.providers.base`` for the contract and ``gtl_nb.providers.registry`` for how types are found.
"""

from gtl_nb.providers.base import Deployment, HttpDialect, HttpRequest, LocalProvider, ResponseDecoder
from gtl_nb.providers.registry import get_provider, provider_types, register

__all__ = [
    "Deployment",
    "HttpDialect",
    "HttpRequest",
    "LocalProvider",
    "ResponseDecoder",
    "get_provider",
    "provider_types",
    "register",
]
