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
RECONFIGURED = (
    "these fire times had not fired when the schedule's timing changed (the scheduler was not "
    "running, or had not fired them yet); the changed schedule does not fire them"
)

# Catch-up after downtime counts the missed fire times by walking the cron, at most this
# many (an every-minute cron down a week is ~10,000). Beyond it the count stops: the
# ``Missed`` event's ``count`` is a lower bound and its reason says "at least"; ``first``
# and ``last`` stay exact (the last is found walking back from the end, not from the start).
MISSED_COUNT_CAP = 10_000
# Backups retention expired are remembered (to not expire one twice) this long after the
# decision; then forgotten. Deciding one again later only repeats a ``DeleteBackup``, which
# the runner answers "already deleted"; by then the deletion has long been done and the
# backups view no longer lists the backup as one to keep or expire.
EXPIRED_MEMORY = timedelta(days=7)
_FLOOR = datetime.min.replace(tzinfo=UTC)


def capped(reason: str, count: int) -> str:
    """``reason`` of a ``Missed`` whose count stopped at the cap."""
    return f"{reason} (at least {count} fire times; counting stops at {MISSED_COUNT_CAP})"


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
    missed: MissedSpan | None = None
    next_due: datetime | None = None
    stale: bool = False
    changed: bool = False


@dataclass(frozen=True)
class MissedSpan:
    """Consecutive fire times recorded missed: ``first`` to ``last``, ``count`` of them
    (a lower bound when ``at_least``: the count stopped at ``MISSED_COUNT_CAP``)."""

    first: datetime
    last: datetime
    count: int
    at_least: bool = False


def _span(expr: str, zone: str, first: datetime, before: datetime) -> MissedSpan:
    """The fire times in [``first``, ``before``), ``first`` being one and before ``before``:
    counted up to ``MISSED_COUNT_CAP``, the last found exactly either way."""
    count, last = 1, first
    for at in cron.fire_times(expr, zone, first, before):
        if at >= before:
            break
        count, last = count + 1, at
        if count >= MISSED_COUNT_CAP:
            return MissedSpan(first, _last_before(expr, zone, last, before), count, True)
    return MissedSpan(first, last, count)


def _last_before(expr: str, zone: str, floor: datetime, before: datetime) -> datetime:
    """The last fire time before ``before``, ``floor`` being one: windows back from
    ``before`` doubling from a minute until one holds a fire time, so the walk covers few
    fire times however long the downtime was."""
    span = timedelta(minutes=1)
    while True:
        start = max(floor, before - span)
        last = None
        for at in cron.fire_times(expr, zone, start, before):
            if at < before:
                last = at
        if last is not None:
            return last
        if start == floor:
            return floor
        span *= 2


@dataclass(frozen=True)
class _Due:
    """What is due of one type at a time ``now``: the fire times that can only be missed
    (before ``now - grace``), the ones within grace (at most ``grace`` of them at a minute
    apart), and the first fire time after ``now``."""

    old: MissedSpan | None
    recent: tuple[datetime, ...]
    after: datetime | None

    @property
    def latest(self) -> datetime | None:
        if self.recent:
            return self.recent[-1]
        return self.old.last if self.old is not None else None

    def missed(self, fires: bool) -> MissedSpan | None:
        """The fire times missed when the latest fires (``fires``) or not."""
        recent = self.recent[:-1] if fires else self.recent
        if not recent:
            return self.old
        if self.old is None:
            return MissedSpan(recent[0], recent[-1], len(recent))
        old = self.old
        return MissedSpan(old.first, recent[-1], old.count + len(recent), old.at_least)


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

    # 2: ``expired`` maps ids to decision times (was: to rules), pruned.
    class_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot from before version 2: its expiries' decision times are unknown, so
        they count as long ago (forgotten at the next expiry; see ``EXPIRED_MEMORY``)."""
        state["expired"] = dict.fromkeys(state.get("expired", {}), _FLOOR)

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
        self._take_revision(
            project_id, revision, settings, requested_by, created_at, updated_at, next_due
        )
        # Backups retention expired (id → decided at), the last ``EXPIRED_MEMORY`` of them:
        # expiring one again records nothing.
        self.expired: dict[str, datetime] = {}

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
        now: datetime | None = None,
    ) -> bool:
        """Apply revision ``revision``; False (no event) when it is not newer than the one
        held. A type whose cron, zone and active state are unchanged keeps its next due
        time (misses during downtime stay visible). A changed, paused or resumed type
        first settles its old timing: the old fire times up to ``updated_at`` (or ``now``,
        the time the scheduler applies it, when earlier) that never fired are recorded as
        one ``Missed``. It then starts after ``updated_at``, or after its last fired or
        missed time when later (a zone change with the same offset never fires a time
        again): no catch-up of earlier times, no misses for paused time."""
        if revision <= self.revision:
            return False
        data = settings.model_dump(mode="json")
        settled_to = updated_at if now is None else min(updated_at, now)
        next_due: dict[str, datetime | None] = {}
        for backup_type in BACKUP_TYPES:
            current = self.next_due.get(backup_type)
            same = _effective(data, backup_type) == _effective(self.settings, backup_type)
            if same and current is not None:
                next_due[backup_type] = current
                continue
            if current is not None and current <= settled_to:
                self._settle(backup_type, current, settled_to, now or updated_at)
            start = max(updated_at, self.settled_through.get(backup_type, _FLOOR))
            next_due[backup_type] = _first_due(data, backup_type, start)
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

    def _settle(
        self, backup_type: BackupType, first: datetime, until: datetime, detected_at: datetime
    ) -> None:
        """Record the fire times of the current timing in [``first``, ``until``] missed."""
        expr, zone, _ = self._effective(backup_type)
        assert expr is not None  # a type with a next due time has a cron
        span = _span(expr, zone, first, until + timedelta(microseconds=1))
        self._missed(
            type=backup_type,
            first=span.first,
            last=span.last,
            count=span.count,
            reason=capped(RECONFIGURED, span.count) if span.at_least else RECONFIGURED,
            detected_at=detected_at,
            next_due=cron.next_fire(expr, zone, span.last),
        )

    @property
    def settled_through(self) -> dict[str, datetime]:
        """Per type, the latest fire time fired or recorded missed (snapshots taken before
        it existed lack it: rebuilt empty, as it only keeps a later PUT from re-firing)."""
        found: dict[str, datetime] | None = self.__dict__.get("_settled_through")
        if found is None:
            found = self.__dict__["_settled_through"] = {}
        return found

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
        self._take_revision(
            project_id, revision, settings, requested_by, created_at, updated_at, next_due
        )

    def _take_revision(
        self,
        project_id: UUID,
        revision: int,
        settings: dict[str, Any],
        requested_by: str,
        created_at: datetime,
        updated_at: datetime,
        next_due: dict[str, datetime | None],
    ) -> None:
        """The state one configuration sets, whether it created the schedule or not."""
        self.project_id = project_id
        self.revision = revision
        self.settings = settings
        self.requested_by = requested_by
        self.created_at = created_at
        self.updated_at = updated_at
        self.next_due = dict(next_due)

    # -- firing -----------------------------------------------------------------------

    def _due(self, backup_type: BackupType, now: datetime, grace: timedelta) -> _Due:
        """The fire times in [next due, ``now``] and the first after ``now``. Those before
        ``now - grace`` can only be missed: counted (capped, ``_span``), not listed, and the
        walk jumps past them, so catch-up after a long downtime costs little."""
        first = self.next_due.get(backup_type)
        if first is None or first > now:
            return _Due(None, (), first)
        expr, zone, _ = self._effective(backup_type)
        assert expr is not None  # a type with a next due time has a cron
        cutoff = now - grace
        old = _span(expr, zone, first, cutoff) if first < cutoff else None
        recent = [] if old is not None else [first]
        after = None
        for at in cron.fire_times(expr, zone, old.last if old else first, _FOREVER):
            if at > now:
                after = at
                break
            recent.append(at)
        return _Due(old, tuple(recent), after)

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
        due = self._due(backup_type, now, grace)
        return due.recent[-1] if due.recent else None

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
        found = self._due(backup_type, now, grace)
        latest, after_now = found.latest, found.after
        if latest is None:
            return FireOutcome(next_due=due)
        fires = request is not None and bool(found.recent)  # the latest is within grace
        missed = found.missed(fires)
        if missed is not None:
            if fires:
                reason = SUPERSEDED
            elif request is None and unavailable:
                reason = unavailable  # nothing to take the backup of, until grace ended
            else:
                reason = OUTSIDE_GRACE
            self._missed(
                type=backup_type,
                first=missed.first,
                last=missed.last,
                count=missed.count,
                reason=capped(reason, missed.count) if missed.at_least else reason,
                detected_at=now,
                next_due=latest if fires else after_now,
            )
        if not fires:
            return FireOutcome(missed=missed, next_due=after_now, changed=True)
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
            missed=missed,
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
        self._settled(type, last)

    def _settled(self, backup_type: str, at: datetime) -> None:
        through = self.settled_through
        if backup_type not in through or through[backup_type] < at:
            through[backup_type] = at

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
        self._settled(type, scheduled_for)

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
        self.expired[str(backup_id)] = decided_at
        # Oldest first (decisions are recorded in about their time order): forget those
        # decided more than EXPIRED_MEMORY before this one.
        forget_before = decided_at - EXPIRED_MEMORY
        while self.expired:
            oldest = next(iter(self.expired))
            if self.expired[oldest] >= forget_before:
                break
            del self.expired[oldest]

    @event(DeletionIssued)
    def _deletion_issued(self, backup_id: UUID, requested_at: datetime) -> None:
        pass  # a command on its way out; the Expired event changed the state
