"""Kafka in: backup commands become recorded requests, then work for the executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from faststream.kafka import KafkaBroker
from tidemark_contracts import BACKUP_COMMANDS, Message
from tidemark_contracts.backup import DeleteBackup, RequestBackup
from tidemark_platform.consumer import Delivery, MessageHandler, Rejecter, subscribe_tracked
from tidemark_platform.logging import get_logger

from tidemark_backup_runner.application import BackupRunnerApplication
from tidemark_backup_runner.deletion import Deleter
from tidemark_backup_runner.executor import BackupExecutor
from tidemark_backup_runner.failures import readable_request

log = get_logger(__name__)

CONSUMER_GROUP = "backup-runner"


def make_handlers(
    app: BackupRunnerApplication,
    executor: BackupExecutor,
    on_saved: Callable[[], None],
    deleter: Deleter | None = None,
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

    if deleter is None:
        return {RequestBackup: on_request_backup}
    cleanup = deleter

    async def on_delete_backup(command: DeleteBackup, delivery: Delivery) -> None:
        outcome = await asyncio.to_thread(app.request_deletion, command, delivery.tracking)
        if outcome == "accepted":
            on_saved()
        log_line = log.warning if outcome in ("refused", "unknown") else log.info
        log_line(f"backup_deletion_{outcome}", backup_id=str(command.backup_id))
        if outcome in ("accepted", "already"):
            # Also when nothing new was recorded: a crash may have come between the event
            # and the removal's row, and a repeated deletion re-arms one that gave up.
            await cleanup.submit(command.backup_id)

    return {RequestBackup: on_request_backup, DeleteBackup: on_delete_backup}


def make_rejecters(
    app: BackupRunnerApplication, on_saved: Callable[[], None]
) -> Mapping[type[Message], Rejecter]:
    async def on_invalid_request_backup(
        payload: Mapping[str, Any], error: str, delivery: Delivery
    ) -> bool:
        """A request that fails the contract is no backup to take, but a backup that was
        asked for (its requester may be showing it as pending): it ends ``failed`` at once,
        saying why. One that does not say whose backup it is, is parked."""
        request = readable_request(payload)
        if request is None:
            return False
        reason = f"the backup request is invalid: {error}"
        created = await asyncio.to_thread(
            app.refuse_request, request, reason, delivery.tracking, delivery.envelope.correlation_id
        )
        if created:
            on_saved()
        log.warning(
            "invalid_backup_request_refused" if created else "redelivered_message_skipped",
            backup_id=str(request.backup_id),
            reason=reason,
        )
        return True

    return {RequestBackup: on_invalid_request_backup}


def register_handlers(
    broker: KafkaBroker,
    app: BackupRunnerApplication,
    executor: BackupExecutor,
    on_saved: Callable[[], None],
    *,
    service: str,
    deleter: Deleter | None = None,
) -> None:
    async def positions(suffix: str) -> dict[str, int]:
        return await asyncio.to_thread(app.tracking_positions, suffix)

    subscribe_tracked(
        broker,
        BACKUP_COMMANDS,
        CONSUMER_GROUP,
        make_handlers(app, executor, on_saved, deleter),
        service=service,
        positions=positions,
        rejecters=make_rejecters(app, on_saved),
    )
