"""How a client words a gateway it could not reach because nothing accepted the connection.

Each transport's library says it its own way — ``[Errno 111] Connection refused`` (asyncio),
``All connection attempts failed`` (httpx over anyio, the refusal only in its chain of causes), a
paragraph of gRPC channel state — and none says what to do. A refusal means no program listens at
that address: most often the gateway is not running, or runs on another port.
"""

from __future__ import annotations

__all__ = ["NOTHING_LISTENS", "refused", "unreached_reason"]

NOTHING_LISTENS = "nothing accepts connections there (is it running? `gtl serve` starts one)"
"""What an error says for a connection that was refused."""

_REFUSED_WORDS = ("connection refused", "errno 111")  # gRPC's and some OSErrors' text: no exception class
_CAUSES_READ = 8  # a chain of causes is short; a cycle must not hold the loop


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or one of its causes) is a refused connection."""
    seen: BaseException | None = exc
    for _ in range(_CAUSES_READ):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError) or any(word in str(seen).lower() for word in _REFUSED_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unreached_reason(exc: BaseException) -> str:
    """Why a gateway could not be reached, for an error message: ``NOTHING_LISTENS`` for a refused
    connection, else the exception's own words."""
    return NOTHING_LISTENS if refused(exc) else (str(exc) or type(exc).__name__)
