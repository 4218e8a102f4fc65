"""The backups read model, kept from the backup-runner's domain events on Kafka.

``apply_event`` is the pure rule (row + event → row). ``BackupProjection`` applies it with
the consumer's position in the same transaction, and guards on the aggregate version, so
a redelivered or re-published event changes nothing.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import Tracking
from psycopg.types.json import Jsonb
from tidemark_contracts import BACKUP_EVENTS, Envelope
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
)

from tidemark_api_gateway.readmodel import SCHEMA, Pool

Row = dict[str, Any]

COLUMNS = (
    "organization_id",
    "project_id",
    "environment_id",
    "type",
    "trigger",
    "label",
    "status",
    "size_bytes",
    "checksum",
    "compression",
    "created_at",
    "started_at",
    "completed_at",
    "duration_ms",
    "error",
    "destinations",
    "version",
)


def _destination(ref: Any) -> dict[str, Any]:
    return {
        "destinationId": str(ref.destination_id),
        "name": ref.name,
        "type": ref.type,
        "status": "pending",
        "location": None,
        "sizeBytes": None,
        "uploadedAt": None,
    }


class OutOfOrder(Exception):
    """A backup's later event arrived before its creation: retry, never drop it."""


def apply_event(row: Row | None, envelope: Envelope) -> Row | None:
    """The row after the event, or None when the event changes nothing (unknown type)."""
    message_class = BACKUP_EVENTS.message_class(envelope.message_type)
    if message_class is None:
        return None
    event = message_class.model_validate(envelope.payload)
    new: Row = dict(row or {})
    new["version"] = envelope.aggregate_version or 0
    if isinstance(event, BackupRequested):
        new.setdefault("status", "pending")
        new.update(
            organization_id=event.organization_id,
            project_id=event.project_id,
            environment_id=event.environment_id,
            type=event.type,
            trigger=event.trigger,
            label=event.label,
            created_at=new.get("created_at") or event.requested_at,
        )
        if not new.get("destinations"):
            new["destinations"] = [_destination(d) for d in event.destinations]
    elif row is None:
        # Events of one backup share a partition and are relayed in order, so this should
        # not happen; if it does, raising rolls the position back and the event is retried.
        raise OutOfOrder(
            f"{envelope.message_type} of backup {envelope.aggregate_id} before its creation"
        )
    elif isinstance(event, BackupStarted):
        new.update(status="running", started_at=event.started_at)
        if event.attempt > 1:
            # A new attempt starts over: an earlier attempt's uploads were discarded.
            new["destinations"] = [
                {**d, "status": "pending", "location": None, "sizeBytes": None, "uploadedAt": None}
                for d in new.get("destinations", [])
            ]
    elif isinstance(event, BackupUploaded):
        new["destinations"] = [
            {
                **d,
                "status": "uploaded",
                "location": event.location,
                "sizeBytes": event.size_bytes,
                "uploadedAt": event.uploaded_at.isoformat(),
            }
            if d["destinationId"] == str(event.destination_id)
            else d
            for d in new.get("destinations", [])
        ]
    elif isinstance(event, BackupCompleted):
        new.update(
            status="completed",
            size_bytes=event.size_bytes,
            checksum=event.checksum,
            compression=event.compression,
            completed_at=event.completed_at,
            duration_ms=event.duration_ms,
            error=None,
        )
    elif isinstance(event, BackupFailed):
        new.update(
            status="failed",
            error=event.error,
            completed_at=event.failed_at,
            destinations=[
                {**d, "status": "failed"} if d["status"] == "pending" else d
                for d in new.get("destinations", [])
            ],
        )
        if new.get("started_at"):
            new["duration_ms"] = int((event.failed_at - new["started_at"]).total_seconds() * 1000)
    return new


class BackupProjection:
    def __init__(self, pool: Pool, name: str = "gateway-projection") -> None:
        self._pool = pool
        self._name = name

    async def handle(self, envelope: Envelope, tracking: Tracking) -> None:
        if envelope.aggregate_id is None:
            return
        async with self._pool.connection() as conn, conn.transaction():
            position = await conn.execute(
                f"INSERT INTO {SCHEMA}.consumer_positions AS p (name, position) "
                "VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET position = excluded.position "
                "WHERE p.position < excluded.position RETURNING position",
                (f"{self._name}:{tracking.application_name}", tracking.notification_id),
            )
            if await position.fetchone() is None:
                return  # this offset was applied before: redelivery after a crash
            cursor = await conn.execute(
                f"SELECT * FROM {SCHEMA}.backups WHERE id = %s FOR UPDATE",
                (envelope.aggregate_id,),
            )
            row = await cursor.fetchone()
            if row is not None and row["version"] >= (envelope.aggregate_version or 0):
                return  # already reflects this event (re-published by a relay)
            new = apply_event(row, envelope)
            if new is None:
                return
            values = [Jsonb(new.get(c)) if c == "destinations" else new.get(c) for c in COLUMNS]
            await conn.execute(
                f"INSERT INTO {SCHEMA}.backups (id, {', '.join(COLUMNS)}) "
                f"VALUES (%s, {', '.join(['%s'] * len(COLUMNS))}) "
                f"ON CONFLICT (id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS),
                [envelope.aggregate_id, *values],
            )
