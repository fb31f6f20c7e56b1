"""How many client connections each TCP listener may hold at once: fixed shares of the process's file
descriptors (``[gateway] max_connections``).

Every accepted TCP connection is a file descriptor, and a process has ``RLIMIT_NOFILE`` of them. Once
they are gone *every* listener stops accepting, and the ledger, the audit log and the provider calls
cannot open a file or a socket either. Per-address caps do not prevent it: an attacker has many
addresses (127.0.0.2…, an IPv6 /64), and gRPC shows the gateway calls, not connections, so an HTTP/2
connection that never makes a call was counted nowhere.

So each TCP listener (HTTP with its WebSockets, gRPC) gets a fixed share of a connection budget, and a
connection beyond its listener's share is closed as soon as it is accepted. The budget is
``max_connections`` when configured, else half of what the descriptor limit leaves after
``FIXED_RESERVE``: the other half is for the provider connections — a client connection's running
request holds about one — and the stores. Shares rather than one pool shared by the listeners: a flood
on one listener then fills only its share, and the other listeners (and the reserve) keep theirs.

QUIC needs no share: all of its connections share one UDP socket (one descriptor). Its per-address cap
bounds what one address holds in memory.
"""

from __future__ import annotations

import resource

from gtl_nb.log import get_logger

__all__ = ["FIXED_RESERVE", "TCP_TRANSPORTS", "connection_budget", "descriptor_limit", "listener_share"]

log = get_logger("gateway.connection_budget")

FIXED_RESERVE = 64
"""Descriptors kept out of the budget whatever it is: the listening sockets, the event loop's and gRPC's
own (epoll, eventfds, pipes), the ledger's and audit log's files or database connections, Redis, logs."""
TCP_TRANSPORTS = ("http", "grpc")
"""The listeners that hold one descriptor per client connection."""


def descriptor_limit() -> int | None:
    """The process's soft ``RLIMIT_NOFILE``; ``None`` when there is none (unlimited, or no such limit)."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def connection_budget(configured: int, limit: int | None) -> int:
    """Client connections all TCP listeners together may hold; ``0`` for no bound (no descriptor limit
    and none configured).

    ``configured`` (``max_connections``, ``0`` when not set) is used as given, but never beyond what the
    descriptor ``limit`` leaves after ``FIXED_RESERVE``: a configuration cannot bring the exhaustion back."""
    if limit is None:
        return configured
    usable = max(1, limit - FIXED_RESERVE)
    if configured:
        return min(configured, usable)
    return max(1, usable // 2)


def listener_share(configured: int, listeners: int, limit: int | None = None) -> int:
    """Connections one of ``listeners`` TCP listeners may hold (``0``: no bound), from the process's
    descriptor limit unless ``limit`` is given."""
    budget = connection_budget(configured, descriptor_limit() if limit is None else limit)
    if not budget:
        return 0
    return max(1, budget // max(1, listeners))
