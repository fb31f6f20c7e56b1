"""The W3C Trace Context ``traceparent`` header: a caller that traces its own work passes its trace
id, and the gateway's ledger row, audit record and span carry it (https://www.w3.org/TR/trace-context/).

Only the exact version-00 form is taken — ``00-<32 hex>-<16 hex>-<2 hex>``, lower case, ids not all
zero; anything else is ignored (the request then gets a trace id of its own), never an error.
"""

from __future__ import annotations

__all__ = ["trace_id_from"]

_HEX = frozenset("0123456789abcdef")
_LENGTH = 55  # 2 + 1 + 32 + 1 + 16 + 1 + 2


def trace_id_from(traceparent: str | None) -> str | None:
    """The trace id of a valid ``traceparent`` header value, else ``None``."""
    if traceparent is None:
        return None
    value = traceparent.strip()
    if len(value) != _LENGTH or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_id, parent_id, flags = value[:2], value[3:35], value[36:52], value[53:]
    if version != "00" or not _HEX.issuperset(version + trace_id + parent_id + flags):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id
