"""What sharing costs: the gateway on its one-process stores against Redis and PostgreSQL, one run.

``python -m bench.bench_stores`` (``make bench-stores``) starts, on loopback: the fake upstream
(``bench.upstream``), a ``redis-server`` and a PostgreSQL 15 of its own (``bench.stores_servers``:
the test suite's helpers; PostgreSQL with its durable defaults), and one ``gtl serve`` per
configuration — JWT auth on, ``[gateway.audit]`` on, a ``requests_per_minute`` budget so high it
never refuses (so the budget check runs on every request), the cache enabled — differing only in
where the state lives:

* ``sqlite`` — the baseline, one process as it runs today: SQLite ledger, budgets, cache and
  breakers in memory, the audit log in a file (fsynced), token revocations in SQLite;
* ``memory`` — the same with ``[ledger] url = "memory://"``;
* ``redis`` — the baseline with budgets, cache, breakers and revocations in Redis;
* ``postgres`` — the baseline with the ledger and the audit log in PostgreSQL (``url`` alone: no file);
* ``redis+pg`` — both: the scale-out configuration (docs/deploy.md);
* ``redis+pg-lb`` — ``redis+pg`` with ``[routing.breaker] backend = "memory://"`` (each replica its own
  breakers: the shared breaker's state grows with the deployment's traffic, see docs/benchmarks.md).

The load client (``bench.stores_client``) sends ``POST /v1/chat/completions`` (16 tokens, whole or
streamed) in a closed loop at each concurrency, every worker with a principal of its own that is new
in every phase, so each budget check reads only that phase's requests on every configuration alike
(``bench.store_windows`` measures what fuller windows cost). A *round* runs every cell on every
configuration, starting at another configuration each time; figures are medians over rounds, and each
ratio is the configuration's figure over the baseline's of the same round (then the median).

Per phase it reads from ``/proc`` the CPU of the gateway, of ``redis-server`` and of the whole
PostgreSQL cluster (the postmaster, its children and the children it reaped), and Redis's ``INFO
commandstats`` (commands per request, the server's microseconds); at the end PostgreSQL's
``pg_stat_database`` per configuration's database (transactions and rows per ledger row). Idle
gateways of the other configurations stay up meanwhile: the stores' CPU in a phase of a
configuration that does not use them is their floor (lease renewals, revocation refreshes).

    python -m bench.bench_stores                 # 3 rounds of 2 s phases, concurrency 1, 10, 50 (~4 min)
    python -m bench.bench_stores --short         # 2 rounds of 1 s, concurrency 1 and 10 (~1 min)
    python -m bench.bench_stores --smoke --json F  # ~10 s; docs untouched (tests/bench/test_bench_smoke.py)
    python -m bench.bench_stores --profile redis --duration 15   # py-spy --gil on one configuration's gateway

The full and short runs rewrite the part of docs/benchmarks.md between ``<!-- bench:stores:start -->``
and ``<!-- bench:stores:end -->`` (``--no-write`` leaves it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import gateway_setup, store_windows
from bench.paths import PathSpec, Workload
from bench.procstat import descendants, tree_usage
from bench.report import machine, revision
from bench.servers import Gateway, LoadClientProcess, Upstream
from bench.stats import median, spread
from bench.stores_servers import (
    DurablePostgres,
    RedisServer,
    command_stats,
    missing,
    postgres_cpu,
    postmaster_pid,
    process_cpu,
)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
START = "<!-- bench:stores:start -->"
END = "<!-- bench:stores:end -->"
BASELINE = "sqlite"
NEVER = store_windows.NEVER
SCOPES = ("chat:write", "models:read")


@dataclass(frozen=True)
class Config:
    """One way to run the gateway: where the ledger lives, and whether Redis holds the shared state."""

    name: str
    ledger: str
    """``sqlite``, ``memory`` or ``postgres`` (PostgreSQL also takes the audit log)."""
    redis: bool
    """Budgets, the cache, the breakers and the revocation list in Redis."""
    what: str
    breakers_in_redis: bool = True
    """With ``redis``: the breakers too (``False``: each process keeps its own, ``memory://``)."""

    @property
    def slug(self) -> str:
        """The name as replica ids, key prefixes, folders and database names take it (no ``+``)."""
        return self.name.replace("+", "-")


CONFIGS = (
    Config("sqlite", "sqlite", False, "SQLite ledger; budgets, cache, breakers in memory; audit file (the baseline)"),
    Config("memory", "memory", False, '`[ledger] url = "memory://"`; the rest as the baseline'),
    Config("redis", "sqlite", True, "SQLite ledger, audit file; budgets, cache, breakers, revocations in Redis"),
    Config("postgres", "postgres", False, "ledger and audit in PostgreSQL; budgets, cache, breakers in memory"),
    Config("redis+pg", "postgres", True, "ledger and audit in PostgreSQL; the rest in Redis (scale-out)"),
    Config(
        "redis+pg-lb",
        "postgres",
        True,
        'as redis+pg but `[routing.breaker] backend = "memory://"` (each replica its own breakers)',
        breakers_in_redis=False,
    ),
)


@dataclass
class Options:
    """How much to run; the defaults are the documented run."""

    rounds: int = 3
    duration: float = 2.0
    warmup: int = 2
    concurrencies: tuple[int, ...] = (1, 10, 50)
    workloads: tuple[Workload, ...] = (Workload(False, 16), Workload(True, 16))
    configs: tuple[str, ...] = tuple(c.name for c in CONFIGS)
    sweep: bool = True
    """Also measure the budget check and the breaker against fuller windows (``bench.store_windows``)."""
    budget_cases: tuple[tuple[int, str], ...] = store_windows.BUDGET_CASES
    breaker_cases: tuple[int, ...] = store_windows.BREAKER_CASES
    sweep_calls: int = 20

    def cells(self) -> list[tuple[Workload, int]]:
        return [(w, c) for c in self.concurrencies for w in self.workloads]


# ----------------------------------------------------------------------------------------------
# the processes


def config_tables(config: Config, directory: Path, upstream_port: int, redis_url: str, pg_url: str) -> dict[str, Any]:
    """``gtl.toml``'s tables for ``config`` (the bench's gateway file without gRPC and QUIC, then the stores)."""
    tables = gateway_setup.gateway_tables(directory, upstream_port, None, grpc=False, quic=False)
    shared = f"{redis_url}?key_prefix=bench-{config.slug}:" if config.redis else "memory://"
    if config.ledger == "memory":
        tables["ledger"] = {"url": "memory://"}
    elif config.ledger == "postgres":
        replica = f"bench-{config.slug}"
        tables["ledger"] = {"url": f"{pg_url}?replica={replica}&spool_path={directory / 'ledger-spool.sqlite3'}"}
        tables["gateway.audit"] = {
            "url": pg_url,
            "replica": replica,
            "spool_path": str(directory / "audit-spool.jsonl"),
        }
    tables["budgets"] = {"requests_per_minute": NEVER, "backend": shared}
    tables["cache"] = {"enabled": True, "backend": shared}
    tables["routing.breaker"] = {"backend": shared if config.breakers_in_redis else "memory://"}
    if config.redis:
        tables["gateway.jwt"]["revocations"] = shared
    return tables


class StoresClientProcess(LoadClientProcess):
    """``python -m bench.stores_client``: the load client with a token per worker."""

    def __init__(self) -> None:
        import subprocess

        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.stores_client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.pid = self.process.pid


@dataclass
class Environment:
    """Everything running, and how to reach and read it."""

    options: Options
    upstream: Upstream
    redis: RedisServer | None = None
    postgres: DurablePostgres | None = None
    postmaster: int = 0
    databases: dict[str, str] = field(default_factory=dict)
    """Configuration -> its PostgreSQL database's name."""
    gateways: dict[str, Gateway] = field(default_factory=dict)
    gateway_pids: dict[str, list[int]] = field(default_factory=dict)
    specs: dict[str, PathSpec] = field(default_factory=dict)
    client: StoresClientProcess | None = None
    secret: str = ""
    redis_admin: Any = None

    def mint(self, subject: str) -> str:
        from gtl_nb.gateway.tokens import mint_token

        return mint_token(self.secret, subject=subject, scopes=SCOPES, lifetime=6 * 3600, issuer=gateway_setup.ISSUER)

    def redis_cpu(self) -> float:
        return process_cpu(self.redis.process.pid) if self.redis is not None else 0.0

    def postgres_cpu(self) -> float:
        return postgres_cpu(self.postmaster) if self.postmaster else 0.0

    def breaker_bytes(self, config: str) -> int:
        """How big the deployment's shared breaker state is now (its JSON in Redis; 0 when not in Redis)."""
        if self.redis_admin is None or not any(c.name == config and c.redis and c.breakers_in_redis for c in CONFIGS):
            return 0
        slug = config.replace("+", "-")
        return int(self.redis_admin.strlen(f"bench-{slug}:breaker:bench"))

    def redis_commands(self) -> dict[str, tuple[int, int]]:
        return command_stats(self.redis_admin) if self.redis_admin is not None else {}

    def stop_gateways(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        with concurrent.futures.ThreadPoolExecutor(max(len(self.gateways), 1)) as pool:
            list(pool.map(lambda gateway: gateway.stop(), self.gateways.values()))
        self.gateways.clear()

    def stop(self) -> None:
        """Stop what still runs (each step on its own: a failure must not leave a server behind)."""
        for step in (self.stop_gateways, self._stop_redis, self._stop_postgres, self.upstream.stop):
            try:
                step()
            except Exception as exc:  # keep stopping the rest
                print(f"bench-stores: stopping: {exc}", file=sys.stderr)

    def _stop_redis(self) -> None:
        if self.redis_admin is not None:
            self.redis_admin.close()
            self.redis_admin = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def _stop_postgres(self) -> None:
        if self.postgres is not None:
            self.postgres.remove()
            self.postgres = None


def start(options: Options, directory: Path) -> Environment:
    """Start the upstream, the stores the chosen configurations need, and one gateway per configuration."""
    chosen = [c for c in CONFIGS if c.name in options.configs]
    env = Environment(options, Upstream(), secret=secrets.token_urlsafe(48))
    try:
        redis_url = pg_base = ""
        if any(c.redis for c in chosen):
            from redis import Redis

            env.redis = RedisServer.start(directory / "redis-server")
            env.redis_admin = Redis.from_url(env.redis.url)
            redis_url = env.redis.url
        if any(c.ledger == "postgres" for c in chosen):
            env.postgres = DurablePostgres.start()
            env.postmaster = postmaster_pid(env.postgres)
        files = {}
        for config in chosen:
            pg_url = ""
            if config.ledger == "postgres":
                assert env.postgres is not None
                name = "bench_" + config.slug.replace("-", "_")
                pg_url = env.postgres.create_database(name)
                env.databases[config.name] = name
                pg_base = pg_base or pg_url
            folder = directory / f"gateway-{config.slug}"
            folder.mkdir(parents=True)
            tables = config_tables(config, folder, env.upstream.port, redis_url, pg_url)
            path = folder / "gtl.toml"
            path.write_text(gateway_setup.toml_text(tables), encoding="utf-8")
            files[config.name] = gateway_setup.GatewayFiles(
                path, env.mint("bench"), folder, {gateway_setup.SECRET_ENV: env.secret}
            )
        with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
            started = {
                name: pool.submit(Gateway, spec, log=directory / f"gateway-{name.replace('+', '-')}.log")
                for name, spec in files.items()
            }
            problems = []
            for name, future in started.items():
                try:  # keep every gateway that started, so a failure stops them all
                    env.gateways[name] = future.result()
                except Exception as exc:
                    problems.append(f"{name}: {exc}")
            if problems:
                raise RuntimeError("gateways did not start: " + "; ".join(problems))
        for name, gateway in env.gateways.items():
            env.gateway_pids[name] = descendants(gateway.pid)
            env.specs[name] = PathSpec(name, "chat", port=gateway.port("http"), token=files[name].token)
        env.client = StoresClientProcess()
    except BaseException:
        env.stop()
        raise
    return env


# ----------------------------------------------------------------------------------------------
# the phases


@dataclass
class Phase:
    """One configuration, one cell, one round."""

    config: str
    stream: bool
    tokens: int
    concurrency: int
    round: int
    result: dict[str, Any]
    cpu_ms: dict[str, float]
    """Milliseconds of CPU per request: ``gateway``, ``redis``, ``postgres``, ``upstream``, ``client``."""
    load: dict[str, float]
    """The same processes' CPU per wall second (1.0 = one core)."""
    rss: int
    """The gateway's resident memory after the phase (bytes)."""
    redis_calls: dict[str, tuple[int, int]]
    """Redis commands during the measured part: command -> (calls, server microseconds)."""
    breaker_bytes: int
    """The size of the deployment's breaker state in Redis after the phase (0: not in Redis)."""


def _cpu(env: Environment, config: str) -> dict[str, float]:
    assert env.client is not None
    return {
        "gateway": tree_usage(0, env.gateway_pids[config]).cpu,
        "redis": env.redis_cpu(),
        "postgres": env.postgres_cpu(),
        "upstream": process_cpu(env.upstream.pid),
        "client": process_cpu(env.client.pid),
    }


def run_phase(env: Environment, config: str, workload: Workload, concurrency: int, rnd: int) -> Phase:
    """One phase: every worker a principal of its own (new in this phase); CPU read around the measured loop."""
    assert env.client is not None
    options = env.options
    subject = f"{config}-r{rnd}-{'s' if workload.stream else 'w'}{workload.tokens}-c{concurrency}"
    tokens = [env.mint(f"{subject}-w{index}") for index in range(concurrency)]
    spec = replace(env.specs[config], extra={"tokens": tokens})
    before: dict[str, Any] = {}

    def snapshot() -> None:
        before["cpu"] = _cpu(env, config)
        before["redis"] = env.redis_commands()

    command = {
        "path": spec.to_json(),
        "stream": workload.stream,
        "tokens": workload.tokens,
        "concurrency": concurrency,
        "duration": options.duration,
        "requests": 0,
        "warmup": options.warmup,
    }
    result = env.client.phase(command, snapshot)
    after_cpu = _cpu(env, config)
    after_redis = env.redis_commands()
    elapsed = max(result["elapsed"], 1e-9)
    requests = max(result["requests"], 1)
    spent = {name: after_cpu[name] - before["cpu"][name] for name in after_cpu}
    calls = {}
    for name, (count, usec) in after_redis.items():
        was = before["redis"].get(name, (0, 0))
        if count > was[0]:
            calls[name] = (count - was[0], usec - was[1])
    return Phase(
        config,
        workload.stream,
        workload.tokens,
        concurrency,
        rnd,
        result,
        {name: seconds * 1000 / requests for name, seconds in spent.items()},
        {name: seconds / elapsed for name, seconds in spent.items()},
        tree_usage(0, env.gateway_pids[config]).rss,
        calls,
        env.breaker_bytes(config),
    )


def run_rounds(env: Environment, progress: bool = True) -> list[Phase]:
    """Every cell on every configuration, ``rounds`` times, interleaved (see the module docstring)."""
    options = env.options
    names = list(env.specs)
    phases = []
    for rnd in range(options.rounds):
        for index, (workload, concurrency) in enumerate(options.cells()):
            shift = (rnd + index) % len(names)
            for name in names[shift:] + names[:shift]:
                phase = run_phase(env, name, workload, concurrency, rnd)
                phases.append(phase)
                if progress:
                    errors = sum(phase.result["errors"].values())
                    print(
                        f"  round {rnd + 1}/{options.rounds} {workload.label:>9} c={concurrency:<3} {name:<9} "
                        f"{phase.result['rps']:7.0f} req/s p50 {phase.result['p50']:6.2f} ms "
                        f"cpu gw {phase.cpu_ms['gateway']:5.2f} redis {phase.cpu_ms['redis']:5.3f} "
                        f"pg {phase.cpu_ms['postgres']:5.3f} ms/req"
                        + (f" ERRORS {phase.result['errors']}" if errors else ""),
                        flush=True,
                    )
    return phases


def postgres_counters(env: Environment) -> dict[str, tuple[int, int, int]]:
    """Per configuration on PostgreSQL: its database's transactions committed, rows inserted and rows
    updated so far (``pg_stat_database``; a backend reports at most once a second, and when it exits)."""
    if env.postgres is None or not env.databases:
        return {}
    import psycopg

    with psycopg.connect(env.postgres.url(), autocommit=True, connect_timeout=10) as conn:
        return {
            config: tuple(
                conn.execute(
                    "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database WHERE datname = %s",
                    (database,),
                ).fetchone()
            )
            for config, database in env.databases.items()
        }


def postgres_connections(env: Environment) -> dict[str, int]:
    """Per configuration on PostgreSQL: the connections open to its database now."""
    if env.postgres is None or not env.databases:
        return {}
    import psycopg

    with psycopg.connect(env.postgres.url(), autocommit=True, connect_timeout=10) as conn:
        found = dict(conn.execute("SELECT datname, count(*) FROM pg_stat_activity GROUP BY datname").fetchall())
    return {config: int(found.get(database, 0)) for config, database in env.databases.items()}


def postgres_stats(
    env: Environment, before: dict[str, tuple[int, int, int]], connections: dict[str, int]
) -> dict[str, dict[str, float]]:
    """Per configuration on PostgreSQL: ledger rows, audit records, and per ledger row the transactions
    committed and the rows inserted and updated in its database since ``before`` (read once the
    gateways stopped, so every backend has reported its counters; ``before`` was read once they
    had created their tables, so those are not counted)."""
    if env.postgres is None or not env.databases:
        return {}
    import psycopg

    after = postgres_counters(env)
    found: dict[str, dict[str, float]] = {}
    for config, database in env.databases.items():
        with psycopg.connect(env.postgres.url(database), autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
            audit = conn.execute("SELECT count(*) FROM audit_records").fetchone()[0]
        commits, inserted, updated = (a - b for a, b in zip(after[config], before.get(config, (0, 0, 0)), strict=True))
        per = max(rows, 1)
        found[config] = {
            "ledger_rows": rows,
            "audit_records": audit,
            "connections": connections.get(config, 0),
            "commits_per_request": commits / per,
            "inserted_per_request": inserted / per,
            "updated_per_request": updated / per,
        }
    return found


# ----------------------------------------------------------------------------------------------
# summaries


@dataclass
class Summary:
    """One configuration in one cell, over the rounds (ratios: to the baseline of the same round)."""

    config: str
    label: str
    stream: bool
    tokens: int
    concurrency: int
    rounds: int
    requests: int
    errors: dict[str, int]
    rps: float
    p50: float
    p99: float
    ttft_p50: float | None
    gateway_ms: float
    redis_ms: float
    postgres_ms: float
    total_ms: float
    """Gateway + Redis + PostgreSQL CPU per request."""
    rss_mib: float
    rps_ratio: float | None
    p50_ratio: float | None
    added_p50: float | None
    gateway_ratio: float | None
    total_ratio: float | None
    gateway_spread: float
    load: dict[str, float]
    bound: str
    redis_per_request: dict[str, float]
    """Redis command -> calls per request."""
    redis_us_per_request: float
    """Redis's own microseconds (``INFO commandstats``) per request, every command summed."""
    breaker_kib: float
    """The deployment's breaker state in Redis at the end of the phases (median, KiB; 0: not in Redis)."""


def _bound(load: dict[str, float]) -> str:
    name, busiest = max(load.items(), key=lambda item: item[1])
    if busiest >= 0.85:
        return f"{name} CPU ({busiest:.2f} cores)"
    return "round trips (no process saturated)"


def _per_round(group: list[Phase], base: dict[int, Phase], value: Any, combine: Any) -> float | None:
    pairs = [combine(value(p), value(base[p.round])) for p in group if p.round in base]
    finite = [x for x in pairs if x is not None and math.isfinite(x)]
    return median(finite) if finite else None


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def summarise(phases: list[Phase]) -> list[Summary]:
    groups: dict[tuple[str, bool, int, int], list[Phase]] = {}
    for phase in phases:
        groups.setdefault((phase.config, phase.stream, phase.tokens, phase.concurrency), []).append(phase)
    summaries = []
    for (config, stream, tokens, concurrency), group in groups.items():
        base = {p.round: p for p in groups.get((BASELINE, stream, tokens, concurrency), [])}

        def total(p: Phase) -> float:
            return p.cpu_ms["gateway"] + p.cpu_ms["redis"] + p.cpu_ms["postgres"]

        errors: dict[str, int] = {}
        for phase in group:
            for kind, count in phase.result["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        requests = sum(p.result["requests"] for p in group)
        calls: dict[str, int] = {}
        usec = 0
        for phase in group:
            for name, (count, spent) in phase.redis_calls.items():
                calls[name] = calls.get(name, 0) + count
                usec += spent
        load = {name: median([p.load[name] for p in group]) for name in group[0].load}
        summaries.append(
            Summary(
                config=config,
                label=Workload(stream, tokens).label,
                stream=stream,
                tokens=tokens,
                concurrency=concurrency,
                rounds=len(group),
                requests=requests,
                errors=errors,
                rps=median([p.result["rps"] for p in group]),
                p50=median([p.result["p50"] for p in group]),
                p99=median([p.result["p99"] for p in group]),
                ttft_p50=median([p.result["ttft_p50"] for p in group]) if stream else None,
                gateway_ms=median([p.cpu_ms["gateway"] for p in group]),
                redis_ms=median([p.cpu_ms["redis"] for p in group]),
                postgres_ms=median([p.cpu_ms["postgres"] for p in group]),
                total_ms=median([total(p) for p in group]),
                rss_mib=max(p.rss for p in group) / 2**20,
                rps_ratio=_per_round(group, base, lambda p: p.result["rps"], _ratio),
                p50_ratio=_per_round(group, base, lambda p: p.result["p50"], _ratio),
                added_p50=_per_round(group, base, lambda p: p.result["p50"], lambda a, b: a - b),
                gateway_ratio=_per_round(group, base, lambda p: p.cpu_ms["gateway"], _ratio),
                total_ratio=_per_round(group, base, total, _ratio),
                gateway_spread=spread([p.cpu_ms["gateway"] for p in group]),
                load=load,
                bound=_bound(load),
                redis_per_request={name: count / max(requests, 1) for name, count in sorted(calls.items())},
                redis_us_per_request=usec / max(requests, 1),
                breaker_kib=median([p.breaker_bytes for p in group]) / 1024,
            )
        )
    order = {c.name: i for i, c in enumerate(CONFIGS)}
    summaries.sort(key=lambda s: (s.concurrency, s.stream, s.tokens, order.get(s.config, 99)))
    return summaries


@dataclass
class Result:
    options: dict[str, Any]
    summaries: list[Summary]
    postgres: dict[str, dict[str, float]]
    window: list[store_windows.WindowCost]
    phases: list[Phase]
    started: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "summaries": [asdict(s) for s in self.summaries],
            "postgres": self.postgres,
            "window": store_windows.to_json(self.window),
            "phases": [asdict(p) for p in self.phases],
            "started": self.started,
            "seconds": self.seconds,
        }


def run(options: Options, progress: bool = True, work_dir: Path | None = None) -> Result:
    """Start everything, run the rounds and the window sweep, stop everything (``work_dir``: keep the
    gateways' files and logs there instead of a temporary folder)."""
    why = missing()
    if why is not None:
        raise RuntimeError(f"bench-stores cannot run here: {why}")
    begun = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="gtl-bench-stores-") as tmp:
        directory = work_dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        env = start(options, directory)
        try:
            if progress:
                cells = len(options.cells())
                print(f"bench-stores: {', '.join(env.specs)}; {cells} cells x {options.rounds} rounds", flush=True)
            time.sleep(1.5)  # the gateways' backends report creating their tables: not counted below
            counted_from = postgres_counters(env)
            phases = run_rounds(env, progress)
            window: list[store_windows.WindowCost] = []
            if options.sweep:
                if progress:
                    print("bench-stores: the budget check and the breaker against fuller windows", flush=True)
                window = store_windows.measure(
                    f"{env.redis.url}?key_prefix=bench-sweep:" if env.redis else None,
                    options.budget_cases,
                    options.breaker_cases,
                    options.sweep_calls,
                )
            connections = postgres_connections(env)
            env.stop_gateways()
            found = postgres_stats(env, counted_from, connections)
        finally:
            env.stop()
    settings = asdict(options)
    settings["workloads"] = [w.label for w in options.workloads]
    return Result(settings, summarise(phases), found, window, phases, started, time.monotonic() - begun)


# ----------------------------------------------------------------------------------------------
# the report


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}×"


def _signed(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.2f}"


def _find(result: Result, config: str, stream: bool, concurrency: int) -> Summary | None:
    for s in result.summaries:
        if s.config == config and s.stream == stream and s.tokens == 16 and s.concurrency == concurrency:
            return s
    return None


def cost_table(result: Result) -> list[str]:
    lines = [
        "| configuration | workload | c | req/s (÷ baseline) | p50 ms (added) | p99 ms "
        "| gateway CPU ms/req (÷ baseline) | Redis CPU ms/req | PostgreSQL CPU ms/req "
        "| gateway + stores CPU ms/req (÷ baseline) | gateway RSS MiB | bound |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in result.summaries:
        base = s.config == BASELINE
        lines.append(
            f"| {s.config} | {s.label} | {s.concurrency} | {s.rps:,.0f}{'' if base else f' ({_times(s.rps_ratio)})'} "
            f"| {_num(s.p50)}{'' if base else f' ({_signed(s.added_p50)})'} | {_num(s.p99)} "
            f"| {_num(s.gateway_ms)}{'' if base else f' ({_times(s.gateway_ratio)})'} "
            f"| {_num(s.redis_ms, 3)} | {_num(s.postgres_ms, 3)} "
            f"| {_num(s.total_ms)}{'' if base else f' ({_times(s.total_ratio)})'} | {s.rss_mib:.0f} | {s.bound} |"
        )
    return lines


def round_trip_table(result: Result) -> list[str]:
    """Per configuration: Redis commands and server time per request; PostgreSQL transactions and rows."""
    lines = [
        "| configuration | Redis commands per request (all cells) | Redis server µs per request "
        "| breaker state in Redis, KiB | PostgreSQL commits per request | rows inserted / updated per request |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for config in [c.name for c in CONFIGS]:
        mine = [s for s in result.summaries if s.config == config]
        if not mine:
            continue
        requests = sum(s.requests for s in mine)
        calls: dict[str, float] = {}
        usec = 0.0
        for s in mine:
            for name, per in s.redis_per_request.items():
                calls[name] = calls.get(name, 0.0) + per * s.requests
            usec += s.redis_us_per_request * s.requests
        shown = ", ".join(
            f"{name} {count / requests:.2f}" for name, count in sorted(calls.items()) if count / requests >= 0.01
        )
        pg = result.postgres.get(config)
        commits = _num(pg["commits_per_request"], 3) if pg else "–"
        written = f"{pg['inserted_per_request']:.2f} / {pg['updated_per_request']:.2f}" if pg else "–"
        server = _num(usec / max(requests, 1), 0) if shown else "–"
        sizes = [s.breaker_kib for s in mine if s.breaker_kib]
        breaker = f"{min(sizes):,.0f}–{max(sizes):,.0f}" if sizes else "–"
        lines.append(f"| {config} | {shown or '–'} | {server} | {breaker} | {commits} | {written} |")
    return lines


def sizing_table(result: Result) -> list[str]:
    """The paper sizing from this run's figures (docs/benchmarks.md, "Sizing on paper"): at the highest
    concurrency run, 16-token streams; Redis from the scale-out configuration with local breakers (with
    shared breakers Redis's cost per request grows with the deployment's traffic: the sweep), PostgreSQL
    from ``postgres`` (in a configuration held back by Redis, PostgreSQL's fixed costs are spread over
    fewer requests)."""
    c = max(result.options["concurrencies"])
    lines = [f"| figure | from (this run, 16-token streams, c={c}) | value |", "| --- | --- | --- |"]
    for config in (BASELINE, "redis+pg-lb", "redis+pg"):
        s = _find(result, config, True, c)
        if s is not None and s.gateway_ms > 0:
            lines.append(
                f"| 16-token streams per second per gateway core ({config}) "
                f"| gateway CPU {s.gateway_ms:.2f} ms per stream | {1000 / s.gateway_ms:,.0f} |"
            )
    replica = _find(result, "redis+pg-lb", True, c) or _find(result, "redis+pg", True, c)
    rates = [100] + ([round(replica.rps, -1)] if replica is not None and replica.rps >= 10 else [])
    for store, attr, sources in (
        ("Redis", "redis_ms", ("redis+pg-lb", "redis+pg", "redis")),
        ("PostgreSQL", "postgres_ms", ("postgres", "redis+pg-lb", "redis+pg")),
    ):
        s = next((x for x in (_find(result, name, True, c) for name in sources) if x and getattr(x, attr) > 0), None)
        if s is None:
            continue
        capacity = 1000 / getattr(s, attr)
        lines.append(
            f"| requests per second one {store} core carries "
            f"| {store} CPU {getattr(s, attr):.3f} ms per request ({s.config}) | {capacity:,.0f} |"
        )
        for rate in rates:
            lines.append(
                f"| replicas one {store} core carries at {rate:,.0f} req/s each | {capacity:,.0f} ÷ {rate:,.0f} "
                f"| {capacity / rate:,.1f} |"
            )
    connections = [v.get("connections", 0) for v in result.postgres.values() if v.get("connections")]
    if connections:
        most = max(connections)
        lines.append(
            f"| PostgreSQL connections per replica; replicas under `max_connections = 100` (3 reserved) "
            f"| `pg_stat_activity` while idle after the run (ledger + audit pools) | {most:.0f}; {97 // most:.0f} |"
        )
    return lines


def markdown(result: Result) -> str:
    o = result.options
    total = sum(s.requests for s in result.summaries)
    configs = [c for c in CONFIGS if c.name in o["configs"]]
    out = [
        f"Run {result.started}, gtl_nb {revision()}; {machine()}.",
        f"{o['rounds']} interleaved rounds of {len(o['concurrencies']) * len(o['workloads'])} cells x "
        f"{len(configs)} configurations; each phase {o['duration']} s of closed loop after {o['warmup']} warm-up "
        f"request(s) per worker; {total:,} measured requests in all; {result.seconds / 60:.1f} min.",
        "",
        "Configurations: " + "; ".join(f"**{c.name}** — {c.what}" for c in configs) + ".",
        "",
        "### Per request, against the baseline (medians over rounds; ratios and differences per round)",
        "",
        *cost_table(result),
        "",
        "### Round trips to the stores",
        "",
        *round_trip_table(result),
        "",
    ]
    if result.window:
        out += [
            "### One budget check as the principal's minute fills (`bench/store_windows.py`; µs per request)",
            "",
            *store_windows.budget_table(result.window),
            "",
            "### One request's breaker bookkeeping as the deployment's window fills (µs per request)",
            "",
            *store_windows.breaker_table(result.window),
            "",
        ]
    sizing = sizing_table(result)
    if len(sizing) > 2:
        out += ['### Sizing from this run (see "Sizing on paper" below)', "", *sizing, ""]
    return "\n".join(out)


def write_docs(report: str, path: Path = DOCS) -> bool:
    """Replace the text between the stores markers of ``path``; ``False`` when it has none."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    path.write_text(f"{head}{START}\n{report}{END}{rest.split(END, 1)[1]}", encoding="utf-8")
    return True


# ----------------------------------------------------------------------------------------------
# a profile of one configuration

#: what a sample's stack passes through -> a name (inclusive time: a sample counts once per name)
INCLUSIVE = (
    ("/redis/", "redis-py (client, parser, pool)"),
    ("/gtl_nb/engine/stores/redis_breakers.py", "the Redis breaker store"),
    ("/gtl_nb/engine/stores/redis_budget.py", "the Redis budget counter"),
    ("/gtl_nb/engine/breaker.py", "breaker rules and state (to_state / from_state)"),
    ("/json/", "json (the standard library)"),
    ("/psycopg", "psycopg (driver, pool)"),
    ("/gtl_nb/engine/stores/postgres_ledger.py", "the PostgreSQL ledger"),
    ("/gtl_nb/gateway/audit_postgres.py", "the PostgreSQL audit writer"),
    ("/gtl_nb/engine/ledger_writer.py", "the SQLite ledger writer"),
)


def inclusive(text: str) -> list[str]:
    """Per ``INCLUSIVE`` name: the share of samples whose stack passes through it."""
    counts = dict.fromkeys((name for _, name in INCLUSIVE), 0)
    total = 0
    for line in text.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        total += int(samples)
        for name in {name for fragment, name in INCLUSIVE if fragment in stack}:
            counts[name] += int(samples)
    return [f"  {n / max(total, 1) * 100:5.1f} %  {name}" for name, n in counts.items() if n]


def profile(config: str, seconds: float, concurrency: int, raw: Path | None) -> str:
    """py-spy (``--gil``: Python's CPU only) on ``config``'s gateway under a 16-token stream load."""
    import shutil
    import subprocess
    import threading

    from bench.profile_gateway import summarise as by_function

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/python -m pip install py-spy")
    options = Options(rounds=1, duration=seconds, warmup=20, concurrencies=(concurrency,), configs=(config,))
    with tempfile.TemporaryDirectory(prefix="gtl-bench-stores-profile-") as tmp:
        env = start(options, Path(tmp))
        try:
            assert env.client is not None
            out = Path(tmp) / "profile.txt"
            command = [py_spy, "record", "--pid", str(env.gateways[config].pid), "--format", "raw"]
            command += ["--full-filenames", "--gil", "--rate", "250", "--duration", str(int(seconds))]
            command += ["--nonblocking", "-o", str(out)]
            threads: list[threading.Thread] = []

            def record() -> None:
                thread = threading.Thread(target=subprocess.run, args=(command,), kwargs={"capture_output": True})
                thread.start()
                threads.append(thread)

            # one-second phases, each with principals of its own (as the bench's phases), until py-spy is done
            requests = 0
            begun = time.monotonic()
            for index in range(int(seconds) + 5):
                tokens = [env.mint(f"profile-{index}-{worker}") for worker in range(concurrency)]
                spec = replace(env.specs[config], extra={"tokens": tokens})
                phase = {"path": spec.to_json(), "stream": True, "tokens": 16, "concurrency": concurrency}
                phase.update(duration=1.0, requests=0, warmup=1 if index else 20)
                requests += env.client.phase(phase, record if index == 0 else lambda: None)["requests"]
                if not threads[0].is_alive():
                    break
            rate = requests / (time.monotonic() - begun)
            for thread in threads:
                thread.join()
            text = out.read_text() if out.exists() else ""
        finally:
            env.stop()
    if raw is not None:
        raw.write_text(text, encoding="utf-8")
    head = f"profiled {config}: {requests} streams at c={concurrency} (~{rate:.0f}/s), new principals every second"
    return "\n".join([head, "", by_function(text, top=15), "", "inclusive (stack passes through):", *inclusive(text)])


# ----------------------------------------------------------------------------------------------
# the command line


def options_from(args: argparse.Namespace) -> Options:
    options = Options()
    if args.smoke:
        options = Options(
            rounds=1,
            duration=0.2,
            warmup=1,
            concurrencies=(1,),
            budget_cases=((0, "minute"), (100, "minute")),
            breaker_cases=(0, 100),
            sweep_calls=3,
        )
    elif args.short:
        options = Options(rounds=2, duration=1.0, warmup=1, concurrencies=(1, 10))
    if args.rounds:
        options.rounds = args.rounds
    if args.duration:
        options.duration = args.duration
    if args.concurrency:
        options.concurrencies = tuple(int(c) for c in args.concurrency.split(","))
    if args.configs:
        names = tuple(args.configs.split(","))
        unknown = set(names) - {c.name for c in CONFIGS}
        if unknown:
            raise SystemExit(f"unknown configuration(s): {', '.join(sorted(unknown))}")
        options.configs = tuple(dict.fromkeys((BASELINE, *names)))  # the baseline always runs
    if args.no_sweep:
        options.sweep = False
    return options


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_stores", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="seconds: 1 round, concurrency 1; docs untouched")
    size.add_argument("--short", action="store_true", help="2 rounds of 1 s phases, concurrency 1 and 10")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float, help="seconds per phase")
    parser.add_argument("--concurrency", help="comma-separated, e.g. 1,10,50")
    parser.add_argument("--configs", help="comma-separated: " + ",".join(c.name for c in CONFIGS))
    parser.add_argument("--no-sweep", action="store_true", help="skip the budget and breaker window sweep")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    parser.add_argument("--work-dir", type=Path, help="keep the gateways' files and logs here (a new folder)")
    parser.add_argument("--profile", metavar="CONFIG", help="py-spy one configuration's gateway instead")
    parser.add_argument("--raw", type=Path, help="with --profile: keep py-spy's raw profile here")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.profile:
        concurrency = int(args.concurrency.split(",")[0]) if args.concurrency else 1
        print(profile(args.profile, args.duration or 15.0, concurrency, args.raw))
        return 0
    result = run(options_from(args), work_dir=args.work_dir)
    report = markdown(result)
    print()
    print(report)
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
    if not (args.smoke or args.no_write):
        print(f"written to {DOCS}" if write_docs(report) else f"{DOCS} has no {START} marker: not written")
    failed = [s for s in result.summaries if s.errors]
    for s in failed:
        print(f"ERRORS on {s.config} {s.label} c={s.concurrency}: {s.errors}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
