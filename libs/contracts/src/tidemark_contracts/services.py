"""The services of Tidemark, declared once: everything that lists them derives from here.

A service named ``backup-runner`` lives in ``services/backup-runner``, is the Python package
``tidemark_backup_runner`` (``python -m tidemark_backup_runner.main``) and reads its settings
with the prefix ``TIDEMARK_BACKUP_RUNNER_``: the three always agree, so adding a service is
one entry here plus its package.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidemark_contracts.topics import (
    ALERT_COMMANDS,
    ALERT_EVENTS,
    BACKUP_COMMANDS,
    BACKUP_EVENTS,
    BACKUP_PROGRESS,
    CATALOG_EVENTS,
    RESTORE_COMMANDS,
    RESTORE_EVENTS,
    RESTORE_PROGRESS,
    SCHEDULE_COMMANDS,
    SCHEDULE_EVENTS,
    SERVICE_HEARTBEATS,
    Topic,
)


@dataclass(frozen=True)
class ServiceDescription:
    name: str
    description: str
    default_port: int
    consumes: tuple[Topic, ...] = ()
    produces: tuple[Topic, ...] = ()

    @property
    def directory(self) -> str:
        return f"services/{self.name}"

    @property
    def package(self) -> str:
        return "tidemark_" + self.name.replace("-", "_")

    @property
    def module(self) -> str:
        """What ``python -m`` runs to start one instance."""
        return f"{self.package}.main"

    @property
    def settings_prefix(self) -> str:
        return "TIDEMARK_" + self.name.replace("-", "_").upper() + "_"


API_GATEWAY = ServiceDescription(
    "api-gateway",
    "The HTTP API: authenticates, validates, turns requests into commands (through its "
    "outbox), serves the read models it projects from domain events, and streams live "
    "progress (SSE) from backup.progress and restore.progress.",
    8000,
    consumes=(
        BACKUP_EVENTS,
        BACKUP_PROGRESS,
        CATALOG_EVENTS,
        SCHEDULE_EVENTS,
        RESTORE_EVENTS,
        RESTORE_PROGRESS,
        ALERT_EVENTS,
        SERVICE_HEARTBEATS,
    ),
    produces=(
        BACKUP_COMMANDS,
        CATALOG_EVENTS,
        SCHEDULE_COMMANDS,
        RESTORE_COMMANDS,
        ALERT_COMMANDS,
        SERVICE_HEARTBEATS,
    ),
)
SCHEDULER = ServiceDescription(
    "scheduler",
    "Owns the Schedule aggregate; fires backups on cron (DST-correct, never twice) and "
    "applies retention through the deletion path.",
    8101,
    consumes=(SCHEDULE_COMMANDS, CATALOG_EVENTS, BACKUP_EVENTS),
    produces=(BACKUP_COMMANDS, SCHEDULE_EVENTS, SERVICE_HEARTBEATS),
)
BACKUP_RUNNER = ServiceDescription(
    "backup-runner",
    "Owns the Backup aggregate and each environment's WAL archive; runs pg_dump, "
    "pg_basebackup and pg_receivewal into every destination.",
    8102,
    consumes=(BACKUP_COMMANDS, CATALOG_EVENTS, SCHEDULE_EVENTS),
    produces=(BACKUP_EVENTS, BACKUP_PROGRESS, SERVICE_HEARTBEATS),
)
RESTORE_RUNNER = ServiceDescription(
    "restore-runner",
    "Owns the Restore aggregate; verifies artifacts, then restores dumps with pg_restore "
    "and full backups with WAL replay to a point in time, never leaving a target "
    "half-restored.",
    8103,
    consumes=(RESTORE_COMMANDS, BACKUP_EVENTS),
    produces=(RESTORE_EVENTS, RESTORE_PROGRESS, SERVICE_HEARTBEATS),
)
ALERTS = ServiceDescription(
    "alerts",
    "Owns the Alert aggregate; derives alerts from domain events (failed backups and "
    "restores, missed schedules, stalled WAL archiving, failed cleanups, unreachable "
    "destinations) and delivers every change to the organization's webhooks, signed.",
    8104,
    consumes=(ALERT_COMMANDS, BACKUP_EVENTS, SCHEDULE_EVENTS, RESTORE_EVENTS, CATALOG_EVENTS),
    produces=(ALERT_EVENTS, SERVICE_HEARTBEATS),
)

SERVICES: tuple[ServiceDescription, ...] = (
    API_GATEWAY,
    SCHEDULER,
    BACKUP_RUNNER,
    RESTORE_RUNNER,
    ALERTS,
)


def service(name: str) -> ServiceDescription:
    for described in SERVICES:
        if described.name == name:
            return described
    raise KeyError(f"no service named {name!r}")
