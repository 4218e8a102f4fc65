"""The topic registry: every Kafka topic, what it carries, and how it is keyed."""

from __future__ import annotations

from dataclasses import dataclass

from tidemark_contracts.alert import (
    AlertDismissed,
    AlertRaised,
    AlertRead,
    AlertRepeated,
    AlertResolved,
    DismissAlert,
    MarkAlertRead,
    WebhookDeliveryAttempted,
)
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupDeletionRequested,
    BackupFailed,
    BackupProgress,
    BackupRequested,
    BackupStarted,
    BackupUploaded,
    BackupUploadFailed,
    DeleteBackup,
    RequestBackup,
)
from tidemark_contracts.base import Message
from tidemark_contracts.catalog import (
    DestinationRegistered,
    DestinationRemoved,
    EnvironmentRegistered,
    ProjectRegistered,
    WebhookRegistered,
    WebhookRemoved,
)
from tidemark_contracts.restore import (
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreMilestone,
    RestoreProgress,
    RestoreRequested,
    RestoreStarted,
)
from tidemark_contracts.schedule import (
    BackupExpired,
    ConfigureSchedule,
    ScheduleConfigured,
    ScheduleFired,
    ScheduleMissed,
)
from tidemark_contracts.service import ServiceHeartbeat
from tidemark_contracts.wal import WalArchivingStatusChanged, WalGapDetected, WalSegmentArchived


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    messages: tuple[type[Message], ...]
    partitions: int = 6
    key: str = "environmentId"

    def message_class(self, message_type: str) -> type[Message] | None:
        return next((m for m in self.messages if m.message_type == message_type), None)

    @property
    def dlq_name(self) -> str:
        """Where this topic's messages that can never be handled are parked."""
        return f"{self.name}{DLQ_SUFFIX}"


DLQ_SUFFIX = ".dlq"


def dlq_topic(topic: Topic) -> Topic:
    """The dead-letter topic of ``topic``.

    It carries the original records unchanged (key, value, headers) plus headers that say
    why they were parked, so it is not a message topic of its own: no contract, no
    schema. One partition: parked records are few, and one partition gives every one of
    them a single offset an operator can name when re-driving it.
    """
    return Topic(
        topic.dlq_name,
        f"Dead letters of {topic.name}: records parked with the reason in their headers.",
        (),
        partitions=1,
        key=topic.key,
    )


BACKUP_COMMANDS = Topic(
    "backup.commands",
    "Commands for the backup-runner, issued by the gateway and the scheduler.",
    (RequestBackup, DeleteBackup),
)
BACKUP_EVENTS = Topic(
    "backup.events",
    "Domain events of the Backup and WalArchive aggregates, relayed from the backup-runner's "
    "event store.",
    (
        BackupRequested,
        BackupStarted,
        BackupUploaded,
        BackupCompleted,
        BackupFailed,
        BackupDeletionRequested,
        BackupDeleted,
        BackupCleanupFailed,
        BackupUploadFailed,
        WalSegmentArchived,
        WalGapDetected,
        WalArchivingStatusChanged,
    ),
)
BACKUP_PROGRESS = Topic(
    "backup.progress",
    "Ephemeral progress ticks of running backups (not in any event store).",
    (BackupProgress,),
)
CATALOG_EVENTS = Topic(
    "catalog.events",
    "Registrations of projects, environments, destinations and webhooks, relayed from the "
    "gateway's catalog event store; every service that needs them keeps its own view.",
    (
        ProjectRegistered,
        EnvironmentRegistered,
        DestinationRegistered,
        DestinationRemoved,
        WebhookRegistered,
        WebhookRemoved,
    ),
)
SCHEDULE_COMMANDS = Topic(
    "schedule.commands",
    "Commands for the scheduler, issued by the gateway: configure an environment's schedule.",
    (ConfigureSchedule,),
)
SCHEDULE_EVENTS = Topic(
    "schedule.events",
    "Domain events of the Schedule aggregate, relayed from the scheduler's event store: "
    "configured, fired, missed fire times, and backups retention no longer keeps.",
    (ScheduleConfigured, ScheduleFired, ScheduleMissed, BackupExpired),
)
RESTORE_COMMANDS = Topic(
    "restore.commands",
    "Commands for the restore-runner, issued by the gateway; keyed by the target environment.",
    (RequestRestore,),
)
RESTORE_EVENTS = Topic(
    "restore.events",
    "Domain events of the Restore aggregate, relayed from the restore-runner's event store; "
    "keyed by the target environment.",
    (RestoreRequested, RestoreStarted, RestoreMilestone, RestoreCompleted, RestoreFailed),
)
RESTORE_PROGRESS = Topic(
    "restore.progress",
    "Ephemeral progress ticks of running restores (not in any event store).",
    (RestoreProgress,),
)
ALERT_COMMANDS = Topic(
    "alert.commands",
    "Commands for the alerts service, issued by the gateway: mark an alert read, dismiss it; "
    "keyed by the alert's environment (its organization when it has none).",
    (MarkAlertRead, DismissAlert),
)
ALERT_EVENTS = Topic(
    "alert.events",
    "Domain events of the Alert aggregate and the record of every webhook delivery attempt, "
    "relayed from the alerts service's event store; keyed by the alert's environment (its "
    "organization when it has none), so one alert's events stay in order.",
    (
        AlertRaised,
        AlertRepeated,
        AlertResolved,
        AlertRead,
        AlertDismissed,
        WebhookDeliveryAttempted,
    ),
)
SERVICE_HEARTBEATS = Topic(
    "service.heartbeats",
    "Liveness of every service instance; the gateway's readiness reads it.",
    (ServiceHeartbeat,),
    partitions=1,
    key="service",
)

ALL_TOPICS: tuple[Topic, ...] = (
    BACKUP_COMMANDS,
    BACKUP_EVENTS,
    BACKUP_PROGRESS,
    CATALOG_EVENTS,
    SCHEDULE_COMMANDS,
    SCHEDULE_EVENTS,
    RESTORE_COMMANDS,
    RESTORE_EVENTS,
    RESTORE_PROGRESS,
    ALERT_COMMANDS,
    ALERT_EVENTS,
    SERVICE_HEARTBEATS,
)


DEAD_LETTER_TOPICS: tuple[Topic, ...] = tuple(dlq_topic(t) for t in ALL_TOPICS)


def all_messages() -> list[type[Message]]:
    return [message for topic in ALL_TOPICS for message in topic.messages]
