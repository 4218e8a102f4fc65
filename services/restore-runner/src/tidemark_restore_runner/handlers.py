"""Kafka in: restore commands become recorded restores, then work for the executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from faststream.kafka import KafkaBroker
from tidemark_contracts import Message
from tidemark_contracts.restore import RequestRestore
from tidemark_contracts.topics import RESTORE_COMMANDS
from tidemark_platform.consumer import Delivery, MessageHandler, subscribe_tracked
from tidemark_platform.logging import get_logger

from tidemark_restore_runner.application import RestoreRunnerApplication
from tidemark_restore_runner.executor import RestoreExecutor

log = get_logger(__name__)

CONSUMER_GROUP = "restore-runner"


def make_handlers(
    app: RestoreRunnerApplication, executor: RestoreExecutor, on_saved: Callable[[], None]
) -> Mapping[type[Message], MessageHandler]:
    async def on_request_restore(command: RequestRestore, delivery: Delivery) -> None:
        created = await asyncio.to_thread(
            app.request_restore, command, delivery.tracking, delivery.envelope.correlation_id
        )
        if created:
            on_saved()
        else:
            log.info("duplicate_restore_command_ignored", restore_id=str(command.restore_id))
        # Also when nothing new was recorded: a crash may have come before the row.
        await executor.submit(command.restore_id, command.target.environment_id)

    return {RequestRestore: on_request_restore}


def register_handlers(
    broker: KafkaBroker,
    app: RestoreRunnerApplication,
    executor: RestoreExecutor,
    on_saved: Callable[[], None],
    *,
    service: str,
) -> None:
    async def positions(suffix: str) -> dict[str, int]:
        return await asyncio.to_thread(app.tracking_positions, suffix)

    subscribe_tracked(
        broker,
        RESTORE_COMMANDS,
        CONSUMER_GROUP,
        make_handlers(app, executor, on_saved),
        service=service,
        positions=positions,
    )
