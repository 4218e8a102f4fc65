"""What is to be delivered: a projection of ``alert.events`` into ``alert_webhooks`` that
keeps a snapshot of every alert (to send it as it stands after each change) and, for each
change and each webhook of the organization that wants the alert's kind, one delivery row.

The row holds the body; the deliverer signs it afresh at every attempt (the signature's
timestamp is the attempt's). The delivery id is derived from the webhook and the event, so
an event read twice (a relay re-publishing, a redelivery) adds no second delivery.

Which changes a webhook gets: those that happened at or after its registration, whichever
of the two this service reads first. Registrations come on ``catalog.events`` through a
consumer of their own, so a change may be read before the registration that precedes it:
every change is kept for a while (``alert_changes``), and a registration read late is
owed the changes since its time (``WebhookRegistrations``). Both sides take the
organization's lock first, so neither misses what the other commits at the same time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from tidemark_contracts import Envelope, Message, Topic, utc_now
from tidemark_contracts.alert import (
    AlertDismissed,
    AlertRaised,
    AlertRead,
    AlertRepeated,
    AlertResolved,
)
from tidemark_contracts.catalog import WebhookRegistered, WebhookRemoved
from tidemark_contracts.topics import ALERT_EVENTS
from tidemark_contracts.webhooks import AlertResource, WebhookEvent, WebhookPayload
from tidemark_platform.catalog import WebhookCatalogView
from tidemark_platform.database import Connection, advisory_key
from tidemark_platform.logging import get_logger

from tidemark_alerts.webhooks.domain import delivery_id

log = get_logger(__name__)

# How long changes are kept for registrations read after them: far beyond any consumer
# lag this service survives without an operator.
CHANGES_KEPT = timedelta(days=7)
# The advisory lock class of an organization's webhook changes and registrations (the
# project's lock classes: 7350010 schema DDL, 7350020 schedules, 7350030 restore targets).
WEBHOOK_ORGANIZATION_LOCK_CLASS = 7350040

ALERT_COLUMNS = (
    "id, organization_id, project_id, environment_id, backup_id, restore_id, destination_id, "
    "kind, severity, title, message, occurrences, created_at, last_seen_at, read_at, "
    "dismissed_at, resolved_at"
)


class AlertDeliveriesProjection:
    name = "alert-webhooks"
    topic: Topic = ALERT_EVENTS
    tables: tuple[str, ...] = ("alerts", "deliveries")
    # Every change here is idempotent and order-tolerant (first times kept, counts only
    # grow, deliveries keyed by event), and the topic also carries the deliveries' own
    # events: no gap-free version order to wait for, so a gap never blocks a partition.
    version_guard = False

    def __init__(self, on_new_deliveries: Callable[[], None] | None = None) -> None:
        self._on_new_deliveries = on_new_deliveries

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.alerts (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    project_id uuid,
    environment_id uuid,
    backup_id uuid,
    restore_id uuid,
    destination_id uuid,
    kind text NOT NULL,
    severity text NOT NULL,
    title text NOT NULL,
    message text NOT NULL,
    occurrences integer NOT NULL,
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    read_at timestamptz,
    dismissed_at timestamptz,
    resolved_at timestamptz
);
CREATE TABLE IF NOT EXISTS {schema}.deliveries (
    delivery_id uuid PRIMARY KEY,
    webhook_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    alert_id uuid NOT NULL,
    environment_id uuid,
    change text NOT NULL,
    body text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    claimed_by uuid,
    claim_expires_at timestamptz,
    last_response_status integer,
    last_error text
);
CREATE INDEX IF NOT EXISTS deliveries_due
    ON {schema}.deliveries (next_attempt_at) WHERE status = 'pending';
""" + changes_ddl(schema)

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        change = await self._change_snapshot(conn, schema, message)
        if change is None:
            return
        webhook_event, occurred_at = change
        alert_id = message.alert_id  # type: ignore[attr-defined]
        cursor = await conn.execute(
            f"SELECT {ALERT_COLUMNS} FROM {schema}.alerts WHERE id = %s", (alert_id,)
        )
        row = await cursor.fetchone()
        if row is None:
            # Its AlertRaised was never seen here (older than the topic's retention).
            log.warning("webhook_alert_unknown", alert_id=str(alert_id), change=webhook_event)
            return
        alert = AlertResource.model_validate(row)
        await lock_organization(conn, alert.organization_id)
        await conn.execute(
            f"INSERT INTO {schema}.alert_changes (event_id, organization_id, kind, change, "
            "occurred_at, alert) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                envelope.message_id,
                alert.organization_id,
                alert.kind,
                webhook_event,
                occurred_at,
                alert.model_dump_json(by_alias=True),
            ),
        )
        cursor = await conn.execute(
            f"SELECT id FROM {schema}.webhooks WHERE organization_id = %s "
            "AND (cardinality(kinds) = 0 OR %s = ANY(kinds)) AND created_at <= %s",
            (alert.organization_id, alert.kind, occurred_at),
        )
        inserted = 0
        for webhook in await cursor.fetchall():
            inserted += await add_delivery(
                conn, schema, webhook["id"], envelope.message_id, webhook_event, occurred_at, alert
            )
        if inserted and self._on_new_deliveries is not None:
            self._on_new_deliveries()

    async def _change_snapshot(
        self, conn: Connection, schema: str, message: Message
    ) -> tuple[WebhookEvent, datetime] | None:
        """Apply the change to the alert's snapshot; the webhook event it is and when it
        happened, or None for messages that are no alert change (delivery attempts)."""
        table = f"{schema}.alerts"
        if isinstance(message, AlertRaised):
            await conn.execute(
                f"INSERT INTO {table} ({ALERT_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s, NULL, NULL, NULL) "
                "ON CONFLICT (id) DO NOTHING",
                (
                    message.alert_id,
                    message.organization_id,
                    message.project_id,
                    message.environment_id,
                    message.backup_id,
                    message.restore_id,
                    message.destination_id,
                    message.kind,
                    message.severity,
                    message.title,
                    message.message,
                    message.raised_at,
                    message.raised_at,
                ),
            )
            return "alert.raised", message.raised_at
        update: tuple[str, tuple[Any, ...], WebhookEvent, datetime]
        if isinstance(message, AlertRepeated):
            update = (
                "environment_id = COALESCE(%s, environment_id), "
                "backup_id = COALESCE(%s, backup_id), restore_id = COALESCE(%s, restore_id), "
                "title = CASE WHEN occurrences <= %s THEN %s ELSE title END, "
                "message = CASE WHEN occurrences <= %s THEN %s ELSE message END, "
                "occurrences = GREATEST(occurrences, %s), "
                "last_seen_at = GREATEST(last_seen_at, %s)",
                (
                    message.environment_id,
                    message.backup_id,
                    message.restore_id,
                    message.occurrences,
                    message.title,
                    message.occurrences,
                    message.message,
                    message.occurrences,
                    message.last_seen_at,
                ),
                "alert.repeated",
                message.last_seen_at,
            )
        elif isinstance(message, AlertResolved):
            update = (
                "resolved_at = COALESCE(resolved_at, %s)",
                (message.resolved_at,),
                "alert.resolved",
                message.resolved_at,
            )
        elif isinstance(message, AlertRead):
            update = (
                "read_at = COALESCE(read_at, %s)",
                (message.read_at,),
                "alert.read",
                message.read_at,
            )
        elif isinstance(message, AlertDismissed):
            update = (
                "dismissed_at = COALESCE(dismissed_at, %s)",
                (message.dismissed_at,),
                "alert.dismissed",
                message.dismissed_at,
            )
        else:
            return None  # WebhookDeliveryAttempted: our own record, nothing to deliver
        assignments, params, webhook_event, occurred_at = update
        await conn.execute(
            f"UPDATE {table} SET {assignments} WHERE id = %s", (*params, message.alert_id)
        )
        return webhook_event, occurred_at


def changes_ddl(schema: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {schema}.alert_changes (
    event_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    kind text NOT NULL,
    change text NOT NULL,
    occurred_at timestamptz NOT NULL,
    alert text NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_changes_by_organization
    ON {schema}.alert_changes (organization_id, occurred_at);
"""


async def lock_organization(conn: Connection, organization_id: UUID) -> None:
    """Serialise, per organization, the changes and the registrations read at once."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(%s, %s)",
        advisory_key(WEBHOOK_ORGANIZATION_LOCK_CLASS, str(organization_id)),
    )


async def add_delivery(
    conn: Connection,
    schema: str,
    webhook_id: UUID,
    event_id: UUID,
    webhook_event: WebhookEvent,
    occurred_at: datetime,
    alert: AlertResource,
) -> int:
    """One delivery of one change to one webhook; 0 when it exists already."""
    delivery = delivery_id(webhook_id, event_id)
    body = WebhookPayload(
        id=delivery,
        type=webhook_event,
        webhook_id=webhook_id,
        occurred_at=occurred_at,
        alert=alert,
    ).model_dump_json(by_alias=True)
    now = utc_now()
    result = await conn.execute(
        f"INSERT INTO {schema}.deliveries (delivery_id, webhook_id, organization_id, "
        "alert_id, environment_id, change, body, created_at, next_attempt_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (delivery_id) DO NOTHING",
        (
            delivery,
            webhook_id,
            alert.organization_id,
            alert.id,
            alert.environment_id,
            webhook_event,
            body,
            now,
            now,
        ),
    )
    return result.rowcount


class WebhookRegistrations(WebhookCatalogView):
    """The organization's webhooks, as the platform's view keeps them; and for a webhook
    read after changes that happened since its registration, those changes' deliveries."""

    def __init__(self, on_new_deliveries: Callable[[], None] | None = None) -> None:
        self._on_new_deliveries = on_new_deliveries

    def ddl(self, schema: str) -> str:
        return super().ddl(schema) + changes_ddl(schema)

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if isinstance(message, WebhookRegistered | WebhookRemoved):
            await lock_organization(conn, message.organization_id)
        await super().apply(conn, schema, envelope, message)
        if not isinstance(message, WebhookRegistered):
            return
        await conn.execute(
            f"DELETE FROM {schema}.alert_changes WHERE organization_id = %s AND occurred_at < %s",
            (message.organization_id, utc_now() - CHANGES_KEPT),
        )
        cursor = await conn.execute(
            f"SELECT c.event_id, c.change, c.occurred_at, c.alert FROM {schema}.alert_changes c "
            f"JOIN {schema}.webhooks w ON w.id = %s "
            "WHERE c.organization_id = %s AND c.occurred_at >= %s "
            "AND (cardinality(w.kinds) = 0 OR c.kind = ANY(w.kinds)) "
            "ORDER BY c.occurred_at, c.event_id",
            (message.webhook_id, message.organization_id, message.registered_at),
        )
        inserted = 0
        for change in await cursor.fetchall():
            inserted += await add_delivery(
                conn,
                schema,
                message.webhook_id,
                change["event_id"],
                change["change"],
                change["occurred_at"],
                AlertResource.model_validate_json(change["alert"]),
            )
        if inserted:
            log.info("webhook_owed_changes_added", webhook_id=str(message.webhook_id), n=inserted)
            if self._on_new_deliveries is not None:
                self._on_new_deliveries()
