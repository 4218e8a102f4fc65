"""The restores read model (``gateway.restores``), kept from the restore-runner's events.

``RestoreRequested`` is also applied by the gateway itself, unversioned, in the transaction
that accepts the restore (read-your-write, as for backups); the runner's own copy of it
then changes nothing, and its later events apply in order by version.
"""

from __future__ import annotations

from tidemark_contracts import Envelope, Message, Topic
from tidemark_contracts.restore import (
    RestoreCompleted,
    RestoreFailed,
    RestoreMilestone,
    RestoreRequested,
    RestoreStarted,
)
from tidemark_contracts.topics import RESTORE_EVENTS
from tidemark_platform.database import Connection


class RestoresView:
    name = "restores"
    topic: Topic = RESTORE_EVENTS
    tables: tuple[str, ...] = ("restores",)

    def ddl(self, schema: str) -> str:
        return f"""
CREATE TABLE IF NOT EXISTS {schema}.restores (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    project_id uuid NOT NULL,
    backup_id uuid NOT NULL,
    base_backup_id uuid NOT NULL,
    source_environment_id uuid NOT NULL,
    target_environment_id uuid NOT NULL,
    target_type text NOT NULL,
    restore_type text NOT NULL,
    pitr_timestamp timestamptz,
    safety_backup_id uuid,
    status text NOT NULL,
    requested_by text NOT NULL,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    completed_at timestamptz,
    duration_ms bigint,
    error text,
    target_unchanged boolean
);
CREATE INDEX IF NOT EXISTS restores_by_source
    ON {schema}.restores (organization_id, source_environment_id, created_at DESC);
CREATE INDEX IF NOT EXISTS restores_by_target
    ON {schema}.restores (organization_id, target_environment_id, created_at DESC);
CREATE INDEX IF NOT EXISTS restores_by_backup
    ON {schema}.restores (organization_id, backup_id, created_at DESC);
"""

    async def apply(
        self, conn: Connection, schema: str, envelope: Envelope, message: Message
    ) -> None:
        if isinstance(message, RestoreRequested):
            await conn.execute(
                f"INSERT INTO {schema}.restores (id, organization_id, project_id, backup_id, "
                "base_backup_id, source_environment_id, target_environment_id, target_type, "
                "restore_type, pitr_timestamp, safety_backup_id, status, requested_by, "
                "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', "
                "%s, %s) ON CONFLICT (id) DO NOTHING",
                (
                    message.restore_id,
                    message.organization_id,
                    message.project_id,
                    message.backup_id,
                    message.base_backup_id,
                    message.source_environment_id,
                    message.target_environment_id,
                    message.target_type,
                    message.restore_type,
                    message.pitr_timestamp,
                    message.safety_backup_id,
                    message.requested_by,
                    message.requested_at,
                ),
            )
        elif isinstance(message, RestoreStarted):
            await conn.execute(
                f"UPDATE {schema}.restores SET status = 'running', "
                "started_at = coalesce(started_at, %s) WHERE id = %s",
                (message.started_at, message.restore_id),
            )
        elif isinstance(message, RestoreCompleted):
            await conn.execute(
                f"UPDATE {schema}.restores SET status = 'completed', completed_at = %s, "
                "duration_ms = %s, error = NULL WHERE id = %s",
                (message.completed_at, message.duration_ms, message.restore_id),
            )
        elif isinstance(message, RestoreFailed):
            await conn.execute(
                f"UPDATE {schema}.restores SET status = 'failed', completed_at = %s, "
                "started_at = coalesce(started_at, %s), error = %s, target_unchanged = %s, "
                "duration_ms = (extract(epoch FROM %s - coalesce(started_at, %s)) * 1000)::bigint "
                "WHERE id = %s",
                (
                    message.failed_at,
                    message.failed_at,
                    message.error,
                    message.target_unchanged,
                    message.failed_at,
                    message.failed_at,
                    message.restore_id,
                ),
            )
        elif isinstance(message, RestoreMilestone):
            return  # milestones are history (the event store); the resource has no field
