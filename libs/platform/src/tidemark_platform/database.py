"""PostgreSQL connection settings: one URL, a schema per service."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

Connection = AsyncConnection[DictRow]
Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


def connection_pool(database_url: str, *, min_size: int = 2, max_size: int = 20) -> Pool:
    """An (unopened) pool of autocommit connections whose rows are dicts: what read
    models and their queries use."""
    pool: Pool = AsyncConnectionPool(
        database_url,
        open=False,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True},
        connection_class=AsyncConnection,
    )
    return pool


def eventstore_env(database_url: str, schema: str) -> dict[str, str]:
    """The eventsourcing library's environment for a PostgreSQL event store in ``schema``."""
    info = conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(info.get("dbname", "postgres")),
        "POSTGRES_HOST": str(info.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(info.get("port", "5432")),
        "POSTGRES_USER": str(info.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(info.get("password", "")),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": "5",
        "POSTGRES_MAX_OVERFLOW": "5",
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_PRE_PING": "y",
        "CREATE_TABLE": "y",
    }


# Advisory-lock class under which a schema's tables are created (see ``creating_tables``).
SCHEMA_DDL_LOCK_CLASS = 7350010


def advisory_key(lock_class: int, name: str) -> tuple[int, int]:
    """An advisory lock key for ``name``: stable across processes, versions and hosts
    (a digest of the name, not Python's per-process ``hash``)."""
    digest = hashlib.sha256(name.encode()).digest()
    return lock_class, int.from_bytes(digest[:4], "big", signed=True)


@contextlib.contextmanager
def creating_tables(database_url: str, schema: str) -> Iterator[None]:
    """Hold the schema's DDL lock while its tables are created: PostgreSQL's ``CREATE
    TABLE IF NOT EXISTS`` is not safe against itself, and instances of one service start
    together (two of them failed with a duplicate ``pg_type`` entry on a fresh database)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", advisory_key(SCHEMA_DDL_LOCK_CLASS, schema))
        yield  # the lock ends with the session


def ensure_schema(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


async def can_reach(database_url: str, connect_timeout: int = 3) -> bool:
    try:
        conn = await psycopg.AsyncConnection.connect(
            database_url, connect_timeout=connect_timeout, autocommit=True
        )
    except psycopg.Error:
        return False
    async with conn:
        await conn.execute("SELECT 1")
    return True
