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
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
    BackupFailed,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    BackupUploadFailed,
)
from tidemark_platform.database import Connection
from tidemark_platform.projection import OutOfOrder

from tidemark_api_gateway import wal

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
    "wal_start_lsn",
    "wal_end_lsn",
    "wal_timeline",
)


# What a list's ``total`` is summed from: one row per combination of these with its number
# of backups, kept by ``apply`` in the transaction that changes the backup's row. Generic
# over the values, so a status added later is counted without a change here.
COUNT_KEY = ("organization_id", "project_id", "environment_id", "status", "type")
CountKey = tuple[Any, ...]


def count_moves(before: Row | None, after: Row) -> list[tuple[CountKey, int]]:
    """How the counts change when a backup's row goes from ``before`` to ``after``: -1 for
    the key it left and +1 for the key it joined, none when the key stays. Sorted by key,
    so concurrent writers lock count rows in one order (no deadlock)."""
    old = tuple(before[c] for c in COUNT_KEY) if before is not None else None
    new = tuple(after[c] for c in COUNT_KEY)
    if old == new:
        return []
    moves = [(new, 1)] if old is None else [(old, -1), (new, 1)]
    return sorted(moves, key=lambda move: tuple(str(v) for v in move[0]))


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
        _record_wal_range(new, event)
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
    elif isinstance(event, BackupDeletionRequested | BackupCleanupFailed | BackupDeleted):
        new.update(_after_deletion_event(new, event))
    return new


def _after_deletion_event(
    row: Row, event: BackupDeletionRequested | BackupCleanupFailed | BackupDeleted
) -> Row:
    """The columns a deletion event changes. The row stays, with the backup's history."""
    if isinstance(event, BackupDeletionRequested):
        return {"status": "deleting"}
    if isinstance(event, BackupCleanupFailed):
        # Still deleting; the reason is shown until a later try succeeds.
        return {"status": "deleting", "error": event.error}
    return {
        "status": "deleted",
        "error": None,
        "destinations": [{**d, "status": "deleted"} for d in row.get("destinations", [])],
    }


def _record_wal_range(row: Row, event: BackupCompleted) -> None:
    """A ``full`` backup's WAL range (null for ``db`` backups and older events)."""
    row.update(
        wal_start_lsn=event.wal_start_lsn,
        wal_end_lsn=event.wal_end_lsn,
        wal_timeline=event.wal_timeline,
    )


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
    tables: tuple[str, ...] = ("backups", "backup_counts", *wal.TABLES)

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
ALTER TABLE {schema}.backups ADD COLUMN IF NOT EXISTS wal_timeline integer;
-- Versions are the platform's (projection_versions) since the projection moved there.
ALTER TABLE {schema}.backups DROP COLUMN IF EXISTS version;
CREATE INDEX IF NOT EXISTS backups_by_environment
    ON {schema}.backups (environment_id, created_at DESC, id);
CREATE INDEX IF NOT EXISTS backups_by_project
    ON {schema}.backups (organization_id, project_id, created_at DESC, id);
{self.paging_ddl(schema)}
{wal.ddl(schema)}"""

    def paging_ddl(self, schema: str) -> str:
        """What makes the list endpoints index-backed: an index per filter, in the lists'
        order (``created_at DESC, id``), and the counts that ``total`` is summed from, so
        no request counts the rows of a large environment. A deep ``offset`` still walks
        the index up to it (API.md fixes limit/offset paging)."""
        return f"""
CREATE INDEX IF NOT EXISTS backups_by_environment_status
    ON {schema}.backups (environment_id, status, created_at DESC, id);
CREATE INDEX IF NOT EXISTS backups_by_environment_type
    ON {schema}.backups (environment_id, type, created_at DESC, id);
CREATE INDEX IF NOT EXISTS backups_by_project_status
    ON {schema}.backups (organization_id, project_id, status, created_at DESC, id);
CREATE TABLE IF NOT EXISTS {schema}.backup_counts (
    organization_id uuid NOT NULL,
    project_id uuid NOT NULL,
    environment_id uuid NOT NULL,
    status text NOT NULL,
    type text NOT NULL,
    n bigint NOT NULL CHECK (n > 0),
    PRIMARY KEY (organization_id, project_id, environment_id, status, type)
);
CREATE INDEX IF NOT EXISTS backup_counts_by_environment
    ON {schema}.backup_counts (environment_id);
-- A read model from before the counts existed: count its rows once. Kept counts are
-- never empty while backups exist (a key whose count reaches 0 is deleted).
INSERT INTO {schema}.backup_counts ({", ".join(COUNT_KEY)}, n)
SELECT {", ".join(COUNT_KEY)}, count(*) FROM {schema}.backups
WHERE NOT EXISTS (SELECT 1 FROM {schema}.backup_counts)
GROUP BY {", ".join(COUNT_KEY)};
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if isinstance(message, wal.WAL_MESSAGES):
            # The environment's WAL archive, not a backup: its own tables.
            await wal.apply(conn, schema, envelope, message)
            return
        cursor = await conn.execute(
            f"SELECT * FROM {schema}.backups WHERE id = %s FOR UPDATE", (envelope.aggregate_id,)
        )
        old = await cursor.fetchone()
        new = next_row(old, message)
        values = [Jsonb(new.get(c)) if c == "destinations" else new.get(c) for c in COLUMNS]
        await conn.execute(
            f"INSERT INTO {schema}.backups (id, {', '.join(COLUMNS)}) "
            f"VALUES (%s, {', '.join(['%s'] * len(COLUMNS))}) "
            f"ON CONFLICT (id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS),
            [envelope.aggregate_id, *values],
        )
        await self.count(conn, schema, count_moves(old, new))

    async def count(self, conn: Connection, schema: str, moves: list[tuple[CountKey, int]]) -> None:
        """Apply ``count_moves`` to the counts table; a count that would reach 0 is deleted.
        (A decrement that finds no count changes nothing; ``compare`` after a rebuild shows
        such drift, since the counts are one of the view's tables.)"""
        key_columns = ", ".join(COUNT_KEY)
        match = " AND ".join(f"{c} = %s" for c in COUNT_KEY)
        for key, delta in moves:
            if delta > 0:
                await conn.execute(
                    f"INSERT INTO {schema}.backup_counts AS c ({key_columns}, n) "
                    f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT ({key_columns}) "
                    "DO UPDATE SET n = c.n + excluded.n",
                    [*key, delta],
                )
                continue
            cursor = await conn.execute(
                f"DELETE FROM {schema}.backup_counts WHERE {match} AND n <= %s",
                [*key, -delta],
            )
            if cursor.rowcount == 0:
                await conn.execute(
                    f"UPDATE {schema}.backup_counts SET n = n + %s WHERE {match}",
                    [delta, *key],
                )
