"""The catalog view: projects, environments and destinations as a service keeps them.

Registrations are events on ``catalog.events`` (recorded by the gateway's catalog event
store). Any service that needs them runs this projection into its own schema, so no
service reads another service's tables. Events of one environment share a partition, but
a project's and its environment's do not: the tables have no foreign keys, since either
may arrive first.
"""

from __future__ import annotations

from psycopg.types.json import Jsonb
from tidemark_contracts import CATALOG_EVENTS, Envelope, Message, Topic
from tidemark_contracts.catalog import (
    DestinationRegistered,
    DestinationRemoved,
    EnvironmentRegistered,
    ProjectRegistered,
)

from tidemark_platform.database import Connection


class CatalogView:
    name = "catalog"
    topic: Topic = CATALOG_EVENTS
    tables: tuple[str, ...] = ("projects", "environments", "destinations")

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.projects (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (organization_id, name)
);
CREATE TABLE IF NOT EXISTS {schema}.environments (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    project_id uuid NOT NULL,
    name text NOT NULL,
    database jsonb NOT NULL,
    cluster jsonb,
    files_path text,
    created_at timestamptz NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX IF NOT EXISTS environments_by_project
    ON {schema}.environments (organization_id, project_id, created_at DESC, id);
CREATE TABLE IF NOT EXISTS {schema}.destinations (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    type text NOT NULL,
    config jsonb NOT NULL,
    is_default boolean NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (organization_id, name)
);
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if isinstance(message, ProjectRegistered):
            await conn.execute(
                f"INSERT INTO {schema}.projects (id, organization_id, name, created_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (message.project_id, message.organization_id, message.name, message.registered_at),
            )
        elif isinstance(message, EnvironmentRegistered):
            await conn.execute(
                f"INSERT INTO {schema}.environments (id, organization_id, project_id, name, "
                "database, cluster, files_path, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (
                    message.environment_id,
                    message.organization_id,
                    message.project_id,
                    message.name,
                    Jsonb(message.database.model_dump(mode="json", by_alias=True)),
                    Jsonb(message.cluster.model_dump(mode="json", by_alias=True))
                    if message.cluster
                    else None,
                    message.files_path,
                    message.registered_at,
                ),
            )
        elif isinstance(message, DestinationRegistered):
            await conn.execute(
                f"INSERT INTO {schema}.destinations (id, organization_id, name, type, config, "
                "is_default, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING",
                (
                    message.destination_id,
                    message.organization_id,
                    message.name,
                    message.type,
                    Jsonb(message.config.model_dump(mode="json", by_alias=True, exclude={"kind"})),
                    message.is_default,
                    message.registered_at,
                ),
            )
        elif isinstance(message, DestinationRemoved):
            await conn.execute(
                f"DELETE FROM {schema}.destinations WHERE id = %s", (message.destination_id,)
            )
