"""``PooledConnections`` waits for a connection: a server that refuses a new one for good (a wrong
password, no such database, stopped) ends the wait at once; a server short of connections for now
("too many connections") does not — a busy connection of the pool comes back to the waiter."""

from __future__ import annotations

import asyncio

import psycopg
from psycopg_pool import AsyncConnectionPool

from gtl_nb.engine.stores.postgres_pool import ConnectErrors, PooledConnections


def test_a_role_at_its_connection_limit_waits_for_the_busy_connection(postgres_url: str):
    """A role limited to one connection: the second of two works waits while the first holds it; the
    pool's attempt to add one fails "too many connections for role" — which ended the wait at once."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS gtl_one_connection")
        conn.execute("CREATE ROLE gtl_one_connection LOGIN CONNECTION LIMIT 1")
    user = postgres_url.split("://", 1)[1].split("@", 1)[0]
    url = postgres_url.replace(f"://{user}@", "://gtl_one_connection@", 1)

    async def both() -> list[object]:
        errors = ConnectErrors()
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=2,
            open=False,
            connection_class=errors.connection_class(),
            kwargs={"autocommit": True},
        )
        await pool.open(wait=True)
        pooled = PooledConnections(pool, timeout=30.0, where="test", errors=errors)

        async def work(conn: psycopg.AsyncConnection) -> str:
            await conn.execute("SELECT pg_sleep(0.3)")
            return "ok"

        try:
            return await asyncio.gather(pooled.run(work), pooled.run(work), return_exceptions=True)
        finally:
            await pool.close()

    assert asyncio.run(both()) == ["ok", "ok"]
