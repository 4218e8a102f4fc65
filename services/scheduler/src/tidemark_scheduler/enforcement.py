"""Retention enforcement: what an environment's schedule no longer keeps becomes expired.

``RetentionEnforcer.enforce`` reads the schedule's settings from the scheduler's event
store and the environment's completed backups from the scheduler's own view of them
(``backups_view``), asks the pure retention function (``tidemark_schedules.retention``)
what it deletes, protecting the PITR base, and hands those deletions to the application,
which records a ``BackupExpired`` naming the rule and a ``DeleteBackup`` (the normal
deletion path) for each backup not expired before. It runs after a scheduled backup's
``BackupCompleted`` is projected and after a ``ConfigureSchedule`` is applied; several
instances may run it for one environment at once (the Schedule aggregate's optimistic
concurrency records each expiry once). Without a schedule it does nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol

from prometheus_client import Counter
from tidemark_contracts.schedule import ScheduleSettings
from tidemark_platform.logging import get_logger
from tidemark_schedules import ids
from tidemark_schedules.retention import BackupFacts, RetentionPlan, schedule_plan

from tidemark_scheduler.application import SchedulerApplication

log = get_logger(__name__)

EXPIRED = Counter(
    "tidemark_retention_expired_total", "Backups retention expired (BackupExpired recorded)"
)
ENFORCEMENTS = Counter(
    "tidemark_retention_enforcements_total",
    "Retention enforcement runs, by outcome",
    ["outcome"],  # no_schedule | nothing_to_delete | expired | already_expired (or superseded)
)


class Backups(Protocol):
    """What enforcement needs of the scheduler's backups view."""

    async def completed_backups(self, environment_id: uuid.UUID) -> Sequence[BackupFacts]: ...


def retention_plan(
    backups: Sequence[BackupFacts], settings: ScheduleSettings, now: datetime
) -> RetentionPlan:
    """What the schedule's retention keeps and deletes of ``backups`` at ``now``
    (``retention.schedule_plan`` with the schedule's own zone and WAL settings, as the
    gateway's preview calls it)."""
    return schedule_plan(
        backups,
        settings,
        zone=settings.timezone,
        wal_enabled=settings.wal_enabled,
        wal_retention_days=settings.wal_retention_days,
        now=now,
    )


@dataclass(frozen=True)
class Enforcement:
    """One run's outcome: the plan (None without a schedule) and how many of its
    deletions this run recorded (the rest were recorded before, by it or another)."""

    plan: RetentionPlan | None
    expired: int


class RetentionEnforcer:
    def __init__(
        self,
        app: SchedulerApplication,
        backups: Backups,
        on_saved: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.backups = backups
        # Wakes the relay when expiries were recorded (else it finds them on its next poll).
        self.on_saved = on_saved

    def _settings(self, environment_id: uuid.UUID) -> tuple[ScheduleSettings, int] | None:
        schedule = self.app.get_schedule(ids.schedule_id(environment_id))
        return (schedule.parsed_settings, schedule.revision) if schedule is not None else None

    async def enforce(self, environment_id: uuid.UUID, now: datetime) -> Enforcement:
        """Expire what the environment's schedule no longer keeps, as decided at ``now``."""
        # The event store is synchronous (eventsourcing): keep it off the event loop.
        found = await asyncio.to_thread(self._settings, environment_id)
        if found is None:
            ENFORCEMENTS.labels("no_schedule").inc()
            return Enforcement(None, 0)
        settings, revision = found
        backups = await self.backups.completed_backups(environment_id)
        # CPU-bound on a long history: off the event loop too.
        plan = await asyncio.to_thread(retention_plan, backups, settings, now)
        if not plan.delete:
            ENFORCEMENTS.labels("nothing_to_delete").inc()
            return Enforcement(plan, 0)
        # Recorded only while the schedule is still at the revision that decided: a PUT in
        # between (keeping more, perhaps) is enforced by its own handler instead.
        expired = await asyncio.to_thread(
            partial(self.app.expire_backups, revision=revision),
            environment_id,
            plan.delete,
            now,
        )
        EXPIRED.inc(expired)
        if expired and self.on_saved is not None:
            self.on_saved()
        ENFORCEMENTS.labels("expired" if expired else "already_expired").inc()
        log.info(
            "retention_enforced",
            environment_id=str(environment_id),
            deleted=len(plan.delete),
            newly_expired=expired,
            kept=len(plan.keep),
        )
        return Enforcement(plan, expired)
