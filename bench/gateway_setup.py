"""The gateway as users run it, for the bench: a generated ``gtl.toml``, a GhostToken, TLS for QUIC.

``prepare(directory, upstream_port)`` writes into ``directory``:

* ``gtl.toml`` — one ``openai``-type deployment ``bench`` at the fake upstream serving ``bench-model``;
  the SQLite ledger on; the audit log on; ``auth = "jwt"`` with an HS256 secret read from
  ``$GTL_BENCH_JWT_SECRET`` (``[gateway.jwt]``, tokens may use every deployment); an HTTP listener
  (OpenAI-compatible endpoint, SSE, WebSocket), a gRPC listener and a QUIC listener, each on a free port;
* ``certs/`` — a development CA and server pair (``gtl_nb.gateway.certs``) for QUIC's TLS 1.3.

The token is minted with the project's own code (``gtl_nb.gateway.tokens.mint_token``) from the policy
the gateway itself reads out of that table, so a mismatch would fail here, not mid-run.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.upstream import MODEL

SECRET_ENV = "GTL_BENCH_JWT_SECRET"
ISSUER = "https://bench.gtl.invalid"


@dataclass(frozen=True)
class GatewayFiles:
    """What ``prepare`` wrote, and what a client needs to reach the gateway."""

    config: Path
    token: str
    ca: Path
    env: dict[str, str]
    """Variables the gateway process needs (the JWT secret)."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_text(tables: dict[str, dict[str, Any]]) -> str:
    """``{"providers.bench": {...}, ...}`` as TOML tables, in order."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def gateway_tables(
    directory: Path,
    upstream_port: int,
    certs: Any,
    *,
    grpc: bool = True,
    quic: bool = True,
    limits: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The configuration tables (see the module docstring). ``limits`` adds ``[gateway]`` keys (the
    scale test raises the per-address connection cap); ``upstream`` writes an ``[upstream]`` table
    (the engine's HTTP client and pool) when given."""
    tables: dict[str, dict[str, Any]] = {
        "providers.bench": {
            "type": "openai",
            "api_key": "bench-upstream-key",
            "base_url": f"http://127.0.0.1:{upstream_port}/v1",
            "models": [MODEL],
        },
        "ledger": {"path": str(directory / "ledger.sqlite3")},
        "gateway": {"auth": "jwt", **(limits or {})},
        "gateway.jwt": {
            "issuer": ISSUER,
            "secret_env": SECRET_ENV,
            "default_deployments": ["*"],
            "revocations": str(directory / "tokens.sqlite3"),
        },
        "gateway.audit": {"path": str(directory / "audit.jsonl")},
        "gateway.http": {"host": "127.0.0.1", "port": 0},
    }
    if grpc:
        tables["gateway.grpc"] = {"host": "127.0.0.1", "port": 0}
    if quic:
        tables["gateway.quic"] = {
            "host": "127.0.0.1",
            "port": 0,
            "tls_cert": str(certs.certificate),
            "tls_key": str(certs.key),
        }
    if upstream:
        tables["upstream"] = dict(upstream)
    return tables


def mint(directory: Path, jwt_table: dict[str, Any], env: dict[str, str], lifetime: float = 6 * 3600) -> str:
    """A GhostToken for principal ``bench`` signed as the gateway will verify it."""
    from gtl_nb.gateway.tokens import TokenPolicy, mint_token

    policy = TokenPolicy.from_table(jwt_table, directory, env)
    return mint_token(policy, subject="bench", scopes=["chat:write", "models:read"], lifetime=lifetime)


def prepare(
    directory: Path,
    upstream_port: int,
    *,
    grpc: bool = True,
    quic: bool = True,
    limits: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
) -> GatewayFiles:
    """Write the gateway's files into ``directory`` and mint its token (see the module docstring)."""
    from gtl_nb.gateway.certs import make_dev_certificates

    directory.mkdir(parents=True, exist_ok=True)
    certs = make_dev_certificates(directory / "certs")
    env = {SECRET_ENV: secrets.token_urlsafe(48)}
    tables = gateway_tables(directory, upstream_port, certs, grpc=grpc, quic=quic, limits=limits, upstream=upstream)
    config = directory / "gtl.toml"
    config.write_text(toml_text(tables), encoding="utf-8")
    token = mint(directory, tables["gateway.jwt"], env)
    return GatewayFiles(config=config, token=token, ca=certs.ca, env=env)
