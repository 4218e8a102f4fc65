"""The catalog view: projects, environments and destinations as a service keeps them; and
apart, the webhooks, for the service that delivers them (the gateway keeps its own).

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
    WebhookRegistered,
    WebhookRemoved,
)

from tidemark_platform.database import Connection


def webhooks_ddl(schema: str) -> str:
    """An organization's webhook endpoints (``kinds`` empty: every alert kind)."""
    return f"""
CREATE TABLE IF NOT EXISTS {schema}.webhooks (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    url text NOT NULL,
    signing_secret_ref text NOT NULL,
    kinds text[] NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_by_organization ON {schema}.webhooks (organization_id);
"""


async def apply_webhook_event(conn: Connection, schema: str, message: Message) -> None:
    """Keep ``webhooks`` from WebhookRegistered/WebhookRemoved; other messages: nothing."""
    if isinstance(message, WebhookRegistered):
        await conn.execute(
            f"INSERT INTO {schema}.webhooks (id, organization_id, url, signing_secret_ref, "
            "kinds, created_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (
                message.webhook_id,
                message.organization_id,
                message.url,
                message.signing_secret_ref,
                list(message.kinds),
                message.registered_at,
            ),
        )
    elif isinstance(message, WebhookRemoved):
        await conn.execute(f"DELETE FROM {schema}.webhooks WHERE id = %s", (message.webhook_id,))


class WebhookCatalogView:
    """Only the webhooks of the catalog: what a service that delivers webhooks needs."""

    name = "catalog-webhooks"
    topic: Topic = CATALOG_EVENTS
    tables: tuple[str, ...] = ("webhooks",)

    def ddl(self, schema: str) -> str:
        return webhooks_ddl(schema)

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        await apply_webhook_event(conn, schema, message)


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
