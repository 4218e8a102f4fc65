"""The gateway's PostgreSQL schema: its outbox here, and the read models' tables, which
their projections declare (the catalog view, the backups view)."""

from __future__ import annotations

from tidemark_platform.database import Connection, Pool
from tidemark_platform.projection import ProjectionRunner

SCHEMA = "gateway"

__all__ = ["SCHEMA", "Pool", "migrate"]

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.outbox (
    position bigserial PRIMARY KEY,
    topic text NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{{}}',
    created_at timestamptz NOT NULL DEFAULT now()
);
"""


# Several gateway instances may start at once: their DDL runs one at a time.
MIGRATION_LOCK = 7350001


async def migrate(conn: Connection, *views: ProjectionRunner) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(DDL)
        for view in views:
            await view.migrate(conn)
