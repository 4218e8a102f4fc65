"""The alerts read model: ``gateway.alerts`` (one row per alert) and
``gateway.webhook_deliveries`` (one row per delivery attempt), kept from ``alert.events``.

The topic carries two event stores' aggregates: the alerts service's ``Alert`` (raised,
repeated, resolved, read, dismissed) and its record of webhook delivery attempts. An
alert's events are applied in its version order (``guard_alert_version``: a redelivered or
re-published event changes nothing, one that overtook its predecessor waits for it). The
platform's own guard is off (``version_guard = False``) because it would also number the
delivery records, whose versions are the alerts service's business: each attempt is its
own row, keyed by (delivery, attempt), so it needs no order and a repeat changes nothing.

The rules are monotone besides: a read or dismissal keeps its first time (the gateway
writes it ahead of the event, in the transaction of the request, with this module's own
rule, unversioned), a repetition only moves ``occurrences`` and ``lastSeenAt`` forward.
"""

from __future__ import annotations

from tidemark_contracts import Envelope, Message, Topic
from tidemark_contracts.alert import (
    AlertDismissed,
    AlertRaised,
    AlertRead,
    AlertRepeated,
    AlertResolved,
    WebhookDeliveryAttempted,
)
from tidemark_contracts.topics import ALERT_EVENTS
from tidemark_platform.database import Connection
from tidemark_platform.projection import OutOfOrder

ALERT_EVENTS_OF_AN_ALERT = (AlertRaised, AlertRepeated, AlertResolved, AlertRead, AlertDismissed)


class AlertsView:
    name = "gateway-alerts"
    topic: Topic = ALERT_EVENTS
    tables: tuple[str, ...] = ("alerts", "webhook_deliveries")
    version_guard = False  # see the module docstring: alerts are guarded here, per alert

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
    subject text NOT NULL,
    title text NOT NULL,
    message text NOT NULL,
    occurrences integer NOT NULL,
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    read_at timestamptz,
    dismissed_at timestamptz,
    resolved_at timestamptz
);
CREATE INDEX IF NOT EXISTS alerts_by_organization
    ON {schema}.alerts (organization_id, created_at DESC, id);
CREATE INDEX IF NOT EXISTS alerts_undismissed_by_organization
    ON {schema}.alerts (organization_id, created_at DESC, id) WHERE dismissed_at IS NULL;
CREATE TABLE IF NOT EXISTS {schema}.webhook_deliveries (
    delivery_id uuid NOT NULL,
    attempt integer NOT NULL,
    webhook_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    alert_id uuid NOT NULL,
    change text NOT NULL,
    status text NOT NULL,
    response_status integer,
    error text,
    attempted_at timestamptz NOT NULL,
    next_attempt_at timestamptz,
    PRIMARY KEY (delivery_id, attempt)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_webhook
    ON {schema}.webhook_deliveries (organization_id, webhook_id, attempted_at DESC);
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if isinstance(message, WebhookDeliveryAttempted):
            await _delivery_attempted(conn, schema, message)
            return
        if not isinstance(message, ALERT_EVENTS_OF_AN_ALERT):
            return
        if not await guard_alert_version(conn, schema, self.name, envelope, message.alert_id):
            return
        if isinstance(message, AlertRaised):
            await _raised(conn, schema, message)
            return
        if isinstance(message, AlertRepeated):
            cursor = await conn.execute(
                f"UPDATE {schema}.alerts SET "
                "title = CASE WHEN occurrences < %(n)s THEN %(title)s ELSE title END, "
                "message = CASE WHEN occurrences < %(n)s THEN %(message)s ELSE message END, "
                "environment_id = coalesce(%(env)s, environment_id), "
                "backup_id = CASE WHEN occurrences < %(n)s THEN %(backup)s ELSE backup_id END, "
                "restore_id = CASE WHEN occurrences < %(n)s THEN %(restore)s ELSE restore_id END, "
                "occurrences = greatest(occurrences, %(n)s), "
                "last_seen_at = greatest(last_seen_at, %(at)s) "
                "WHERE id = %(id)s",
                {
                    "n": message.occurrences,
                    "title": message.title,
                    "message": message.message,
                    "env": message.environment_id,
                    "backup": message.backup_id,
                    "restore": message.restore_id,
                    "at": message.last_seen_at,
                    "id": message.alert_id,
                },
            )
        elif isinstance(message, AlertResolved):
            cursor = await conn.execute(
                f"UPDATE {schema}.alerts SET resolved_at = coalesce(resolved_at, %s) WHERE id = %s",
                (message.resolved_at, message.alert_id),
            )
        elif isinstance(message, AlertRead):
            cursor = await conn.execute(
                f"UPDATE {schema}.alerts SET read_at = coalesce(read_at, %s) WHERE id = %s",
                (message.read_at, message.alert_id),
            )
        else:
            cursor = await conn.execute(
                f"UPDATE {schema}.alerts SET dismissed_at = coalesce(dismissed_at, %s) "
                "WHERE id = %s",
                (message.dismissed_at, message.alert_id),
            )
        if cursor.rowcount == 0:
            # One alert's events share a partition and are relayed in order; should one
            # come before the alert's raising, raising rolls back and it is retried.
            raise OutOfOrder(f"{message.message_type} of an alert before it was raised")


async def guard_alert_version(
    conn: Connection, schema: str, projection: str, envelope: Envelope, alert_id: object
) -> bool:
    """True when the event is the alert's next one (or carries no version: the gateway's
    own write ahead of the event); False when it was applied before; ``OutOfOrder`` when
    an earlier one is missing. Versions are kept in the platform's ``projection_versions``."""
    if envelope.aggregate_version is None or envelope.aggregate_id != alert_id:
        return True
    cursor = await conn.execute(
        f"SELECT version FROM {schema}.projection_versions "
        "WHERE projection = %s AND aggregate_id = %s FOR UPDATE",
        (projection, envelope.aggregate_id),
    )
    row = await cursor.fetchone()
    stored = row["version"] if row else 0
    if envelope.aggregate_version <= stored:
        return False
    if envelope.aggregate_version > stored + 1:
        raise OutOfOrder(
            f"{envelope.message_type} version {envelope.aggregate_version} of alert "
            f"{envelope.aggregate_id} arrived after version {stored}"
        )
    await conn.execute(
        f"INSERT INTO {schema}.projection_versions (projection, aggregate_id, version) "
        "VALUES (%s, %s, %s) ON CONFLICT (projection, aggregate_id) "
        "DO UPDATE SET version = excluded.version",
        (projection, envelope.aggregate_id, envelope.aggregate_version),
    )
    return True


async def _raised(conn: Connection, schema: str, message: AlertRaised) -> None:
    await conn.execute(
        f"INSERT INTO {schema}.alerts (id, organization_id, project_id, environment_id, "
        "backup_id, restore_id, destination_id, kind, severity, subject, title, message, "
        "occurrences, created_at, last_seen_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s) "
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
            message.subject,
            message.title,
            message.message,
            message.raised_at,
            message.raised_at,
        ),
    )


async def _delivery_attempted(
    conn: Connection, schema: str, message: WebhookDeliveryAttempted
) -> None:
    await conn.execute(
        f"INSERT INTO {schema}.webhook_deliveries (delivery_id, attempt, webhook_id, "
        "organization_id, alert_id, change, status, response_status, error, attempted_at, "
        "next_attempt_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (delivery_id, attempt) DO NOTHING",
        (
            message.delivery_id,
            message.attempt,
            message.webhook_id,
            message.organization_id,
            message.alert_id,
            message.change,
            message.status,
            message.response_status,
            message.error,
            message.attempted_at,
            message.next_attempt_at,
        ),
    )
