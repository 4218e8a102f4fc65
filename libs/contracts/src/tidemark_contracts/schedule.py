"""Messages of the schedule context: the settings of an environment's backup schedule,
the command that configures it, and the events of the ``Schedule`` aggregate."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import Field

from tidemark_contracts.backup import BackupType
from tidemark_contracts.base import Message, UtcDatetime, WireModel

Frequency = Literal["hourly", "daily", "weekly", "monthly", "custom", "none"]

RETENTION_PERIODS: tuple[str, ...] = ("hourly", "daily", "weekly", "monthly")


class RetentionSettings(WireModel):
    """The retention fields of a schedule (API.md "Retention semantics"). A count of None
    is not set: a per-type count falls back to the general one, a general one to 0 (the
    rule is off). ``…Days`` windows apply to both types."""

    retain_hourly: int | None = Field(default=None, ge=0)
    retain_daily: int | None = Field(default=None, ge=0)
    retain_weekly: int | None = Field(default=None, ge=0)
    retain_monthly: int | None = Field(default=None, ge=0)
    retain_db_hourly: int | None = Field(default=None, ge=0)
    retain_db_daily: int | None = Field(default=None, ge=0)
    retain_db_weekly: int | None = Field(default=None, ge=0)
    retain_db_monthly: int | None = Field(default=None, ge=0)
    retain_full_hourly: int | None = Field(default=None, ge=0)
    retain_full_daily: int | None = Field(default=None, ge=0)
    retain_full_weekly: int | None = Field(default=None, ge=0)
    retain_full_monthly: int | None = Field(default=None, ge=0)
    retain_hourly_days: int | None = Field(default=None, ge=0)
    retain_daily_days: int | None = Field(default=None, ge=0)
    retain_weekly_days: int | None = Field(default=None, ge=0)
    retain_monthly_days: int | None = Field(default=None, ge=0)

    def count(self, backup_type: BackupType, period: str) -> int:
        """The count of ``period`` (hourly … monthly) for ``backup_type``: its per-type
        override when set, else the general count, else 0."""
        specific = getattr(self, f"retain_{backup_type}_{period}")
        if specific is not None:
            return int(specific)
        general = getattr(self, f"retain_{period}")
        return int(general) if general is not None else 0

    def window_days(self, period: str) -> int:
        days = getattr(self, f"retain_{period}_days")
        return int(days) if days is not None else 0


class ScheduleSettings(RetentionSettings):
    """An environment's backup schedule as a client sets it (API.md "Schedule body").

    Validation that needs more than one field or the outside world (crons, zones, the
    organization's destinations) is ``tidemark_schedules.validation``'s; a command or
    event carries settings that passed it. ``dbCron``/``fullCron`` here are the effective
    crons: the preset's for a preset frequency, None for ``none``."""

    enabled: bool = True
    paused: bool = False
    timezone: str = "UTC"
    db_frequency: Frequency = "daily"
    full_frequency: Frequency = "none"
    db_cron: str | None = None
    full_cron: str | None = None
    destination_ids: list[uuid.UUID] = Field(min_length=1)
    wal_enabled: bool = False
    wal_retention_days: int | None = Field(default=None, ge=1, le=35)

    def cron_of(self, backup_type: BackupType) -> str | None:
        return self.db_cron if backup_type == "db" else self.full_cron

    @property
    def active(self) -> bool:
        """Whether it fires at all (enabled and not paused)."""
        return self.enabled and not self.paused


class _ScheduleRevision(Message):
    """The fields a configuration and its event share: one revision of the settings."""

    schedule_id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID
    environment_id: uuid.UUID
    revision: int = Field(ge=1)
    settings: ScheduleSettings
    requested_by: str
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ConfigureSchedule(_ScheduleRevision):
    """Command (gateway → scheduler): create or replace the environment's schedule.

    ``revision`` increases with every PUT of the environment's schedule (the gateway
    assigns it under a row lock); the scheduler applies a revision once and ignores one
    older than what it holds, so a redelivered or reordered command changes nothing."""

    message_type: ClassVar[str] = "schedule.ConfigureSchedule"
    version: Literal[1] = 1


class ScheduleConfigured(_ScheduleRevision):
    """Event: the schedule now has these settings (revision ``revision``); its next fire
    times follow from them."""

    message_type: ClassVar[str] = "schedule.ScheduleConfigured"
    version: Literal[1] = 1


class ScheduleFired(Message):
    """Event: the schedule requested backup ``backupId`` for its fire time ``scheduledFor``
    (the id is derived from schedule, type and fire time, so it is requested once).
    ``lateSeconds`` > 0 when it fired late, after downtime, within the grace window."""

    message_type: ClassVar[str] = "schedule.ScheduleFired"
    version: Literal[1] = 1
    schedule_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID
    type: BackupType
    backup_id: uuid.UUID
    scheduled_for: UtcDatetime
    fired_at: UtcDatetime
    late_seconds: float = Field(default=0.0, ge=0)


class ScheduleMissed(Message):
    """Event: fire times of the schedule passed without a backup (the scheduler was down
    past the grace window, or a later fire superseded them). One event covers
    ``missedCount`` consecutive fire times, ``firstScheduledFor`` to ``scheduledFor``;
    ``reason`` says why, never with a credential."""

    message_type: ClassVar[str] = "schedule.ScheduleMissed"
    version: Literal[1] = 1
    schedule_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID
    type: BackupType
    scheduled_for: UtcDatetime
    first_scheduled_for: UtcDatetime
    missed_count: int = Field(ge=1)
    reason: str
    detected_at: UtcDatetime


class BackupExpired(Message):
    """Event: retention no longer keeps backup ``backupId``; ``rule`` names the rule that
    no longer keeps it. Its deletion goes through the normal deletion path
    (``DeleteBackup`` with ``requestedBy`` = ``scheduler:retention``)."""

    message_type: ClassVar[str] = "schedule.BackupExpired"
    version: Literal[1] = 1
    schedule_id: uuid.UUID
    organization_id: uuid.UUID
    environment_id: uuid.UUID
    backup_id: uuid.UUID
    type: BackupType
    created_at: UtcDatetime
    rule: str
    decided_at: UtcDatetime
