"""A schedule body as a client sent it → the effective settings, or what is wrong with it.

What one field's type says (a count ≥ 0, ``walRetentionDays`` 1-35, at least one
destination) is pydantic's, in ``ScheduleSettings``; what needs several fields or the
cron and zone rules is here. What needs the outside world (the organization's
destinations, the environment's cluster) is the gateway's. A problem names the field as
the API spells it and never repeats the rejected value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tidemark_contracts.backup import BackupType
from tidemark_contracts.schedule import ScheduleSettings

from tidemark_schedules import cron

BACKUP_TYPES: tuple[BackupType, ...] = ("db", "full")

DEFAULT_WAL_RETENTION_DAYS = 7
WAL_RETENTION_DAYS = range(1, 36)


@dataclass(frozen=True)
class FieldProblem:
    field: str
    """The field at fault, camelCase (``dbCron``, ``destinationIds[2]``)."""
    message: str


class InvalidSchedule(ValueError):
    """The body cannot be a schedule; ``problems`` says why, field by field."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = tuple(problems)


def _cron(
    backup_type: BackupType, frequency: str, given: str | None
) -> tuple[str | None, FieldProblem | None]:
    """The effective cron of one type, or the problem with the given one."""
    field, frequency_field = f"{backup_type}Cron", f"{backup_type}Frequency"
    if frequency == "none":
        if given is not None:
            return None, FieldProblem(field, f"must be absent when {frequency_field} is none")
        return None, None
    if frequency == "custom":
        if given is None:
            return None, FieldProblem(field, f"is required when {frequency_field} is custom")
        problem = cron.cron_problem(given)
        if problem is not None:
            return None, FieldProblem(field, problem)
        return " ".join(given.split()), None
    preset = cron.FREQUENCY_CRONS[frequency]
    if given is not None and " ".join(given.split()) != preset:
        return None, FieldProblem(
            field,
            f"{frequency_field} {frequency} runs '{preset}'; for another cron set "
            f"{frequency_field} to custom",
        )
    return preset, None


def effective_settings(body: ScheduleSettings) -> ScheduleSettings:
    """The settings ``body`` stands for: each type's effective cron (a preset frequency's
    own, the given one for ``custom``, None for ``none``) and ``walRetentionDays`` 7 when
    WAL is on and none is given. ``InvalidSchedule`` with every problem found."""
    problems: list[FieldProblem] = []
    zone = cron.zone_problem(body.timezone)
    if zone is not None:
        problems.append(FieldProblem("timezone", zone))
    crons: dict[BackupType, str | None] = {}
    for backup_type in BACKUP_TYPES:
        frequency = body.db_frequency if backup_type == "db" else body.full_frequency
        crons[backup_type], problem = _cron(backup_type, frequency, body.cron_of(backup_type))
        if problem is not None:
            problems.append(problem)
    wal_days = body.wal_retention_days
    if body.wal_enabled:
        if wal_days is None:
            wal_days = DEFAULT_WAL_RETENTION_DAYS
        elif wal_days not in WAL_RETENTION_DAYS:
            problems.append(FieldProblem("walRetentionDays", "must be from 1 to 35 days"))
    seen: dict[object, int] = {}
    for index, destination_id in enumerate(body.destination_ids):
        if destination_id in seen:
            problems.append(
                FieldProblem(
                    f"destinationIds[{index}]", f"repeats destinationIds[{seen[destination_id]}]"
                )
            )
        else:
            seen[destination_id] = index
    if not body.destination_ids:
        problems.append(FieldProblem("destinationIds", "must name at least one destination"))
    if problems:
        raise InvalidSchedule(problems)
    return body.model_copy(
        update={
            "db_cron": crons["db"],
            "full_cron": crons["full"],
            "wal_retention_days": wal_days,
        }
    )


def next_fires(settings: ScheduleSettings, now: datetime) -> dict[BackupType, datetime | None]:
    """Each type's next fire time after ``now`` (aware), UTC; None when the schedule does
    not fire (disabled, paused) or the type's frequency is ``none``."""
    return {
        backup_type: (
            cron.next_fire(expr, settings.timezone, now)
            if settings.active and (expr := settings.cron_of(backup_type)) is not None
            else None
        )
        for backup_type in BACKUP_TYPES
    }
