"""Who a request is for: the request context carried through budgets, ledger rows, hooks and (next)
the audit log.

``principal`` is the ``user=`` given to ``connect()`` when embedded (the operating-system user by
default) and the token's ``sub`` behind the gateway; it is never read from request fields or
``metadata``, which the caller controls.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestContext"]


@dataclass(frozen=True)
class RequestContext:
    """The identity and tracing facts of one request (all optional but ``principal``)."""

    principal: str = ""
    """Who is accounted: budgets are per principal; the ledger's ``user`` column."""
    tenant: str | None = None
    """The organisation the principal belongs to (the gateway's token claim)."""
    key_id: str | None = None
    """Which credential authenticated the caller (a GhostToken's ``jti`` or key id), never the key."""
    trace_id: str | None = None
    """Joins ledger rows, audit records and logs of one request (W3C trace id when one came in)."""
    peer: str | None = None
    """The caller's network address behind the gateway; ``None`` when embedded."""
