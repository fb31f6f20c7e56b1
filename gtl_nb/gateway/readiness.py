"""``GET /readyz``: whether this replica should get traffic, and — for an operator only — why not all is well.

* **Everyone** (an orchestrator's probe, a load balancer, anyone who reaches the port) gets the status
  code and the state: ``200`` ``{"status": "ready"}``; ``200`` ``{"status": "degraded", "degraded":
  ["ledger", "audit"]}`` (the parts, by name) while a shared store is away and the replica still serves;
  ``503`` ``{"status": "unavailable", …}`` while it refuses every token (``refuses_every_token``).
* **An operator** also gets each part's reason (``{"degraded": {"ledger": "why", …}}``). A reason names
  what an outsider should not learn — the database's user, internal hosts and ports, the database name,
  spool file paths — so it is shown only to a caller who may read operations data
  (``may_read_reasons``): a token the gateway accepts holding the scope ``GET /metrics`` needs
  (``metrics:read``) or, on a development gateway (which checks no GhostToken and listens on loopback
  only), a loopback caller its development check accepts. Anything else — no token, a refused one, one
  without the scope — gets the names alone, never an error: a probe's answer must not depend on a header.
"""

from __future__ import annotations

import contextlib
from typing import Any

from gtl_nb.gateway.listeners import is_loopback
from gtl_nb.gateway.scopes import SCOPES, has_scope
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.log import get_logger

__all__ = [
    "degraded_parts",
    "degraded_summary",
    "look_at_shared_stores",
    "may_read_reasons",
    "readiness",
    "refuses_every_token",
]

log = get_logger("gateway")


def degraded_parts(engine: Any, authenticate: Authenticate) -> dict[str, str]:
    """Part -> the one-line ``degraded_reason`` of each part that has one now.

    The engine's stores (``ledger``, ``budgets``, ``cache``, ``breakers``) and its registry of
    requests in flight shared across replicas (``coalescing``), the token revocation list of the
    authenticator (``revocations``: behind a reload's ``SwappableAuthenticator`` too) and the audit
    log the server opened for the engine (``audit``, ``audit.audit_log_of``), and the vault the engine's
    keys come from (``vault``: a changed file it cannot use, ``VaultCredentials.degraded_reason``)."""
    degraded = {}
    for name, part in _parts(engine, authenticate).items():
        reason = getattr(part, "degraded_reason", None) if part is not None else None
        if reason:
            degraded[name] = str(reason)
    return degraded


def degraded_summary(engine: Any, authenticate: Authenticate) -> str | None:
    """What the gateway's ``ready`` line says of the parts degraded as it starts — ``ledger, audit —
    password authentication failed for user "gtl"`` (each distinct cause once, a part's
    ``degraded_cause`` where it has one: the reason without URLs and spool paths, which ``/readyz``
    gives) — or ``None`` when none is. A permanent mistake (a wrong password, a database that does not
    exist) must show where ``systemctl status`` and ``docker logs`` look first, not in a warning above."""
    names: list[str] = []
    causes: list[str] = []
    for name, part in _parts(engine, authenticate).items():
        if part is None or not getattr(part, "degraded_reason", None):
            continue
        names.append(name)
        cause = " ".join(str(getattr(part, "degraded_cause", None) or part.degraded_reason).split())
        if cause not in causes:
            causes.append(cause)
    return f"{', '.join(names)} — {'; '.join(causes)}" if names else None


async def look_at_shared_stores(engine: Any) -> None:
    """Ask each Redis store of ``engine`` (budgets, cache, breakers, coalescing) once, at start, whether
    its server takes a write: one that does not is degraded before the ``ready`` line is written, as a
    PostgreSQL ledger or a revocation list that cannot be read already is (each store would otherwise
    find out at its first call, after the line said a plain ``ready``). Each failure is logged once by
    the store; this never raises for one."""
    from gtl_nb.engine.stores.redis_client import RedisUnavailableError

    async def look(outage: Any) -> None:
        if outage.down:  # told by another store of its server meanwhile
            return
        with contextlib.suppress(RedisUnavailableError):
            await outage.look()

    stores = engine.stores
    outages = []
    for part in (stores.budgets, stores.cache, stores.breakers, getattr(engine, "flights", None)):
        outage = getattr(part, "outage", None)
        if outage is not None and callable(getattr(outage, "look", None)):
            outages.append(outage)
    for outage in outages:  # one at a time: the first to find a server gone tells that server's others
        await look(outage)


def _parts(engine: Any, authenticate: Authenticate) -> dict[str, Any]:
    from gtl_nb.gateway.audit import audit_log_of

    target = getattr(authenticate, "target", authenticate)
    stores = engine.stores
    parts: dict[str, Any] = {
        "ledger": stores.ledger,
        "budgets": stores.budgets,
        "cache": stores.cache,
        "breakers": stores.breakers,
        "coalescing": getattr(engine, "flights", None),
        "revocations": getattr(target, "revocations", None),
        "audit": audit_log_of(engine),
        "vault": getattr(engine, "credentials", None),
    }
    return parts


def refuses_every_token(authenticate: Authenticate) -> bool:
    """Whether the token checker has a revocation list it never read (a replica started while Redis
    was away): it then refuses every token, so ``/readyz`` must not call it ready — an orchestrator
    would send it traffic, and a rollout would replace the replicas that still serve with it."""
    target = getattr(authenticate, "target", authenticate)
    revocations = getattr(target, "revocations", None)
    return revocations is not None and not getattr(revocations, "loaded", True)


def may_read_reasons(
    authenticate: Authenticate, bearer: str | None, peer_host: str | None, *, development: bool
) -> bool:
    """Whether the caller may read the reasons (module docstring): ``authenticate`` accepts ``bearer``
    (``None``: no ``Authorization`` header) and the context holds ``metrics:read``; on a ``development``
    gateway the caller must also come from a loopback address. Never raises: a refusal is a ``False``."""
    if development and (peer_host is None or not is_loopback(peer_host)):
        return False
    if refuses_every_token(authenticate):  # no token can pass: not asked (each ask logs an error)
        return False
    # a probe without a token is asked of the checker behind the metrics' count: it is no refused token
    checker = authenticate if bearer is not None else getattr(authenticate, "target", authenticate)
    try:
        context = checker(bearer)
    except Exception as exc:  # refused (or the checker failed): the probe's answer stays the short one
        log.debug("/readyz: the caller's token is not one for the reasons (%s)", type(exc).__name__)
        return False
    return has_scope(context, SCOPES["metrics.read"])


def readiness(engine: Any, authenticate: Authenticate, *, reasons: bool) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body of ``/readyz``: with ``reasons``, each degraded part's reason; without,
    the parts' names only (in ``degraded_parts``'s order)."""
    degraded = degraded_parts(engine, authenticate)
    said: dict[str, str] | list[str] = degraded if reasons else list(degraded)
    if refuses_every_token(authenticate):
        return 503, {"status": "unavailable", "degraded": said}
    if degraded:
        return 200, {"status": "degraded", "degraded": said}
    return 200, {"status": "ready"}
