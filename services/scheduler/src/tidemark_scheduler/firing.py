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

from tidemark_scheduler.application import FireRequest, SchedulerApplication
from tidemark_scheduler.domain import FireOutcome, FireTargets, Schedule
from tidemark_scheduler.timer import Clock, Key

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
# Generic on purpose: the error itself is logged, never recorded (events are kept forever).
FIRE_FAILED = "the fire kept failing until its grace ended"


Wanted = tuple[UUID, UUID, tuple[UUID, ...]]
"""(organization, environment, destination ids) a fire needs from the catalog view."""


class Targets(Protocol):
    async def lookup(self, wanted: Sequence[Wanted]) -> dict[UUID, FireTargets | str]:
        """By environment: what a backup of it is taken of and written to, or why not
        (the view lags the gateway, or a destination is gone)."""
        ...


class CatalogTargets:
    """``Targets`` from the scheduler's own catalog view (schema ``scheduler``): two
    queries for a whole batch of fires."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema

    async def lookup(self, wanted: Sequence[Wanted]) -> dict[UUID, FireTargets | str]:
        environment_ids = [environment for _, environment, _ in wanted]
        destination_ids = sorted({d for _, _, ds in wanted for d in ds})
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT id, organization_id, project_id, database "
                f"FROM {self._schema}.environments WHERE id = ANY(%s)",
                (environment_ids,),
            )
            environments = {row["id"]: row for row in await cursor.fetchall()}
            cursor = await conn.execute(
                f"SELECT id, organization_id, name, type, config "
                f"FROM {self._schema}.destinations WHERE id = ANY(%s)",
                (destination_ids,),
            )
            destinations = {row["id"]: row for row in await cursor.fetchall()}
        found: dict[UUID, FireTargets | str] = {}
        for organization_id, environment_id, wanted_destinations in wanted:
            environment = environments.get(environment_id)
            if environment is None or environment["organization_id"] != organization_id:
                found[environment_id] = UNKNOWN_ENVIRONMENT
                continue
            rows = [destinations.get(d) for d in wanted_destinations]
            if any(r is None or r["organization_id"] != organization_id for r in rows):
                found[environment_id] = UNKNOWN_DESTINATION
                continue
            database = DatabaseTarget.model_validate(environment["database"])
            targets = [
                DestinationTarget.of(r["id"], r["name"], r["type"], r["config"])
                for r in rows
                if r is not None
            ]
            found[environment_id] = FireTargets(
                project_id=environment["project_id"],
                database=database.model_dump(mode="json", by_alias=True),
                destinations=[d.model_dump(mode="json", by_alias=True) for d in targets],
            )
        return found


class Firing:
    """The timer's ``Fire``: fires what of a batch of (schedule, type) is due, and says
    when to look at each next."""

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
        """One (schedule, type): ``fire_many`` of one."""
        return (await self.fire_many([(schedule_id, backup_type)]))[schedule_id, backup_type]

    async def fire_many(self, keys: Sequence[Key]) -> dict[Key, datetime | None]:
        now = self.clock.now()
        schedules = await asyncio.to_thread(
            self.app.get_schedules, list(dict.fromkeys(k[0] for k in keys))
        )
        upcoming: dict[Key, datetime | None] = {}
        due_now: list[tuple[Key, Schedule, datetime]] = []
        for key in keys:
            schedule = schedules.get(key[0])
            due = schedule.next_due.get(key[1]) if schedule is not None else None
            if schedule is None or due is None or due > now:
                upcoming[key] = due  # an early look (a PUT moved it, another instance fired)
            else:
                due_now.append((key, schedule, due))
        if not due_now:
            return upcoming
        wanted = {
            s.environment_id: (
                s.organization_id,
                s.environment_id,
                tuple(s.parsed_settings.destination_ids),
            )
            for _, s, _ in due_now
        }
        found = await self.targets.lookup(list(wanted.values()))
        requests: list[FireRequest] = []
        for key, schedule, due in due_now:
            targets = found.get(schedule.environment_id, UNKNOWN_ENVIRONMENT)
            if isinstance(targets, FireTargets):
                requests.append(FireRequest(key[0], key[1], due, targets))
                continue
            candidate = schedule.fire_candidate(key[1], now, self.grace)
            if candidate is not None and now < candidate + self.grace:
                # The view lags the gateway: try again until the fire's grace ends.
                CATALOG_WAITS.inc()
                log.info(
                    "schedule_fire_waits_for_catalog",
                    schedule_id=str(key[0]),
                    type=key[1],
                    scheduled_for=candidate.isoformat(),
                    reason=targets,
                )
                upcoming[key] = min(now + self.retry, candidate + self.grace)
            else:
                requests.append(FireRequest(key[0], key[1], due, None, targets))
        if not requests:
            return upcoming
        outcomes = await asyncio.to_thread(self.app.fire_many, schedules, requests, now, self.grace)
        if any(o.changed for o in outcomes.values()):
            self.on_saved()
        for (schedule_id, backup_type), outcome in outcomes.items():
            self._report(schedule_id, backup_type, outcome)
            upcoming[schedule_id, backup_type] = outcome.next_due
        return upcoming

    async def give_up(self, key: Key, retry_at: datetime) -> tuple[datetime | None, bool]:
        """The timer's ``GiveUp``: after the key's own fire raised, look again at
        ``retry_at`` (no later than the fire's grace end) while the fire is within grace;
        past it, record its fire times missed (``FIRE_FAILED``) and go on with the next."""
        now = self.clock.now()
        schedule_id, backup_type = key
        schedule = await asyncio.to_thread(self.app.get_schedule, schedule_id)
        due = schedule.next_due.get(backup_type) if schedule is not None else None
        if schedule is None or due is None or due > now:
            return due, True  # nothing due (any more): a look at its due time
        candidate = schedule.fire_candidate(backup_type, now, self.grace)
        if candidate is not None and now < candidate + self.grace:
            return min(retry_at, candidate + self.grace), False
        outcome = await asyncio.to_thread(
            self.app.fire_due, schedule_id, backup_type, due, now, self.grace, None, FIRE_FAILED
        )
        if outcome.changed:
            self.on_saved()
        self._report(schedule_id, backup_type, outcome)
        return outcome.next_due, True

    @staticmethod
    def _report(schedule_id: UUID, backup_type: BackupType, outcome: FireOutcome) -> None:
        if outcome.missed:
            MISSES.labels(backup_type).inc(outcome.missed.count)
            log.warning(
                "schedule_missed",
                schedule_id=str(schedule_id),
                type=backup_type,
                first=outcome.missed.first.isoformat(),
                last=outcome.missed.last.isoformat(),
                count=outcome.missed.count,
                count_is_lower_bound=outcome.missed.at_least,
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
