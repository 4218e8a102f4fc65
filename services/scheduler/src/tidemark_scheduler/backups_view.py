"""The scheduler's own view of backups, kept from ``backup.events``: what retention reads.

One row per backup with what retention needs (type, trigger, status, ``createdAt`` = the
time it was requested for) and what the PITR base needs (WAL range), in schema
``scheduler``; never the gateway's tables. Positions, version guards (redelivery,
re-publication, an event before its predecessor) are the platform's projection machinery
(``tidemark_platform.projection``), as for the catalog view.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from faststream.kafka import KafkaBroker
from tidemark_contracts import BACKUP_EVENTS, Envelope, Message, Topic, utc_now
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
    BackupFailed,
    BackupRequested,
    BackupStarted,
)
from tidemark_platform.consumer import Delivery, subscribe_tracked
from tidemark_platform.database import Connection, Pool, connection_pool
from tidemark_platform.logging import get_logger
from tidemark_platform.projection import OutOfOrder, ProjectionRunner
from tidemark_schedules.retention import BackupFacts

log = get_logger(__name__)

TABLE = "backups"


class BackupsView:
    """The backups table as a platform projection of ``backup.events``."""

    name = "scheduler-backups"
    topic: Topic = BACKUP_EVENTS
    tables: tuple[str, ...] = (TABLE,)

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.{TABLE} (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    environment_id uuid NOT NULL,
    type text NOT NULL,
    trigger text NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL,
    size_bytes bigint,
    completed_at timestamptz,
    wal_start_lsn text,
    wal_end_lsn text
);
CREATE INDEX IF NOT EXISTS backups_by_environment_status
    ON {schema}.{TABLE} (environment_id, status, created_at DESC, id);
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if isinstance(message, BackupRequested):
            # The row is born from the request; a status already there stays (it can only
            # be there if events were applied unguarded, in another order).
            await conn.execute(
                f"INSERT INTO {schema}.{TABLE} (id, organization_id, environment_id, type, "
                "trigger, status, created_at) VALUES (%s, %s, %s, %s, %s, 'pending', %s) "
                "ON CONFLICT (id) DO NOTHING",
                (
                    message.backup_id,
                    message.organization_id,
                    message.environment_id,
                    message.type,
                    message.trigger,
                    message.requested_at,
                ),
            )
            return
        columns: dict[str, object]
        if isinstance(message, BackupStarted):
            columns = {"status": "running"}
        elif isinstance(message, BackupCompleted):
            columns = {
                "status": "completed",
                "size_bytes": message.size_bytes,
                "completed_at": message.completed_at,
                "wal_start_lsn": message.wal_start_lsn,
                "wal_end_lsn": message.wal_end_lsn,
            }
        elif isinstance(message, BackupFailed):
            columns = {"status": "failed", "completed_at": message.failed_at}
        elif isinstance(message, BackupDeletionRequested | BackupCleanupFailed):
            columns = {"status": "deleting"}
        elif isinstance(message, BackupDeleted):
            columns = {"status": "deleted"}
        else:
            return  # per-destination uploads: nothing retention reads
        assignments = ", ".join(f"{column} = %s" for column in columns)
        cursor = await conn.execute(
            f"UPDATE {schema}.{TABLE} SET {assignments} WHERE id = %s RETURNING id",
            (*columns.values(), envelope.aggregate_id or getattr(message, "backup_id", None)),
        )
        if await cursor.fetchone() is None:
            # A backup's events share a partition and are relayed in order, so this should
            # not happen; raising rolls the position back and the event is retried.
            raise OutOfOrder(f"{envelope.message_type} of a backup before its request")


def _facts(row: dict[str, object]) -> BackupFacts:
    size = row["size_bytes"]
    return BackupFacts(
        backup_id=row["id"],  # type: ignore[arg-type]
        type=row["type"],  # type: ignore[arg-type]
        trigger=row["trigger"],  # type: ignore[arg-type]
        status=row["status"],  # type: ignore[arg-type]
        created_at=row["created_at"],  # type: ignore[arg-type]
        size_bytes=int(size) if isinstance(size, int) else None,
    )


class BackupsQuery:
    """Reads of the view for retention."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

    async def completed_backups(self, environment_id: uuid.UUID) -> Sequence[BackupFacts]:
        """The environment's completed backups (the only ones retention lists), newest
        first."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT id, type, trigger, status, created_at, size_bytes "
                f"FROM {self.schema}.{TABLE} WHERE environment_id = %s AND status = 'completed' "
                "ORDER BY created_at DESC, id",
                (environment_id,),
            )
            return [_facts(row) for row in await cursor.fetchall()]

    async def trigger_of(self, backup_id: uuid.UUID) -> str | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT trigger FROM {self.schema}.{TABLE} WHERE id = %s", (backup_id,)
            )
            row = await cursor.fetchone()
            return str(row["trigger"]) if row else None


ENFORCE_WITHIN = timedelta(hours=1)
"""How recent a completion must be to enforce retention (see ``BackupsFollower``)."""

OnScheduledCompleted = Callable[[uuid.UUID], Awaitable[object]]
"""Called with the environment id once a scheduled backup's completion is in the view."""


class BackupsFollower:
    """Keeps the view from ``backup.events`` and, once a scheduled backup's
    ``BackupCompleted`` is in it, calls ``on_scheduled_completed`` (retention enforcement).

    The call follows the view's commit: a failure there is retried with the message
    (the view's position makes the second apply a no-op, the enforcement is idempotent),
    and a redelivered completion enforces again, harmlessly.

    Only a completion within ``enforce_within`` of ``now()`` enforces. A scheduler that
    starts fresh replays ``backup.events`` from the beginning: enforcing after an old
    completion would judge the current settings on a view that lacks every later backup
    (and still holds backups deleted since), which can expire a backup the whole history
    keeps. The first recent completion, or the next schedule change, enforces on the
    complete view instead."""

    def __init__(
        self,
        database_url: str,
        schema: str,
        *,
        now: Callable[[], datetime] = utc_now,
        enforce_within: timedelta = ENFORCE_WITHIN,
    ) -> None:
        self.pool = connection_pool(database_url, min_size=1, max_size=4)
        self.runner = ProjectionRunner(self.pool, schema, BackupsView())
        self.query = BackupsQuery(self.pool, schema)
        self.on_scheduled_completed: OnScheduledCompleted | None = None
        self._now = now
        self._enforce_within = enforce_within

    async def open(self) -> None:
        """Open the pool and create the view's tables (before the consumer starts)."""
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as conn:
            await self.runner.migrate(conn)

    async def close(self) -> None:
        await self.pool.close()

    def subscribe(
        self, broker: KafkaBroker, group_id: str, *, service: str, topic: Topic = BACKUP_EVENTS
    ) -> None:
        """Follow ``topic`` (``backup.events``; a test names a copy of its own)."""
        subscribe_tracked(
            broker,
            topic,
            group_id,
            dict.fromkeys(topic.messages, self.handle),
            service=service,
            positions=self.runner.positions,
        )

    async def handle(self, message: Message, delivery: Delivery) -> None:
        await self.runner.apply_at(delivery.envelope, delivery.tracking, message)
        if not isinstance(message, BackupCompleted) or self.on_scheduled_completed is None:
            return
        if message.completed_at < self._now() - self._enforce_within:
            log.info("retention_not_enforced_for_old_completion", backup_id=str(message.backup_id))
            return
        if await self.query.trigger_of(message.backup_id) == "scheduled":
            await self.on_scheduled_completed(message.environment_id)
