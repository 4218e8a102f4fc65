"""Firing one schedule type: read its due time, find what to back up in the scheduler's
catalog view, record the fire (or the misses) in the event store, and say when to look
next. The timer calls it; it never publishes anything itself (the relay does)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from prometheus_client import Counter, Histogram
from tidemark_contracts.backup import BackupType, DatabaseTarget, DestinationTarget
from tidemark_platform.database import Pool
from tidemark_platform.logging import get_logger

from tidemark_scheduler.application import SchedulerApplication
from tidemark_scheduler.domain import FireTargets
from tidemark_scheduler.timer import Clock

log = get_logger(__name__)

FIRES = Counter(
    "tidemark_scheduler_fires_total", "Scheduled backups requested (each fire time once)", ["type"]
)
MISSES = Counter(
    "tidemark_scheduler_missed_total",
    "Fire times recorded missed (ScheduleMissed counts them)",
    ["type"],
)
CATALOG_WAITS = Counter(
    "tidemark_scheduler_catalog_waits_total",
    "Fires put off because the catalog view lacks the environment or a destination",
)
LATENESS = Histogram(
    "tidemark_scheduler_fire_lateness_seconds",
    "How long after its fire time a backup was requested",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300, 900, 3600),
)

UNKNOWN_ENVIRONMENT = "the environment is not in the scheduler's catalog view"
UNKNOWN_DESTINATION = "a destination of the schedule is not in the scheduler's catalog view"


class Targets(Protocol):
    async def lookup(
        self, organization_id: UUID, environment_id: UUID, destination_ids: Sequence[UUID]
    ) -> FireTargets | str:
        """What a backup of the environment is taken of and written to, or why not (the
        view lags the gateway, or a destination is gone)."""
        ...


class CatalogTargets:
    """``Targets`` from the scheduler's own catalog view (schema ``scheduler``)."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema

    async def lookup(
        self, organization_id: UUID, environment_id: UUID, destination_ids: Sequence[UUID]
    ) -> FireTargets | str:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT project_id, database FROM {self._schema}.environments "
                "WHERE id = %s AND organization_id = %s",
                (environment_id, organization_id),
            )
            environment = await cursor.fetchone()
            cursor = await conn.execute(
                f"SELECT id, name, type, config FROM {self._schema}.destinations "
                "WHERE organization_id = %s AND id = ANY(%s)",
                (organization_id, list(destination_ids)),
            )
            rows = {row["id"]: row for row in await cursor.fetchall()}
        if environment is None:
            return UNKNOWN_ENVIRONMENT
        if any(d not in rows for d in destination_ids):
            return UNKNOWN_DESTINATION
        database = DatabaseTarget.model_validate(environment["database"])
        destinations = [
            DestinationTarget.of(d, rows[d]["name"], rows[d]["type"], rows[d]["config"])
            for d in destination_ids
        ]
        return FireTargets(
            project_id=environment["project_id"],
            database=database.model_dump(mode="json", by_alias=True),
            destinations=[d.model_dump(mode="json", by_alias=True) for d in destinations],
        )


class Firing:
    """The timer's ``Fire``: fires (schedule, type) when due, returns when to look next."""

    def __init__(
        self,
        app: SchedulerApplication,
        targets: Targets,
        clock: Clock,
        *,
        grace: timedelta,
        retry: timedelta,
        on_saved: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.targets = targets
        self.clock = clock
        self.grace = grace
        self.retry = retry
        self.on_saved = on_saved

    async def __call__(self, schedule_id: UUID, backup_type: BackupType) -> datetime | None:
        now = self.clock.now()
        schedule = await asyncio.to_thread(self.app.get_schedule, schedule_id)
        if schedule is None:
            return None
        due = schedule.next_due.get(backup_type)
        if due is None or due > now:
            return due  # an early look (a PUT moved it, another instance fired)
        candidate = schedule.fire_candidate(backup_type, now, self.grace)
        targets: FireTargets | None = None
        unavailable = ""
        if candidate is not None:
            found = await self.targets.lookup(
                schedule.organization_id,
                schedule.environment_id,
                schedule.parsed_settings.destination_ids,
            )
            if isinstance(found, FireTargets):
                targets = found
            elif now < candidate + self.grace:
                # The view lags the gateway: try again until the fire's grace ends.
                CATALOG_WAITS.inc()
                log.info(
                    "schedule_fire_waits_for_catalog",
                    schedule_id=str(schedule_id),
                    type=backup_type,
                    scheduled_for=candidate.isoformat(),
                    reason=found,
                )
                return min(now + self.retry, candidate + self.grace)
            else:
                unavailable = found
        outcome = await asyncio.to_thread(
            self.app.fire_due,
            schedule_id,
            backup_type,
            due,
            now,
            self.grace,
            targets,
            unavailable,
        )
        if outcome.changed:
            self.on_saved()
        if outcome.missed:
            MISSES.labels(backup_type).inc(len(outcome.missed))
            log.warning(
                "schedule_missed",
                schedule_id=str(schedule_id),
                type=backup_type,
                first=outcome.missed[0].isoformat(),
                last=outcome.missed[-1].isoformat(),
                count=len(outcome.missed),
                reason=unavailable or None,
            )
        if outcome.fired_for is not None:
            FIRES.labels(backup_type).inc()
            LATENESS.observe(outcome.late_seconds)
            log.info(
                "schedule_fired",
                schedule_id=str(schedule_id),
                type=backup_type,
                backup_id=str(outcome.backup_id),
                scheduled_for=outcome.fired_for.isoformat(),
                late_seconds=outcome.late_seconds,
            )
        return outcome.next_due
