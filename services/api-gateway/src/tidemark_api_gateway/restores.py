"""Restores: the checks of API.md's "Restore validation" and the one transaction that
accepts a restore (its pending row, the target's safety backup and the command)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import DictRow
from tidemark_contracts import Envelope, utc_now
from tidemark_contracts.backup import DatabaseTarget, DestinationTarget
from tidemark_contracts.catalog import ClusterSpec
from tidemark_contracts.restore import (
    ArtifactCopy,
    RequestRestore,
    RestoreRequested,
    RestoreSource,
    RestoreTarget,
    RestoreTargetType,
)
from tidemark_contracts.topics import RESTORE_COMMANDS
from tidemark_platform.database import advisory_key
from tidemark_platform.projection import ProjectionRunner
from tidemark_recovery.coverage import RestorePlan

from tidemark_api_gateway import pitr, queries
from tidemark_api_gateway.application import PRODUCER, DestinationGone, Gateway
from tidemark_api_gateway.outbox import enqueue
from tidemark_api_gateway.problems import Problem, invalid, not_found
from tidemark_api_gateway.readmodel import SCHEMA, Pool

# Restore requests into one target take turns (on any gateway instance): each sees
# whether another is pending or running. Keyed by the target environment.
RESTORE_TARGET_LOCK_CLASS = 7350030
BUSY = ("pending", "running")


@dataclass(frozen=True)
class RestoreRequest:
    backup_id: uuid.UUID
    body_backup_id: uuid.UUID | None
    target_type: RestoreTargetType
    target_environment_id: uuid.UUID | None
    pitr_timestamp: datetime | None
    create_safety_backup: bool


class Restores:
    def __init__(self, gateway: Gateway, restores_view: ProjectionRunner, pool: Pool) -> None:
        self.gateway = gateway
        self.view = restores_view
        self.pool = pool

    async def request(
        self,
        organization_id: uuid.UUID,
        requested_by: str,
        body: RestoreRequest,
        correlation_id: uuid.UUID | None,
    ) -> uuid.UUID:
        """Validate and accept a restore; raises ``Problem`` (404, 409, 422) otherwise."""
        backup = await queries.backup(self.pool, organization_id, body.backup_id)
        if backup is None:
            raise not_found("backup")
        if body.body_backup_id is not None and body.body_backup_id != body.backup_id:
            raise invalid("backupId", "must equal the backup id of the path")
        if body.target_type == "new":
            raise invalid("targetType", "'new' is disabled until environment provisioning exists")
        target_id = await self._target_id(backup, body)
        target = await queries.environment(self.pool, organization_id, target_id)
        if target is None:
            raise not_found("target environment")
        if backup["status"] != "completed":
            raise invalid(
                "backupId",
                f"the backup is {backup['status']}: only a completed backup can be restored",
            )
        base = backup
        wal_destinations: list[DestinationTarget] = []
        wal_until: str | None = None
        if body.pitr_timestamp is not None:
            base, plan = await self._pitr_base(organization_id, backup, body.pitr_timestamp)
            wal_destinations = await self._wal_destinations(
                organization_id, backup["environment_id"], plan
            )
            wal_until = plan.segments[-1] if plan.segments else None
        if base["type"] == "full" and target["cluster"] is None:
            raise invalid(
                "targetEnvironmentId",
                "a full or point-in-time restore needs the target environment's cluster; "
                "it has none",
            )
        copies = await self._copies(organization_id, base)
        safety_destinations: list[DictRow] = []
        if body.create_safety_backup:
            safety_destinations = await self._safety_destinations(organization_id, target_id)
        restore_id = uuid.uuid4()
        safety = None
        if body.create_safety_backup:
            safety = self.gateway.backup_request(
                organization_id=organization_id,
                requested_by=requested_by,
                environment=target,
                destinations=safety_destinations,
                backup_type=base["type"],
                label=f"safety backup before restore {restore_id}",
                correlation_id=correlation_id or restore_id,
            )
        command = RequestRestore(
            restore_id=restore_id,
            organization_id=organization_id,
            backup_id=backup["id"],
            source_environment_id=backup["environment_id"],
            target_type=body.target_type,
            pitr_timestamp=body.pitr_timestamp,
            safety_backup_id=safety[0].backup_id if safety else None,
            requested_by=requested_by,
            requested_at=utc_now(),
            source=RestoreSource(
                backup_id=base["id"],
                environment_id=base["environment_id"],
                type=base["type"],
                size_bytes=base["size_bytes"],
                checksum=base["checksum"],
                compression=base["compression"] or "zstd",
                wal_start_lsn=base.get("wal_start_lsn"),
                wal_end_lsn=base.get("wal_end_lsn"),
                wal_timeline=base.get("wal_timeline"),
                copies=copies,
                wal_destinations=wal_destinations,
                wal_until_segment=wal_until,
            ),
            target=RestoreTarget(
                environment_id=target_id,
                organization_id=organization_id,
                project_id=target["project_id"],
                database=DatabaseTarget.model_validate(target["database"]),
                cluster=ClusterSpec.model_validate(target["cluster"])
                if target["cluster"]
                else None,
                files_path=target["files_path"],
            ),
        )
        await self._accept(command, correlation_id, safety)
        return restore_id

    async def _target_id(self, backup: DictRow, body: RestoreRequest) -> uuid.UUID:
        if body.target_type == "same":
            if (
                body.target_environment_id is not None
                and body.target_environment_id != backup["environment_id"]
            ):
                raise invalid(
                    "targetEnvironmentId",
                    "targetType 'same' restores into the backup's own environment; "
                    "leave targetEnvironmentId out or name that one",
                )
            environment_id: uuid.UUID = backup["environment_id"]
            return environment_id
        if body.target_environment_id is None:
            raise invalid("targetEnvironmentId", "required when targetType is 'other'")
        return body.target_environment_id

    async def _pitr_base(
        self, organization_id: uuid.UUID, backup: DictRow, at: datetime
    ) -> tuple[DictRow, RestorePlan]:
        async with self.pool.connection() as conn:
            plan = await pitr.pitr_plan(conn, backup["environment_id"], at)
        if not isinstance(plan, RestorePlan):
            start = plan.start.isoformat().replace("+00:00", "Z") if plan.start else None
            end = plan.end.isoformat().replace("+00:00", "Z") if plan.end else None
            coverage = f"from {start} to {end}" if start and end else "none"
            raise Problem(
                422,
                f"pitrTimestamp is outside the environment's PITR coverage (coverage: {coverage})",
                [{"field": "pitrTimestamp", "message": f"outside the coverage ({coverage})"}],
            )
        base = await queries.backup(self.pool, organization_id, plan.base.backup_id)
        if base is None or base["status"] != "completed":
            raise Problem(409, "the base backup of that point in time changed meanwhile; retry")
        return base, plan

    async def _wal_destinations(
        self, organization_id: uuid.UUID, environment_id: uuid.UUID, plan: RestorePlan
    ) -> list[DestinationTarget]:
        """The registered destinations that hold the plan's segments: the runner fetches
        WAL from these (besides the base's), since segments are stored wherever the
        schedule's destinations were when they were archived."""
        async with self.pool.connection() as conn:
            rows = await pitr.wal_destinations(conn, organization_id, environment_id, plan.segments)
        return [DestinationTarget.of(r["id"], r["name"], r["type"], r["config"]) for r in rows]

    async def _copies(self, organization_id: uuid.UUID, backup: DictRow) -> list[ArtifactCopy]:
        stored = [
            d for d in backup["destinations"] if d.get("status") == "uploaded" and d.get("location")
        ]
        found = await queries.destinations(
            self.pool, organization_id, [uuid.UUID(str(d["destinationId"])) for d in stored]
        )
        by_id = {str(row["id"]): row for row in found}
        copies = [
            ArtifactCopy(
                destination=DestinationTarget.of(
                    row["id"], row["name"], row["type"], row["config"]
                ),
                location=d["location"],
            )
            for d in stored
            if (row := by_id.get(str(d["destinationId"]))) is not None
        ]
        if not copies:
            raise invalid("backupId", "no registered destination holds the backup's artifact")
        return copies

    async def _safety_destinations(
        self, organization_id: uuid.UUID, target_id: uuid.UUID
    ) -> list[DictRow]:
        scheduled = await queries.schedule_destinations(self.pool, organization_id, target_id)
        if scheduled:
            return scheduled
        defaults = await queries.default_destinations(self.pool, organization_id)
        if not defaults:
            raise invalid(
                "createSafetyBackup",
                "the target environment has no schedule and the organization no default "
                "destination to hold its safety backup; set createSafetyBackup to false",
            )
        return defaults

    async def _accept(
        self,
        command: RequestRestore,
        correlation_id: uuid.UUID | None,
        safety: tuple[object, Envelope, Envelope] | None,
    ) -> None:
        target_id = command.target.environment_id
        requested = Envelope.wrap(
            RestoreRequested(
                restore_id=command.restore_id,
                organization_id=command.organization_id,
                project_id=command.target.project_id,
                backup_id=command.backup_id,
                base_backup_id=command.source.backup_id,
                source_environment_id=command.source_environment_id,
                target_environment_id=target_id,
                target_type=command.target_type,
                restore_type=command.source.type,
                pitr_timestamp=command.pitr_timestamp,
                safety_backup_id=command.safety_backup_id,
                requested_by=command.requested_by,
                requested_at=command.requested_at,
            ),
            producer=PRODUCER,
            organization_id=command.organization_id,
            environment_id=target_id,
            aggregate_id=command.restore_id,
        )
        envelope = Envelope.wrap(
            command,
            producer=PRODUCER,
            organization_id=command.organization_id,
            environment_id=target_id,
            aggregate_id=command.restore_id,
            correlation_id=correlation_id or command.restore_id,
        )
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                advisory_key(RESTORE_TARGET_LOCK_CLASS, str(target_id)),
            )
            busy = await (
                await conn.execute(
                    f"SELECT id FROM {SCHEMA}.restores WHERE target_environment_id = %s "
                    "AND status = ANY(%s) LIMIT 1",
                    (target_id, list(BUSY)),
                )
            ).fetchone()
            if busy is not None:
                raise Problem(
                    409,
                    f"a restore into the target environment is already pending or running "
                    f"({busy['id']})",
                )
            if safety is not None:
                backup_command, backup_envelope, pending = safety
                try:
                    await self.gateway.enqueue_backup(
                        conn,
                        backup_command,  # type: ignore[arg-type]
                        backup_envelope,
                        pending,
                    )
                except DestinationGone:
                    raise Problem(
                        409,
                        "a destination of the safety backup was removed meanwhile; nothing "
                        "was requested",
                    ) from None
            await self.view.apply_now(requested, conn)
            await enqueue(conn, RESTORE_COMMANDS, envelope)
        self.gateway._wake_relays()


async def restore_row(
    pool: Pool, organization_id: uuid.UUID, restore_id: uuid.UUID
) -> DictRow | None:
    return await queries.one(
        pool,
        f"SELECT * FROM {SCHEMA}.restores WHERE organization_id = %s AND id = %s",
        (organization_id, restore_id),
    )


async def latest_restore_of(
    pool: Pool, organization_id: uuid.UUID, backup_id: uuid.UUID
) -> DictRow | None:
    return await queries.one(
        pool,
        f"SELECT * FROM {SCHEMA}.restores WHERE organization_id = %s AND backup_id = %s "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        (organization_id, backup_id),
    )
