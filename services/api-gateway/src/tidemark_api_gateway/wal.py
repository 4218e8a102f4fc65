"""The WAL read model: each environment's archive status and archived segments, kept from
the backup-runner's ``WalArchive`` events on ``backup.events`` (the backups view hands
them here, in its transaction, under its position and version guards)."""

from __future__ import annotations

from psycopg.types.json import Jsonb
from tidemark_contracts import Envelope, Message
from tidemark_contracts.wal import WalArchivingStatusChanged, WalGapDetected, WalSegmentArchived
from tidemark_platform.database import Connection
from tidemark_recovery.wal import parse_segment_name

WAL_MESSAGES = (WalSegmentArchived, WalGapDetected, WalArchivingStatusChanged)
TABLES = ("wal_archives", "wal_segments", "wal_gaps")


def ddl(schema: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {schema}.wal_archives (
    environment_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    status text NOT NULL,
    reason text,
    wal_retention_days integer,
    changed_at timestamptz NOT NULL,
    last_segment text,
    last_archived_at timestamptz
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
CREATE TABLE IF NOT EXISTS {schema}.wal_gaps (
    environment_id uuid NOT NULL,
    after_segment text,
    resumed_at text,
    reason text NOT NULL,
    detected_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS wal_gaps_by_environment ON {schema}.wal_gaps (environment_id);
"""


async def apply(conn: Connection, schema: str, envelope: Envelope, message: Message) -> None:
    """Change the WAL tables for one ``WalArchive`` event."""
    if isinstance(message, WalArchivingStatusChanged):
        await conn.execute(
            f"INSERT INTO {schema}.wal_archives (environment_id, organization_id, status, "
            "reason, wal_retention_days, changed_at) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (environment_id) DO UPDATE SET status = excluded.status, "
            "reason = excluded.reason, wal_retention_days = excluded.wal_retention_days, "
            "changed_at = excluded.changed_at",
            (
                message.environment_id,
                message.organization_id,
                message.status,
                message.reason,
                message.wal_retention_days,
                message.changed_at,
            ),
        )
    elif isinstance(message, WalSegmentArchived):
        timeline, segno = parse_segment_name(message.segment)
        await conn.execute(
            f"INSERT INTO {schema}.wal_segments (environment_id, segment, timeline, segno, "
            "start_lsn, end_lsn, first_record_at, last_record_at, checksum, size_bytes, copies, "
            "archived_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            # A later archiving of the same name is a new history's segment (after a
            # reset; the stored file was overwritten): the row follows it.
            "ON CONFLICT (environment_id, segment) DO UPDATE SET start_lsn = excluded.start_lsn, "
            "end_lsn = excluded.end_lsn, first_record_at = excluded.first_record_at, "
            "last_record_at = excluded.last_record_at, checksum = excluded.checksum, "
            "size_bytes = excluded.size_bytes, copies = excluded.copies, "
            "archived_at = excluded.archived_at "
            "WHERE wal_segments.archived_at < excluded.archived_at",
            (
                message.environment_id,
                message.segment,
                timeline,
                segno,
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
        await conn.execute(
            f"UPDATE {schema}.wal_archives SET last_segment = %s, last_archived_at = %s "
            "WHERE environment_id = %s",
            (message.segment, message.archived_at, message.environment_id),
        )
    elif isinstance(message, WalGapDetected):
        await conn.execute(
            f"INSERT INTO {schema}.wal_gaps (environment_id, after_segment, resumed_at, reason, "
            "detected_at) VALUES (%s, %s, %s, %s, %s)",
            (
                message.environment_id,
                message.after_segment,
                message.resumed_at,
                message.reason,
                message.detected_at,
            ),
        )
