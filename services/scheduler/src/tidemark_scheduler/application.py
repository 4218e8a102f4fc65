"""The scheduler's event store (Schedule aggregates) and the translation of its events into
contracts: schedule events for ``schedule.events``, the commands it issues for
``backup.commands``. Its notification log is the scheduler's outbox."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, Tracking
from psycopg import sql
from tidemark_contracts import (
    BACKUP_COMMANDS,
    SCHEDULE_EVENTS,
    Envelope,
    Message,
    Topic,
    event_message_id,
)
from tidemark_contracts.backup import (
    BackupType,
    DatabaseTarget,
    DeleteBackup,
    DestinationTarget,
    RequestBackup,
)
from tidemark_contracts.schedule import (
    BackupExpired,
    ConfigureSchedule,
    ScheduleConfigured,
    ScheduleFired,
    ScheduleMissed,
    ScheduleSettings,
)
from tidemark_platform.eventstore import EventStoreApplication
from tidemark_platform.logging import get_logger
from tidemark_schedules import ids
from tidemark_schedules.retention import Deleted

from tidemark_scheduler.domain import (
    REQUESTED_BY,
    RETENTION_REQUESTED_BY,
    FireOutcome,
    FireTargets,
    Schedule,
)

log = get_logger(__name__)

PRODUCER = "scheduler"
# Saves that lost to another writer of the same schedule (another instance's fire, a PUT)
# are redone on the reloaded schedule this many times before the caller hears of it.
MAX_CONFLICT_RETRIES = 8
# A snapshot every this many events: an every-minute cron adds ~2,900 events a day (fired
# + request), so a load replays at most this many events after the newest snapshot.
SNAPSHOT_INTERVAL = 100
AGGREGATE_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class FireRequest:
    """One (schedule, type) to fire in ``fire_many``, with what ``Schedule.fire`` needs."""

    schedule_id: UUID
    backup_type: BackupType
    due: datetime
    targets: FireTargets | None
    unavailable: str = ""


class ScheduleConflictError(Exception):
    """A schedule kept changing under a save (more conflicts than MAX_CONFLICT_RETRIES)."""


class Scope(NamedTuple):
    organization_id: UUID
    environment_id: UUID


class SchedulerApplication(EventStoreApplication):
    name = "scheduler"
    snapshotting_intervals = {Schedule: SNAPSHOT_INTERVAL}
    # Owned schedules stay in memory (LRU); a load fetches only the events after the
    # cached version (one query, no replay): firing a minute's schedules is then bound by
    # saves, not loads. A command works on a deep copy, so a failed save corrupts nothing.
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": str(AGGREGATE_CACHE_SIZE),
        "AGGREGATE_CACHE_FASTFORWARD": "y",
    }

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self._scopes: OrderedDict[UUID, Scope] = OrderedDict()
        # Environments with a schedule, for loading the schedules of assigned partitions:
        # a table beside the events on PostgreSQL (see ``index_table``), in memory on POPO.
        self._environments: dict[UUID, int | None] = {}

    # -- commands ---------------------------------------------------------------------

    def configure(
        self, command: ConfigureSchedule, tracking: Tracking, now: datetime | None = None
    ) -> bool:
        """Apply the command's revision, with ``tracking``, at ``now`` (``Schedule.configure``);
        False when nothing new was recorded (a redelivery, or a revision not newer than the
        schedule's)."""
        schedule_id = ids.schedule_id(command.environment_id)
        for _ in range(MAX_CONFLICT_RETRIES):
            if self.has_processed(tracking):
                return False
            schedule = self.get_schedule(schedule_id)
            if schedule is None:
                schedule = Schedule.configure_new(
                    environment_id=command.environment_id,
                    organization_id=command.organization_id,
                    project_id=command.project_id,
                    revision=command.revision,
                    settings=command.settings,
                    requested_by=command.requested_by,
                    created_at=command.created_at,
                    updated_at=command.updated_at,
                )
                applied = True
            else:
                applied = schedule.configure(
                    project_id=command.project_id,
                    revision=command.revision,
                    settings=command.settings,
                    requested_by=command.requested_by,
                    created_at=command.created_at,
                    updated_at=command.updated_at,
                    now=now,
                )
            if self.save_tracked(tracking, schedule):
                return applied
            # Lost a race (a fire, another delivery): decided again on the newer schedule.
        raise ScheduleConflictError(f"schedule {schedule_id} kept changing while configured")

    def fire_due(
        self,
        schedule_id: UUID,
        backup_type: BackupType,
        due: datetime,
        now: datetime,
        grace: timedelta,
        targets: FireTargets | None,
        unavailable: str = "",
        loaded: Schedule | None = None,
    ) -> FireOutcome:
        """Fire what of ``backup_type`` is due at ``now`` (``Schedule.fire``) and save it.

        A save that collides with another writer (another instance fired the same time,
        a PUT) is decided again on the reloaded schedule, where the fire is then stale:
        the deterministic backup id and the version check request each fire once.
        ``loaded`` is the schedule as the caller just read it (saves one load)."""
        for _ in range(MAX_CONFLICT_RETRIES):
            schedule, loaded = loaded or self.get_schedule(schedule_id), None
            if schedule is None:
                return FireOutcome(stale=True)
            outcome = schedule.fire(backup_type, due, now, grace, targets, unavailable)
            if not outcome.changed:
                return outcome
            try:
                self.save(schedule)
            except IntegrityError:
                continue
            return outcome
        raise ScheduleConflictError(f"schedule {schedule_id} kept changing while firing")

    def fire_many(
        self,
        schedules: dict[UUID, Schedule],
        requests: Sequence[FireRequest],
        now: datetime,
        grace: timedelta,
    ) -> dict[tuple[UUID, BackupType], FireOutcome]:
        """``fire_due`` for many (schedule, type) at once, on ``schedules`` as the caller
        just read them, saved in ONE transaction (one commit and one notification-log lock
        instead of one per fire: what bounds fires per second). When another writer got to
        one of them first, nothing of the batch is saved and each is decided on its own."""
        outcomes: dict[tuple[UUID, BackupType], FireOutcome] = {}
        for request in requests:
            schedule = schedules[request.schedule_id]
            outcomes[request.schedule_id, request.backup_type] = schedule.fire(
                request.backup_type, request.due, now, grace, request.targets, request.unavailable
            )
        changed = {key[0] for key, outcome in outcomes.items() if outcome.changed}
        if not changed:
            return outcomes
        try:
            self.save(*(schedules[schedule_id] for schedule_id in changed))
        except IntegrityError:
            for request in requests:
                outcomes[request.schedule_id, request.backup_type] = self.fire_due(
                    request.schedule_id,
                    request.backup_type,
                    request.due,
                    now,
                    grace,
                    request.targets,
                    request.unavailable,
                )
        return outcomes

    def expire_backups(
        self,
        environment_id: UUID,
        deleted: Sequence[Deleted],
        decided_at: datetime,
        *,
        revision: int | None = None,
    ) -> int:
        """Record ``BackupExpired`` and ``DeleteBackup`` for each backup retention no
        longer keeps; returns how many were new (one already expired is not again).

        ``revision``: the schedule revision whose settings decided ``deleted``. When the
        schedule has moved past it (a PUT landed after the decision, perhaps keeping more),
        nothing is recorded: that PUT's own enforcement decides again (ret8)."""
        schedule_id = ids.schedule_id(environment_id)
        for _ in range(MAX_CONFLICT_RETRIES):
            schedule = self.get_schedule(schedule_id)
            if schedule is None:
                return 0
            if revision is not None and schedule.revision != revision:
                return 0
            count = sum(
                schedule.expire(
                    d.backup.backup_id, d.backup.type, d.backup.created_at, d.rule, decided_at
                )
                for d in deleted
            )
            if count == 0:
                return 0
            try:
                self.save(schedule)
            except IntegrityError:
                continue
            return count
        raise ScheduleConflictError(f"schedule {schedule_id} kept changing while expiring")

    # -- queries ----------------------------------------------------------------------

    def get_schedules(self, schedule_ids: Sequence[UUID]) -> dict[UUID, Schedule]:
        found = {}
        for schedule_id in schedule_ids:
            schedule = self.get_schedule(schedule_id)
            if schedule is not None:
                found[schedule_id] = schedule
        return found

    def get_schedule(self, schedule_id: UUID) -> Schedule | None:
        try:
            schedule: Schedule = self.repository.get(schedule_id)
        except AggregateNotFoundError:
            return None
        return schedule

    def index_table(self) -> tuple[Any, sql.Composed] | None:
        """The PostgreSQL datastore and the table of scheduled environments; None on POPO."""
        datastore = getattr(self.recorder, "datastore", None)
        if datastore is None:
            return None
        table = sql.SQL("{}.{}").format(
            sql.Identifier(datastore.schema), sql.Identifier(f"{self.name}_environments")
        )
        return datastore, table

    def ensure_index(self) -> None:
        found = self.index_table()
        if found is None:
            return
        datastore, table = found
        with datastore.transaction(commit=True) as cursor:
            cursor.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (environment_id uuid PRIMARY KEY)").format(
                    table
                )
            )
            # The partition of schedule.commands the environment's last command arrived on
            # (NULL on rows from before it was kept: see ``Ownership``).
            cursor.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS command_partition integer").format(
                    table
                )
            )

    def remember_environment(self, environment_id: UUID, partition: int | None = None) -> None:
        """Note that the environment has a schedule, and the partition of schedule.commands
        its command arrived on (a later command on another one, partitions having been
        added, moves it there). Idempotent: called after every ConfigureSchedule, also a
        redelivered one, so a crash between the two is healed."""
        found = self.index_table()
        if found is None:
            if partition is not None or environment_id not in self._environments:
                self._environments[environment_id] = partition
            return
        datastore, table = found
        with datastore.transaction(commit=True) as cursor:
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {} (environment_id, command_partition) VALUES (%s, %s) "
                    "ON CONFLICT (environment_id) DO UPDATE "
                    "SET command_partition = EXCLUDED.command_partition "
                    "WHERE EXCLUDED.command_partition IS NOT NULL"
                ).format(table),
                (environment_id, partition),
            )

    def scheduled_environments(self, partitions: Collection[int]) -> list[tuple[UUID, int | None]]:
        """The environments with a schedule whose commands arrived on one of ``partitions``,
        and those whose partition was never recorded (None), with their partition."""
        found = self.index_table()
        if found is None:
            found_here = [
                (e, p) for e, p in self._environments.items() if p is None or p in partitions
            ]
            return sorted(found_here, key=lambda row: row[0])
        datastore, table = found
        with datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    "SELECT environment_id, command_partition FROM {} "
                    "WHERE command_partition = ANY(%s) OR command_partition IS NULL"
                ).format(table),
                (sorted(partitions),),
            )
            return [(row["environment_id"], row["command_partition"]) for row in cursor.fetchall()]

    # -- relay ------------------------------------------------------------------------

    def to_envelope(self, event: Any) -> tuple[Topic, Envelope] | None:
        """The public contract message for a stored domain event, with its topic."""
        schedule_id: UUID = event.originator_id
        if isinstance(event, Schedule.Created):
            self._remember_scope(schedule_id, Scope(event.organization_id, event.environment_id))
        scope = self._scope(schedule_id)
        topic: Topic = SCHEDULE_EVENTS
        message: Message
        aggregate_id = schedule_id
        if isinstance(event, Schedule.Created | Schedule.Reconfigured):
            message = ScheduleConfigured(
                schedule_id=schedule_id,
                organization_id=scope.organization_id,
                project_id=event.project_id,
                environment_id=scope.environment_id,
                revision=event.revision,
                settings=ScheduleSettings.model_validate(event.settings),
                requested_by=event.requested_by,
                created_at=event.created_at,
                updated_at=event.updated_at,
            )
        elif isinstance(event, Schedule.Fired):
            message = ScheduleFired(
                schedule_id=schedule_id,
                organization_id=scope.organization_id,
                environment_id=scope.environment_id,
                type=event.type,
                backup_id=event.backup_id,
                scheduled_for=event.scheduled_for,
                fired_at=event.fired_at,
                late_seconds=event.late_seconds,
            )
        elif isinstance(event, Schedule.Missed):
            message = ScheduleMissed(
                schedule_id=schedule_id,
                organization_id=scope.organization_id,
                environment_id=scope.environment_id,
                type=event.type,
                scheduled_for=event.last,
                first_scheduled_for=event.first,
                missed_count=event.count,
                reason=event.reason,
                detected_at=event.detected_at,
            )
        elif isinstance(event, Schedule.Expired):
            message = BackupExpired(
                schedule_id=schedule_id,
                organization_id=scope.organization_id,
                environment_id=scope.environment_id,
                backup_id=event.backup_id,
                type=event.type,
                created_at=event.created_at,
                rule=event.rule,
                decided_at=event.decided_at,
            )
        elif isinstance(event, Schedule.BackupRequestIssued):
            topic, aggregate_id = BACKUP_COMMANDS, event.backup_id
            message = RequestBackup(
                backup_id=event.backup_id,
                organization_id=scope.organization_id,
                project_id=event.project_id,
                environment_id=scope.environment_id,
                type=event.type,
                trigger="scheduled",
                label=None,
                requested_by=REQUESTED_BY,
                requested_at=event.requested_at,
                database=DatabaseTarget.model_validate(event.database),
                destinations=[DestinationTarget.model_validate(d) for d in event.destinations],
            )
        elif isinstance(event, Schedule.DeletionIssued):
            topic, aggregate_id = BACKUP_COMMANDS, event.backup_id
            message = DeleteBackup(
                backup_id=event.backup_id,
                organization_id=scope.organization_id,
                environment_id=scope.environment_id,
                requested_by=RETENTION_REQUESTED_BY,
                requested_at=event.requested_at,
            )
        else:
            return None
        occurred_at: datetime = event.timestamp
        return topic, Envelope.wrap(
            message,
            producer=PRODUCER,
            organization_id=scope.organization_id,
            environment_id=scope.environment_id,
            message_id=event_message_id(schedule_id, event.originator_version),
            aggregate_id=aggregate_id,
            aggregate_version=event.originator_version if aggregate_id == schedule_id else None,
            correlation_id=aggregate_id,
            causation_id=schedule_id,
            occurred_at=occurred_at,
        )

    def _remember_scope(self, schedule_id: UUID, scope: Scope) -> None:
        self._scopes[schedule_id] = scope
        self._scopes.move_to_end(schedule_id)
        while len(self._scopes) > 100_000:
            self._scopes.popitem(last=False)

    def _scope(self, schedule_id: UUID) -> Scope:
        scope = self._scopes.get(schedule_id)
        if scope is None:
            # Relay restarted mid-stream: the creation event is older than this process.
            first: Schedule = self.repository.get(schedule_id, version=1)
            scope = Scope(first.organization_id, first.environment_id)
            self._remember_scope(schedule_id, scope)
        return scope


def open_store(database_url: str, schema: str) -> SchedulerApplication:
    """The scheduler's event store on PostgreSQL in ``schema``, with its environment index."""
    app: SchedulerApplication = SchedulerApplication.on_postgres(database_url, schema)
    try:
        app.ensure_index()
    except psycopg.Error:
        app.close()
        raise
    return app
