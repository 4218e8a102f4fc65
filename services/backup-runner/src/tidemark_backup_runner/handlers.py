"""Kafka in: backup commands become recorded requests, then work for the executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from faststream.kafka import KafkaBroker
from tidemark_contracts import BACKUP_COMMANDS, Message
from tidemark_contracts.backup import RequestBackup
from tidemark_platform.consumer import Delivery, MessageHandler, subscribe_tracked
from tidemark_platform.logging import get_logger

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.executor import BackupExecutor

log = get_logger(__name__)

CONSUMER_GROUP = "backup-runner"


def make_handlers(
    app: BackupRunnerApplication, executor: BackupExecutor, on_saved: Callable[[], None]
) -> Mapping[type[Message], MessageHandler]:
    async def on_request_backup(command: RequestBackup, delivery: Delivery) -> None:
        created = await asyncio.to_thread(
            app.request_backup, command, delivery.tracking, delivery.envelope.correlation_id
        )
        if created:
            on_saved()
        else:
            redelivered = await asyncio.to_thread(app.has_processed, delivery.tracking)
            log.info(
                "redelivered_message_skipped" if redelivered else "duplicate_command_ignored",
                backup_id=str(command.backup_id),
            )
        # Also when nothing new was recorded: the request may be stored while its work
        # row was never written (a crash between the two, or a retried commit whose first
        # attempt had succeeded). Ensuring the row is idempotent.
        await executor.submit(command.backup_id)

    return {RequestBackup: on_request_backup}


def register_handlers(
    broker: KafkaBroker,
    app: BackupRunnerApplication,
    executor: BackupExecutor,
    on_saved: Callable[[], None],
    *,
    service: str,
) -> None:
    async def positions(suffix: str) -> dict[str, int]:
        return await asyncio.to_thread(app.tracking_positions, suffix)

    subscribe_tracked(
        broker,
        BACKUP_COMMANDS,
        CONSUMER_GROUP,
        make_handlers(app, executor, on_saved),
        service=service,
        positions=positions,
    )
