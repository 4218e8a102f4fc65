"""Alerts: read and dismiss one (the alerts service owns the alert; the gateway sends it
the command and shows the change at once).

Marking an alert read (or dismissed) sets ``readAt`` (``dismissedAt``) on the gateway's row,
only when it is null, and enqueues ``MarkAlertRead`` (``DismissAlert``) with that time as
``requestedAt``, in one transaction: the answer, the command and the alerts service's event
agree on the time, and ``202``-style durability holds while Kafka is away. A repeat finds
the time set and changes nothing, sends nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Literal

from psycopg.rows import DictRow
from tidemark_contracts import Envelope, Message, utc_now
from tidemark_contracts.alert import AlertDismissed, AlertRead, DismissAlert, MarkAlertRead
from tidemark_contracts.topics import ALERT_COMMANDS
from tidemark_platform.projection import ProjectionRunner

from tidemark_api_gateway.application import PRODUCER
from tidemark_api_gateway.outbox import enqueue
from tidemark_api_gateway.readmodel import SCHEMA

Mark = Literal["read", "dismissed"]


class Alerts:
    def __init__(self, alerts_view: ProjectionRunner, wake_relays: Callable[[], None]) -> None:
        self.view = alerts_view
        self._wake_relays = wake_relays

    async def mark(
        self,
        organization_id: uuid.UUID,
        alert_id: uuid.UUID,
        mark: Mark,
        requested_by: str,
        correlation_id: uuid.UUID | None = None,
    ) -> DictRow | None:
        """Mark the organization's alert read or dismissed; its row as it stands after, or
        None when the organization has no such alert."""
        column = "read_at" if mark == "read" else "dismissed_at"
        sent = False
        async with self.view.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    f"SELECT * FROM {SCHEMA}.alerts WHERE organization_id = %s AND id = %s "
                    "FOR UPDATE",
                    (organization_id, alert_id),
                )
            ).fetchone()
            if row is None:
                return None
            if row[column] is None:
                now = utc_now()
                command: Message
                change: Message
                if mark == "read":
                    command = MarkAlertRead(
                        alert_id=alert_id,
                        organization_id=organization_id,
                        environment_id=row["environment_id"],
                        requested_by=requested_by,
                        requested_at=now,
                    )
                    change = AlertRead(
                        alert_id=alert_id,
                        organization_id=organization_id,
                        environment_id=row["environment_id"],
                        read_by=requested_by,
                        read_at=now,
                    )
                else:
                    command = DismissAlert(
                        alert_id=alert_id,
                        organization_id=organization_id,
                        environment_id=row["environment_id"],
                        requested_by=requested_by,
                        requested_at=now,
                    )
                    change = AlertDismissed(
                        alert_id=alert_id,
                        organization_id=organization_id,
                        environment_id=row["environment_id"],
                        dismissed_by=requested_by,
                        dismissed_at=now,
                    )
                # The row as the alerts service's event will make it, by the view's own
                # rule, unversioned (the real event still applies, and keeps this time).
                await self.view.apply_now(self._envelope(change, row), conn)
                await enqueue(conn, ALERT_COMMANDS, self._envelope(command, row, correlation_id))
                sent = True
            row = await (
                await conn.execute(f"SELECT * FROM {SCHEMA}.alerts WHERE id = %s", (alert_id,))
            ).fetchone()
        if sent:
            self._wake_relays()
        return row

    @staticmethod
    def _envelope(
        message: Message, row: DictRow, correlation_id: uuid.UUID | None = None
    ) -> Envelope:
        # Keyed as the alert's own events: its environment, else its organization.
        return Envelope.wrap(
            message,
            producer=PRODUCER,
            organization_id=row["organization_id"],
            environment_id=row["environment_id"],
            aggregate_id=row["id"],
            correlation_id=correlation_id,
        )
