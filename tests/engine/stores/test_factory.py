"""``open_stores`` and store URLs: which implementation each setting selects, and the mistakes it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_kit import run

from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.cache import CacheConfig
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.ratelimit import BudgetConfig, Limits
from gtl_nb.engine.stores import (
    MemoryBreakerStore,
    MemoryBudgetCounter,
    MemoryResponseCache,
    MemoryUsageLedger,
    SqliteBreakerStore,
    SqliteBudgetCounter,
    SqliteResponseCache,
    SqliteUsageLedger,
    Stores,
    open_stores,
)
from gtl_nb.engine.stores.urls import StoreURL, parse_store_url
from gtl_nb.protocol.errors import ConfigurationError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://", StoreURL("memory")),
        ("memory", StoreURL("memory")),
        ("MEMORY://", StoreURL("memory")),  # a scheme's case is no part of it (SQLite:/// was read too)
        ("sqlite:///relative/state.db", StoreURL("sqlite", Path("relative/state.db"))),
        ("sqlite:////var/lib/gtl/state.db", StoreURL("sqlite", Path("/var/lib/gtl/state.db"))),
        ("sqlite:///with%20space.db", StoreURL("sqlite", Path("with space.db"))),
    ],
)
def test_store_urls(url: str, expected: StoreURL):
    assert parse_store_url(url) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://cache/zero", "the path must be a database number"),
        ("postgresql+psycopg://db/gtl", "postgresql:// holds the usage ledger only"),
        ("ftp://x", "unknown store ftp://…; use memory:// or sqlite:///path"),
        ("sqlite://host/file.db", "names no file"),
        ("sqlite:///", "names no file"),
        ("/plain/path.db", "unknown store"),
        (3, "must be a string"),
        ("user:secret@host://x", "unknown store URL"),  # never quotes what may be a password
        ("alice:hunter2@db.example.com/ledger", "unknown store the URL given (not shown"),  # nor without a scheme
        ("db:6379/0?password=s3cret", "not shown: it may hold a password"),
        ("sqlite://admin:s3cret@db/x.db", "the URL given (not shown: it may hold a password) names no file"),
    ],
)
def test_store_url_mistakes_name_what_is_accepted(url: object, fragment: str):
    with pytest.raises(ConfigurationError, match="where-it-came-from") as info:
        parse_store_url(url, where="where-it-came-from")
    assert fragment in str(info.value)


def close(stores: Stores) -> None:
    run(stores.aclose())


def test_a_ledger_file_keeps_budgets_beside_it_and_the_rest_in_memory(tmp_path: Path):
    path = tmp_path / "ledger.sqlite3"
    stores = open_stores(path, budgets=BudgetConfig(default=Limits(requests_per_minute=1)))
    try:
        assert isinstance(stores.ledger, SqliteUsageLedger) and stores.ledger.path == path
        assert isinstance(stores.budgets, SqliteBudgetCounter) and stores.budgets.db.path == path
        assert isinstance(stores.cache, MemoryResponseCache)
        assert isinstance(stores.breakers, MemoryBreakerStore)
    finally:
        close(stores)


def test_urls_choose_each_store(tmp_path: Path):
    ledger_file, budget_file = tmp_path / "ledger.db", tmp_path / "budgets.db"
    stores = open_stores(
        f"sqlite:///{ledger_file}",  # an absolute path: sqlite:////tmp/...
        budgets=BudgetConfig(backend=f"sqlite:///{budget_file}"),
        cache=CacheConfig(backend=f"sqlite:///{tmp_path / 'cache.db'}", ttl=5),
        breaker=BreakerConfig(backend=f"sqlite:///{tmp_path / 'breakers.db'}"),
    )
    try:
        assert isinstance(stores.ledger, SqliteUsageLedger) and stores.ledger.path == ledger_file
        assert isinstance(stores.budgets, SqliteBudgetCounter) and stores.budgets.db.path == budget_file
        assert isinstance(stores.cache, SqliteResponseCache) and stores.cache.default_ttl == 5
        assert isinstance(stores.breakers, SqliteBreakerStore)
    finally:
        close(stores)


def test_a_relative_sqlite_url_is_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    stores = open_stores("sqlite:///data/ledger.sqlite3")
    close(stores)
    assert (tmp_path / "data" / "ledger.sqlite3").is_file()


def test_memory_everywhere_and_no_ledger():
    stores = open_stores("memory://", budgets=BudgetConfig(default=Limits(requests_per_minute=1)))
    assert isinstance(stores.ledger, MemoryUsageLedger)
    assert isinstance(stores.budgets, MemoryBudgetCounter)
    close(stores)
    bare = open_stores(None)
    assert bare.ledger is None and isinstance(bare.budgets, MemoryBudgetCounter)
    close(bare)


def test_the_default_ledger_is_the_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    stores = open_stores(None, default_ledger=True)
    try:
        assert isinstance(stores.ledger, SqliteUsageLedger)
        assert stores.ledger.path == tmp_path / "gtl_nb" / "ledger.sqlite3"
        assert isinstance(stores.budgets, SqliteBudgetCounter)
    finally:
        close(stores)


def test_ledger_objects_are_used_as_given(tmp_path: Path):
    own = MemoryUsageLedger()
    stores = open_stores(own)
    assert stores.ledger is own and isinstance(stores.budgets, MemoryBudgetCounter)
    close(stores)
    with Ledger(tmp_path / "kept.sqlite3") as kept:
        wrapped = open_stores(kept)
        assert isinstance(wrapped.ledger, SqliteUsageLedger) and wrapped.ledger.ledger is kept
        assert isinstance(wrapped.budgets, SqliteBudgetCounter)
        close(wrapped)
        assert kept.totals().requests == 0  # its owner's: still open
    in_memory = open_stores(":memory:")  # a private SQLite database: budgets cannot share it
    assert isinstance(in_memory.ledger, SqliteUsageLedger) and isinstance(in_memory.budgets, MemoryBudgetCounter)
    close(in_memory)


def test_a_store_in_the_wrong_backend_is_refused_clearly(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="the usage ledger does not live in Redis"):
        open_stores("redis://cache:6379/0")
    with pytest.raises(ConfigurationError, match=r"\[budgets\] backend: postgresql:// holds the usage ledger only"):
        BudgetConfig.from_dict({"backend": "postgresql://db/gtl"})
    with pytest.raises(ConfigurationError, match="ledger must be a path"):
        open_stores(42)  # type: ignore[arg-type]
    # what the ledger is told to use is what a ledger can be: PostgreSQL, never Redis
    for wrong in ("redis://cache:6379/0", "mysql://db/gtl", 42):
        with pytest.raises(ConfigurationError) as refused:
            open_stores(wrong)  # type: ignore[arg-type]
        assert "postgresql://" in str(refused.value), refused.value
        assert "use redis://" not in str(refused.value) and "or redis://" not in str(refused.value), refused.value
    stores = open_stores("MEMORY://")
    assert type(stores.ledger).__name__ == "MemoryUsageLedger"
    close(stores)
    with pytest.raises(ConfigurationError) as refused:
        open_stores("user:secret@db://x")
    assert "secret" not in str(refused.value)


def test_a_store_that_fails_to_open_closes_those_opened_before(tmp_path: Path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(ConfigurationError):
        open_stores(
            tmp_path / "ledger.sqlite3",
            cache=CacheConfig(backend=f"sqlite:///{blocker / 'cache.db'}"),
        )
    with Ledger(tmp_path / "kept.sqlite3") as kept:  # a ledger the caller passed in stays open
        with pytest.raises(ConfigurationError):
            open_stores(kept, cache=CacheConfig(backend=f"sqlite:///{blocker / 'cache.db'}"))
        assert kept.totals().requests == 0


def test_limits_on_a_shared_ledger_without_a_budgets_backend_are_warned_of(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Replicas sharing a PostgreSQL ledger, limits set and no ``[budgets] backend``: the budgets are each
    process's own (every replica counts alone, a restart forgets the day's spend). That is said at the start;
    without limits there is nothing to warn of, and a SQLite ledger's processes share its file."""
    spool = f"spool_path={tmp_path / 'spool.sqlite3'}"
    cases = [
        (BudgetConfig(users={"dave": {"usd_per_day": 1.0}}), True),
        (BudgetConfig(default=Limits(requests_per_minute=10)), True),
        (BudgetConfig(), False),
    ]
    for budgets, warned in cases:
        caplog.clear()
        stores = open_stores(f"{postgres_url}?{spool}", budgets=budgets)
        try:
            messages = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
            assert any('backend = "redis://' in message for message in messages) is warned, (budgets, messages)
        finally:
            run(stores.aclose())
    caplog.clear()
    stores = open_stores(tmp_path / "ledger.sqlite", budgets=BudgetConfig(default=Limits(requests_per_minute=10)))
    run(stores.aclose())
    assert not [record for record in caplog.records if record.levelname == "WARNING"]
