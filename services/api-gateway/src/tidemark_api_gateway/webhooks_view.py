"""The webhooks read model (``gateway.webhooks``): the organization's webhook registrations,
kept from ``WebhookRegistered``/``WebhookRemoved`` on ``catalog.events``.

The gateway records both in its catalog event store and applies them here at once (the
client reads its write); the relayed copies then change nothing. A removed webhook keeps
its row, marked ``removed_at``: a registration redelivered after its removal must not bring
it back, and the rules need no version guard (``version_guard = False``: the catalog topic
carries every registration's aggregates, which this view has no business numbering).
"""

from __future__ import annotations

from psycopg.types.json import Jsonb
from tidemark_contracts import CATALOG_EVENTS, Envelope, Message, Topic
from tidemark_contracts.catalog import WebhookRegistered, WebhookRemoved
from tidemark_platform.database import Connection
from tidemark_platform.projection import OutOfOrder


class WebhooksView:
    name = "gateway-webhooks"
    topic: Topic = CATALOG_EVENTS
    tables: tuple[str, ...] = ("webhooks",)
    version_guard = False

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.webhooks (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    url text NOT NULL,
    signing_secret_ref text NOT NULL,
    kinds jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    removed_at timestamptz
);
CREATE INDEX IF NOT EXISTS webhooks_by_organization
    ON {schema}.webhooks (organization_id, created_at DESC, id) WHERE removed_at IS NULL;
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if isinstance(message, WebhookRegistered):
            await conn.execute(
                f"INSERT INTO {schema}.webhooks (id, organization_id, url, signing_secret_ref, "
                "kinds, created_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (
                    message.webhook_id,
                    message.organization_id,
                    message.url,
                    message.signing_secret_ref,
                    Jsonb(list(message.kinds)),
                    message.registered_at,
                ),
            )
        elif isinstance(message, WebhookRemoved):
            cursor = await conn.execute(
                f"UPDATE {schema}.webhooks SET removed_at = coalesce(removed_at, %s) "
                "WHERE id = %s AND organization_id = %s",
                (message.removed_at, message.webhook_id, message.organization_id),
            )
            if cursor.rowcount == 0:
                # One webhook's events share a partition (keyed by its organization) and
                # are relayed in order, so this waits for a registration still on its way.
                raise OutOfOrder("WebhookRemoved of a webhook before its registration")
        # Projects, environments, destinations: the catalog view's.
