"""The gateway's PostgreSQL tables: registrations, read models, the outbox, positions."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

SCHEMA = "gateway"

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.projects (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (organization_id, name)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.environments (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    project_id uuid NOT NULL REFERENCES {SCHEMA}.projects (id),
    name text NOT NULL,
    database jsonb NOT NULL,
    cluster jsonb,
    files_path text,
    created_at timestamptz NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.destinations (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    type text NOT NULL,
    config jsonb NOT NULL,
    is_default boolean NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (organization_id, name)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.backups (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    project_id uuid NOT NULL,
    environment_id uuid NOT NULL,
    type text NOT NULL,
    trigger text NOT NULL,
    label text,
    status text NOT NULL,
    size_bytes bigint,
    checksum text,
    compression text,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    completed_at timestamptz,
    duration_ms bigint,
    error text,
    destinations jsonb NOT NULL DEFAULT '[]',
    wal_start_lsn text,
    wal_end_lsn text,
    version integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS backups_by_environment
    ON {SCHEMA}.backups (environment_id, created_at DESC, id);
CREATE INDEX IF NOT EXISTS backups_by_project
    ON {SCHEMA}.backups (organization_id, project_id, created_at DESC, id);
CREATE TABLE IF NOT EXISTS {SCHEMA}.outbox (
    position bigserial PRIMARY KEY,
    topic text NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{{}}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.consumer_positions (
    name text PRIMARY KEY,
    position bigint NOT NULL
);
"""


async def migrate(conn: AsyncConnection[DictRow]) -> None:
    # Several gateway instances may start at once; serialise their DDL.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7350001)")
        await conn.execute(DDL)
