"""What this package adds on top of GTL v1.0 until the protocol says it (temporary, documented).

**The provider list.** The spec has a ``provider_info`` message but no way to ask for it and no end
to a list of them. The gateway therefore sends one ``provider_info`` per deployment right after the
hello exchange (once the client is authenticated), then ``PROVIDERS_END`` — a ``provider_info`` whose
``provider`` is empty. A client is ready, and sends its first request, once it has seen the end; a
peer that does not know the convention sees one nameless provider without models.
"""

from __future__ import annotations

from gtl_nb.protocol.messages import ProviderInfo

__all__ = ["PROVIDERS_END", "is_providers_end"]

PROVIDERS_END = ProviderInfo(provider="")
"""Ends the provider list the gateway sends after the hello exchange."""


def is_providers_end(info: ProviderInfo) -> bool:
    """Whether ``info`` is the end of the provider list rather than a provider."""
    return not info.provider
