"""A completion request the gateway refuses at a session cap still leaves its one ledger row and audit record.

Every request ends in exactly one ``done`` or ``error`` and one ledger row (docs/ledger.md), also one
the gateway does not run: a scope refusal goes through ``run_session(..., refused=...)``, a budget
refusal through the engine's reservation. A request beyond ``max_sessions_per_connection`` or
``max_sessions_per_principal`` is refused before any session starts — it must not count against the
cap it exceeded — so ``recorded_refusal`` writes its row here, outside every count: status
``error``, the refusal's code, the caller's principal and the model it asked for, no provider
called and no budget used; the audit log hears of it through the engine's hooks like any other end.

**What it costs.** The engine's own refused path (``Engine.stream_batches(refused=...)``): the row's
start and end and the two hook events, no budget reservation — less than a budget refusal. With the
SQLite ledger both writes are queued without waiting, so the refusal never waits at all; once the
ledger's writer holds its 10,000 queued operations the start waits for room (its back-pressure,
docs/ledger.md); the PostgreSQL ledger queues its writes the same way. A refused request is no
running session: the ``sessions`` query does not list it, and a ``cancel`` query cannot reach the
task that writes its row (the caller's own — a connection's reader). The caller awaits the row in the task
that read the request — an HTTP request's, a gRPC call's, a connection's reader (which reads the
next frame only then) — so a flood of refused requests is paced by those writes and holds no more
than one recording per reader, never a queue of its own. On QUIC, where each request has a stream,
the refused stream's own task writes it and the stream stays open until its error goes out: QUIC's
limit on the streams a connection holds open bounds them.
"""

from __future__ import annotations

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError
from gtl_nb.protocol.messages import CompletionRequest, Error

__all__ = ["recorded_refusal"]

log = get_logger("gateway")


async def recorded_refusal(
    engine: Engine, request: CompletionRequest, context: RequestContext, error: GTLError
) -> Error:
    """Record ``request``, refused with ``error`` before it ran, as its one ledger row and audit record
    (module docstring); return the ``error`` event to send its client — the refusal, unchanged.

    A cancel while the row is written (the connection or call going away) ends the row as
    ``cancelled``, as for any request whose caller left before its end, and is re-raised."""
    refusal = error.to_event(request.session_id)
    batches = engine.stream_batches(request, context=context, refused=error)
    try:
        async for _batch in batches:  # ``queued``, then the refusal: only the row matters here
            pass
    except Exception:  # a bug in the engine must not keep the refusal from its client
        log.exception("session %s: recording its refusal failed", request.session_id)
    finally:
        await batches.aclose()
    return refusal
