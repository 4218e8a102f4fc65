"""Kafka in: backup commands become recorded requests, then work for the executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from eventsourcing.persistence import Tracking
from faststream.kafka import KafkaBroker
from pydantic import ValidationError
from tidemark_contracts import BACKUP_COMMANDS, Envelope
from tidemark_contracts.backup import RequestBackup
from tidemark_platform.consumer import Handler, subscribe_tracked
from tidemark_platform.logging import get_logger

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.executor import BackupExecutor

log = get_logger(__name__)

CONSUMER_GROUP = "backup-runner"


def make_command_handler(
    app: BackupRunnerApplication, executor: BackupExecutor, on_saved: Callable[[], None]
) -> Handler:
    async def on_command(envelope: Envelope, tracking: Tracking) -> None:
        if envelope.message_type != RequestBackup.message_type:
            log.warning("unknown_command", message_type=envelope.message_type)
            return
        try:
            command = RequestBackup.model_validate(envelope.payload)
        except ValidationError as exc:
            # Retrying cannot make it valid; the issuer validated it, so this is a bug.
            log.error("invalid_command", message_id=str(envelope.message_id), error=str(exc)[:500])
            return
        created = await asyncio.to_thread(
            app.request_backup, command, tracking, envelope.correlation_id
        )
        if created:
            on_saved()
        else:
            redelivered = await asyncio.to_thread(app.has_processed, tracking)
            log.info(
                "redelivered_message_skipped" if redelivered else "duplicate_command_ignored",
                backup_id=str(command.backup_id),
            )
        # Also when nothing new was recorded: the request may be stored while its work
        # was never started (a retried commit whose first attempt had succeeded). The
        # executor ignores backups that are finished or already under way.
        executor.submit(command.backup_id)

    return on_command


def register_handlers(
    broker: KafkaBroker,
    app: BackupRunnerApplication,
    executor: BackupExecutor,
    on_saved: Callable[[], None],
) -> None:
    subscribe_tracked(
        broker,
        BACKUP_COMMANDS,
        CONSUMER_GROUP,
        make_command_handler(app, executor, on_saved),
    )
