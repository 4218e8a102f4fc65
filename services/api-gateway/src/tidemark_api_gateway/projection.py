"""The backups read model, kept from the backup-runner's domain events on Kafka.

``next_row`` is the pure rule (row + event → row); ``BackupsView`` declares the table
and applies the rule. Positions, version guards and rebuilds are the platform's
(``tidemark_platform.projection``).
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb
from tidemark_contracts import BACKUP_EVENTS, Envelope, Message, Topic
from tidemark_contracts.backup import (
    BackupCompleted,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    BackupUploadFailed,
)
from tidemark_platform.database import Connection
from tidemark_platform.projection import OutOfOrder

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


def next_row(row: Row | None, event: Message) -> Row:
    """The backup's row after ``event`` (one of ``backup.events``' messages)."""
    new: Row = dict(row or {})
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
        raise OutOfOrder(f"{event.message_type} of a backup before its creation")
    elif isinstance(event, BackupStarted):
        new.update(status="running", started_at=event.started_at)
        if event.attempt > 1:
            # A new attempt starts over: an earlier attempt's uploads were discarded.
            new["destinations"] = [
                {
                    **d,
                    "status": "pending",
                    "location": None,
                    "sizeBytes": None,
                    "uploadedAt": None,
                    "error": None,
                }
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
    elif isinstance(event, BackupUploadFailed):
        new["destinations"] = _destination_failed(new.get("destinations", []), event)
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


def _destination_failed(destinations: list[dict[str, Any]], event: BackupUploadFailed) -> list[Any]:
    """One destination could not take the artifact: it says so, and why; the others are
    as they were (the backup may still complete with them)."""
    return [
        {
            **d,
            "status": "failed",
            "location": None,
            "sizeBytes": None,
            "uploadedAt": None,
            "error": event.error,
        }
        if d["destinationId"] == str(event.destination_id)
        else d
        for d in destinations
    ]


class BackupsView:
    """The backups read model as a platform projection of ``backup.events``."""

    name = "gateway-backups"
    topic: Topic = BACKUP_EVENTS
    tables: tuple[str, ...] = ("backups",)

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.backups (
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
    wal_end_lsn text
);
-- Versions are the platform's (projection_versions) since the projection moved there.
ALTER TABLE {schema}.backups DROP COLUMN IF EXISTS version;
CREATE INDEX IF NOT EXISTS backups_by_environment
    ON {schema}.backups (environment_id, created_at DESC, id);
CREATE INDEX IF NOT EXISTS backups_by_project
    ON {schema}.backups (organization_id, project_id, created_at DESC, id);
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        cursor = await conn.execute(
            f"SELECT * FROM {schema}.backups WHERE id = %s FOR UPDATE", (envelope.aggregate_id,)
        )
        new = next_row(await cursor.fetchone(), message)
        values = [Jsonb(new.get(c)) if c == "destinations" else new.get(c) for c in COLUMNS]
        await conn.execute(
            f"INSERT INTO {schema}.backups (id, {', '.join(COLUMNS)}) "
            f"VALUES (%s, {', '.join(['%s'] * len(COLUMNS))}) "
            f"ON CONFLICT (id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS),
            [envelope.aggregate_id, *values],
        )
