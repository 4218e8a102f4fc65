"""The restore-runner's own view of ``backup.events`` (no service reads another's tables):
how backups ended (a restore waits for its safety backup here) and which WAL segments are
archived where (a point-in-time restore fetches them from here)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb
from tidemark_contracts import BACKUP_EVENTS, Envelope, Message, Topic
from tidemark_contracts.backup import BackupCompleted, BackupFailed, BackupRequested
from tidemark_contracts.wal import WalSegmentArchived
from tidemark_platform.database import Connection, Pool
from tidemark_recovery.wal import parse_segment_name


class BackupEventsView:
    name = "restore_runner_backups"
    topic: Topic = BACKUP_EVENTS
    tables: tuple[str, ...] = ("backups", "wal_segments")
    # Backups' and WAL archives' events both come here; only some are applied, and each
    # write is idempotent and never moves a backup back from its end.
    version_guard = False

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.backups (
    id uuid PRIMARY KEY,
    environment_id uuid NOT NULL,
    status text NOT NULL,
    error text
);
CREATE TABLE IF NOT EXISTS {schema}.wal_segments (
    environment_id uuid NOT NULL,
    segment text NOT NULL,
    timeline integer NOT NULL,
    segno bigint NOT NULL,
    start_lsn text NOT NULL,
    end_lsn text NOT NULL,
    first_record_at timestamptz,
    last_record_at timestamptz,
    checksum text NOT NULL,
    size_bytes bigint NOT NULL,
    copies jsonb NOT NULL,
    archived_at timestamptz NOT NULL,
    PRIMARY KEY (environment_id, segment)
);
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if isinstance(message, BackupRequested):
            await conn.execute(
                f"INSERT INTO {schema}.backups (id, environment_id, status) "
                "VALUES (%s, %s, 'pending') ON CONFLICT (id) DO NOTHING",
                (message.backup_id, message.environment_id),
            )
        elif isinstance(message, BackupCompleted | BackupFailed):
            status = "completed" if isinstance(message, BackupCompleted) else "failed"
            error = message.error if isinstance(message, BackupFailed) else None
            await conn.execute(
                f"INSERT INTO {schema}.backups (id, environment_id, status, error) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                "SET status = excluded.status, error = excluded.error "
                "WHERE backups.status NOT IN ('completed', 'failed')",
                (message.backup_id, message.environment_id, status, error),
            )
        elif isinstance(message, WalSegmentArchived):
            await conn.execute(
                f"INSERT INTO {schema}.wal_segments (environment_id, segment, timeline, segno, "
                "start_lsn, end_lsn, first_record_at, last_record_at, checksum, size_bytes, "
                "copies, archived_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                # A later archiving of the same name is a new history's segment (after
                # a reset; the stored file was overwritten): the row follows it.
                "ON CONFLICT (environment_id, segment) DO UPDATE SET "
                "start_lsn = excluded.start_lsn, end_lsn = excluded.end_lsn, "
                "first_record_at = excluded.first_record_at, "
                "last_record_at = excluded.last_record_at, checksum = excluded.checksum, "
                "size_bytes = excluded.size_bytes, copies = excluded.copies, "
                "archived_at = excluded.archived_at "
                "WHERE wal_segments.archived_at < excluded.archived_at",
                (
                    message.environment_id,
                    message.segment,
                    message.timeline,
                    parse_segment_name(message.segment)[1],
                    message.start_lsn,
                    message.end_lsn,
                    message.first_record_at,
                    message.last_record_at,
                    message.checksum,
                    message.size_bytes,
                    Jsonb([c.model_dump(mode="json", by_alias=True) for c in message.copies]),
                    message.archived_at,
                ),
            )


class BackupsReader:
    """Reads of the view, for the executor."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

    async def backup(self, backup_id: UUID) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT id, environment_id, status, error FROM {self.schema}.backups "
                "WHERE id = %s",
                (backup_id,),
            )
            row = await cursor.fetchone()
        return dict(row) if row is not None else None

    async def segments(self, environment_id: UUID) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT * FROM {self.schema}.wal_segments WHERE environment_id = %s "
                "ORDER BY timeline, segno",
                (environment_id,),
            )
            return [dict(r) for r in await cursor.fetchall()]

    async def has_segment(self, environment_id: UUID, segment: str) -> bool:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT 1 FROM {self.schema}.wal_segments "
                "WHERE environment_id = %s AND segment = %s",
                (environment_id, segment),
            )
            return await cursor.fetchone() is not None
