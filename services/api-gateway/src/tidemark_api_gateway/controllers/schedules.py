"""An environment's backup schedule, the cron presets, and the retention preview."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from litestar import Controller, Request, get, post, put
from litestar.status_codes import HTTP_200_OK
from psycopg.rows import DictRow
from tidemark_contracts import utc_now
from tidemark_contracts.schedule import RetentionSettings, ScheduleSettings
from tidemark_schedules import cron, retention
from tidemark_schedules.validation import FieldProblem, InvalidSchedule, effective_settings
from tidemark_schedules.validation import next_fires as schedule_next_fires

from tidemark_api_gateway import queries
from tidemark_api_gateway.application import Gateway, UnknownDestinations
from tidemark_api_gateway.auth import Principal
from tidemark_api_gateway.controllers.common import answers
from tidemark_api_gateway.problems import Problem, not_found
from tidemark_api_gateway.readmodel import Pool
from tidemark_api_gateway.requests import RequestContext
from tidemark_api_gateway.schedules import settings_of
from tidemark_api_gateway.schemas import (
    CronPresetOut,
    DeletedBackupOut,
    KeptBackupOut,
    RetentionIn,
    RetentionPreviewOut,
    RetentionSummaryOut,
    ScheduleIn,
    ScheduleOut,
)

SCHEDULE = "/environments/{env_id:uuid}/backups/schedule"


async def _environment(pool: Pool, principal: Principal, env_id: uuid.UUID) -> DictRow:
    row = await queries.environment(pool, principal.organization_id, env_id)
    if row is None:
        raise not_found("environment")
    return row


def unprocessable(problems: list[FieldProblem]) -> Problem:
    return Problem(
        422,
        "; ".join(f"{p.field}: {p.message}" for p in problems),
        [{"field": p.field, "message": p.message} for p in problems],
    )


def cluster_problems(settings: ScheduleSettings, environment: DictRow) -> list[FieldProblem]:
    """What the schedule asks of an environment without its own cluster (API.md: without
    it, ``full`` backups and PITR are refused)."""
    if environment["cluster"] is not None:
        return []
    problems = []
    if settings.full_frequency != "none":
        problems.append(
            FieldProblem(
                "fullFrequency",
                "full backups need the environment's cluster; this one has none (use none)",
            )
        )
    if settings.wal_enabled:
        problems.append(
            FieldProblem("walEnabled", "WAL archiving needs the environment's cluster; it has none")
        )
    return problems


def schedule_out(row: DictRow) -> ScheduleOut:
    settings = settings_of(row)
    fires = schedule_next_fires(settings, utc_now())
    return ScheduleOut.model_validate(
        {
            **settings.model_dump(),
            "environment_id": row["environment_id"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "next_db_backup_at": fires["db"],
            "next_full_backup_at": fires["full"],
        }
    )


class ScheduleController(Controller):
    tags = ["schedules"]

    @get(SCHEDULE, responses=answers(404))
    async def get_schedule(
        self, principal: Principal, env_id: uuid.UUID, pool: Pool
    ) -> ScheduleOut:
        """The environment's schedule; 404 when the environment has none."""
        await _environment(pool, principal, env_id)
        row = await queries.schedule(pool, principal.organization_id, env_id)
        if row is None:
            raise not_found("schedule")
        return schedule_out(row)

    @put(SCHEDULE, responses=answers(404))
    async def put_schedule(
        self,
        request: Request[Principal, str, Any],
        principal: Principal,
        env_id: uuid.UUID,
        data: ScheduleIn,
        gateway: Gateway,
        pool: Pool,
    ) -> ScheduleOut:
        """Create or replace the schedule; it takes effect in the scheduler at once.
        Besides the body's own rules, 422 for a destination that is not the
        organization's, and for ``full`` backups or WAL of an environment without its
        cluster."""
        environment = await _environment(pool, principal, env_id)
        body = ScheduleSettings.model_validate(data.model_dump())
        problems: list[FieldProblem] = []
        try:
            settings = effective_settings(body)
        except InvalidSchedule as exc:
            problems += exc.problems
            settings = body
        problems += cluster_problems(settings, environment)
        if problems:
            raise unprocessable(problems)
        try:
            await gateway.configure_schedule(
                organization_id=principal.organization_id,
                requested_by=principal.subject,
                environment=environment,
                settings=settings,
                correlation_id=RequestContext.of(request).correlation_id,
            )
        except UnknownDestinations as exc:
            raise unprocessable(
                [FieldProblem(f"destinationIds[{i}]", "unknown destination") for i in exc.indexes]
            ) from None
        row = await queries.schedule(pool, principal.organization_id, env_id)
        assert row is not None  # written by the request's own transaction
        return schedule_out(row)

    @post(f"{SCHEDULE}/retention-preview", status_code=HTTP_200_OK, responses=answers(404))
    async def preview_retention(
        self, principal: Principal, env_id: uuid.UUID, data: RetentionIn, pool: Pool
    ) -> RetentionPreviewOut:
        """What retention with these settings would keep and delete among the
        environment's completed backups now: periods in the schedule's zone (UTC without a
        schedule), the PITR base as the schedule's WAL settings make it."""
        await _environment(pool, principal, env_id)
        row = await queries.schedule(pool, principal.organization_id, env_id)
        schedule = settings_of(row) if row is not None else None
        rows = await queries.completed_backups(pool, principal.organization_id, env_id)
        facts = [
            retention.BackupFacts(
                backup_id=r["id"],
                type=r["type"],
                trigger=r["trigger"],
                status=r["status"],
                created_at=r["created_at"],
                size_bytes=r["size_bytes"],
            )
            for r in rows
        ]
        # Tens of milliseconds of CPU for thousands of backups: off the event loop.
        plan = await asyncio.to_thread(
            retention.schedule_plan,
            facts,
            RetentionSettings.model_validate(data.model_dump()),
            zone=schedule.timezone if schedule is not None else "UTC",
            wal_enabled=schedule is not None and schedule.wal_enabled,
            wal_retention_days=schedule.wal_retention_days if schedule is not None else None,
            now=utc_now(),
        )
        return RetentionPreviewOut(
            keep=[
                KeptBackupOut(
                    backup_id=k.backup.backup_id,
                    created_at=k.backup.created_at,
                    type=k.backup.type,
                    reasons=list(k.reasons),
                )
                for k in plan.keep
            ],
            delete=[
                DeletedBackupOut(
                    backup_id=d.backup.backup_id,
                    created_at=d.backup.created_at,
                    type=d.backup.type,
                    rule=d.rule,
                )
                for d in plan.delete
            ],
            summary=RetentionSummaryOut(
                keep=len(plan.keep), delete=len(plan.delete), freed_bytes=plan.freed_bytes
            ),
        )

    @get("/backups/cron-presets", responses=answers())
    async def list_cron_presets(self) -> list[CronPresetOut]:
        """Common schedules: ``cron`` with its ``frequency`` (``custom`` where no frequency
        names it, e.g. every 6 hours: give it as ``dbCron`` with frequency custom)."""
        return [
            CronPresetOut(id=p.id, label=p.label, cron=p.cron, frequency=p.frequency)
            for p in cron.PRESETS
        ]
