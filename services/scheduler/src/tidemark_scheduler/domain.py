"""The Schedule aggregate: an environment's backup schedule, its next fire times, its fires
and misses, and the backups retention expired; no I/O.

Every command the schedule issues (``RequestBackup``, ``DeleteBackup``) is an event of
its own here, stored with the event that decided it, so the event store's notification
log is the scheduler's outbox: the relay publishes both, or (after a crash) both again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from tidemark_contracts.backup import BackupType
from tidemark_contracts.schedule import ScheduleSettings
from tidemark_schedules import cron, ids

BACKUP_TYPES: tuple[BackupType, ...] = ("db", "full")
REQUESTED_BY = "scheduler"
RETENTION_REQUESTED_BY = "scheduler:retention"

# Why fire times passed without a backup (ScheduleMissed.reason; never a credential).
SUPERSEDED = (
    "the scheduler was not running at these fire times; only the latest one, within the "
    "grace window, fired"
)
OUTSIDE_GRACE = "the scheduler was not running within the grace window of these fire times"


@dataclass(frozen=True)
class FireTargets:
    """What a scheduled backup is taken of and written to, from the scheduler's catalog
    view: the database as a reference (``passwordRef``, never a secret), the
    destinations as ``DestinationTarget`` JSON."""

    project_id: UUID
    database: dict[str, Any]
    destinations: list[dict[str, Any]]


@dataclass(frozen=True)
class FireOutcome:
    """What one ``fire`` decided: the fire time that fired (None: none did), the backup it
    requested, the fire times recorded missed, and the next due time."""

    fired_for: datetime | None = None
    backup_id: UUID | None = None
    late_seconds: float = 0.0
    missed: tuple[datetime, ...] = ()
    next_due: datetime | None = None
    stale: bool = False
    changed: bool = False


def _effective(settings: dict[str, Any], backup_type: BackupType) -> tuple[str | None, str, bool]:
    """(cron, zone, active) of one type: what its next fire time depends on."""
    parsed = ScheduleSettings.model_validate(settings)
    return parsed.cron_of(backup_type), parsed.timezone, parsed.active


# (schedule, revision, type) -> (cron, zone, active): the settings of a revision never
# change, so they are parsed (pydantic) once, not at every fire. Bounded, oldest out.
_EFFECTIVE: dict[tuple[UUID, int, str], tuple[str | None, str, bool]] = {}
_EFFECTIVE_MAX = 250_000
_FOREVER = datetime.max.replace(tzinfo=UTC)


def _first_due(
    settings: dict[str, Any], backup_type: BackupType, after: datetime
) -> datetime | None:
    expr, zone, active = _effective(settings, backup_type)
    if not active or expr is None:
        return None
    return cron.next_fire(expr, zone, after)


class Schedule(Aggregate):
    """One environment's backup schedule (id ``ids.schedule_id(environment_id)``).

    ``next_due[type]`` is the first fire time not yet fired or recorded missed; None when
    the type does not fire (disabled, paused, frequency none). A revision of the settings
    is applied once; an older or equal one is ignored.
    """

    class Created(Aggregate.Created):
        environment_id: UUID
        organization_id: UUID
        project_id: UUID
        revision: int
        settings: dict[str, Any]
        requested_by: str
        created_at: datetime
        updated_at: datetime
        next_due: dict[str, datetime | None]

    class Reconfigured(Aggregate.Event):
        project_id: UUID
        revision: int
        settings: dict[str, Any]
        requested_by: str
        created_at: datetime
        updated_at: datetime
        next_due: dict[str, datetime | None]

    class Missed(Aggregate.Event):
        """``count`` consecutive fire times of ``type``, ``first`` to ``last``, passed
        without a backup; ``next_due`` is the type's next due time after them."""

        type: BackupType
        first: datetime
        last: datetime
        count: int
        reason: str
        detected_at: datetime
        next_due: datetime | None

    class Fired(Aggregate.Event):
        type: BackupType
        backup_id: UUID
        scheduled_for: datetime
        fired_at: datetime
        late_seconds: float
        next_due: datetime | None

    class BackupRequestIssued(Aggregate.Event):
        """The ``RequestBackup`` command a fire sends (relayed to ``backup.commands``)."""

        backup_id: UUID
        type: BackupType
        project_id: UUID
        requested_at: datetime
        database: dict[str, Any]
        destinations: list[dict[str, Any]]

    class Expired(Aggregate.Event):
        backup_id: UUID
        type: BackupType
        created_at: datetime
        rule: str
        decided_at: datetime

    class DeletionIssued(Aggregate.Event):
        """The ``DeleteBackup`` command retention sends (relayed to ``backup.commands``)."""

        backup_id: UUID
        requested_at: datetime

    @staticmethod
    def create_id(environment_id: UUID) -> UUID:
        return ids.schedule_id(environment_id)

    @classmethod
    def configure_new(
        cls,
        *,
        environment_id: UUID,
        organization_id: UUID,
        project_id: UUID,
        revision: int,
        settings: ScheduleSettings,
        requested_by: str,
        created_at: datetime,
        updated_at: datetime,
    ) -> Schedule:
        """A schedule created by its first configuration; fire times start after
        ``updated_at`` (the configuration time)."""
        data = settings.model_dump(mode="json")
        return cls(
            environment_id=environment_id,
            organization_id=organization_id,
            project_id=project_id,
            revision=revision,
            settings=data,
            requested_by=requested_by,
            created_at=created_at,
            updated_at=updated_at,
            next_due={t: _first_due(data, t, updated_at) for t in BACKUP_TYPES},
        )

    @event(Created)
    def __init__(
        self,
        *,
        environment_id: UUID,
        organization_id: UUID,
        project_id: UUID,
        revision: int,
        settings: dict[str, Any],
        requested_by: str,
        created_at: datetime,
        updated_at: datetime,
        next_due: dict[str, datetime | None],
    ) -> None:
        self.environment_id = environment_id
        self.organization_id = organization_id
        self.project_id = project_id
        self.revision = revision
        self.settings = settings
        self.requested_by = requested_by
        self.created_at = created_at
        self.updated_at = updated_at
        self.next_due = dict(next_due)
        # Backups retention expired (id → rule): expiring one again records nothing.
        self.expired: dict[str, str] = {}

    @property
    def parsed_settings(self) -> ScheduleSettings:
        return ScheduleSettings.model_validate(self.settings)

    # -- configuration ----------------------------------------------------------------

    def configure(
        self,
        *,
        project_id: UUID,
        revision: int,
        settings: ScheduleSettings,
        requested_by: str,
        created_at: datetime,
        updated_at: datetime,
    ) -> bool:
        """Apply revision ``revision``; False (no event) when it is not newer than the one
        held. A type whose cron, zone and active state are unchanged keeps its next due
        time (misses during downtime stay visible); a changed or resumed type starts
        after ``updated_at``: no catch-up of earlier times, no misses for paused time."""
        if revision <= self.revision:
            return False
        data = settings.model_dump(mode="json")
        next_due: dict[str, datetime | None] = {}
        for backup_type in BACKUP_TYPES:
            current = self.next_due.get(backup_type)
            same = _effective(data, backup_type) == _effective(self.settings, backup_type)
            if same and current is not None:
                next_due[backup_type] = current
            else:
                next_due[backup_type] = _first_due(data, backup_type, updated_at)
        self._reconfigured(
            project_id=project_id,
            revision=revision,
            settings=data,
            requested_by=requested_by,
            created_at=created_at,
            updated_at=updated_at,
            next_due=next_due,
        )
        return True

    @event(Reconfigured)
    def _reconfigured(
        self,
        project_id: UUID,
        revision: int,
        settings: dict[str, Any],
        requested_by: str,
        created_at: datetime,
        updated_at: datetime,
        next_due: dict[str, datetime | None],
    ) -> None:
        self.project_id = project_id
        self.revision = revision
        self.settings = settings
        self.requested_by = requested_by
        self.created_at = created_at
        self.updated_at = updated_at
        self.next_due = dict(next_due)

    # -- firing -----------------------------------------------------------------------

    def due_times(self, backup_type: BackupType, now: datetime) -> list[datetime]:
        """Every fire time of ``backup_type`` in [next due, ``now``], increasing."""
        return self._due_and_next(backup_type, now)[0]

    def _due_and_next(
        self, backup_type: BackupType, now: datetime
    ) -> tuple[list[datetime], datetime | None]:
        """The fire times in [next due, ``now``] and the first after ``now``, from one
        walk of the cron (building a cron iterator is most of a fire's CPU)."""
        first = self.next_due.get(backup_type)
        if first is None or first > now:
            return [], first
        expr, zone, _ = self._effective(backup_type)
        assert expr is not None  # a type with a next due time has a cron
        times = [first]
        for at in cron.fire_times(expr, zone, first, _FOREVER):
            if at > now:
                return times, at
            times.append(at)
        return times, None  # unreachable for a cron that fires (cron_problem checks it)

    def _effective(self, backup_type: BackupType) -> tuple[str | None, str, bool]:
        """``_effective`` of the current settings, parsed once per revision."""
        key = (self.id, self.revision, backup_type)
        found = _EFFECTIVE.get(key)
        if found is None:
            found = _effective(self.settings, backup_type)
            _EFFECTIVE[key] = found
            if len(_EFFECTIVE) > _EFFECTIVE_MAX:
                _EFFECTIVE.pop(next(iter(_EFFECTIVE)))
        return found

    def fire_candidate(
        self, backup_type: BackupType, now: datetime, grace: timedelta
    ) -> datetime | None:
        """The fire time that would fire at ``now``: the latest due one, when within
        ``grace`` of ``now``; None when nothing would."""
        times = self.due_times(backup_type, now)
        if times and now - times[-1] <= grace:
            return times[-1]
        return None

    def fire(
        self,
        backup_type: BackupType,
        due: datetime,
        now: datetime,
        grace: timedelta,
        request: FireTargets | None,
        unavailable: str = "",
    ) -> FireOutcome:
        """Fire what is due of ``backup_type`` at ``now``.

        ``due`` is the next due time the caller acted on; when the schedule's differs
        (another instance fired, a PUT changed it) nothing happens (``stale``). Of the fire
        times in [next due, now] the latest fires when within ``grace`` of ``now`` (late
        when now is after it) and every earlier one is recorded as one ``Missed``; when the
        latest is outside grace, all are. ``request`` None (the catalog view lacks the
        environment or its destinations) records them all missed with ``unavailable`` as
        the reason. The next due time becomes the first fire time after ``now``.
        """
        if self.next_due.get(backup_type) != due:
            return FireOutcome(next_due=self.next_due.get(backup_type), stale=True)
        times, after_now = self._due_and_next(backup_type, now)
        if not times:
            return FireOutcome(next_due=due)
        latest = times[-1]
        fires = request is not None and now - latest <= grace
        missed = times[:-1] if fires else times
        if missed:
            if fires:
                reason = SUPERSEDED
            elif request is None and unavailable:
                reason = unavailable  # nothing to take the backup of, until grace ended
            else:
                reason = OUTSIDE_GRACE
            self._missed(
                type=backup_type,
                first=missed[0],
                last=missed[-1],
                count=len(missed),
                reason=reason,
                detected_at=now,
                next_due=latest if fires else after_now,
            )
        if not fires:
            return FireOutcome(missed=tuple(missed), next_due=after_now, changed=True)
        assert request is not None
        backup_id = ids.scheduled_backup_id(self.id, backup_type, latest)
        late = max((now - latest).total_seconds(), 0.0)
        self._fired(
            type=backup_type,
            backup_id=backup_id,
            scheduled_for=latest,
            fired_at=now,
            late_seconds=late,
            next_due=after_now,
        )
        self._backup_request_issued(
            backup_id=backup_id,
            type=backup_type,
            project_id=request.project_id,
            requested_at=latest,
            database=request.database,
            destinations=request.destinations,
        )
        return FireOutcome(
            fired_for=latest,
            backup_id=backup_id,
            late_seconds=late,
            missed=tuple(missed),
            next_due=after_now,
            changed=True,
        )

    @event(Missed)
    def _missed(
        self,
        type: BackupType,
        first: datetime,
        last: datetime,
        count: int,
        reason: str,
        detected_at: datetime,
        next_due: datetime | None,
    ) -> None:
        self.next_due[type] = next_due

    @event(Fired)
    def _fired(
        self,
        type: BackupType,
        backup_id: UUID,
        scheduled_for: datetime,
        fired_at: datetime,
        late_seconds: float,
        next_due: datetime | None,
    ) -> None:
        self.next_due[type] = next_due

    @event(BackupRequestIssued)
    def _backup_request_issued(
        self,
        backup_id: UUID,
        type: BackupType,
        project_id: UUID,
        requested_at: datetime,
        database: dict[str, Any],
        destinations: list[dict[str, Any]],
    ) -> None:
        pass  # a command on its way out; the Fired event changed the state

    # -- retention --------------------------------------------------------------------

    def expire(
        self,
        backup_id: UUID,
        type: BackupType,
        created_at: datetime,
        rule: str,
        decided_at: datetime,
    ) -> bool:
        """Record that retention no longer keeps ``backup_id`` (``rule`` says which rule)
        and the ``DeleteBackup`` that deletes it; False (nothing recorded) when it was
        already expired."""
        if str(backup_id) in self.expired:
            return False
        self._expired(
            backup_id=backup_id, type=type, created_at=created_at, rule=rule, decided_at=decided_at
        )
        self._deletion_issued(backup_id=backup_id, requested_at=decided_at)
        return True

    @event(Expired)
    def _expired(
        self,
        backup_id: UUID,
        type: BackupType,
        created_at: datetime,
        rule: str,
        decided_at: datetime,
    ) -> None:
        self.expired[str(backup_id)] = rule

    @event(DeletionIssued)
    def _deletion_issued(self, backup_id: UUID, requested_at: datetime) -> None:
        pass  # a command on its way out; the Expired event changed the state
