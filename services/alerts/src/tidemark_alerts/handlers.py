"""Kafka in: domain events of backups, schedules and restores become alerts; read and
dismiss commands mark them. Every other message of those topics is ignored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from faststream.kafka import KafkaBroker
from prometheus_client import Counter
from tidemark_contracts import Message, Topic
from tidemark_contracts.alert import DismissAlert, MarkAlertRead
from tidemark_contracts.backup import (
    BackupCleanupFailed,
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupUploaded,
    BackupUploadFailed,
)
from tidemark_contracts.restore import RestoreCompleted, RestoreFailed, RestoreRequested
from tidemark_contracts.schedule import ScheduleFired, ScheduleMissed
from tidemark_contracts.topics import ALERT_COMMANDS, BACKUP_EVENTS, RESTORE_EVENTS, SCHEDULE_EVENTS
from tidemark_contracts.wal import WalArchivingStatusChanged
from tidemark_platform.consumer import Delivery, MessageHandler, subscribe_tracked
from tidemark_platform.logging import get_logger

from tidemark_alerts.application import AlertsApplication, Effect
from tidemark_alerts.domain import Place
from tidemark_alerts.places import Places

log = get_logger(__name__)

CONSUMER_GROUP = "alerts"
TOPICS: tuple[Topic, ...] = (BACKUP_EVENTS, SCHEDULE_EVENTS, RESTORE_EVENTS, ALERT_COMMANDS)

ALERT_CHANGES = Counter(
    "tidemark_alert_changes_total",
    "Alerts raised, repeated, resolved, read and dismissed, by kind",
    ["kind", "change"],
)


def make_handlers(
    app: AlertsApplication, places: Places, on_saved: Callable[[], None]
) -> dict[str, Mapping[type[Message], MessageHandler]]:
    """The handlers of each topic, by the topic's registry name."""

    def done(effect: Effect | None) -> None:
        if effect is None:
            return
        ALERT_CHANGES.labels(effect.kind, effect.change).inc()
        log.info(
            "alert_changed", alert_id=str(effect.alert_id), kind=effect.kind, change=effect.change
        )
        on_saved()

    async def run(method: Callable[..., Effect | None], *args: Any) -> None:
        done(await asyncio.to_thread(method, *args))

    def origin(delivery: Delivery) -> tuple[UUID, UUID]:
        # BackupFailed and its kin name only the environment: the organization is the
        # envelope's (the backup-runner's relay sets the backup's own).
        return delivery.envelope.organization_id, delivery.envelope.message_id

    async def on_backup_failed(event: BackupFailed, delivery: Delivery) -> None:
        org, source = origin(delivery)
        place = await places.of(org, event.environment_id)
        await run(app.backup_failed, event, org, place, source, delivery.tracking)

    async def on_backup_completed(event: BackupCompleted, delivery: Delivery) -> None:
        org, source = origin(delivery)
        await run(app.backup_completed, event, org, source, delivery.tracking)

    async def on_backup_upload_failed(event: BackupUploadFailed, delivery: Delivery) -> None:
        org, source = origin(delivery)
        place = await places.of(org, event.environment_id, event.destination_id)
        await run(app.backup_upload_failed, event, org, place, source, delivery.tracking)

    async def on_backup_uploaded(event: BackupUploaded, delivery: Delivery) -> None:
        org, source = origin(delivery)
        await run(app.backup_uploaded, event, org, source, delivery.tracking)

    async def on_backup_cleanup_failed(event: BackupCleanupFailed, delivery: Delivery) -> None:
        org, source = origin(delivery)
        place = await places.of(org, event.environment_id, event.destination_id)
        await run(app.backup_cleanup_failed, event, org, place, source, delivery.tracking)

    async def on_backup_deleted(event: BackupDeleted, delivery: Delivery) -> None:
        org, source = origin(delivery)
        await run(app.backup_deleted, event, org, source, delivery.tracking)

    async def on_wal_status(event: WalArchivingStatusChanged, delivery: Delivery) -> None:
        org, source = origin(delivery)
        stalled = event.status == "stalled"
        place = await places.of(org, event.environment_id) if stalled else Place()
        await run(app.wal_status_changed, event, org, place, source, delivery.tracking)

    async def on_schedule_missed(event: ScheduleMissed, delivery: Delivery) -> None:
        org, source = origin(delivery)
        place = await places.of(org, event.environment_id)
        await run(app.schedule_missed, event, org, place, source, delivery.tracking)

    async def on_schedule_fired(event: ScheduleFired, delivery: Delivery) -> None:
        org, source = origin(delivery)
        await run(app.schedule_fired, event, org, source, delivery.tracking)

    async def on_restore_requested(event: RestoreRequested, delivery: Delivery) -> None:
        await asyncio.to_thread(app.restore_requested, event, delivery.tracking)

    async def on_restore_failed(event: RestoreFailed, delivery: Delivery) -> None:
        org, source = origin(delivery)
        place = await places.of(org, event.target_environment_id)
        await run(app.restore_failed, event, org, place, source, delivery.tracking)

    async def on_restore_completed(event: RestoreCompleted, delivery: Delivery) -> None:
        org, source = origin(delivery)
        await run(app.restore_completed, event, org, source, delivery.tracking)

    async def on_mark_read(command: MarkAlertRead, delivery: Delivery) -> None:
        await run(app.mark_read, command, delivery.tracking)

    async def on_dismiss(command: DismissAlert, delivery: Delivery) -> None:
        await run(app.dismiss, command, delivery.tracking)

    return {
        BACKUP_EVENTS.name: {
            BackupFailed: on_backup_failed,
            BackupCompleted: on_backup_completed,
            BackupUploadFailed: on_backup_upload_failed,
            BackupUploaded: on_backup_uploaded,
            BackupCleanupFailed: on_backup_cleanup_failed,
            BackupDeleted: on_backup_deleted,
            WalArchivingStatusChanged: on_wal_status,
        },
        SCHEDULE_EVENTS.name: {
            ScheduleMissed: on_schedule_missed,
            ScheduleFired: on_schedule_fired,
        },
        RESTORE_EVENTS.name: {
            RestoreRequested: on_restore_requested,
            RestoreFailed: on_restore_failed,
            RestoreCompleted: on_restore_completed,
        },
        ALERT_COMMANDS.name: {
            MarkAlertRead: on_mark_read,
            DismissAlert: on_dismiss,
        },
    }


def register_handlers(
    broker: KafkaBroker,
    app: AlertsApplication,
    places: Places,
    on_saved: Callable[[], None],
    *,
    service: str,
    group_id: str = CONSUMER_GROUP,
    topics: Mapping[str, Topic] | None = None,
) -> None:
    """Subscribe the handlers; ``topics`` maps a registry topic's name to the topic to
    follow instead (tests follow copies under names of their own)."""

    async def positions(suffix: str) -> dict[str, int]:
        return await asyncio.to_thread(app.tracking_positions, suffix)

    handlers = make_handlers(app, places, on_saved)
    for topic in TOPICS:
        subscribe_tracked(
            broker,
            (topics or {}).get(topic.name, topic),
            group_id,
            handlers[topic.name],
            service=service,
            positions=positions,
        )
